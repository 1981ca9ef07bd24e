"""The vectorised replay (every knob combination at once) and the knob sweep on top of it:
grid, scores, Pareto front, recommendation.

The model is the scalar reference's (``xentmem.tuning.replay``), step for step, in int64:
``replay_many(trace, knobs)`` gives the same series and ``Scores`` as ``replay`` for each
setting (a property test checks it). Combinations are grouped by ``interval`` (each interval
has its own run times); numpy lays out a group's schedule (run times, the samples each run
reads, the merged timeline of samples and runs), and a compiled loop
(``xentmem.tuning._kernel``, numba) steps each combination through it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from xentmem.guest.selfballoon import MB, SelfBalloonKnobs
from xentmem.tuning.knobs import (  # the knob names and grids, re-exported for callers here
    KNOBS,
    MAX_COMBINATIONS,
    expand_grid,
    guest_set_line,
    knob_values,
    parse_grid,
    parse_knobs,
)
from xentmem.tuning.replay import SERIES, Scores
from xentmem.tuning.trace import Trace

__all__ = [
    "KNOBS",
    "MAX_COMBINATIONS",
    "ManyReplays",
    "SweepResult",
    "expand_grid",
    "knob_values",
    "parse_grid",
    "parse_knobs",
    "replay_many",
    "sweep",
]

_SCORE_FIELDS = tuple(f.name for f in fields(Scores))


# -- the vectorised replay ---------------------------------------------------------------------

@dataclass(frozen=True)
class _Schedule:
    """The exogenous part of a replay at one interval, per run: its time, the committed,
    reserve and maxram of the sample it reads, the peak demand while the previous totalram was
    in effect, the piecewise floor; per state window (0 before run 1, k after run k): its
    length, its peak demand and its first segment; per segment of the merged timeline of
    samples and runs: demand and length."""

    run_ms: np.ndarray
    run_c: np.ndarray
    run_r: np.ndarray
    run_m: np.ndarray
    peak_demand: np.ndarray
    base_floor: np.ndarray
    win_dur: np.ndarray
    win_peak: np.ndarray
    seg_lo: np.ndarray
    seg_demand: np.ndarray
    seg_dt: np.ndarray


def _piecewise_floor(reserve: np.ndarray, max_pfn: np.ndarray) -> np.ndarray:
    """``selfballoon_floor`` with min_usable_mb = 0, over arrays."""
    useful = np.maximum(max_pfn - reserve, 0)
    return np.select(
        [useful < 16 * MB, useful < 64 * MB, useful < 512 * MB],
        [max_pfn, reserve + 16 * MB + (useful - 16 * MB) // 2,
         reserve + 40 * MB + (useful - 40 * MB) // 8],
        reserve + 99 * MB + (useful - 99 * MB) // 32)


def _schedule(trace: Trace, interval_ms: int) -> _Schedule:
    times, demand = trace.time_ms, trace.demand
    t0, tend = int(times[0]), int(times[-1])
    runs = (tend - t0) // interval_ms
    run_ms = t0 + interval_ms * np.arange(1, runs + 1, dtype=np.int64)
    run_sample = np.searchsorted(times, run_ms, side="left") - 1  # the last sample before
    # the merged timeline: two sorted runs, so a stable sort merges them in linear time
    points = np.concatenate((times, run_ms))
    points.sort(kind="stable")
    points = points[np.concatenate(([True], points[1:] != points[:-1]))]
    seg_start, seg_dt = points[:-1], np.diff(points)
    seg_demand = demand[np.searchsorted(times, seg_start, side="right") - 1]
    seg_window = np.searchsorted(run_ms, seg_start, side="right")  # non-decreasing
    seg_lo = np.searchsorted(seg_window, np.arange(runs + 2), side="left")
    elapsed = np.concatenate(([0], np.cumsum(seg_dt)))
    win_dur = elapsed[seg_lo[1:]] - elapsed[seg_lo[:-1]]
    # the window before each run has positive length (runs are an interval apart); only the
    # last window (after the last run) can be empty
    win_peak = np.full(runs + 1, np.iinfo(np.int64).min, dtype=np.int64)
    live = seg_lo[1:] > seg_lo[:-1]
    win_peak[live] = np.maximum.reduceat(seg_demand, seg_lo[:-1][live])
    base_floor = _piecewise_floor(trace.reserve[run_sample], trace.max_pfn[run_sample])
    return _Schedule(run_ms, trace.committed[run_sample], trace.reserve[run_sample],
                     trace.maxram[run_sample], win_peak[:runs], base_floor, win_dur, win_peak,
                     seg_lo, seg_demand, seg_dt)


@dataclass(frozen=True)
class ManyReplays:
    """The vectorised replay of ``knobs``: ``scores`` maps each ``Scores`` field to an int64
    array (one value per setting); ``series[j]`` / ``totalram_after[j]`` hold setting j's
    per-run series when recorded."""

    knobs: list[SelfBalloonKnobs]
    balloon_rate: int
    scores: dict[str, np.ndarray]
    series: list[dict[str, np.ndarray]] | None
    totalram_after: list[np.ndarray] | None

    def scores_at(self, j: int) -> Scores:
        return Scores(**{name: int(self.scores[name][j]) for name in _SCORE_FIELDS})


def _group(trace: Trace, knobs: Sequence[SelfBalloonKnobs], interval: int, balloon_rate: int,
           record: bool) -> tuple[dict[str, np.ndarray], np.ndarray | None, np.ndarray | None]:
    """Replay every setting of ``knobs`` (all with ``interval``): the scores, and when
    ``record`` the series (planes in ``SERIES`` order, settings x runs) and totalram after
    each run."""
    from xentmem.tuning._kernel import SCORES, empty_record, run_group  # numba: on demand

    n = len(knobs)
    sched = _schedule(trace, interval * 1000)
    runs = len(sched.run_ms)

    def col(name: str) -> np.ndarray:
        return np.fromiter((int(getattr(k, name)) for k in knobs), dtype=np.int64, count=n)

    if record:
        rec = np.empty((len(SERIES), n, runs), dtype=np.int64)
        after = np.empty((n, runs), dtype=np.int64)
    else:
        rec, after = empty_record()
    out = np.empty((n, len(SCORES)), dtype=np.int64)
    s = sched
    run_group(s.run_ms, s.run_c, s.run_r, s.run_m, s.peak_demand, s.base_floor,
              s.win_dur, s.win_peak, s.seg_lo, s.seg_demand, s.seg_dt,
              col("downhysteresis"), col("uphysteresis"), col("min_usable_mb") * MB,
              col("reserved_mb") * MB, col("frontswap_hysteresis"), col("frontswap_inertia"),
              col("selfballooning"), col("frontswap_selfshrinking"),
              int(trace.totalram[0]), int(trace.frontswap[0]), balloon_rate * interval,
              out, rec, after)
    duration = trace.duration_ms
    scores = {"duration_ms": np.full(n, duration, dtype=np.int64),
              "runs": np.full(n, runs, dtype=np.int64),
              "baseline_page_ms": np.full(n, int(trace.totalram[0]) * duration, dtype=np.int64),
              **{name: out[:, c] for c, name in enumerate(SCORES)}}
    return scores, (rec if record else None), (after if record else None)


def replay_many(trace: Trace, knobs: Sequence[SelfBalloonKnobs], *, balloon_rate: int = 0,
                record: bool = False) -> ManyReplays:
    """Replay every setting in ``knobs`` over ``trace`` (vectorised); ``record`` keeps each
    setting's per-run series (memory grows with settings x runs)."""
    if balloon_rate < 0:
        raise ValueError(f"balloon_rate must be >= 0 pages/s, not {balloon_rate}")
    knobs = list(knobs)
    n = len(knobs)
    scores = {name: np.zeros(n, dtype=np.int64) for name in _SCORE_FIELDS}
    series: list[dict[str, np.ndarray]] | None = [{}] * n if record else None
    after: list[np.ndarray] | None = [np.empty(0)] * n if record else None
    intervals = np.array([k.interval for k in knobs], dtype=np.int64)
    for interval in np.unique(intervals):
        idx = np.flatnonzero(intervals == interval)
        sc, rec, aft = _group(trace, [knobs[j] for j in idx], int(interval), balloon_rate,
                              record)
        for name in _SCORE_FIELDS:
            scores[name][idx] = sc[name]
        if series is not None and after is not None and rec is not None and aft is not None:
            for row, j in enumerate(idx):
                series[j] = {key: rec[c, row] for c, key in enumerate(SERIES)}
                after[j] = aft[row]
    return ManyReplays(knobs, balloon_rate, scores, series, after)


