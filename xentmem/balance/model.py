"""What a balancing round sees and decides: frozen values, KiB throughout (xenstore's
``memory/*`` unit). Collectors (:mod:`xentmem.balance.collect`) fill them at the rim; policies
(:mod:`xentmem.balance.policies`) read them and return a :class:`Plan`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_PRIORITY",
    "MAX_PRIORITY",
    "Config",
    "Decision",
    "GuestState",
    "HostState",
    "Plan",
    "Settings",
    "TmemAction",
    "TmemClient",
]

MIB = 1024  # KiB
DEFAULT_PRIORITY = 10  # a guest's weight in proportional shares; 10 = everyone equal
MAX_PRIORITY = 100


@dataclass(frozen=True)
class Settings:
    """An admin's wishes for one guest (libvirt metadata on a real host, xenstore on an
    emulated one). ``floor``/``ceiling`` in KiB, None: no limit of the admin's own."""

    floor_kib: int | None = None
    ceiling_kib: int | None = None
    opt_out: bool = False
    priority: int = DEFAULT_PRIORITY

    def row(self) -> dict[str, Any]:
        return {"floor_mib": _mib(self.floor_kib), "ceiling_mib": _mib(self.ceiling_kib),
                "opt_out": self.opt_out, "priority": self.priority}


@dataclass(frozen=True)
class GuestState:
    """One guest at the start of a round. Inputs the guest wrote are already sanitised;
    ``None`` marks what nobody reported."""

    domid: int
    name: str
    memory_kib: int  # its reservation now (the host's view; else its agent's claim)
    target_kib: int  # memory/target now (the last target set)
    max_kib: int  # static maximum
    used_kib: int | None = None  # qmemman's "used": MemTotal - MemFree - Cached + swap in use
    committed_kib: int | None = None  # Committed_AS (agent); libvirt: its "used" estimate
    free_kib: int | None = None
    cache_kib: int | None = None
    mem_total_kib: int | None = None  # MemTotal: its reservation less the kernel's own
    tmem_enabled: bool = False  # its kernel hands evicted pages to tmem (frontswap/cleancache)
    swap_in_rate: float = 0.0  # pages/s swapped in (disk + frontswap) since the last round
    used_avg_kib: int | None = None  # the manager's moving average of used (MoM's StatAvg)
    source: str = "none"  # where the usage came from: agent | libvirt | none
    selfballooning: bool = False  # the guest sets its own balloon target
    settings: Settings = field(default_factory=Settings)
    last_change_kib: int = 0  # the manager's last change of this guest's target (signed)
    last_change_age_s: float = float("inf")  # and how long ago
    excluded: str | None = None  # why the manager leaves it alone (uncooperative, ...)
    flagged_uncooperative: bool = False  # memory/uncooperative is set (by a manager)

    @property
    def need_kib(self) -> int | None:
        """What it uses and must keep: Committed_AS (else qmemman's used)."""
        return self.committed_kib if self.committed_kib is not None else self.used_kib


@dataclass(frozen=True)
class TmemClient:
    """One tmem client (a ``C=`` line of ``tmem-list -l``)."""

    domid: int
    weight: int
    frozen: bool
    ephemeral_pages: int  # Ec
    persistent_puts: int = 0  # Pp


@dataclass(frozen=True)
class HostState:
    """The host at the start of a round. ``reserve_kib`` is kept free (qmemman keeps 50 MiB of
    Xen memory free); ``tmem`` is None on a host without tmem."""

    free_kib: int
    total_kib: int | None = None
    reserve_kib: int = 50 * MIB
    xen_version: str | None = None  # "4.12": tmem control exists up to 4.12
    freeable_kib: int | None = None  # tmem's freeable memory (ephemeral + its free list)
    tmem: Mapping[int, TmemClient] | None = None
    time_s: float = 0.0

    @property
    def available_kib(self) -> int:
        """Free memory plus tmem's freeable: Xen hands freeable pages to a domain that asks
        (its claim and low-memory logic count them as available, ref xen-tmem-abi §3.3)."""
        return self.free_kib + (self.freeable_kib or 0)


@dataclass(frozen=True)
class Config:
    """The knobs of a round: the same for every policy."""

    min_step_kib: int = 8 * MIB  # smaller changes are not made
    hold_s: float = 30.0  # a reversal within this long of the last change ...
    reversal_steps: int = 3  # ... must be this many minimum steps (unless it is below need)
    default_floor_kib: int = 64 * MIB  # below this no guest is ballooned, whatever the policy
    interval_s: float = 5.0  # between rounds (the pressure policy's step is per round)
    flood_share: float = 0.5  # tmem-aware: a client holding more of tmem than this floods it


@dataclass(frozen=True)
class Decision:
    """One guest's outcome of a round: its target now, the proposed one, and why."""

    domid: int
    name: str
    memory_kib: int
    current_kib: int  # memory/target before the round
    target_kib: int  # after (== current when nothing changes)
    reason: str
    managed: bool = True  # False: left alone (opted out, uncooperative, no data)

    @property
    def change_kib(self) -> int:
        return self.target_kib - self.current_kib

    def row(self) -> dict[str, Any]:
        return {"domid": self.domid, "name": self.name, "memory_mib": _mib(self.memory_kib),
                "current_mib": _mib(self.current_kib), "target_mib": _mib(self.target_kib),
                "change_mib": _signed_mib(self.change_kib), "managed": self.managed,
                "reason": self.reason}


@dataclass(frozen=True)
class TmemAction:
    """A tmem control request: ``weight`` (value), ``freeze`` or ``thaw`` of client ``domid``."""

    op: str
    domid: int
    value: int = 0
    reason: str = ""

    def row(self) -> dict[str, Any]:
        return {"op": self.op, "domid": self.domid, "value": self.value, "reason": self.reason}


@dataclass(frozen=True)
class Plan:
    """A round's decisions (one per guest) and tmem requests; ``budget_kib`` is what the
    managed guests may hold together."""

    policy: str
    decisions: tuple[Decision, ...]
    tmem: tuple[TmemAction, ...] = ()
    budget_kib: int = 0
    note: str = ""

    def changes(self) -> list[Decision]:
        return [d for d in self.decisions if d.managed and d.change_kib != 0]

    def decision(self, domid: int) -> Decision | None:
        return next((d for d in self.decisions if d.domid == domid), None)

    def as_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "budget_mib": _mib(self.budget_kib),
                "note": self.note or None, "guests": [d.row() for d in self.decisions],
                "tmem": [a.row() for a in self.tmem]}


def _mib(kib: int | None) -> int | None:
    return None if kib is None else kib // MIB


def _signed_mib(kib: int) -> int:
    return -((-kib) // MIB) if kib < 0 else kib // MIB  # rounds toward zero either way
