"""The one place an emulated machine is assembled (DESIGN §3a).

An :class:`EmulatedMachine` owns one :class:`~xentmem.emulator.EmulatedHost` and, optionally,
one xenstored (:class:`~xentmem.xenstore.XenStoreServer`). ``add_guest(GuestSpec(...))`` does
what a toolstack and a booting guest do together:

1. creates the domain on the hypervisor and introduces it to xenstore (``/local/domain/N`` laid
   out as libxl does);
2. boots the guest kernel model (:class:`~xentmem.guest.Guest`, with the ``kernel`` the spec
   names) with its balloon reservation on the hypervisor (``XENMEM_*_reservation`` through
   the domain's own transport), its swap devices and filesystems;
3. loads its backend (``tmem`` over a :class:`~xentmem.hypercalls.Tmem` client of the domain's
   in-process transport, or ``zcache``), where its kernel has one;
4. feeds ``memory/target`` to its balloon driver (a xenstore watch on the guest's own
   connection, or an in-memory node without xenstored), and runs its agent (``ModelSink``)
   when there is a xenstored;
5. starts its workloads, which run when the machine's clock advances: ``machine.advance(dt)``
   by hand, or ``machine.start(speed=1.0)`` for a clock that follows wall time.

Every page a guest reads back is checked (the model knows what it wrote): ``machine.report()``
gives per guest the pages stored in tmem, loaded, in swap, ``lost`` and ``stale`` (both must
stay 0), its memory and target, and its agent's state.

``checkpoint()`` / ``EmulatedMachine.restore()`` capture the host and every guest at one instant
(the guests paused, the host locked), so a daemon that restarts from a checkpoint finds each
guest's pages exactly where that guest believes they are: in tmem or in its swap.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import logging
import math
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from xentmem.agent import Agent, ModelSink, Sink, SysfsSink
from xentmem.agent.target import XenStoreTargetSource
from xentmem.emulator._host import EmulatedHost
from xentmem.emulator.transport import EmulatedFrames, EmulatedHypervisor
from xentmem.errors import GuestError, XentmemError
from xentmem.guest import (
    BackendModule,
    Guest,
    HypervisorReservation,
    InMemoryTargetSource,
    Kernel,
    Ramster,
    SysfsView,
    Workload,
    WorkloadSpec,
    XenTmem,
    Zcache,
)
from xentmem.guest.fs import FSTYPES, FsDisk
from xentmem.guest.selfballoon import MB
from xentmem.guest.swap import FileSlotStore, MemorySlotStore
from xentmem.hypercalls import Tmem
from xentmem.xenstore import XenStoreClient, XenStoreServer

__all__ = [
    "BACKENDS",
    "WORKLOADS",
    "EmulatedMachine",
    "GuestSpec",
    "MachineGuest",
    "MountSpec",
    "SwapSpec",
    "living_guest",
]

log = logging.getLogger("xentmem.emulator.machine")

BACKENDS = ("tmem", "zcache", "ramster")
CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class SwapSpec:
    """A swap device: ``mb`` of slots, in memory or in ``file`` (relative to the machine's
    directory); ``priority`` as ``swapon -p``."""

    mb: int
    priority: int | None = None
    file: str | None = None


@dataclass(frozen=True)
class MountSpec:
    """A filesystem to mount; ``uuid`` makes a cluster filesystem (ocfs2) shared by uuid."""

    name: str
    type: str = "ext4"
    uuid: bytes | None = None


@dataclass(frozen=True)
class GuestSpec:
    """One guest: its domain's memory (``max_memory_mb`` defaults to twice ``memory_mb``: Xen
    counts persistent tmem pages against the maximum), the ``kernel`` it runs, its swap and
    filesystems, the backend loaded at boot (``tmem``, ``zcache``, ``ramster`` or ``None``;
    ``tmem`` on a kernel without it boots with none), the backend's module parameters, its
    workloads (``concurrent``: one thread each per step) and whether an agent answers
    ``control/``."""

    name: str
    memory_mb: int = 128
    max_memory_mb: int | None = None
    kernel: str = "3.10"
    swap: tuple[SwapSpec, ...] = ()
    mounts: tuple[MountSpec, ...] = ()
    workloads: tuple[WorkloadSpec, ...] = ()
    backend: str | None = None
    backend_params: Mapping[str, Any] = field(default_factory=dict)
    concurrent: bool = False
    agent: bool = True
    workload: str = "custom"  # the preset's name, for reports

    def __post_init__(self) -> None:
        Kernel.parse(self.kernel)  # raises GuestError with the reason
        if self.backend is not None and self.backend not in BACKENDS:
            raise GuestError(f"guest {self.name}: backend must be one of "
                             f"{', '.join(BACKENDS)} or none, not {self.backend!r}")
        if self.memory_mb < 16 or (self.max_memory_mb or 2 * self.memory_mb) < self.memory_mb:
            raise GuestError(f"guest {self.name}: need 16 <= memory_mb <= max_memory_mb")

    @property
    def max_mb(self) -> int:
        return self.max_memory_mb or 2 * self.memory_mb


# Workloads a living guest runs until it is stopped (model seconds; rates in operations per
# model second, kept low enough that 20 guests fit on two cores at speed 1).
WORKLOADS: dict[str, tuple[WorkloadSpec, ...]] = {
    "idle": (WorkloadSpec("anon", mb=8, rate=20, write_fraction=0.1),),
    # a web server: a hot page cache over its documents, and a heap that breathes
    "web": (WorkloadSpec("file", rate=300, files=12, file_mb=8, working_set=0.3,
                         write_fraction=0.0),
            WorkloadSpec("anon", mb=48, rate=150, grow=20, shrink=20, period=120)),
    # a database: a buffer pool larger than the guest's RAM (it swaps), and its data files
    "db": (WorkloadSpec("anon", mb=96, grow=30, rate=300, write_fraction=0.4),
           WorkloadSpec("file", rate=100, files=4, file_mb=16, write_fraction=0.2)),
    # batch jobs: a large allocation every few minutes, then nothing
    "batch": (WorkloadSpec("anon", mb=112, rate=250, grow=15, shrink=15, period=90,
                           active=60),),
}


def living_guest(name: str, *, workload: str = "web", kernel: str = "3.10",
                 memory_mb: int = 128, max_memory_mb: int | None = None,
                 seed: int = 0) -> GuestSpec:
    """The spec of a guest that runs preset ``workload`` (:data:`WORKLOADS`) forever, with
    twice its memory in swap, a root filesystem and the ``tmem`` backend where its kernel has
    one."""
    if workload not in WORKLOADS:
        raise GuestError(f"unknown workload {workload!r} (one of {', '.join(WORKLOADS)}, "
                         "or a scenario file)")
    specs = tuple(replace(w, seed=seed * 100 + i) for i, w in enumerate(WORKLOADS[workload]))
    has_tmem = Kernel.parse(kernel).has_tmem
    return GuestSpec(name, memory_mb, max_memory_mb, kernel,
                     swap=(SwapSpec(2 * memory_mb),), mounts=(MountSpec("root"),),
                     workloads=specs, backend="tmem" if has_tmem else None,
                     workload=workload)


class _LockedSink(ModelSink):
    """The agent's view of the model, holding the machine's model lock around every call (the
    agent runs in its own thread while the clock steps the guest)."""

    def __init__(self, guest: Guest, lock: threading.RLock) -> None:
        super().__init__(guest)
        self._lock = lock

    def read(self, path: str) -> str | None:
        with self._lock:
            return super().read(path)

    def write(self, path: str, text: str) -> None:
        with self._lock:
            super().write(path, text)

    def set_module_param(self, name: str, value: bool) -> None:
        with self._lock:
            super().set_module_param(name, value)


class _LockedTarget:
    """A ``TargetSource`` whose callbacks run under the machine's model lock."""

    def __init__(self, source: XenStoreTargetSource, lock: threading.RLock) -> None:
        self.source = source
        self._lock = lock

    def watch(self, callback: Callable[[str | bytes | None], None]) -> None:
        def locked(value: str | bytes | None) -> None:
            with self._lock:
                callback(value)
        self.source.watch(locked)


