"""The rim: a round's inputs read from the host, every guest-written value sanitised.

Per guest (through the admin facade, :class:`xentmem.host.Host`): its agent's report under
``data/tmem`` (meminfo, vmstat, tmem counters, balloon, whether it self-balloons), its
``memory/target`` and static maximum, its balancing settings (:mod:`.settings`), and where no
agent reports, libvirt's ``memoryStats``. Per host (a :data:`HostMemory` source): free and total
memory and every domain's reservation as the hypervisor counts it -- libvirt on a real host,
the emulator daemon's host API on an emulated one; and on a tmem host ``tmem-list -l`` and the
freeable memory through the ``Tmem`` client.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from xentmem.balance.model import MIB, GuestState, HostState, TmemClient
from xentmem.balance.settings import UNCOOPERATIVE_KEY, read_settings
from xentmem.errors import LibvirtError, TmemError, TransportError
from xentmem.host.guests import GuestInfo, Host
from xentmem.host.libvirt import LibvirtConnection
from xentmem.host.tmemlist import parse_tmem_list
from xentmem.hypercalls import Tmem
from xentmem.xenstore import sanitize_bool
from xentmem.xenstore.toolstack import domain_path

__all__ = ["AVERAGE_ROUNDS", "Collector", "HostMemory", "Memory", "daemon_memory",
           "libvirt_memory"]

AVERAGE_ROUNDS = 10  # MoM's StatAvg: the mean of the last this many samples


@dataclass(frozen=True)
class Memory:
    """The host's memory as its hypervisor counts it (KiB); ``actual`` by domid."""

    free_kib: int
    total_kib: int | None
    actual: Mapping[int, int]
    xen_version: str | None = None


HostMemory = Callable[[], Memory]


def libvirt_memory(lv: LibvirtConnection) -> HostMemory:
    """A real host's memory: libvirt's node memory and each running domain's."""
    def read() -> Memory:
        total, free = lv.node_memory()
        actual = {d.domid: d.memory_kib for d in lv.domains() if d.domid is not None}
        return Memory(free, total, actual)
    return read


def daemon_memory(hv: Any) -> HostMemory:
    """An emulated host's memory, from its daemon's host API (``hv``: a ``SocketHypervisor``
    as dom0): free heap, and each domain's reservation (its persistent tmem pages are charged
    to it too, but they are not what its balloon follows: they count as used host memory)."""
    def read() -> Memory:
        status = hv.control("status")
        actual = {int(d["domid"]): int(d["memory_mb"]) * MIB
                  for d in status["domains"] if int(d["domid"]) != 0}
        return Memory(int(status["free_mb"]) * MIB, int(status["memory_mb"]) * MIB, actual,
                      str(status["xen_version"]))
    return read


def _tmem_clients(text: str) -> dict[int, TmemClient]:
    out: dict[int, TmemClient] = {}
    for r in parse_tmem_list(text):
        f = r.fields
        if r.kind == "client" and isinstance(f.get("CI"), int):
            out[int(f["CI"])] = TmemClient(  # type: ignore[arg-type]
                domid=int(f["CI"]), weight=int(f.get("ww", 0)),  # type: ignore[arg-type]
                frozen=bool(f.get("fr", 0)), ephemeral_pages=int(f.get("Ec", 0)),  # type: ignore[arg-type]
                persistent_puts=int(f.get("Pp", 0)))  # type: ignore[arg-type]
    return out


