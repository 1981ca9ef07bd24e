"""The admin's per-guest view and toggles (DESIGN §4 flows 3 and 4).

:class:`Host` works on a real host (libvirt for the domain list and memory targets, the host's
xenstored for the agent keys) or on an emulated one (xenstore alone: ``/local/domain`` lists the
guests and ``memory/target`` is written as libxl would). Both are chosen at the edge::

    host = Host(XenStoreClient("/var/run/xenstored/socket"), LibvirtConnection("xen:///system"))
    host = Host(XenStoreClient(emulator_socket))                  # emulated host
    result = host.set_toggles("web", {"frontswap": False, "interval": 10}, timeout=5)
    result.status                                                 # applied | pending | refused

Toggles go to ``control/`` with a new request number in one transaction; the guest agent
answers under ``data/tmem`` (layout: :mod:`xentmem.xenstore.keys`). Everything read from ``data/``
was written by the guest and passes :mod:`xentmem.xenstore.sanitize` before use: junk reads as
None, never as an exception.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from xentmem.errors import LibvirtError, XenStoreError, XenStoreNotFound
from xentmem.xenstore import (
    XenStore,
    sanitize_bool,
    sanitize_choice,
    sanitize_domid,
    sanitize_int,
    sanitize_kib,
    sanitize_text,
    transaction,
)
from xentmem.xenstore.keys import (
    BALLOON_KEYS,
    CONTROL_SEQ,
    DATA_HEARTBEAT,
    DATA_HEARTBEAT_INTERVAL,
    DATA_MODE,
    DATA_REASON,
    DATA_REFUSED,
    DATA_SEQ,
    DATA_SINK,
    DATA_STATE,
    KEYS,
    MAX_SEQ,
    MEMINFO_KEYS,
    MODES,
    RAMSTER_STATS_KEYS,
    STATES,
    STATS_KEYS,
    VMSTAT_KEYS,
    balloon_key,
    key,
    meminfo_key,
    stats_key,
    vmstat_key,
)
from xentmem.xenstore.toolstack import domain_path

if TYPE_CHECKING:  # libvirt is imported only where a host has it
    from xentmem.host.libvirt import DomainInfo, LibvirtConnection

__all__ = [
    "METADATA_URI",
    "GuestInfo",
    "Host",
    "MemoryResult",
    "TmemReport",
    "ToggleResult",
    "metadata_xml",
    "mib",
    "validate",
]

METADATA_URI = "https://xentmem.invalid/libvirt/tmem/1"  # our libvirt <metadata> namespace
_U64 = (1 << 64) - 1
SILENT_SLACK_S = 10  # beyond three heartbeat intervals plus this, an agent counts as silent
_MAX_EPOCH_S = 1 << 40  # heartbeats are whole seconds since 1970
_MAX_INTERVAL = 3600  # the agent's --stats-interval limit


def mib(kib: int | None) -> int | None:
    """KiB -> MiB (rounded down), None stays None."""
    return None if kib is None else kib // 1024


@dataclass(frozen=True)
class TmemReport:
    """A guest's tmem settings: what dom0 requested and what the agent reports (sanitised)."""

    requested: dict[str, int]  # control/ (written by dom0)
    applied: dict[str, int | None]  # data/tmem/<key>; None: absent or junk
    seq: int | None  # the request the agent last answered
    requested_seq: int | None
    state: str | None  # applied | refused | None (no agent, or junk)
    reason: str | None
    refused: dict[str, str]
    sink: str | None
    stats: dict[str, int | None]
    balloon: dict[str, int | None]
    heartbeat_age_s: int | None = None  # dom0's clock minus the agent's last heartbeat
    heartbeat_interval: int | None = None  # what the agent says it publishes at
    mode: str | None = None  # who runs the self-balloon law: "kernel" or "user-space" (agent)
    meminfo: dict[str, int | None] = field(default_factory=dict)  # /proc/meminfo, kB
    vmstat: dict[str, int | None] = field(default_factory=dict)  # pswpin / pswpout

    @property
    def agent(self) -> bool:
        """Whether an agent has reported at all."""
        return self.state is not None

    @property
    def silent(self) -> bool:
        """Whether the agent stopped publishing: its heartbeat is more than three intervals
        behind, plus slack for clock skew (an agent too old to send one is never silent)."""
        return (self.heartbeat_age_s is not None and self.heartbeat_interval is not None
                and self.heartbeat_age_s > 3 * self.heartbeat_interval + SILENT_SLACK_S)

    @property
    def status(self) -> str:
        """``no agent``, ``silent`` (it reported, then stopped), ``pending`` (a request not yet
        answered), or the agent's state."""
        if self.state is None:
            return "no agent"
        if self.silent:
            return "silent"
        if self.requested_seq is not None and self.seq != self.requested_seq:
            return "pending"
        return self.state


