"""Measure the vectorised replay against the scalar reference on the same settings, in one
process: settings x runs per second for each, the speedup, and whether they agreed."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from xentmem.guest.selfballoon import SelfBalloonKnobs
from xentmem.tuning.replay import replay
from xentmem.tuning.sweep import replay_many
from xentmem.tuning.trace import Trace

__all__ = ["bench"]


def bench(trace: Trace, knobs: Sequence[SelfBalloonKnobs], *, balloon_rate: int = 0,
          repeat: int = 3) -> dict[str, Any]:
    """Time ``replay_many`` (best of ``repeat``) and one pass of ``replay`` per setting."""
    knobs = list(knobs)
    vector_s = float("inf")
    for _ in range(max(repeat, 1)):
        started = time.perf_counter()
        many = replay_many(trace, knobs, balloon_rate=balloon_rate)
        vector_s = min(vector_s, time.perf_counter() - started)
    started = time.perf_counter()
    scalar = [replay(trace, k, balloon_rate=balloon_rate).scores for k in knobs]
    scalar_s = time.perf_counter() - started
    steps = sum(s.runs for s in scalar)
    return {
        "trace": trace.name,
        "samples": len(trace),
        "settings": len(knobs),
        "setting_runs": steps,
        "scalar_s": round(scalar_s, 4),
        "vectorised_s": round(vector_s, 4),
        "scalar_runs_per_s": round(steps / scalar_s),
        "vectorised_runs_per_s": round(steps / vector_s),
        "speedup": round(scalar_s / vector_s, 1),
        "identical": all(many.scores_at(j) == s for j, s in enumerate(scalar)),
    }
