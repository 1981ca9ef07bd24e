"""Balancing policies: pure functions from a round's state to every guest's target and why.

``plan(policy, host, guests, config)`` is the whole round: the policy proposes, then one set of
rules common to every policy holds the result to the admin's limits and the host's memory
(:func:`fit`), in this order:

1. guests left alone (opted out, uncooperative, self-ballooning, nothing reported) keep their
   target and are outside the budget;
2. every target lies in [floor, ceiling]: floor = the admin's (else ``default_floor_kib``),
   ceiling = the admin's, at most the static maximum;
3. the budget: managed guests together hold at most the host's available memory (free +
   tmem's freeable) less its reserve plus what they hold now. Above it, every target gives up
   the same fraction of what it has above its floor; if the floors alone do not fit, no guest
   grows;
4. a change smaller than ``min_step_kib``, or a reversal within ``hold_s`` of the last change
   smaller than ``reversal_steps`` steps (but growth of a guest holding less than it has
   committed is never held as a reversal), is not made (hysteresis) -- unless holding a shrink
   would break the budget. Policies with their own step rules (qmemman's 150 MiB, MoM's
   0.25 %) skip this step.

The policies (:data:`POLICIES`):

``qmemman``
    Qubes' ``qubes/qmemman/algo.py`` as published, in bytes, with ``systemstate.py``'s
    ``get_free_xen_memory`` (free memory / 1.00781, less targets not yet taken up) and
    ``is_balance_req_significant``: pref = max(min(used * 1.3, max), 200 MiB); when the free
    memory covers every guest's pref, the surplus is split in proportion to pref (capped at max,
    the leftover shared again among the others); otherwise donors go to their pref and the
    acceptors share what is left in proportion to pref; a round moving less than 150 MiB in all
    is skipped. ``used`` is what qubes-meminfo-writer reports: MemTotal - MemFree - Cached +
    SwapTotal - SwapFree. Priority scales the shares (all equal: qmemman exactly). Not modelled:
    qmemman's 16 MiB guest-visible offset and its dom0 boost (dom0 is never balanced here).
    Xen's free memory is the host's available memory (free + tmem's freeable; Qubes has no
    tmem, so qmemman never had to choose).
``mom``
    oVirt MoM's balloon rules: the host is under pressure when its free memory (plus tmem's
    freeable) is below 20 % of its total; then each guest shrinks by at most 5 % of its memory a
    round, never below used + 20 %; otherwise each grows by 5 % up to its maximum; changes under
    0.25 % are skipped. Used is averaged over rounds (MoM's StatAvg).
``tmem``
    ours: tmem is the overflow. A guest whose kernel puts evicted pages into tmem is held at what
    it has committed (Committed_AS, plus its kernel's overhead and a small margin) and grows with
    its swap-in rate; one without tmem also keeps qmemman's 1.3 cache factor. What is not handed
    out stays free for tmem, which serves every guest by demand. On Xen <= 4.12 the round also
    sets each tmem client's weight to its guest's priority (its cap on <= 4.7, a value Xen stores
    but never enforces) and freezes a client that floods tmem (more than ``flood_share`` of its
    ephemeral pages while the host is short), thawing it when that passes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from xentmem.abi import XenVersion
from xentmem.balance.model import (
    DEFAULT_PRIORITY,
    MIB,
    Config,
    Decision,
    GuestState,
    HostState,
    Plan,
    TmemAction,
)

__all__ = [
    "POLICIES",
    "Policy",
    "Proposal",
    "fit",
    "mom",
    "plan",
    "qmemman",
    "qmemman_prefmem",
    "tmem_aware",
]

Proposal = dict[int, tuple[int, str]]  # domid -> (target KiB, reason)

# qmemman's constants (qubes/qmemman/algo.py, systemstate.py), in bytes
CACHE_FACTOR = 1.3
MIN_PREFMEM = 200 * 1024 * 1024
MIN_TOTAL_MEMORY_TRANSFER = 150 * 1024 * 1024
MIN_MEM_CHANGE_WHEN_UNDER_PREF = 15 * 1024 * 1024
DONOR_GIVES_UP_BELOW = 10 * 1024 * 1024  # balance_when_low_on_mem: "probably at pref_mem"
MEM_OVERHEAD_FACTOR = 1.0 / 1.00781  # Xen's per-page structures (systemstate.py, from nova)

# MoM's balloon policy (mom/policies/balloon.policy)
PRESSURE_THRESHOLD = 0.20
MIN_GUEST_FREE_PERCENT = 0.20
MAX_BALLOON_CHANGE_PERCENT = 0.05
MIN_BALLOON_CHANGE_PERCENT = 0.0025

# ours
TMEM_MARGIN = 0.05  # over Committed_AS, of it
TMEM_SLACK_KIB = 16 * MIB  # and at least this much
SWAP_BOOST_ROUNDS = 4  # a swapping guest gets this many rounds of its swap-in rate back
CAP_RETIRED = XenVersion(4, 8)  # `xl tmem-set -c` is refused from 4.8 (ref xen-tmem-abi §4.1)


def _weight(g: GuestState) -> float:
    return g.settings.priority / DEFAULT_PRIORITY


def _ceiling(g: GuestState) -> int:
    c = g.settings.ceiling_kib
    return g.max_kib if c is None else min(c, g.max_kib)


# --- qmemman ----------------------------------------------------------------------------------


@dataclass
class _Dom:
    """qmemman's DomainState, in bytes."""

    domid: int
    mem_used: int
    memory_actual: int
    memory_maximum: int
    last_target: int
    weight: float


