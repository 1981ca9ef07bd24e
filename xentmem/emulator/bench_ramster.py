"""RAMster benchmarks: pages per second remotified and repatriated over loopback TCP, GET
latency of local and remote pages, and a memory-heavy guest's swap-outs with and without a
memory server, each against a baseline run in the same process.

    xentmem bench ramster [--pages N] [--seconds S] [--json]
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from xentmem.emulator.machine import EmulatedMachine, GuestSpec, MachineGuest, SwapSpec
from xentmem.emulator.ramster import form_cluster, ramster_of, wait_joined
from xentmem.guest import WorkloadSpec

__all__ = ["Figure", "bench_ramster"]

_NET = {"heartbeat_s": 0.1, "dead_s": 5.0, "get_timeout_s": 5.0, "selfshrink": False}


@dataclass(frozen=True)
class Figure:
    """One measured figure, its baseline (same process, same pages) and their ratio."""

    case: str
    value: float
    baseline: float
    unit: str

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else float("inf")

    def as_dict(self) -> dict[str, object]:
        return {"case": self.case, "value": round(self.value, 1), "unit": self.unit,
                "baseline": round(self.baseline, 1),
                "ratio": round(self.ratio, 3) if self.baseline else None}


@contextmanager
def _cluster(client: GuestSpec, **params) -> Iterator[tuple[MachineGuest, MachineGuest]]:
    with ExitStack() as stack:
        machines = [stack.enter_context(EmulatedMachine.boot(memory_mb=2048)) for _ in range(2)]
        server = machines[0].add_guest(GuestSpec("server", memory_mb=512, swap=(SwapSpec(16),),
                                                 agent=False))
        guest = machines[1].add_guest(client)
        form_cluster([server, guest], params={**_NET, **params})
        if not wait_joined([server, guest]):
            raise RuntimeError("the benchmark's ramster nodes did not meet")
        yield server, guest


def _rate(pages: int, seconds: float) -> float:
    return pages / seconds if seconds > 0 else float("inf")


def _data_path(pages: int, mode: str) -> list[Figure]:
    spec = GuestSpec("client", memory_mb=64, swap=(SwapSpec(4 * pages // 256 + 8),), agent=False)
    with _cluster(spec, mode=mode, max_pool_mb=256, remotify_above=100,
                  repatriate_below=100) as (_, mg):
        g, rc = mg.guest, ramster_of(mg)
        pids = g.alloc_anon(2 * pages)
        local, remote = pids[:pages], pids[pages:]
        t = time.perf_counter()
        for pid in remote:
            g.swap_out(pid)
        store = time.perf_counter() - t
        rc.remotify_above = 0
        t = time.perf_counter()
        sent = rc.remotify(limit=pages)
        rc.sync(timeout=120)
        remotify = time.perf_counter() - t
        for pid in local:
            g.swap_out(pid)
        t = time.perf_counter()
        for pid in local:
            g.read_anon(pid)
        get_local = time.perf_counter() - t
        half = remote[: pages // 2]
        t = time.perf_counter()
        for pid in half:
            g.read_anon(pid)
        get_remote = time.perf_counter() - t
        rest = len(remote) - len(half)
        t = time.perf_counter()
        asked = rc.engine.repatriate(rest, 1 << 40)
        rc.sync(timeout=120)
        repatriate = time.perf_counter() - t
        if g.stats.lost or g.stats.stale or sent != pages or asked != rest:
            raise RuntimeError(f"benchmark pages went wrong: {g.stats}")
    us = 1e6
    return [
        Figure(f"remotify, {mode} (pages/s; baseline: local zcache stores)",
               _rate(sent, remotify), _rate(pages, store), "pages/s"),
        Figure(f"repatriate, {mode} (pages/s; baseline: remotify)",
               _rate(asked, repatriate), _rate(sent, remotify), "pages/s"),
        Figure(f"GET of a remote page, {mode} (us; baseline: a local page)",
               get_remote / len(half) * us, get_local / len(local) * us, "us"),
    ]


def _swapouts(seconds: float) -> list[Figure]:
    """The same memory-heavy workload on zcache alone and on RAMster (same local pool)."""
    def client() -> GuestSpec:
        return GuestSpec("client", memory_mb=32, swap=(SwapSpec(512),), agent=False,
                         workloads=(WorkloadSpec("anon", mb=192, grow=seconds / 2, rate=4000,
                                                 write_fraction=0.3, seed=7),))

    with EmulatedMachine.boot(memory_mb=2048) as machine:
        alone = machine.add_guest(client())
        alone.guest.load_backend(alone.backend("zcache", {"max_pool_mb": 1}))
        machine.advance(seconds)
        baseline = alone.guest.stats.disk_writes
    figures = []
    for mode in ("faithful", "durable"):
        with _cluster(client(), mode=mode, max_pool_mb=1, remotify_above=50,
                      repatriate_below=25, remotify_interval=0.5) as (_, mg):
            mg.machine.advance(seconds)
            ramster_of(mg).sync(timeout=60)
            figures.append(Figure(f"client swap-outs to disk, ramster {mode} (baseline: zcache "
                                  "alone, same 1 MiB pool)", mg.guest.stats.disk_writes,
                                  baseline, "pages"))
            if mode == "durable":
                figures.append(Figure("durable copies written behind remotify (baseline: "
                                      "zcache alone's swap-outs)",
                                      ramster_of(mg).stats()["durable_writes"], baseline,
                                      "pages"))
    return figures


def bench_ramster(pages: int = 20_000, seconds: float = 20.0) -> list[Figure]:
    """Every figure: the data path in both modes (``pages`` pages) and the swap-outs of a
    workload run for ``seconds`` model seconds."""
    return [*_data_path(pages, "faithful"), *_data_path(pages, "durable"), *_swapouts(seconds)]
