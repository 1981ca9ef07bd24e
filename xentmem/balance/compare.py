"""``balance compare``: the same workloads on a fresh living emulated host, once per policy and
once with static allocation, scored from the raw series.

Each run boots its own :class:`~xentmem.emulator.machine.EmulatedMachine` with a xenstored and
living guests (self-ballooning off: the manager, or nobody, sets their targets), and advances its
clock by hand: every ``interval_s`` model seconds the agents publish, the manager runs one round
through the same collector and host facade as ``balance run`` (static: no manager), and a sample
is taken of every guest's target, reservation, need and counters. Scores come from those samples
only (:func:`score`), so anyone can recompute them from ``series``:

``held_gib_h``
    the guests' memory on the host (reservation + persistent tmem pages) integrated over time,
    GiB-hours; ``saved_gib_h`` is static's minus this.
``shortfall_gib_h``, ``below_need_s``
    need above reservation, integrated (GiB-hours), and guest-seconds spent below need. Need is
    what keeps every committed page resident: Committed_AS + the kernel's reserve and overhead.
``swap_ins``, ``swap_ins_disk``, ``refaults``
    pages swapped in (all, and from the swap disk), file pages read back from disk (page-cache
    misses that cleancache did not serve).
``tmem_hits``
    swap-ins served by frontswap + page-cache misses served by cleancache.
``fairness``
    Jain's index over guests of the time-mean of min(reservation / need, 1): 1 = all equally
    served.
``net_gib_h``
    saved minus shortfall: the ranking key (memory given back, less memory withheld from need).
"""

from __future__ import annotations

import itertools
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xentmem.balance.collect import Collector, HostMemory, Memory
from xentmem.balance.manager import Manager
from xentmem.balance.model import MIB, Config, Settings
from xentmem.balance.policies import POLICIES
from xentmem.balance.settings import write_settings
from xentmem.emulator.machine import WORKLOADS, EmulatedMachine, MachineGuest, living_guest
from xentmem.errors import GuestError
from xentmem.host.guests import Host
from xentmem.hypercalls import Tmem

__all__ = ["COUNTERS", "DEFAULT_GUESTS", "STATIC", "CompareSpec", "Comparison", "LivingHost",
           "Run", "compare", "living_host", "machine_memory", "parse_guests", "run_one",
           "score"]

STATIC = "static"
DEFAULT_GUESTS = ("web", "db", "batch", "idle", "web", "db")  # the default mixed workload
COUNTERS = ("swapins", "swapins_frontswap", "disk_reads", "file_reads", "cleancache_hits")
_SETTLE_S = 5.0  # wall seconds a balloon driver gets to pick up a new memory/target
GIB_H = 1024 * 1024 * 3600  # KiB-seconds in a GiB-hour


@dataclass(frozen=True)
class CompareSpec:
    """What to run: one guest per workload name (:data:`WORKLOADS`), each booted with
    ``memory_mb`` (its ceiling; twice that is its static maximum) on a host of ``host_mb``
    (default: the guests' memory + 25 % + dom0), for ``duration_s`` model seconds, a round and
    a sample every ``interval_s``."""

    guests: tuple[str, ...] = DEFAULT_GUESTS
    memory_mb: int = 128
    host_mb: int | None = None
    duration_s: float = 600.0
    interval_s: float = 5.0
    tick_s: float = 1.0
    xen_version: str = "4.12"

    def __post_init__(self) -> None:
        unknown = [w for w in self.guests if w not in WORKLOADS]
        if unknown or not self.guests:
            raise ValueError(f"unknown workload {unknown[0] if unknown else '(none)'!r}: "
                             f"one of {', '.join(WORKLOADS)}")
        if not (self.duration_s > 0 and self.interval_s > 0 and self.tick_s > 0):
            raise ValueError("duration, interval and tick must be positive")
        if self.memory_mb < 64:
            raise ValueError("guests need at least 64 MiB")

    @property
    def host_memory_mb(self) -> int:
        if self.host_mb is not None:
            return self.host_mb
        guests = len(self.guests) * self.memory_mb
        return guests + guests // 4 + min(256, (guests + guests // 4) // 3)


def parse_guests(text: str) -> tuple[str, ...]:
    """``web,db,2xbatch`` -> ("web", "db", "batch", "batch"); ``ValueError`` names a bad one."""
    out: list[str] = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        count, x, name = item.partition("x")
        if x and count.isdecimal() and name in WORKLOADS:
            out += [name] * int(count)
        elif item in WORKLOADS:
            out.append(item)
        else:
            raise ValueError(f"bad guest {item!r}: a workload ({', '.join(WORKLOADS)}), "
                             "optionally as Nxworkload")
    if not out:
        raise ValueError("no guests given")
    return tuple(out)


