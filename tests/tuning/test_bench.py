"""Benchmark (``-m bench``): the vectorised sweep against the scalar reference on the same
grid, in one process. Prints the figures; asserts only that both gave identical scores (never
a timing)."""

from __future__ import annotations

import json

import pytest

from xentmem.cli.tune import BENCH_GRID
from xentmem.tuning import SynthSpec, bench, expand_grid, parse_grid, synthesize


@pytest.mark.bench
def test_vectorised_vs_scalar_sweep():
    trace = synthesize(SynthSpec("bursty", duration=21600, step=10, seed=1))
    result = bench(trace, expand_grid(parse_grid(list(BENCH_GRID))), repeat=2)
    print("\n" + json.dumps(result, indent=2))
    assert result["identical"] is True
    assert result["settings"] == 256 and result["setting_runs"] == 128 * 4320 + 128 * 2160