class MachineGuest:
    """One guest of the machine: its spec, domain, transport, ``Tmem`` client, kernel model,
    workloads, balloon target source and (with xenstored) agent."""

    def __init__(self, machine: EmulatedMachine, spec: GuestSpec, domid: int, guest: Guest,
                 workloads: list[Workload]) -> None:
        self.machine = machine
        self.spec = spec
        self.domid = domid
        self.guest = guest
        self.workloads = workloads
        self.hv = EmulatedHypervisor(machine.host, domid)
        self.tmem: Tmem | None = None
        self.target: InMemoryTargetSource | None = None
        self.xs: XenStoreClient | None = None
        self.watcher: XenStoreTargetSource | None = None
        self.agent: Agent | None = None
        self.sink: Sink | None = None
        self.sysfs_root: Path | None = None
        self.ops = 0

    @property
    def name(self) -> str:
        return self.spec.name

    def client(self) -> Tmem:
        """The domain's ``Tmem`` client (one per guest, as the kernel has one shim)."""
        if self.tmem is None:
            self.tmem = self.machine.tmem_client(self.domid)
        return self.tmem

    def backend(self, name: str, params: Mapping[str, Any] | None = None) -> BackendModule:
        """A new backend module ``name`` for this guest (what ``modprobe`` would load)."""
        try:
            if name == "zcache":
                return Zcache(**(params or {}))
            if name == "ramster":  # its cluster: xentmem.emulator.ramster
                return Ramster(**(params or {}))
            if name == "tmem":
                if not self.guest.kernel.has_tmem:
                    raise GuestError(self.guest.kernel.missing("tmem"))
                return XenTmem(self.client(), **(params or {}))
        except TypeError as exc:
            raise GuestError(f"backend {name}: bad parameter ({exc})") from None
        raise GuestError(f"unknown backend {name!r} (one of {', '.join(BACKENDS)})")

    def set_target(self, mib: int) -> None:
        """Write ``memory/target`` as the toolstack does (xenstore, or the in-memory node)."""
        if self.target is not None:
            self.target.write(mib * 1024)
        else:
            with self.machine.xenstore_dom0() as xs:
                xs.write(f"/local/domain/{self.domid}/memory/target", str(mib * 1024))

    def step(self, now: float, dt: float) -> int:
        """Run the workloads due in ``[now, now + dt)``, then the kernel's timers at
        ``now + dt``; the number of workload operations."""
        if not self.spec.concurrent or len(self.workloads) < 2:
            done = sum(w.step(now, dt) for w in self.workloads)
        else:
            done = _run_concurrently(self.workloads, now, dt)
        self.guest.tick(now + dt)
        self.ops += done
        return done

    def report(self) -> dict[str, Any]:
        """What this guest has done and verified (one row of ``machine.report()``)."""
        g, s = self.guest, self.guest.stats
        row: dict[str, Any] = {
            "domid": self.domid, "name": self.name, "kernel": str(g.kernel),
            "workload": self.spec.workload, "backend": g.backend.name if g.backend else None,
            "tmem_pages": g.frontswap.curr_pages(), "stored": g.frontswap.succ_stores,
            "loaded": g.frontswap.loads, "swap_pages": _swap_pages(g),
            "drained": s.drained, "to_disk": s.disk_writes, "cache_hits": s.cleancache_hits,
            "memory_mb": g.balloon.stats.current_pages // MB,
            "target_mb": g.balloon.stats.target_pages // MB,
            "selfballooning": bool(g.selfballoon.knobs.selfballooning)
            if g.kernel.has_selfballoon else None,
            "operations": self.ops, "lost": s.lost, "stale": s.stale,
            "incidents": list(s.incidents[:5]),
            "agent": None,
        }
        if self.agent is not None:
            r = self.agent.report
            row["agent"] = {"state": r.state, "seq": r.seq, "reason": r.reason or None,
                            "running": self.agent.running}
        return row

    # -- life cycle --

    def _connect(self) -> None:
        """Attach the balloon to ``memory/target`` and start the agent."""
        machine = self.machine
        if machine.xenstore is None:
            self.target = InMemoryTargetSource(self.guest.balloon.stats.target_pages * 4)
            self.guest.attach_target(self.target)
            return
        self.xs = XenStoreClient(machine.xenstore.domain_socket(self.domid),
                                 timeout=machine.timeout)
        self.watcher = XenStoreTargetSource(self.xs)
        self.guest.attach_target(_LockedTarget(self.watcher, machine.model_lock))
        if self.spec.agent:
            self.start_agent()

    def start_agent(self) -> Agent:
        """Start the guest's agent (``add_guest`` does unless the spec says ``agent=False``)
        and wait, bounded, for its first report."""
        machine = self.machine
        if self.xs is None:
            raise GuestError("an agent needs the machine's xenstored")
        if self.agent is None:
            if self.sysfs_root is not None:
                self.sink = SysfsSink(SysfsView(self.guest).mirror(self.sysfs_root))
            else:
                self.sink = _LockedSink(self.guest, machine.model_lock)
            self.agent = Agent(self.xs, self.sink, stats_interval=machine.stats_interval)
            self.agent.start(wait=machine.timeout)
        return self.agent

    def _disconnect(self) -> None:
        if isinstance(self.guest.backend, Ramster):
            self.guest.backend.shutdown()  # leaves its cluster (a restore joins it again)
        if self.agent is not None:
            self.agent.request_stop()
        if self.watcher is not None:
            self.watcher.request_stop()
        if self.xs is not None:
            self.xs.close()  # wakes both watchers at once
        if self.agent is not None:
            self.agent.stop()
            self.agent = None
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None
        self.xs = None