@dataclass
class Run:
    """One run's raw series (KiB; counters cumulative) and its scores."""

    policy: str
    names: list[str]
    time_s: list[float] = field(default_factory=list)
    target: list[list[int]] = field(default_factory=list)  # [sample][guest]
    memory: list[list[int]] = field(default_factory=list)  # reservation
    held: list[list[int]] = field(default_factory=list)  # reservation + persistent tmem
    need: list[list[int]] = field(default_factory=list)
    counters: dict[str, list[list[int]]] = field(
        default_factory=lambda: {c: [] for c in COUNTERS})
    host_free: list[int] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    round_s: list[float] = field(default_factory=list)  # the manager's CPU per round
    scores: dict[str, float] = field(default_factory=dict)

    def series(self) -> dict[str, Any]:
        return {"policy": self.policy, "guests": self.names, "time_s": self.time_s,
                "target_kib": self.target, "memory_kib": self.memory, "held_kib": self.held,
                "need_kib": self.need, "counters": self.counters, "host_free_kib": self.host_free}


def score(series: dict[str, Any]) -> dict[str, float]:
    """The scores of one run's :meth:`Run.series` (module docstring); each sample's values
    hold until the next sample."""
    t = series["time_s"]
    n = len(series["guests"])
    dts = [b - a for a, b in itertools.pairwise(t)]
    held = below = short = 0.0
    served = [0.0] * n
    for i, dt in enumerate(dts):
        for g in range(n):
            mem, need = series["memory_kib"][i][g], series["need_kib"][i][g]
            held += series["held_kib"][i][g] * dt
            if mem < need:
                below += dt
                short += (need - mem) * dt
            served[g] += min(mem / need, 1.0) * dt if need > 0 else dt
    span = t[-1] - t[0] if len(t) > 1 else 0.0
    x = [s / span for s in served] if span else [1.0] * n
    fairness = sum(x) ** 2 / (n * sum(v * v for v in x)) if any(x) else 1.0
    c = series["counters"]

    def delta(name: str) -> int:
        return sum(c[name][-1]) - sum(c[name][0]) if c[name] else 0

    return {"held_gib_h": held / GIB_H, "shortfall_gib_h": short / GIB_H,
            "below_need_s": below, "swap_ins": delta("swapins"),
            "swap_ins_disk": delta("disk_reads"),
            "refaults": delta("file_reads") - delta("cleancache_hits"),
            "tmem_hits": delta("swapins_frontswap") + delta("cleancache_hits"),
            "fairness": fairness}


def machine_memory(machine: EmulatedMachine) -> HostMemory:
    """The in-process host's memory, as the daemon's host API reports it (KiB)."""
    def read() -> Memory:
        host = machine.host
        with host.lock:
            actual = {d: dom.nr_pages * 4 for d, dom in host.domains.items() if d != 0}
            return Memory(host.heap_free * 4, host.memory_mb * MIB, actual, str(host.version))
    return read


def _sample(run: Run, machine: EmulatedMachine, guests: list[MachineGuest]) -> None:
    with machine.model_lock, machine.host.lock:
        run.time_s.append(machine.now)
        run.target.append([mg.guest.balloon.stats.target_pages * 4 for mg in guests])
        run.memory.append([machine.host.domains[mg.domid].nr_pages * 4 for mg in guests])
        run.held.append([machine.host.domains[mg.domid].tot_pages * 4 for mg in guests])
        run.need.append([(mg.guest.committed_pages + mg.guest.totalreserve_pages
                          + mg.guest.kernel_pages) * 4 for mg in guests])
        for name in COUNTERS:
            run.counters[name].append([getattr(mg.guest.stats, name) for mg in guests])
        run.host_free.append(machine.host.heap_free * 4)


@dataclass
class LivingHost:
    """A fresh living emulated host for balancing: its machine, guests, dom0's host facade and
    tmem client; :meth:`manager` makes a manager on model time."""

    machine: EmulatedMachine
    guests: list[MachineGuest]
    host: Host
    tmem: Tmem

    def manager(self, policy: str, config: Config | None = None,
                **options: Any) -> Manager:
        collector = Collector(self.host, machine_memory(self.machine), tmem=self.tmem,
                              clock=lambda: self.machine.now)
        return Manager(self.host, collector, policy=policy, config=config, tmem=self.tmem,
                       **options)

    def publish(self) -> None:
        """Every agent publishes now (their own timer runs on wall time, far apart)."""
        for mg in self.guests:
            if mg.agent is not None:
                mg.agent.publish()

    def settle(self) -> None:
        """Wait (bounded) until every balloon driver has the target xenstore holds: the watch
        fires in its own thread, and the clock must not run ahead of it. A guest whose driver
        no longer watches memory/target (a wedged balloon) is not waited for."""
        deadline = time.monotonic() + _SETTLE_S
        with self.machine.xenstore_dom0() as xs:
            wanted = {mg.domid: int(xs.read(f"/local/domain/{mg.domid}/memory/target")) // 4
                      for mg in self.guests if mg.watcher is not None}
        while time.monotonic() < deadline:
            if all(mg.guest.balloon.stats.target_pages == wanted[mg.domid]
                   for mg in self.guests if mg.domid in wanted):
                return
            time.sleep(0.002)


