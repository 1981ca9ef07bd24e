"""Each policy against rounds computed by hand (the arithmetic is in the comments), and the
common rules (floor, ceiling, budget, hysteresis) one at a time."""

from __future__ import annotations

import pytest

from xentmem.balance import Config, GuestState, HostState, Settings, TmemClient, plan
from xentmem.balance.policies import fit, tmem_actions

MiB = 1024  # KiB
B = 1 << 20  # bytes per MiB


def guest(domid: int, memory: int, *, used: int | None = None, target: int | None = None,
          max_mib: int = 2000, **kw: object) -> GuestState:
    """A guest holding ``memory`` MiB (at its target unless given), ``used`` MiB."""
    return GuestState(domid, f"g{domid}", memory_kib=memory * MiB,
                      target_kib=(memory if target is None else target) * MiB,
                      max_kib=max_mib * MiB, used_kib=None if used is None else used * MiB,
                      **kw)  # type: ignore[arg-type]


def targets(p) -> dict[int, int]:
    return {d.domid: d.target_kib for d in p.decisions}


# --- qmemman: algo.py + systemstate.py, in bytes --------------------------------------------

def test_qmemman_enough_memory_splits_the_surplus_by_pref_and_caps_at_max():
    # xenfree = int(1000 MiB / 1.00781) = 1040450084; minus XEN_FREE_MEM_LEFT: 988021284
    # pref a = int(300 MiB * 1.3) = 408944640, pref b = 200 MiB (floor) = 209715200
    # needs: a 408944640 - 400 MiB = -10485760, b = -209715200 -> available = 1208222244
    # a: int(0.999 * (408944640 + 408944640/618659840 * 1208222244)) = 1206392421 > max:
    #    a = 1000 MiB, left 157816421; b: int(0.999 * (209715200 + ...)) = 618662780,
    #    then + int(0.999 * 157816421) = 157658604 -> 776321384 bytes = 758126 KiB
    p = plan("qmemman", HostState(free_kib=1000 * MiB),
             [guest(1, 400, used=300, max_mib=1000), guest(2, 400, used=100, max_mib=1000)])
    assert targets(p) == {1: 1024000, 2: 758126}
    assert "acceptor" in p.decision(1).reason


def test_qmemman_low_on_memory_donors_to_pref_acceptors_share_what_is_left():
    # xenfree = int(300 MiB / 1.00781) = 312135025, less 50 MiB: 259706225
    # prefs: a 817889280 (600 MiB * 1.3), b 209715200 (200 MiB), c 408944640 (300 MiB * 1.3)
    # needs a +293601280, b -62914560, c +94371840: 325058560 > 259706225 -> low on memory
    # b gives 62914560 (>= 10 MiB): b -> pref 204800 KiB; squeezed = 196791665
    # a: int(0.999 * (500 MiB + 817889280/1226833920 * 196791665)) = 654826960 -> 639479 KiB
    # c: int(0.999 * (300 MiB + 408944640/1226833920 * 196791665)) = 379789851 -> 370888 KiB
    p = plan("qmemman", HostState(free_kib=300 * MiB),
             [guest(1, 500, used=600), guest(2, 260, used=100), guest(3, 300, used=300)])
    assert targets(p) == {1: 639479, 2: 204800, 3: 370888}
    assert p.decision(2).reason.startswith("donor")


def test_qmemman_low_on_memory_with_donors_exceeding_the_free_memory_only_takes():
    # xenfree = int(60 MiB / 1.00781) = 62427005, less 50 MiB: 9998205; b could give 200 MiB:
    # squeezed < 0 -> only the donor request: b -> 200 MiB; a and c keep their targets
    p = plan("qmemman", HostState(free_kib=60 * MiB),
             [guest(1, 500, used=600), guest(2, 400, used=100), guest(3, 300, used=300)])
    assert targets(p) == {1: 500 * MiB, 2: 200 * MiB, 3: 300 * MiB}


def test_qmemman_skips_a_round_moving_less_than_150_mib():
    # xenfree = int(100 MiB / 1.00781) = 104045008, less 50 MiB: 51616208; pref 200 MiB,
    # need -10 MiB -> target int(0.999 * (200 MiB + 62101968)) = 271534476 (+51 MiB);
    # moved = 51 MiB + |104045008 - 50 MiB| = 51 + 49 MiB < 150 MiB: held
    p = plan("qmemman", HostState(free_kib=100 * MiB), [guest(1, 210, used=100, max_mib=400)])
    assert targets(p) == {1: 210 * MiB}
    assert "< 150 MiB" in p.decision(1).reason