class Collector:
    """Reads a round's :class:`HostState` and :class:`GuestState` list. Keeps what rates and
    averages need between rounds (the previous swap-in counters, the last used values), timed
    by ``clock`` (model time in an emulated comparison)."""

    def __init__(self, host: Host, memory: HostMemory, *, tmem: Tmem | None = None,
                 reserve_kib: int = 50 * MIB,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self.memory = memory
        self.tmem = tmem
        self.reserve_kib = reserve_kib
        self.clock = clock
        self._swapins: dict[int, tuple[float, int]] = {}
        self._used: dict[int, deque[int]] = {}

    def gather(self) -> tuple[HostState, list[GuestState]]:
        now = self.clock()
        infos = [g for g in self.host.guests() if g.domid not in (None, 0)
                 and g.state in ("running", "blocked", "paused")]
        mem = self.memory()
        guests = [self._guest(g, mem, now) for g in infos]
        seen = {g.domid for g in guests}
        for gone in set(self._used) - seen:  # a domain died: forget it
            self._used.pop(gone, None)
            self._swapins.pop(gone, None)
        return self._host(mem, now), guests

    def _host(self, mem: Memory, now: float) -> HostState:
        version = mem.xen_version
        tmem = freeable = None
        if self.tmem is not None:
            version = version or str(self.tmem.version)
            with contextlib.suppress(TmemError, TransportError):  # no tmem on this host
                tmem = _tmem_clients(self.tmem.list(long=True))
                freeable = self.tmem.freeable_mb() * MIB
        return HostState(free_kib=mem.free_kib, total_kib=mem.total_kib,
                         reserve_kib=self.reserve_kib, xen_version=version,
                         freeable_kib=freeable, tmem=tmem, time_s=now)

    def _guest(self, info: GuestInfo, mem: Memory, now: float) -> GuestState:
        assert info.domid is not None
        domid = info.domid
        t = info.tmem
        target = info.target_kib or info.memory_kib or 0
        reported = t.balloon.get("current_kib") if t is not None and t.agent else None
        actual = mem.actual.get(domid) or reported or target
        flagged = self.host.xs is not None and bool(sanitize_bool(
            self.host.xs.read(f"{domain_path(domid)}/{UNCOOPERATIVE_KEY}", None)))
        state = GuestState(domid=domid, name=info.name, memory_kib=actual, target_kib=target,
                           max_kib=info.max_kib or actual,
                           settings=read_settings(self.host, domid, info.name),
                           flagged_uncooperative=flagged)
        swapins: int | None = None
        if t is not None and t.agent and not t.silent and t.meminfo.get("MemTotal") is not None:
            m = t.meminfo
            total, free, cache = m.get("MemTotal"), m.get("MemFree"), m.get("Cached")
            swap_used = (m.get("SwapTotal") or 0) - (m.get("SwapFree") or 0)
            used = None
            if total is not None and free is not None and cache is not None:
                used = max(total - free - cache + max(swap_used, 0), 0)
            state = replace(state, used_kib=used, committed_kib=m.get("Committed_AS"),
                            free_kib=free, cache_kib=cache, mem_total_kib=total, source="agent",
                            selfballooning=bool(t.applied.get("selfballooning")),
                            tmem_enabled=bool(t.applied.get("frontswap")
                                              or t.applied.get("cleancache")))
            swapins = t.vmstat.get("pswpin")
        elif self.host.libvirt is not None:
            with contextlib.suppress(LibvirtError):
                stats = self.host.libvirt.memory_stats(info.name)
                if "available" in stats and "unused" in stats:
                    used = max(stats["available"] - stats["unused"]
                               - stats.get("disk_caches", 0), 0)
                    state = replace(state, used_kib=used, committed_kib=used,
                                    free_kib=stats["unused"], cache_kib=stats.get("disk_caches"),
                                    mem_total_kib=stats["available"], source="libvirt")
                    swap_in_kib = stats.get("swap_in")
                    swapins = None if swap_in_kib is None else swap_in_kib // 4  # pages
        if swapins is not None:
            last = self._swapins.get(domid)
            self._swapins[domid] = (now, swapins)
            if last is not None and now > last[0] and swapins >= last[1]:
                state = replace(state, swap_in_rate=(swapins - last[1]) / (now - last[0]))
        if state.used_kib is not None:
            window = self._used.setdefault(domid, deque(maxlen=AVERAGE_ROUNDS))
            window.append(state.used_kib)
            state = replace(state, used_avg_kib=sum(window) // len(window))
        return state