# -- the sweep -----------------------------------------------------------------------------------

def _versus(new: float, old: float) -> str:
    """``new`` against ``old`` in words: "12% less", "3% more", "the same"."""
    if new == old:
        return "the same"
    if not old:
        return "more"
    pct = 100 * (old - new) / old
    return f"{abs(pct):.1f}% {'less' if pct > 0 else 'more'}"


def _memory(s: Scores) -> str:
    """Mean memory held and mean shortfall, for the rationale."""
    return (f"{s.mean_held_mib:.1f} MiB held and {s.mean_shortfall_mib:.2f} MiB short on "
            f"average ({s.shortfall_page_s:,.0f} page-s)")


def _pareto(held: np.ndarray, short: np.ndarray) -> np.ndarray:
    """Indices not dominated in (held, shortfall), both minimised; sorted by held."""
    order = np.lexsort((short, held))
    front: list[int] = []
    best: int | None = None
    prev: tuple[int, int] | None = None
    for j in order.tolist():
        point = (int(held[j]), int(short[j]))
        if best is None or point[1] < best:
            front.append(j)
            best, prev = point[1], point
        elif point == prev:
            front.append(j)  # an exact tie with a front point is not dominated by it
    return np.array(front, dtype=np.int64)


@dataclass(frozen=True)
class SweepResult:
    """A sweep: the settings tried, their scores, the kernel defaults' scores, the Pareto front
    (indices), the recommended index and why."""

    trace: Trace
    grid: dict[str, tuple[int, ...]]
    knobs: list[SelfBalloonKnobs]
    replays: ManyReplays
    defaults: Scores
    pareto: list[int]
    recommended: int
    budget_page_ms: int
    rationale: str  # ends with the apply line
    guest: str = "DOM"  # the guest the apply line names

    def scores(self, j: int) -> Scores:
        return self.replays.scores_at(j)

    @property
    def apply(self) -> str:
        """The ``xentmem guest set`` line that applies the recommendation."""
        return guest_set_line(self.knobs[self.recommended], self.guest)

    def row(self, j: int) -> dict[str, Any]:
        """Setting j: the swept knobs, then the headline scores."""
        values = knob_values(self.knobs[j])
        knob_cols = {name: values[name] for name in self.grid}
        return {"index": j, **knob_cols, **self.scores(j).as_row(),
                "pareto": j in self._front, "recommended": j == self.recommended}

    @property
    def _front(self) -> set[int]:
        return set(self.pareto)

    def as_dict(self, *, all_rows: bool = True) -> dict[str, Any]:
        """Everything a script needs (``--json``)."""
        rec = self.knobs[self.recommended]
        return {
            "trace": self.trace.summary(),
            "grid": {k: list(v) for k, v in self.grid.items()},
            "combinations": len(self.knobs),
            "balloon_rate": self.replays.balloon_rate,
            "defaults": self.defaults.as_row(),
            "recommended": {"index": self.recommended,
                            "knobs": knob_values(rec),
                            "scores": self.scores(self.recommended).as_row(),
                            "rationale": self.rationale, "apply": self.apply},
            "shortfall_budget_page_s": self.budget_page_ms / 1000,
            "pareto": [self.row(j) for j in self.pareto],
            **({"results": [self.row(j) for j in range(len(self.knobs))]} if all_rows else {}),
        }


