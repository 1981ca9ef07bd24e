"""No guest can take our xenstored down or make it hold unbounded memory (issue 12).

Each test plays one attack on real sockets and checks that the attacker alone pays for it: the
excess connections are refused, the flood is throttled or dropped, accept errors rest the
listener without spinning or filling the log, and dom0 and the other guests are served
throughout. Limits are the documented defaults (``ConnectionLimits()``) unless a test says.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from xentmem.xenstore import ConnectionLimits, Op, XenStoreClient, XenStoreServer
from xentmem.xenstore._loop import RECV_SIZE
from xentmem.xenstore._wire import HEADER, HEADER_SIZE, PAYLOAD_MAX, pack
from xentmem.xenstore.testing import RawClient

LIMITS = ConnectionLimits()
MAX_MESSAGE = HEADER_SIZE + PAYLOAD_MAX


def _short_tmp() -> Path:
    return Path(tempfile.mkdtemp(prefix="xs-lim-", dir="/tmp"))  # AF_UNIX paths are short


@pytest.fixture
def server() -> Iterator[XenStoreServer]:
    s = XenStoreServer(str(_short_tmp() / "xs")).start()
    for domid in (1, 2):
        s.introduce_domain(domid, f"guest{domid}", 524288, 1048576)
    yield s
    s.stop()


def _until(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Wait for a state of the server (not a sleep standing in for one)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def _served(path: str) -> bool:
    with RawClient(path, timeout=2) as c:
        return c.request(Op.GET_DOMAIN_PATH, "7") == (Op.GET_DOMAIN_PATH, b"/local/domain/7\0")


def _refused(c: RawClient) -> bool:
    try:
        c.request(Op.GET_DOMAIN_PATH, "7")
    except (ConnectionError, BrokenPipeError):
        return True
    return False


def _held(server: XenStoreServer, domid: int) -> int:
    """Bytes the server buffers for ``domid``'s connections, both ways."""
    with server.lock:
        return sum(len(c.out) + len(c.inbuf) for c in server._domains[domid].conns)


# --- connections -------------------------------------------------------------------------------


def test_a_guest_past_its_connection_limit_is_refused_while_others_are_served(
    server: XenStoreServer,
) -> None:
    assert LIMITS.connections == 32 and server.dom0_limits.connections > 32
    guest = server.domain_socket(1)
    clients = [RawClient(guest, timeout=5) for _ in range(LIMITS.connections + 8)]
    try:
        served = [not _refused(c) for c in clients]
        assert served == [True] * LIMITS.connections + [False] * 8
        assert _served(server.path) and _served(server.domain_socket(2))
        assert all(not _refused(c) for c in clients[:3])  # the first 32 are kept
        # A freed slot is taken again.
        clients[0].close()
        _until(lambda: server._domains[1].sockets < LIMITS.connections, "the close")
        assert _served(guest)
    finally:
        for c in clients:
            c.close()


def test_dom0_may_open_more_connections_than_a_guest(server: XenStoreServer) -> None:
    clients = [RawClient(server.path, timeout=5) for _ in range(LIMITS.connections + 8)]
    try:
        assert not any(_refused(c) for c in clients)
    finally:
        for c in clients:
            c.close()


# --- accept errors -----------------------------------------------------------------------------


class _FailingListener:
    """A listener whose accept() fails with ``errno`` while ``failing``, counting the calls."""

    def __init__(self, real: socket.socket, err: int) -> None:
        self.real, self.err = real, err
        self.failing = True
        self.calls = 0

    def accept(self):
        self.calls += 1
        if self.failing:
            raise OSError(self.err, os.strerror(self.err))
        return self.real.accept()

    def fileno(self) -> int:
        return self.real.fileno()

    def close(self) -> None:
        self.real.close()


@pytest.mark.parametrize("err", [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])
def test_accept_out_of_resources_rests_the_listener_without_spinning(
    server: XenStoreServer, err: int, caplog: pytest.LogCaptureFixture
) -> None:
    dom = server._domains[1]
    with server.lock:
        fake = _FailingListener(dom.listener, err)  # type: ignore[arg-type]
        dom.listener = fake  # type: ignore[assignment]
    waiting = [socket.socket(socket.AF_UNIX) for _ in range(3)]
    try:
        with caplog.at_level(logging.WARNING, "xentmem.xenstore"):
            for s in waiting:
                s.connect(server.domain_socket(1))  # queued: the listener stays readable
            _until(lambda: fake.calls >= 3, "three attempts (one per 100 ms)")
            assert _served(server.path) and _served(server.domain_socket(2))  # meanwhile
            with server.lock:
                fake.failing = False
                calls = fake.calls
            assert calls <= 10  # a spinning loop makes thousands
            waiting[0].sendall(pack(Op.GET_DOMAIN_PATH, 1, 0, b"7\0"))
            waiting[0].settimeout(5)
            assert waiting[0].recv(4096)[HEADER_SIZE:] == b"/local/domain/7\0"
        lines = [r for r in caplog.records if "cannot accept" in r.getMessage()]
        assert len(lines) == 1 and not lines[0].exc_info  # one line, no traceback
        assert os.strerror(err) in lines[0].getMessage()
    finally:
        for s in waiting:
            s.close()


