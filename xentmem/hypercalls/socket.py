"""``SocketHypervisor``: hypercalls to the emulator daemon (``xentmem emulator up``) over a unix
socket, as one domain of the emulated host (DESIGN §3).

It behaves like the in-process ``EmulatedHypervisor``: the same bytes reach the same entry, the
same results and ``TmemError``s come back, and buffers and frames live in the calling domain's
emulated memory inside the daemon. To keep one round trip per hypercall, the client keeps a
mirror of every buffer and frame it allocated: ``write`` only touches the mirror, the dirty
regions ride along with the next request, and the reply carries every region the hypervisor
changed, so ``read`` never talks to the daemon. (Memory the client did not allocate, or another
connection's regions, is not mirrored; nothing in the typed client uses either.)

The wire protocol is in :mod:`xentmem.hypercalls._wire`, shared with the daemon.

A request that fails (timeout, daemon gone, connection closed) raises ``TransportError`` and
leaves the transport closed: its buffers lived in the daemon's memory, so a new
``SocketHypervisor`` must be opened.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from xentmem.abi import PAGE_SIZE, Hypercall
from xentmem.errors import EmulatorError, HostCrashed, TransportError, tmem_error
from xentmem.hypercalls._base import check_fits, page_span
from xentmem.hypercalls._where import (  # re-exported: the daemon's address, named light
    DEFAULT_TIMEOUT,
    HYPERCALL_SOCKET,
    ROOT_STATE_DIR,
    default_state_dir,
    parse_uri,
    socket_path,
)
from xentmem.hypercalls._wire import (
    ADDR,
    ALLOC,
    ALLOC_BODY,
    CALL,
    CALL_HEAD,
    CALL_REPLY,
    CHUNK,
    CONTROL,
    CRASHED,
    EMULATOR,
    FRAME,
    HEAD,
    HELLO,
    HELLO_BODY,
    MAX_FRAME,
    OK,
    PROTOCOL,
    SOCKET_BUFFER,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "HYPERCALL_SOCKET",
    "ROOT_STATE_DIR",
    "SocketBuffer",
    "SocketFrames",
    "SocketHypervisor",
    "default_state_dir",
    "parse_uri",
]

_U64 = 0xFFFFFFFFFFFFFFFF
_OP_NAMES = {int(h): h.name for h in Hypercall}


def _connect(sock: socket.socket, path: str, deadline: float) -> None:
    """``connect``, waiting (until ``deadline``) while the daemon's backlog is full: a unix
    socket answers EAGAIN at once then, where a client should wait for its timeout."""
    delay = 0.005
    while True:
        try:
            sock.connect(path)
            return
        except BlockingIOError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the daemon's backlog stayed full") from None
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.1)


class SocketBuffer:
    """Hypercall argument memory inside the domain, mirrored in this process."""

    def __init__(self, hv: SocketHypervisor, address: int, size: int) -> None:
        self._hv, self.address, self.size = hv, address, size
        self.mirror = bytearray(size)

    def write(self, data: bytes, offset: int = 0) -> None:
        if offset < 0 or offset + len(data) > self.size:
            raise ValueError(f"{len(data)} bytes at offset {offset} overflow a "
                             f"{self.size}-byte buffer")
        self.mirror[offset:offset + len(data)] = data
        self._hv._dirty[self.address] = self

    def read(self, size: int | None = None, offset: int = 0) -> bytes:
        size = self.size - offset if size is None else size
        if offset < 0 or size < 0 or offset + size > self.size:
            raise ValueError(f"{size} bytes at offset {offset} overflow a {self.size}-byte buffer")
        return bytes(self.mirror[offset:offset + size])

    def packer(self, layout: struct.Struct) -> Callable[..., None]:
        check_fits(layout, self.size)
        pack_into, mirror, dirty, address = layout.pack_into, self.mirror, self._hv._dirty, \
            self.address

        def pack(*values: int) -> None:
            pack_into(mirror, 0, *values)
            dirty[address] = self

        return pack

    def close(self) -> None:
        if self.address:
            self._hv._release(self.address)
            self.address = 0


class SocketFrames(SocketBuffer):
    """``count`` contiguous RAM frames of the domain, from ``number``, mirrored here as one
    region; with ``count`` 1 it is the single ``Frame`` of ``alloc_frame``."""

    def __init__(self, hv: SocketHypervisor, address: int, count: int) -> None:
        super().__init__(hv, address, count * PAGE_SIZE)
        self.number = address // PAGE_SIZE
        self.numbers = list(range(self.number, self.number + count))

    def write(self, data: bytes, first: int = 0) -> None:  # type: ignore[override]
        start, end = page_span(len(data), first, len(self.numbers))
        self.mirror[start:end] = data
        self._hv._dirty[self.address] = self

    def read(self, first: int = 0, count: int | None = None) -> bytes:  # type: ignore[override]
        start, end = page_span((len(self.numbers) - first if count is None else count)
                               * PAGE_SIZE, first, len(self.numbers))
        return bytes(self.mirror[start:end])

    def read_into(self, out: bytearray | memoryview, first: int = 0) -> None:
        with memoryview(out) as dst, memoryview(self.mirror) as mirror:
            start, end = page_span(dst.nbytes, first, len(self.numbers))
            dst[:] = mirror[start:end]

    def close(self) -> None:
        super().close()
        self.number = 0


class SocketHypervisor:
    """Issue hypercalls as domain ``domid`` of the emulator daemon listening on ``path``.

    ``path`` is the hypercall socket or the daemon's state directory (default: the default
    state directory). Every request waits at most ``timeout`` seconds; a daemon that is gone or
    hung gives ``TransportError``.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, domid: int = 0, *,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        if not 0 <= domid < 0x7FF0:
            raise ValueError(f"domid must be 0..32751, not {domid}")
        self.path = socket_path(path)
        self.domid = domid
        self.timeout = timeout
        self._regions: dict[int, SocketBuffer] = {}
        self._dirty: dict[int, SocketBuffer] = {}
        self._freed: list[int] = []
        self._in = bytearray()
        self._lock = threading.Lock()
        self._rbuf = bytearray(SOCKET_BUFFER)
        self._rview = memoryview(self._rbuf)
        self._sock: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
            self._sock.settimeout(timeout)
            _connect(self._sock, str(self.path), time.monotonic() + timeout)
        except OSError as exc:
            self._sock.close()
            self._sock = None
            reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
            raise TransportError(f"no emulator daemon at {self.path} ({reason}); start one "
                                 "with `xentmem emulator up`") from None
        try:
            info = self._request(HELLO, HELLO_BODY.pack(PROTOCOL, domid))
        except BaseException:
            self.close()
            raise
        self.info: dict[str, Any] = json.loads(info)

    @classmethod
    def from_uri(cls, rest: str) -> SocketHypervisor:
        """The transport for ``emulator:[SOCKET|STATE_DIR][?domid=N&timeout=S]`` (what follows
        ``emulator:``); ``ValueError`` for a malformed one."""
        location, domid, timeout = parse_uri(rest)
        return cls(location, domid, timeout=timeout)

    # -- the Hypervisor protocol ---------------------------------------------------------------

    def hypercall(self, op: int, *args: int) -> int:
        """Xen's result; a negative one raises the matching ``TmemError``.

        ``HostCrashed`` is raised when the call crashed the imitated hypervisor (or it had).
        """
        if len(args) > 255:
            raise ValueError("at most 255 hypercall arguments")
        body = CALL_HEAD.pack(op & 0xFFFFFFFF, len(args)) + struct.pack(
            f"<{len(args)}Q", *(a & _U64 for a in args))
        reply = self._request(CALL, body)
        result, nchanged = CALL_REPLY.unpack_from(reply)
        pos = CALL_REPLY.size
        for _ in range(nchanged):
            address, size = CHUNK.unpack_from(reply, pos)
            pos += CHUNK.size
            region = self._regions.get(address)
            if region is not None and region.size == size:
                region.mirror[:] = reply[pos:pos + size]
            pos += size
        if result < 0:
            raise tmem_error(result, _OP_NAMES.get(op, f"hypercall {op}"))
        return result

    def alloc_buffer(self, size: int) -> SocketBuffer:
        if size < 1:
            raise ValueError(f"buffer size must be positive, not {size}")
        frames = (size + PAGE_SIZE - 1) // PAGE_SIZE
        address = self._alloc(frames, size, buffer=True)
        buf = self._regions[address] = SocketBuffer(self, address, size)
        return buf

    def alloc_frame(self) -> SocketFrames:
        return self.alloc_frames(1)

    def alloc_frames(self, count: int) -> SocketFrames:
        if count < 1:
            raise ValueError(f"frame count must be positive, not {count}")
        address = self._alloc(count, count * PAGE_SIZE, buffer=False)
        frames = self._regions[address] = SocketFrames(self, address, count)
        return frames

    def close(self) -> None:
        """Hang up; the daemon frees every buffer and frame of this connection."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> SocketHypervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- host-API requests ----------------------------------------------------------------------

    def control(self, cmd: str, **args: Any) -> Any:
        """A host-API request to the daemon (``status``, ``create_domain``, ``destroy_domain``;
        dom0 only); ``EmulatorError`` when the host refuses it."""
        return json.loads(self._request(CONTROL, json.dumps({"cmd": cmd, **args}).encode()))

    # -- plumbing --------------------------------------------------------------------------------

    def _alloc(self, frames: int, size: int, *, buffer: bool) -> int:
        reply = self._request(ALLOC, ALLOC_BODY.pack(frames, size, int(buffer)))
        return ADDR.unpack_from(reply)[0]

    def _release(self, address: int) -> None:
        # frees ride along with the next request; a dead connection frees everything anyway
        if self._regions.pop(address, None) is not None:
            self._dirty.pop(address, None)
            self._freed.append(address)

    def _request(self, kind: int, body: bytes) -> bytes:
        # one request at a time on the socket: a guest's balloon and its tmem shim may call
        # from different threads, as vCPUs do
        with self._lock:
            return self._exchange(kind, body)

    def _exchange(self, kind: int, body: bytes) -> bytes:
        if self._sock is None:
            raise TransportError(f"connection to the emulator daemon at {self.path} is closed")
        parts = [b"", HEAD.pack(kind, len(self._freed), len(self._dirty))]
        parts += [ADDR.pack(a) for a in self._freed]
        for address, region in self._dirty.items():
            parts += [CHUNK.pack(address, region.size), region.mirror]
        parts.append(body)
        size = sum(len(p) for p in parts)
        parts[0] = FRAME.pack(size)
        self._freed.clear()
        self._dirty.clear()
        try:
            self._sock.sendall(b"".join(parts))
            reply = self._recv(time.monotonic() + self.timeout)
        except (OSError, EOFError) as exc:
            self.close()
            if isinstance(exc, TimeoutError):
                raise TransportError(f"the emulator daemon at {self.path} did not answer "
                                     f"within {self.timeout:g} s") from None
            raise TransportError(f"lost the emulator daemon at {self.path} "
                                 f"({exc or type(exc).__name__})") from None
        status = reply[0]
        if status == OK:
            return reply[1:]
        message = reply[1:].decode("utf-8", "replace")
        if status == CRASHED:
            raise HostCrashed(message)
        if status == EMULATOR:
            raise EmulatorError(message)
        self.close()  # refused: a protocol error; the daemon hangs up
        raise TransportError(f"emulator daemon refused the request: {message}")

    def _recv(self, deadline: float) -> bytes:
        assert self._sock is not None
        buf = self._in
        while True:
            if len(buf) >= FRAME.size:
                (size,) = FRAME.unpack_from(buf)
                if size > MAX_FRAME or size < 1:
                    raise EOFError(f"bad reply length {size}")
                if len(buf) >= FRAME.size + size:
                    reply = bytes(buf[FRAME.size:FRAME.size + size])
                    del buf[:FRAME.size + size]
                    return reply
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self._sock.settimeout(remaining)
            got = self._sock.recv_into(self._rbuf)  # recv(n) would allocate n bytes per call
            if not got:
                raise EOFError("connection closed by the daemon")
            buf += self._rview[:got]
