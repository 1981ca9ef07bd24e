"""Faults the daemon's storage meets, as a user (or a full disk) brings them: every case asserts
that no acknowledged page is lost, that what cannot be stored is refused rather than
acknowledged, and that damage is reported in one line and never written over."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from xentmem.emulator import daemon
from xentmem.emulator._daemon_store import JOURNAL, SNAPSHOT, Record, StateStore
from xentmem.errors import EmulatorError, StateDamaged, StoreFailing, TmemNoMemory
from xentmem.hypercalls import Tmem
from xentmem.hypercalls.socket import SocketHypervisor

BARE = daemon.HostConfig(guests=1, bare=True)


def page(i: int) -> bytes:
    return i.to_bytes(8, "little") * 512


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 4 MiB tmpfs (root only; elsewhere the short-write tests below still run)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = Path(tempfile.mkdtemp(prefix="xtf", dir="/tmp"))
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount
    finally:
        with contextlib.suppress(Exception):
            daemon.stop(mount / "state", timeout=5)
        subprocess.run(["umount", "-l", str(mount)], check=False)
        shutil.rmtree(mount, ignore_errors=True)


def _fill_disk(path: Path, leave: int) -> Path:
    """A filler file that leaves about ``leave`` bytes free on ``path``'s filesystem."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    filler = path / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


def test_a_full_disk_refuses_writes_loses_nothing_and_recovers(small_disk: Path) -> None:
    state = small_disk / "state"
    daemon.start(state, BARE)
    filler = _fill_disk(small_disk, 256 << 10)  # room for about 60 journaled pages
    acked: list[int] = []
    with SocketHypervisor(state, 1) as hv:
        tm = Tmem(hv)
        pool = tm.new_pool(persistent=True)
        cache = tm.new_pool(persistent=False)
        tm.put_page(cache, 2, 0, page(-1 & 0xFFFF))
        refused = 0
        for i in range(200):
            try:
                tm.put_page(pool, 1, i, page(i))
                acked.append(i)
            except TmemNoMemory:  # what a host says when it cannot take the page
                refused += 1
        assert acked and refused, (len(acked), refused)
        assert tm.get_page(pool, 1, acked[0]) == page(acked[0])  # reads keep working
        with pytest.raises(TmemNoMemory):  # a newer version of a cached page is refused ...
            tm.put_page(cache, 2, 0, page(7))
        with pytest.raises(TmemNoMemory):  # (an ephemeral GET is destructive: refused too)
            tm.get_page(cache, 2, 0)
        filler.unlink()  # space returns: writes resume, the journal has no hole
        assert tm.get_page(cache, 2, 0) is None  # ... and the older one went, as on Xen
        for i in range(200, 220):
            tm.put_page(pool, 1, i, page(i))
            acked.append(i)
    pid = daemon.running(state)
    assert pid
    os.kill(pid, signal.SIGKILL)
    assert _gone(state)
    daemon.start(state, BARE)
    with SocketHypervisor(state, 1) as hv:
        tm = Tmem(hv)
        for i in acked:
            assert tm.get_page(pool, 1, i) == page(i), i
    status = daemon.control(state, "status")
    # the acked pages' frames and their metadata pages (36+ descriptors a page, §9.4)
    assert 0 < status["domains"][1]["tmem_persistent_pages"] - len(acked) <= 2 + len(acked) // 36


def test_down_on_a_full_disk_says_the_final_snapshot_failed(small_disk: Path) -> None:
    state = small_disk / "state"
    daemon.start(state, BARE)
    with SocketHypervisor(state, 1) as hv:
        tm = Tmem(hv)
        pool = tm.new_pool(persistent=True)
        for i in range(150):  # ~600 KiB of pages: the snapshot will not fit below
            tm.put_page(pool, 1, i, page(i))
    _fill_disk(small_disk, 64 << 10)
    result = daemon.stop(state)
    assert result is not None and not result["saved"] and not result["killed"]
    (small_disk / "filler").unlink()
    daemon.start(state, BARE)  # the journal still held every page
    with SocketHypervisor(state, 1) as hv:
        assert all(Tmem(hv).get_page(pool, 1, i) == page(i) for i in range(150))


