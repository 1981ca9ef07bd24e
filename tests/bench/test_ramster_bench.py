"""RAMster benchmarks (``-m bench``): pages/s remotified and repatriated over loopback, GET
latency local vs remote, and a memory-heavy client's swap-outs with and without a memory
server; each printed with its same-process baseline.

    .venv/bin/python -m pytest tests/bench/test_ramster_bench.py -m bench -q -s
"""

from __future__ import annotations

import pytest

from xentmem.emulator.bench_ramster import bench_ramster

pytestmark = pytest.mark.bench


def test_bench_ramster() -> None:
    figures = bench_ramster()
    for f in figures:
        print(f"\n{f.case:<78} {f.value:>12,.1f} {f.unit:<8} baseline {f.baseline:>12,.1f}"
              f"  x{f.ratio:.3f}", end="")
    print()
    assert len(figures) == 9
