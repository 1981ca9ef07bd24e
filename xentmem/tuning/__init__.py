"""Self-balloon tuning: memory traces (files, synthetic, collected from an emulated guest, or
recorded from a real system's /proc by ``xentmem.tuning.procfs``), the closed-loop replay of
the Linux self-balloon law (scalar reference, and a sweep compiled with numba giving identical
numbers), knob sweeps with scores and a Pareto front, fleets of traces (in process or on Dask:
``xentmem.tuning.fleet``), and reports (terminal, JSON, HTML with plots).

Policy is pure: traces, replays and sweeps take frozen values and return numbers; only
``collect`` (the emulator), ``procfs`` (/proc, sysfs) and the file/HTML writers touch the
outside world. The plots and the HTML report live in ``xentmem.tuning.report`` (imported on
demand: matplotlib is slow to load).
"""

from xentmem.tuning.bench import bench
from xentmem.tuning.collect import CollectSpec, collect_trace, parse_workload
from xentmem.tuning.replay import SERIES, Replay, Scores, follow, replay
from xentmem.tuning.sweep import (
    KNOBS,
    ManyReplays,
    SweepResult,
    expand_grid,
    parse_grid,
    parse_knobs,
    replay_many,
    sweep,
)
from xentmem.tuning.synth import KINDS, SynthSpec, synthesize
from xentmem.tuning.trace import Trace, dumps_trace, load_trace, parse_trace, save_trace

__all__ = [
    "KINDS",
    "KNOBS",
    "SERIES",
    "CollectSpec",
    "ManyReplays",
    "Replay",
    "Scores",
    "SweepResult",
    "SynthSpec",
    "Trace",
    "bench",
    "collect_trace",
    "dumps_trace",
    "expand_grid",
    "follow",
    "load_trace",
    "parse_grid",
    "parse_knobs",
    "parse_trace",
    "parse_workload",
    "replay",
    "replay_many",
    "save_trace",
    "sweep",
    "synthesize",
]
