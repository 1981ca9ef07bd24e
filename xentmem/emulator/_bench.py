"""The tmem data-path benchmark behind ``xentmem bench tmem``.

Full path: typed ``Tmem`` client -> packed 56-byte ``tmem_op`` in guest memory -> hypercall
entry -> pool, on an in-process ``EmulatedHost``. Baseline, in the same process: the same pages
moving through a plain dict the way tmem moves them, i.e. a PUT copies the page out of a
4 KiB guest frame into the dict and a GET copies it back into the frame (storing a reference to
an immutable ``bytes`` would move no data at all). Times are CPU seconds of this process, the
best of a few rounds after a warm-up round (so pages land in recycled storage, as in a
long-running host).
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from xentmem.abi import PAGE_SIZE
from xentmem.emulator._host import EmulatedHost


@dataclass(frozen=True)
class BenchRow:
    """One measurement: pages/s of the full path and of the dict baseline, best of N rounds."""

    scenario: str
    mode: str
    op: str
    pages: int
    pages_per_s: float
    dict_pages_per_s: float
    hits: int

    @property
    def ratio(self) -> float:
        return self.pages_per_s / self.dict_pages_per_s

    @property
    def gb_per_s(self) -> float:
        """Page data moved per second (hits only; a miss moves nothing)."""
        return self.pages_per_s * self.hits / self.pages * PAGE_SIZE / 1e9

    def as_dict(self) -> dict[str, object]:
        return {"scenario": self.scenario, "mode": self.mode, "op": self.op,
                "pages_s": round(self.pages_per_s), "dict_pages_s": round(self.dict_pages_per_s),
                "ratio": round(self.ratio, 3), "gb_s": round(self.gb_per_s, 3),
                "hits": self.hits}


def _pages(count: int, compressible: bool) -> list[bytes]:
    if compressible:
        return [(f"block {i:08d} of a text file; " * 160).encode()[:PAGE_SIZE]
                for i in range(count)]
    seed = os.urandom(PAGE_SIZE + count)
    return [seed[i:i + PAGE_SIZE] for i in range(count)]


def _timed(fn: Callable[[], int]) -> tuple[float, int]:
    # CPU time of this process: on a shared machine wall time mostly measures the neighbours.
    gc.disable()
    try:
        start = time.process_time()
        hits = fn()
        return time.process_time() - start, hits
    finally:
        gc.enable()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _best(rounds: int, put: Callable[[], int], get: Callable[[], int],
          reset: Callable[[], None]) -> tuple[float, float, int, int]:
    """Warm-up round, then the best of ``rounds`` timed PUT-then-GET rounds."""
    put()
    reset()
    best_put = best_get = float("inf")
    put_hits = get_hits = 0
    for _ in range(rounds):
        secs, put_hits = _timed(put)
        best_put = min(best_put, secs)
        secs, get_hits = _timed(get)
        best_get = min(best_get, secs)
        reset()
    return best_put, best_get, put_hits, get_hits


def _dict_baseline(pages: list[bytes], n: int, rounds: int) -> tuple[float, float]:
    store: dict[tuple[int, int], bytes] = {}
    frame = bytearray(PAGE_SIZE)
    distinct = len(pages)

    def put() -> int:
        for i in range(n):
            frame[:] = pages[i % distinct]  # the guest fills its frame
            store[(1, i)] = bytes(frame)  # the store copies the page out of the frame
        return n

    def get() -> int:
        hits = 0
        for i in range(n):
            page = store.get((1, i))
            if page is not None:
                frame[:] = page  # and back into the frame
                hits += 1
        return hits

    put_s, get_s, _, _ = _best(rounds, put, get, store.clear)
    return put_s, get_s


SCENARIOS = ("private persistent", "private ephemeral, eviction", "persistent, compression on")


def bench_tmem(pages: int = 20000, *, xen_version: str = "4.12",
               rounds: int = 3) -> tuple[list[BenchRow], float]:
    """Run every scenario (single ops, and the batched multicall API: ``put_pages`` and
    ``get_pages_into`` a reused buffer); returns the rows and
    the resident bytes per stored page (private persistent pool, first fill)."""
    from xentmem.hypercalls.emulated import EmulatedHypervisor
    from xentmem.hypercalls.tmem import Tmem

    if pages < 100:
        raise ValueError(f"use at least 100 pages, not {pages}")
    rows: list[BenchRow] = []
    mib = pages * PAGE_SIZE >> 20
    random_pages = _pages(256, compressible=False)
    text_pages = _pages(256, compressible=True)
    options = {
        SCENARIOS[0]: dict(memory_mb=mib + 256),
        # Xen's heap holds about half the pages: every PUT past that point evicts one.
        SCENARIOS[1]: dict(memory_mb=8 + max(8, mib // 2), dom0_memory_mb=8),
        SCENARIOS[2]: dict(memory_mb=mib + 256, tmem_compress=True),
    }
    per_page = 0.0
    for name in SCENARIOS:
        persistent = name != SCENARIOS[1]
        data = text_pages if name == SCENARIOS[2] else random_pages
        distinct = len(data)
        gc.collect()
        dict_put, dict_get = _dict_baseline(data, pages, rounds)
        for mode in ("single", "batched"):
            host = EmulatedHost(xen_version=xen_version, **options[name])
            tmem = Tmem(EmulatedHypervisor(host, 0), version=xen_version)
            pool = tmem.new_pool(persistent=persistent)
            if mode == "batched":
                items = [(1, i, data[i % distinct]) for i in range(pages)]
                keys = [(1, i) for i in range(pages)]
                out = bytearray(pages * PAGE_SIZE)  # where the pages land, reused each round

                def put(tmem=tmem, pool=pool, items=items) -> int:
                    return tmem.put_pages(pool, items).count(1)

                def get(tmem=tmem, pool=pool, keys=keys, out=out) -> int:
                    return tmem.get_pages_into(pool, keys, out).count(1)
            else:
                def put(tmem=tmem, pool=pool, data=data, distinct=distinct) -> int:
                    put_page = tmem.put_page
                    for i in range(pages):
                        put_page(pool, 1, i, data[i % distinct])
                    return pages

                def get(tmem=tmem, pool=pool) -> int:
                    get_page = tmem.get_page
                    return sum(1 for i in range(pages) if get_page(pool, 1, i) is not None)

            if name == SCENARIOS[0] and mode == "single":
                rss = _rss_bytes()
                put()
                per_page = (_rss_bytes() - rss) / pages
                tmem.flush_object(pool, 1)
            put_s, get_s, put_hits, get_hits = _best(
                rounds, put, get, lambda tmem=tmem, pool=pool: tmem.flush_object(pool, 1))
            rows.append(BenchRow(name, mode, "put", pages, pages / put_s, pages / dict_put,
                                 put_hits))
            rows.append(BenchRow(name, mode, "get", pages, pages / get_s, pages / dict_get,
                                 get_hits))
            tmem.close()
    return rows, per_page
