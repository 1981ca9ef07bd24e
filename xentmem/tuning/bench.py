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
    """Time ``replay_many`` (best of ``repeat``) and one pass of ``replay`` per setting, in
    wall-clock and CPU seconds (CPU time is the fairer figure on a shared machine; the
    speedup is computed from it)."""
    knobs = list(knobs)
    vector_wall = vector_cpu = float("inf")
    for _ in range(max(repeat, 1)):
        wall, cpu = time.perf_counter(), time.process_time()
        many = replay_many(trace, knobs, balloon_rate=balloon_rate)
        vector_wall = min(vector_wall, time.perf_counter() - wall)
        vector_cpu = min(vector_cpu, time.process_time() - cpu)
    wall, cpu = time.perf_counter(), time.process_time()
    scalar = [replay(trace, k, balloon_rate=balloon_rate).scores for k in knobs]
    scalar_wall, scalar_cpu = time.perf_counter() - wall, time.process_time() - cpu
    steps = sum(s.runs for s in scalar)
    return {
        "trace": trace.name,
        "samples": len(trace),
        "settings": len(knobs),
        "setting_runs": steps,
        "scalar_s": round(scalar_wall, 3),
        "vectorised_s": round(vector_wall, 3),
        "scalar_cpu_s": round(scalar_cpu, 3),
        "vectorised_cpu_s": round(vector_cpu, 3),
        "scalar_runs_per_cpu_s": round(steps / max(scalar_cpu, 1e-9)),
        "vectorised_runs_per_cpu_s": round(steps / max(vector_cpu, 1e-9)),
        "speedup": round(scalar_cpu / max(vector_cpu, 1e-9), 1),
        "identical": all(many.scores_at(j) == s for j, s in enumerate(scalar)),
    }
