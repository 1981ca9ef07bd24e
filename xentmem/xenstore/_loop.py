"""The event loop: every socket on one epoll, accepting, reading, sending, back-pressure, limits.

One thread polls; each batch of events is served under the server's lock (which the in-process
API takes too). Requests go to ``dispatch`` (the protocol handlers), which queues replies on the
connection; ``replies_ready`` then sends them (at once, or for a durable server once the batch is
journalled: ``commit`` runs before anything is sent).

What a connection may cost is bounded by its domain's
:class:`~xentmem.xenstore._conn.ConnectionLimits` (the numbers are in the server's docstring):

* Accept: a domain at ``connections`` gets the excess accepted and closed at once. When accept
  fails for want of a resource (EMFILE, ENFILE, ENOBUFS, ENOMEM) the listener rests
  ``ACCEPT_BACKOFF`` seconds, out of the epoll set (the loop does not spin on it), while every
  open connection is served; one line per listener per ``LOG_INTERVAL``, no traceback.
* Read: at most ``RECV_SIZE`` bytes per recv; a request announcing more than 4096 bytes gets
  EINVAL and the connection closes. Requests are dispatched one by one until the connection has
  ``pause_at`` unsent bytes: then its socket leaves the read set until half of them are sent
  (back-pressure), its remaining bytes (at most one recv) waiting in ``inbuf``.
* Send: a connection past ``max_unread`` unsent bytes or ``watch_events`` unsent events, or whose
  domain's connections together pass ``domain_unread``, is dropped.
* Errors: anything else going wrong with one connection drops that connection only (one line per
  domain per ``LOG_INTERVAL``). If the loop itself dies of a bug, that is logged once.
"""

from __future__ import annotations

import contextlib
import errno as E
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ._conn import Connection, Domain, LocalConnection, Throttle
from ._wire import HEADER, PAYLOAD_MAX, Op, pack

__all__ = ["ACCEPT_BACKOFF", "LOG_INTERVAL", "RECV_SIZE", "EventLoop"]

log = logging.getLogger("xentmem.xenstore.server")

ACCEPT_BACKOFF = 0.1  # s a listener rests after EMFILE & co: no spinning, a freed fd soon used
LOG_INTERVAL = 10.0  # s between two lines about the same listener or domain
RECV_SIZE = 65536  # bytes per recv: also what a paused connection may leave unread in ``inbuf``
_SCARCE = frozenset({E.EMFILE, E.ENFILE, E.ENOBUFS, E.ENOMEM})  # accept: rest, do not give up

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_HUP = select.EPOLLHUP | select.EPOLLERR
_READABLE = _IN | _HUP
_UNPACK_HEADER = HEADER.unpack_from

Dispatch = Callable[[Connection, int, int, int, bytes], None]


def _unset(conn: Connection, op: int, rq_id: int, tx_id: int, payload: bytes) -> None:
    raise RuntimeError("no dispatch")


Bind = Callable[[socket.socket, Path], None]