def sweep(trace: Trace, grid: Mapping[str, Sequence[int]], *,
          base: SelfBalloonKnobs | None = None, balloon_rate: int = 0,
          max_shortfall_page_s: float | None = None, guest: str = "DOM") -> SweepResult:
    """Replay every combination of ``grid`` and pick one.

    The recommendation is the Pareto setting holding the least memory whose shortfall stays
    within the budget (default: the kernel defaults' own shortfall on this trace, so it never
    swaps more than an untuned guest); ties go to fewer target changes, then less frontswap,
    then grid order. If no setting meets the budget, the one with the least shortfall. The
    rationale ends with the ``xentmem guest set`` line that applies it to ``guest``."""
    knobs = expand_grid(grid, base)
    many = replay_many(trace, [*knobs, SelfBalloonKnobs()], balloon_rate=balloon_rate)
    defaults = many.scores_at(len(knobs))
    scores = {name: arr[:-1] for name, arr in many.scores.items()}
    many = ManyReplays(knobs, balloon_rate, scores, None, None)
    held, short = scores["held_page_ms"], scores["shortfall_page_ms"]
    front = _pareto(held, short)
    if max_shortfall_page_s is None:
        budget, source = defaults.shortfall_page_ms, "the kernel defaults' shortfall"
    else:
        budget, source = round(max_shortfall_page_s * 1000), "the given budget"
    ok = front[short[front] <= budget]
    key_cols = (scores["frontswap_page_ms"], scores["target_changes"])
    if len(ok):
        pool = ok
        order = np.lexsort((pool, key_cols[0][pool], key_cols[1][pool], held[pool]))
    else:
        pool = front
        order = np.lexsort((pool, key_cols[1][pool], held[pool], short[pool]))
    best = int(pool[order[0]])
    s = many.scores_at(best)
    default = knob_values(SelfBalloonKnobs())
    changed = {k: v for k, v in knob_values(knobs[best]).items() if v != default[k]}
    setting = ", ".join(f"{k}={v}" for k, v in changed.items()) or "the kernel defaults"
    within = f"within {source} ({budget / 1000:,.0f} page-s)"
    if len(ok) and changed:
        why = (f"{setting}: {_memory(s)}, against the kernel defaults' {_memory(defaults)}: "
               f"{_versus(s.held_page_ms, defaults.held_page_ms)} memory and "
               f"{_versus(s.shortfall_page_ms, defaults.shortfall_page_ms)} shortfall "
               f"({s.saved_pct:.1f}% less memory than never ballooning; {s.target_changes:,} "
               f"target changes in {s.runs:,} runs). It holds the least memory of the "
               f"{len(ok)} Pareto settings with a shortfall {within}.")
    elif len(ok):
        why = (f"the kernel defaults: no setting of the grid holds less memory with a shortfall "
               f"{within}; they hold {_memory(s)}.")
    else:
        why = (f"{setting}: no setting of the grid keeps the shortfall {within}; this one "
               f"swaps least, with {_memory(s)}.")
    why += f" Apply with: {guest_set_line(knobs[best], guest)}"
    return SweepResult(trace, {k: tuple(v) for k, v in grid.items()}, knobs, many, defaults,
                       front.tolist(), best, budget, why, guest)