def test_a_short_write_leaves_no_torn_record(tmp_path: Path, monkeypatch) -> None:
    """Where no small disk can be mounted: the same path through an injected short write."""
    store = StateStore(tmp_path)
    store.save({"config": {}})
    store.append(Record(1, 38, (4096,), [(4096, b"a" * 56)]))
    size = store.journal_bytes
    real_write = os.write
    calls = iter([10])  # the first write gets 10 bytes out, the next finds the disk full

    def short_write(fd: int, data: bytes) -> int:
        n = next(calls, None)
        if n is None:
            raise OSError(28, "No space left on device")
        return real_write(fd, bytes(data[:n]))

    monkeypatch.setattr(os, "write", short_write)
    with pytest.raises(StoreFailing, match="No space left"):
        store.append(Record(1, 38, (4096,), [(4096, b"b" * 56)]))
    monkeypatch.setattr(os, "write", real_write)
    assert store.journal_bytes == size == (tmp_path / JOURNAL).stat().st_size
    store.append(Record(1, 38, (4096,), [(4096, b"c" * 56)]))  # space is back: no hole
    store.close()
    records = StateStore(tmp_path).load()[1]
    assert [r.captures[0][1][:1] for r in records] == [b"a", b"c"]


def _journal_with(tmp_path: Path, n: int) -> StateStore:
    store = StateStore(tmp_path)
    store.save({"config": {}})
    for i in range(n):
        store.append(Record(1, 38, (4096,), [(4096, bytes([i]) * 56)]))
    store.close()
    return store


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.mark.parametrize("where", ["header", "payload"])
def test_damage_in_the_middle_of_the_journal_stops_and_recover_truncates(
        tmp_path: Path, where: str) -> None:
    _journal_with(tmp_path, 20)
    raw = bytearray((tmp_path / JOURNAL).read_bytes())
    record = (len(raw) - 16) // 20
    offset = 16 + 9 * record + (2 if where == "header" else 40)  # in the 10th record
    raw[offset] ^= 0x40
    (tmp_path / JOURNAL).write_bytes(raw)
    before = _digest(tmp_path)
    with pytest.raises(StateDamaged, match=rf"offset {16 + 9 * record}.* 9 record"):
        StateStore(tmp_path).load()
    assert _digest(tmp_path) == before  # nothing was written over the evidence
    store = StateStore(tmp_path)
    report = store.recover()
    assert report["records"] == 9 and report["dropped_bytes"] == 11 * record
    assert _digest(Path(report["kept"])) == {k: before[k] for k in (JOURNAL, SNAPSHOT)}
    assert len(StateStore(tmp_path).load()[1]) == 9


def test_a_torn_tail_is_not_damage(tmp_path: Path) -> None:
    _journal_with(tmp_path, 5)
    raw = (tmp_path / JOURNAL).read_bytes()
    (tmp_path / JOURNAL).write_bytes(raw[:-7])  # the last record cut short by a crash
    assert len(StateStore(tmp_path).load()[1]) == 4
    (tmp_path / JOURNAL).write_bytes(raw + bytes(4096))  # zeros after the end: never written
    assert len(StateStore(tmp_path).load()[1]) == 5


def test_a_missing_or_unreadable_snapshot_is_refused(tmp_path: Path) -> None:
    _journal_with(tmp_path, 3)
    snapshot = (tmp_path / SNAPSHOT).read_bytes()
    (tmp_path / SNAPSHOT).unlink()
    with pytest.raises(StateDamaged, match=r"missing but .* holds 3 record"):
        StateStore(tmp_path).load()
    (tmp_path / SNAPSHOT).write_bytes(snapshot[:40])
    with pytest.raises(StateDamaged, match=r"host\.state is damaged"):
        StateStore(tmp_path).load()
    report = StateStore(tmp_path).recover()  # nothing to save: a new host boots
    assert report["set_aside"] == [SNAPSHOT, JOURNAL] and report["kept"]
    assert StateStore(tmp_path).load() == (None, [])