@dataclass(frozen=True)
class GuestInfo:
    """One domain as the admin sees it; memory in KiB (None where unknown)."""

    domid: int | None
    name: str
    state: str
    memory_kib: int | None  # reservation (libvirt), else the toolstack's memory/target
    max_kib: int | None
    target_kib: int | None  # memory/target
    tmem: TmemReport | None
    metadata: str | None = None  # our libvirt metadata element (real host)
    note: str = ""  # why something is missing

    def row(self) -> dict[str, Any]:
        """The flat row of ``xentmem guest list`` / ``status``."""
        t = self.tmem
        return {"domid": self.domid, "name": self.name, "state": self.state,
                "memory_mib": mib(self.memory_kib), "target_mib": mib(self.target_kib),
                "max_mib": mib(self.max_kib),
                # what the guest's balloon driver says it holds (its agent's claim, shown
                # beside the toolstack's numbers, never added to them)
                "balloon_mib": mib(t.balloon.get("current_kib")) if t else None,
                "frontswap": t.applied.get("frontswap") if t else None,
                "cleancache": t.applied.get("cleancache") if t else None,
                "selfballooning": t.applied.get("selfballooning") if t else None,
                "agent": t.status if t else "unknown"}


@dataclass(frozen=True)
class ToggleResult:
    """The outcome of :meth:`Host.set_toggles`."""

    domid: int
    name: str
    seq: int
    status: str  # applied | pending | refused
    reason: str
    requested: dict[str, int | None]  # None: the request for that key was withdrawn
    applied: dict[str, int | None] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for name, value in self.requested.items():
            status = ("withdrawn" if value is None else "refused" if name in self.refused else
                      "pending" if self.status == "pending" else "applied")
            out.append({"key": name, "requested": value, "applied": self.applied.get(name),
                        "status": status, "reason": self.refused.get(name, "")})
        return out


@dataclass(frozen=True)
class MemoryResult:
    """The outcome of :meth:`Host.set_memory_target` (KiB)."""

    domid: int | None
    name: str
    target_kib: int
    previous_kib: int | None
    via: str  # "libvirt" | "xenstore"
    status: str = "requested"  # applied | pending | requested (not waited for / no agent)
    guest_target_kib: int | None = None  # the balloon target the guest's agent reports
    guest_current_kib: int | None = None  # and where the balloon is now (it may lag)
    note: str = ""


def _acked(answered: int | None, wanted: int) -> bool:
    """Whether request ``answered`` is ``wanted`` or a later one (the counter wraps)."""
    if answered is None:
        return False
    return (answered - wanted) % (MAX_SEQ + 1) < (MAX_SEQ + 1) // 2


# what _read_reports reads, relative to the domain: one pipelined batch (a round trip for the
# lot instead of one each: `status` on a busy host of 50 guests went from 6 s to well under 1).
# RAMster's first counter stands for all of them: the rest, and the refused reasons (by name:
# only KEYS may be refused), are read in a second batch, only for the domains that have them.
_RAMSTER_MARK = stats_key(RAMSTER_STATS_KEYS[0])
_REPORT_NODES = (
    *(node for k in KEYS for node in (k.data, k.control)),
    DATA_HEARTBEAT, DATA_SEQ, CONTROL_SEQ, DATA_STATE, DATA_REASON, DATA_SINK,
    *(stats_key(n) for n in STATS_KEYS), _RAMSTER_MARK,
    *(balloon_key(n) for n in BALLOON_KEYS),
    DATA_HEARTBEAT_INTERVAL, DATA_MODE,
    *(meminfo_key(n) for n in MEMINFO_KEYS), *(vmstat_key(n) for n in VMSTAT_KEYS),
)
_REFUSED_NODES = tuple(f"{DATA_REFUSED}/{k.name}" for k in KEYS)
_RAMSTER_NODES = tuple(stats_key(n) for n in RAMSTER_STATS_KEYS[1:])
_GUEST_NODES = ("name", "memory/target", "memory/static-max")  # read beside the report
_ABSENT = object()  # a node that is not there, told apart from one holding junk