def qmemman_prefmem(used: int, maximum: int) -> int:
    """qmemman's ``pref_mem`` of a domU (bytes): int(max(min(used * 1.3, max), 200 MiB))."""
    return int(max(min(used * CACHE_FACTOR, maximum), MIN_PREFMEM))


def _prefmem(d: _Dom) -> int:
    return qmemman_prefmem(d.mem_used, d.memory_maximum)


def _needed(d: _Dom) -> int:
    return _prefmem(d) - d.memory_actual


def _enough(doms: Mapping[int, _Dom], total_mem_pref: float,
            total_available: float) -> list[tuple[int, int]]:
    """``balance_when_enough_memory``."""
    target_memory: dict[int, int] = {}
    left_memory = 0
    acceptors_count = 0
    for domid, dom in doms.items():
        scale = 1.0 * _prefmem(dom) * dom.weight / total_mem_pref
        target_nonint = _prefmem(dom) + scale * total_available
        target = int(0.999 * target_nonint)  # "prevent rounding errors"
        if target > dom.memory_maximum:
            left_memory += target - dom.memory_maximum
            target = dom.memory_maximum
        else:
            acceptors_count += 1
        target_memory[domid] = target
    while left_memory > 0 and acceptors_count > 0:
        new_left_memory = 0
        new_acceptors_count = acceptors_count
        for domid, target in target_memory.items():
            dom = doms[domid]
            if target < dom.memory_maximum:
                memory_bonus = int(0.999 * (left_memory / acceptors_count))
                if target + memory_bonus >= dom.memory_maximum:
                    new_left_memory += target + memory_bonus - dom.memory_maximum
                    target = dom.memory_maximum
                    new_acceptors_count -= 1
                else:
                    target += memory_bonus
            target_memory[domid] = target
        left_memory = new_left_memory
        acceptors_count = new_acceptors_count
    donors = [(d, t) for d, t in target_memory.items() if t < doms[d].memory_actual]
    acceptors = [(d, t) for d, t in target_memory.items() if t >= doms[d].memory_actual]
    return donors + acceptors


def _low(doms: Mapping[int, _Dom], xen_free: float, total_mem_pref_acceptors: float,
         donors: list[int], acceptors: list[int]) -> list[tuple[int, int]]:
    """``balance_when_low_on_memory``."""
    donors_rq: list[tuple[int, int]] = []
    squeezed_mem = xen_free
    for domid in donors:
        dom = doms[domid]
        avail = -_needed(dom)
        if avail < DONOR_GIVES_UP_BELOW:
            continue
        squeezed_mem -= avail
        donors_rq.append((domid, _prefmem(dom)))
    if squeezed_mem < 0:
        return donors_rq
    acceptors_rq = []
    for domid in acceptors:
        dom = doms[domid]
        scale = 1.0 * _prefmem(dom) * dom.weight / total_mem_pref_acceptors
        target = min(int(0.999 * (dom.memory_actual + scale * squeezed_mem)),
                     dom.memory_maximum)
        acceptors_rq.append((domid, target))
    return donors_rq + acceptors_rq


