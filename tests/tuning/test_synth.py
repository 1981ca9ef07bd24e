"""Synthetic traces look like their names, at any duration: checked on each trace's own
statistics (load as a fraction of totalram, bursts as runs of samples above the midpoint)."""

from __future__ import annotations

import numpy as np
import pytest

from xentmem.tuning.synth import SynthSpec, synthesize

HOUR, DAY, WEEK = 3600, 86400, 7 * 86400


def _load(spec: SynthSpec) -> np.ndarray:
    trace = synthesize(spec)
    return trace.committed / trace.totalram[0]


def _runs_above(load: np.ndarray, level: float) -> list[int]:
    """Lengths (samples) of the maximal runs of samples above ``level``."""
    above = np.concatenate(([False], load > level, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(above))
    return (edges[1::2] - edges[::2]).tolist()


@pytest.mark.parametrize(("duration", "step"), [(HOUR, 5), (DAY, 10), (WEEK, 60)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bursty_is_bursty_at_any_duration(duration: int, step: int, seed: int):
    spec = SynthSpec("bursty", duration=duration, step=step, seed=seed)
    load = _load(spec)
    mid = (spec.base + spec.peak) / 2 - 0.05  # bursts reach at least the midpoint (-noise)
    runs = _runs_above(load, mid)
    busy = sum(runs) / len(load)
    hours = duration / HOUR
    # about 6 bursts an hour of about 2 minutes: short, apart, and most of the time at base
    assert len(runs) >= max(1, 0.4 * spec.bursts * hours), runs
    assert np.mean(runs) * step <= 8 * 60, np.mean(runs) * step
    assert 0.005 <= busy <= 0.4, busy
    assert abs(np.median(load) - spec.base) < 0.03
    assert load.max() > spec.base + 0.5 * (spec.peak - spec.base)


def test_bursty_rate_and_length_follow_the_spec():
    few = _runs_above(_load(SynthSpec("bursty", duration=DAY, step=10, bursts=1, burst=600)),
                      0.5)
    many = _runs_above(_load(SynthSpec("bursty", duration=DAY, step=10, bursts=12, burst=30)),
                       0.5)
    assert 10 <= len(few) <= 40 and len(many) >= 150
    assert np.mean(few) * 10 > 4 * np.mean(many) * 10


def test_diurnal_has_one_peak_a_day():
    spec = SynthSpec("diurnal", duration=WEEK, step=300, noise=0.0)
    load = _load(spec)
    assert len(_runs_above(load, (spec.base + spec.peak) / 2)) == 7  # a week: seven days
    short = SynthSpec("diurnal", duration=6 * HOUR, step=60, noise=0.0)  # shorter than a day:
    assert len(_runs_above(_load(short), (short.base + short.peak) / 2)) == 1  # one cycle


def test_ramp_rises_and_steady_stays():
    ramp = _load(SynthSpec("ramp", duration=DAY, step=60))
    tenth = len(ramp) // 10
    assert ramp[:tenth].mean() < 0.35 and ramp[-tenth:].mean() > 0.75
    steady = _load(SynthSpec("steady", duration=DAY, step=60))
    assert abs(steady.mean() - 0.3) < 0.01 and steady.std() < 0.02


def test_the_readme_day_is_worth_tuning():
    # README: tune synth bursty --duration 86400 --step 10, then sweep
    # -g downhysteresis=1,2,4,8 -g reserved_mb=0,32,64
    from xentmem.guest.selfballoon import SelfBalloonKnobs
    from xentmem.tuning.knobs import parse_grid
    from xentmem.tuning.sweep import sweep

    day = synthesize(SynthSpec("bursty", duration=DAY, step=10))
    res = sweep(day, parse_grid(["downhysteresis=1,2,4,8", "reserved_mb=0,32,64"]))
    best = res.scores(res.recommended)
    assert res.knobs[res.recommended] != SelfBalloonKnobs()
    assert best.held_page_ms < res.defaults.held_page_ms
    assert best.shortfall_page_ms < res.defaults.shortfall_page_ms
    assert "less memory and" in res.rationale and "% less shortfall" in res.rationale
