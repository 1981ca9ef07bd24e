"""Self-ballooning on a guest whose kernel has no self-balloon driver (an emulated Linux 6.1):
dom0 asks through xenstore as for any guest, the agent answers ``applied`` with ``mode:
user-space`` and runs the law itself; the balloon falls toward committed memory and stops at the
floor; self-shrinking is refused with its reason; switching off, or stopping the agent, gives the
balloon back to ``memory/target``; a restarted agent takes the standing request up again."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from xentmem.agent import DATA_MODE, Agent, SysfsSink
from xentmem.agent.procfs import render_zoneinfo
from xentmem.agent.userspace import next_target
from xentmem.emulator.machine import EmulatedMachine, MachineGuest, living_guest
from xentmem.guest import Guest, SysfsView
from xentmem.guest.selfballoon import MB, selfballoon_floor
from xentmem.host.guests import Host
from xentmem.xenstore import XenStoreClient, XenStoreServer

from ._wait import eventually

MEMORY_MB = 128  # living_guest: max 256 MiB


@pytest.fixture
def modern(machine: EmulatedMachine) -> Iterator[MachineGuest]:
    """A Linux 6.1 guest (the balloon driver only) idling, its agent on the model."""
    yield machine.add_guest(living_guest("modern", kernel="6.1", workload="idle"))


def data(dom0: XenStoreClient, mg: MachineGuest, node: str) -> bytes | None:
    return dom0.read(f"/local/domain/{mg.domid}/{node}", None)


def floor_pages(mg: MachineGuest) -> int:
    """The law's floor for this guest, in totalram pages (default knobs: from max_pfn)."""
    g = mg.guest
    return selfballoon_floor(mg.agent.selfballoon.knobs, g.totalreserve_pages, g.max_pfn)