# --- MoM --------------------------------------------------------------------------------------

def test_mom_under_pressure_shrinks_five_percent_never_below_used_plus_twenty():
    # host free 100 MiB < 20 % of 1000: pressure.
    # a: 400 MiB, used 200: min = 200 + 0.2 * 400 = 280; 400 - 20 = 380 MiB
    # b: 300 MiB, used 250: min = 250 + 60 = 310 > 300 - 15: MoM sets the minimum (310 MiB)
    host = HostState(free_kib=100 * MiB, total_kib=1000 * MiB)
    p = plan("mom", host, [guest(1, 400, used=200), guest(2, 300, used=250)])
    assert targets(p) == {1: 380 * MiB, 2: 310 * MiB}
    assert "under pressure" in p.decision(1).reason


def test_mom_without_pressure_grows_five_percent_up_to_the_maximum_and_skips_tiny_changes():
    host = HostState(free_kib=500 * MiB, total_kib=1000 * MiB)
    # a: 400 + 20 -> 410 (its maximum); b: 400 -> 400.5 MiB max: 0.5 MiB < 0.25 % of 400
    p = plan("mom", host, [guest(1, 400, used=100, max_mib=410),
                           GuestState(2, "g2", 400 * MiB, 400 * MiB, 400 * MiB + 512,
                                      used_kib=100 * MiB)])
    assert targets(p) == {1: 410 * MiB, 2: 400 * MiB}
    assert "0.25 %" in p.decision(2).reason


def test_mom_uses_the_averaged_used_memory():
    host = HostState(free_kib=100 * MiB, total_kib=1000 * MiB)
    # used now 50, averaged 300: min = 300 + 80 = 380 > 400 - 20
    p = plan("mom", host, [guest(1, 400, used=50, used_avg_kib=300 * MiB)])
    assert targets(p) == {1: 380 * MiB}


# --- ours -------------------------------------------------------------------------------------

def test_tmem_policy_holds_a_tmem_guest_at_committed_plus_overhead_margin_and_swap_boost():
    # committed 100 MiB; MemTotal 192 of 200 MiB: overhead 8 MiB; margin max(5 %, 16 MiB);
    # swap-in 100 pages/s over a 5 s round, 4 rounds, 4 KiB each: +8000 KiB
    g = guest(1, 200, used=110, committed_kib=100 * MiB, mem_total_kib=192 * MiB,
              tmem_enabled=True, swap_in_rate=100.0)
    p = plan("tmem", HostState(free_kib=1000 * MiB), [g])
    assert targets(p) == {1: (100 + 8 + 16) * MiB + 8000}
    assert "swapping in 100 pages/s" in p.decision(1).reason


def test_tmem_policy_gives_a_guest_without_tmem_qmemmans_cache_factor():
    # used 100 MiB x 1.3 = 130 MiB, above committed 90 + overhead 8 + margin 16 = 114 MiB
    g = guest(1, 200, used=100, committed_kib=90 * MiB, mem_total_kib=192 * MiB)
    p = plan("tmem", HostState(free_kib=1000 * MiB), [g])
    assert targets(p) == {1: 130 * MiB}


def test_tmem_actions_weights_freeze_a_flooder_and_thaw_only_what_we_froze():
    guests = [guest(1, 128, used=10, settings=Settings(priority=30)), guest(2, 128, used=10),
              guest(3, 128, used=10)]
    clients = {1: TmemClient(1, weight=0, frozen=False, ephemeral_pages=900),
               2: TmemClient(2, weight=10, frozen=True, ephemeral_pages=50),
               3: TmemClient(3, weight=10, frozen=True, ephemeral_pages=50)}
    short = HostState(free_kib=60 * MiB, xen_version="4.12", tmem=clients)
    acts = {(a.op, a.domid, a.value) for a in tmem_actions(short, guests, Config(),
                                                           frozen_by_us=frozenset({2}))}
    # 1: weight 30 (its priority), frozen: 90 % of ephemeral pages while the host is short;
    # 2: frozen by us and no longer flooding -> thaw; 3: frozen by someone else -> left
    assert acts == {("weight", 1, 30), ("freeze", 1, 0), ("thaw", 2, 0)}
    plenty = HostState(free_kib=2000 * MiB, xen_version="4.12", tmem=clients)
    assert ("freeze", 1, 0) not in {(a.op, a.domid, a.value)
                                    for a in tmem_actions(plenty, guests, Config())}
    assert tmem_actions(HostState(free_kib=60 * MiB, xen_version="4.13", tmem=clients),
                        guests, Config()) == ()
    old = HostState(free_kib=2000 * MiB, xen_version="4.5", tmem=clients)
    capped = [guest(2, 128, used=10, settings=Settings(ceiling_kib=200 * MiB))]
    assert ("cap", 2, 200) in {(a.op, a.domid, a.value)
                               for a in tmem_actions(old, capped, Config())}


