"""Scenarios: an emulated host with guests, workloads, and backend loads / unloads at given
model times, described in TOML and run to a summary.

::

    name = "late backend"
    duration = 12          # model seconds
    step = 0.5             # model seconds per tick
    [host]
    memory_mb = 2048
    xen_version = "4.12"
    [[guests]]
    name = "web"
    memory_mb = 128
    max_memory_mb = 256
    swap = [{ mb = 256 }]                       # in memory; { mb, priority, file } also
    mounts = [{ name = "root", type = "ext4" }] # ocfs2 needs uuid = "…"
    concurrent = false                          # true: workloads run in parallel threads
    [[guests.workloads]]
    kind = "anon"        # anon | file | burst (fields of WorkloadSpec)
    mb = 160
    grow = 4
    [[events]]
    at = 3
    guest = "web"
    action = "load"      # load | unload | replace | target | swapoff | drop_caches | sysfs
    backend = "tmem"     # tmem | zcache
    params = { selfballooning = false }

RAMster clusters (additive keys): a guest with ``ramster = { node = 1, target = 0 }`` boots
with the ``ramster`` backend as that node (``port`` fixes its TCP port; 0, the default, takes a
free one and the nodes are told each other's addresses after boot); ``machine = "b"`` puts a
guest on another emulated machine of the same process; a top-level ``[ramster]`` table holds the
parameters every node shares (``mode``, ``dead_s``, ...; ``peers = "2=127.0.0.1:17802"`` names
nodes served by other daemons); ``action = "kill"`` kills a guest mid-run, its node with it::

    [ramster]
    mode = "durable"
    [[guests]]
    name = "server"
    machine = "memory-server"
    ramster = { node = 0 }
    [[events]]
    at = 20
    guest = "server"
    action = "kill"

Every page is checked whenever it is read, and every guest reads all its pages back at the end:
``ScenarioResult.ok`` is False if any page came back lost or stale.
"""

from __future__ import annotations

import contextlib
import math
import time
import tomllib
import uuid as uuidlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from xentmem.emulator import ramster
from xentmem.emulator.machine import (
    BACKENDS,
    EmulatedMachine,
    GuestSpec,
    MachineGuest,
    MountSpec,
    SwapSpec,
)
from xentmem.errors import GuestError, XentmemError
from xentmem.guest import Ramster
from xentmem.guest.cleancache import FS_NO_BACKEND
from xentmem.guest.fs import FSTYPES
from xentmem.guest.selfballoon import MB
from xentmem.guest.sysfs import SysfsView
from xentmem.guest.workload import WorkloadSpec

__all__ = [
    "ACTIONS",
    "BACKENDS",
    "EventSpec",
    "GuestSpec",
    "Scenario",
    "ScenarioResult",
    "load_scenario",
    "parse_scenario",
    "run_scenario",
]

ACTIONS = ("load", "unload", "replace", "target", "swapoff", "drop_caches", "sysfs", "kill")
DEFAULT_MACHINE = "host"
_WORKLOAD_FIELDS = {f.name for f in fields(WorkloadSpec)}


@dataclass(frozen=True)
class EventSpec:
    at: float
    guest: str
    action: str
    backend: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    value: Any = None
    path: str | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    duration: float
    step: float
    host_memory_mb: int
    xen_version: str
    guests: tuple[GuestSpec, ...]
    events: tuple[EventSpec, ...]
    description: str = ""
    machines: Mapping[str, str] = field(default_factory=dict)  # guest -> machine, if not "host"


# -- parsing (the TOML is untrusted input: every field checked, clear messages) ----------------

