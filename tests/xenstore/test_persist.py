"""Our xenstored with ``state_dir``: the tree and the domains survive a restart and a SIGKILL.

A "crash" in process is a copy of the state directory taken while the server runs: exactly the
files a process killed at that instant leaves behind. One test kills a real process with SIGKILL.
"""

from __future__ import annotations

import errno
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from xentmem.errors import XenStoreError
from xentmem.xenstore import Perm, XenStoreClient, XenStoreServer
from xentmem.xenstore._persist import JOURNAL, SNAPSHOT
from xentmem.xenstore.server import XenStoreStateError


@pytest.fixture
def work() -> Iterator[Path]:
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="xs-persist-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


_servers: list[XenStoreServer] = []


def serve(work: Path, state: str = "state", name: str = "sock", **kw: object) -> XenStoreServer:
    server = XenStoreServer(work / name, state_dir=work / state, **kw).start()  # type: ignore[arg-type]
    _servers.append(server)
    return server


@pytest.fixture(autouse=True)
def _stop_servers() -> Iterator[None]:
    yield
    while _servers:
        _servers.pop().stop()


def crash_image(work: Path, state: str = "state") -> str:
    """What a SIGKILL at this instant leaves: a copy of the state directory."""
    copy = f"{state}-crash{len(list(work.iterdir()))}"
    shutil.copytree(work / state, work / copy)
    return copy


def image(server: XenStoreServer) -> tuple:
    """Everything that must survive: every node, the owner counts, domains and targets."""
    with server.lock:
        return (
            list(server.store.dump()),
            dict(server.store.entries),
            {domid: dom.target for domid, dom in server._domains.items()},
        )


# --- round trips ----------------------------------------------------------------------------


def test_nodes_perms_and_deletions_survive_a_restart(work: Path) -> None:
    first = serve(work)
    assert not first.restored
    xs = first.connect(0)
    xs.write("/tool/a/b/c", "deep")  # makes /tool/a and /tool/a/b on the way
    xs.write("/tool/bin", b"\x00\xff binary")
    xs.mkdir("/tool/empty")
    xs.set_perms("/tool/a", [Perm("n", 3), Perm("r", 4), Perm("b", 5)])
    xs.write("/tool/gone/x", "1")
    xs.rm("/tool/gone")
    xs.write("@odd/name", "special")  # one node, a child of "/" whose name holds a "/"
    xs.set_perms("@introduceDomain", [Perm("n", 0), Perm("r", 3)])
    xs.write("/tool/a/b/c", "changed")
    before = image(first)
    first.stop()
    second = serve(work, name="sock2")
    assert second.restored
    assert image(second) == before
    xs = second.connect(0)
    assert xs.read("/tool/a/b/c") == b"changed"
    assert xs.read("/tool/bin") == b"\x00\xff binary"
    assert xs.list("/tool/empty") == []
    assert xs.get_perms("/tool/a") == [Perm("n", 3), Perm("r", 4), Perm("b", 5)]
    assert xs.get_perms("/tool/a/b") == [Perm("n", 0)]  # made before the SET_PERMS: inherited
    assert not xs.exists("/tool/gone")
    assert xs.read("@odd/name") == b"special"
    assert xs.get_perms("@introduceDomain") == [Perm("n", 0), Perm("r", 3)]


def test_a_crash_keeps_everything_acknowledged(work: Path) -> None:
    server = serve(work)
    xs = server.connect(0)
    for i in range(50):
        xs.write(f"/tool/n{i % 7}/v{i}", str(i))
        if i % 5 == 4:
            xs.rm(f"/tool/n{(i - 4) % 7}")
    copy = crash_image(work)
    restored = serve(work, state=copy, name="sock2")
    assert restored.restored
    assert image(restored) == image(server)