def bind_0600(sock: socket.socket, path: Path) -> None:
    """Bind ``sock`` at ``path`` (replacing a stale socket) and make it 0600. A caller whose
    directory is not private passes its own ``bind`` (the emulator daemon binds in a private
    directory, never wider than 0600 even for an instant)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sock.bind(str(path))
    os.chmod(path, 0o600)


class EventLoop:
    """The sockets of one server; ``forget(conn)`` drops a closed connection's watches and
    transactions."""

    def __init__(self, lock: threading.RLock, forget: Callable[[Connection], None],
                 say: Throttle, bind: Bind | None = None) -> None:  # fmt: skip
        self.lock = lock
        self.bind = bind or bind_0600
        self.forget = forget
        self.say = say
        self.dispatch: Dispatch = _unset
        self.commit: Callable[[], None] | None = None  # durable: runs before anything is sent
        self.replies_ready: Callable[[Connection], None] = self.flush
        self.dirty: set[Connection] = set()  # connections with something to send
        self.resumable: set[Connection] = set()  # unpaused, with requests waiting in inbuf
        self.resting: set[Domain] = set()  # domains whose listener rests after EMFILE & co
        self._ep: select.epoll | None = None
        self._objs: dict[int, object] = {}  # fd -> Connection, Domain (its listener), wake socket
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None

    @property
    def running(self) -> bool:
        """True between :meth:`open` and :meth:`close`: listeners can be added."""
        return self._ep is not None

    # --- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        self._ep = select.epoll()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._register(self._wake_r, self._wake_r, _IN)

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="xenstored", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread, close every socket connection and listener (removing its file)."""
        if self._thread is not None:
            self._stopping = True
            self.wake()
            self._thread.join(10)
            self._thread = None
        with self.lock:
            for obj in list(self._objs.values()):
                if type(obj) is Connection:
                    self.close_connection(obj)
                elif type(obj) is Domain:
                    self.unlisten(obj)
            for dom in list(self.resting):
                self.unlisten(dom)
            if self._ep is not None:
                self._ep.close()
                self._ep = None
            self._objs.clear()
            for s in (self._wake_r, self._wake_w):
                if s is not None:
                    s.close()
            self._wake_r = self._wake_w = None

    def wake(self) -> None:
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")

    # --- listeners ---------------------------------------------------------------------------

    def listen(self, dom: Domain, path: str) -> None:
        """Listen on ``path`` (replacing a stale socket file) for clients acting as ``dom``."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.bind(s, Path(path))
            s.listen(64)
            s.setblocking(False)
            self._register(s, dom, _IN)
        except BaseException:
            s.close()
            raise
        dom.listener, dom.socket_path = s, path

    def unlisten(self, dom: Domain) -> None:
        self.resting.discard(dom)
        if dom.listener is None:
            return
        self._unregister(dom.listener)
        dom.listener.close()
        if dom.socket_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dom.socket_path)
        dom.listener = None

    def _register(self, sock: socket.socket, obj: object, mask: int) -> None:
        fd = sock.fileno()
        assert self._ep is not None
        self._ep.register(fd, mask)
        self._objs[fd] = obj

    def _unregister(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if fd < 0:
            return
        self._objs.pop(fd, None)
        if self._ep is not None:
            with contextlib.suppress(OSError, ValueError):
                self._ep.unregister(fd)

    # --- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException:
            log.critical("xenstored: the event loop died: no client is served any more",
                         exc_info=True)  # fmt: skip

    def _serve(self) -> None:
        # epoll directly rather than selectors: this loop is most of a request's cost.
        ep = self._ep
        assert ep is not None
        objs = self._objs
        while not self._stopping:
            timeout = 1.0
            if self.resting:
                timeout = max(0.0, min(d.accept_at for d in self.resting) - time.monotonic())
            try:
                events = ep.poll(timeout)
            except (OSError, ValueError):
                if self._stopping:  # closed under a thread that outlived close()'s join
                    return
                raise
            with self.lock:
                for fd, mask in events:
                    obj = objs.get(fd)
                    if obj is None:
                        continue
                    if type(obj) is Connection:
                        try:
                            if mask & _READABLE:
                                if not obj.paused:
                                    self._readable(obj)
                                elif mask & _HUP:  # not reading it, and it hung up
                                    self.close_connection(obj)
                            if mask & _OUT and not obj.closed:
                                self.dirty.add(obj)
                        except Exception:
                            self._failed(obj)
                    elif obj is self._wake_r:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)  # type: ignore[union-attr]
                    else:
                        try:
                            self._accept(obj)  # type: ignore[arg-type]
                        except Exception:  # a bug: the listener rests too, rather than spin
                            self.say(logging.ERROR, ("error", obj.domid),  # type: ignore[attr-defined]
                                     "xenstored: internal error accepting a client",
                                     exc_info=True)  # fmt: skip
                            self._rest(obj, "internal error")  # type: ignore[arg-type]
                if self.resting:
                    self._wake_listeners()
                self.flush_dirty()

    def _failed(self, conn: Connection) -> None:
        """A bug met while serving ``conn``: drop it alone, say so (with the traceback)."""
        domid = conn.domain.domid
        self.say(logging.ERROR, ("error", domid),
                 "xenstored: dropping a dom%d client after an internal error", domid,
                 exc_info=True)  # fmt: skip
        if not conn.closed:
            with contextlib.suppress(Exception):
                self.close_connection(conn)

    # --- accept ------------------------------------------------------------------------------

    def _accept(self, dom: Domain) -> None:
        listener = dom.listener
        if listener is None:
            return
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno in _SCARCE:
                self._rest(dom, os.strerror(exc.errno))
            else:  # that one client's trouble (ECONNABORTED...)
                self.say(logging.WARNING, ("accept", dom.domid),
                         "xenstored: dom%d socket: accept failed: %s", dom.domid, exc)  # fmt: skip
            return
        if dom.sockets >= dom.limits.connections:
            sock.close()
            self.say(logging.WARNING, ("connections", dom.domid),
                     "xenstored: dom%d has %d connections, its limit: refusing more",
                     dom.domid, dom.sockets)  # fmt: skip
            return
        conn = Connection(sock, dom)
        try:
            sock.setblocking(False)
            self._register(sock, conn, _IN)
        except OSError as exc:
            sock.close()
            self.say(logging.WARNING, ("accept", dom.domid),
                     "xenstored: dom%d socket: cannot serve a new client: %s",
                     dom.domid, exc)  # fmt: skip
            return
        conn.mask = _IN
        dom.conns.add(conn)
        dom.sockets += 1

    def _rest(self, dom: Domain, why: str) -> None:
        """Stop accepting on ``dom``'s socket for ``ACCEPT_BACKOFF`` seconds."""
        if dom.listener is not None:
            self._unregister(dom.listener)
        dom.accept_at = time.monotonic() + ACCEPT_BACKOFF
        self.resting.add(dom)
        self.say(logging.WARNING, ("accept", dom.domid),
                 "xenstored: dom%d socket: cannot accept (%s); trying again every %d ms",
                 dom.domid, why, ACCEPT_BACKOFF * 1000)  # fmt: skip

    def _wake_listeners(self) -> None:
        now = time.monotonic()
        for dom in [d for d in self.resting if d.accept_at <= now]:
            self.resting.discard(dom)
            if dom.listener is not None:
                try:
                    self._register(dom.listener, dom, _IN)
                except OSError as exc:
                    self._rest(dom, os.strerror(exc.errno or 0))

    # --- read --------------------------------------------------------------------------------

    def _readable(self, conn: Connection) -> None:
        assert conn.sock is not None
        try:
            chunk = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.close_connection(conn)
            return
        if conn.inbuf:  # the rest of a partial message came first
            conn.inbuf += chunk
            chunk = bytes(conn.inbuf)
            conn.inbuf.clear()
        self._process(conn, chunk)

    def _process(self, conn: Connection, chunk: bytes) -> None:
        dispatch = self.dispatch
        out = conn.out
        pause_at = conn.domain.limits.pause_at
        pos = 0
        end = len(chunk)
        while end - pos >= 16:  # HEADER_SIZE
            if len(out) >= pause_at:
                # Back-pressure: the rest waits until its replies drain (see flush).
                conn.paused = True
                break
            op, rq_id, tx_id, size = _UNPACK_HEADER(chunk, pos)
            if size > PAYLOAD_MAX:
                # Cannot resynchronise on a stream that lies about lengths: answer, then hang up.
                conn.deliver(pack(Op.ERROR, rq_id, tx_id, b"EINVAL\0"))
                self.flush(conn)
                self.close_connection(conn)
                return
            nxt = pos + 16 + size
            if nxt > end:
                break
            dispatch(conn, op, rq_id, tx_id, chunk[pos + 16 : nxt])
            pos = nxt
            if conn.closed:
                return
        if pos < end:
            conn.inbuf += chunk[pos:] if pos else chunk
        self.replies_ready(conn)  # the replies now; other connections' events via dirty

    # --- send --------------------------------------------------------------------------------

    def flush_dirty(self) -> None:
        dirty, resumable = self.dirty, self.resumable
        while dirty or resumable:
            while dirty:
                conn = dirty.pop()
                if not conn.closed and conn.sock is not None:
                    try:
                        self.flush(conn)
                    except Exception:
                        self._failed(conn)
            while resumable:
                conn = resumable.pop()
                if not conn.closed and not conn.paused:
                    chunk = bytes(conn.inbuf)
                    conn.inbuf.clear()
                    try:
                        self._process(conn, chunk)
                    except Exception:
                        self._failed(conn)

    def flush(self, conn: Connection) -> None:
        """Send what ``conn`` has queued; apply its limits; read it again once it drained."""
        assert conn.sock is not None
        if self.commit is not None:
            # Nothing leaves before the journal holds it: not a reply, nor a watch event that
            # tells of a change.
            try:
                self.commit()
            except OSError:
                self.say(logging.ERROR, "journal",
                         "xenstored: cannot write the journal; hanging up on a client",
                         exc_info=True)  # fmt: skip
                self.close_connection(conn)  # its replies were never sent: nothing acknowledged
                return
        out = conn.out
        if out:
            try:
                sent = conn.sock.send(out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.close_connection(conn)
                return
            if sent:
                del out[:sent]
                conn.sent += sent
                ends = conn.event_ends
                while ends and ends[0] <= conn.sent:
                    ends.popleft()
        n = len(out)
        limits = conn.domain.limits
        if n and (
            n > limits.max_unread
            or len(conn.event_ends) > limits.watch_events
            or (n > limits.pause_at and self.unread(conn.domain) > limits.domain_unread)
        ):
            self._drop_hog(conn)
            return
        if conn.paused and n <= limits.pause_at // 2:
            conn.paused = False
            if conn.inbuf:
                self.resumable.add(conn)
        mask = (_OUT if n else 0) | (0 if conn.paused else _IN)
        if mask != conn.mask and self._ep is not None:
            with contextlib.suppress(OSError, ValueError):
                self._ep.modify(conn.sock, mask)
            conn.mask = mask

    @staticmethod
    def unread(dom: Domain) -> int:
        """Bytes queued and not yet sent on all of ``dom``'s connections."""
        return sum(len(c.out) for c in dom.conns)

    def _drop_hog(self, conn: Connection) -> None:
        dom = conn.domain
        self.say(logging.WARNING, ("unread", dom.domid),
                 "xenstored: dropping a dom%d client that does not read: %d bytes, %d watch "
                 "events unsent (its domain: %d bytes)", dom.domid, len(conn.out),
                 len(conn.event_ends), self.unread(dom))  # fmt: skip
        self.close_connection(conn)

    # --- close -------------------------------------------------------------------------------

    def close_connection(self, conn: Connection) -> None:
        if conn.sock is not None:
            self._unregister(conn.sock)
            conn.sock.close()
        self.drop(conn)

    def drop(self, conn: Connection) -> None:
        """Forget ``conn`` (its socket, if any, is closed by :meth:`close_connection`)."""
        if conn.closed:
            return
        conn.closed = True
        if isinstance(conn, LocalConnection):
            conn.on_close()
        dom = conn.domain
        dom.conns.discard(conn)
        if conn.sock is not None:
            dom.sockets -= 1
            conn.out.clear()  # memory back now, not when the last reference goes
            conn.inbuf.clear()
            conn.event_ends.clear()
        self.dirty.discard(conn)
        self.resumable.discard(conn)
        self.forget(conn)
