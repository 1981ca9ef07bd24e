"""The self-balloon knobs as the tuner names, parses and applies them.

One name per knob (``xentmem.xenstore.keys``): the xenstore key, the tuner's ``-k``/``-g`` name
(``reserved_mb``; ``reserved-mb`` is read the same) and, with ``_`` written ``-``, the option of
``xentmem guest set`` that applies it (``--reserved-mb``; flags ``--name/--no-name``). Values are
held to the key's limits: the tuner never recommends what the guest's kernel would refuse.
"""

from __future__ import annotations

import itertools
import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import fields, replace

from xentmem.errors import TraceError
from xentmem.guest.selfballoon import SelfBalloonKnobs
from xentmem.xenstore.keys import key

__all__ = ["KNOBS", "MAX_COMBINATIONS", "expand_grid", "guest_set_args", "guest_set_line",
           "knob_values", "parse_grid", "parse_knobs"]

# The knobs by the names ``xentmem guest set`` applies them under (the xenstore keys of
# ``xentmem.xenstore.keys``, whose limits they obey), in SelfBalloonKnobs order -> its fields.
# Only the self-shrink flag differs: the sysfs file (and the field) is frontswap_selfshrinking.
_FIELD = {("selfshrinking" if f.name == "frontswap_selfshrinking" else f.name): f.name
          for f in fields(SelfBalloonKnobs)}
KNOBS = tuple(_FIELD)
MAX_COMBINATIONS = 200_000


def knob_values(knobs: SelfBalloonKnobs) -> dict[str, int]:
    """Every knob of ``knobs`` by its name (``KNOBS``), as an int."""
    return {name: int(getattr(knobs, field)) for name, field in _FIELD.items()}


def _knob_value(name: str, text: str) -> int:
    if name not in _FIELD:
        raise TraceError(f"unknown knob {name!r} (one of {', '.join(KNOBS)})")
    text = text.strip()
    if not (text.isascii() and text.isdigit()):
        raise TraceError(f"knob {name}: {text!r} is not a non-negative whole number")
    value, limits = int(text), key(name)
    if not limits.lo <= value <= limits.hi:  # what the guest would refuse, the tuner does too
        raise TraceError(f"knob {name}: must be {limits.describe_range()}, not {value}")
    return value


def _split(spec: str) -> tuple[str, str]:
    """``name=value``; the name as ``xentmem guest set`` spells it (``reserved-mb``) or as
    the key (``reserved_mb``)."""
    name, sep, value = spec.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise TraceError(f"bad knob setting {spec!r}: expected name=value")
    return name.strip().replace("-", "_"), value


def _knobs(values: Mapping[str, int], base: SelfBalloonKnobs) -> SelfBalloonKnobs:
    typed = {_FIELD[k]: bool(v) if key(k).boolean else v for k, v in values.items()}
    try:
        return replace(base, **typed)
    except ValueError as exc:
        raise TraceError(f"knobs: {exc}") from None


def parse_knobs(specs: Sequence[str], base: SelfBalloonKnobs | None = None) -> SelfBalloonKnobs:
    """Knobs from ``name=value`` strings over ``base`` (default: the kernel defaults)."""
    values: dict[str, int] = {}
    for spec in specs:
        name, text = _split(spec)
        values[name] = _knob_value(name, text)
    return _knobs(values, base or SelfBalloonKnobs())


def parse_grid(specs: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """A grid from ``name=v1,v2,...`` strings (one per knob; values kept in the given order,
    duplicates dropped)."""
    grid: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        name, text = _split(spec)
        if name in grid:
            raise TraceError(f"knob {name} is given twice in the grid")
        values = [_knob_value(name, v) for v in text.split(",")]
        grid[name] = tuple(dict.fromkeys(values))
    return grid


def expand_grid(grid: Mapping[str, Sequence[int]], base: SelfBalloonKnobs | None = None
                ) -> list[SelfBalloonKnobs]:
    """Every combination of ``grid`` over ``base``, the last knob varying fastest."""
    base = base or SelfBalloonKnobs()
    names = list(grid)
    count = math.prod(len(grid[n]) for n in names)
    if count > MAX_COMBINATIONS:
        raise TraceError(f"the grid has {count} combinations; at most {MAX_COMBINATIONS}")
    return [_knobs(dict(zip(names, combo, strict=True)), base)
            for combo in itertools.product(*(grid[n] for n in names))]


def guest_set_args(knobs: SelfBalloonKnobs) -> list[str]:
    """Every knob of ``knobs`` as ``xentmem guest set`` options (all of them, so the guest
    ends up with exactly this setting whatever it had before)."""
    args: list[str] = []
    for name, value in knob_values(knobs).items():
        option = name.replace("_", "-")
        if key(name).boolean:
            args.append(f"--{option}" if value else f"--no-{option}")
        else:
            args += [f"--{option}", str(value)]
    return args


def guest_set_line(knobs: SelfBalloonKnobs, dom: str = "DOM") -> str:
    """The shell line that applies ``knobs`` to guest ``dom``."""
    return shlex.join(["xentmem", "guest", "set", dom, *guest_set_args(knobs)])