_SERVE = [sys.executable, "-m", "xentmem.xenstore", "serve"]


def _server_process(work: Path, nofile: int, domains: int) -> tuple[subprocess.Popen, Path]:
    log = work / "log"
    doms = [a for d in range(1, domains + 1) for a in ("--domain", f"{d}:g{d}:524288:1048576")]

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with log.open("wb") as err:
        proc = subprocess.Popen([*_SERVE, str(work / "xs"), *doms], stdout=subprocess.PIPE,
                                stderr=err, preexec_fn=limit)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    return proc, log


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_fd_exhaustion_keeps_the_server_serving_with_a_quiet_log() -> None:
    work = _short_tmp()
    probe, _ = _server_process(work, 1024, 3)  # how many fds a started server holds
    base = len(os.listdir(f"/proc/{probe.pid}/fd"))
    probe.terminate()
    probe.wait(10)
    nofile = base + 40  # room for one guest's 32 and a few more, not for two guests
    proc, log = _server_process(work, nofile, 3)
    sock = str(work / "xs")
    guests: list[socket.socket] = []
    try:
        dom0 = XenStoreClient(sock, timeout=5)
        assert dom0.read("/local/domain/1/name") == b"g1"
        for domid in (1, 2):
            for _ in range(LIMITS.connections):
                s = socket.socket(socket.AF_UNIX)
                s.settimeout(5)
                s.connect(f"{sock}.dom{domid}")  # past the fds they wait in the backlog
                guests.append(s)
        _until(lambda: b"cannot accept" in log.read_bytes(), "EMFILE on accept")
        cpu = _cpu_seconds(proc.pid)
        time.sleep(0.5)  # a measurement window: a loop spinning on the listener burns it all
        assert _cpu_seconds(proc.pid) - cpu < 0.1
        for _ in range(3):  # the open connections are served all along
            assert dom0.read("/local/domain/2/name") == b"g2"
        for s in guests[LIMITS.connections - 10 :]:  # guest 2 gives up, guest 1 closes ten
            s.close()
        third = XenStoreClient(f"{sock}.dom3", timeout=5)  # accepted once fds are free again
        assert third.read("name") == b"g3"
        third.close()
        dom0.close()
        assert proc.poll() is None
        lines = log.read_text().splitlines()
        assert 1 <= len(lines) <= 4, lines  # one per listener, not one per attempt
        assert not any("Traceback" in line for line in lines)
    finally:
        for s in guests:
            s.close()
        proc.terminate()
        assert proc.wait(10) == 0


# --- unread replies ----------------------------------------------------------------------------

_BIG = b"x" * 2048  # the largest value a guest may write (Quota.max_value)


def _read_flood(path: str, n: int = 2000) -> bytes:
    req = b"data/big\0"
    return (HEADER.pack(Op.READ, 1, 0, len(req)) + req) * n


def test_a_client_that_never_reads_is_paused_and_bounded(server: XenStoreServer) -> None:
    guest = XenStoreClient(server.domain_socket(1))
    guest.write("data/big", _BIG)
    flooder = socket.socket(socket.AF_UNIX)
    flooder.connect(server.domain_socket(1))
    flood = _read_flood("data/big")
    sent = [0]

    def send() -> None:
        with contextlib.suppress(OSError):  # until the test closes it
            while True:
                sent[0] += flooder.send(flood)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    try:

        def paused() -> bool:
            with server.lock:
                return any(c.paused for c in server._domains[1].conns if c.sock is not None)

        _until(paused, "back-pressure on the flooder")
        # While it is paused, the others are served at once, the same guest included.
        for path in (server.path, server.domain_socket(2), server.domain_socket(1)):
            t = time.monotonic()
            assert _served(path)
            assert time.monotonic() - t < 0.5
        assert guest.read("data/big") == _BIG
        # The server holds one pause's worth of replies (plus the reply that crossed it) and at
        # most one recv() of its requests, however long the flood goes on.
        bound = LIMITS.pause_at + 2 * MAX_MESSAGE + RECV_SIZE + MAX_MESSAGE
        before = sent[0]
        for _ in range(20):
            assert _held(server, 1) <= bound
        _until(lambda: sent[0] == before or not thread.is_alive(), "the flooder to block")
        assert sent[0] < 4 << 20  # the kernel's buffers and ours, not the whole flood
    finally:
        flooder.shutdown(socket.SHUT_RDWR)  # close() would wait for the blocked send()
        flooder.close()
        thread.join(5)
        guest.close()
    _until(lambda: _held(server, 1) == 0, "the flooder's buffers to go")


