"""The manager on a living emulated host (in-process, model time advanced by hand): inputs read
through the agents and the sanitiser, targets set and followed, an uncooperative guest detected,
excluded, shown and retried, settings honoured."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from xentmem.balance import Config, Settings
from xentmem.balance.compare import CompareSpec, LivingHost, living_host
from xentmem.balance.settings import XENSTORE_KEYS, read_settings, write_settings
from xentmem.xenstore.keys import meminfo_key

MiB = 1024


@pytest.fixture
def lh() -> Iterator[LivingHost]:
    with living_host(CompareSpec(guests=("db", "idle", "web"))) as h:
        h.machine.advance(10, tick=1.0)
        h.publish()
        yield h


def _round(lh: LivingHost, manager, seconds: float = 5.0):
    lh.publish()
    r = manager.round()
    lh.settle()
    lh.machine.advance(seconds, tick=1.0)
    return r


def test_inputs_come_from_the_agents_and_the_host(lh):
    manager = lh.manager("tmem")
    host, guests = manager.collector.gather()
    assert [g.name for g in guests] == ["db0", "idle1", "web2"]
    for g, mg in zip(guests, lh.guests, strict=True):
        assert g.source == "agent" and g.tmem_enabled and not g.selfballooning
        assert g.committed_kib == mg.guest.committed_pages * 4  # Committed_AS, via data/tmem
        assert g.memory_kib == lh.machine.host.domains[mg.domid].nr_pages * 4
        assert g.settings == Settings(ceiling_kib=128 * MiB)
    assert host.free_kib == lh.machine.host.heap_free * 4
    assert host.xen_version == "4.12" and set(host.tmem or {}) >= {g.domid for g in guests
                                                                   if g.name != "idle1"}


def test_junk_a_guest_writes_reads_as_nothing_and_leaves_it_alone(lh):
    mg = lh.guests[1]
    assert mg.xs is not None
    mg.xs.write(meminfo_key("MemTotal"), "1e9\x00junk")  # the guest owns data/
    manager = lh.manager("tmem", act=False)
    d = manager.round().plan.decision(mg.domid)
    assert not d.managed and "no usage reported" in d.reason
    with lh.machine.xenstore_dom0() as xs:  # an admin's garbage in the settings: defaults
        xs.write(f"/local/domain/{mg.domid}/{XENSTORE_KEYS['floor_kib']}", "-5")
        xs.write(f"/local/domain/{mg.domid}/{XENSTORE_KEYS['priority']}", "lots")
    assert read_settings(lh.host, mg.domid, mg.name) == Settings(ceiling_kib=128 * MiB)


def test_targets_change_and_the_guests_follow(lh):
    manager = lh.manager("tmem", config=Config(interval_s=5.0))
    first = _round(lh, manager)
    changed = {d.domid: d.target_kib for d in first.plan.changes()}
    assert changed, first.plan  # an idle guest holding 128 MiB gives memory back
    assert any(e.startswith("idle1: 128 -> ") for e in first.events)
    _round(lh, manager)
    for mg in lh.guests:
        if mg.domid in changed:
            assert lh.machine.host.domains[mg.domid].nr_pages * 4 == changed[mg.domid] & ~3
    assert lh.machine.lost == 0 and lh.machine.stale == 0


def test_an_uncooperative_guest_is_detected_excluded_shown_and_retried(lh):
    stuck = lh.guests[1]  # idle: the manager wants its memory
    assert stuck.watcher is not None
    stuck.watcher.close()  # its balloon driver stops following memory/target
    stuck.watcher = None
    manager = lh.manager("tmem", follow_timeout_s=10.0, retry_s=60.0)
    events: list[str] = []
    rounds = [_round(lh, manager) for _ in range(5)]
    for r in rounds:
        events += r.events
    told = [e for e in events if e.startswith("idle1: 128 -> ")]
    assert len(told) == 1
    marked = [e for e in events if "marked uncooperative" in e]
    assert marked and marked[0].startswith("idle1: did not shrink to ")
    last = rounds[-1].plan.decision(stuck.domid)
    assert not last.managed and "uncooperative" in last.reason
    assert stuck.domid in manager.uncooperative
    # excluded from the budget: the others are still balanced
    assert all(d.managed for d in rounds[-1].plan.decisions if d.domid != stuck.domid)
    assert any("not acting on it: uncooperative" in e for e in events)
    flag = f"/local/domain/{stuck.domid}/memory/uncooperative"
    with lh.machine.xenstore_dom0() as xs:  # squeezed's flag: every tool sees it
        assert xs.read(flag) == b"1"
    fresh = lh.manager("tmem", act=False, retry_s=60.0).round()  # e.g. `balance plan`
    assert "uncooperative" in fresh.plan.decision(stuck.domid).reason
    assert any("memory/uncooperative is set" in e for e in fresh.events)
    for _ in range(12):  # after retry_s it is tried again, and the flag goes
        r = _round(lh, manager)
        if any(e.startswith("idle1: uncooperative for 60 s: trying again") for e in r.events):
            break
    else:
        pytest.fail("never retried")
    with lh.machine.xenstore_dom0() as xs:
        assert xs.read(flag, None) is None
    assert r.plan.decision(stuck.domid).managed


def test_opted_out_and_floored_guests(lh):
    opted, floored = lh.guests[1], lh.guests[2]
    write_settings(lh.host, opted.domid, opted.name, Settings(opt_out=True))
    write_settings(lh.host, floored.domid, floored.name,
                   Settings(floor_kib=120 * MiB, ceiling_kib=128 * MiB))
    p = lh.manager("tmem", act=False).round().plan
    assert not p.decision(opted.domid).managed
    assert p.decision(opted.domid).reason == "left alone: opted out"
    assert p.decision(floored.domid).target_kib >= 120 * MiB
    with pytest.raises(ValueError, match="above the ceiling"):
        write_settings(lh.host, opted.domid, opted.name,
                       Settings(floor_kib=200 * MiB, ceiling_kib=100 * MiB))
    assert read_settings(lh.host, opted.domid, opted.name) == Settings(opt_out=True)
