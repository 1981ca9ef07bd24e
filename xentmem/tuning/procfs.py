"""A collector at the rim for a real Linux guest: sample ``/proc/meminfo``, ``/proc/zoneinfo``
and the Xen balloon's sysfs into a trace, for the same replays as emulated or synthetic ones.

What each column is made of (pages of 4 KiB):

- ``committed`` = meminfo ``Committed_AS`` / 4 (the law's C, ref §4.4);
- ``totalram`` = meminfo ``MemTotal`` / 4 (totalram_pages);
- ``reserve`` = totalreserve_pages, recomputed from zoneinfo exactly as the kernel's
  ``calculate_totalreserve_pages`` does: per zone, the largest ``protection`` (lowmem_reserve)
  entry from the zone's own index on, plus its ``high`` watermark, capped at ``managed``;
- ``max_pfn`` = the highest ``start_pfn + spanned`` of a populated zone;
- ``maxram`` = totalram + the pages in the balloon (``xen_memory0/info/low_kb + high_kb``), or
  totalram where there is no Xen balloon;
- frontswap pages are not exported by the 3.x kernels (debugfs has counters only): no column.

The parsers take ``untrusted_*`` text and never raise: a field that is missing or garbled gives
``None``, and the sampler then refuses the sample with a ``TraceError`` naming the file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from xentmem.agent.procfs import totalreserve_pages, zoneinfo_max_pfn  # one reader
from xentmem.errors import TraceError
from xentmem.tuning.trace import Trace

__all__ = ["ProcSample", "RecordInterrupted", "parse_meminfo", "read_sample", "record_procfs",
           "totalreserve_pages", "zoneinfo_max_pfn"]

_BALLOON = "sys/devices/system/xen_memory/xen_memory0/info"


def parse_meminfo(untrusted_text: str) -> dict[str, int]:
    """``/proc/meminfo`` as {field: kB} (fields whose value is not ``<digits> kB`` are left
    out)."""
    out: dict[str, int] = {}
    for line in untrusted_text.splitlines():
        key, sep, rest = line.partition(":")
        parts = rest.split()
        if sep and len(parts) == 2 and parts[1] == "kB" and parts[0].isascii() \
                and parts[0].isdigit():
            out[key.strip()] = int(parts[0])
    return out


@dataclass(frozen=True)
class ProcSample:
    """One reading, in pages."""

    committed: int
    totalram: int
    reserve: int
    max_pfn: int
    maxram: int


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise TraceError(f"{path}: cannot read: {exc.strerror or exc}") from None


def read_sample(root: Path = Path("/")) -> ProcSample:
    """Read one sample from the system under ``root`` (``/`` or a copy of its files)."""
    meminfo_path, zoneinfo_path = root / "proc/meminfo", root / "proc/zoneinfo"
    meminfo = parse_meminfo(_read(meminfo_path))
    zoneinfo = _read(zoneinfo_path)
    if "Committed_AS" not in meminfo or "MemTotal" not in meminfo:
        raise TraceError(f"{meminfo_path}: no Committed_AS or MemTotal in kB")
    reserve, max_pfn = totalreserve_pages(zoneinfo), zoneinfo_max_pfn(zoneinfo)
    if reserve is None or max_pfn is None:
        raise TraceError(f"{zoneinfo_path}: cannot compute totalreserve_pages / max_pfn")
    totalram = meminfo["MemTotal"] // 4
    balloon = 0
    info = root / _BALLOON
    if info.is_dir():
        for name in ("low_kb", "high_kb"):
            text = _read(info / name).strip()
            if not (text.isascii() and text.isdigit()):
                raise TraceError(f"{info / name}: not a number of kB: {text[:40]!r}")
            balloon += int(text) // 4
    return ProcSample(committed=meminfo["Committed_AS"] // 4, totalram=totalram,
                      reserve=reserve, max_pfn=max(max_pfn, totalram),
                      maxram=min(totalram + balloon, max(max_pfn, totalram)))


class RecordInterrupted(KeyboardInterrupt):
    """Ctrl-C while recording: ``trace`` holds the samples taken so far (None if fewer than
    two, which make no trace)."""

    def __init__(self, trace: Trace | None) -> None:
        super().__init__()
        self.trace = trace


def record_procfs(duration: float, step: float, *, root: Path = Path("/"), name: str = "proc",
                  clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep,
                  on_sample: Callable[[float], None] | None = None) -> Trace:
    """Sample every ``step`` seconds for ``duration`` seconds (first sample at once); each
    wait is at most ``step``. Times are relative to the first sample, in milliseconds.
    Interrupted (Ctrl-C), it raises :class:`RecordInterrupted` with what it has."""
    if not (step > 0 and duration >= step):
        raise TraceError("record: need step > 0 and duration >= step")
    cols: dict[str, list[int]] = {k: [] for k in ("time_ms", "committed", "reserve", "max_pfn",
                                                  "totalram", "maxram")}
    start = clock()
    count = int(duration / step + 1e-9) + 1

    def trace() -> Trace:
        return Trace.build(cols["time_ms"], cols["committed"], cols["reserve"], cols["max_pfn"],
                           cols["totalram"], cols["maxram"], None, name=name)

    try:
        for n in range(count):
            due = start + n * step
            wait = due - clock()
            if wait > 0:
                sleep(min(wait, step))
            now_ms = round((clock() - start) * 1000)
            if cols["time_ms"] and now_ms <= cols["time_ms"][-1]:
                now_ms = cols["time_ms"][-1] + 1  # a coarse clock: keep time increasing
            sample = read_sample(root)
            cols["time_ms"].append(now_ms)
            for key in ("committed", "reserve", "max_pfn", "totalram", "maxram"):
                cols[key].append(getattr(sample, key))
            if on_sample is not None:
                on_sample(now_ms / 1000)
    except KeyboardInterrupt:
        rows = min(len(c) for c in cols.values())  # a row the interrupt cut short goes
        for c in cols.values():
            del c[rows:]
        raise RecordInterrupted(trace() if rows >= 2 else None) from None
    return trace()
