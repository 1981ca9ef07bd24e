"""r2net: RAMster's cluster layer (after ocfs2's o2net node manager, heartbeat and TCP
messaging), between the nodes of one cluster over TCP.

A frame is a 28-byte header in network byte order and a payload::

    magic    4s  b"RMSR"
    version  B   WIRE_VERSION; any other version is refused
    type     B   one of MSG_*
    status   i   0, or -errno in a STATUS or ASYNC_GET_REPLY
    sender   H   the sender's node number (must be the one its HELLO named)
    msg_id   Q   a request's id; its STATUS / ASYNC_GET_REPLY echoes it
    length   I   payload bytes, at most MAX_PAYLOAD
    crc      I   crc32 of the payload

The net layer's own messages are HELLO (first frame on a connection: the node's incarnation and
the cluster name), KEEPALIVE and STATUS (o2net's status reply). RAMster's eight messages carry
a tmem key (pool, 3 x u64 object id, index) and, for puts and replies, the compressed page.

A connection delivers frames in order and one reader thread per connection hands them to the
node's handler one at a time, so everything one node sends another is applied in the order
sent. A frame that does not parse (bad magic, version, type, length, crc, sender) closes its
connection at once: the stream cannot be trusted past it, and nothing of it is applied.

Liveness (the heartbeat): every node sends KEEPALIVE to every configured peer each
``heartbeat_s``; a peer heard from before is declared dead when nothing came from it for
``dead_s`` or when a connection to it breaks. The handler is told once per death; a dead peer
that answers again (a reconnect with HELLO) is alive again, with its incarnation.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import socket
import struct
import threading
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from xentmem.abi import PAGE_SIZE
from xentmem.errors import GuestError

__all__ = [
    "KEY",
    "MAX_NODES",
    "MSG_NAMES",
    "FrameError",
    "Header",
    "Node",
    "NodeAddress",
    "decode_header",
    "encode",
    "new_incarnation",
    "parse_nodes",
]

log = logging.getLogger(__name__)

MAGIC = b"RMSR"
WIRE_VERSION = 1
HEADER = struct.Struct("!4sBBiHQII")
KEY = struct.Struct("!I3QI")  # pool, oid[3], index
OBJ = struct.Struct("!I3Q")  # pool, oid[3]
POOL = struct.Struct("!I")
HELLO = struct.Struct("!Q")  # incarnation; the cluster name follows
MAX_NODES = 8
MAX_NAME = 64
# lz4's bound for one page is 4096 + 4096/255 + 16 = 4128 bytes; a put carries a key and it
MAX_DATA = PAGE_SIZE + PAGE_SIZE // 255 + 16
MAX_PAYLOAD = KEY.size + MAX_DATA

MSG_HELLO, MSG_KEEPALIVE, MSG_STATUS = 1, 2, 3
PUT_EPH, PUT_PERS, ASYNC_GET_REQUEST, ASYNC_GET_AND_FREE_REQUEST = 16, 17, 18, 19
ASYNC_GET_REPLY, FLUSH, FLOBJ, DESTROY_POOL = 20, 21, 22, 23
MSG_NAMES = {MSG_HELLO: "HELLO", MSG_KEEPALIVE: "KEEPALIVE", MSG_STATUS: "STATUS",
             PUT_EPH: "PUT_EPH", PUT_PERS: "PUT_PERS", ASYNC_GET_REQUEST: "ASYNC_GET_REQUEST",
             ASYNC_GET_AND_FREE_REQUEST: "ASYNC_GET_AND_FREE_REQUEST",
             ASYNC_GET_REPLY: "ASYNC_GET_REPLY", FLUSH: "FLUSH", FLOBJ: "FLOBJ",
             DESTROY_POOL: "DESTROY_POOL"}
# (smallest, largest) payload of each type
_SIZES = {MSG_HELLO: (HELLO.size + 1, HELLO.size + MAX_NAME), MSG_KEEPALIVE: (0, 0),
          MSG_STATUS: (0, 0), PUT_EPH: (KEY.size + 1, MAX_PAYLOAD),
          PUT_PERS: (KEY.size + 1, MAX_PAYLOAD), ASYNC_GET_REQUEST: (KEY.size, KEY.size),
          ASYNC_GET_AND_FREE_REQUEST: (KEY.size, KEY.size),
          ASYNC_GET_REPLY: (KEY.size, MAX_PAYLOAD), FLUSH: (KEY.size, KEY.size),
          FLOBJ: (OBJ.size, OBJ.size), DESTROY_POOL: (POOL.size, POOL.size)}
_RECV = 1 << 16


class FrameError(ValueError):
    """A frame that does not parse; its connection is closed."""


@dataclass(frozen=True, slots=True)
class Header:
    type: int
    status: int
    sender: int
    msg_id: int
    length: int
    crc: int


def encode(type: int, sender: int, payload: bytes = b"", *, msg_id: int = 0,
           status: int = 0) -> bytes:
    """One frame."""
    return HEADER.pack(MAGIC, WIRE_VERSION, type, status, sender, msg_id, len(payload),
                       zlib.crc32(payload)) + payload


def decode_header(untrusted: bytes) -> Header:
    """The header of a frame; ``FrameError`` names what is wrong."""
    if len(untrusted) != HEADER.size:
        raise FrameError(f"a header is {HEADER.size} bytes, not {len(untrusted)}")
    magic, version, type, status, sender, msg_id, length, crc = HEADER.unpack(untrusted)
    if magic != MAGIC:
        raise FrameError(f"bad magic {magic!r}")
    if version != WIRE_VERSION:
        raise FrameError(f"wire version {version} (this node speaks {WIRE_VERSION})")
    if type not in _SIZES:
        raise FrameError(f"unknown message type {type}")
    low, high = _SIZES[type]
    if not low <= length <= high:
        raise FrameError(f"{MSG_NAMES[type]} with a {length}-byte payload "
                         f"(allowed {low}..{high})")
    if sender >= MAX_NODES:
        raise FrameError(f"sender node {sender} (nodes are 0..{MAX_NODES - 1})")
    return Header(type, status, sender, msg_id, length, crc)


@dataclass(frozen=True, slots=True)
class NodeAddress:
    """One node of the cluster (configfs ``node/<name>/{num,ipv4_address,ipv4_port}``)."""

    num: int
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.num}={self.host}:{self.port}"


def parse_nodes(untrusted: str | Mapping[int, str]) -> dict[int, NodeAddress]:
    """``"0=127.0.0.1:7800 1=127.0.0.1:7801"`` (or ``{0: "127.0.0.1:7800"}``) -> nodes;
    ``GuestError`` on anything else. At most MAX_NODES, numbers 0..7, ports 0..65535 (0: the
    node picks one when it listens)."""
    if isinstance(untrusted, Mapping):
        items = [(str(k), str(v)) for k, v in untrusted.items()]
    else:
        items = []
        for word in str(untrusted).replace(",", " ").split():
            num, sep, addr = word.partition("=")
            if not sep:
                raise GuestError(f"ramster node {word!r}: expected NUM=HOST:PORT")
            items.append((num, addr))
    nodes: dict[int, NodeAddress] = {}
    for num_text, addr in items:
        host, sep, port_text = addr.rpartition(":")
        if not (num_text.isdigit() and port_text.isdigit() and sep and host):
            raise GuestError(f"ramster node {num_text}={addr}: expected NUM=HOST:PORT")
        num, port = int(num_text), int(port_text)
        if num >= MAX_NODES or port > 65535:
            raise GuestError(f"ramster node {num_text}={addr}: node numbers are "
                             f"0..{MAX_NODES - 1}, ports 0..65535")
        if num in nodes:
            raise GuestError(f"ramster node {num} given twice")
        nodes[num] = NodeAddress(num, host, port)
    if len(nodes) > MAX_NODES:
        raise GuestError(f"a ramster cluster has at most {MAX_NODES} nodes")
    return nodes


class Handler(Protocol):
    """What a node tells its owner (called from the node's threads)."""

    def on_message(self, conn: Connection, header: Header, payload: bytes) -> None: ...

    def on_peer_alive(self, node: int, incarnation: int, revived: bool) -> None: ...

    def on_peer_dead(self, node: int, why: str) -> None: ...


class _Outbox:
    """Frames waiting for a connection's writer, in the order they were queued."""

    __slots__ = ("closed", "cond", "frames")

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.frames: collections.deque[bytes] = collections.deque()
        self.closed = False

    def put(self, frame: bytes) -> bool:
        with self.cond:
            if self.closed:
                return False
            self.frames.append(frame)
            self.cond.notify()
            return True

    def take(self, timeout: float) -> list[bytes] | None:
        """Every queued frame (waiting up to ``timeout``), or None once closed."""
        with self.cond:
            if not self.frames and not self.closed:
                self.cond.wait(timeout)
            if self.closed:
                return None
            out = list(self.frames)
            self.frames.clear()
            return out

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.frames.clear()
            self.cond.notify_all()

    def empty(self) -> bool:
        with self.cond:
            return not self.frames


class Connection:
    """One TCP connection: a reader thread (frames to the handler, in order) and a writer
    thread (its outbox). ``peer`` is known once HELLO arrived (or, outbound, once sent)."""

    def __init__(self, node: Node, sock: socket.socket, peer: int | None,
                 outbound: bool) -> None:
        self.node = node
        self.sock = sock
        self.peer = peer
        self.outbound = outbound
        self.outbox = _Outbox()
        self.closed = False
        sock.settimeout(node.io_timeout)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._threads = [threading.Thread(target=self._write_loop, daemon=True,
                                          name=f"r2net-tx-{node.num}"),
                         threading.Thread(target=self._read_loop, daemon=True,
                                          name=f"r2net-rx-{node.num}")]

    def start(self) -> Connection:
        for t in self._threads:
            t.start()
        return self

    def send(self, frame: bytes) -> bool:
        return self.outbox.put(frame)

    def close(self, why: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        log.debug("r2net node %d: link with node %s closed: %s", self.node.num, self.peer, why)
        self.outbox.close()
        # Wake both threads; only the reader closes the descriptor, once the writer is gone:
        # a descriptor closed under a thread still polling it may be reused by a new socket
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.node._closed(self, why)

    def _write_loop(self) -> None:
        while True:
            frames = self.outbox.take(self.node.heartbeat_s)
            if frames is None:
                return
            if not frames:
                continue
            try:
                self.sock.sendall(b"".join(frames))
            except OSError as exc:
                self.close(f"send failed: {exc}")
                return

    def _read_loop(self) -> None:
        buf = bytearray()
        last = time.monotonic()
        try:
            while not self.closed:
                try:
                    chunk = self.sock.recv(_RECV)
                except TimeoutError:  # liveness is the heartbeat's; a torn frame is ours
                    if buf and time.monotonic() - last > self.node.dead_s:
                        self.close("a frame stalled half-way")
                        return
                    continue
                if not chunk:
                    self.close("closed by the peer")
                    return
                last = time.monotonic()
                buf += chunk
                while len(buf) >= HEADER.size:
                    header = decode_header(bytes(buf[:HEADER.size]))
                    end = HEADER.size + header.length
                    if len(buf) < end:
                        break  # the rest arrives within the dead time or the link dies
                    payload = bytes(buf[HEADER.size:end])
                    del buf[:end]
                    if zlib.crc32(payload) != header.crc:
                        raise FrameError(f"{MSG_NAMES[header.type]}: payload crc mismatch")
                    self.node._received(self, header, payload)
        except FrameError as exc:
            self.node.bad_frames += 1
            log.warning("r2net node %d: bad frame from %s: %s; connection closed",
                        self.node.num, self.peer, exc)
            self.close(f"bad frame: {exc}")
        except OSError as exc:
            self.close(f"receive failed: {exc}")
        finally:
            self.close("reader stopped")
            self._threads[0].join()  # the writer (started first)
            self.sock.close()


class _Peer:
    __slots__ = ("addr", "alive", "conn", "heard", "incarnation", "pending", "pending_since")

    def __init__(self, addr: NodeAddress) -> None:
        self.addr = addr
        self.conn: Connection | None = None  # our outbound connection
        self.heard = 0.0
        self.alive = False
        self.incarnation: int | None = None
        # frames for a peer heard from (its own link to us is up) before ours is: they leave,
        # in order, on our link once it is up, or die with the peer after the dead time
        self.pending: list[bytes] = []
        self.pending_since = 0.0


class Node:
    """One node of a cluster: listens on its own address, connects to its peers, keeps them
    alive, and delivers frames to ``handler``."""

    def __init__(self, num: int, cluster: str, handler: Handler, *, incarnation: int,
                 heartbeat_s: float = 0.5, dead_s: float = 3.0, io_timeout: float = 1.0) -> None:
        if not (0 < heartbeat_s < dead_s):
            raise GuestError(f"ramster needs 0 < heartbeat ({heartbeat_s}) < dead time "
                             f"({dead_s})")
        self.num = num
        self.cluster = cluster.encode()[:MAX_NAME] or b"ramster"
        self.handler = handler
        self.incarnation = incarnation
        self.heartbeat_s = heartbeat_s
        self.dead_s = dead_s
        self.io_timeout = io_timeout
        self.address: tuple[str, int] | None = None
        self.bad_frames = 0
        self._lock = threading.Lock()
        self._peers: dict[int, _Peer] = {}
        self._conns: set[Connection] = set()
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- life cycle --

    def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on ``host:port`` (0: any free port) and start the heartbeat."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise GuestError(f"ramster node {self.num}: cannot listen on {host}:{port} "
                             f"({exc.strerror})") from None
        sock.listen(16)
        sock.settimeout(self.heartbeat_s)
        self._listener = sock
        self.address = sock.getsockname()[:2]
        for target, name in ((self._accept_loop, "accept"), (self._heartbeat_loop, "hb")):
            t = threading.Thread(target=target, daemon=True, name=f"r2net-{name}-{self.num}")
            t.start()
            self._threads.append(t)
        return self.address

    def stop(self) -> None:
        """Close every connection and stop (a crash looks the same to the peers)."""
        self._stop.set()
        for t in self._threads:  # the listener is closed once nothing polls it
            if t is not threading.current_thread():
                t.join(timeout=5 * self.heartbeat_s + 1)
        self._threads = []
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            c.close("node stopped")

    def set_peers(self, nodes: Mapping[int, NodeAddress]) -> None:
        """The configured peers (every node but this one)."""
        stale: list[Connection] = []
        with self._lock:
            for num in [n for n in self._peers if n not in nodes]:
                stale.append(self._peers.pop(num).conn)  # type: ignore[arg-type]
            for num, addr in nodes.items():
                if num == self.num or (num in self._peers and self._peers[num].addr == addr):
                    continue
                old = self._peers.get(num)
                self._peers[num] = _Peer(addr)
                if old is not None:
                    stale.append(old.conn)  # type: ignore[arg-type]
        for conn in stale:
            if conn is not None:
                conn.close("node reconfigured")

    # -- sending --

    def alive(self, num: int) -> bool:
        with self._lock:
            peer = self._peers.get(num)
            return peer is not None and peer.alive

    def send(self, num: int, type: int, payload: bytes = b"", *, msg_id: int = 0) -> bool:
        """Queue a frame for node ``num`` (never blocks). False when there is no live
        connection to it: the caller treats the message as not sent."""
        frame = encode(type, self.num, payload, msg_id=msg_id)
        with self._lock:
            peer = self._peers.get(num)
            if peer is None or not peer.alive:
                return False
            if peer.conn is None or peer.conn.closed:
                if not peer.pending:
                    peer.pending_since = time.monotonic()
                peer.pending.append(frame)
                return True
            return peer.conn.send(frame)

    def reply(self, conn: Connection, type: int, payload: bytes = b"", *, msg_id: int,
              status: int = 0) -> None:
        """Answer a request on the connection it came in on."""
        conn.send(encode(type, self.num, payload, msg_id=msg_id, status=status))

    def idle(self) -> bool:
        """Nothing waits to be written to a socket (what was written may still be unread)."""
        with self._lock:
            conns = list(self._conns)
            if any(p.pending for p in self._peers.values()):
                return False
        return all(c.outbox.empty() for c in conns)

    def declare_dead(self, num: int, why: str) -> None:
        """Treat node ``num`` as dead now (e.g. it did not answer a request in time)."""
        with self._lock:
            peer = self._peers.get(num)
            if peer is None or not peer.alive:
                return
            peer.alive = False
            peer.pending = []
            conn, peer.conn = peer.conn, None
        if conn is not None:
            conn.close(why)
        log.warning("r2net node %d: node %d is dead: %s", self.num, num, why)
        self.handler.on_peer_dead(num, why)

    # -- threads --

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stop.is_set():
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn = Connection(self, sock, None, outbound=False)
            with self._lock:
                if self._stop.is_set():
                    sock.close()
                    return
                self._conns.add(conn)
            conn.start()

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            now = time.monotonic()
            with self._lock:
                peers = list(self._peers.items())
            for num, peer in peers:
                if peer.alive and now - peer.heard > self.dead_s:
                    self.declare_dead(num, f"no heartbeat for {self.dead_s:g} s")
                elif peer.pending and now - peer.pending_since > self.dead_s:
                    self.declare_dead(num, f"no link to it for {self.dead_s:g} s")
                elif peer.conn is None or peer.conn.closed:
                    self._connect(num, peer)
                else:
                    peer.conn.send(encode(MSG_KEEPALIVE, self.num))

    def _connect(self, num: int, peer: _Peer) -> None:
        try:
            sock = socket.create_connection((peer.addr.host, peer.addr.port),
                                            timeout=self.io_timeout)
        except OSError:
            return  # tried again at the next heartbeat
        conn = Connection(self, sock, num, outbound=True)
        conn.send(encode(MSG_HELLO, self.num, HELLO.pack(self.incarnation) + self.cluster))
        with self._lock:
            if self._stop.is_set() or self._peers.get(num) is not peer:
                sock.close()
                return
            self._conns.add(conn)
            peer.conn = conn
            for frame in peer.pending:  # behind the HELLO, in the order they were sent
                conn.send(frame)
            peer.pending = []
        conn.start()

    # -- called by connections --

    def _received(self, conn: Connection, header: Header, payload: bytes) -> None:
        if header.type == MSG_HELLO:
            (incarnation,) = HELLO.unpack_from(payload)
            if payload[HELLO.size:] != self.cluster:
                raise FrameError(f"HELLO from cluster {payload[HELLO.size:]!r}")
            if conn.peer is not None and conn.peer != header.sender:
                raise FrameError(f"HELLO from node {header.sender} on node {conn.peer}'s link")
            conn.peer = header.sender
            self._heard(header.sender, incarnation)
            if not conn.outbound:  # answer with ours
                conn.send(encode(MSG_HELLO, self.num,
                                 HELLO.pack(self.incarnation) + self.cluster))
            return
        if conn.peer is None or header.sender != conn.peer:
            raise FrameError(f"{MSG_NAMES[header.type]} from node {header.sender} before "
                             "its HELLO" if conn.peer is None else
                             f"{MSG_NAMES[header.type]} claims node {header.sender} on "
                             f"node {conn.peer}'s link")
        self._heard(header.sender, None)
        if header.type != MSG_KEEPALIVE:
            self.handler.on_message(conn, header, payload)

    def _heard(self, num: int, incarnation: int | None) -> None:
        with self._lock:
            peer = self._peers.get(num)
            if peer is None:
                return
            peer.heard = time.monotonic()
            restarted_alive = (peer.alive and incarnation is not None
                               and incarnation != peer.incarnation)
        if restarted_alive:  # it restarted before its death was noticed
            self.declare_dead(num, "restarted")
        with self._lock:
            if peer.alive or incarnation is None:
                return
            revived = peer.incarnation is not None
            restarted = peer.incarnation not in (None, incarnation)
            peer.incarnation = incarnation
            peer.alive = True
        self.handler.on_peer_alive(num, incarnation, revived or restarted)

    def _closed(self, conn: Connection, why: str) -> None:
        with self._lock:
            self._conns.discard(conn)
            peer = self._peers.get(conn.peer) if conn.peer is not None else None
        if peer is not None and not self._stop.is_set():
            self.declare_dead(conn.peer, why)  # type: ignore[arg-type]


def new_incarnation() -> int:
    """A random 64-bit incarnation: a node that restarts is told apart from its old self."""
    return int.from_bytes(os.urandom(8), "big")

