"""``SocketHypervisor`` against the daemon: the typed client gets exactly what it gets from the
in-process ``EmulatedHypervisor``; a dead or hung daemon and garbage on the socket are handled."""

from __future__ import annotations

import os
import random
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from xentmem.abi import PAGE_SIZE, TMEM_OP_GEN, Hypercall, TmemCmd
from xentmem.emulator import EmulatedHost
from xentmem.emulator.transport import EmulatedHypervisor
from xentmem.errors import EmulatorError, HostCrashed, TmemError, TransportError
from xentmem.hypercalls import Hypervisor, Tmem
from xentmem.hypercalls import _wire as wire
from xentmem.hypercalls.socket import HYPERCALL_SOCKET, SocketHypervisor


def page(i: int) -> bytes:
    return bytes([i % 251]) * 2048 + i.to_bytes(4, "little") * 512


def outcome(call: Callable[[], Any]) -> Any:
    """A call's value, or its error as (class, errno, message)."""
    try:
        return call()
    except (TmemError, EmulatorError, ValueError) as exc:
        return (type(exc).__name__, getattr(exc, "errno", None), str(exc))


def script(dom0: Hypervisor, guest: Hypervisor, version: str) -> list[Any]:
    """Guest data path, control plane and error paths, each step's outcome recorded."""
    g, c = Tmem(guest), Tmem(dom0)
    out: list[Any] = [g.version, c.version]
    pers = g.new_pool(persistent=True)
    eph = g.new_pool(persistent=False)
    out += [pers, eph]
    for i in range(20):
        out.append(outcome(lambda i=i: g.put_page(pers, (i % 3, 1, 2), i, page(i))))
        out.append(outcome(lambda i=i: g.put_page(eph, 5, i, page(i + 100))))
    out += [outcome(lambda i=i: g.get_page(pers, (i % 3, 1, 2), i)) for i in range(0, 22, 3)]
    out += [outcome(lambda i=i: g.get_page(eph, 5, i)) for i in range(0, 22, 4)]
    out.append(outcome(lambda: g.get_page(eph, 5, 0)))  # private ephemeral GET is destructive
    frame = guest.alloc_frame()  # the frame ops: the guest's page is the frame
    frame.write(page(200))
    out.append(outcome(lambda: g.put_page_from(pers, 8, 8, frame)))
    frame.write(bytes(PAGE_SIZE))
    out += [outcome(lambda: g.get_page_to(pers, 8, 8, frame)), frame.read()]
    out += [outcome(lambda: g.get_page_to(pers, 8, 9, frame)), frame.read()]  # a miss
    frame.close()
    out.append(outcome(lambda: g.flush_page(pers, (1, 1, 2), 1)))
    out.append(outcome(lambda: g.flush_object(pers, (2, 1, 2))))
    out.append(outcome(lambda: g.put_page(9, 1, 1, page(1))))  # no such pool
    out.append(outcome(lambda: g.get_page(14, 1, 1)))
    out.append(g.put_pages(pers, [(77, i, page(i)) for i in range(70)]))
    out.append(g.get_pages(pers, [(77, i) for i in range(0, 75, 5)]))
    landed = bytearray(b"\x5a" * (200 * PAGE_SIZE))  # two batches; hits, misses, bulk runs
    out.append(g.get_pages_into(pers, [(77, i) for i in range(60, 260)], landed))
    out.append(bytes(landed))
    out.append(outcome(lambda: c.list()))
    out.append(outcome(lambda: c.list(long=True)))
    out.append(outcome(lambda: g.list()))  # a guest may not use the control plane
    out.append(outcome(lambda: c.freeze(1)))
    out.append(outcome(lambda: g.put_page(pers, 1, 1, page(3))))  # -EFROZEN
    out.append(outcome(lambda: c.thaw(1)))
    out.append(outcome(lambda: c.set_client(1, weight=7, compress=True)))
    out.append(outcome(lambda: c.client_info(1)))
    out.append(outcome(lambda: c.freeable_mb()))
    out.append(outcome(lambda: c.flush_kib(64)))
    out.append(outcome(lambda: [vars(p) for p in c.pools(1)]))
    # bad pointers: the struct outside the domain's RAM, a cmfn that is no RAM frame
    out.append(outcome(lambda: guest.hypercall(Hypercall.tmem_op, 0x10)))
    out.append(outcome(lambda: g.issue(TMEM_OP_GEN.pack(TmemCmd.TMEM_PUT_PAGE, pers, 1, 0, 0,
                                                        1, 0, 0, 0, 0xFFFFFF))))
    out.append(outcome(lambda: guest.hypercall(99, 1, 2)))  # no such hypercall
    out.append(outcome(lambda: g.destroy_pool(eph)))
    out.append(outcome(lambda: g.destroy_pool(eph)))
    out.append(outcome(lambda: c.list(long=True)))
    g.close()
    c.close()
    return out


