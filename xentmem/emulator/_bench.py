"""The tmem data-path benchmark behind ``xentmem bench tmem``.

Full path: typed ``Tmem`` client -> packed 56-byte ``tmem_op`` in guest memory -> hypercall
entry -> pool, on an in-process ``EmulatedHost``. Baseline, in the same process: the same pages
moving through a plain dict the way tmem moves them, i.e. a PUT copies the page out of a
4 KiB guest frame into the dict and a GET copies it back into the frame (storing a reference to
an immutable ``bytes`` would move no data at all). The single ops have the same shape: the guest
fills its frame and PUTs it (``put_page``), and GETs straight into a frame (``get_page_to``, the
shape of Linux's shim). ``get_page``, which also copies the frame out into a new ``bytes``, is
measured as well ("get-bytes"). Times are CPU seconds of this process, the
best of a few rounds after a warm-up round (so pages land in recycled storage, as in a
long-running host), with the baseline and both modes taking turns within every round.
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
                "pages_per_s": round(self.pages_per_s),
                "dict_pages_per_s": round(self.dict_pages_per_s),
                "ratio": round(self.ratio, 3), "gb_per_s": round(self.gb_per_s, 3),
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


@dataclass
class _Contender:
    """One way of storing pages: its PUT and GET passes (each returns its hits), the reset
    between rounds, and the best CPU seconds seen."""

    put: Callable[[], int]
    get: Callable[[], int]
    reset: Callable[[], None]
    best_put: float = float("inf")
    best_get: float = float("inf")
    put_hits: int = 0
    get_hits: int = 0


def _race(rounds: int, contenders: list[_Contender]) -> None:
    """A warm-up round, then ``rounds`` rounds in which every contender runs PUT then GET in
    turn, keeping each one's best: interleaved, so a noisy neighbour slows all of them in
    the same stretch instead of spoiling one side of a ratio."""
    for c in contenders:
        c.put()
        c.reset()
    for _ in range(rounds):
        for c in contenders:
            secs, c.put_hits = _timed(c.put)
            c.best_put = min(c.best_put, secs)
            secs, c.get_hits = _timed(c.get)
            c.best_get = min(c.best_get, secs)
            c.reset()


def _dict_baseline(pages: list[bytes], n: int) -> _Contender:
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

    return _Contender(put, get, store.clear)


def codec_pages_per_s(pages: list[bytes], n: int, rounds: int) -> tuple[float, float]:
    """LZO1X-1 alone, as the compressing emulator calls it (compress a page; decode one into a
    frame): pages/s each way, best of ``rounds``. No path that compresses can beat these."""
    from xentmem.emulator._codec import compress_page, decode_into

    packed = [compress_page(page) for page in pages]
    distinct = len(pages)
    frame = bytearray(PAGE_SIZE)

    def encode() -> int:
        for i in range(n):
            compress_page(pages[i % distinct])
        return n

    def decode() -> int:
        for i in range(n):
            decode_into(packed[i % distinct], frame, 0)
        return n

    codec = _Contender(encode, decode, lambda: None)
    _race(rounds, [codec])
    return n / codec.best_put, n / codec.best_get


SCENARIOS = ("private persistent", "private ephemeral, eviction", "persistent, compression on")


@dataclass(frozen=True)
class TmemBench:
    """What ``bench_tmem`` measured: the rows, resident bytes per stored page (first fill of
    the private persistent pool, and of the compressing one with its text pages), and LZO1X-1 alone
    on those text pages (pages/s each way: the ceiling of any path that compresses)."""

    rows: list[BenchRow]
    resident_bytes_per_page: float
    resident_bytes_per_compressed_page: float
    lzo_compress_pages_s: float
    lzo_decompress_pages_s: float

    def as_dict(self) -> dict[str, object]:
        return {"rows": [row.as_dict() for row in self.rows],
                "resident_bytes_per_page": round(self.resident_bytes_per_page),
                "resident_bytes_per_compressed_page":
                    round(self.resident_bytes_per_compressed_page),
                "lzo_pages_per_s": {"compress": round(self.lzo_compress_pages_s),
                                    "decompress": round(self.lzo_decompress_pages_s)}}


def bench_tmem(pages: int = 20000, *, xen_version: str = "4.12",
               rounds: int = 9) -> TmemBench:
    """Run every scenario: single ops (and ``get_page``'s bytes), and the batched multicall API
    (``put_pages``, and ``get_pages_into`` a reused buffer), each against the dict baseline."""
    from xentmem.emulator.machine import EmulatedMachine

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
    per_page = dict.fromkeys(SCENARIOS, 0.0)
    for name in SCENARIOS:
        persistent = name != SCENARIOS[1]
        data = text_pages if name == SCENARIOS[2] else random_pages
        distinct = len(data)
        gc.collect()
        baseline = _dict_baseline(data, pages)
        contenders = {}
        clients = []
        for mode in ("single", "get-bytes", "batched"):
            machine = EmulatedMachine(EmulatedHost(xen_version=xen_version, **options[name]))
            tmem = machine.tmem_client(0)
            clients.append(tmem)
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

                if mode == "single":
                    def get(tmem=tmem, pool=pool) -> int:
                        get_page_to, frame = tmem.get_page_to, tmem.frame
                        hits = 0
                        for i in range(pages):  # the baseline's loop, shape for shape
                            if get_page_to(pool, 1, i, frame):
                                hits += 1
                        return hits
                else:
                    def get(tmem=tmem, pool=pool) -> int:
                        get_page = tmem.get_page
                        hits = 0
                        for i in range(pages):
                            if get_page(pool, 1, i) is not None:
                                hits += 1
                        return hits

            def reset(tmem=tmem, pool=pool) -> None:
                tmem.flush_object(pool, 1)

            if name != SCENARIOS[1] and mode == "single":
                rss = _rss_bytes()
                put()
                per_page[name] = (_rss_bytes() - rss) / pages
                reset()
            contenders[mode] = _Contender(put, get, reset)
        _race(rounds, [baseline, *contenders.values()])
        for mode, c in contenders.items():
            if mode == "get-bytes":  # its PUTs are the single ones again
                rows.append(BenchRow(name, "single", mode, pages, pages / c.best_get,
                                     pages / baseline.best_get, c.get_hits))
                continue
            rows.append(BenchRow(name, mode, "put", pages, pages / c.best_put,
                                 pages / baseline.best_put, c.put_hits))
            rows.append(BenchRow(name, mode, "get", pages, pages / c.best_get,
                                 pages / baseline.best_get, c.get_hits))
        for tmem in clients:
            tmem.close()
    return TmemBench(rows, per_page[SCENARIOS[0]], per_page[SCENARIOS[2]],
                     *codec_pages_per_s(text_pages, pages, rounds))
