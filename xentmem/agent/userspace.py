"""User-space self-ballooning: the agent runs the self-balloon law where the kernel has no
self-balloon driver (Linux 5.3+ removed it with tmem), and moves the balloon through the balloon
driver's ``target_kb``, which every kernel still has (ref linux-tmem-frontends §4.2-§4.4).

One run, every ``interval`` seconds once ``selfballooning`` is on (0->1 schedules the first run
after ``interval``, as the kernel's sysfs store does):

1. read ``/proc/meminfo`` (T = MemTotal, C = Committed_AS), ``/proc/zoneinfo`` (R =
   totalreserve_pages, P = max_pfn; :mod:`xentmem.agent.procfs`) and the balloon driver's
   ``info/current_kb`` (Bcur), through the agent's :class:`~xentmem.agent.sinks.Sink`;
2. the law's target: :func:`xentmem.guest.selfballoon.selfballoon_target`, the very function the
   kernel model's worker runs, with no frontswap term (no tmem: nothing to self-shrink);
3. capped at dom0's word: ``memory/target`` and the domain's maximum ``memory/static-max``
   (read by the agent from xenstore, through the sanitiser). The law never goes below its floor;
   where dom0's target is lower still, dom0's target wins, as it does for the kernel's balloon
   driver;
4. write ``target_kb``.

Where zoneinfo cannot be read, R is taken as 0 and P as ``memory/static-max``; a run whose
meminfo or balloon files are unreadable changes nothing and is tried again next interval.
Switching self-ballooning off, or stopping the agent, writes dom0's ``memory/target`` back.
Where dom0 has written neither node (a dom0 whose toolstack keeps none for itself), the balloon
target found when self-ballooning was switched on stands in for both: the ceiling and what is
given back.

The policy is pure (:func:`parse_inputs`, :func:`next_target`, :func:`ceiling_pages`); only
:class:`UserSpaceSelfBalloon` reads and writes, with an injectable clock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

from xentmem.errors import XentmemError
from xentmem.guest.selfballoon import (
    MemorySnapshot,
    SelfBalloonKnobs,
    selfballoon_floor,
    selfballoon_target,
)
from xentmem.guest.sysfs import BALLOON_DIR
from xentmem.xenstore import sanitize_kib

from .procfs import parse_meminfo, totalreserve_pages, zoneinfo_max_pfn
from .sinks import Sink

__all__ = [
    "CURRENT_KB",
    "LAW_KNOBS",
    "MEMINFO",
    "TARGET_KB",
    "ZONEINFO",
    "Limits",
    "Reading",
    "Step",
    "UserSpaceSelfBalloon",
    "ceiling_pages",
    "floor_target",
    "next_target",
    "parse_inputs",
]

log = logging.getLogger("xentmem.agent")

MEMINFO = "proc/meminfo"
ZONEINFO = "proc/zoneinfo"
TARGET_KB = f"{BALLOON_DIR}/target_kb"
CURRENT_KB = f"{BALLOON_DIR}/info/current_kb"
# the agent's key names -> SelfBalloonKnobs fields the user-space law keeps
LAW_KNOBS = {"selfballooning": "selfballooning", "interval": "interval",
             "downhysteresis": "downhysteresis", "uphysteresis": "uphysteresis",
             "min_usable_mb": "min_usable_mb", "reserved_mb": "reserved_mb"}
_KIB_PER_PAGE = 4
_HISTORY = 64  # steps kept for reports and tests


@dataclass(frozen=True)
class Limits:
    """dom0's word on this domain, in KiB (None where absent or garbled): ``memory/target``
    and ``memory/static-max``."""

    memory_target_kib: int | None
    static_max_kib: int | None


@dataclass(frozen=True)
class Reading:
    """One run's inputs, parsed: the law's snapshot (pages), the balloon driver's target before
    the run, and where R and P came from."""

    snapshot: MemorySnapshot
    target_pages: int
    reserve_from: str  # "zoneinfo", or "none" (taken as 0)
    max_pfn_from: str  # "zoneinfo" or "static-max"


@dataclass(frozen=True)
class Step:
    """One run: when (the controller's clock), what it read, and the targets (pages,
    reservation domain, as ``target_kb`` / 4)."""

    at: float
    reading: Reading
    law_pages: int  # selfballoon_target
    floor_pages: int  # the law's floor, as a balloon target
    ceiling_pages: int | None  # dom0's memory/target and static-max (or the target before)
    target_pages: int  # what was written


def ceiling_pages(limits: Limits) -> int | None:
    """The highest balloon target dom0 allows: its ``memory/target`` and the domain's maximum,
    whichever is lower (None when neither is known)."""
    known = [kib // _KIB_PER_PAGE for kib in (limits.memory_target_kib, limits.static_max_kib)
             if kib is not None]
    return min(known) if known else None


def parse_inputs(untrusted_meminfo: str | None, untrusted_zoneinfo: str | None,
                 untrusted_current_kb: str | None, untrusted_target_kb: str | None,
                 static_max_kib: int | None) -> Reading | str:
    """The law's inputs from the files' text, or one line saying which one is unusable. Never
    raises."""
    meminfo = parse_meminfo(untrusted_meminfo)
    if meminfo is None:
        return f"/{MEMINFO} is unreadable or garbled"
    if "MemTotal" not in meminfo or "Committed_AS" not in meminfo:
        return f"/{MEMINFO} has no MemTotal or Committed_AS"
    current_kib = sanitize_kib(untrusted_current_kb)
    target_kib = sanitize_kib(untrusted_target_kb)
    if current_kib is None or target_kib is None:
        return f"/{CURRENT_KB} or /{TARGET_KB} is missing or garbled (no Xen balloon driver?)"
    reserve = totalreserve_pages(untrusted_zoneinfo)
    max_pfn = zoneinfo_max_pfn(untrusted_zoneinfo)
    max_pfn_from = "zoneinfo"
    if max_pfn is None:
        if static_max_kib is None:
            return f"/{ZONEINFO} gives no max_pfn and memory/static-max is unreadable"
        max_pfn, max_pfn_from = static_max_kib // _KIB_PER_PAGE, "static-max"
    snapshot = MemorySnapshot(
        totalram_pages=meminfo["MemTotal"] // _KIB_PER_PAGE,
        committed_pages=meminfo["Committed_AS"] // _KIB_PER_PAGE,
        totalreserve_pages=reserve or 0, max_pfn=max_pfn,
        balloon_current_pages=current_kib // _KIB_PER_PAGE)
    return Reading(snapshot, target_kib // _KIB_PER_PAGE,
                   "zoneinfo" if reserve is not None else "none", max_pfn_from)


def next_target(knobs: SelfBalloonKnobs, snap: MemorySnapshot, ceiling: int | None) -> int:
    """The balloon target (pages) one user-space run writes: the law's, no higher than
    ``ceiling``. No frontswap term: without tmem there is nothing to self-shrink."""
    law = selfballoon_target(replace(knobs, frontswap_selfshrinking=False), snap)
    return law if ceiling is None else min(law, ceiling)


def floor_target(knobs: SelfBalloonKnobs, snap: MemorySnapshot) -> int:
    """The law's floor as a balloon target (the reservation domain: ``floor + Bcur - T``)."""
    floor = selfballoon_floor(knobs, snap.totalreserve_pages, snap.max_pfn)
    return max(floor + snap.balloon_current_pages - snap.totalram_pages, 0)


