"""RAMster clusters across emulated machines in one process: a memory-heavy client, an idle
memory server (and a second client), pages flowing over loopback TCP and back."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from xentmem.emulator._host import EmulatedHost
from xentmem.emulator.machine import EmulatedMachine, GuestSpec, MachineGuest, SwapSpec
from xentmem.emulator.ramster import form_cluster, kill, ramster_of, wait_joined
from xentmem.errors import XenStoreNotFound
from xentmem.guest import SysfsView, WorkloadSpec, anon_content
from xentmem.guest.backends._ramster_engine import REMOTE, _SwapDisk
from xentmem.guest.backends.ramster import DEBUGFS_DIR, SYSFS_DIR
from xentmem.guest.backends.zcache import decompress

# wall-clock knobs small enough that a death is noticed within a second
FAST = {"heartbeat_s": 0.05, "dead_s": 0.6, "get_timeout_s": 0.6, "remotify_above": 0,
        "repatriate_below": 0, "selfshrink": False}


def _client(name: str, mb: int = 48, seed: int = 0) -> GuestSpec:
    return GuestSpec(name, memory_mb=32, swap=(SwapSpec(128),), agent=False,
                     workloads=(WorkloadSpec("anon", mb=mb, grow=2, rate=3000,
                                             write_fraction=0.3, seed=seed),))


@pytest.fixture
def machines() -> Iterator[list[EmulatedMachine]]:
    ms = [EmulatedMachine.boot(memory_mb=1024) for _ in range(3)]
    yield ms
    for m in ms:
        m.close()


def _pair(machines: list[EmulatedMachine], **params) -> tuple[MachineGuest, MachineGuest]:
    server = machines[0].add_guest(GuestSpec("server", memory_mb=64, swap=(SwapSpec(16),),
                                             agent=False))
    client = machines[1].add_guest(_client("client"))
    form_cluster([server, client], server=0, params={**FAST, **params})
    assert wait_joined([server, client])
    return server, client


def _remotified(client: MachineGuest, machine: EmulatedMachine, seconds: float = 4) -> int:
    machine.advance(seconds)
    rc = ramster_of(client)
    rc.remotify(limit=1 << 20)  # whatever the periodic step left
    assert rc.sync()
    return rc.stats()["remote_pers_pages"]


def test_pages_flow_to_the_server_and_come_back_exact(machines) -> None:
    server, client = _pair(machines)
    rs, rc = ramster_of(server), ramster_of(client)
    view = SysfsView(client.guest)
    view.write(f"{SYSFS_DIR}/ramster_remote_target_nodenum", "-1")  # remotify nothing yet
    machines[1].advance(4)
    local_before = rc.engine.bytes
    held = client.guest.frontswap.curr_pages()
    assert held > 1000 and local_before > 0 and rs.stats()["foreign_pers_pages"] == 0

    view.write(f"{SYSFS_DIR}/ramster_remote_target_nodenum", "0")
    remote = _remotified(client, machines[1], seconds=1)
    assert remote > 0
    assert rs.stats()["foreign_pers_pages"] == remote  # every acknowledged page is there
    assert rc.engine.bytes < local_before / 4  # the client's own memory pressure dropped
    assert int(view.read(f"{DEBUGFS_DIR}/remotified_pages")) >= remote
    assert int(view.read(f"{DEBUGFS_DIR}/nodes_alive")) == 1

    machines[1].verify()  # every page read back and checked
    g = client.guest.stats
    assert g.lost == g.stale == 0
    st = rc.stats()
    assert st["remote_gets"] > 0 and st["remote_pers_pages"] < remote
    assert rs.stats()["foreign_pers_pages"] == st["remote_pers_pages"]  # exclusive gets freed


def test_three_machines_two_clients_one_server(machines) -> None:
    server = machines[0].add_guest(GuestSpec("server", memory_mb=64, swap=(SwapSpec(16),),
                                             agent=False))
    clients = [machines[i].add_guest(_client(f"client{i}", seed=i)) for i in (1, 2)]
    form_cluster([server, *clients], server=0, params=FAST)
    assert wait_joined([server, *clients])
    remote = [_remotified(c, machines[i]) for i, c in zip((1, 2), clients, strict=True)]
    rs = ramster_of(server)
    assert min(remote) > 0
    assert rs.stats()["foreign_pers_pages"] == sum(remote)
    assert {k[0] for k in rs.engine.foreign} == {1, 2}  # a foreign pool per client node
    for m in machines[1:]:
        m.verify()
        assert m.lost == m.stale == 0


@pytest.mark.parametrize("mode", ["faithful", "durable"])
def test_a_killed_server_costs_speed_in_durable_mode_and_counted_pages_in_faithful(
        machines, mode: str) -> None:
    server, client = _pair(machines, mode=mode)
    remote = _remotified(client, machines[1])
    assert remote > 0
    kill(server)
    rc = ramster_of(client)
    deadline = time.monotonic() + 5
    while rc.stats()["remote_pers_pages"] and time.monotonic() < deadline:
        time.sleep(0.01)  # the death noticed and every page of it resolved
    assert not rc.node.alive(0)

    machines[1].verify()
    g, st = client.guest.stats, rc.stats()
    assert g.stale == 0  # never silently stale
    if mode == "faithful":
        assert st["lost_pers_pages"] == remote == g.lost  # each lost page counted exactly once
    else:
        assert g.lost == st["lost_pers_pages"] == 0
        assert st["recovered_pers_pages"] == remote  # read from the swap slot instead
        assert st["durable_writes"] >= remote
    client.guest.verify_anon()  # a second pass: nothing is counted twice
    assert client.guest.stats.lost == g.lost


def test_unload_after_a_faithful_loss_reports_the_lost_pages_never_older_copies(
        machines) -> None:
    server, client = _pair(machines, mode="faithful")
    g = client.guest
    pids = g.alloc_anon(64)
    for pid in pids:  # an old version on disk, a newer one in RAMster
        g.swap_out(pid)
    g.unload_backend()
    for pid in pids:
        g.write_anon(pid)
    rs = ramster_of(server)
    g.load_backend(client.backend("ramster", {**FAST, "mode": "faithful", "node": 1,
                                              "target": 0, "nodes": str(rs.address)}))
    rc = ramster_of(client)
    rs.set_nodes(f"{rs.address} {rc.address}")
    assert wait_joined([server, client])
    for pid in pids:
        g.swap_out(pid)
    rc.remotify(limit=1 << 20)
    assert rc.sync() and rc.stats()["remote_pers_pages"] == 64
    kill(server)
    deadline = time.monotonic() + 5
    while rc.stats()["lost_pers_pages"] < 64 and time.monotonic() < deadline:
        time.sleep(0.01)
    report = g.unload_backend()
    assert report.missing == 64
    g.verify_anon()
    assert g.stats.lost == 64 and g.stats.stale == 0  # the slots' older copies never read


def test_unload_with_remote_pages_outstanding_drains_them_to_swap(machines) -> None:
    server, client = _pair(machines, mode="faithful")
    remote = _remotified(client, machines[1])
    held = client.guest.frontswap.curr_pages()
    assert remote > 0 and held >= remote
    report = client.guest.unload_backend()
    assert report.drained == held and report.missing == 0
    rs = ramster_of(server)
    deadline = time.monotonic() + 5
    while rs.stats()["foreign_pers_pages"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rs.stats()["foreign_pers_pages"] == 0  # nothing left behind on the server
    machines[1].verify()
    assert client.guest.stats.lost == client.guest.stats.stale == 0


def test_put_and_flush_of_one_key_stay_ordered_under_a_racing_remotify(machines) -> None:
    server, client = _pair(machines)
    g, rc, rs = client.guest, ramster_of(client), ramster_of(server)
    pids = g.alloc_anon(8)
    stop = threading.Event()

    def remotify() -> None:
        while not stop.is_set():
            rc.remotify()

    racer = threading.Thread(target=remotify)
    racer.start()
    try:
        for n in range(400):  # new versions (dup stores: FLUSH behind the PUT), frees, reads
            pid = pids[n % len(pids)]
            g.write_anon(pid)
            g.swap_out(pid)
            if n % 7 == 0:
                g.read_anon(pid)
    finally:
        stop.set()
        racer.join()
    rc.remotify()
    assert rc.sync()
    deadline = time.monotonic() + 5
    while not rc.node.idle() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # the server applies what was sent

    # the server holds exactly the pages the client believes are there, each the current version
    by_slot = {p.entry: p for p in g.pages_in(pids) if p.entry is not None}
    remote = {k for k, e in rc.engine.remote.items() if e.state == REMOTE}
    foreign = {(pool, h): data for (node, pool), fp in rs.engine.foreign.items()
               for h, data in fp.pages.items()}
    assert set(foreign) == remote and remote
    for (_, h), data in foreign.items():
        page = by_slot[_SwapDisk.slot(h)]
        assert decompress(data) == anon_content(page.pid, page.version)
    g.verify_anon()
    assert g.stats.lost == g.stats.stale == 0


def test_a_checkpoint_with_remote_pages_restores_and_its_node_rejoins(machines) -> None:
    server, client = _pair(machines)
    rc = ramster_of(client)
    remote = _remotified(client, machines[1])
    host_state, blob = machines[1].checkpoint()
    machines[1].close()  # the client's node leaves: the server drops what it held for it
    restored = EmulatedMachine(EmulatedHost.from_state(host_state))
    try:
        restored.restore_guests(blob)
        again = ramster_of(restored.guest("client"))
        assert again.node is None and again.incarnation == rc.incarnation
        restored.advance(0.5)  # its first tick joins the cluster again
        assert wait_joined([server, restored.guest("client")])
        restored.verify()
        g = restored.guest("client").guest.stats
        assert g.lost == g.stale == 0  # durable: what the server dropped is on swap
        assert again.stats()["recovered_pers_pages"] == remote
    finally:
        restored.close()


def test_counters_reach_xenstore_through_the_agent(machines) -> None:
    work = Path(tempfile.mkdtemp(prefix="xtr", dir="/tmp"))
    try:
        with EmulatedMachine.boot(xenstore=work / "xs") as m:
            m.stats_interval = 0.1
            server = machines[0].add_guest(GuestSpec("server", memory_mb=64, agent=False,
                                                     swap=(SwapSpec(16),)))
            client = m.add_guest(replace(_client("client"), agent=True))
            form_cluster([server, client], params=FAST)
            assert wait_joined([server, client])
            remote = _remotified(client, m, seconds=2)
            path = f"/local/domain/{client.domid}/data/tmem/stats/ramster_remote_pers_pages"
            deadline = time.monotonic() + 10
            with m.xenstore_dom0() as xs:
                def published() -> bytes | None:
                    with contextlib.suppress(XenStoreNotFound):
                        return xs.read(path)
                    return None
                while published() != str(remote).encode() and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert published() == str(remote).encode()
            m.xenstore.stop()  # type: ignore[union-attr]
    finally:
        shutil.rmtree(work, ignore_errors=True)
