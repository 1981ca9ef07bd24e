"""Guest-model measurements: frontswap store+load throughput with no backend (the
one-attribute fast path), zcache and the tmem backend on the emulated hypervisor; the cost of
one ``frontswap_store`` and one ``cleancache_get_page`` call with and without a backend; and the
time to drain N pages back to swap when the tmem backend unloads. Numbers, not tests:
``xentmem bench guest``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

from xentmem.abi import PAGE_SIZE
from xentmem.emulator.machine import EmulatedMachine, GuestSpec, SwapSpec
from xentmem.guest.guest import Guest, anon_content
from xentmem.guest.selfballoon import MB

__all__ = ["GuestBenchRow", "bench_guest"]


@dataclass(frozen=True)
class GuestBenchRow:
    """One measurement: ``pages_per_s`` for throughput rows, ``ns_per_call`` for call rows."""

    case: str
    pages: int
    seconds: float
    pages_per_s: float
    ns_per_call: float

    def as_dict(self) -> dict[str, object]:
        row = asdict(self)
        row["seconds"] = round(self.seconds, 4)
        row["pages_per_s"] = round(self.pages_per_s)
        row["ns_per_call"] = round(self.ns_per_call, 1)
        return row


def _machine_guest(xen_version: str, max_memory_mb: int, pages: int,
                   backend: str | None) -> tuple[Guest, int]:
    """A guest of a new emulated machine, one swap device of ``pages`` slots (+ header),
    ``backend`` loaded with self-ballooning off."""
    machine = EmulatedMachine.boot(memory_mb=max_memory_mb + 1024, xen_version=xen_version)
    params = {"max_pool_mb": max_memory_mb} if backend == "zcache" else \
        {"selfballooning": False, "selfshrinking": False}
    spec = GuestSpec("bench", 64, max_memory_mb, swap=(SwapSpec(math.ceil(pages / MB)),),
                     backend=backend, backend_params=params if backend else {}, agent=False)
    guest = machine.add_guest(spec).guest
    return guest, guest.swap_info[0].type  # type: ignore[union-attr]


def _store_load(guest: Guest, type: int, pages: list[bytes]) -> float:
    """What swap_writepage + swap_readpage do around frontswap, slot lock held; seconds."""
    fs, sis = guest.frontswap, guest.swap_info[type]
    buf = bytearray(PAGE_SIZE)
    started = time.perf_counter()
    for offset, page in enumerate(pages, 1):
        with sis.slot_lock(offset):
            fs.store(type, offset, page)
    for offset in range(1, len(pages) + 1):
        with sis.slot_lock(offset):
            fs.load(type, offset, buf)
    return time.perf_counter() - started


def _per_call(guest: Guest, type: int, calls: int) -> float:
    page = anon_content(1, 0)
    store = guest.frontswap.store
    started = time.perf_counter()
    for _ in range(calls):
        store(type, 1, page)
    return (time.perf_counter() - started) / calls


def _per_get(guest: Guest, calls: int) -> float:
    fs = guest.mount("bench", "ext4")
    key, buf, get = fs.key(1), bytearray(PAGE_SIZE), guest.cleancache.get_page
    started = time.perf_counter()
    for _ in range(calls):
        get(fs, key, 0, buf)
    return (time.perf_counter() - started) / calls


def bench_guest(pages: int = 20_000, *, rounds: int = 3, xen_version: str = "4.12",
                drain_pages: int | None = None) -> list[GuestBenchRow]:
    """Run every measurement ``rounds`` times and keep the best of each."""
    drain_pages = drain_pages or pages
    # persistent pages need headroom above the guest's 64 MiB: Xen refuses a persistent PUT at
    # the domain's max (a floor here once made it 64 below 256 pages: every store refused)
    max_mb = 64 + 2 * math.ceil(max(pages, drain_pages) / MB)
    data = [anon_content(i + 1, 0) for i in range(pages)]
    rows = []
    backends: list[tuple[str, str | None]] = [
        ("no backend", None), ("zcache", "zcache"), (f"tmem on emulated Xen {xen_version}", "tmem"),
    ]

    def boot(n: int, backend: str | None) -> tuple[Guest, int]:
        return _machine_guest(xen_version, max_mb, n, backend)

    for name, backend in backends:
        best = min(_store_load(*boot(pages, backend), data) for _ in range(rounds))
        rows.append(GuestBenchRow(f"frontswap store+load, {name}", pages, best,
                                  2 * pages / best, best / (2 * pages) * 1e9))
    calls = max(pages, 1000)
    for name, backend in (backends[0], backends[2]):
        best = min(_per_call(*boot(16, backend), calls) for _ in range(rounds))
        rows.append(GuestBenchRow(f"one frontswap_store call, {name}", calls, best * calls,
                                  1 / best, best * 1e9))
    for name, backend in (backends[0], backends[2]):
        best = min(_per_get(boot(16, backend)[0], calls) for _ in range(rounds))
        rows.append(GuestBenchRow(f"one cleancache_get_page call (miss), {name}", calls,
                                  best * calls, 1 / best, best * 1e9))
    best_drain = math.inf
    for _ in range(rounds):
        guest, type = boot(drain_pages, "tmem")
        refused = sum(guest.frontswap.store(type, offset, anon_content(offset, 0)) != 0
                      for offset in range(1, drain_pages + 1))
        if refused:  # the backend must hold every page for the drain to mean anything
            raise RuntimeError(f"tmem refused {refused} of {drain_pages} frontswap stores")
        report = guest.unload_backend()
        if report.drained != drain_pages or report.missing:
            raise RuntimeError(f"drain moved {report.drained} of {drain_pages} pages")
        best_drain = min(best_drain, report.seconds)
    rows.append(GuestBenchRow("unload tmem: drain to swap", drain_pages, best_drain,
                              drain_pages / best_drain, best_drain / drain_pages * 1e9))
    return rows