def test_up_refuses_damage_in_one_line_and_recover_starts(tmp_path: Path) -> None:
    state = Path(tempfile.mkdtemp(prefix="xtd", dir="/tmp"))
    try:
        daemon.start(state, BARE)
        with SocketHypervisor(state, 1) as hv:
            tm = Tmem(hv)
            pool = tm.new_pool(persistent=True)
            for i in range(10):
                tm.put_page(pool, 1, i, page(i))
        pid = daemon.running(state)
        os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]
        assert _gone(state)
        raw = bytearray((state / JOURNAL).read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        (state / JOURNAL).write_bytes(raw)
        up = subprocess.run([sys.executable, "-m", "xentmem", "emulator", "up", "--state",
                             str(state)], capture_output=True, text=True, timeout=60)
        assert up.returncode == 1 and "Traceback" not in up.stderr
        assert len(up.stderr.strip().splitlines()) == 1
        assert "journal" in up.stderr and "offset" in up.stderr and "--recover" in up.stderr
        info = daemon.start(state, BARE, recover=True)
        assert "recovered: kept the damaged files" in info["note"]
        with SocketHypervisor(state, 1) as hv:  # the pages before the damage are there
            assert Tmem(hv).get_page(pool, 1, 0) == page(0)
    finally:
        with contextlib.suppress(EmulatorError, OSError):
            daemon.stop(state, timeout=5)
        shutil.rmtree(state, ignore_errors=True)


def _gone(state: Path) -> bool:
    import time

    deadline = time.monotonic() + 10
    while daemon.running(state) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_background_snapshot_rotates_the_journal_and_loses_nothing(make_daemon) -> None:
    from xentmem.emulator._daemon_store import NEXT_JOURNAL

    d = make_daemon(guests=1)
    with SocketHypervisor(d.directory, 1) as hv:
        tm = Tmem(hv)
        pool = tm.new_pool(persistent=True)
        for i in range(20):
            tm.put_page(pool, 1, i, page(i))
        generation = d.daemon.store.generation
        # through the daemon's own loop, as every checkpoint is (a call into the daemon from
        # this thread would race the loop for the child)
        daemon.control(d.directory, "checkpoint", background=True)
        for i in range(20, 40):  # while the child writes: into the next journal
            tm.put_page(pool, 1, i, page(i))
        deadline = time.monotonic() + 60
        while daemon.control(d.directory, "status")["snapshot_in_progress"]:
            assert time.monotonic() < deadline, "the background snapshot never finished"
            time.sleep(0.02)
        assert d.daemon.store.generation == generation + 1
        assert not (d.directory / NEXT_JOURNAL).exists()
        for i in range(40, 50):
            tm.put_page(pool, 1, i, page(i))
    d.restart()
    with SocketHypervisor(d.directory, 1) as hv:
        assert all(Tmem(hv).get_page(pool, 1, i) == page(i) for i in range(50))


@pytest.mark.parametrize("snapshot_arrived", [False, True])
def test_start_up_reads_both_journals_of_an_unfinished_rotation(
        tmp_path: Path, snapshot_arrived: bool) -> None:
    """A daemon killed while its child wrote a snapshot: without the snapshot, the journal
    then the next journal; with it (killed before the rename), the next journal alone."""
    store = _journal_with(tmp_path, 3)
    store.load()
    generation = store.rotate()
    for i in range(3, 5):
        store.append(Record(1, 38, (4096,), [(4096, bytes([i]) * 56)]))
    store.close()
    if snapshot_arrived:
        store.write_snapshot({"config": {"newer": True}}, generation)
    state, records = StateStore(tmp_path).load()
    assert [r.captures[0][1][0] for r in records] == ([3, 4] if snapshot_arrived else
                                                        [0, 1, 2, 3, 4])
    assert state["config"] == ({"newer": True} if snapshot_arrived else {})
