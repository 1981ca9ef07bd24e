"""What a hostile guest can do to the daemon through its own socket, ``hypercall.sock.domN``:
claim another domain, hold many connections, send huge or half-sent frames, never read its
replies, exhaust the daemon's descriptors. None of it ends the daemon or starves other
clients, and the memory it can make the daemon hold is bounded."""

from __future__ import annotations

import contextlib
import resource
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from xentmem.emulator import daemon
from xentmem.errors import TransportError
from xentmem.hypercalls import Tmem
from xentmem.hypercalls._wire import FRAME, HEAD, HELLO, HELLO_BODY, PROTOCOL
from xentmem.hypercalls.socket import HYPERCALL_SOCKET, SocketHypervisor


def guest_socket(directory: Path, domid: int) -> Path:
    return directory / f"{HYPERCALL_SOCKET}.dom{domid}"


def served(directory: Path) -> bool:
    """Dom0 on the owner's socket still gets an answer."""
    with SocketHypervisor(directory, 0, timeout=5) as hv:
        return hv.control("status")["pid"] > 0


def raw(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(path))
    return s


def hello(domid: int) -> bytes:
    body = HEAD.pack(HELLO, 0, 0) + HELLO_BODY.pack(PROTOCOL, domid)
    return FRAME.pack(len(body)) + body


def test_each_domain_has_its_socket_and_can_only_be_itself(make_daemon) -> None:
    d = make_daemon(guests=2)
    assert guest_socket(d.directory, 1).exists() and guest_socket(d.directory, 2).exists()
    for path in (guest_socket(d.directory, 1), d.directory / "hypercall.sock",
                 d.directory / "xenstore.sock", d.directory / "xenstore.sock.dom1"):
        assert path.stat().st_mode & 0o777 == 0o600, path
    with SocketHypervisor(guest_socket(d.directory, 1), 1) as hv:  # itself: served
        pool = Tmem(hv).new_pool(persistent=True)
        assert pool == 0
    for other in (0, 2):
        with pytest.raises(TransportError, match="domain 1's: it cannot act as domain"):
            SocketHypervisor(guest_socket(d.directory, 1), other)
    with SocketHypervisor(d.directory, 0) as hv:
        new = hv.control("create_domain", name="late", memory_mb=32, bare=True)["domid"]
        assert guest_socket(d.directory, new).exists()
        hv.control("destroy_domain", domid=new)
    assert not guest_socket(d.directory, new).exists()
    assert served(d.directory)


def test_a_guest_cannot_hold_every_connection(make_daemon) -> None:
    d = make_daemon(guests=1)
    socks = []
    try:
        for _ in range(daemon.GUEST_CONNECTIONS + 20):
            socks.append(raw(guest_socket(d.directory, 1)))
        time.sleep(0.2)  # let the daemon accept (and refuse) them all
        alive = 0
        for s in socks:
            with contextlib.suppress(OSError):  # a refused one is closed: EPIPE or EOF
                s.sendall(hello(1))
                alive += bool(s.recv(4096))
        assert alive == daemon.GUEST_CONNECTIONS
        assert served(d.directory)
    finally:
        for s in socks:
            s.close()


def test_oversized_and_half_sent_frames_are_bounded(make_daemon) -> None:
    d = make_daemon(guests=1)
    big = raw(guest_socket(d.directory, 1))
    big.sendall(struct.pack("<I", daemon.GUEST_MAX_FRAME + 1))
    assert b"bad message length" in big.recv(4096)  # refused at once, nothing buffered
    big.close()
    halves = []
    for _ in range(daemon.GUEST_CONNECTIONS):
        s = raw(guest_socket(d.directory, 1))
        s.sendall(struct.pack("<I", daemon.GUEST_MAX_FRAME) + b"x" * (1 << 20))
        halves.append(s)
    assert served(d.directory)
    buffered = sum(len(c.inbuf) for c in d.daemon._conns.values())
    assert buffered <= daemon.GUEST_CONNECTIONS * daemon.GUEST_MAX_FRAME
    for s in halves:
        s.close()


def test_a_client_that_never_reads_is_paused_then_dropped(make_daemon) -> None:
    d = make_daemon(guests=1)
    s = raw(guest_socket(d.directory, 1))
    s.sendall(hello(1))
    s.recv(4096)
    status = HEAD.pack(3, 0, 0) + b'{"cmd": "status"}'  # refused for a guest: small replies
    frame = FRAME.pack(len(status)) + status
    s.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 5
    with contextlib.suppress(BlockingIOError, BrokenPipeError, ConnectionResetError):
        while time.monotonic() < deadline:  # until the daemon stops reading us
            sent += s.send(frame * 64)
    conns = [c for c in d.daemon._conns.values() if c.bound == 1]
    assert all(len(c.out) <= daemon.GUEST_MAX_UNREAD for c in conns)
    assert served(d.directory)
    s.close()


def test_running_out_of_descriptors_pauses_accepting_and_serves_on(make_daemon) -> None:
    d = make_daemon(guests=1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held = []
    try:
        with SocketHypervisor(d.directory, 0, timeout=5) as dom0:
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
            with contextlib.suppress(OSError):
                while True:  # this process is the daemon's: use up its descriptors
                    held.append(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            for s in held[-4:]:  # free four for the client side of the connections below
                s.close()
            del held[-4:]
            waiting = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(4)]
            for w in waiting:
                w.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    w.connect(str(d.daemon.socket_path))  # accept() fails with EMFILE
            time.sleep(0.3)
            assert d.daemon.status()["accept_failures"] > 0
            assert dom0.control("status")["pid"]  # an open connection is still served
            for w in waiting:
                w.close()
        for s in held:
            s.close()
        held.clear()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        time.sleep(0.3)
        assert served(d.directory)  # and new ones are accepted again
        assert d.error is None
    finally:
        for s in held:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_full_backlog_makes_a_client_wait_not_fail_at_once(tmp_path: Path) -> None:
    from xentmem.hypercalls.socket import _connect

    path = str(tmp_path / "s")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(0)
    filled = []
    with contextlib.suppress(BlockingIOError):
        while True:  # fill the backlog (a daemon busy writing a snapshot)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            filled.append(s)
            s.connect(path)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(5)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        _connect(client, path, started + 0.3)
    assert time.monotonic() - started >= 0.3
    accepter = threading.Timer(0.2, lambda: [listener.accept() for _ in range(len(filled))])
    accepter.start()
    _connect(client, path, time.monotonic() + 5)  # the daemon accepts again: connected
    accepter.join()
    for s in [*filled, client, listener]:
        s.close()
