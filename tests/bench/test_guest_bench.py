"""Guest-model benchmarks (``-m bench``): the figures of ``xentmem bench guest`` at full size.

    .venv/bin/python -m pytest tests/bench/test_guest_bench.py -m bench -q -s
    .venv/bin/xentmem bench guest            # the same, as a table

frontswap store+load with no backend (the one-attribute fast path), zcache and tmem on the
emulated hypervisor; one store call with and without a backend; draining N pages on unload.
"""

from __future__ import annotations

import pytest

from xentmem.emulator.bench_guest import bench_guest

pytestmark = pytest.mark.bench


@pytest.mark.parametrize("pages", [20_000, 50_000])
def test_bench_guest(pages):
    rows = {r.case: r for r in bench_guest(pages, rounds=3)}
    for row in rows.values():
        print(f"\n{row.case:<48} {row.pages:>7} pages  {row.seconds:8.3f} s  "
              f"{row.pages_per_s:>10,.0f} /s  {row.ns_per_call:>9,.0f} ns", end="")
    print()
    fast = rows["one frontswap_store call, no backend"].ns_per_call
    assert fast < rows["one frontswap_store call, tmem on emulated Xen 4.12"].ns_per_call
    assert rows["unload tmem: drain to swap"].pages == pages
