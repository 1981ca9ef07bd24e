"""Guest-model benchmarks (``-m bench``): frontswap store+load throughput with the tmem backend
on the emulated hypervisor, with zcache, and with no backend (the one-attribute fast path), and
the time to drain N pages on unload.

    .venv/bin/python -m pytest tests/bench/test_guest_bench.py -m bench -q -s

Each test prints one line of figures; pytest-benchmark keeps the timing statistics.
"""

from __future__ import annotations

import pytest

from xentmem.abi import PAGE_SIZE
from xentmem.emulator import EmulatedHost
from xentmem.guest import Guest, XenTmem, Zcache, anon_content
from xentmem.hypercalls import Tmem
from xentmem.hypercalls.emulated import EmulatedHypervisor

pytestmark = pytest.mark.bench

PAGES = 20_000


def _tmem_module(max_memory_mb: int = 1024) -> XenTmem:
    host = EmulatedHost(memory_mb=4096, xen_version="4.12")
    domid = host.create_domain("bench", memory_mb=128, max_memory_mb=max_memory_mb)
    return XenTmem(Tmem(EmulatedHypervisor(host, domid), version="4.12"),
                   selfballooning=False, selfshrinking=False)


def _guest(backend) -> tuple[Guest, int]:
    guest = Guest("bench", memory_mb=128)
    sis = guest.swapon(PAGES + 1)
    if backend is not None:
        guest.load_backend(backend)
    return guest, sis.type


def _store_load(guest: Guest, type: int) -> int:
    """What swap_writepage + swap_readpage do around frontswap, page lock held."""
    fs, sis = guest.frontswap, guest.swap_info[type]
    pages = [anon_content(i + 1, 0) for i in range(PAGES)]
    buf = bytearray(PAGE_SIZE)
    hits = 0
    for offset in range(1, PAGES + 1):
        with sis.slot_lock(offset):
            fs.store(type, offset, pages[offset - 1])
    for offset in range(1, PAGES + 1):
        with sis.slot_lock(offset):
            hits += fs.load(type, offset, buf) == 0
    return hits


@pytest.mark.parametrize("backend", ["none", "zcache", "tmem"])
def test_bench_frontswap_store_load(benchmark, backend):
    def setup():
        module = {"none": None, "zcache": Zcache(max_pool_mb=512),
                  "tmem": _tmem_module()}[backend]
        return _guest(module), {}

    hits = benchmark.pedantic(_store_load, setup=setup, rounds=3)
    assert hits == (0 if backend == "none" else PAGES)
    rate = 2 * PAGES / benchmark.stats.stats.mean
    benchmark.extra_info["pages_per_s"] = rate
    print(f"\nfrontswap store+load, backend={backend}: {rate:,.0f} pages/s "
          f"({PAGES} stores + {PAGES} loads, mean of 3)")


def test_bench_fast_path_single_call(benchmark):
    """One store with no backend vs one store with a backend (zcache), per call."""
    import timeit

    guest, type = _guest(None)
    page = anon_content(1, 0)
    none = min(timeit.repeat(lambda: guest.frontswap.store(type, 1, page), number=100_000,
                             repeat=5)) / 100_000
    guest.load_backend(Zcache())
    with_backend = min(timeit.repeat(lambda: guest.frontswap.store(type, 1, page),
                                     number=20_000, repeat=5)) / 20_000
    benchmark.extra_info.update(no_backend_ns=none * 1e9, with_backend_ns=with_backend * 1e9)
    benchmark(lambda: guest.frontswap.store(type, 1, page))
    print(f"\nfrontswap_store: no backend {none * 1e9:.0f} ns/call, with zcache "
          f"{with_backend * 1e9:.0f} ns/call ({with_backend / none:.0f}x)")
    assert none < with_backend


@pytest.mark.parametrize("pages", [10_000, 50_000])
def test_bench_drain_on_unload(benchmark, pages):
    def setup():
        guest = Guest("drain", memory_mb=64)
        sis = guest.swapon(pages + 1)
        guest.load_backend(_tmem_module(max_memory_mb=2048))
        for offset in range(1, pages + 1):
            guest.frontswap.store(sis.type, offset, anon_content(offset, 0))
        assert sis.frontswap_pages == pages
        return (guest,), {}

    report = benchmark.pedantic(lambda g: g.unload_backend(), setup=setup, rounds=2)
    assert report.drained == pages and report.missing == 0
    rate = pages / report.seconds
    benchmark.extra_info.update(drain_seconds=report.seconds, pages_per_s=rate)
    print(f"\nunload tmem: drained {pages} pages in {report.seconds:.2f} s "
          f"({rate:,.0f} pages/s)")
