"""The closed loop over a trace, one knob setting at a time: the scalar reference.

The model (the same for the vectorised sweep in ``xentmem.tuning.sweep``, which must give
identical numbers):

- The worker runs at ``t0 + k * interval`` for ``k = 1, 2, ...`` while that is within the trace
  (``xen_selfballoon_init`` schedules the first run one interval after start). It reads the
  last sample taken *before* that instant; a sample taken at the very instant of a run is seen
  by the next run, so the law reacts to a change one interval late at worst, never early.
- Between runs totalram ``T`` stays where the balloon left it. The trace's ``committed +
  reserve`` is the demand; ``shortfall = max(demand - T, 0)`` pages would be swapped out.
- Frontswap ``F`` (pages in tmem): at each run, the peak shortfall while the previous ``T`` was
  in effect (since the previous run) has been pushed out, and pages of memory that was freed
  left with it: ``F = min(max(F, peak shortfall), committed)``.
- The law (``xentmem.guest.selfballoon``, ref §4.4) gives the new totalram-domain target
  ``tgt`` from ``(T, committed, reserve, max_pfn, F)``; the reservation-domain target it writes
  is ``tgt + Bcur - T`` and the driver turns it back into ``tgt``. Self-ballooning off: no target.
- Self-shrink (ref §4.5) then runs on ``F``; when it shrinks, ``F`` becomes its target (the
  pages go back to RAM, and are pushed out again next run if they still do not fit).
- The balloon follows: **immediately** (the real driver loops in 512-page batches until done),
  or, with ``balloon_rate`` > 0 pages/s, by at most ``balloon_rate * interval`` pages per run;
  never above the trace's ``maxram`` (the balloon cannot deflate pages it never took).

Scores are exact integers over the trace's time (page-milliseconds); ``Scores.as_row`` gives
the derived MiB / page-second figures.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left, bisect_right
from dataclasses import asdict, dataclass, field
from typing import Any

from xentmem.guest.selfballoon import (
    MB,
    MemorySnapshot,
    SelfBalloonKnobs,
    SelfShrinkState,
    selfballoon_floor,
    selfballoon_goal,
    selfballoon_target,
    selfshrink_step,
)
from xentmem.tuning.trace import Trace

__all__ = ["SERIES", "Replay", "Scores", "follow", "replay"]

# the per-run series, in this order (all int pages but time_ms; shrink_to -1 = no shrink)
SERIES = ("time_ms", "committed", "reserve", "totalram", "frontswap", "shortfall", "goal",
          "floor", "target", "shrink_to")


@dataclass(frozen=True)
class Scores:
    """One knob setting's outcome over a trace, as exact integers.

    ``held`` and ``baseline`` integrate totalram (the replay's, and a never-ballooned guest's
    starting totalram) over time; ``shortfall`` integrates ``max(demand - T, 0)``;
    ``frontswap`` integrates ``F``. Peaks are over time with positive length.
    ``target_changes`` counts runs whose target differs from the previous one (the first from
    the starting totalram); ``shrinks`` the self-shrink runs that shrank, ``repatriated`` the
    frontswap pages they brought back."""

    duration_ms: int
    runs: int
    held_page_ms: int
    baseline_page_ms: int
    peak_held: int
    shortfall_page_ms: int
    peak_shortfall: int
    frontswap_page_ms: int
    target_changes: int
    shrinks: int
    repatriated: int

    @property
    def mean_held_mib(self) -> float:
        return self.held_page_ms / self.duration_ms / MB

    @property
    def saved_mib(self) -> float:
        return (self.baseline_page_ms - self.held_page_ms) / self.duration_ms / MB

    @property
    def saved_pct(self) -> float:
        return 100.0 * (self.baseline_page_ms - self.held_page_ms) / self.baseline_page_ms \
            if self.baseline_page_ms else 0.0

    @property
    def shortfall_page_s(self) -> float:
        return self.shortfall_page_ms / 1000

    @property
    def mean_shortfall_mib(self) -> float:
        return self.shortfall_page_ms / self.duration_ms / MB

    def as_row(self) -> dict[str, Any]:
        """The headline figures, rounded for people (MiB, page-seconds, counts)."""
        return {
            "mean_held_mib": round(self.mean_held_mib, 2),
            "peak_held_mib": round(self.peak_held / MB, 2),
            "saved_mib": round(self.saved_mib, 2),
            "saved_pct": round(self.saved_pct, 2),
            "shortfall_page_s": round(self.shortfall_page_s),
            "mean_shortfall_mib": round(self.mean_shortfall_mib, 3),
            "peak_shortfall_mib": round(self.peak_shortfall / MB, 2),
            "frontswap_page_s": round(self.frontswap_page_ms / 1000),
            "target_changes": self.target_changes,
            "shrinks": self.shrinks,
            "runs": self.runs,
        }

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Replay:
    """A replay: its knobs, the per-run ``series`` (lists keyed by ``SERIES``), the totalram
    in effect after each run (``totalram_after``) and the scores."""

    knobs: SelfBalloonKnobs
    balloon_rate: int
    series: dict[str, list[int]] = field(repr=False)
    totalram_after: list[int] = field(repr=False)
    scores: Scores

    def rows(self) -> list[dict[str, Any]]:
        """One dict per run (time in seconds)."""
        out = []
        for k in range(len(self.series["time_ms"])):
            row: dict[str, Any] = {"time_s": self.series["time_ms"][k] / 1000}
            row.update((key, self.series[key][k]) for key in SERIES[1:])
            row["totalram_after"] = self.totalram_after[k]
            out.append(row)
        return out


def follow(totalram: int, target: int, ceiling: int, step: int) -> int:
    """Where the balloon leaves totalram after one run: at ``target`` (``step`` = 0) or
    ``step`` pages closer to it, never above ``ceiling``."""
    if step:
        target = max(totalram - step, min(totalram + step, target))
    return min(target, ceiling)


def replay(trace: Trace, knobs: SelfBalloonKnobs, *, balloon_rate: int = 0) -> Replay:
    """Step the closed loop over ``trace`` with ``knobs`` (the scalar reference)."""
    if balloon_rate < 0:
        raise ValueError(f"balloon_rate must be >= 0 pages/s, not {balloon_rate}")
    times = [int(t) for t in trace.time_ms]
    C = [int(v) for v in trace.committed]
    R = [int(v) for v in trace.reserve]
    P = [int(v) for v in trace.max_pfn]
    M = [int(v) for v in trace.maxram]
    demand = [c + r for c, r in zip(C, R, strict=True)]
    t0, tend = times[0], times[-1]
    interval_ms = knobs.interval * 1000
    step = balloon_rate * knobs.interval

    T = int(trace.totalram[0])
    F = int(trace.frontswap[0])
    shrink_state = SelfShrinkState()
    series: dict[str, list[int]] = {key: [] for key in SERIES}
    T_states, F_states, run_ms = [T], [F], []
    last_target = T
    target_changes = shrinks = repatriated = 0
    t = t0 + interval_ms
    while t <= tend:
        # the samples in effect while T was: from the previous run (or start) until this one;
        # the run reads the last of them
        first = bisect_right(times, run_ms[-1] if run_ms else t0) - 1
        i = bisect_left(times, t) - 1
        shortfall = max(max(demand[first:i + 1]) - T, 0)
        F = min(max(F, shortfall), C[i])
        snap = MemorySnapshot(totalram_pages=T, committed_pages=C[i], totalreserve_pages=R[i],
                              max_pfn=P[i], balloon_current_pages=T, frontswap_pages=F)
        goal = selfballoon_goal(knobs, snap)
        floor = selfballoon_floor(knobs, R[i], P[i])
        # Bcur = T here, so the reservation-domain target is the totalram-domain one
        target = selfballoon_target(knobs, snap) if knobs.selfballooning else T
        shrink_to = -1
        seen_F = F
        if knobs.frontswap_selfshrinking:
            shrink_state, tgt = selfshrink_step(knobs, shrink_state, F)
            if tgt is not None:
                shrink_to = tgt
                shrinks += 1
                repatriated += F - tgt
                F = tgt
        for key, value in zip(SERIES, (t, C[i], R[i], T, seen_F, shortfall, goal, floor,
                                       target, shrink_to), strict=True):
            series[key].append(value)
        target_changes += target != last_target
        last_target = target
        T = follow(T, target, M[i], step)
        T_states.append(T)
        F_states.append(F)
        run_ms.append(t)
        t += interval_ms

    # integrate over the merged timeline of samples and runs
    held = short = fs = 0
    peak_held = peak_short = 0
    points = sorted(set(times) | set(run_ms))
    for a, b in itertools.pairwise(points):
        dt = b - a
        i = bisect_right(times, a) - 1
        k = bisect_right(run_ms, a)  # runs done by time a
        T_k = T_states[k]
        s = max(demand[i] - T_k, 0)
        held += T_k * dt
        short += s * dt
        fs += F_states[k] * dt
        peak_held = max(peak_held, T_k)
        peak_short = max(peak_short, s)
    scores = Scores(duration_ms=tend - t0, runs=len(run_ms), held_page_ms=held,
                    baseline_page_ms=T_states[0] * (tend - t0), peak_held=peak_held,
                    shortfall_page_ms=short, peak_shortfall=peak_short, frontswap_page_ms=fs,
                    target_changes=target_changes, shrinks=shrinks, repatriated=repatriated)
    return Replay(knobs, balloon_rate, series, T_states[1:], scores)
