"""Test and benchmark support: the real oxenstored, started by ``vm-images/oxenstored/run``.

``Oxenstored(work).start()`` runs Debian's oxenstored 4.17 without a hypervisor (recipe: ref
ecosystem.md §2) on ``<work>/run/socket``. Every connection to that socket is dom0. With
``ring=True`` it runs in the fake shared-memory ring mode of §2.8, and ``guest_socket(domid)``
introduces a domain and returns the path of a unix socket whose single client *is* that domain:
a :class:`RingProxy` thread copies bytes between the client and the domain's ring page. Any
xenstore client (ours, pyxs, the C tools) can thus act as a guest of the real oxenstored, the same
way our own server offers ``XenStoreServer.domain_socket(domid)``.

``unavailable_reason()`` says why oxenstored cannot run here (not root, no unshare, ...), or None.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import _wire
from ._client import XenStore

__all__ = [
    "Oxenstored", "RawClient", "RingProxy", "event_barrier", "harness_path", "unavailable_reason",
]  # fmt: skip

_RING_SIZE = 1024  # XENSTORE_RING_SIZE
_REQ, _RSP = 0, 1024
_REQ_CONS, _REQ_PROD, _RSP_CONS, _RSP_PROD = 2048, 2052, 2056, 2060
_U32 = struct.Struct("=I")


def harness_path() -> Path:
    """``vm-images/oxenstored/run`` of this checkout (``XENTMEM_OXENSTORED_HARNESS`` overrides)."""
    env = os.environ.get("XENTMEM_OXENSTORED_HARNESS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "vm-images" / "oxenstored" / "run"


_reason_cache: list[str | None] = []


def unavailable_reason() -> str | None:
    """Why the real oxenstored cannot run on this machine, or None if it can (cached)."""
    if _reason_cache:
        return _reason_cache[0]
    run = harness_path()
    if not run.exists():
        reason: str | None = f"oxenstored harness not found at {run}"
    else:
        proc = subprocess.run([str(run), "check"], capture_output=True, text=True, timeout=30)
        if proc.returncode == 0:
            reason = None
        else:
            reason = (
                proc.stdout + proc.stderr
            ).strip() or f"harness check failed ({proc.returncode})"
    _reason_cache.append(reason)
    return reason


class Oxenstored:
    """One real oxenstored in ``work`` (socket ``work/run/socket``, logs in ``work/log``)."""

    def __init__(self, work: str | os.PathLike[str], *, ring: bool = False, quiet: bool = False):
        self.work = Path(work)
        self.ring = ring
        self.quiet = quiet
        self.pid: int | None = None
        self.socket_path = str(self.work / "run" / "socket")
        self._proxies: dict[int, RingProxy] = {}

    def start(self) -> Oxenstored:
        args = [str(harness_path()), "start", str(self.work)]
        if self.ring:
            args.append("--ring")
        if self.quiet:
            args.append("--quiet")
        proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"oxenstored harness failed: {proc.stderr.strip() or proc.stdout}")
        fields = dict(item.split("=", 1) for item in proc.stdout.split())
        self.pid = int(fields["pid"])
        self.socket_path = fields["socket"]
        return self

    def stop(self) -> None:
        """Stop the proxies and oxenstored (SIGKILL: its state is not persistent anyway)."""
        for proxy in self._proxies.values():
            proxy.close()
        self._proxies.clear()
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, 9)
            _wait_gone(self.pid, 5.0)
            self.pid = None

    def __enter__(self) -> Oxenstored:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- fake-ring domains (ring mode only) ------------------------------------------------

    def guest_socket(self, domid: int) -> str:
        """Introduce ``domid`` (if not yet) and return a socket path that connects as it."""
        if not self.ring:
            raise RuntimeError("guest connections need Oxenstored(ring=True)")
        proxy = self._proxies.get(domid)
        if proxy is None:
            ring_file = self.work / "rings" / str(domid)
            proxy = RingProxy(
                ring_file, self.work / "rings" / "evtchn.fifo", domid,
                str(self.work / f"guest-{domid}.sock"),
            )  # fmt: skip
            self._dom0_request(_wire.Op.INTRODUCE, b"%d\0%d\0%d\0" % (domid, 4096 + domid, 1))
            proxy.start()
            self._proxies[domid] = proxy
        return proxy.socket_path

    def release(self, domid: int) -> None:
        """RELEASE ``domid`` (fires @releaseDomain, deletes the nodes it owns); drop its proxy."""
        proxy = self._proxies.pop(domid, None)
        self._dom0_request(_wire.Op.RELEASE, b"%d\0" % domid)
        if proxy is not None:
            proxy.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(proxy.ring_file)

    def _dom0_request(self, op: int, payload: bytes) -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5.0)
            s.connect(self.socket_path)
            s.sendall(_wire.pack(op, 1, 0, payload))
            header = _recv_exact(s, _wire.HEADER_SIZE)
            rop, _rq, _tx, size = _wire.HEADER.unpack(header)
            body = _recv_exact(s, size)
        if rop == _wire.Op.ERROR:
            raise OSError(_wire.errno_from_name(body), f"{_wire.Op(op).name}: {body!r}")
        return body


class RingProxy:
    """Bridge one unix-socket client to a domain's xenstore ring page of a ring-mode oxenstored.

    The page (``ring_file``, 4096 bytes, ``struct xenstore_domain_interface``) is mapped before
    INTRODUCE; requests are copied to ``req`` and the server is kicked by writing the 4-byte
    domid into the event-channel FIFO; replies and watch events are polled from ``rsp`` (the fake
    event channel never notifies the guest). One client at a time: a new client disconnects the
    previous one. The domain's xenstore state (watches, transactions) lives on between clients, as
    the ring of a real guest does, so use one client per guest.
    """

    def __init__(self, ring_file: Path, fifo: Path, domid: int, socket_path: str):
        self.ring_file = ring_file
        self.domid = domid
        self.socket_path = socket_path
        ring_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(ring_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, 4096)
            os.pwrite(fd, bytes(4096), 0)
            self._page = mmap.mmap(fd, 4096, mmap.MAP_SHARED)
        finally:
            os.close(fd)
        self._fifo = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        self._kick_bytes = _U32.pack(domid)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(socket_path)
        self._listener.listen(4)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ring-proxy-{domid}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        os.close(self._fifo)
        self._page.close()

    # The ring indices are shared with oxenstored: each must be read and written with one
    # 4-byte access. struct's "=I" goes byte by byte, and a torn req_prod (say 0x3FF -> 0x301
    # half-way to 0x401) makes oxenstored see prod - cons > 1024 and drop the domain as
    # "bad connection"; a 4-byte slice is a single memcpy, i.e. one aligned load or store.
    def _u32(self, off: int) -> int:
        return int.from_bytes(self._page[off : off + 4], sys.byteorder)

    def _set_u32(self, off: int, value: int) -> None:
        self._page[off : off + 4] = (value & 0xFFFFFFFF).to_bytes(4, sys.byteorder)

    def _kick(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._fifo, self._kick_bytes)

    def _push(self, data: bytes) -> int:
        """Copy as much of ``data`` into the request ring as fits; return the count."""
        cons, prod = self._u32(_REQ_CONS), self._u32(_REQ_PROD)
        room = _RING_SIZE - ((prod - cons) & 0xFFFFFFFF)
        n = min(room, len(data))
        start = prod % _RING_SIZE
        first = min(n, _RING_SIZE - start)  # the rest wraps to the start of the ring
        self._page[_REQ + start : _REQ + start + first] = data[:first]
        self._page[_REQ : _REQ + n - first] = data[first:n]
        if n:
            self._set_u32(_REQ_PROD, prod + n)
        return n

    def _pull(self) -> bytes:
        cons, prod = self._u32(_RSP_CONS), self._u32(_RSP_PROD)
        avail = (prod - cons) & 0xFFFFFFFF
        if not avail:
            return b""
        start = cons % _RING_SIZE
        first = min(avail, _RING_SIZE - start)
        data = self._page[_RSP + start : _RSP + start + first]
        if avail > first:
            data += self._page[_RSP : _RSP + avail - first]
        self._set_u32(_RSP_CONS, cons + avail)
        return data

    def _run(self) -> None:
        client: socket.socket | None = None
        pending = b""
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ)
        idle = 0
        try:
            while not self._stop.is_set():
                timeout = 0.0002 if idle < 200 else 0.002
                for key, _ in sel.select(timeout):
                    if key.fileobj is self._listener:
                        conn, _ = self._listener.accept()
                        if client is not None:  # the newest client wins the ring
                            sel.unregister(client)
                            client.close()
                            pending = b""
                        client = conn
                        sel.register(client, selectors.EVENT_READ)
                    elif client is not None:
                        try:
                            chunk = client.recv(65536)
                        except OSError:
                            chunk = b""
                        if not chunk:
                            sel.unregister(client)
                            client.close()
                            client, pending = None, b""
                        else:
                            pending += chunk
                idle += 1
                if pending:
                    n = self._push(pending)
                    if n:
                        pending = pending[n:]
                        self._kick()
                        idle = 0
                out = self._pull()
                if out:
                    idle = 0
                    self._kick()  # the server may be waiting for room in the response ring
                    if client is not None:
                        try:
                            client.sendall(out)
                        except OSError:
                            sel.unregister(client)
                            client.close()
                            client, pending = None, b""
        finally:
            if client is not None:
                client.close()
            sel.close()


class RawClient:
    """A bare wire-protocol client for tests: send any bytes, read replies and watch events.

    ``request(op, *args)`` joins ``args`` NUL-terminated (bytes sent as is) and returns
    ``(reply_op, payload)``; WATCH_EVENTs that arrive meanwhile are queued in ``events``.
    """

    def __init__(self, path: str, timeout: float = 5.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock.connect(path)
                break
            except BlockingIOError:  # listen backlog full: oxenstored's is short
                if time.monotonic() > deadline:
                    self.sock.close()
                    raise
                time.sleep(0.005)
        self.events: list[tuple[bytes, bytes]] = []
        self._rq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_message(self) -> tuple[int, int, int, bytes]:
        """The next message of any kind: ``(op, rq_id, tx_id, payload)``."""
        op, rq, tx, size = _wire.HEADER.unpack(_recv_exact(self.sock, _wire.HEADER_SIZE))
        return op, rq, tx, _recv_exact(self.sock, size)

    def request(self, op: int, *args: bytes | str | int, tx: int = 0) -> tuple[int, bytes]:
        payload = b"".join(a if isinstance(a, bytes) else str(a).encode() + _wire.NUL for a in args)
        self._rq += 1
        self.sock.sendall(_wire.pack(op, self._rq, tx, payload))
        deadline = time.monotonic() + (self.sock.gettimeout() or 5.0)
        while time.monotonic() < deadline:  # a stream of events must not keep us here
            rop, _rq, _tx, body = self.recv_message()
            if rop == _wire.Op.WATCH_EVENT:
                path, token = ([*_wire.split_strings(body), b"", b""])[:2]
                self.events.append((path, token))
                continue
            return rop, body
        raise TimeoutError(f"no reply to op {op} among the watch events")

    def next_event(self) -> tuple[bytes, bytes]:
        """The next WATCH_EVENT ``(path, token)`` (raises socket.timeout if none comes)."""
        if self.events:
            return self.events.pop(0)
        deadline = time.monotonic() + (self.sock.gettimeout() or 5.0)
        while time.monotonic() < deadline:  # replies alone must not keep us here either
            rop, _rq, _tx, body = self.recv_message()
            if rop == _wire.Op.WATCH_EVENT:
                path, token = ([*_wire.split_strings(body), b"", b""])[:2]
                return path, token
        raise TimeoutError("no watch event")


def event_barrier(watcher: XenStore, writer: XenStore, path: str, timeout: float = 10.0) -> None:
    """Return once every watch event the server has sent ``watcher`` so far sits in its watches.

    Watches ``path`` on the same connection, has ``writer`` change it and waits for that event:
    a server sends one connection's events in order, so afterwards "no event queued" really
    means "no event sent", with no sleeping. ``watcher`` must be able to read ``path``."""
    with watcher.watch(path, timeout=timeout) as w:
        w.get()  # the initial event
        writer.write(path, b"barrier")
        w.get()


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return bytes(buf)


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            # Reap it if it is our child; otherwise just probe.
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return
            os.kill(pid, 0)
            # A zombie (dead, not yet reaped by whoever inherited it) is gone for our purposes.
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return
        except (ProcessLookupError, FileNotFoundError):
            return
        time.sleep(0.005)