def _get(table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str,
         default: Any = ..., positive: bool = False) -> Any:
    if key not in table:
        if default is ...:
            raise GuestError(f"{where}: missing '{key}'")
        return default
    value = table[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = "/".join(k.__name__ for k in kinds)
        raise GuestError(f"{where}: '{key}' must be {names}, not {value!r}")
    if positive and value <= 0:
        raise GuestError(f"{where}: '{key}' must be positive, not {value!r}")
    return value


def _unknown(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise GuestError(f"{where}: unknown key(s) {', '.join(extra)}")


def _parse_guest(table: Any, i: int) -> GuestSpec:
    where = f"guests[{i}]"
    if not isinstance(table, dict):
        raise GuestError(f"{where}: must be a table")
    _unknown(table, {"name", "memory_mb", "max_memory_mb", "kernel", "swap", "mounts",
                     "workloads", "concurrent", "machine", "ramster"}, where)
    name = _get(table, "name", str, where)
    memory_mb = _get(table, "memory_mb", int, where, 128, positive=True)
    max_mb = _get(table, "max_memory_mb", int, where, memory_mb, positive=True)
    swaps = []
    for j, s in enumerate(_get(table, "swap", list, where, [])):
        w = f"{where}.swap[{j}]"
        if not isinstance(s, dict):
            raise GuestError(f"{w}: must be a table")
        _unknown(s, {"mb", "priority", "file"}, w)
        swaps.append(SwapSpec(_get(s, "mb", int, w, positive=True),
                              _get(s, "priority", int, w, None), _get(s, "file", str, w, None)))
    mounts = []
    for j, m in enumerate(_get(table, "mounts", list, where, [])):
        w = f"{where}.mounts[{j}]"
        if not isinstance(m, dict):
            raise GuestError(f"{w}: must be a table")
        _unknown(m, {"name", "type", "uuid"}, w)
        fstype = _get(m, "type", str, w, "ext4")
        if fstype not in FSTYPES:
            raise GuestError(f"{w}: unknown filesystem type {fstype!r}")
        raw_uuid = _get(m, "uuid", str, w, None)
        try:
            uuid = None if raw_uuid is None else uuidlib.UUID(raw_uuid).bytes
        except ValueError:
            raise GuestError(f"{w}: bad uuid {raw_uuid!r}") from None
        mounts.append(MountSpec(_get(m, "name", str, w), fstype, uuid))
    workloads = []
    for j, wl in enumerate(_get(table, "workloads", list, where, [])):
        w = f"{where}.workloads[{j}]"
        if not isinstance(wl, dict):
            raise GuestError(f"{w}: must be a table")
        _unknown(wl, _WORKLOAD_FIELDS, w)
        try:
            workloads.append(WorkloadSpec(**{"seed": i * 1000 + j, **wl}))
        except (TypeError, GuestError) as exc:
            raise GuestError(f"{w}: {exc}") from None
    kernel = str(_get(table, "kernel", (str, float), where, "3.10"))
    try:
        return GuestSpec(name, memory_mb, max_mb, kernel, tuple(swaps), tuple(mounts),
                         tuple(workloads), concurrent=_get(table, "concurrent", bool, where,
                                                           False), agent=False)
    except GuestError as exc:
        raise GuestError(f"{where}: {exc}") from None


_RAMSTER_NODE_KEYS = {"node", "target", "port"}


def _ramster_nodes(data: Mapping[str, Any], guests: list[Any]) -> dict[str, dict[str, Any]]:
    """Each ramster guest's backend parameters: the shared ``[ramster]`` table, its node and
    target, and the whole node list (ports 0 until the nodes listen; ``peers`` as given)."""
    shared = dict(_get(data, "ramster", dict, "scenario", {}))
    peers = str(shared.pop("peers", ""))
    if set(shared) & (_RAMSTER_NODE_KEYS | {"nodes"}):
        raise GuestError("ramster: node, target, port and nodes are set per guest "
                         "(guests[].ramster) and peers, not in [ramster]")
    mine: dict[str, tuple[int, int, int]] = {}
    for i, g in enumerate(guests):
        table = g.get("ramster") if isinstance(g, dict) else None
        if table is None:
            continue
        w = f"guests[{i}].ramster"
        if not isinstance(table, dict):
            raise GuestError(f"{w}: must be a table")
        _unknown(table, _RAMSTER_NODE_KEYS, w)
        mine[str(g.get("name"))] = (_get(table, "node", int, w), _get(table, "target", int, w, -1),
                                    _get(table, "port", int, w, 0))
    if not mine:
        return {}
    nodes = " ".join([f"{n}=127.0.0.1:{port}" for n, _, port in mine.values()] + [peers])
    return {name: {**shared, "node": n, "target": t, "nodes": nodes}
            for name, (n, t, _) in mine.items()}


def _parse_event(table: Any, i: int, guests: set[str]) -> EventSpec:
    where = f"events[{i}]"
    if not isinstance(table, dict):
        raise GuestError(f"{where}: must be a table")
    _unknown(table, {"at", "guest", "action", "backend", "params", "value", "path"}, where)
    at = float(_get(table, "at", (int, float), where))
    guest = _get(table, "guest", str, where)
    if guest not in guests:
        raise GuestError(f"{where}: no guest named {guest!r}")
    action = _get(table, "action", str, where)
    if action not in ACTIONS:
        raise GuestError(f"{where}: unknown action {action!r} (one of {', '.join(ACTIONS)})")
    backend = _get(table, "backend", str, where, None)
    if action in ("load", "replace") and backend not in BACKENDS:
        raise GuestError(f"{where}: '{action}' needs backend = one of {', '.join(BACKENDS)}")
    value = table.get("value")
    if action in ("target", "swapoff") and not isinstance(value, int):
        raise GuestError(f"{where}: '{action}' needs an integer value")
    path = _get(table, "path", str, where, None)
    if action == "sysfs" and (path is None or value is None):
        raise GuestError(f"{where}: 'sysfs' needs path and value")
    return EventSpec(at, guest, action, backend, _get(table, "params", dict, where, {}), value,
                     path)


def _check_cluster_writes(guests: tuple[GuestSpec, ...]) -> None:
    """Guests sharing a cluster filesystem read it only: its cross-node coherency (ocfs2's
    DLM invalidating the other nodes' page caches) is not modelled."""
    sharers: dict[bytes, int] = {}
    for g in guests:
        for m in g.mounts:
            if FSTYPES[m.type].shared and m.uuid is not None:
                sharers[m.uuid] = sharers.get(m.uuid, 0) + 1
    for g in guests:
        shared = {m.name for m in g.mounts if m.uuid is not None and sharers.get(m.uuid, 0) > 1}
        for w in g.workloads:
            if w.kind == "file" and w.fs in shared and w.write_fraction > 0:
                raise GuestError(f"guest {g.name}: writes to cluster filesystem {w.fs!r} "
                                 "shared with other guests are not modelled (no DLM); "
                                 "set write_fraction = 0")


def parse_scenario(data: Mapping[str, Any], name: str = "scenario") -> Scenario:
    """A ``Scenario`` from parsed TOML; ``GuestError`` names the first bad field."""
    _unknown(data, {"name", "description", "duration", "step", "host", "guests", "events",
                    "ramster"}, "scenario")
    host = _get(data, "host", dict, "scenario", {})
    _unknown(host, {"memory_mb", "xen_version"}, "host")
    tables = _get(data, "guests", list, "scenario")
    guests = tuple(_parse_guest(g, i) for i, g in enumerate(tables))
    if not guests:
        raise GuestError("scenario: at least one guest is needed")
    params = _ramster_nodes(data, tables)
    try:
        for p in params.values():  # the module checks its parameters once, here
            Ramster(**p)
    except (GuestError, TypeError) as exc:
        raise GuestError(f"ramster: {exc}") from None
    guests = tuple(replace(g, backend="ramster", backend_params=params[g.name])
                   if g.name in params else g for g in guests)
    machines = {str(t["name"]): _get(t, "machine", str, f"guests[{i}]")
                for i, t in enumerate(tables) if "machine" in t}
    names = [g.name for g in guests]
    if len(set(names)) != len(names):
        raise GuestError("scenario: guest names must be unique")
    _check_cluster_writes(guests)
    events = tuple(sorted((_parse_event(e, i, set(names))
                           for i, e in enumerate(_get(data, "events", list, "scenario", []))),
                          key=lambda e: e.at))
    duration = float(_get(data, "duration", (int, float), "scenario", 10.0, positive=True))
    step = float(_get(data, "step", (int, float), "scenario", 1.0, positive=True))
    return Scenario(_get(data, "name", str, "scenario", name), duration, step,
                    _get(host, "memory_mb", int, "host", 2048, positive=True),
                    str(_get(host, "xen_version", (str, float), "host", "4.12")), guests, events,
                    _get(data, "description", str, "scenario", ""), machines)


def load_scenario(path: str | Path) -> Scenario:
    """Read and check a scenario TOML file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise GuestError(f"{path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise GuestError(f"{path}: not valid TOML: {exc}") from None
    return parse_scenario(data, path.stem)


# -- running ------------------------------------------------------------------------------------

@dataclass
class ScenarioResult:
    """The outcome: one summary row per guest, the event log, and the verdict."""

    scenario: str
    rows: list[dict[str, Any]]
    events: list[dict[str, Any]]
    ops: int
    seconds: float

    @property
    def lost(self) -> int:
        return sum(r["lost"] for r in self.rows)

    @property
    def stale(self) -> int:
        return sum(r["stale"] for r in self.rows)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.stale == 0

    def totals(self) -> dict[str, Any]:
        keys = ("stored", "loaded", "drained", "to_disk", "cache_hits", "lost", "stale")
        return {"scenario": self.scenario, "guests": len(self.rows), "operations": self.ops,
                **{k: sum(r[k] for r in self.rows) for k in keys},
                "seconds": round(self.seconds, 2), "ok": self.ok}


def _boot(scenario: Scenario, tmpdir: Path | None,
          stack: contextlib.ExitStack) -> list[EmulatedMachine]:
    """One machine per ``machine`` name (``host`` first); RAMster nodes linked once all run."""
    machines: dict[str, EmulatedMachine] = {}
    for spec in scenario.guests:
        name = scenario.machines.get(spec.name, DEFAULT_MACHINE)
        if name not in machines:
            machines[name] = stack.enter_context(EmulatedMachine.boot(
                memory_mb=scenario.host_memory_mb, xen_version=scenario.xen_version,
                directory=tmpdir))
        machines[name].add_guest(spec)
    ramster.link(g for m in machines.values() for g in m.guests.values())
    return list(machines.values())


def _apply(event: EventSpec, b: MachineGuest) -> str:
    g = b.guest
    if event.action == "kill":
        if isinstance(g.backend, Ramster):
            held = g.backend.stats()["foreign_pers_pages"]
            ramster.kill(b)
            return f"killed {g.name}; its node held {held} persistent page(s) of other nodes"
        b.machine.remove_guest(b.domid)
        return f"killed {g.name}"
    if event.action == "load":
        queued = sum(g.frontswap.need_init)
        pending = sum(real == FS_NO_BACKEND for real in (*g.cleancache.fs_poolid_map,
                                                          *g.cleancache.shared_fs_poolid_map))
        g.load_backend(b.backend(event.backend, event.params))  # type: ignore[arg-type]
        return (f"loaded {event.backend}: init ran for {queued} queued swap device(s), "
                f"{pending} fake cleancache pool id(s) resolved")
    if event.action in ("unload", "replace"):
        if event.action == "replace":
            report = g.load_backend(b.backend(event.backend, event.params), replace=True)
            if report is None:
                return f"loaded {event.backend} (nothing to replace)"
        else:
            report = g.unload_backend()
        text = (f"unloaded {report.backend}: drained {report.drained} pages to swap in "
                f"{report.seconds * 1000:.1f} ms, dropped {report.pools_flushed} cleancache "
                "pool(s)")
        return text + (f", then loaded {event.backend}" if event.action == "replace" else "")
    if event.action == "target":
        b.set_target(int(event.value))
        return f"memory/target = {event.value} MiB"
    if event.action == "swapoff":
        dev = g.swap_info[int(event.value)]
        g.swapoff(int(event.value))
        return f"swapoff {dev.name if dev else event.value}"
    if event.action == "drop_caches":
        return f"drop_caches: {g.drop_caches()} pages to cleancache"
    SysfsView(g).write(str(event.path), str(event.value))
    return f"echo {event.value} > /{str(event.path).strip('/')}"


def run_scenario(scenario: Scenario, *, tmpdir: Path | None = None,
                 on_event: Callable[[dict[str, Any]], None] | None = None,
                 on_tick: Callable[[float], None] | None = None) -> ScenarioResult:
    """Boot, run and verify ``scenario``. ``on_event`` sees each applied event as it happens,
    ``on_tick`` the model time after each tick."""
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        machines = _boot(scenario, tmpdir, stack)
        by_name = {g.name: g for m in machines for g in m.guests.values()}
        log: list[dict[str, Any]] = []
        pending = list(scenario.events)
        ops = 0
        ticks = max(1, math.ceil(scenario.duration / scenario.step))
        for n in range(ticks + 1):
            now = min(n * scenario.step, scenario.duration)
            while pending and pending[0].at <= now:
                event = pending.pop(0)
                try:
                    text = _apply(event, by_name[event.guest])
                except XentmemError as exc:
                    text = f"{event.action} failed: {exc}"
                entry = {"at": event.at, "guest": event.guest, "event": text}
                log.append(entry)
                if on_event is not None:
                    on_event(entry)
            if n == ticks:
                break
            for machine in machines:
                machine.now = now
                ops += machine.advance(scenario.step, tick=scenario.step)
            if on_tick is not None:
                on_tick(now + scenario.step)
        rows = []
        for b in by_name.values():
            if b.domid not in b.machine.guests:
                continue  # killed
            held = b.guest.frontswap.curr_pages()  # before the read-back empties exclusive pools
            b.guest.verify_anon()
            g, s = b.guest, b.guest.stats
            rows.append({
                "guest": g.name, "backend": g.backend.name if g.backend else "-",
                "stored": g.frontswap.succ_stores, "loaded": g.frontswap.loads,
                "drained": s.drained, "to_disk": s.disk_writes,
                "cache_hits": s.cleancache_hits,
                "memory_mb": g.balloon.stats.current_pages // MB,
                "frontswap_pages": held,
                "lost": s.lost, "stale": s.stale,
            })
    return ScenarioResult(scenario.name, rows, log, ops, time.perf_counter() - started)