@contextmanager
def living_host(spec: CompareSpec) -> Iterator[LivingHost]:
    """A fresh machine running ``spec``'s guests, self-ballooning off (nobody but a manager
    sets their targets), each guest's ceiling its boot memory; torn down on exit."""
    with tempfile.TemporaryDirectory(prefix="xbal") as d:
        machine = EmulatedMachine.boot(memory_mb=spec.host_memory_mb,
                                       xen_version=spec.xen_version,
                                       xenstore=Path(d) / "xs.sock")
        machine.stats_interval = 3600.0  # the agents publish when told (model time)
        assert machine.xenstore is not None
        xs = machine.xenstore.connect(0)
        tmem = machine.tmem_client(0)
        try:
            guests = [machine.add_guest(living_guest(
                f"{w}{i}", workload=w, memory_mb=spec.memory_mb, seed=i))
                for i, w in enumerate(spec.guests)]
            host = Host(xs, ack_timeout=5.0)
            for mg in guests:
                r = host.set_toggles(mg.domid, {"selfballooning": 0}, timeout=5.0)
                if r.status != "applied":
                    raise GuestError(f"{mg.name}: self-ballooning stays on ({r.reason})")
                # the ceiling is the boot memory: the balloon (Linux's without memory hotplug)
                # only gives back what it took; the static maximum (twice that) leaves room
                # for persistent tmem pages, which Xen counts against it
                write_settings(host, mg.domid, mg.name,
                               Settings(ceiling_kib=spec.memory_mb * MIB))
            yield LivingHost(machine, guests, host, tmem)
        finally:
            machine.close()
            tmem.close()
            xs.close()
            machine.xenstore.stop()


def run_one(spec: CompareSpec, policy: str, *, config: Config | None = None,
            on_round: Callable[[float], None] | None = None) -> Run:
    """One run of ``policy`` (or :data:`STATIC`) on a fresh machine."""
    if policy != STATIC and policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}: one of {', '.join(POLICIES)} or static")
    config = config or Config(interval_s=spec.interval_s)
    with living_host(spec) as lh:
        machine = lh.machine
        run = Run(policy, [mg.name for mg in lh.guests])
        manager = None if policy == STATIC else lh.manager(
            policy, config, follow_timeout_s=6 * spec.interval_s)
        while True:
            if manager is not None:
                lh.publish()
                cpu = time.thread_time()
                r = manager.round()
                run.round_s.append(time.thread_time() - cpu)
                run.events += [f"{machine.now:.0f}s {e}" for e in r.events]
                lh.settle()
            _sample(run, machine, lh.guests)
            if on_round is not None:
                on_round(machine.now)
            if machine.now >= spec.duration_s - 1e-9:
                break
            machine.advance(min(spec.interval_s, spec.duration_s - machine.now),
                            tick=spec.tick_s)
        if machine.lost or machine.stale:
            raise GuestError(f"{policy}: the model lost {machine.lost} and served "
                             f"{machine.stale} stale pages")
        if manager is not None:
            manager.close()
    run.scores = score(run.series())
    return run


@dataclass
class Comparison:
    """Every run, static first, with ``saved_gib_h``/``net_gib_h`` and the ranking added."""

    spec: CompareSpec
    runs: list[Run]

    def __post_init__(self) -> None:
        static = next(r for r in self.runs if r.policy == STATIC)
        for r in self.runs:
            r.scores["saved_gib_h"] = static.scores["held_gib_h"] - r.scores["held_gib_h"]
            r.scores["net_gib_h"] = r.scores["saved_gib_h"] - r.scores["shortfall_gib_h"]
        ranked = sorted(self.runs, key=lambda r: -r.scores["net_gib_h"])
        for i, r in enumerate(ranked, 1):
            r.scores["rank"] = i

    def rows(self) -> list[dict[str, Any]]:
        return [{"policy": r.policy, "rank": int(r.scores["rank"]),
                 "saved_gib_h": round(r.scores["saved_gib_h"], 4),
                 "shortfall_gib_h": round(r.scores["shortfall_gib_h"], 4),
                 "below_need_s": round(r.scores["below_need_s"], 1),
                 "swap_ins": r.scores["swap_ins"], "swap_ins_disk": r.scores["swap_ins_disk"],
                 "refaults": r.scores["refaults"], "tmem_hits": r.scores["tmem_hits"],
                 "fairness": round(r.scores["fairness"], 3),
                 "net_gib_h": round(r.scores["net_gib_h"], 4)}
                for r in sorted(self.runs, key=lambda r: r.scores["rank"])]

    def as_dict(self, *, series: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "guests": list(self.spec.guests), "memory_mib": self.spec.memory_mb,
            "host_mib": self.spec.host_memory_mb, "duration_s": self.spec.duration_s,
            "interval_s": self.spec.interval_s, "table": self.rows()}
        if series:
            out["runs"] = [{**r.series(), "scores": r.scores, "events": r.events}
                           for r in self.runs]
        return out


def compare(spec: CompareSpec, policies: Sequence[str] = tuple(POLICIES), *,
            on_round: Callable[[str, float], None] | None = None) -> Comparison:
    """Static allocation, then each policy, on fresh machines running ``spec``."""
    runs = []
    for p in (STATIC, *policies):
        runs.append(run_one(spec, p, on_round=None if on_round is None
                            else (lambda now, p=p: on_round(p, now))))
    return Comparison(spec, runs)
