"""Faults: servers that stall, die mid-request and come back; malformed and hostile packets.

The "server" here is a real process (our xenstored via ``python -m xentmem.xenstore serve``, or
the real oxenstored), stopped with SIGSTOP and killed with SIGKILL. No test measures time: a
request against a stopped server must end in ``XenStoreTimeout`` (it waited its timeout, never
forever; pytest-timeout would catch a hang) and one pending when the server dies must end in
``XenStoreUnavailable`` (it returned as soon as the socket closed, not after the timeout).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from xentmem.errors import XenStoreError, XenStoreTimeout, XenStoreUnavailable
from xentmem.xenstore import Op, XenStoreClient
from xentmem.xenstore._wire import HEADER, pack
from xentmem.xenstore.testing import Oxenstored, RawClient, unavailable_reason

if TYPE_CHECKING:
    from conftest import Ours, ServerUnderTest


class Proc:
    """A xenstored process we may stop, kill and restart on the same socket path."""

    def __init__(self, kind: str, work: Path) -> None:
        self.kind = kind
        self.work = work
        self.path = ""
        self.pid = 0
        self._popen: subprocess.Popen[str] | None = None
        self._ox: Oxenstored | None = None

    def start(self) -> Proc:
        if self.kind == "ours":
            self.path = str(self.work / "socket")
            self._popen = subprocess.Popen(
                [sys.executable, "-m", "xentmem.xenstore", "serve", self.path],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert self._popen.stdout is not None
            assert self._popen.stdout.readline().strip() == "ready"
            self.pid = self._popen.pid
        else:
            self._ox = Oxenstored(self.work).start()
            self.path, self.pid = self._ox.socket_path, self._ox.pid or 0
        return self

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)
        if sig == signal.SIGSTOP:
            self._wait_all_threads_stopped()

    def _wait_all_threads_stopped(self) -> None:
        # kill() returns before the group stop completes; a thread still running could answer.
        for _ in range(2000):
            states = []
            for task in Path(f"/proc/{self.pid}/task").iterdir():
                with contextlib.suppress(OSError):
                    states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
            if states and all(s in "tT" for s in states):
                return
            threading.Event().wait(0.001)
        raise AssertionError(f"pid {self.pid} did not stop")

    def kill(self) -> None:
        # SIGKILL works on a stopped process; no SIGCONT first, or it would answer the request.
        if self._popen is not None:
            self._popen.kill()
            self._popen.wait(10)
            self._popen = None
        if self._ox is not None:
            self._ox.stop()
            self._ox = None


@pytest.fixture(params=["ours", pytest.param("oxenstored", marks=pytest.mark.oxenstored)])
def proc(request: pytest.FixtureRequest) -> Iterator[Proc]:
    if request.param == "oxenstored" and (reason := unavailable_reason()):
        pytest.skip(f"real oxenstored unavailable: {reason}")
    work = Path(tempfile.mkdtemp(prefix="xs-fault-", dir="/tmp"))
    p = Proc(request.param, work).start()
    yield p
    p.kill()


def test_stalled_server_times_out_then_recovers(proc: Proc) -> None:
    xs = XenStoreClient(proc.path, timeout=0.3)
    xs.write("/f/x", b"1")
    proc.signal(signal.SIGSTOP)
    try:
        with pytest.raises(XenStoreTimeout):
            xs.read("/f/x")
    finally:
        proc.signal(signal.SIGCONT)
    xs.timeout = 10.0  # generous from here on: a loaded machine must not fail the recovery
    assert xs.read("/f/x") == b"1"  # a fresh connection after the timeout
    xs.close()


def test_server_killed_mid_request_raises_unavailable(proc: Proc) -> None:
    xs = XenStoreClient(proc.path, timeout=30)  # long: the death must end the wait, not this
    xs.write("/f/x", b"1")
    proc.signal(signal.SIGSTOP)
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            xs.read("/f/x")
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=call)
    t.start()
    t.join(0.2)
    assert t.is_alive()  # the request is pending on the stopped server
    proc.kill()
    t.join(10)
    assert not t.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], XenStoreUnavailable)
    with pytest.raises(XenStoreUnavailable):
        xs.read("/f/x")  # nobody there: connection refused / socket gone
    xs.close()


def test_restarted_server_is_reconnected(proc: Proc) -> None:
    xs = XenStoreClient(proc.path, timeout=5)
    xs.write("/f/before", b"1")
    watch = xs.watch("/f/w")
    assert watch.get().path == "/f/w"
    tx = xs.transaction()
    proc.kill()
    proc.start()
    # The first call after the restart may or may not notice the old socket first; either
    # way the one after works on a new connection.
    with contextlib.suppress(XenStoreUnavailable):
        xs.write("/f/after", b"2")
    xs.write("/f/after", b"2")
    assert xs.read("/f/after") == b"2"
    assert xs.read("/f/before", None) is None  # state is not persistent
    with pytest.raises(XenStoreUnavailable):
        tx.write("/f/tx", b"1")  # the transaction died with its connection
    with pytest.raises(XenStoreUnavailable):
        watch.get()  # the loss is reported once ...
    assert watch.get().path == "/f/w"  # ... then the watch is re-armed: initial event
    xs.write("/f/w", b"3")
    assert watch.get().path == "/f/w"
    watch.close()
    xs.close()


def test_no_server_at_all(tmp_path: Path) -> None:
    xs = XenStoreClient(str(tmp_path / "nothing"), timeout=1)
    with pytest.raises(XenStoreUnavailable) as info:
        xs.read("/x")
    assert "cannot connect" in str(info.value)
    xs.close()
    with pytest.raises(XenStoreUnavailable):
        xs.read("/x")  # closed client


def test_server_that_never_reads(tmp_path: Path) -> None:
    """A fake server: listens, accepts, never reads or answers (a wedged daemon)."""
    path = str(tmp_path / "mute")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    try:
        xs = XenStoreClient(path, timeout=0.3)
        with pytest.raises(XenStoreTimeout):
            xs.read("/x")
        # Fill the socket buffers: the send itself must give up too.
        with pytest.raises((XenStoreTimeout, XenStoreUnavailable)):
            for _ in range(2000):
                xs.write("/x", b"v" * 2000)
        xs.close()
    finally:
        listener.close()


def test_server_answering_garbage(tmp_path: Path) -> None:
    """A fake server replying with a request id nobody asked for (pyxs issue #11: its router
    dies and the caller hangs forever) must give XenStoreUnavailable."""
    path = str(tmp_path / "liar")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            op, rq, tx, size = HEADER.unpack(conn.recv(16))
            conn.recv(size)
            conn.sendall(pack(op, rq + 12345, tx, b"nonsense"))
            conn.recv(1)  # wait for the client to hang up

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        xs = XenStoreClient(path, timeout=10)
        with pytest.raises(XenStoreUnavailable):
            xs.read("/x")
        xs.close()
    finally:
        listener.close()
        t.join(5)


# --- hostile packets: our server must answer or hang up, and keep serving everyone else -----


def _still_serving(path: str) -> None:
    with RawClient(path) as c:
        assert c.request(Op.WRITE, "/alive", b"yes") == (Op.WRITE, b"OK\0")
        assert c.request(Op.READ, "/alive") == (Op.READ, b"yes")


def _closed(c: RawClient) -> bool:
    c.sock.settimeout(2)
    try:
        return c.sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_oversized_header_gets_einval_and_hangup(ours: Ours) -> None:
    bystander = RawClient(ours.dom0_path)
    with RawClient(ours.dom0_path) as c:
        c.send_raw(HEADER.pack(Op.WRITE, 9, 0, 5000) + b"x" * 5000)
        assert c.recv_message() == (Op.ERROR, 9, 0, b"EINVAL\0")
        assert _closed(c)
    with RawClient(ours.dom0_path) as c:
        c.send_raw(HEADER.pack(Op.READ, 1, 0, 0xFFFFFFFF))
        assert c.recv_message()[3] == b"EINVAL\0"
        assert _closed(c)
    assert bystander.request(Op.READ, "/tool/xenstored")[0] == Op.READ
    bystander.close()
    _still_serving(ours.dom0_path)


def test_zero_length_and_partial_packets(ours: Ours) -> None:
    with RawClient(ours.dom0_path) as c:
        # oxenstored waits for more bytes before answering a zero-length request; we answer.
        c.send_raw(HEADER.pack(Op.READ, 1, 0, 0))
        assert c.recv_message() == (Op.ERROR, 1, 0, b"EINVAL\0")
        c.send_raw(HEADER.pack(Op.TRANSACTION_START, 2, 0, 0))
        op, _rq, _tx, body = c.recv_message()
        assert op == Op.TRANSACTION_START and body.rstrip(b"\0").isdigit()
    with RawClient(ours.dom0_path) as c:
        c.send_raw(b"\x02\x00\x00")  # a third of a header, then hang up
    with RawClient(ours.dom0_path) as c:
        c.send_raw(pack(Op.READ, 5, 0, b"/tool/xenstored\0")[:20])  # header + part of payload
    _still_serving(ours.dom0_path)


def test_random_garbage_never_stops_the_server(ours: Ours) -> None:
    import random

    rng = random.Random(4)
    bystander = RawClient(ours.dom0_path)
    for _ in range(40):
        with RawClient(ours.dom0_path, timeout=5) as c:
            blob = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
            op = rng.choice([*range(0, 30), 128, 0xFFFF])
            body = blob[: rng.randrange(len(blob) + 1)]
            with contextlib.suppress(OSError):
                c.send_raw(
                    HEADER.pack(op, rng.randrange(2**32), rng.randrange(3), len(body)) + body
                )
                c.send_raw(blob)  # then random bytes as the "next" header
        assert bystander.request(Op.GET_DOMAIN_PATH, "1") == (
            Op.GET_DOMAIN_PATH,
            b"/local/domain/1\0",
        )
    bystander.close()
    _still_serving(ours.dom0_path)


def test_client_not_reading_its_events_is_dropped(tmp_path: Path) -> None:
    from xentmem.xenstore import XenStoreServer

    server = XenStoreServer(str(tmp_path / "s"), max_output=64 * 1024).start()
    try:
        lazy = RawClient(server.path)
        lazy.request(Op.WATCH, "/spam", "t")  # and then never read again
        writer = XenStoreClient(server.path)
        for i in range(3000):
            writer.write(f"/spam/k{i % 10}", b"v" * 500)
        assert _closed_eventually(lazy)
        writer.write("/still", b"fine")
        writer.close()
    finally:
        server.stop()


def _closed_eventually(c: RawClient) -> bool:
    c.sock.settimeout(5)
    try:
        while c.sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def test_malformed_packets_do_not_stop_either_server(xs_server: ServerUnderTest) -> None:
    """The same hostile inputs against both: other clients must keep being served."""
    bystander = RawClient(xs_server.dom0_path)
    for payload in (b"/nonul", b"\0\0\0", b"", bytes(range(1, 200))):
        with RawClient(xs_server.dom0_path, timeout=5) as c:
            c.send_raw(HEADER.pack(Op.WRITE, 1, 0, len(payload)) + payload)
    with RawClient(xs_server.dom0_path, timeout=5) as c:
        c.send_raw(HEADER.pack(Op.READ, 1, 0, 4097) + b"x" * 4097)
        assert c.recv_message()[3] == b"EINVAL\0"  # both answer; ours also hangs up
    assert bystander.request(Op.READ, "/tool/xenstored")[0] == Op.READ
    bystander.close()


def test_error_type_mapping(ours: Ours) -> None:
    xs = ours.dom0
    with pytest.raises(XenStoreError) as info:
        xs.read("/a//b")
    assert info.value.errno == 22 and "EINVAL" in str(info.value)
    assert type(info.value) is XenStoreError


def test_messages_split_at_any_byte(ours: Ours) -> None:
    """Requests arriving in arbitrary pieces (even one byte at a time) are reassembled."""
    import time

    stream = (
        pack(Op.WRITE, 1, 0, b"/split/a\0hello")
        + pack(Op.READ, 2, 0, b"/split/a\0")
        + pack(Op.DIRECTORY, 3, 0, b"/split\0")
    )
    for cut in (1, 5, 16, 17, 29, 40):
        with RawClient(ours.dom0_path) as c:
            pieces = [stream[i : i + cut] for i in range(0, len(stream), cut)]
            for piece in pieces:
                c.send_raw(piece)
                time.sleep(0.0005)  # let the server see each piece on its own
            assert c.recv_message() == (Op.WRITE, 1, 0, b"OK\0")
            assert c.recv_message() == (Op.READ, 2, 0, b"hello")
            assert c.recv_message() == (Op.DIRECTORY, 3, 0, b"a\0")