def _read_reports(xs: XenStore, domids: list[int], now: float, *extra: str
                  ) -> list[tuple[TmemReport, list[Any]]]:
    """Everything under control/ and data/tmem of each domain, sanitised; ``now`` is dom0's
    clock, to age the agents' heartbeats. Each domain is read in a transaction of its own, all
    of them pipelined together (three round trips for a host, not three per domain; three more
    when an agent refused something or a guest runs RAMster); the ``extra`` nodes of each are
    read in the same batch and returned unsanitised beside its report (None where missing)."""
    groups = [[f"{domain_path(d)}/{n}" for n in (*_REPORT_NODES, *extra)] for d in domids]
    untrusted = [dict(zip((*_REPORT_NODES, *extra), values, strict=True))
                 for values in xs.read_groups(groups, _ABSENT)]
    more = {i: (*(_REFUSED_NODES if _refused(u[DATA_STATE]) else ()),
                *(_RAMSTER_NODES if u[_RAMSTER_MARK] is not _ABSENT else ()))
            for i, u in enumerate(untrusted)}
    more = {i: nodes for i, nodes in more.items() if nodes}
    if more:
        second = xs.read_groups([[f"{domain_path(domids[i])}/{n}" for n in nodes]
                                 for i, nodes in more.items()], _ABSENT)
        for (i, nodes), values in zip(more.items(), second, strict=True):
            untrusted[i].update(zip(nodes, values, strict=True))
    return [(_parse_report(u, now), [None if u[n] is _ABSENT else u[n] for n in extra])
            for u in untrusted]


def _refused(untrusted_state: Any) -> bool:
    """Whether an agent's state says it refused something (junk: look, to show what is there)."""
    return untrusted_state is not _ABSENT and sanitize_choice(untrusted_state, STATES) != "applied"


def _parse_report(nodes: Mapping[str, Any], now: float) -> TmemReport:
    """One domain's report from the values of its nodes (_ABSENT where missing)."""
    untrusted = {n: None if v is _ABSENT else v for n, v in nodes.items()}
    requested: dict[str, int] = {}
    applied: dict[str, int | None] = {}
    for k in KEYS:
        untrusted_applied = untrusted[k.data]
        # control/ is dom0's, but may hold anything an admin wrote with xenstore-write
        untrusted_requested = untrusted[k.control]
        if k.boolean:
            flag = sanitize_bool(untrusted_applied)
            applied[k.name] = None if flag is None else int(flag)
            req = sanitize_bool(untrusted_requested)
            if req is not None:
                requested[k.name] = int(req)
        else:
            applied[k.name] = sanitize_int(untrusted_applied, 0, 1 << 32)
            value = sanitize_int(untrusted_requested, k.lo, k.hi)
            if value is not None:
                requested[k.name] = value
    refused: dict[str, str] = {}
    for k, node in zip(KEYS, _REFUSED_NODES, strict=True):
        if nodes.get(node, _ABSENT) is not _ABSENT:
            why = sanitize_text(untrusted[node])
            refused[k.name] = why if why is not None else "(unreadable reason)"
    heartbeat = sanitize_int(untrusted[DATA_HEARTBEAT], 0, _MAX_EPOCH_S)
    return TmemReport(
        requested=requested,
        applied=applied,
        seq=sanitize_int(untrusted[DATA_SEQ], 0, MAX_SEQ),
        requested_seq=sanitize_int(untrusted[CONTROL_SEQ], 0, MAX_SEQ),
        state=sanitize_choice(untrusted[DATA_STATE], STATES),
        reason=sanitize_text(untrusted[DATA_REASON]),
        refused=refused,
        sink=sanitize_choice(untrusted[DATA_SINK], ("sysfs", "model")),
        stats={**{n: sanitize_int(untrusted[stats_key(n)], 0, _U64) for n in STATS_KEYS},
               **{n: v for n in RAMSTER_STATS_KEYS  # only guests running ramster have them
                  if (v := sanitize_int(untrusted.get(stats_key(n)), 0, _U64)) is not None}},
        balloon={n: sanitize_kib(untrusted[balloon_key(n)]) for n in BALLOON_KEYS},
        heartbeat_age_s=None if heartbeat is None else int(now) - heartbeat,
        heartbeat_interval=sanitize_int(untrusted[DATA_HEARTBEAT_INTERVAL], 1, _MAX_INTERVAL),
        mode=sanitize_choice(untrusted[DATA_MODE], MODES),
        meminfo={n: sanitize_kib(untrusted[meminfo_key(n)]) for n in MEMINFO_KEYS},
        vmstat={n: sanitize_int(untrusted[vmstat_key(n)], 0, _U64) for n in VMSTAT_KEYS},
    )