def test_domains_come_back_with_their_sockets_and_targets(work: Path) -> None:
    server = serve(work)
    server.introduce_domain(5, "web", 1024, 2048)
    server.introduce_domain(6, "db", 2048, 4096)
    dom0 = XenStoreClient(server.path, timeout=5)
    dom0.introduce_domain(7, 1, 1)  # the wire INTRODUCE: a socket, no layout
    dom0.set_target(7, 5)
    dom0.close()
    guest = XenStoreClient(server.domain_socket(5), timeout=5)
    guest.write("data/used-kib", "512")  # a guest's report, through its own socket
    guest.close()
    xs = server.connect(0)
    xs.write("/local/domain/5/control/tmem/enabled", "1")
    xs.write("/tool/of6/x", "1")
    xs.set_perms("/tool/of6", [Perm("n", 6)])  # a node 6 owns outside its home
    xs.write("@of6/x", "1")
    xs.set_perms("@of6/x", [Perm("n", 6)])
    xs.set_perms("/tool", [Perm("n", 0), Perm("r", 6), Perm("r", 5)])
    server.release_domain(6)  # removes what 6 owns, and 6 from every ACL (oxenstored)
    assert not xs.exists("/tool/of6") and xs.get_perms("/tool") == [Perm("n", 0), Perm("r", 5)]
    copy = crash_image(work)

    again = serve(work, state=copy, name="sock2")
    assert again.restored
    assert again.domains == [0, 5, 7]
    assert image(again) == image(server)
    assert not os.path.exists(again.domain_socket(6))
    guest = XenStoreClient(again.domain_socket(5), timeout=5)
    try:
        assert guest.read("name") == b"web"  # its home, relative to it, as domain 5
        assert guest.read("data/used-kib") == b"512"
        assert guest.read("control/tmem/enabled") == b"1"
        assert guest.read("memory/target") == b"1024"
        guest.write("data/used-kib", "600")  # still its own to write
        with pytest.raises(XenStoreError):
            guest.read("/local/domain/0/name")
    finally:
        guest.close()
    # Domain 7 still has domain 5 as its SET_TARGET target: it may read 5's nodes.
    target = XenStoreClient(again.domain_socket(7), timeout=5)
    try:
        assert target.read("/local/domain/5/name") == b"web"
    finally:
        target.close()
    # introduce_domain of a restored domain is the caller's mistake, as before the restart.
    with pytest.raises(ValueError):
        again.introduce_domain(5, "web", 1024, 2048)


def test_only_committed_transactions_survive(work: Path) -> None:
    server = serve(work)
    xs = server.connect(0)
    other = server.connect(0)
    with xs.transaction() as tx:
        tx.write("/tool/tx/committed", "yes")
        tx.rm("/tool/xenstored")
    tx = xs.transaction()
    tx.write("/tool/tx/aborted", "no")
    tx.abort()
    # A commit after an outside change replays its log on the live tree: recorded the same.
    tx = xs.transaction()
    tx.write("/tool/tx/merged", "yes")
    other.write("/tool/tx/outside", "yes")
    assert tx.commit()
    # A conflicting one fails and leaves nothing.
    tx = xs.transaction()
    tx.read("/tool/tx/outside")
    tx.write("/tool/tx/conflicted", "no")
    other.write("/tool/tx/outside", "again")
    assert not tx.commit()
    open_tx = xs.transaction()  # still open at the crash
    open_tx.write("/tool/tx/open", "no")
    copy = crash_image(work)
    again = serve(work, state=copy, name="sock2")
    r = again.connect(0)
    assert r.list("/tool/tx") == ["committed", "merged", "outside"]
    assert r.read("/tool/tx/outside") == b"again"
    assert not r.exists("/tool/xenstored")
    assert image(again) == image(server)