@pytest.mark.parametrize("version", ["4.5", "4.12"])
def test_socket_and_in_process_give_the_same_results(make_daemon, version):
    host = EmulatedHost(512, xen_version=version)
    host.create_domain("guest1", 64, 128)
    expected = script(EmulatedHypervisor(host, 0), EmulatedHypervisor(host, 1), version)

    d = make_daemon(xen_version=version, memory_mb=512, guests=1, guest_memory_mb=64)
    with SocketHypervisor(d.directory, 0) as dom0, SocketHypervisor(d.directory, 1) as guest:
        got = script(dom0, guest, version)
    assert got == expected
    assert any(isinstance(x, tuple) and x[0] == "TmemFrozen" for x in got)  # errors compared


def test_buffers_live_in_the_domain_and_are_freed_with_the_connection(make_daemon):
    d = make_daemon(guests=1)
    dom = d.daemon.host.domains[1]
    with SocketHypervisor(d.directory, 1) as hv:
        buf = hv.alloc_buffer(100)
        frame = hv.alloc_frame()
        buf.write(b"hello", 10)
        frame.write(b"f" * PAGE_SIZE)
        assert buf.read(5, 10) == b"hello"  # the mirror, before any request
        hv.hypercall(Hypercall.xen_version, 0, 0)  # the writes ride along
        assert dom.mem[buf.address + 10:buf.address + 15] == b"hello"
        assert dom.mem[frame.number * PAGE_SIZE:(frame.number + 1) * PAGE_SIZE] == \
            b"f" * PAGE_SIZE
        with pytest.raises(ValueError):
            buf.write(b"x" * 101)
        taken = bytes(dom.avail)
        frame.close()
        hv.hypercall(Hypercall.xen_version, 0, 0)
        assert bytes(dom.avail) != taken  # the free rode along too
    # hanging up frees every buffer and frame the connection held
    before = b"\0" + bytes(dom.populated[1:])  # every RAM frame but the null page
    hv = SocketHypervisor(d.directory, 1)
    hv.alloc_buffer(3 * PAGE_SIZE)
    hv.alloc_frame()
    assert bytes(dom.avail) != before
    hv.close()
    deadline = time.monotonic() + 10
    while bytes(dom.avail) != before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert bytes(dom.avail) == before


def _start_save_crash(dom0: Tmem, guest: Tmem, buf: int) -> None:
    """ref §9.1 (real 4.12.4): an invalidation during a live save leaves a stale list that the
    next SAVE_END dereferences: the hypervisor crashes."""
    p = guest.new_pool(persistent=True)
    for i in range(3):
        guest.put_page(p, 1, i, page(i))
    dom0.control("SAVE_BEGIN", cli_id=1, arg2=1)
    with pytest.raises(TmemError):
        guest.flush_page(p, 1, 1)  # -EFROZEN, but the flush happened
    dom0.control("SAVE_GET_NEXT_INV", cli_id=1, arg1=32, buf=buf)
    dom0.control("SAVE_END", cli_id=1)
    dom0.control("SAVE_BEGIN", cli_id=1, arg2=0)
    dom0.control("SAVE_END", cli_id=1)


def test_host_crash_reaches_the_client_as_host_crashed(make_daemon):
    d = make_daemon(guests=1)
    with SocketHypervisor(d.directory, 0) as hv0, SocketHypervisor(d.directory, 1) as hv1:
        dom0, guest = Tmem(hv0), Tmem(hv1)
        buf = hv0.alloc_buffer(PAGE_SIZE)
        with pytest.raises(HostCrashed, match=r"SAVE_END.*every domain is gone"):
            _start_save_crash(dom0, guest, buf.address)
        with pytest.raises(HostCrashed):  # every later call, on every connection
            guest.put_page(0, 1, 1, page(1))
        info = hv0.control("status")
    assert info["crashed"] and info["domains"] == []
    assert d.daemon.xenstore.domains == [0]  # the guests left xenstore
    with pytest.raises(HostCrashed):
        SocketHypervisor(d.directory, 1)
    assert "booted a new one" in d.restart().note  # down + up: the machine comes back empty
    assert sorted(d.daemon.host.domains) == [0]


def test_no_daemon_and_hung_daemon_give_transport_error_quickly(state_dir: Path):
    with pytest.raises(TransportError, match="no emulator daemon"):
        SocketHypervisor(state_dir / "nothing.sock", timeout=1)
    # a fake hung daemon: a socket that accepts (backlog) but never answers
    path = state_dir / "hung.sock"
    hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hung.bind(str(path))
    hung.listen(4)
    try:
        with pytest.raises(TransportError, match=r"did not answer within 0\.2 s"):
            SocketHypervisor(path, timeout=0.2)
    finally:
        hung.close()