class UserSpaceSelfBalloon:
    """The self-balloon worker, run by the agent. ``clock`` gives seconds (monotonic); the
    agent calls :meth:`poll` often (it runs a step when one is due) and passes dom0's
    :class:`Limits` it read from xenstore. Thread-safe."""

    def __init__(self, sink: Sink, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.sink = sink
        self.clock = clock
        # the kernel's defaults, both flags off until asked for
        self.knobs = replace(SelfBalloonKnobs(), selfballooning=False,
                             frontswap_selfshrinking=False)
        self.steps: deque[Step] = deque(maxlen=_HISTORY)
        self.last_error: str | None = None
        self.limits = Limits(None, None)  # the last seen; used when xenstore is gone at exit
        self.before_kib: int | None = None  # target_kb when self-ballooning was switched on
        self._due: float | None = None
        self._lock = threading.RLock()

    @property
    def enabled(self) -> bool:
        return bool(self.knobs.selfballooning)

    @property
    def due_at(self) -> float | None:
        """When the next run is due (the clock's time), or None when not scheduled."""
        return self._due

    def applied(self) -> dict[str, int]:
        """The settings as the agent reports them (``selfshrinking`` is always 0)."""
        return {**{name: int(getattr(self.knobs, field)) for name, field in LAW_KNOBS.items()},
                "selfshrinking": 0}

    def set_knob(self, name: str, value: int) -> None:
        """Set one of :data:`LAW_KNOBS` (already validated); turning self-ballooning on
        schedules the first run ``interval`` s from now, turning it off unschedules it."""
        with self._lock:
            before = self.knobs
            self.knobs = replace(before, **{LAW_KNOBS[name]: bool(value)
                                            if name == "selfballooning" else int(value)})
            if name == "selfballooning":
                if value and not before.selfballooning:
                    self.before_kib = sanitize_kib(self.sink.read(TARGET_KB))
                    self._due = self.clock() + self.knobs.interval
                elif not value:
                    self._due = None

    def read(self, limits: Limits) -> Reading | str:
        """The inputs now, or why they cannot be had."""
        s = self.sink
        return parse_inputs(s.read(MEMINFO), s.read(ZONEINFO), s.read(CURRENT_KB),
                            s.read(TARGET_KB), limits.static_max_kib)

    def due(self) -> bool:
        """Whether a run is due now."""
        due = self._due
        return due is not None and self.clock() >= due

    def run(self, limits: Limits) -> Step | None:
        """One run of the worker, due or not (nothing while self-ballooning is off); the next
        is due ``interval`` s later. None (and :attr:`last_error` says why) if the inputs could
        not be read or the write was refused."""
        with self._lock:
            if not self.enabled:
                return None
            now = self.clock()
            self.limits = limits
            self._due = now + self.knobs.interval
            reading = self.read(limits)
            if isinstance(reading, str):
                return self._failed(reading)
            snap = reading.snapshot
            ceiling = ceiling_pages(limits)
            if ceiling is None and self.before_kib is not None:
                ceiling = self.before_kib // _KIB_PER_PAGE  # dom0 said nothing: no higher
            target = next_target(self.knobs, snap, ceiling)
            try:
                self.sink.write(TARGET_KB, f"{target * _KIB_PER_PAGE}\n")
            except XentmemError as exc:
                return self._failed(str(exc))
            step = Step(now, reading, selfballoon_target(self.knobs, snap),
                        floor_target(self.knobs, snap), ceiling, target)
            self.steps.append(step)
            if self.last_error is not None:
                log.info("user-space self-balloon: running again")
            self.last_error = None
            return step

    def _failed(self, why: str) -> None:
        if why != self.last_error:
            log.warning("user-space self-balloon: %s (trying again every interval)", why)
        self.last_error = why
        return None

    def release(self, limits: Limits | None = None) -> int | None:
        """Stop self-ballooning and give the balloon back to dom0's ``memory/target`` (the
        last one seen when ``limits`` has none, else the target from before self-ballooning);
        the KiB written, or None if there was no target to give back or the write was
        refused."""
        with self._lock:
            self.set_knob("selfballooning", 0)
            kib = limits.memory_target_kib if limits is not None else None
            if kib is None:
                kib = self.limits.memory_target_kib
            else:
                self.limits = limits
            if kib is None:
                kib = self.before_kib
            if kib is None:
                log.warning("user-space self-balloon: no memory/target to give the balloon "
                            "back to; it stays where it is")
                return None
            kib -= kib % _KIB_PER_PAGE  # the driver keeps whole pages
            try:
                self.sink.write(TARGET_KB, f"{kib}\n")
            except XentmemError as exc:
                log.warning("user-space self-balloon: giving the balloon back: %s", exc)
                return None
            return kib