def test_random_history_restores_exactly(work: Path) -> None:
    """Every kind of change, from dom0 and guests, in and out of transactions."""
    rnd = random.Random(1234)
    server = serve(work, sync=False)
    for domid in (1, 2, 3):
        server.introduce_domain(domid, f"g{domid}", 1024, 2048)
    clients = {d: server.connect(d) for d in (0, 1, 2, 3)}
    paths = [f"/local/domain/{d}/data/{n}" for d in (1, 2, 3) for n in ("a", "b", "c/d")]
    paths += ["/tool/x", "/tool/x/y", "/tool/z/w/v"]
    perms = [[Perm("n", 0)], [Perm("n", 1), Perm("r", 2)], [Perm("b", 3)], [Perm("w", 0)]]
    for step in range(300):
        domid = rnd.choice([0, 0, 1, 2, 3])
        xs = clients.get(domid)
        if xs is None:
            continue
        op = rnd.random()
        path = rnd.choice(paths)
        try:
            if op < 0.45:
                xs.write(path, f"v{step}")
            elif op < 0.55:
                xs.rm(path)
            elif op < 0.62:
                xs.mkdir(path)
            elif op < 0.70:
                xs.set_perms(path, rnd.choice(perms))
            elif op < 0.90:
                tx = xs.transaction()
                for _ in range(rnd.randint(1, 4)):
                    p = rnd.choice(paths)
                    if rnd.random() < 0.7:
                        tx.write(p, f"t{step}")
                    else:
                        tx.rm(p)
                if rnd.random() < 0.2:
                    clients[0].write(rnd.choice(paths), f"o{step}")  # force the replay path
                tx.commit() if rnd.random() < 0.8 else tx.abort()
            elif op < 0.95:
                clients[0].set_target(rnd.choice([1, 2, 3]), rnd.choice([1, 2, 3]))
            elif step % 3 == 0 and domid:
                server.release_domain(domid)
                del clients[domid]
        except XenStoreError:
            pass
    copy = crash_image(work)
    before = image(server)
    assert serve(work, state=copy, name="sock2").restored
    assert image(_servers[-1]) == before
    server.stop()  # a clean stop: snapshot only
    assert os.path.getsize(work / "state" / JOURNAL) == 16  # just the head
    assert image(serve(work, name="sock3")) == before


# --- a real SIGKILL ---------------------------------------------------------------------------

_CHILD = """
import sys, threading
from xentmem.xenstore import XenStoreServer
XenStoreServer(sys.argv[1], state_dir=sys.argv[2]).start()
print("ready", flush=True)
threading.Event().wait()
"""


def test_sigkill_right_after_the_last_reply_loses_nothing(work: Path) -> None:
    sock, state = str(work / "child.sock"), str(work / "state")
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, sock, state], stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready and proc.stdout.readline().strip() == "ready"
        dom0 = XenStoreClient(sock, timeout=10)
        dom0.introduce_domain(9, 1, 1)
        dom0.write("/local/domain/9", "")
        dom0.set_perms("/local/domain/9", [Perm("n", 9)])
        guest = XenStoreClient(sock + ".dom9", timeout=10)
        with dom0.transaction() as tx:
            tx.write("/tool/tx", "committed")
        n = 200
        for i in range(n):
            (guest if i % 2 else dom0).write(f"/local/domain/9/data/k{i}", f"value-{i}")
        os.kill(proc.pid, signal.SIGKILL)  # the last reply has been read: acknowledged
        assert proc.wait(10) == -signal.SIGKILL
        guest.close()
        dom0.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    server = serve(work, name="after")
    assert server.restored and server.domains == [0, 9]
    xs = server.connect(0)
    assert xs.read("/tool/tx") == b"committed"
    assert all(xs.read(f"/local/domain/9/data/k{i}") == f"value-{i}".encode() for i in range(n))
    assert xs.get_perms("/local/domain/9/data/k1") == [Perm("n", 9)]
    assert server.store.owned(9) == n + 2  # quotas count what the guest owns, as before


# --- damaged files ----------------------------------------------------------------------------


def _journal_with_records(work: Path, n: int) -> tuple[str, list[int]]:
    """A crash image whose journal holds ``n`` one-write records; where each record ends."""
    server = serve(work, sync=False)
    xs = server.connect(0)
    ends = []
    for i in range(n):
        xs.write(f"/tool/k{i}", f"value-{i}")
        ends.append(os.path.getsize(work / "state" / JOURNAL))
    return crash_image(work), ends


