"""The compiled inner loop of the vectorised replay (numba): every setting of one interval
group stepped through every worker run, then integrated window by window.

Imported only by ``xentmem.tuning.sweep._group`` when a replay runs (numba takes a moment to
load and compile; ``cache=True`` keeps the machine code beside this file for the next process).
The arithmetic is ``xentmem.tuning.replay``'s, in int64 with the same truncating divisions (all
operands are non-negative, so numba's floor division is C's).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["SCORES", "empty_record", "run_group"]

# the score accumulators, in the order of run_group's output columns
SCORES = ("held_page_ms", "frontswap_page_ms", "peak_held", "shortfall_page_ms",
          "peak_shortfall", "target_changes", "shrinks", "repatriated")
_SERIES = 10  # the planes of `rec`: the per-run series in xentmem.tuning.replay.SERIES order


Array = np.ndarray  # int64 throughout


@njit(cache=True, nogil=True)
def run_group(run_ms: Array, run_c: Array, run_r: Array, run_m: Array, peak_demand: Array,
              base_floor: Array,  # per run
              win_dur: Array, win_peak: Array, seg_lo: Array, seg_demand: Array,
              seg_dt: Array,  # per window / segment
              down: Array, up: Array, min_usable_pages: Array, reserved_pages: Array,
              hyst: Array, inertia: Array, sb: Array, ss: Array,  # per setting
              totalram0: int, frontswap0: int, step: int,
              out: Array, rec: Array, after: Array) -> None:
    """Replay each setting (row of ``out``): ``out[j]`` gets the ``SCORES`` columns; when
    ``rec`` has rows, ``rec[:, j, k]`` the ``SERIES`` of run k and ``after[j, k]`` totalram
    after run k. Window w is the time after run w (w = 0: before the first run); its segments
    are ``seg_lo[w]:seg_lo[w + 1]``; ``win_peak[w]`` their highest demand."""
    runs = run_ms.shape[0]
    record = rec.shape[1] > 0
    for j in range(down.shape[0]):
        T = totalram0
        F = frontswap0
        cur = 0
        counter = 0
        last_target = T
        held = fs = short = peak_held = peak_short = 0
        changes = shrinks = repatriated = 0
        for w in range(runs + 1):
            if w > 0:  # run k = w - 1 sets the state of window w
                k = w - 1
                C = run_c[k]
                R = run_r[k]
                shortfall = max(peak_demand[k] - T, 0)
                F = min(max(F, shortfall), C)
                goal = reserved_pages[j] + C + R
                if ss[j]:
                    goal += F
                diff = goal - T
                tgt = T - (-diff) // down[j] if diff < 0 else T + diff // up[j]
                floor = base_floor[k]
                if min_usable_pages[j] != 0:
                    floor = min_usable_pages[j] + R
                target = max(tgt, floor)
                if not sb[j]:
                    target = T
                seen_F = F
                shrink_to = -1
                if ss[j]:  # frontswap_selfshrink
                    growth = F == 0 or cur < F
                    dec = counter - 1 if counter > 0 else 0
                    counter = inertia[j] if growth else dec
                    cur = F
                    if not growth and dec == 0:
                        shrink_to = 0 if hyst[j] >= F else F - F // hyst[j]
                        shrinks += 1
                        repatriated += F - shrink_to
                        F = shrink_to
                if record:
                    rec[0, j, k] = run_ms[k]
                    rec[1, j, k] = C
                    rec[2, j, k] = R
                    rec[3, j, k] = T
                    rec[4, j, k] = seen_F
                    rec[5, j, k] = shortfall
                    rec[6, j, k] = goal
                    rec[7, j, k] = floor
                    rec[8, j, k] = target
                    rec[9, j, k] = shrink_to
                if target != last_target:
                    changes += 1
                last_target = target
                if step:
                    target = max(T - step, min(T + step, target))
                T = min(target, run_m[k])
                if record:
                    after[j, k] = T
            # integrate window w with the state (T, F) it holds
            dur = win_dur[w]
            if dur > 0:
                held += T * dur
                fs += F * dur
                peak_held = max(peak_held, T)
            if win_peak[w] > T:  # some demand in this window is above totalram
                for s in range(seg_lo[w], seg_lo[w + 1]):
                    over = seg_demand[s] - T
                    if over > 0:
                        short += over * seg_dt[s]
                        peak_short = max(peak_short, over)
        out[j, 0] = held
        out[j, 1] = fs
        out[j, 2] = peak_held
        out[j, 3] = short
        out[j, 4] = peak_short
        out[j, 5] = changes
        out[j, 6] = shrinks
        out[j, 7] = repatriated


def empty_record() -> tuple[np.ndarray, np.ndarray]:
    """The ``rec`` and ``after`` arguments when no series is recorded."""
    return np.empty((_SERIES, 0, 0), dtype=np.int64), np.empty((0, 0), dtype=np.int64)
