"""RAMster on plain guest models: its wire format, its cluster layer refusing bad frames
without harm, its configuration, and random schedules of put/get/flush/remotify/kill."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xentmem.errors import GuestError
from xentmem.guest import Guest, Ramster, SysfsView
from xentmem.guest.backends import _r2net as net
from xentmem.guest.backends.ramster import SYSFS_DIR
from xentmem.guest.backends.zcache import compress

FAST = {"heartbeat_s": 0.05, "dead_s": 0.6, "get_timeout_s": 0.6, "remotify_above": 0,
        "repatriate_below": 0}


def _eventually(check, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def pair(mode: str = "durable", **params) -> tuple[Guest, Ramster, Guest, Ramster]:
    """A memory server (node 0) and a client (node 1) that remotifies to it."""
    srv, cli = Guest("server", memory_mb=64), Guest("client", memory_mb=64)
    srv.swapon(64)
    cli.swapon(4096)
    rs = Ramster(node=0, mode=mode, **{**FAST, **params})
    srv.load_backend(rs)
    rc = Ramster(node=1, nodes={0: f"127.0.0.1:{rs.address.port}"}, target=0, mode=mode,
                 **{**FAST, **params})
    cli.load_backend(rc)
    rs.set_nodes(f"0=127.0.0.1:{rs.address.port} 1=127.0.0.1:{rc.address.port}")
    assert _eventually(lambda: rc.node.alive(0) and rs.node.alive(1))
    return srv, rs, cli, rc


def _close(*guests: Guest) -> None:
    for g in guests:
        if isinstance(g.backend, Ramster):
            g.backend.shutdown()


# -- the wire -----------------------------------------------------------------------------------

@pytest.mark.parametrize("type", sorted(net.MSG_NAMES))
def test_every_message_type_round_trips_through_the_header(type: int) -> None:
    low, _ = net._SIZES[type]
    payload = bytes(range(256))[:1] * low
    frame = net.encode(type, 7, payload, msg_id=2**63, status=-2)
    h = net.decode_header(frame[:net.HEADER.size])
    assert (h.type, h.sender, h.msg_id, h.status, h.length) == (type, 7, 2**63, -2, low)
    assert frame[net.HEADER.size:] == payload


@pytest.mark.parametrize("mutate, why", [
    (lambda f: b"XXXX" + f[4:], "magic"),
    (lambda f: f[:4] + b"\x02" + f[5:], "wire version 2"),
    (lambda f: f[:5] + b"\x63" + f[6:], "unknown message type 99"),
    (lambda f: f[:10] + b"\x00\x08" + f[12:], "sender node 8"),
    (lambda f: f[:20] + (10_000).to_bytes(4, "big") + f[24:], "10000-byte payload"),
    (lambda f: f[:20] + (3).to_bytes(4, "big") + f[24:], "3-byte payload"),
    (lambda f: f[:27], "a header is 28 bytes"),
])
def test_bad_headers_are_refused_with_the_reason(mutate, why: str) -> None:
    frame = net.encode(net.FLUSH, 1, bytes(net.KEY.size))
    with pytest.raises(net.FrameError, match=why):
        net.decode_header(mutate(frame)[:net.HEADER.size])


@pytest.mark.parametrize("text, why", [
    ("0=127.0.0.1", "NUM=HOST:PORT"), ("x=h:1", "NUM=HOST:PORT"), ("8=h:1", "0..7"),
    ("0=h:70000", "ports"), ("0=h:1 0=h:2", "given twice"), ("0", "NUM=HOST:PORT"),
])
def test_bad_node_lists_are_refused(text: str, why: str) -> None:
    with pytest.raises(GuestError, match=why):
        net.parse_nodes(text)


def test_node_list_parses_both_forms() -> None:
    nodes = net.parse_nodes("0=127.0.0.1:7800, 3=10.0.0.2:7803")
    assert [str(a) for a in nodes.values()] == ["0=127.0.0.1:7800", "3=10.0.0.2:7803"]
    assert net.parse_nodes({1: "h:2"}) == {1: net.NodeAddress(1, "h", 2)}


# -- the cluster layer against raw frames -------------------------------------------------------

@pytest.fixture
def server() -> Iterator[Ramster]:
    g = Guest("server", memory_mb=64)
    rs = Ramster(node=0, nodes="0=127.0.0.1:0 1=127.0.0.1:1", **FAST)
    g.load_backend(rs)
    yield rs
    rs.shutdown()


def _raw(rs: Ramster) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", rs.address.port), timeout=2)
    return s


def _hello(node: int, cluster: bytes = b"ramster") -> bytes:
    return net.encode(net.MSG_HELLO, node, net.HELLO.pack(1234) + cluster)


def _read_frame(s: socket.socket) -> tuple[net.Header, bytes]:
    buf = b""
    while len(buf) < net.HEADER.size:
        buf += s.recv(net.HEADER.size - len(buf))
    h = net.decode_header(buf)
    body = b""
    while len(body) < h.length:
        body += s.recv(h.length - len(body))
    return h, body


def _closed(s: socket.socket) -> bool:
    try:
        while True:
            if not s.recv(4096):
                return True
    except (TimeoutError, ConnectionResetError):
        return False


PUT = net.KEY.pack(5, 1, 0, 0, 9) + compress(b"\x01" * 4096)


@pytest.mark.parametrize("frames", [
    [b"GET / HTTP/1.0\r\n\r\n" + bytes(20)],                             # not r2net at all
    [_hello(1, b"another")],                                              # another cluster
    [net.encode(net.PUT_PERS, 1, PUT, msg_id=1)],                         # before its HELLO
    [_hello(1), net.encode(net.PUT_PERS, 2, PUT, msg_id=1)],              # claims another node
    [_hello(1), net.encode(net.PUT_PERS, 1, PUT, msg_id=1)[:-1] + b"\x00"],  # crc mismatch
], ids=["garbage", "cluster", "no-hello", "sender", "crc"])
def test_bad_frames_close_the_link_and_change_nothing(server: Ramster, frames) -> None:
    s = _raw(server)
    for f in frames:
        s.sendall(f)
    assert _closed(s)
    assert _eventually(lambda: server.stats()["bad_frames"] == 1 and not server.node.alive(1))
    assert server.engine.foreign == {}
    s2 = _raw(server)  # and the node still serves a well-behaved peer
    s2.sendall(_hello(1) + net.encode(net.PUT_PERS, 1, PUT, msg_id=42))
    replies = [_read_frame(s2) for _ in range(2)]
    assert [h.type for h, _ in replies] == [net.MSG_HELLO, net.MSG_STATUS]
    assert replies[1][0].msg_id == 42 and replies[1][0].status == 0
    assert server.stats()["foreign_pers_pages"] == 1  # its foreign pool, created on demand
    s2.sendall(net.encode(net.ASYNC_GET_AND_FREE_REQUEST, 1, PUT[:net.KEY.size], msg_id=43))
    h, body = _read_frame(s2)
    assert (h.type, h.msg_id, h.status, body) == (net.ASYNC_GET_REPLY, 43, 0, PUT)
    s2.sendall(net.encode(net.ASYNC_GET_REQUEST, 1, PUT[:net.KEY.size], msg_id=44))
    h, body = _read_frame(s2)
    assert (h.status, body) == (-2, PUT[:net.KEY.size])  # -ENOENT: freed by the last get
    s.close()
    s2.close()


def test_a_torn_frame_is_dropped_after_the_dead_time(server: Ramster) -> None:
    s = _raw(server)
    s.sendall(_hello(1) + net.encode(net.PUT_PERS, 1, PUT, msg_id=1)[:40])
    assert _closed(s) and server.engine.foreign == {}


# -- configuration ------------------------------------------------------------------------------

@pytest.mark.parametrize("params, why", [
    ({"mode": "fast"}, "mode"), ({"node": 8}, "0..7"), ({"target": 0}, "not another node"),
    ({"nodes": "1=h:1", "target": 2}, "not another node"),
    ({"remotify_above": 10, "repatriate_below": 20}, "repatriate_below"),
    ({"dead_s": 0.1, "heartbeat_s": 0.5}, "heartbeat"),
])
def test_bad_parameters_are_refused(params, why: str) -> None:
    g = Guest("g", memory_mb=32)
    with pytest.raises(GuestError, match=why):
        g.load_backend(Ramster(**params))
    assert g.backend is None


def test_sysfs_configuration_refuses_bad_writes_and_changes_nothing() -> None:
    srv, _, cli, _ = pair()
    try:
        view = SysfsView(cli)
        target, nodes = (view.read(f"{SYSFS_DIR}/ramster_remote_target_nodenum"),
                         view.read(f"{SYSFS_DIR}/ramster_nodes"))
        for path, bad in (("ramster_remote_target_nodenum", "1"),  # itself
                          ("ramster_remote_target_nodenum", "5"),
                          ("ramster_remote_target_nodenum", "zero"),
                          ("ramster_nodes", "0=127.0.0.1:1"),       # drops this node
                          ("ramster_nodes", "1=127.0.0.1:1"),       # drops the target
                          ("ramster_node", "3")):                   # read-only
            with pytest.raises(GuestError):
                view.write(f"{SYSFS_DIR}/{path}", bad)
        assert view.read(f"{SYSFS_DIR}/ramster_remote_target_nodenum") == target == "0\n"
        assert view.read(f"{SYSFS_DIR}/ramster_nodes") == nodes
        assert view.read(f"{SYSFS_DIR}/ramster_mode") == "durable\n"
    finally:
        _close(srv, cli)


def test_cleancache_pages_go_remote_and_die_as_misses() -> None:
    srv, rs, cli, rc = pair(mode="faithful")
    try:
        cli.mount("data")
        for i in range(50):
            cli.read_file("data", 1, i)
        cli.drop_caches()
        assert rc.remotify() == 50 and rc.sync()
        assert rs.stats()["foreign_eph_pages"] == 50
        assert cli.read_file("data", 1, 0) == "cleancache"  # fetched from the server
        rs.shutdown()
        assert _eventually(lambda: not rc.node.alive(0))
        assert cli.read_file("data", 1, 1) == "disk"  # a miss, not a loss
        assert rc.stats()["dropped_eph_pages"] == 49 and rc.stats()["lost_pers_pages"] == 0
        assert cli.stats.stale == 0
    finally:
        _close(srv, cli)


def test_the_selfshrinker_repatriates_when_local_memory_allows() -> None:
    srv, rs, cli, rc = pair(repatriate_below=100, remotify_above=100, selfshrink=True)
    try:
        pids = cli.alloc_anon(500)
        for p in pids:
            cli.swap_out(p)
        rc.remotify_above = 0
        assert rc.remotify() == 500 and rc.sync()
        rc.remotify_above = 100
        assert rc.stats()["remote_pers_pages"] == 500
        cli.tick(10.0)  # the selfshrinker's interval
        assert rc.sync()
        st = rc.stats()
        assert st["repatriated_pages"] == 500 and st["remote_pers_pages"] == 0
        assert _eventually(lambda: rs.stats()["foreign_pers_pages"] == 0)
        rs.shutdown()
        cli.verify_anon()  # all local again: the server's death costs nothing
        assert cli.stats.lost == cli.stats.stale == 0 and cli.stats.disk_reads == 0
    finally:
        _close(srv, cli)


# -- random schedules ---------------------------------------------------------------------------

OPS = st.one_of(
    st.tuples(st.sampled_from(["write", "swapout", "read", "free"]), st.integers(0, 23)),
    st.tuples(st.sampled_from(["remotify", "sync", "repatriate", "kill"]), st.just(0)),
)


def _run_schedule(mode: str, ops: list[tuple[str, int]]) -> None:
    srv, rs, cli, rc = pair(mode=mode, repatriate_below=100, remotify_above=100)
    rc.remotify_above = rc.repatriate_below = 0
    try:
        pids = cli.alloc_anon(24)
        killed = False
        for op, i in ops:
            pid = pids[i]
            if op == "write":
                cli.write_anon(pid)
            elif op == "swapout":
                cli.swap_out(pid)
            elif op == "read":
                cli.read_anon(pid)
            elif op == "free":
                cli.free_anon(pid)
            elif op == "remotify":
                rc.remotify()
            elif op == "sync":
                rc.sync()
            elif op == "repatriate":
                rc.engine.repatriate(8, 1 << 30)
            elif not killed:
                rc.sync()
                remote_before = rc.stats()["remote_pers_pages"]
                rs.shutdown()
                killed = True
                assert _eventually(lambda: rc.stats()["remote_pers_pages"] == 0)  # resolved
                lost = rc.stats()["lost_pers_pages"]
                assert lost == (remote_before if mode == "faithful" else 0)
        assert rc.sync()
        if not killed:  # the server mirrors what the client believes it holds
            assert _eventually(lambda: rs.stats()["foreign_pers_pages"]
                               == rc.stats()["remote_pers_pages"])
        cli.verify_anon()
        assert cli.stats.stale == 0
        if mode == "durable":
            assert cli.stats.lost == 0
        else:  # never more lost than counted (a freed lost page is never read)
            assert cli.stats.lost <= rc.stats()["lost_pers_pages"]
    finally:
        _close(srv, cli)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["faithful", "durable"]), st.lists(OPS, max_size=60))
def test_random_schedules_never_go_stale_and_lose_only_what_they_count(mode, ops) -> None:
    _run_schedule(mode, ops)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["faithful", "durable"]), st.lists(OPS, max_size=300))
def test_random_schedules_long(mode, ops) -> None:
    _run_schedule(mode, ops)