def test_a_torn_last_record_is_dropped(work: Path) -> None:
    copy, ends = _journal_with_records(work, 5)
    journal = work / copy / JOURNAL
    os.truncate(journal, ends[-1] - 3)  # a kill in the middle of appending the fifth
    server = serve(work, state=copy, name="sock2")
    xs = server.connect(0)
    assert [xs.read(f"/tool/k{i}") for i in range(4)] == [f"value-{i}".encode() for i in range(4)]
    assert not xs.exists("/tool/k4")
    xs.write("/tool/after", "1")  # and the journal goes on from there
    assert serve(work, state=crash_image(work, copy), name="sock3").connect(0).read("/tool/after")


@pytest.mark.parametrize("tail", ["head", "zeros", "crc"])
def test_other_torn_tails(work: Path, tail: str) -> None:
    copy, ends = _journal_with_records(work, 3)
    journal = work / copy / JOURNAL
    if tail == "head":  # cut inside the 12-byte frame head
        os.truncate(journal, ends[-2] + 5)
    elif tail == "zeros":  # a power cut: the file grew, its data never arrived
        with open(journal, "ab") as f:
            f.write(b"\0" * 100)
    else:  # the last record's payload damaged, nothing after it
        data = bytearray(journal.read_bytes())
        data[-2] ^= 0xFF
        journal.write_bytes(bytes(data))
    xs = serve(work, state=copy, name="sock2").connect(0)
    assert xs.read("/tool/k1") == b"value-1"
    assert xs.exists("/tool/k2") == (tail == "zeros")


@pytest.mark.parametrize("damage", ["payload", "header", "magic", "generation", "snapshot"])
def test_damage_elsewhere_is_a_clear_error(work: Path, damage: str) -> None:
    copy, ends = _journal_with_records(work, 4)
    journal, snapshot = work / copy / JOURNAL, work / copy / SNAPSHOT
    data = bytearray(journal.read_bytes())
    if damage == "payload":
        data[ends[1] - 2] ^= 0xFF  # the second of four records
    elif damage == "header":
        data[ends[1]] ^= 0xFF  # the length of the third
    elif damage == "magic":
        data[0:4] = b"JUNK"
    elif damage == "generation":
        data[8] += 1  # a journal extending a snapshot we do not have
    else:
        snap = bytearray(snapshot.read_bytes())
        snap[-5] ^= 0xFF
        snapshot.write_bytes(bytes(snap))
    journal.write_bytes(bytes(data))
    untouched = journal.read_bytes(), snapshot.read_bytes()
    server = XenStoreServer(work / "sock2", state_dir=work / copy)
    with pytest.raises(XenStoreStateError) as info:
        server.start()
    assert isinstance(info.value, ValueError) and isinstance(info.value, XenStoreError)
    assert copy in str(info.value)
    assert (journal.read_bytes(), snapshot.read_bytes()) == untouched  # left for a human
    assert not os.path.exists(work / "sock2")


def test_a_journal_that_does_not_fit_its_snapshot_is_refused(work: Path) -> None:
    copy, _ends = _journal_with_records(work, 2)
    # A snapshot of the same generation (the first) from a server without /tool: the
    # journal's records create /tool/k0 and /tool/k1, whose parent it does not have.
    other = XenStoreServer(work / "sock2", state_dir=work / "other")
    other.connect(0).rm("/tool")
    other.start()
    _servers.append(other)
    shutil.copy(work / "other" / SNAPSHOT, work / copy / SNAPSHOT)
    with pytest.raises(XenStoreStateError, match="does not apply"):
        XenStoreServer(work / "sock3", state_dir=work / copy).start()


