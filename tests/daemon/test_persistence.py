"""Persistent pages and host state survive ``down`` + ``up`` and a killed daemon (SIGKILL);
the snapshot is atomic and the journal's torn tail or stale generation is ignored."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from pathlib import Path

import pytest

from xentmem.emulator import EmulatedHost, daemon
from xentmem.emulator import _daemon_store as store_mod
from xentmem.emulator._daemon_store import JOURNAL, SNAPSHOT, Record, StateStore
from xentmem.emulator._tmem import REGION
from xentmem.errors import EmulatorError, StateDamaged, TransportError
from xentmem.hypercalls import Tmem
from xentmem.hypercalls.socket import SocketHypervisor


def page(i: int) -> bytes:
    return (i.to_bytes(4, "little") + b"persistent-page!") * 204 + b"\xa5" * 16


def _fill(directory: Path, n: int, *, ephemeral: int = 0) -> tuple[int, int]:
    with SocketHypervisor(directory, 1) as hv:
        tm = Tmem(hv)
        pers = tm.new_pool(persistent=True)
        eph = tm.new_pool(persistent=False)
        for i in range(n):
            tm.put_page(pers, (i % 4, 0, 9), i, page(i))
        for i in range(ephemeral):
            tm.put_page(eph, 3, i, page(1000 + i))
        tm.flush_page(pers, (1, 0, 9), 1)
    return pers, eph


def _check(directory: Path, pers: int, n: int) -> None:
    with SocketHypervisor(directory, 1) as hv:
        tm = Tmem(hv)
        for i in range(n):
            want = None if i == 1 else page(i)
            assert tm.get_page(pers, (i % 4, 0, 9), i) == want, i


def _listing(directory: Path) -> str:
    with SocketHypervisor(directory, 0) as hv:
        return Tmem(hv).list(long=True)


def test_down_up_keeps_pages_domains_and_settings(make_daemon):
    d = make_daemon(guests=2, xen_version="4.12")
    pers, _ = _fill(d.directory, 40, ephemeral=10)
    with SocketHypervisor(d.directory, 0) as hv:
        Tmem(hv).freeze(1)
        Tmem(hv).set_client(1, weight=9)
        new = hv.control("create_domain", name="late", memory_mb=32, bare=True)["domid"]
    before = _listing(d.directory)
    d.restart(daemon.HostConfig())
    assert "replayed 0" in d.note  # down wrote a snapshot; nothing left to replay
    assert sorted(d.daemon.host.domains) == [0, 1, 2, new]
    assert _listing(d.directory) == before  # counters, weight, frozen: all of it
    _check(d.directory, pers, 40)


def test_up_refuses_options_that_contradict_the_saved_host(make_daemon):
    d = make_daemon(xen_version="4.12", memory_mb=1024)
    d.stop()
    with pytest.raises(EmulatorError, match=r"xen_version=4\.12.*--fresh"):
        d.start(daemon.HostConfig(xen_version="4.5"))
    d.start(daemon.HostConfig(xen_version="4.5", guests=1, bare=True), fresh=True)
    assert str(d.daemon.host.version) == "4.5" and sorted(d.daemon.host.domains) == [0, 1]


def test_dedup_boot_options_survive_a_restart(make_daemon):
    """A 4.5 host booted with tmem_dedup and tmem_tze: identical ephemeral pages share a copy
    and trimmed ones are kept short, across down/up; the options are part of the saved host
    (``up --no-tmem-dedup`` contradicts it) and of its command line."""
    d = make_daemon(xen_version="4.5", tmem_dedup=True, tmem_tze=True)
    short = page(7)[:200] + bytes(4096 - 200)
    with SocketHypervisor(d.directory, 0) as hv:
        tm = Tmem(hv, version="4.5")
        eph = tm.new_pool(persistent=False)
        for i, data in enumerate([page(1), page(1), short, bytes(4096)]):
            tm.put_page(eph, 1, i, data)
    before = _listing(d.directory)
    assert ",Sc:3,Sm:3," in before and ",Gd:1,Zt:4296," in before
    d.restart(daemon.HostConfig(xen_version="4.5"))
    # the same text but Tt, which counts 4.5's LIST itself
    assert _listing(d.directory).split(",", 1)[1] == before.split(",", 1)[1]
    assert d.daemon.host.tmem.dedup and d.daemon.host.tmem.tze
    with SocketHypervisor(d.directory, 0) as hv:
        assert Tmem(hv, version="4.5").get_page(eph, 1, 2) == short
    d.stop()
    with pytest.raises(EmulatorError, match="tmem_dedup=True"):
        d.start(daemon.HostConfig(xen_version="4.5", tmem_dedup=False))
    assert daemon.HostConfig(tmem_dedup=True, tmem_tze=True).argv()[-2:] == [
        "--tmem-dedup", "--tmem-tze"]


def test_sigkill_after_acknowledged_puts_loses_nothing(process_daemon: Path):
    """A real daemon process, hung (SIGSTOP) after acknowledging hypercalls: a client gets
    ``TransportError`` within its timeout, ``down`` escalates to SIGKILL, and the journal
    replays every acknowledged hypercall onto the last snapshot: the host comes back exactly
    as it was."""
    directory = process_daemon
    info = daemon.start(directory, daemon.HostConfig(guests=1, bare=True), timeout=60)
    pers, _ = _fill(directory, 30, ephemeral=5)
    before = _listing(directory)
    os.kill(info["pid"], signal.SIGSTOP)
    try:
        with pytest.raises(TransportError, match="did not answer"):
            SocketHypervisor(directory, 1, timeout=0.3)
        stopped = daemon.stop(directory, timeout=0.3)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(info["pid"], signal.SIGCONT)
    assert stopped is not None and stopped["killed"] is True
    assert daemon.running(directory) is None
    with pytest.raises(TransportError, match="no emulator daemon"):  # its socket file is stale
        SocketHypervisor(directory, 1, timeout=1)
    info = daemon.start(directory, daemon.HostConfig(), timeout=60)
    replayed = re.search(r"replayed (\d+) journaled", info["note"])
    assert replayed and int(replayed.group(1)) > 30, info["note"]
    assert "differently" not in info["note"]
    assert _listing(directory) == before
    _check(directory, pers, 30)
    assert daemon.stop(directory)["killed"] is False


def test_only_calls_that_touch_persistent_data_wait_for_fsync(make_daemon, monkeypatch):
    """fdatasync is wrapped to count calls (the real one still runs)."""
    d = make_daemon(guests=1)
    calls = []
    real = os.fdatasync
    monkeypatch.setattr(store_mod.os, "fdatasync", lambda fd: calls.append(fd) or real(fd))
    with SocketHypervisor(d.directory, 1) as hv:
        tm = Tmem(hv)
        pers, eph = tm.new_pool(persistent=True), tm.new_pool(persistent=False)
        base = len(calls)
        for i in range(5):
            tm.put_page(pers, 1, i, page(i))
        assert len(calls) - base == 5
        for i in range(5):
            tm.get_page(pers, 1, i)
            tm.put_page(eph, 1, i, page(i))
            tm.get_page(eph, 1, i)
        assert len(calls) - base == 5  # journaled all the same, without waiting for the disk
        tm.flush_page(pers, 1, 0)
        assert len(calls) - base == 6


def _record(i: int) -> Record:
    return Record(1, 38, (4096 * 7,), [(4096 * 7, bytes([i]) * 56)])


def test_journal_torn_tail_and_stale_generation_are_ignored(tmp_path: Path):
    store = StateStore(tmp_path)
    state = EmulatedHost(64).to_state()
    store.save(state)
    for i in range(3):
        store.append(_record(i))
    store.commit()
    store.close()
    journal = tmp_path / JOURNAL
    intact = journal.read_bytes()
    journal.write_bytes(intact + _record(3).encode()[:-10])  # a crash mid-append
    loaded, records = StateStore(tmp_path).load()
    assert loaded == state and records == [_record(i) for i in range(3)]

    # a crash after the next snapshot's rename, before its journal: the old journal is stale
    newer = StateStore(tmp_path)
    newer.load()
    newer.save(state)
    newer.close()
    journal.write_bytes(intact)
    assert StateStore(tmp_path).load() == (state, [])


def test_snapshot_is_replaced_atomically_and_holds_plain_data_only(tmp_path: Path):
    store = StateStore(tmp_path)
    store.save({"format": 1, "x": b"\0" * 10})
    store.close()
    assert not (tmp_path / (SNAPSHOT + ".tmp")).exists()
    raw = (tmp_path / SNAPSHOT).read_bytes()
    import pickle

    evil = raw[:16] + pickle.dumps(os.system)  # a pickle that would import a callable
    (tmp_path / SNAPSHOT).write_bytes(evil)
    with pytest.raises(StateDamaged, match="plain data only"):
        StateStore(tmp_path).load()


def test_a_long_journal_is_compacted_into_a_snapshot(make_daemon, monkeypatch):
    monkeypatch.setattr(daemon, "JOURNAL_LIMIT", 64 << 10)
    d = make_daemon(guests=1)
    generation = d.daemon.store.generation
    pers, _ = _fill(d.directory, 40)  # ~165 KiB of journal
    # compaction runs in the background (a forked child writes the snapshot)
    deadline = time.monotonic() + 30
    while d.daemon.store.generation < generation + 2 and time.monotonic() < deadline:
        with SocketHypervisor(d.directory, 0) as hv:  # a request lets the loop take it in
            hv.control("status")
        time.sleep(0.05)
    assert d.daemon.store.generation >= generation + 2
    assert d.daemon.store.journal_bytes < 165 << 10
    _check(d.directory, pers, 40)
    d.restart()
    _check(d.directory, pers, 40)


def test_the_state_the_release_before_lzo_wrote_comes_up(make_daemon, state_dir: Path):
    """A snapshot and journal of 8f207e1 (lz4 blocks, no metadata pages; written by
    fixtures/release-8f207e1/make_state.py, which says what it holds): ``up`` restores it and
    replays its journal, every page reads back, tmem's metadata is charged as this model
    charges it (the persistent pool's to its domain), and destroying the pools gives every
    page tmem holds back to its free list."""
    made = Path(__file__).parent / "fixtures" / "release-8f207e1"
    for name in ("host.state", "journal", "xenstore.state", "xenstore.journal"):
        (state_dir / name).write_bytes((made / name).read_bytes())
    d = make_daemon()
    assert "replayed 5 journaled" in d.note
    tm = d.daemon.host.tmem
    client = tm.client(1)
    pers, eph = client.pools[0], client.pools[1]
    assert pers.npages == 304 and eph.npages == 300 and client.cp == 604
    assert client.meta_used == tm.meta_bytes(pers) and tm.meta_used == tm.meta_bytes(eph)
    assert client.meta_pages == -(-client.meta_used // REGION) > 0 and tm.meta_pages > 0
    assert client.dom.tmem_pages == client.meta_pages  # every page compressed: no frames

    def text(i: int) -> bytes:  # make_state.py's pages
        return (f"page {i} of the old release " * 200).encode()[:4096]

    with SocketHypervisor(d.directory, 1) as hv:
        guest = Tmem(hv)
        for i in range(305):
            want = None if i == 1 else text(i) if i % 4 else bytes([i % 251]) * 4096
            assert guest.get_page(0, (i % 3, 0, 7), i * 37) == want, i
        assert guest.get_page(1, 5, 299) == text(299)[::-1]
        held = tm.raw_pages + tm.meta_pages + client.meta_pages
        free = tm.free_list
        assert guest.destroy_pool(0) and guest.destroy_pool(1)
    assert tm.meta_used == tm.meta_pages == client.meta_used == client.meta_pages == 0
    assert client.dom.tmem_pages == tm.raw_pages == 0 and tm.free_list == free + held