def test_daemon_gone_mid_session(make_daemon):
    d = make_daemon(guests=1)
    hv = SocketHypervisor(d.directory, 1, timeout=2)
    tm = Tmem(hv)
    d.stop()
    with pytest.raises(TransportError):
        tm.put_page(0, 1, 1, page(1))
    with pytest.raises(TransportError, match="closed"):  # and it stays closed
        hv.hypercall(Hypercall.xen_version, 0, 0)


def _raw(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(path))
    return s


def _roundtrip(s: socket.socket, body: bytes) -> bytes:
    s.sendall(wire.FRAME.pack(len(body)) + body)
    head = b""
    while len(head) < 4:
        chunk = s.recv(4 - len(head))
        if not chunk:
            return b""
        head += chunk
    (size,) = wire.FRAME.unpack(head)
    data = b""
    while len(data) < size:
        data += s.recv(size - len(data))
    return data


def _hello(domid: int = 1) -> bytes:
    return wire.HEAD.pack(wire.HELLO, 0, 0) + wire.HELLO_BODY.pack(wire.PROTOCOL, domid)


def test_garbage_on_the_socket_gets_an_error_and_others_are_still_served(make_daemon):
    d = make_daemon(guests=1)
    good = Tmem(SocketHypervisor(d.directory, 1))
    pool = good.new_pool(persistent=True)
    good.put_page(pool, 1, 1, page(1))
    sock_path = d.daemon.socket_path

    s = _raw(sock_path)  # a request before HELLO: refused, connection closed
    assert _roundtrip(s, wire.HEAD.pack(wire.CALL, 0, 0))[0] == wire.REFUSED
    assert s.recv(10) == b""
    s = _raw(sock_path)  # random bytes with an absurd length
    s.sendall(os.urandom(64) + b"\xff\xff\xff\xff")
    s.close()
    s = _raw(sock_path)  # announced too big: refused and closed
    s.sendall(wire.FRAME.pack(wire.MAX_FRAME + 1))
    reply = s.recv(100)
    assert reply[4] == wire.REFUSED and b"length" in reply
    s = _raw(sock_path)  # HELLO for a domain that does not exist
    assert _roundtrip(s, _hello(42))[0] == wire.EMULATOR
    s = _raw(sock_path)
    assert _roundtrip(s, _hello())[0] == wire.OK
    bad = [
        wire.HEAD.pack(wire.CALL, 0, 0)[:2],  # truncated header
        wire.HEAD.pack(9, 0, 0),  # unknown kind
        wire.HEAD.pack(wire.CALL, 0, 1) + wire.CHUNK.pack(0x5000, 4) + b"evil"  # not a buffer
        + wire.CALL_HEAD.pack(38, 0),
        wire.HEAD.pack(wire.CALL, 1, 0) + wire.ADDR.pack(0x5000),  # free of nothing
        wire.HEAD.pack(wire.ALLOC, 0, 0) + wire.ALLOC_BODY.pack(0, 0, 0),
        wire.HEAD.pack(wire.ALLOC, 0, 0) + wire.ALLOC_BODY.pack(1, 9000, 0),
        wire.HEAD.pack(wire.CALL, 0, 0) + wire.CALL_HEAD.pack(38, 3) + b"\0" * 5,
        wire.HEAD.pack(wire.CONTROL, 0, 0) + b"{}",  # host API: dom0 only
        wire.HEAD.pack(wire.HELLO, 0, 0) + wire.HELLO_BODY.pack(wire.PROTOCOL, 0),  # twice
    ]
    for body in bad:
        reply = _roundtrip(s, body)
        assert reply[0] == wire.REFUSED, body
    # a raw hypercall with a bad pointer is guest input: Xen's errno, not an error reply
    reply = _roundtrip(s, wire.HEAD.pack(wire.CALL, 0, 0) + wire.CALL_HEAD.pack(38, 1)
                       + struct.pack("<Q", 0x10))
    assert reply[0] == wire.OK and wire.CALL_REPLY.unpack_from(reply, 1)[0] == -14
    s.close()
    assert good.get_page(pool, 1, 1) == page(1)  # still served, nothing changed
    assert "Pp:1," in Tmem(SocketHypervisor(d.directory, 0)).list(1)


def test_uri_parsing(state_dir: Path):
    with pytest.raises(ValueError, match="unknown emulator URI parameter"):
        SocketHypervisor.from_uri(f"{state_dir}?dom=3")
    with pytest.raises(ValueError, match="domid=N"):
        SocketHypervisor.from_uri(f"{state_dir}?domid=x")
    with pytest.raises(ValueError, match="positive"):
        SocketHypervisor.from_uri("?timeout=0")
    with pytest.raises(TransportError, match=str(state_dir / HYPERCALL_SOCKET)):
        SocketHypervisor.from_uri(f"{state_dir}?domid=3&timeout=1")


