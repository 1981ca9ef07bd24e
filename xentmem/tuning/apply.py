"""From a report back to the guest: the settings a report (``xentmem tune sweep --json``, or a
fleet sweep's) recommends for a guest, checked, for ``xentmem tune apply`` to request with
``xentmem guest set``'s machinery (the line itself: ``xentmem.tuning.knobs.guest_set_line``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xentmem.errors import TraceError
from xentmem.tuning.knobs import KNOBS, knob_values, parse_knobs

__all__ = ["load_recommendation", "recommendation"]


def recommendation(report: Mapping[str, Any], dom: str, where: str = "report") -> dict[str, int]:
    """The recommended knobs ``report`` holds for ``dom``, by name, checked as ``-k`` values
    are: a guest's report, or a fleet report's entry for ``dom`` (``TraceError`` if none)."""
    entry: Any = report
    guests = report.get("guests") if isinstance(report, Mapping) else None
    if isinstance(guests, Mapping):
        entry = guests.get(dom)
        if entry is None:
            names = ", ".join(sorted(str(g) for g in guests)) or "none"
            raise TraceError(f"{where}: no guest {dom!r} in this fleet report (guests: {names})")
    rec = entry.get("recommended") if isinstance(entry, Mapping) else None
    untrusted = rec.get("knobs") if isinstance(rec, Mapping) else None
    if not isinstance(untrusted, Mapping):
        raise TraceError(f"{where}: no recommended knobs (write one with "
                         "xentmem tune sweep --json)")
    unknown = sorted(set(map(str, untrusted)) - set(KNOBS))
    missing = [name for name in KNOBS if name not in untrusted]
    if unknown or missing:  # all of them, so the guest ends up with exactly this setting
        raise TraceError(f"{where}: recommended knobs: "
                         + "; ".join(f"{what} {', '.join(names)}" for what, names in
                                     (("unknown", unknown), ("missing", missing)) if names))
    specs = []
    for name, value in untrusted.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise TraceError(f"{where}: knob {name} must be a whole number, not {value!r}")
        specs.append(f"{name}={value}")
    try:
        return knob_values(parse_knobs(specs))  # held to the limits -k obeys
    except TraceError as exc:
        raise TraceError(f"{where}: {exc}") from None


def load_recommendation(path: str | Path, dom: str) -> dict[str, int]:
    """:func:`recommendation` from a JSON report file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TraceError(f"{path}: cannot read report: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TraceError(f"{path}: not a JSON report ({exc})") from None
    if not isinstance(data, dict):
        raise TraceError(f"{path}: not a JSON report")
    return recommendation(data, dom, str(path))
