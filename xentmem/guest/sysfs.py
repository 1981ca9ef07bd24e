"""The guest's sysfs / debugfs / procfs view: the same file names, units, defaults and parsing
rules as a Linux 3.10-3.12 Xen guest (ref §1.7, §2.3, §3.1, §4.2, §4.3), as a tree of paths the
guest agent reads and writes.

``read(path)``/``write(path, text)`` act on the model directly; ``mirror(root)`` writes the tree
as real files under ``root`` (e.g. ``root/sys/devices/system/xen_memory/xen_memory0/target_kb``)
and ``apply(root)`` feeds back every writable file whose content changed since, so an agent
written against a real ``/sys`` can be pointed at ``root``.

Writes that the kernel refuses raise ``GuestError`` naming the errno and change nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from xentmem.errors import GuestError

if TYPE_CHECKING:
    from xentmem.guest.guest import Guest

__all__ = ["BALLOON_DIR", "SysfsView", "c_strtoull", "memparse"]

BALLOON_DIR = "sys/devices/system/xen_memory/xen_memory0"
SELFBALLOON_DIR = f"{BALLOON_DIR}/selfballoon"
PAGE_SHIFT = 12
_U32 = 0xFFFFFFFF


def c_strtoull(text: str, base: int = 0) -> tuple[int, str]:
    """``simple_strtoull``: the value and the unparsed rest (garbage parses as 0)."""
    s = text
    if base == 0:
        if s[:2].lower() == "0x" and len(s) > 2 and s[2] in "0123456789abcdefABCDEF":
            base, s = 16, s[2:]
        elif s[:1] == "0":
            base = 8
        else:
            base = 10
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"[:base]
    n = 0
    value = 0
    while n < len(s) and s[n].lower() in digits:
        value = value * base + digits.index(s[n].lower())
        n += 1
    return value & 0xFFFFFFFFFFFFFFFF, s[n:]


def memparse(text: str) -> int:
    """``memparse``: a number with an optional K/M/G/T/P/E suffix, in bytes."""
    value, rest = c_strtoull(text)
    shift = {"k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}.get(rest[:1].lower(), 0)
    return (value << shift) & 0xFFFFFFFFFFFFFFFF


_KSTRTOUL10 = re.compile(r"\+?[0-9]+\n?")


def _kstrtoul10(untrusted: str) -> int | None:
    """``strict_strtoul(buf, 10)``: digits, optional '+', one trailing newline; else None."""
    return int(untrusted.strip("\n") or "x", 10) if _KSTRTOUL10.fullmatch(untrusted) else None


def _kstrtoul0(untrusted: str) -> int | None:
    """``kstrtoul(buf, 0)``: the whole string must parse (base auto), one trailing newline."""
    text = untrusted[:-1] if untrusted.endswith("\n") else untrusted
    text = text[1:] if text.startswith("+") else text
    if not text:
        return None
    value, rest = c_strtoull(text)
    return None if rest else value


def _signed32(value: int) -> int:
    value &= _U32
    return value - (1 << 32) if value & 0x80000000 else value


@dataclass(frozen=True)
class _Attr:
    read: Callable[[], str]
    write: Callable[[str], None] | None = None


class SysfsView:
    """The sysfs/debugfs/procfs files of one guest."""

    def __init__(self, guest: Guest) -> None:
        self.guest = guest
        self._mirrored: dict[str, str] = {}

    # -- the tree --------------------------------------------------------------------------

    def _attrs(self) -> dict[str, _Attr]:
        g = self.guest
        b = g.balloon.stats
        kb = PAGE_SHIFT - 10
        attrs: dict[str, _Attr] = {
            f"{BALLOON_DIR}/target_kb": _Attr(lambda: f"{b.target_pages << kb}\n",
                                              self._write_target_kb),
            f"{BALLOON_DIR}/target": _Attr(lambda: f"{b.target_pages << PAGE_SHIFT}\n",
                                           self._write_target),
            f"{BALLOON_DIR}/schedule_delay": _Attr(lambda: f"{b.schedule_delay}\n"),
            f"{BALLOON_DIR}/max_schedule_delay": _Attr(
                lambda: f"{b.max_schedule_delay}\n", self._ulong_writer("max_schedule_delay")),
            f"{BALLOON_DIR}/retry_count": _Attr(lambda: f"{b.retry_count}\n"),
            f"{BALLOON_DIR}/max_retry_count": _Attr(
                lambda: f"{b.max_retry_count}\n", self._ulong_writer("max_retry_count")),
            f"{BALLOON_DIR}/info/current_kb": _Attr(lambda: f"{b.current_pages << kb}\n"),
            f"{BALLOON_DIR}/info/low_kb": _Attr(lambda: f"{b.balloon_low << kb}\n"),
            f"{BALLOON_DIR}/info/high_kb": _Attr(lambda: f"{b.balloon_high << kb}\n"),
        }
        for name, knob, boolean in () if not g.kernel.has_selfballoon else (
            ("selfballooning", "selfballooning", True),
            ("selfballoon_interval", "interval", False),
            ("selfballoon_downhysteresis", "downhysteresis", False),
            ("selfballoon_uphysteresis", "uphysteresis", False),
            ("selfballoon_min_usable_mb", "min_usable_mb", False),
            ("selfballoon_reserved_mb", "reserved_mb", False),
            ("frontswap_selfshrinking", "frontswap_selfshrinking", True),
            ("frontswap_hysteresis", "frontswap_hysteresis", False),
            ("frontswap_inertia", "frontswap_inertia", False),
        ):
            attrs[f"{SELFBALLOON_DIR}/{name}"] = _Attr(
                self._knob_reader(knob), self._knob_writer(name, knob, boolean))
        if g.kernel.has_frontswap:
            for name, value in g.frontswap.debugfs().items():
                attrs[f"sys/kernel/debug/frontswap/{name}"] = _Attr(lambda v=value: f"{v}\n")
        if g.kernel.has_cleancache:
            for name, value in g.cleancache.debugfs().items():
                attrs[f"sys/kernel/debug/cleancache/{name}"] = _Attr(lambda v=value: f"{v}\n")
        params = getattr(g.backend, "params", None)
        if g.backend is not None and isinstance(params, dict):
            for name, value in params.items():
                attrs[f"sys/module/{g.backend.name}/parameters/{name}"] = _Attr(
                    lambda v=value: "Y\n" if v else "N\n")
        files = getattr(g.backend, "sysfs_files", None)  # a backend's own files (RAMster)
        if files is not None:
            for path, (read, write) in files().items():
                attrs[path] = _Attr(read, write)
        attrs["proc/sys/kernel/osrelease"] = _Attr(lambda: f"{g.kernel}.0-xentmem\n")
        attrs["proc/meminfo"] = _Attr(lambda: "".join(
            f"{k + ':':<16}{v:>8} kB\n" for k, v in g.meminfo().items()))
        attrs["proc/vmstat"] = _Attr(lambda: f"pswpin {g.stats.swapins}\n"
                                     f"pswpout {g.stats.swapouts}\n")
        return attrs

    def paths(self) -> list[str]:
        """Every file of the tree, sorted."""
        return sorted(self._attrs())

    def listdir(self, path: str) -> list[str]:
        """Entries directly under directory ``path``."""
        prefix = path.strip("/") + "/"
        names = {p[len(prefix):].split("/", 1)[0] for p in self._attrs() if p.startswith(prefix)}
        if not names:
            raise GuestError(f"/{path.strip('/')}: no such directory")
        return sorted(names)

    def _attr(self, path: str) -> _Attr:
        attr = self._attrs().get(path.strip("/"))
        if attr is None:
            raise GuestError(f"/{path.strip('/')}: no such file (-ENOENT)")
        return attr

    def read(self, path: str) -> str:
        return self._attr(path).read()

    def write(self, path: str, untrusted_text: str) -> None:
        """Write like ``echo VALUE > /sys/...``; refused writes raise ``GuestError``."""
        attr = self._attr(path)
        if attr.write is None:
            raise GuestError(f"/{path.strip('/')}: read-only (-EACCES)")
        attr.write(untrusted_text)

    # -- writers ---------------------------------------------------------------------------

    def _write_target_kb(self, untrusted: str) -> None:
        target_bytes = (c_strtoull(untrusted)[0] * 1024) & 0xFFFFFFFFFFFFFFFF
        self.guest.balloon.set_new_target(target_bytes >> PAGE_SHIFT)

    def _write_target(self, untrusted: str) -> None:
        self.guest.balloon.set_new_target(memparse(untrusted) >> PAGE_SHIFT)

    def _ulong_writer(self, field: str) -> Callable[[str], None]:
        def write(untrusted: str) -> None:
            value = _kstrtoul0(untrusted)
            if value is None:
                raise GuestError(f"{field}: not a number (-EINVAL)")
            setattr(self.guest.balloon.stats, field, value)
        return write

    def _knob_reader(self, knob: str) -> Callable[[], str]:
        return lambda: f"{_signed32(int(getattr(self.guest.selfballoon.knobs, knob)))}\n"

    def _knob_writer(self, name: str, knob: str, boolean: bool) -> Callable[[str], None]:
        def write(untrusted: str) -> None:
            value = _kstrtoul10(untrusted)
            # the kernel checks the unsigned long, then stores an unsigned int: a value that
            # truncates to 0 is refused here too, since a 0 divisor or interval has no meaning
            if (value is None or (boolean and value not in (0, 1))
                    or (not boolean and value & _U32 == 0)):
                raise GuestError(f"{name}: invalid value {untrusted.strip()!r} (-EINVAL)")
            self.guest.selfballoon.set_knob(knob, bool(value) if boolean else value & _U32)
        return write

    # -- a real directory ------------------------------------------------------------------

    def mirror(self, root: str | Path) -> Path:
        """Write every file under ``root``; remember the contents for ``apply``."""
        root = Path(root)
        self._mirrored = {}
        for path, attr in self._attrs().items():
            text = attr.read()
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            self._mirrored[path] = text
        return root

    def apply(self, root: str | Path) -> list[str]:
        """Feed back writable files under ``root`` changed since ``mirror``; return the paths
        applied. A refused write raises ``GuestError`` (the earlier ones stay applied)."""
        root = Path(root)
        applied = []
        for path, attr in sorted(self._attrs().items()):
            if attr.write is None:
                continue
            try:
                text = (root / path).read_text()
            except OSError:
                continue
            if text != self._mirrored.get(path):
                attr.write(text)
                applied.append(path)
        return applied