def test_malformed_host_api_requests_are_refused(make_daemon):
    d = make_daemon()
    s = _raw(d.daemon.socket_path)
    assert _roundtrip(s, _hello(0))[0] == wire.OK
    for payload in (b"5", b"[]", b"{", b'{"cmd": "reboot"}', b'{"cmd": "create_domain"}',
                    b'{"cmd": "destroy_domain", "domid": "zero"}', b"\xff\xfe"):
        reply = _roundtrip(s, wire.HEAD.pack(wire.CONTROL, 0, 0) + payload)
        assert reply[0] == wire.REFUSED, payload
    reply = _roundtrip(s, wire.HEAD.pack(wire.CONTROL, 0, 0) + b'{"cmd": "destroy_domain", '
                       b'"domid": 0}')
    assert reply[0] == wire.EMULATOR and b"cannot be destroyed" in reply
    s.close()
    with SocketHypervisor(d.directory, 0) as hv:
        assert hv.control("status")["domains"][0]["name"] == "Domain-0"


def test_a_destroyed_domain_ends_its_connections(make_daemon):
    d = make_daemon(guests=2)
    guest = Tmem(SocketHypervisor(d.directory, 2))
    pool = guest.new_pool(persistent=True)
    guest.put_page(pool, 1, 1, page(1))
    with SocketHypervisor(d.directory, 0) as hv0:
        hv0.control("destroy_domain", domid=2)
        with pytest.raises(EmulatorError, match="no domain 2"):
            hv0.control("destroy_domain", domid=2)
    with pytest.raises(EmulatorError, match="domain 2 no longer exists"):
        guest.put_page(pool, 1, 2, page(2))
    with pytest.raises(TransportError):
        guest.get_page(pool, 1, 1)
    with pytest.raises(EmulatorError, match="no domain 2"):
        SocketHypervisor(d.directory, 2)


def test_random_requests_never_take_the_daemon_down(make_daemon):
    """300 random bodies after a valid HELLO (seeded): each gets a reply with a known status
    or the connection is closed, and the daemon keeps serving."""
    d = make_daemon(guests=1)
    rng = random.Random(1234)
    s = _raw(d.daemon.socket_path)
    assert _roundtrip(s, _hello())[0] == wire.OK
    statuses = set()
    for _ in range(300):
        kind = rng.choice([wire.ALLOC, wire.CALL, wire.CONTROL, rng.randrange(256)])
        body = wire.HEAD.pack(kind, rng.choice([0, 0, 1, 70000 % 65536]), rng.choice([0, 0, 1]))
        body += rng.randbytes(rng.randrange(0, 64))
        reply = _roundtrip(s, body)
        if not reply:  # closed: start over
            s = _raw(d.daemon.socket_path)
            assert _roundtrip(s, _hello())[0] == wire.OK
            continue
        assert reply[0] in (wire.OK, wire.REFUSED, wire.EMULATOR), reply
        statuses.add(reply[0])
    assert wire.REFUSED in statuses
    with SocketHypervisor(d.directory, 1) as hv:
        tm = Tmem(hv)
        pool = tm.new_pool(persistent=True)
        tm.put_page(pool, 1, 1, page(1))
        assert tm.get_page(pool, 1, 1) == page(1)


def test_a_reply_carries_only_the_frames_the_hypervisor_wrote(make_daemon):
    """The daemon sends back the regions the hypervisor wrote during the call (its log-dirty
    frames), not every region of the connection: a single GET after a batch brings back one
    frame, not the 128-frame batch run."""
    d = make_daemon(guests=1)
    with SocketHypervisor(d.directory, 1) as hv:
        tm = Tmem(hv)
        pool = tm.new_pool(persistent=True)
        assert tm.put_pages(pool, [(1, i, page(i)) for i in range(200)]) == [1] * 200
        replies: list[bytes] = []
        request = hv._request

        def spy(kind: int, body: bytes) -> bytes:
            replies.append(request(kind, body))
            return replies[-1]

        hv._request = spy  # type: ignore[method-assign]
        assert tm.get_page(pool, 1, 3) == page(3)
        assert wire.CALL_REPLY.unpack_from(replies[-1]) == (1, 1)  # a hit, one region back
        assert len(replies[-1]) < 2 * PAGE_SIZE
        tm.put_page(pool, 1, 500, page(500))  # a PUT writes nothing of the guest's
        assert wire.CALL_REPLY.unpack_from(replies[-1]) == (1, 0)
        out = bytearray(3 * PAGE_SIZE)
        assert tm.get_pages_into(pool, [(1, 7), (1, 500), (1, 999)], out) == [1, 1, 0]
        assert bytes(out[:2 * PAGE_SIZE]) == page(7) + page(500)
