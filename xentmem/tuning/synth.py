"""Synthetic traces: a guest of ``memory_mb`` whose Committed_AS follows a shape, with seeded
noise, sampled every ``step`` seconds.

The guest's constants follow the guest model (``xentmem.guest.Guest``): max_pfn =
``memory_mb`` MiB, 1% of it (at least 1 MiB) outside totalram for the kernel, totalreserve =
max_pfn / 64; the trace starts unballooned (totalram = maxram) with no frontswap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xentmem.errors import TraceError
from xentmem.guest.selfballoon import MB
from xentmem.tuning.trace import Trace

__all__ = ["KINDS", "SynthSpec", "synthesize"]

KINDS = ("steady", "ramp", "bursty", "diurnal")
_DAY = 86400


@dataclass(frozen=True)
class SynthSpec:
    """What to generate. Loads are fractions of totalram: ``base`` is the usual Committed_AS,
    ``peak`` the highest the shape reaches (ramp end, burst top, diurnal noon); ``noise`` is the
    relative standard deviation of the per-sample jitter. Bursty: ``bursts`` per hour on
    average (at least one per trace), each ``burst`` seconds long on average, whatever the
    duration. Diurnal: ``period`` seconds from trough to trough (default: a day, or the
    duration when that is shorter)."""

    kind: str
    duration: int = 3600
    step: int = 5
    memory_mb: int = 1024
    base: float = 0.3
    peak: float = 0.8
    noise: float = 0.02
    bursts: float = 6.0
    burst: int = 120
    period: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise TraceError(f"unknown trace kind {self.kind!r} (one of {', '.join(KINDS)})")
        if self.step < 1 or self.duration < 2 * self.step:
            raise TraceError("need step >= 1 s and duration >= 2 steps")
        if self.duration // self.step > 1_000_000:
            raise TraceError("more than a million samples: use a larger step")
        if not 16 <= self.memory_mb <= 1 << 24:
            raise TraceError(f"memory_mb must be within [16, 2**24], not {self.memory_mb}")
        if not (0 <= self.base <= 4 and 0 <= self.peak <= 4 and 0 <= self.noise <= 1):
            raise TraceError("base and peak must be within [0, 4], noise within [0, 1]")
        if self.bursts < 0 or self.burst < 1 or (self.period is not None and self.period < 1):
            raise TraceError("bursts must be >= 0, burst and period >= 1 s")


def _shape(spec: SynthSpec, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The load (fraction of totalram) at times ``t`` before noise."""
    base, peak = spec.base, spec.peak
    if spec.kind == "steady":
        return np.full(len(t), base)
    if spec.kind == "ramp":
        return base + (peak - base) * t / spec.duration
    if spec.kind == "diurnal":
        period = spec.period or min(spec.duration, _DAY)
        return base + (peak - base) * (1 - np.cos(2 * np.pi * t / period)) / 2
    # bursty: Poisson arrivals, each a plateau of random height in the upper half of the range
    # lasting an exponential time (at least one sample), so bursts stay short and apart at any
    # duration; one at least, so a short trace is bursty too
    load = np.full(len(t), base)
    count = max(int(rng.poisson(spec.bursts * spec.duration / 3600)), int(spec.bursts > 0))
    for start, length, height in zip(rng.uniform(0, spec.duration, count),
                                     spec.step + rng.exponential(spec.burst, count),
                                     rng.uniform(0.5, 1.0, count), strict=True):
        on = (t >= start) & (t < start + length)
        load[on] = np.maximum(load[on], base + (peak - base) * height)
    return load


def synthesize(spec: SynthSpec) -> Trace:
    """A trace following ``spec`` (the same spec and seed give the same trace)."""
    rng = np.random.default_rng(spec.seed)
    t = np.arange(0, spec.duration + 1, spec.step, dtype=np.int64)
    max_pfn = spec.memory_mb * MB
    totalram = max_pfn - max(MB, max_pfn // 100)
    load = _shape(spec, t.astype(float), rng) * (1 + spec.noise * rng.standard_normal(len(t)))
    committed = np.clip(np.rint(load * totalram), 0, 4 * totalram).astype(np.int64)
    n = len(t)
    return Trace.build(t * 1000, committed, np.full(n, max_pfn // 64), np.full(n, max_pfn),
                       np.full(n, totalram), name=f"{spec.kind}-{spec.memory_mb}mb-s{spec.seed}")
