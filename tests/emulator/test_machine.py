"""``xentmem.emulator.machine``: the one composition root, in process."""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from xentmem.emulator import EmulatedHost
from xentmem.emulator.machine import (
    WORKLOADS,
    EmulatedMachine,
    GuestSpec,
    SwapSpec,
    living_guest,
)
from xentmem.errors import GuestError
from xentmem.guest import HypervisorReservation, WorkloadSpec, XenTmem


@pytest.fixture
def machine() -> Iterator[EmulatedMachine]:
    with EmulatedMachine.boot(memory_mb=2048) as m:
        yield m


def test_a_guest_is_wired_through_the_hypervisor(machine: EmulatedMachine) -> None:
    mg = machine.add_guest(GuestSpec("g", 64, swap=(SwapSpec(64),), backend="tmem"))
    assert machine.host.domains[mg.domid].name == "g"
    assert isinstance(mg.guest.balloon.reservation, HypervisorReservation)
    assert isinstance(mg.guest.backend, XenTmem) and mg.guest.backend.tmem is mg.client()
    assert mg.guest.max_pfn == 128 * 256  # max_memory_mb defaults to twice the memory
    mg.set_target(48)  # no xenstored: the in-memory memory/target node
    assert mg.guest.balloon.stats.current_pages == 48 * 256
    assert machine.host.domains[mg.domid].nr_pages == 48 * 256  # frames went back to Xen


def test_a_modern_kernel_boots_without_tmem(machine: EmulatedMachine) -> None:
    mg = machine.add_guest(living_guest("new", workload="db", kernel="6.1", memory_mb=96))
    assert mg.guest.backend is None and mg.spec.backend is None
    machine.advance(40)  # its buffer pool outgrows its memory: to swap, with no tmem
    assert mg.report()["tmem_pages"] == 0 and mg.report()["swap_pages"] > 0
    with pytest.raises(GuestError, match=r"Linux 6\.1 has no tmem"):
        mg.backend("tmem")


def test_bad_specs_change_nothing(machine: EmulatedMachine) -> None:
    machine.add_guest(GuestSpec("a", 64))
    domains = sorted(machine.host.domains)
    with pytest.raises(GuestError, match="already exists"):
        machine.add_guest(GuestSpec("a", 64))
    with pytest.raises(GuestError, match=r"before 3\.10"):
        GuestSpec("b", 64, kernel="2.6")
    with pytest.raises(GuestError, match="unknown workload"):
        living_guest("c", workload="crypto")
    with pytest.raises(GuestError):
        machine.add_guest(GuestSpec("d", 64, swap=(SwapSpec(0),)))  # a swap device needs slots
    assert sorted(machine.host.domains) == domains  # the failed boot's domain is gone


def test_advance_runs_every_guest_and_verify_checks_every_page(machine: EmulatedMachine) -> None:
    guests = [machine.add_guest(living_guest(f"g{i}", workload=w, seed=i))
              for i, w in enumerate(WORKLOADS)]
    done = machine.advance(45)
    assert done == sum(g.ops for g in guests) > 0 and machine.now == pytest.approx(45)
    assert machine.verify() > 0
    rows = {r["name"]: r for r in machine.report()}
    assert rows["g1"]["workload"] == "web" and rows["g2"]["tmem_pages"] > 0  # db swaps to tmem
    assert machine.lost == machine.stale == 0


def test_the_clock_follows_wall_time() -> None:
    with EmulatedMachine.boot() as m:
        m.add_guest(living_guest("g", workload="idle"))
        m.start(speed=20.0, step=0.05)
        assert m.start() is m  # already running: nothing new
        import time

        time.sleep(0.5)
        m.stop()
        assert 2.0 < m.now < 20.0 and m.clock_error is None
    with pytest.raises(GuestError, match="speed"):
        EmulatedMachine.boot().start(speed=0)


def test_checkpoint_and_restore_continue_the_same_guests(machine: EmulatedMachine) -> None:
    db = machine.add_guest(living_guest("db", workload="db", seed=1))
    machine.add_guest(living_guest("batch", workload="batch", seed=2))
    machine.advance(40)
    before = {r["name"]: r for r in machine.report()}
    assert before["db"]["tmem_pages"] > 0
    state, blob = machine.checkpoint()
    pages = sum(g.guest.anon_pages + g.guest.pagecache_pages for g in machine.guests.values())
    assert len(blob) < pages * 4096 // 20  # pages kept as their patterns, not 4 KiB each
    machine.advance(10)  # what happens after the checkpoint is rolled back with the host

    with EmulatedMachine(EmulatedHost.from_state(state)) as restored:
        restored.restore_guests(blob)
        assert restored.now == pytest.approx(40)
        after = {r["name"]: r for r in restored.report()}
        for name in ("db", "batch"):
            for key in ("tmem_pages", "stored", "loaded", "swap_pages", "memory_mb"):
                assert after[name][key] == before[name][key], (name, key)
        mg = restored.guest("db")
        assert mg.domid == db.domid and mg.guest.backend.tmem is mg.client()
        restored.advance(20)  # they go on, reading back pages stored before the checkpoint
        assert restored.verify() > 0
        assert restored.lost == restored.stale == 0
        assert restored.guest("db").guest.frontswap.loads > before["db"]["loaded"]


def test_a_checkpoint_cannot_name_arbitrary_code(machine: EmulatedMachine) -> None:
    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, ("true",))

    with pytest.raises(pickle.UnpicklingError, match="may not name"):
        machine.restore_guests(pickle.dumps({"format": 1, "now": 0, "guests": [Evil()]}))
    with pytest.raises(pickle.UnpicklingError, match="may not name"):
        machine.restore_guests(pickle.dumps(shutil.rmtree))  # a function, even of the stdlib
    assert machine.guests == {}


def test_agents_run_with_a_xenstored() -> None:
    work = Path(tempfile.mkdtemp(prefix="xtm", dir="/tmp"))
    try:
        with EmulatedMachine.boot(xenstore=work / "xs") as m:
            mg = m.add_guest(living_guest("g", workload="idle"))
            assert mg.agent is not None and mg.agent.running
            with m.xenstore_dom0() as xs:
                assert xs.read(f"/local/domain/{mg.domid}/data/tmem/state") == b"applied"
            row = m.remove_guest("g")
            assert row["name"] == "g" and mg.domid not in m.host.domains
            assert mg.agent is None
            m.xenstore.stop()  # type: ignore[union-attr]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_periodic_workloads_rest_between_cycles() -> None:
    from xentmem.guest import Guest, Workload

    guest = Guest("g", memory_mb=256)
    w = Workload(WorkloadSpec("anon", mb=8, rate=100, grow=2, shrink=2, period=10, active=6),
                 guest)
    sizes = []
    for n in range(40):
        w.step(n * 0.5, 0.5)
        sizes.append(len(w.pids))
    # each 10 s cycle: grow over 2 s, hold, shrink over the last 2 of its 6 active seconds, rest
    assert sizes[7] == 8 * 256 and sizes[14] == 0 and sizes[27] == 8 * 256
    assert all(s == 0 for s in sizes[13:19])
    with pytest.raises(GuestError, match="active"):
        WorkloadSpec("anon", period=5, active=6)