def _balance(xen_free: float, doms: Mapping[int, _Dom]) -> list[tuple[int, int]]:
    """``balance``: the memset requests, donors first."""
    total_memory_needed = 0.0
    total_mem_pref = 0.0
    total_mem_pref_acceptors = 0.0
    donors: list[int] = []
    acceptors: list[int] = []
    for domid, dom in doms.items():
        need = _needed(dom)
        if need < 0 or dom.memory_actual >= dom.memory_maximum:
            donors.append(domid)
        else:
            acceptors.append(domid)
            total_mem_pref_acceptors += _prefmem(dom) * dom.weight
        total_memory_needed += need
        total_mem_pref += _prefmem(dom) * dom.weight
    total_available = xen_free - total_memory_needed
    if total_available > 0:
        return _enough(doms, total_mem_pref, total_available)
    return _low(doms, xen_free, total_mem_pref_acceptors, donors, acceptors)


def _significant(reqs: list[tuple[int, int]], doms: Mapping[int, _Dom], xenfree: int,
                 free_left: int) -> tuple[bool, str]:
    """``is_balance_req_significant``, with the reason."""
    if free_left - xenfree > MIN_MEM_CHANGE_WHEN_UNDER_PREF:
        return True, "Xen free memory is below the reserve"
    total = 0
    for domid, mem in reqs:
        dom = doms[domid]
        change = mem - dom.last_target
        total += abs(change)
        if 0 < dom.last_target < _prefmem(dom) and change > MIN_MEM_CHANGE_WHEN_UNDER_PREF:
            return True, f"domain {domid} is below its pref"
    moved = total + abs(xenfree - free_left)
    if moved > MIN_TOTAL_MEMORY_TRANSFER:
        return True, f"{moved // (1 << 20)} MiB to move"
    return False, f"only {moved // (1 << 20)} MiB to move (< 150 MiB)"