def test_a_stale_journal_is_ignored(work: Path) -> None:
    """A crash after a new snapshot but before its journal: the old journal's records are in
    the snapshot already."""
    server = serve(work, sync=False)
    xs = server.connect(0)
    xs.write("/tool/a", "1")
    old_journal = (work / "state" / JOURNAL).read_bytes()
    xs.rm("/tool/a")
    server.stop()  # snapshot generation 2, without /tool/a
    (work / "state" / JOURNAL).write_bytes(old_journal)  # generation 1, writes /tool/a
    assert not serve(work, name="sock2").connect(0).exists("/tool/a")


def test_a_journal_without_its_snapshot_is_refused(work: Path) -> None:
    (work / "state").mkdir()
    (work / "state" / JOURNAL).write_bytes(b"")
    with pytest.raises(XenStoreStateError, match="not a state this server wrote"):
        XenStoreServer(work / "sock", state_dir=work / "state").start()


# --- the journal's life -----------------------------------------------------------------------


def test_the_journal_is_folded_into_a_snapshot_past_its_limit(work: Path) -> None:
    server = serve(work, sync=False, journal_limit=4096)
    xs = server.connect(0)
    sizes = []
    for i in range(300):
        xs.write(f"/tool/k{i % 20}", "x" * 100 + str(i))
        sizes.append(os.path.getsize(work / "state" / JOURNAL))
    assert max(sizes) <= 4096 and min(sizes[50:]) < 1024  # it was started again, more than once
    assert image(serve(work, state=crash_image(work), name="sock2")) == image(server)


def test_start_writes_a_fresh_snapshot_and_an_empty_journal(work: Path) -> None:
    server = serve(work)
    server.connect(0).write("/tool/a", "1")
    assert os.path.getsize(work / "state" / JOURNAL) > 16
    copy = crash_image(work)
    serve(work, state=copy, name="sock2")
    assert os.path.getsize(work / copy / JOURNAL) == 16
    assert not os.path.exists(work / copy / (SNAPSHOT + ".tmp"))


def test_changes_before_start_are_kept_or_refused(work: Path) -> None:
    fresh = XenStoreServer(work / "sock", state_dir=work / "state")
    fresh.connect(0).write("/tool/early", "1")
    fresh.introduce_domain(4, "early", 1024, 2048)
    fresh.start()
    _servers.append(fresh)
    assert not fresh.restored
    fresh.stop()
    # The same object again: what it changed while stopped is saved, nothing reloaded.
    fresh.connect(0).write("/tool/while-stopped", "1")
    fresh.start()
    fresh.stop()
    later = serve(work, name="sock2")
    assert later.domains == [0, 4]
    assert later.connect(0).read("/tool/while-stopped") == b"1"
    later.stop()
    # A new object changed before start() must not drop those changes on the floor.
    changed = XenStoreServer(work / "sock3", state_dir=work / "state")
    changed.connect(0).write("/tool/conflict", "1")
    with pytest.raises(RuntimeError, match="holds a saved xenstore"):
        changed.start()


def test_without_state_dir_nothing_is_written(work: Path) -> None:
    server = XenStoreServer(work / "sock").start()
    try:
        server.connect(0).write("/tool/a", "1")
        assert server.store.effects is None and not server.restored
    finally:
        server.stop()
    assert sorted(os.listdir(work)) == []


def test_a_failed_journal_write_is_not_acknowledged_and_heals(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve(work)
    xs = server.connect(0)
    xs.write("/tool/before", "1")
    real = os.fdatasync
    calls = []

    def failing(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(errno.EIO, "simulated disk error")
        real(fd)

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(XenStoreError) as info:
        xs.write("/tool/unacknowledged", "1")
    assert info.value.errno == errno.EIO
    xs.write("/tool/after", "1")  # the next commit writes a whole snapshot instead
    monkeypatch.undo()
    again = serve(work, state=crash_image(work), name="sock2")
    assert image(again) == image(server)  # the failed write happened in memory: kept too
    assert again.connect(0).read("/tool/after") == b"1"