def validate(values: Mapping[str, int | bool | None]) -> dict[str, int | None]:
    """Check requested settings against their limits (None: withdraw the request);
    ``ValueError`` names the first bad one."""
    out: dict[str, int | None] = {}
    for name, value in values.items():
        try:
            k = key(name)
        except KeyError:
            raise ValueError(f"unknown setting {name!r}; known: "
                             + ", ".join(k.name for k in KEYS)) from None
        if value is None:
            out[name] = None
            continue
        number = int(value)
        if (isinstance(value, bool) and not k.boolean) or not k.lo <= number <= k.hi:
            raise ValueError(f"{name} must be {k.describe_range()}, not {value!r}")
        out[name] = number
    return out


def metadata_xml(values: Mapping[str, int]) -> str:
    """Our libvirt metadata element holding the requested settings."""
    from xml.sax.saxutils import escape  # here: it imports urllib, http and email (15 ms)

    body = "".join(f"<{n}>{escape(str(v))}</{n}>" for n, v in values.items())
    return f"<tmem>{body}</tmem>"


class Host:
    """A Xen host as its admin sees it. ``xs`` is a dom0 xenstore connection; ``libvirt``
    (optional) makes it a real host whose domains and memory libvirt manages."""

    def __init__(self, xs: XenStore | None, libvirt: LibvirtConnection | None = None, *,
                 ack_timeout: float = 5.0, clock: Callable[[], float] = time.time) -> None:
        if xs is None and libvirt is None:
            raise ValueError("a host needs xenstore, libvirt, or both")
        self.xs = xs
        self.libvirt = libvirt
        self.ack_timeout = ack_timeout
        self.clock = clock  # wall clock, to age the agents' heartbeats

    @property
    def kind(self) -> str:
        return "libvirt" if self.libvirt is not None else "xenstore"

    def _xs(self) -> XenStore:
        if self.xs is None:
            raise XenStoreError("this needs xenstore (the guest agent keys live there)")
        return self.xs

    # --- reading ------------------------------------------------------------------------------

    def tmem_report(self, domid: int) -> TmemReport:
        """The sanitised control/ and data/tmem of ``domid``."""
        return _read_reports(self._xs(), [domid], self.clock())[0][0]

    def _xs_guests(self, domids: list[int]) -> list[GuestInfo]:
        reports = _read_reports(self._xs(), domids, self.clock(), *_GUEST_NODES)
        return [self._xs_guest(domid, report, *extra)
                for domid, (report, extra) in zip(domids, reports, strict=True)]

    @staticmethod
    def _xs_guest(domid: int, report: TmemReport, untrusted_name: bytes | None,
                  untrusted_target: bytes | None, untrusted_max: bytes | None) -> GuestInfo:
        name = sanitize_text(untrusted_name, 64) or f"domain-{domid}"
        target = sanitize_kib(untrusted_target)
        # xenstore alone has no hypervisor view of the reservation; the toolstack's target
        # stands for it (the guest's own claim stays in report.balloon, never in the totals)
        return GuestInfo(domid=domid, name=name, state="running", memory_kib=target,
                         max_kib=sanitize_kib(untrusted_max), target_kib=target, tmem=report)

    def _xs_domids(self) -> list[int]:
        try:
            names = self._xs().list("/local/domain")
        except XenStoreNotFound:
            return []
        return sorted(d for n in names if (d := sanitize_domid(n)) is not None)

    def _lv_guest(self, info: DomainInfo) -> GuestInfo:
        tmem = target = None
        note = ""
        if info.domid is not None and self.xs is not None:
            try:
                tmem = self.tmem_report(info.domid)
                target = sanitize_kib(self.xs.read(f"{domain_path(info.domid)}/memory/target",
                                                   None))
            except XenStoreError as exc:
                note = f"xenstore: {exc}"
        assert self.libvirt is not None
        try:
            metadata = self.libvirt.metadata(info.name, METADATA_URI)
        except LibvirtError as exc:
            metadata, note = None, note or str(exc)
        return GuestInfo(domid=info.domid, name=info.name, state=info.state,
                         memory_kib=info.memory_kib, max_kib=info.max_kib,
                         target_kib=target if target is not None else info.memory_kib,
                         tmem=tmem, metadata=metadata, note=note)

    def guests(self) -> list[GuestInfo]:
        """Every domain with its memory and tmem state."""
        if self.libvirt is not None:
            return [self._lv_guest(i) for i in self.libvirt.domains()]
        return self._xs_guests(self._xs_domids())

    def guest(self, dom: str | int) -> GuestInfo:
        """One domain, by name or domid (``LookupError`` if there is none)."""
        if self.libvirt is not None:
            info = self.libvirt.domain(_as_id(dom))
            if info is None:
                raise LookupError(f"no domain {dom!r} known to {self.libvirt.uri}")
            return self._lv_guest(info)
        return self._xs_guests([self._xs_find(dom)])[0]

    def _xs_find(self, dom: str | int) -> int:
        """The domid of ``dom`` (an id, or a name read from /local/domain/*/name)."""
        wanted = _as_id(dom)
        xs = self._xs()
        for d in self._xs_domids():
            if d == wanted or (not isinstance(wanted, int) and
                               sanitize_text(xs.read(f"{domain_path(d)}/name", None), 64)
                               == wanted):
                return d
        raise LookupError(f"no domain {dom!r} in /local/domain")

    def _target(self, dom: str | int) -> tuple[int, str, str | None]:
        """Where a request goes: (domid, name, our libvirt metadata) of a running domain."""
        if self.libvirt is None:
            domid = self._xs_find(dom)
            name = sanitize_text(self._xs().read(f"{domain_path(domid)}/name", None), 64)
            return domid, name or f"domain-{domid}", None
        info = self.libvirt.domain(_as_id(dom))
        if info is None:
            raise LookupError(f"no domain {dom!r} known to {self.libvirt.uri}")
        if info.domid is None:
            raise LookupError(f"domain {info.name} is not running")
        return info.domid, info.name, self.libvirt.metadata(info.name, METADATA_URI)

    def summary(self) -> dict[str, Any]:
        """The host in one record: where it is, its memory, and a row per domain."""
        guests = self.guests()
        host: dict[str, Any] = {"kind": self.kind,
                                "xenstore": getattr(self.xs, "path", None),
                                "libvirt": self.libvirt.uri if self.libvirt else None}
        if self.libvirt is not None:
            host["hypervisor"] = " ".join(self.libvirt.hypervisor())
            total, free = self.libvirt.node_memory()
            host["memory_mib"], host["free_mib"] = total // 1024, free // 1024
        assigned = sum(g.memory_kib or 0 for g in guests)
        return {"host": host, "domains": len(guests), "assigned_mib": assigned // 1024,
                "agents": sum(1 for g in guests if g.tmem is not None and g.tmem.agent),
                "guests": [g.row() for g in guests]}

    # --- changing -----------------------------------------------------------------------------

    def set_toggles(self, dom: str | int, values: Mapping[str, int | bool | None], *,
                    timeout: float | None = None) -> ToggleResult:
        """Request ``values`` (names of :data:`xentmem.xenstore.keys.KEYS`; None withdraws the
        standing request for that key, leaving the guest as it is) for ``dom`` and wait at
        most ``timeout`` s for the agent's answer (``pending`` if none comes)."""
        requested = validate(values)
        if not requested:
            raise ValueError("nothing to set")
        domid, name, metadata = self._target(dom)
        base = domain_path(domid)
        xs = self._xs()

        def request(tx) -> int:
            old = sanitize_int(tx.read(f"{base}/{CONTROL_SEQ}", None), 0, MAX_SEQ) or 0
            seq = old % MAX_SEQ + 1
            for name, value in requested.items():
                if value is None:
                    with contextlib.suppress(XenStoreNotFound):
                        tx.rm(f"{base}/{key(name).control}")
                else:
                    tx.write(f"{base}/{key(name).control}", str(value))
            tx.write(f"{base}/{CONTROL_SEQ}", str(seq))
            return seq

        seq = transaction(xs, request)
        if self.libvirt is not None:  # remember the wish with the domain definition
            merged = {n: v for n, v in {**_metadata_values(metadata), **requested}.items()
                      if v is not None}
            self.libvirt.set_metadata(name, metadata_xml(merged), "tmem", METADATA_URI)
        wait = self.ack_timeout if timeout is None else timeout
        report = self._wait_ack(domid, seq, wait)
        if not _acked(report.seq, seq) or report.state is None:
            why = f"no answer from the guest agent within {wait:g} s"
            if report.state is None:
                why += " (no agent report at all: is the agent running in the guest?)"
            return ToggleResult(domid, name, seq, "pending", why, requested,
                                report.applied, {})
        refused = {n: r for n, r in report.refused.items() if requested.get(n) is not None}
        status = "refused" if report.state == "refused" and refused else "applied"
        reason = "; ".join(f"{n}: {r}" for n, r in refused.items())
        return ToggleResult(domid, name, seq, status, reason, requested,
                            report.applied, refused)

    def _wait_ack(self, domid: int, seq: int, timeout: float) -> TmemReport:
        xs = self._xs()
        deadline = time.monotonic() + max(timeout, 0.0)
        path = f"{domain_path(domid)}/{DATA_SEQ}"
        with xs.watch(path) as w:
            while True:
                answered = sanitize_int(xs.read(path, None), 0, MAX_SEQ)
                left = deadline - time.monotonic()
                if _acked(answered, seq) or left <= 0:
                    return self.tmem_report(domid)
                w.poll(min(left, 1.0))

    def set_memory_target(self, dom: str | int, kib: int, *, config: bool = False,
                          wait: float = 0.0) -> MemoryResult:
        """Set the balloon target: libvirt ``setMemoryFlags`` on a real host, ``memory/target``
        (KiB, as libxl writes it) on an emulated one. ``ValueError`` above the maximum. With
        ``wait``, wait that long for the guest's agent to report its balloon driver on the new
        target (``applied``) or not (``pending``)."""
        if kib <= 0:
            raise ValueError(f"the memory target must be positive, not {kib} KiB")
        info = self.guest(dom)
        if info.max_kib is not None and kib > info.max_kib:
            raise ValueError(f"{kib // 1024} MiB is above the maximum of {info.name} "
                             f"({info.max_kib // 1024} MiB)")
        if self.libvirt is not None:
            self.libvirt.set_memory(info.name, kib, config=config)
            via, previous = "libvirt", info.memory_kib
        else:
            if info.domid is None:
                raise LookupError(f"domain {info.name} is not running")
            self._xs().write(f"{domain_path(info.domid)}/memory/target", str(kib))
            via, previous = "xenstore", info.target_kib
        result = MemoryResult(info.domid, info.name, kib, previous, via)
        t = info.tmem
        if info.domid is None or t is None or not t.agent:
            return replace(result, note="no guest agent reports the balloon")
        note = ("self-ballooning is on in the guest: it resets the balloon target every "
                "interval" if t.applied.get("selfballooning") else "")
        if wait <= 0:
            return replace(result, note=note)
        followed = self._wait_balloon(info.domid, kib & ~3, wait)  # the guest keeps pages
        current = self.tmem_report(info.domid).balloon.get("current_kib")
        return replace(result, status="applied" if followed == kib & ~3 else "pending",
                       guest_target_kib=followed, guest_current_kib=current, note=note)

    def _wait_balloon(self, domid: int, kib: int, timeout: float) -> int | None:
        """Wait (at most ``timeout`` s) for the agent to report balloon target ``kib``; the
        last reported value."""
        xs = self._xs()
        path = f"{domain_path(domid)}/{balloon_key('target_kib')}"
        deadline = time.monotonic() + timeout
        with xs.watch(path) as w:
            while True:
                reported = sanitize_kib(xs.read(path, None))
                left = deadline - time.monotonic()
                if reported == kib or left <= 0:
                    return reported
                w.poll(min(left, 1.0))


def _as_id(dom: str | int) -> str | int:
    if isinstance(dom, int):
        return dom
    return int(dom) if dom.isdecimal() and len(dom) < 6 else dom


def _metadata_values(xml: str | None) -> dict[str, int]:
    """The settings in our metadata element (libvirt's copy; unknown or bad entries dropped)."""
    if not xml:
        return {}
    from xml.etree import ElementTree  # libvirt's hosts only

    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return {}
    out: dict[str, int] = {}
    for child in root:
        name = child.tag.rsplit("}", 1)[-1]
        with contextlib.suppress(KeyError):
            k = key(name)
            value = sanitize_int(child.text, k.lo, k.hi)
            if value is not None:
                out[name] = value
    return out