def _run_concurrently(workloads: list[Workload], now: float, dt: float) -> int:
    counts = [0] * len(workloads)
    errors: list[BaseException] = []

    def run(i: int, w: Workload) -> None:
        try:
            counts[i] = w.step(now, dt)
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)
    threads = [threading.Thread(target=run, args=(i, w)) for i, w in enumerate(workloads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    if errors:
        raise errors[0]
    return sum(counts)


def _swap_pages(guest: Guest) -> int:
    """Pages whose copy is on a swap device only (a frontswap page holds its slot too)."""
    return sum(dev.inuse_pages - dev.frontswap_pages for dev in guest.active_swap_devices())


class EmulatedMachine:
    """An emulated host, its xenstored (or none) and its guests.

    ``EmulatedMachine.boot(memory_mb=2048, xen_version="4.12", xenstore=path_or_None)`` makes a
    new one; ``EmulatedMachine(host, xenstore)`` wraps parts a caller already has (the daemon).
    ``directory`` is where file-backed swap devices live.
    """

    def __init__(self, host: EmulatedHost, xenstore: XenStoreServer | None = None, *,
                 directory: Path | None = None, stats_interval: float = 5.0,
                 timeout: float = 5.0) -> None:
        self.host = host
        self.xenstore = xenstore
        self.directory = directory
        self.stats_interval = stats_interval
        self.timeout = timeout
        self.guests: dict[int, MachineGuest] = {}
        self.now = 0.0  # model seconds
        # One lock for every guest model: the clock, agents and balloon watches take it, and a
        # checkpoint holds it (before the host's lock, always in that order).
        self.model_lock = threading.RLock()
        self._cluster_disks: dict[bytes, FsDisk] = {}
        self._clock: threading.Thread | None = None
        self._stop = threading.Event()
        self.speed = 1.0
        self.lag = 0.0  # model seconds the clock is behind wall time * speed
        self.clock_error: str | None = None

    @classmethod
    def boot(cls, *, memory_mb: int = 2048, xen_version: str = "4.12",
             xenstore: str | Path | None = None, directory: Path | None = None,
             **host_options: Any) -> EmulatedMachine:
        """A new machine; with ``xenstore`` (a socket path) it runs a xenstored there."""
        host = EmulatedHost(memory_mb=memory_mb, xen_version=xen_version, **host_options)
        server = None
        if xenstore is not None:
            from xentmem.xenstore.toolstack import layout_dom0

            server = XenStoreServer(xenstore).start()
            xs = server.connect(0)
            try:
                layout_dom0(xs, host.domains[0].nr_pages * 4)
            finally:
                xs.close()
        return cls(host, server, directory=directory)

    # -- guests --

    def tmem_client(self, domid: int = 0) -> Tmem:
        """A new ``Tmem`` client acting as ``domid`` through the in-process transport (dom0 by
        default: the control plane, or a benchmark's client)."""
        return Tmem(EmulatedHypervisor(self.host, domid), version=self.host.version)

    def add_guest(self, spec: GuestSpec, *,
                  sysfs_root: str | os.PathLike[str] | None = None) -> MachineGuest:
        """Create the domain, introduce it, boot its kernel model and start its agent. With
        ``sysfs_root`` the agent drives a sysfs tree mirrored from the model there (files, as
        on a real guest) instead of the model itself."""
        if any(g.name == spec.name for g in self.guests.values()):
            raise GuestError(f"a guest named {spec.name!r} already exists")
        domid = self.host.create_domain(spec.name, spec.memory_mb, spec.max_mb)
        try:
            return self._boot(spec, domid, sysfs_root)
        except BaseException:
            with contextlib.suppress(XentmemError):
                self.host.destroy_domain(domid)
            raise

    def _boot(self, spec: GuestSpec, domid: int,
              sysfs_root: str | os.PathLike[str] | None) -> MachineGuest:
        if self.xenstore is not None:
            self.xenstore.introduce_domain(domid, spec.name, spec.memory_mb * 1024,
                                           spec.max_mb * 1024)
        guest = Guest(spec.name, memory_mb=spec.memory_mb, max_memory_mb=spec.max_mb,
                      reservation=HypervisorReservation(EmulatedHypervisor(self.host, domid)),
                      kernel=spec.kernel)
        for n, sw in enumerate(spec.swap):
            pages = sw.mb * MB + 1  # + the header slot
            if sw.file is not None:
                store: Any = FileSlotStore((self.directory or Path(".")) / sw.file, pages)
            else:
                store = MemorySlotStore(pages)
            guest.swapon(store, priority=sw.priority, name=sw.file or f"/dev/xvdb{n + 1}")
        for m in spec.mounts:
            disk = None
            if FSTYPES[m.type].shared and m.uuid is not None:
                disk = self._cluster_disks.setdefault(m.uuid, FsDisk())
            guest.mount(m.name, m.type, uuid=m.uuid, disk=disk)
        mg = MachineGuest(self, spec, domid, guest, [Workload(w, guest) for w in spec.workloads])
        mg.sysfs_root = None if sysfs_root is None else Path(sysfs_root)
        if (spec.backend == "tmem" and guest.kernel.has_tmem) or spec.backend in ("zcache",
                                                                                  "ramster"):
            guest.load_backend(mg.backend(spec.backend, spec.backend_params))
        with self.model_lock:
            self.guests[domid] = mg
        mg._connect()
        return mg

    def guest(self, which: int | str) -> MachineGuest:
        """The guest with domid or name ``which`` (``KeyError`` if none)."""
        for g in self.guests.values():
            if which in (g.domid, g.name):
                return g
        raise KeyError(f"no guest {which!r}")

    def remove_guest(self, which: int | str) -> dict[str, Any]:
        """Shut a guest down (its agent stops, its domain dies); its last report."""
        mg = self.guest(which)
        mg._disconnect()
        with self.model_lock:
            row = mg.report()
            del self.guests[mg.domid]
            if mg.tmem is not None:
                mg.tmem.close()
        if self.xenstore is not None:
            self.xenstore.release_domain(mg.domid)
        self.host.destroy_domain(mg.domid)
        return row

    # -- time --

    def advance(self, seconds: float, *, tick: float = 0.5) -> int:
        """Run every guest for ``seconds`` model seconds, in ticks of at most ``tick`` (the
        workloads and the kernels' timers act once per tick); workload operations done."""
        if not (seconds >= 0 and tick > 0):
            raise GuestError(f"advance needs seconds >= 0 and tick > 0, not {seconds}, {tick}")
        done = 0
        end = self.now + seconds
        with self.model_lock:
            while self.now < end - 1e-9:
                now = self.now
                dt = min(tick, end - now)
                done += sum(g.step(now, dt) for g in list(self.guests.values()))
                self.now = now + dt
        return done

    def start(self, *, speed: float = 1.0, step: float = 0.1) -> EmulatedMachine:
        """Advance the clock in a thread: ``step`` wall seconds per tick, ``speed`` model
        seconds per wall second."""
        if self._clock is not None:
            return self
        if not (speed > 0 and math.isfinite(speed)):
            raise GuestError(f"speed must be positive, not {speed}")
        self.speed = speed
        self._stop.clear()
        self._clock = threading.Thread(target=self._run_clock, args=(step,),
                                       name="xentmem-machine-clock", daemon=True)
        self._clock.start()
        return self

    def _run_clock(self, step: float) -> None:
        wall0, model0 = time.monotonic(), self.now
        while not self._stop.wait(step):
            due = model0 + (time.monotonic() - wall0) * self.speed
            dt = min(due - self.now, 10 * step * self.speed)  # catch up in bounded steps
            if dt <= 0:
                continue
            try:
                self.advance(dt, tick=dt)
            except Exception as exc:  # a model bug stops the clock, and says so
                log.exception("the machine's clock stopped")
                self.clock_error = f"{type(exc).__name__}: {exc}"
                return
            self.lag = max(0.0, due - self.now)

    def stop(self) -> None:
        """Stop the clock (the guests keep their state)."""
        self._stop.set()
        if self._clock is not None:
            self._clock.join(30)
            self._clock = None

    def close(self) -> None:
        """Stop the clock and every agent; the host and xenstored stay with their owner."""
        self.stop()
        for mg in list(self.guests.values()):
            mg._disconnect()
            if mg.tmem is not None:
                mg.tmem.close()
                mg.tmem = None

    def __enter__(self) -> EmulatedMachine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def xenstore_dom0(self) -> Iterator[Any]:
        """A dom0 connection to this machine's xenstored."""
        if self.xenstore is None:
            raise GuestError("this machine has no xenstored")
        xs = self.xenstore.connect(0)
        try:
            yield xs
        finally:
            xs.close()

    # -- what happened --

    def verify(self) -> int:
        """Read every guest's anonymous pages back (each is checked); pages read."""
        with self.model_lock:
            return sum(g.guest.verify_anon() for g in self.guests.values())

    def report(self) -> list[dict[str, Any]]:
        """One row per guest (see :meth:`MachineGuest.report`)."""
        with self.model_lock:
            return [g.report() for _, g in sorted(self.guests.items())]

    @property
    def lost(self) -> int:
        return sum(g.guest.stats.lost for g in self.guests.values())

    @property
    def stale(self) -> int:
        return sum(g.guest.stats.stale for g in self.guests.values())

    # -- checkpoint --

    def checkpoint(self) -> tuple[dict[str, Any], bytes]:
        """The host's state and every guest's, captured at one instant: ``(host_state,
        guests)``, both plain data for :meth:`restore`."""
        with self.model_lock, self.host.lock:
            buf = io.BytesIO()
            _GuestPickler(buf, self).dump({
                "format": CHECKPOINT_FORMAT, "now": self.now,
                "guests": [(g.spec, g.domid, g.guest, g.workloads, g.ops)
                           for _, g in sorted(self.guests.items())],
            })
            return self.host.to_state(), buf.getvalue()

    def restore_guests(self, blob: bytes) -> None:
        """Bring back the guests of a :meth:`checkpoint` onto this machine, whose host was
        restored from the same checkpoint; each continues where it was."""
        token = _RESTORING.set(_Restoring(self))
        try:
            data = _GuestUnpickler(io.BytesIO(blob)).load()
        finally:
            _RESTORING.reset(token)
        if data.get("format") != CHECKPOINT_FORMAT:
            raise GuestError(f"guest checkpoint format {data.get('format')!r} is not "
                             f"{CHECKPOINT_FORMAT}")
        self.now = data["now"]
        for spec, domid, guest, workloads, ops in data["guests"]:
            if domid not in self.host.domains:
                log.warning("guest %s: domain %d is gone; not restored", spec.name, domid)
                continue
            if self.xenstore is not None and not self.xenstore.is_introduced(domid):
                self.xenstore.introduce_domain(domid, spec.name, spec.memory_mb * 1024,
                                               spec.max_mb * 1024)
            mg = MachineGuest(self, spec, domid, guest, workloads)
            mg.ops = ops
            backend = guest.backend
            if isinstance(backend, XenTmem):
                mg.tmem = backend.tmem
            with self.model_lock:
                self.guests[domid] = mg
            mg._connect()


# Objects that belong to the running process, not to a guest's state: pickled by reference
# and re-made (or re-bound to the restored host) when a checkpoint is loaded. Pages are kept
# compact by their holders (xentmem.guest._pages); atoms never reach reducer_override, so a
# checkpoint costs one Python call per object that is not plain data.
_LOCKS = {type(threading.Lock()): threading.Lock, type(threading.RLock()): threading.RLock}
_RESTORING: contextvars.ContextVar[_Restoring] = contextvars.ContextVar("xentmem_restoring")


class _GuestPickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, machine: EmulatedMachine) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.domains = {id(dom.mem): d for d, dom in machine.host.domains.items()}

    def reducer_override(self, obj: Any) -> Any:
        t = type(obj)
        if t in _LOCKS:
            return (_LOCKS[t], ())
        if t is EmulatedHost:
            return (_resolve, ("host",))
        if t is bytearray and id(obj) in self.domains:
            return (_resolve, ("mem", self.domains[id(obj)]))
        if t is EmulatedHypervisor:
            return (_resolve, ("hv", obj.domid))
        if t is Tmem:
            return (_resolve, ("tmem", obj.hv.domid))  # type: ignore[attr-defined]
        if t is EmulatedFrames:
            return (_resolve, ("frames", obj._domid, len(obj.numbers)))
        if t in (_LockedTarget, InMemoryTargetSource, XenStoreTargetSource):
            return (_resolve, ("target",))
        if t is threading.Event:
            return (_resolve, ("event", obj.is_set()))
        return NotImplemented


# What a guest checkpoint may name: the model's own classes, the few functions that rebuild
# pages and process-bound objects, and plain standard types. Nothing else is looked up, so a
# checkpoint file cannot call arbitrary code.
_MODEL_MODULES = ("xentmem.guest.", "xentmem.emulator.machine")
_FUNCTIONS = {("xentmem.guest._pages", "_expand"), ("xentmem.guest.guest", "_anon_page"),
              ("xentmem.emulator.machine", "_resolve"), ("copyreg", "_reconstructor"),
              ("_thread", "allocate_lock"), ("threading", "RLock"), ("_thread", "RLock")}
_STANDARD = {("builtins", "object"), ("builtins", "set"), ("builtins", "frozenset"),
             ("builtins", "bytearray"), ("collections", "OrderedDict"), ("random", "Random"),
             ("itertools", "count"), ("collections", "deque"), ("builtins", "float")}


class _GuestUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _FUNCTIONS or (module, name) in _STANDARD:
            return super().find_class(module, name)
        if module.startswith(_MODEL_MODULES):
            found = super().find_class(module, name)
            if isinstance(found, type):  # a class of the model; never a function
                return found
        raise pickle.UnpicklingError(f"a guest checkpoint may not name {module}.{name}")


@dataclass
class _Restoring:
    machine: EmulatedMachine
    clients: dict[int, Tmem] = field(default_factory=dict)

    @property
    def host(self) -> EmulatedHost:
        return self.machine.host


def _resolve(kind: str, *args: Any) -> Any:
    """Re-make a process-bound object for the machine being restored."""
    ctx = _RESTORING.get(None)
    if ctx is None:
        raise pickle.UnpicklingError("a guest checkpoint loads only through "
                                     "EmulatedMachine.restore_guests")
    host = ctx.host
    if kind == "host":
        return host
    if kind == "mem":
        return host.domains[args[0]].mem
    if kind == "hv":
        return EmulatedHypervisor(host, args[0])
    if kind == "tmem":
        if args[0] not in ctx.clients:
            ctx.clients[args[0]] = ctx.machine.tmem_client(args[0])
        return ctx.clients[args[0]]
    if kind == "frames":
        return EmulatedFrames(host, args[0], args[1])
    if kind == "target":
        return None  # re-attached by MachineGuest._connect
    if kind == "event":
        event = threading.Event()
        if args[0]:
            event.set()
        return event
    raise pickle.UnpicklingError(f"unknown reference {kind!r} in a guest checkpoint")
