"""The self-balloon and frontswap self-shrink law (``drivers/xen/xen-selfballoon.c``, Linux
3.10-3.12; ref §4.4-§4.5), as pure functions over frozen dataclasses. No I/O, no clock: the
driver in ``xentmem.guest.balloon`` and the tuning replays call these with snapshots.

All arithmetic is unsigned integer with truncating division, in pages (``MB`` = 256 pages).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "MB",
    "MemorySnapshot",
    "SelfBalloonKnobs",
    "SelfShrinkState",
    "selfballoon_floor",
    "selfballoon_goal",
    "selfballoon_target",
    "selfshrink_step",
]

MB = 256  # MB2PAGES(1) with 4 KiB pages


@dataclass(frozen=True)
class SelfBalloonKnobs:
    """The sysfs knobs of ``xen_memory0/selfballoon`` with their defaults (ref §4.3)."""

    selfballooning: bool = True
    interval: int = 5  # seconds between worker runs
    downhysteresis: int = 8
    uphysteresis: int = 1
    min_usable_mb: int = 0  # 0 = use the piecewise-linear floor
    reserved_mb: int = 0
    frontswap_selfshrinking: bool = True
    frontswap_hysteresis: int = 20
    frontswap_inertia: int = 3

    def __post_init__(self) -> None:
        for name in ("interval", "downhysteresis", "uphysteresis", "frontswap_hysteresis"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")
        for name in ("min_usable_mb", "reserved_mb", "frontswap_inertia"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)}")


@dataclass(frozen=True)
class MemorySnapshot:
    """What the worker reads at one run, in pages: T = totalram, C = Committed_AS (clamped at
    0), R = totalreserve, P = max_pfn, Bcur = balloon current reservation, and the frontswap
    pages held (``frontswap_curr_pages``)."""

    totalram_pages: int
    committed_pages: int
    totalreserve_pages: int
    max_pfn: int
    balloon_current_pages: int
    frontswap_pages: int = 0


def selfballoon_floor(knobs: SelfBalloonKnobs, totalreserve_pages: int, max_pfn: int) -> int:
    """The lowest totalram the worker will aim for (from max_pfn, not totalram)."""
    reserve = totalreserve_pages
    if knobs.min_usable_mb:
        return reserve + knobs.min_usable_mb * MB
    useful = max(max_pfn - reserve, 0)
    if useful < 16 * MB:
        return max_pfn  # not worth ballooning
    if useful < 64 * MB:
        return reserve + 16 * MB + (useful - 16 * MB) // 2
    if useful < 512 * MB:
        return reserve + 40 * MB + (useful - 40 * MB) // 8
    return reserve + 99 * MB + (useful - 99 * MB) // 32  # ~3% final slope


def selfballoon_goal(knobs: SelfBalloonKnobs, snap: MemorySnapshot) -> int:
    """goal = C + R + reserved_mb, plus the frontswap pages when self-shrinking is on (room to
    bring them back)."""
    goal = max(snap.committed_pages, 0) + snap.totalreserve_pages + knobs.reserved_mb * MB
    if knobs.frontswap_selfshrinking:
        goal += snap.frontswap_pages
    return goal


def selfballoon_target(knobs: SelfBalloonKnobs, snap: MemorySnapshot) -> int:
    """The balloon target one worker run sets (``tgt + Bcur - T``, reservation domain)."""
    cur = snap.totalram_pages
    tgt = cur
    goal = selfballoon_goal(knobs, snap)
    if cur > goal:
        tgt = cur - (cur - goal) // knobs.downhysteresis
    elif cur < goal:
        tgt = cur + (goal - cur) // knobs.uphysteresis
    tgt = max(tgt, selfballoon_floor(knobs, snap.totalreserve_pages, snap.max_pfn))
    return max(tgt + snap.balloon_current_pages - cur, 0)


@dataclass(frozen=True)
class SelfShrinkState:
    """``frontswap_selfshrink``'s statics and the inertia countdown."""

    cur: int = 0
    last: int = 0
    counter: int = 0


def selfshrink_step(knobs: SelfBalloonKnobs, state: SelfShrinkState, curr_pages: int
                    ) -> tuple[SelfShrinkState, int | None]:
    """One self-shrink run given ``frontswap_curr_pages``: the new state and the
    ``frontswap_shrink`` target, or ``None`` when this run does not shrink."""
    last, cur = state.cur, curr_pages
    if cur == 0 or cur > last:
        return SelfShrinkState(cur, last, knobs.frontswap_inertia), None
    counter = state.counter
    if counter:
        counter -= 1
        if counter:
            return SelfShrinkState(cur, last, counter), None
    hyst = knobs.frontswap_hysteresis
    tgt = 0 if cur <= hyst else cur - cur // hyst
    return SelfShrinkState(cur, last, counter), tgt