def qmemman(host: HostState, guests: Sequence[GuestState], config: Config) -> Proposal:
    """Qubes qmemman's proportional, donor-first balance (see the module docstring)."""
    doms = {g.domid: _Dom(g.domid, g.used_kib * 1024,  # type: ignore[operator]
                          max(g.memory_kib, g.target_kib) * 1024, _ceiling(g) * 1024,
                          g.target_kib * 1024, _weight(g))
            for g in guests if g.used_kib is not None}
    # get_free_xen_memory: physinfo's free memory less Xen's per-page overhead, less what
    # guests were given and have not taken yet
    xenfree = (int(host.available_kib * 1024 * MEM_OVERHEAD_FACTOR)
               - sum(max(0, g.target_kib - g.memory_kib) * 1024 for g in guests))
    free_left = host.reserve_kib * 1024
    reqs = _balance(xenfree - free_left, doms)
    ok, why = _significant(reqs, doms, xenfree, free_left)
    out: Proposal = {}
    for g in guests:
        d = doms.get(g.domid)
        if d is None:
            continue
        pref = _prefmem(d) // 1024
        out[g.domid] = (g.target_kib, f"no request (pref {pref // MIB} MiB)")
    for domid, mem in reqs:
        pref = _prefmem(doms[domid]) // 1024
        role = "donor" if mem < doms[domid].memory_actual else "acceptor"
        out[domid] = ((mem // 1024, f"{role}: pref {pref // MIB} MiB (used x 1.3), {why}")
                      if ok else (doms[domid].last_target // 1024, f"held: {why}"))
    return out


# --- MoM --------------------------------------------------------------------------------------


def mom(host: HostState, guests: Sequence[GuestState], config: Config) -> Proposal:
    """oVirt MoM's balloon rules (see the module docstring)."""
    free = host.available_kib
    total = host.total_kib or (free + sum(g.memory_kib for g in guests))
    pressure = free < PRESSURE_THRESHOLD * total
    out: Proposal = {}
    for g in guests:
        cur = g.memory_kib
        used = g.used_avg_kib if g.used_avg_kib is not None else g.used_kib
        if used is None:
            continue
        floor = g.settings.floor_kib or config.default_floor_kib
        if pressure:
            balloon_min = max(floor, int(used + MIN_GUEST_FREE_PERCENT * cur))
            new = cur - int(MAX_BALLOON_CHANGE_PERCENT * cur / _weight(g))
            new = max(new, balloon_min)
            why = (f"host under pressure ({free // MIB} MiB free < 20 % of {total // MIB}): "
                   f"shrink <= 5 %, not below used + 20 % ({balloon_min // MIB} MiB)")
        else:
            new = min(cur + int(MAX_BALLOON_CHANGE_PERCENT * cur * _weight(g)), _ceiling(g))
            why = f"no host pressure ({free // MIB} MiB free): grow <= 5 % up to the maximum"
        if abs(new - cur) <= MIN_BALLOON_CHANGE_PERCENT * cur:
            out[g.domid] = (g.target_kib, "change under 0.25 %: held")
        else:
            out[g.domid] = (new, why)
    return out


# --- ours: tmem as the overflow ---------------------------------------------------------------


def tmem_aware(host: HostState, guests: Sequence[GuestState], config: Config) -> Proposal:
    """Targets at what each guest has committed, tmem taking the overflow (module docstring)."""
    out: Proposal = {}
    for g in guests:
        need = g.need_kib
        if need is None:
            continue
        overhead = max(g.memory_kib - g.mem_total_kib, 0) if g.mem_total_kib else 0
        want = need + overhead + max(int(TMEM_MARGIN * need), TMEM_SLACK_KIB)
        why = f"committed {need // MIB} MiB + overhead and margin"
        if not g.tmem_enabled:
            want = max(want, int(CACHE_FACTOR * (g.used_kib or need)))
            why = f"no tmem in this guest: used x 1.3 ({(g.used_kib or need) // MIB} MiB used)"
        if g.swap_in_rate > 0:
            boost = min(int(g.swap_in_rate * 4 * config.interval_s * SWAP_BOOST_ROUNDS
                            * _weight(g)), need // 4)
            if boost > 0:
                want += boost
                why += f"; swapping in {g.swap_in_rate:.0f} pages/s: +{boost // MIB} MiB"
        out[g.domid] = (want, why + "; the rest stays free for tmem")
    return out


def tmem_actions(host: HostState, guests: Sequence[GuestState], config: Config,
                 frozen_by_us: frozenset[int] = frozenset()) -> tuple[TmemAction, ...]:
    """Weights (caps on <= 4.7), freezes and thaws of tmem clients (Xen <= 4.12 with tmem)."""
    try:
        version = XenVersion.parse(host.xen_version or "")
    except ValueError:
        return ()
    if host.tmem is None or not version.has_tmem:
        return ()
    actions: list[TmemAction] = []
    by_domid = {g.domid: g for g in guests}
    total_eph = sum(c.ephemeral_pages for c in host.tmem.values())
    short = host.available_kib < 2 * host.reserve_kib
    for domid, client in sorted(host.tmem.items()):
        g = by_domid.get(domid)
        if g is None:
            continue
        if client.weight != g.settings.priority:
            actions.append(TmemAction("weight", domid, g.settings.priority,
                                      f"priority {g.settings.priority}"))
        if version < CAP_RETIRED and g.settings.ceiling_kib is not None:
            actions.append(TmemAction("cap", domid, g.settings.ceiling_kib // MIB,
                                      "ceiling (Xen stores it, never enforces it)"))
        share = client.ephemeral_pages / total_eph if total_eph else 0.0
        flooding = short and len(host.tmem) > 1 and share > config.flood_share
        if flooding and not client.frozen:
            actions.append(TmemAction("freeze", domid, 0,
                                      f"floods tmem: {share:.0%} of ephemeral pages while "
                                      f"the host has {host.available_kib // MIB} MiB free"))
        elif client.frozen and domid in frozen_by_us and not flooding:
            actions.append(TmemAction("thaw", domid, 0, f"no longer floods tmem ({share:.0%})"))
    return tuple(actions)


# --- the common rules -------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """A policy: its proposal function and whether its own step rules replace ours."""

    name: str
    propose: Callable[[HostState, Sequence[GuestState], Config], Proposal]
    own_steps: bool


POLICIES: dict[str, Policy] = {
    "qmemman": Policy("qmemman", qmemman, own_steps=True),  # its 150 MiB rule
    "mom": Policy("mom", mom, own_steps=True),  # its 0.25 % rule
    "tmem": Policy("tmem", tmem_aware, own_steps=False),
}


def _left_alone(g: GuestState) -> str | None:
    if g.excluded:
        return g.excluded
    if g.settings.opt_out:
        return "opted out"
    if g.selfballooning:
        return "self-ballooning: the guest sets its own target"
    return None


def fit(host: HostState, guests: Sequence[GuestState], proposal: Proposal, config: Config,
        *, steps: bool = True) -> tuple[list[Decision], int, str]:
    """The common rules (module docstring, 2-4): decisions, the budget and a note."""
    managed = [g for g in guests if _left_alone(g) is None and g.domid in proposal]
    budget = host.available_kib - host.reserve_kib + sum(g.memory_kib for g in managed)
    lo = {g.domid: min(g.settings.floor_kib or config.default_floor_kib, _ceiling(g))
          for g in managed}
    hi = {g.domid: _ceiling(g) for g in managed}
    target: dict[int, int] = {}
    why: dict[int, str] = {}
    for g in managed:
        t, reason = proposal[g.domid]
        if t < lo[g.domid]:
            t, reason = lo[g.domid], reason + f"; raised to the floor {lo[g.domid] // MIB} MiB"
        elif t > hi[g.domid]:
            t, reason = hi[g.domid], reason + f"; capped at the ceiling {hi[g.domid] // MIB} MiB"
        target[g.domid], why[g.domid] = t, reason
    note = ""
    total = sum(target.values())
    floors = sum(lo.values())
    if total > budget and floors <= budget:
        k = (budget - floors) / (total - floors)
        for g in managed:
            d = g.domid
            t = lo[d] + int((target[d] - lo[d]) * k)
            if t != target[d]:
                why[d] += f"; cut to fit the host ({k:.0%} of the share above the floor)"
            target[d] = t
        note = f"proposals exceed the host by {(total - budget) // MIB} MiB: cut to fit"
    elif total > budget:
        for g in managed:
            if target[g.domid] > g.memory_kib:
                target[g.domid] = g.memory_kib
                why[g.domid] += "; not grown: the floors exceed what the host has"
        note = (f"the floors ({floors // MIB} MiB) exceed what the host has "
                f"({budget // MIB} MiB): no guest grows")
        steps = False
    if steps:
        held: list[GuestState] = []
        for g in managed:
            d, cur = g.domid, g.target_kib
            delta = target[d] - cur
            if delta == 0 or not lo[d] <= cur <= hi[d]:
                continue
            below_need = g.need_kib is not None and g.memory_kib < g.need_kib
            # growing back a guest that is short of what it uses is no flapping
            reversal = (g.last_change_kib * delta < 0 and g.last_change_age_s < config.hold_s
                        and not (delta > 0 and below_need))
            need = config.min_step_kib * (config.reversal_steps if reversal else 1)
            if abs(delta) < need:
                what = "reversal" if reversal else "change"
                why[d] = (f"held: {what} of {abs(delta) // MIB} MiB < {need // MIB} MiB "
                          f"(proposed {target[d] // MIB} MiB: {why[d]})")
                target[d] = cur
                held.append(g)
        # a held shrink must not break the budget: let the largest go first
        for g in sorted(held, key=lambda g: g.target_kib - proposal[g.domid][0], reverse=True):
            if sum(target.values()) <= budget:
                break
            if g.target_kib > proposal[g.domid][0]:
                target[g.domid] = max(min(proposal[g.domid][0], hi[g.domid]), lo[g.domid])
                why[g.domid] = why[g.domid].removeprefix("held: ") + "; made anyway: budget"
    decisions = []
    for g in guests:
        alone = _left_alone(g)
        if g in managed:
            decisions.append(Decision(g.domid, g.name, g.memory_kib, g.target_kib,
                                      target[g.domid], why[g.domid]))
        else:
            reason = alone or ("no usage reported (no agent in data/tmem; libvirt balloon "
                               "stats need a period: virsh dommemstat DOM --period 5)")
            decisions.append(Decision(g.domid, g.name, g.memory_kib, g.target_kib,
                                      g.target_kib, f"left alone: {reason}", managed=False))
    return decisions, budget, note


def plan(policy: str | Policy, host: HostState, guests: Sequence[GuestState],
         config: Config | None = None, *, frozen_by_us: frozenset[int] = frozenset()) -> Plan:
    """One round of ``policy`` (a name of :data:`POLICIES`): every guest's decision."""
    config = config or Config()
    p = POLICIES[policy] if isinstance(policy, str) else policy
    candidates = [g for g in guests if _left_alone(g) is None]
    proposal = p.propose(host, candidates, config)
    decisions, budget, note = fit(host, guests, proposal, config, steps=not p.own_steps)
    actions = tmem_actions(host, guests, config, frozen_by_us) if p.name == "tmem" else ()
    return Plan(p.name, tuple(decisions), actions, budget, note)