def test_a_paused_client_that_reads_again_gets_every_reply(server: XenStoreServer) -> None:
    XenStoreClient(server.domain_socket(1)).write("data/big", _BIG)
    n = 500  # about 1 MiB of replies: several pauses and resumptions
    with RawClient(server.domain_socket(1), timeout=5) as c:
        sender = threading.Thread(target=c.send_raw, args=(_read_flood("data/big", n),))
        sender.start()
        for _ in range(n):
            op, _rq, _tx, body = c.recv_message()
            assert (op, body) == (Op.READ, _BIG)
        sender.join(5)
        assert c.request(Op.GET_DOMAIN_PATH, "7")[1] == b"/local/domain/7\0"


def _hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_guest_flooding_every_connection_cannot_grow_the_server() -> None:
    """The attack of issue 12 (150 connections sending READs, never reading: 33 MiB -> 1 GiB),
    against a server process: its peak RSS stays within the documented bound."""
    work = _short_tmp()
    proc, _log = _server_process(work, 4096, 2)
    try:
        guest = f"{work}/xs.dom1"
        with XenStoreClient(guest) as g:
            g.write("data/big", _BIG)
        start = _hwm_kib(proc.pid)
        # Per connection, as many READs as the old 8 MiB cap on unsent bytes let through.
        flood = _read_flood("data/big", (8 << 20) // (HEADER_SIZE + len(_BIG)) - 100)
        left = {}
        for _ in range(LIMITS.connections + 18):
            s = socket.socket(socket.AF_UNIX)
            s.connect(guest)
            s.setblocking(False)
            left[s] = memoryview(flood)
        deadline = time.monotonic() + 1.0  # a measurement window, not a synchronisation
        while time.monotonic() < deadline and any(left.values()):
            for s, rest in left.items():
                with contextlib.suppress(OSError):  # EAGAIN; EPIPE once refused or dropped
                    left[s] = rest[s.send(rest[:RECV_SIZE]) :]
        t = time.monotonic()
        assert _served(str(work / "xs")) and _served(f"{work}/xs.dom2")
        assert time.monotonic() - t < 0.5
        grown = _hwm_kib(proc.pid) - start
        bound = LIMITS.domain_unread + LIMITS.connections * (LIMITS.pause_at + RECV_SIZE
                                                             + 3 * MAX_MESSAGE)  # fmt: skip
        # Before the limits: 8 MiB a connection, over 150 MiB within this window.
        assert grown * 1024 < bound + (16 << 20), f"server RSS grew by {grown} KiB"
        for s in left:
            s.close()
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_a_partial_request_is_held_whole_and_no_more(server: XenStoreServer) -> None:
    with RawClient(server.domain_socket(1), timeout=5) as c:
        c.send_raw(HEADER.pack(Op.WRITE, 1, 0, PAYLOAD_MAX) + b"x" * (PAYLOAD_MAX - 1))
        _until(lambda: _held(server, 1) == MAX_MESSAGE - 1, "the partial request")
        c.send_raw(b"\0")  # completes it: dispatched (EINVAL: no NUL after the path)
        assert c.recv_message()[3] == b"EINVAL\0"
        assert _held(server, 1) == 0
        c.send_raw(HEADER.pack(Op.WRITE, 2, 0, PAYLOAD_MAX + 1))  # longer than any request
        assert c.recv_message()[3] == b"EINVAL\0"
        assert c.sock.recv(1) == b""  # and hung up on


# --- watch events ------------------------------------------------------------------------------


def test_too_many_pending_watch_events_drop_only_that_connection(
    server: XenStoreServer, caplog: pytest.LogCaptureFixture
) -> None:
    lazy = RawClient(server.domain_socket(1), timeout=5)
    lazy.request(Op.WATCH, "data", "lazy")  # then never reads again
    patient = RawClient(server.path, timeout=5)  # dom0: reads, but only after the burst
    patient.request(Op.WATCH, "/local/domain/1/data", "patient")
    writer = RawClient(server.domain_socket(1), timeout=5)
    n = 30000  # small events: the kernel's buffer holds thousands, then they stay unsent
    with caplog.at_level(logging.WARNING, "xentmem.xenstore"):
        burst = b"".join(pack(Op.WRITE, i, 0, b"data/k\0v") for i in range(n))
        threading.Thread(target=writer.send_raw, args=(burst,), daemon=True).start()
        for _ in range(n):
            assert writer.recv_message()[3] == b"OK\0"
        assert writer.request(Op.GET_DOMAIN_PATH, "7")[1] == b"/local/domain/7\0"
    lazy.sock.settimeout(5)
    with contextlib.suppress(ConnectionResetError):
        while lazy.sock.recv(1 << 16):
            pass  # what was sent before the drop, then EOF
    dropped = [r.getMessage() for r in caplog.records if "does not read" in r.getMessage()]
    assert len(dropped) == 1 and "dom1" in dropped[0]
    unsent, events = map(int, re.search(r"(\d+) bytes, (\d+) watch events", dropped[0]).groups())
    assert events > LIMITS.watch_events and unsent < LIMITS.max_unread  # the count, not the bytes
    # The patient dom0 watcher was not dropped: it gets all n events (+ the initial one).
    got = len(patient.events)
    while got < n + 1:
        patient.next_event()
        got += 1
    assert _served(server.path)
    for c in (lazy, patient, writer):
        c.close()


# --- bugs --------------------------------------------------------------------------------------


def test_a_bug_serving_one_connection_drops_it_alone_and_logs_once(
    server: XenStoreServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = server._loop.dispatch

    def buggy(conn, op, rq_id, tx_id, payload):
        if op == 999:
            raise RuntimeError("a bug")
        return real(conn, op, rq_id, tx_id, payload)

    monkeypatch.setattr(server._loop, "dispatch", buggy)
    with caplog.at_level(logging.WARNING, "xentmem.xenstore"):
        for _ in range(5):
            with RawClient(server.domain_socket(1), timeout=5) as c:
                c.send_raw(pack(999, 1, 0, b""))
                assert c.sock.recv(1) == b""  # dropped
            assert _served(server.domain_socket(1)) and _served(server.path)
    lines = [r for r in caplog.records if "internal error" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is not None  # the first, with its traceback


def test_a_dying_event_loop_is_logged_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = XenStoreServer(str(_short_tmp() / "xs")).start()

    def broken() -> None:
        raise RuntimeError("a bug in the loop itself")

    with caplog.at_level(logging.WARNING, "xentmem.xenstore"):
        monkeypatch.setattr(server._loop, "flush_dirty", broken)
        server._loop.wake()  # the loop wakes up, and dies
        thread = server._loop._thread
        assert thread is not None
        thread.join(5)
        assert not thread.is_alive()
    died = [r for r in caplog.records if "event loop died" in r.getMessage()]
    assert len(died) == 1 and died[0].levelno == logging.CRITICAL and died[0].exc_info
    server.stop()
    assert not os.path.exists(server.path)


# --- configuration -----------------------------------------------------------------------------


def test_limits_are_configurable_and_checked(tmp_path: Path) -> None:
    small = ConnectionLimits(connections=2)
    with XenStoreServer(str(_short_tmp() / "xs"), limits=small) as s:
        s.introduce_domain(1, "one", 1024, 2048)
        clients = [RawClient(s.domain_socket(1), timeout=5) for _ in range(3)]
        assert [_refused(c) for c in clients] == [False, False, True]
        for c in clients:
            c.close()
    assert XenStoreServer("x", max_output=64 << 10).limits.max_unread == 64 << 10
    assert XenStoreServer("x", max_output=64 << 10).limits.pause_at <= 32 << 10
    with pytest.raises(ValueError):
        ConnectionLimits(pause_at=2 << 20, max_unread=1 << 20)
    with pytest.raises(ValueError):
        ConnectionLimits(connections=0)


def test_the_handler_table_is_named_after_the_ops(server: XenStoreServer) -> None:
    table = server._handlers.table
    assert set(table) == set(Op) - {Op.WATCH_EVENT, Op.ERROR, Op.GET_FEATURE, Op.SET_FEATURE,
                                    Op.GET_QUOTA, Op.SET_QUOTA}  # fmt: skip
    for op, handler in table.items():
        name = "restrict" if op == Op.RESTRICT_LEGACY else op.name.lower()
        assert handler.__name__ == f"op_{name}"