def test_selfballooning_runs_in_user_space_down_to_the_floor(host: Host, dom0, modern):
    g = modern.guest
    assert not g.kernel.has_selfballoon
    start = g.balloon.stats.current_pages
    result = host.set_toggles("modern", {"selfballooning": True, "interval": 1,
                                         "downhysteresis": 2})
    assert result.status == "applied", result
    assert result.applied["selfballooning"] == 1 and result.applied["downhysteresis"] == 2
    assert data(dom0, modern, DATA_MODE) == b"user-space"
    assert host.tmem_report(modern.domid).mode == "user-space"  # dom0 reads it, sanitised
    law = modern.agent.selfballoon
    # committed: 16 MiB of kernel and userspace (the idle workload has not run) + R 4 MiB: the
    # floor (about 70 MiB of a 256 MiB max_pfn) is higher, so the balloon stops there
    floor = floor_pages(modern)
    goal = g.committed_pages + g.totalreserve_pages
    assert goal < floor < g.totalram_pages
    assert eventually(lambda: g.totalram_pages == floor, within=15)
    steps = list(law.steps)
    assert len(steps) >= 2
    for step in steps:  # each run is the law on what it read, capped by dom0's target
        assert step.target_pages == next_target(law.knobs, step.reading.snapshot,
                                                step.ceiling_pages)
        assert step.target_pages >= step.floor_pages
        assert step.ceiling_pages == MEMORY_MB * MB
    # halfway to the goal at each run, then the floor
    first = steps[0].reading.snapshot
    assert steps[0].target_pages - first.balloon_current_pages == -(
        (first.totalram_pages - goal) // 2)
    targets = [s.target_pages for s in steps]
    assert targets == sorted(targets, reverse=True) and targets[-1] == floor + g.kernel_pages
    assert g.balloon.stats.current_pages < start
    # the host sees where the balloon is
    assert eventually(lambda: host.tmem_report(modern.domid).balloon["current_kib"]
                      == g.balloon.stats.current_pages * 4)
    assert g.stats.lost == g.stats.stale == 0


def test_selfshrinking_is_refused_with_its_reason(host: Host, dom0, modern):
    result = host.set_toggles("modern", {"selfshrinking": True, "selfballooning": True})
    assert result.status == "refused"
    assert list(result.refused) == ["selfshrinking"]  # self-ballooning itself applies
    why = result.refused["selfshrinking"]
    assert "nothing to act on without tmem" in why and "Linux 6.1 has no tmem" in why
    assert result.applied["selfballooning"] == 1 and result.applied["selfshrinking"] == 0
    assert host.set_toggles("modern", {"selfshrinking": False}).status == "applied"
    # its knobs likewise: nothing to shrink, whatever the value
    shrink = host.set_toggles("modern", {"frontswap_inertia": 5, "frontswap_hysteresis": 10})
    assert sorted(shrink.refused) == ["frontswap_hysteresis", "frontswap_inertia"]
    assert "nothing to act on without tmem" in shrink.refused["frontswap_inertia"]


def test_switching_off_gives_the_target_back(host: Host, dom0, modern):
    g = modern.guest
    host.set_toggles("modern", {"selfballooning": True, "interval": 1, "downhysteresis": 1})
    assert eventually(lambda: g.balloon.stats.target_pages < MEMORY_MB * MB, within=10)
    result = host.set_toggles("modern", {"selfballooning": False})
    assert result.status == "applied" and result.applied["selfballooning"] == 0
    assert g.balloon.stats.target_pages == g.balloon.stats.current_pages == MEMORY_MB * MB
    runs = len(modern.agent.selfballoon.steps)
    assert modern.agent.selfballoon.due_at is None
    assert eventually(lambda: data(dom0, modern, "data/tmem/balloon/target_kib")
                      == str(MEMORY_MB * 1024).encode())
    assert len(modern.agent.selfballoon.steps) == runs  # no run after it was switched off


def test_dom0s_new_target_caps_the_law(host: Host, dom0, modern):
    g = modern.guest
    host.set_toggles("modern", {"selfballooning": True, "interval": 1, "uphysteresis": 1,
                                "reserved_mb": 200})  # the goal is above the memory: grow
    host.set_memory_target("modern", 100 * 1024)
    assert eventually(lambda: modern.agent.selfballoon.steps
                      and modern.agent.selfballoon.steps[-1].ceiling_pages == 100 * MB,
                      within=10)
    step = modern.agent.selfballoon.steps[-1]
    assert step.law_pages > 100 * MB and step.target_pages == 100 * MB
    assert g.balloon.stats.target_pages == 100 * MB


def test_stopping_the_agent_gives_the_target_back_and_a_new_one_takes_over(
        host: Host, dom0, modern):
    g = modern.guest
    host.set_toggles("modern", {"selfballooning": True, "interval": 1, "downhysteresis": 1})
    assert eventually(lambda: g.balloon.stats.target_pages < MEMORY_MB * MB, within=10)
    modern.agent.stop()
    assert g.balloon.stats.target_pages == g.balloon.stats.current_pages == MEMORY_MB * MB
    assert data(dom0, modern, "data/tmem/selfballooning") == b"0"  # said on its way out
    modern.agent = None
    agent = modern.start_agent()  # the request still stands in control/
    assert agent.selfballoon.enabled
    assert eventually(lambda: g.balloon.stats.target_pages < MEMORY_MB * MB, within=10)
    assert data(dom0, modern, "data/tmem/selfballooning") == b"1"
    assert host.tmem_report(modern.domid).status == "applied"


def test_a_kernel_with_the_driver_keeps_it(host: Host, dom0, web: MachineGuest):
    assert host.set_toggles("web", {"selfballooning": True}).status == "applied"
    assert data(dom0, web, DATA_MODE) == b"kernel"
    assert web.guest.selfballoon.knobs.selfballooning is True
    assert not web.agent.selfballoon.enabled


def test_a_one_shot_agent_cannot_run_the_law(server: XenStoreServer, dom0, emulated_host,
                                             tmp_path):
    domid = emulated_host.create_domain("once", 64)
    server.introduce_domain(domid, "once", 65536, 131072)
    guest = Guest("once", memory_mb=64, max_memory_mb=128, kernel="6.1")
    root = SysfsView(guest).mirror(tmp_path / "root")
    (root / "proc/zoneinfo").write_text(render_zoneinfo(
        totalreserve_pages=guest.totalreserve_pages, max_pfn=guest.max_pfn,
        managed_pages=guest.totalram_pages))
    base = f"/local/domain/{domid}"
    dom0.write(f"{base}/control/tmem/selfballooning", "1")
    dom0.write(f"{base}/control/selfballoon/reserved_mb", "0")  # fine in user space
    dom0.write(f"{base}/control/tmem/seq", "1")
    xs = server.connect(domid)
    try:
        report = Agent(xs, SysfsSink(root), heartbeat=False).reconcile()
        assert report.state == "refused" and list(report.refused) == ["selfballooning"]
        assert "one-shot agent" in report.refused["selfballooning"]
        assert dom0.read(f"{base}/{DATA_MODE}") == b"user-space"
        (root / "proc/meminfo").write_text("MemTotal: none\n")  # and a service agent
        report = Agent(xs, SysfsSink(root)).reconcile()  # refuses what it cannot run
        assert "cannot run the self-balloon law" in report.refused["selfballooning"]
        assert "/proc/meminfo is unreadable or garbled" in report.refused["selfballooning"]
    finally:
        xs.close()


def test_a_machine_shutting_down_leaves_the_guest_at_its_target(host: Host, machine, modern):
    """The machine closes the agent's xenstore connection to wake it: the agent gives the
    balloon back to the last ``memory/target`` it read."""
    g = modern.guest
    host.set_toggles("modern", {"selfballooning": True, "interval": 1, "downhysteresis": 1})
    assert eventually(lambda: g.balloon.stats.target_pages < MEMORY_MB * MB, within=10)
    machine.close()
    assert g.balloon.stats.target_pages == g.balloon.stats.current_pages == MEMORY_MB * MB
