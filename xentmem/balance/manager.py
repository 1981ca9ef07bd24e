"""The manager: one balancing round after another, acted out through the host facade.

A round gathers the inputs (:class:`~xentmem.balance.collect.Collector`), marks the guests it
leaves alone, asks the policy for a :class:`~xentmem.balance.model.Plan`, and (unless it is a
dry run) sets the changed targets -- donors first, so the memory is free before anyone grows --
and the tmem requests. Every round returns its events, one line each: a target changed, a tmem
client re-weighted, frozen or thawed, a request that failed, and above all whenever the manager
stops acting on a guest (or starts again) and why. It is never silent about a guest it leaves.

A guest told to shrink that has not moved toward its target within ``follow_timeout_s`` is
*uncooperative* (qmemman's ``no_progress``, squeezed's ``memory/uncooperative``, which is set
in xenstore too, so other tools and the next manager see it): excluded from the budget and left
at what it holds, shown with the reason, and tried again after ``retry_s``. A guest that is
still moving gets another timeout. Growth that does not happen is the host's shortage, never
the guest's fault.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from xentmem.balance.collect import Collector
from xentmem.balance.model import MIB, Config, Decision, GuestState, HostState, Plan, TmemAction
from xentmem.balance.policies import POLICIES, plan
from xentmem.balance.settings import UNCOOPERATIVE_KEY
from xentmem.errors import XentmemError
from xentmem.host.guests import Host
from xentmem.hypercalls import Tmem
from xentmem.xenstore.toolstack import domain_path

__all__ = ["HISTORY", "Manager", "Round", "Uncooperative", "inputs_row"]

HISTORY = 20  # decisions kept per guest for `balance explain`
FOLLOW_TOLERANCE_KIB = 4 * MIB  # "at its target": within this (or 2 % of it)


@dataclass(frozen=True)
class Uncooperative:
    """A guest that did not follow: since when, and what it was asked and held."""

    since_s: float
    target_kib: int
    holds_kib: int

    def reason(self, now: float, retry_s: float) -> str:
        left = max(retry_s - (now - self.since_s), 0)
        return (f"uncooperative: did not shrink to {self.target_kib // MIB} MiB (holds "
                f"{self.holds_kib // MIB} MiB); retried in {left:.0f} s")


@dataclass
class _Pending:
    target_kib: int
    set_s: float
    memory_kib: int  # what it held when told (or at the last extension)


@dataclass(frozen=True)
class Round:
    """One round: its time, the state it saw, the plan and what happened."""

    time_s: float
    host: HostState
    guests: tuple[GuestState, ...]
    plan: Plan
    events: tuple[str, ...]
    acted: bool


def _tolerance(kib: int) -> int:
    return max(FOLLOW_TOLERANCE_KIB, kib // 50)


class Manager:
    """Rounds of ``policy`` over ``host``. ``act=False`` is a dry run; ``take_over`` turns
    self-ballooning off in guests that do it (else they are left alone: they set their own
    target)."""

    def __init__(self, host: Host, collector: Collector, *, policy: str = "tmem",
                 config: Config | None = None, tmem: Tmem | None = None,
                 follow_timeout_s: float = 30.0, retry_s: float = 300.0, act: bool = True,
                 take_over: bool = False, log: Callable[[dict[str, Any]], None] | None = None
                 ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}: one of {', '.join(POLICIES)}")
        self.host = host
        self.collector = collector
        self.policy = policy
        self.config = config or Config()
        self.tmem = tmem
        self.follow_timeout_s = follow_timeout_s
        self.retry_s = retry_s
        self.act = act
        self.take_over = take_over
        self.log = log  # called with one record per decision (the `explain` log)
        self.uncooperative: dict[int, Uncooperative] = {}
        self.history: dict[int, deque[dict[str, Any]]] = {}
        self.frozen_by_us: set[int] = set()
        self._pending: dict[int, _Pending] = {}
        self._last_change: dict[int, tuple[float, int]] = {}  # domid -> (time, signed KiB)
        self._left: dict[int, str] = {}  # guests left alone last round, and why
        self._names: dict[int, str] = {}

    # --- one round ----------------------------------------------------------------------------

    def round(self) -> Round:
        host, guests = self.collector.gather()
        now = host.time_s
        events: list[str] = []
        self._follow(guests, now, events)
        guests = [self._mark(g, now) for g in guests]
        if self.take_over and self.act:
            self._take_over(guests, events)
        result = plan(self.policy, host, guests, self.config,
                      frozen_by_us=frozenset(self.frozen_by_us))
        self._transitions(result, events)
        if self.act:
            self._actuate(result, now, events)
        for d, g in zip(result.decisions, guests, strict=True):
            self._remember(now, d, g)
        return Round(now, host, tuple(guests), result, tuple(events), self.act)

    def _follow(self, guests: list[GuestState], now: float, events: list[str]) -> None:
        """Settle pending shrinks: followed, still moving, or uncooperative; retry old ones."""
        by_id = {g.domid: g for g in guests}
        for g in guests:  # marked by an earlier manager: left alone, retried in time
            if g.flagged_uncooperative and g.domid not in self.uncooperative:
                self.uncooperative[g.domid] = Uncooperative(now, g.target_kib, g.memory_kib)
                events.append(f"{g.name}: {UNCOOPERATIVE_KEY} is set: left alone for "
                              f"{self.retry_s:g} s")
        for domid in list(self._pending):
            g = by_id.get(domid)
            p = self._pending[domid]
            if g is None or g.memory_kib <= p.target_kib + _tolerance(p.target_kib):
                del self._pending[domid]  # gone, or there
                continue
            if now - p.set_s < self.follow_timeout_s:
                continue
            if p.memory_kib - g.memory_kib > _tolerance(p.target_kib):  # moving: more time
                self._pending[domid] = _Pending(p.target_kib, now, g.memory_kib)
                continue
            del self._pending[domid]
            self.uncooperative[domid] = Uncooperative(now, p.target_kib, g.memory_kib)
            self._flag(domid, True)
            events.append(f"{g.name}: did not shrink to {p.target_kib // MIB} MiB within "
                          f"{self.follow_timeout_s:g} s (holds {g.memory_kib // MIB} MiB): "
                          "marked uncooperative")
        for domid, u in list(self.uncooperative.items()):
            if domid not in by_id:
                del self.uncooperative[domid]
            elif now - u.since_s >= self.retry_s:
                del self.uncooperative[domid]
                self._flag(domid, False)
                events.append(f"{by_id[domid].name}: uncooperative for {self.retry_s:g} s: "
                              "trying again")

    def _flag(self, domid: int, on: bool) -> None:
        """Set or clear ``memory/uncooperative`` (squeezed's flag) so that every tool, and the
        next manager, sees it; nothing on a dry run or a host without xenstore."""
        xs = self.host.xs
        if not self.act or xs is None:
            return
        path = f"{domain_path(domid)}/{UNCOOPERATIVE_KEY}"
        with contextlib.suppress(XentmemError):  # the domain may be gone: nothing to flag
            if on:
                xs.write(path, "1")
            else:
                xs.rm(path)

    def _mark(self, g: GuestState, now: float) -> GuestState:
        u = self.uncooperative.get(g.domid)
        when, change = self._last_change.get(g.domid, (float("-inf"), 0))
        return replace(g, excluded=u.reason(now, self.retry_s) if u else None,
                       last_change_kib=change, last_change_age_s=now - when)

    def _take_over(self, guests: list[GuestState], events: list[str]) -> None:
        for g in guests:
            if g.selfballooning and not g.settings.opt_out and g.excluded is None:
                try:
                    r = self.host.set_toggles(g.domid, {"selfballooning": 0}, timeout=1.0)
                    events.append(f"{g.name}: self-ballooning off ({r.status}): the manager "
                                  "takes over its target")
                except (XentmemError, ValueError, LookupError) as exc:
                    events.append(f"{g.name}: could not turn self-ballooning off: {exc}")

    def _transitions(self, result: Plan, events: list[str]) -> None:
        left = {d.domid: d.reason for d in result.decisions if not d.managed}
        for d in result.decisions:
            self._names[d.domid] = d.name
            if not d.managed and self._left.get(d.domid) != d.reason \
                    and not _same_kind(self._left.get(d.domid), d.reason):
                why = d.reason.removeprefix("left alone: ")
                events.append(f"{d.name}: not acting on it: {why}")
            elif d.managed and d.domid in self._left:
                events.append(f"{d.name}: acting on it again")
        self._left = left

    def _actuate(self, result: Plan, now: float, events: list[str]) -> None:
        changes = sorted(result.changes(), key=lambda d: d.change_kib)  # donors first
        for d in changes:
            try:
                self.host.set_memory_target(d.domid, d.target_kib)
            except (XentmemError, ValueError, LookupError) as exc:
                events.append(f"{d.name}: could not set {d.target_kib // MIB} MiB: {exc}")
                continue
            self._last_change[d.domid] = (now, d.change_kib)
            if d.target_kib < d.memory_kib:
                self._pending[d.domid] = _Pending(d.target_kib, now, d.memory_kib)
            events.append(f"{d.name}: {d.current_kib // MIB} -> {d.target_kib // MIB} MiB "
                          f"({d.reason})")
        for a in result.tmem:
            events.append(self._tmem(a))

    def _tmem(self, a: TmemAction) -> str:
        name = self._names.get(a.domid, f"domain {a.domid}")
        if self.tmem is None:
            return f"{name}: tmem {a.op} not sent: no tmem control here"
        try:
            if a.op == "weight":
                self.tmem.set_client(a.domid, weight=a.value)
            elif a.op == "cap":
                self.tmem.set_client(a.domid, cap=a.value)
            elif a.op == "freeze":
                self.tmem.freeze(a.domid)
                self.frozen_by_us.add(a.domid)
            else:
                self.tmem.thaw(a.domid)
                self.frozen_by_us.discard(a.domid)
        except (XentmemError, ValueError) as exc:
            return f"{name}: tmem {a.op} failed: {exc}"
        value = f" {a.value}" if a.op in ("weight", "cap") else ""
        return f"{name}: tmem {a.op}{value} ({a.reason})"

    def _remember(self, now: float, d: Decision, g: GuestState) -> None:
        record = {"time_s": round(now, 1), "policy": self.policy, "acted": self.act,
                  **d.row(), "inputs": inputs_row(g)}
        self.history.setdefault(d.domid, deque(maxlen=HISTORY)).append(record)
        if self.log is not None:
            self.log(record)

    # --- views --------------------------------------------------------------------------------

    def close(self) -> None:
        """Thaw what this manager froze (nothing stays frozen behind a stopped manager)."""
        if self.tmem is not None:
            for domid in sorted(self.frozen_by_us):
                with contextlib.suppress(XentmemError):
                    self.tmem.thaw(domid)
            self.frozen_by_us.clear()


def _same_kind(old: str | None, new: str) -> bool:
    """Whether two left-alone reasons say the same thing (an uncooperative guest's countdown
    changes every round; it is not news)."""
    return old is not None and old.split(":")[:2] == new.split(":")[:2]


def inputs_row(g: GuestState) -> dict[str, Any]:
    """The inputs behind one guest's decision, in MiB."""
    def mib(kib: int | None) -> int | None:
        return None if kib is None else kib // MIB
    return {"source": g.source, "memory_mib": mib(g.memory_kib), "target_mib": mib(g.target_kib),
            "max_mib": mib(g.max_kib), "used_mib": mib(g.used_kib),
            "used_avg_mib": mib(g.used_avg_kib), "committed_mib": mib(g.committed_kib),
            "free_mib": mib(g.free_kib), "cache_mib": mib(g.cache_kib),
            "swap_in_pages_per_s": round(g.swap_in_rate, 1), "tmem": g.tmem_enabled,
            "selfballooning": g.selfballooning, **g.settings.row(),
            "excluded": g.excluded}