# --- the common rules -------------------------------------------------------------------------

def _fit(host: HostState, guests: list[GuestState], proposal: dict[int, int],
         config: Config | None = None, steps: bool = True) -> dict[int, int]:
    decisions, _budget, _note = fit(host, guests, {d: (t * MiB, "p") for d, t in
                                                   proposal.items()},
                                    config or Config(), steps=steps)
    return {d.domid: d.target_kib // MiB for d in decisions}


def test_floor_and_ceiling():
    host = HostState(free_kib=2000 * MiB)
    gs = [guest(1, 200, settings=Settings(floor_kib=100 * MiB)),
          guest(2, 200, settings=Settings(ceiling_kib=300 * MiB)), guest(3, 200)]
    # 1 raised to its floor, 2 capped at its ceiling, 3 raised to the default floor (64)
    assert _fit(host, gs, {1: 10, 2: 500, 3: 1}) == {1: 100, 2: 300, 3: 64}


def test_over_the_budget_every_guest_gives_up_the_same_share_above_its_floor():
    # budget = 100 - 50 + 400 + 400 = 850 MiB; proposals 600 + 600; floors 64 + 64:
    # k = (850 - 128) / (1200 - 128); 64 + 536 k = 425 MiB each (870400 KiB in all)
    host = HostState(free_kib=100 * MiB)
    assert _fit(host, [guest(1, 400), guest(2, 400)], {1: 600, 2: 600}) == {1: 425, 2: 425}


def test_when_the_floors_do_not_fit_no_guest_grows():
    host = HostState(free_kib=100 * MiB)
    gs = [guest(d, 400, settings=Settings(floor_kib=500 * MiB)) for d in (1, 2)]
    decisions, budget, note = fit(host, gs, {1: (600 * MiB, "p"), 2: (300 * MiB, "p")},
                                  Config())
    assert [d.target_kib // MiB for d in decisions] == [400, 400]
    assert "no guest grows" in note and budget == 850 * MiB


def test_minimum_step_and_reversal_hysteresis():
    host = HostState(free_kib=2000 * MiB)
    assert _fit(host, [guest(1, 400)], {1: 405}) == {1: 400}  # 5 < 8 MiB
    assert _fit(host, [guest(1, 400)], {1: 420}) == {1: 420}
    shrunk = guest(1, 400, last_change_kib=-50 * MiB, last_change_age_s=10.0, used=100)
    assert _fit(host, [shrunk], {1: 420}) == {1: 400}  # a reversal needs 3 x 8 MiB
    assert _fit(host, [shrunk], {1: 430}) == {1: 430}
    short = guest(1, 400, last_change_kib=-50 * MiB, last_change_age_s=10.0,
                  committed_kib=410 * MiB)
    assert _fit(host, [short], {1: 420}) == {1: 420}  # below need: growth is no flapping
    old = guest(1, 400, last_change_kib=-50 * MiB, last_change_age_s=100.0)
    assert _fit(host, [old], {1: 420}) == {1: 420}
    assert _fit(host, [guest(1, 400)], {1: 405}, steps=False) == {1: 405}


def test_a_held_shrink_is_made_when_the_budget_needs_it():
    # budget = 60 - 50 + 400 + 100 = 510: 2 grows by 100, so 1's 5 MiB shrink must happen
    host = HostState(free_kib=60 * MiB)
    assert _fit(host, [guest(1, 400), guest(2, 100)], {1: 395, 2: 115}) == {1: 395, 2: 115}


@pytest.mark.parametrize("policy", ["qmemman", "mom", "tmem"])
def test_guests_left_alone_keep_their_target_and_say_why(policy):
    host = HostState(free_kib=500 * MiB, total_kib=2000 * MiB)
    gs = [guest(1, 300, used=100, settings=Settings(opt_out=True)),
          guest(2, 300, used=100, selfballooning=True),
          guest(3, 300, used=100, excluded="uncooperative: did not shrink"),
          guest(4, 300)]  # nothing reported
    p = plan(policy, host, gs)
    assert all(not d.managed and d.target_kib == 300 * MiB for d in p.decisions)
    assert [d.reason.removeprefix("left alone: ").split(":")[0] for d in p.decisions] == [
        "opted out", "self-ballooning", "uncooperative",
        "no usage reported (no agent in data/tmem; libvirt balloon stats need a period"]
