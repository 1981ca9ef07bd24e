"""The emulator's xenstored: the xenstore wire protocol on unix sockets, over :mod:`._store`.

One thread runs an epoll loop over every socket; requests are dispatched under one lock,
which the in-process API (``introduce_domain``, ``connect``...) takes as well, so the emulator may
call it from any thread.

Who a connection is
-------------------
* ``path`` (the main socket) connects as **dom0**, privileged, as every unix-socket client of a
  real xenstored does.
* Each introduced domain N gets its own socket, ``domain_socket(N)`` = ``<path>.dom<N>``: a client
  of that socket *is* domain N (unprivileged, its own relative paths, quotas and permission
  checks), the way a guest's ring connection is on real Xen. Point ``XENSTORED_PATH`` at it and
  the C tools, pyxs or our client act as that guest. Several clients may share it (like processes
  sharing a guest's /dev/xen/xenbus); quotas are per domain.
* A dom0 connection may also send ``RESTRICT <domid>`` (op 128, or the legacy number 20), after
  which it acts as that domain for good, as with C xenstored's XS_RESTRICT.
* The wire INTRODUCE/RELEASE from dom0 create/remove the domain socket and fire
  ``@introduceDomain`` / ``@releaseDomain``. ``introduce_domain()`` additionally lays out
  ``/local/domain/N`` the way libxl does (:func:`~xentmem.xenstore.toolstack.layout_domain`), and
  ``release_domain()`` removes it again, as the toolstack does on destroy.

Durable state
-------------
With ``state_dir``, the tree and the introduced domains (with their SET_TARGET targets) survive
``stop()``/``start()``, a new process and a SIGKILL (:mod:`._persist` has the file formats):

* ``<state_dir>/xenstore.state``: a snapshot, replaced atomically (temp file, fsync, rename,
  fsync of the directory);
* ``<state_dir>/xenstore.journal``: one record per successful change since that snapshot, with
  its whole-node effects (path, value, perms; removals; domains introduced, released, targeted).

Guarantee: every change a client was told succeeded (a reply on a socket, a return of
``connect()``'s calls, of ``introduce_domain()`` or ``release_domain()``) was written to the
journal before that, and with ``sync=True`` (the default) fdatasync'ed too, one fdatasync per
batch of replies. A SIGKILL therefore loses nothing acknowledged; with ``sync=False`` a power cut
may lose the last batches. ``start()`` loads the snapshot, replays the journal (dropping a torn
last record, refusing anything else malformed with ``XenStoreStateError``), listens on every
restored domain's socket again and writes a fresh snapshot; ``restored`` then says whether there
was state to load (the caller should not lay out dom0 and the domains again). The journal is
folded into a new snapshot when it passes ``journal_limit`` bytes, and on ``stop()``. Watches,
open transactions and RESTRICTed connections are not state: clients set them up again after
reconnecting, as with a restarted oxenstored. Changes made while the server is stopped (through
``connect()``) reach the disk at the next ``start()``. Without ``state_dir`` nothing is written
and a request costs what it always did.

Robustness: a header announcing more than 4096 bytes gets an EINVAL reply and the connection is
closed; any other malformed request gets an ERROR reply; a client that lets more than
``max_output`` bytes of replies and events pile up is disconnected; one bad client never stops
the loop.
"""

from __future__ import annotations

import contextlib
import errno as E
import logging
import os
import select
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from . import _wire
from ._client import LocalXenStore
from ._persist import JOURNAL_LIMIT, StateFiles, XenStoreStateError
from ._store import (
    DOM0,
    Caller,
    Effect,
    Event,
    Quota,
    Store,
    Transaction,
    XsError,
    allowed,
    split,
    walk,
)
from ._wire import HEADER, NUL, PAYLOAD_MAX, Op, Perm
from .toolstack import layout_domain

__all__ = ["XenStoreServer", "XenStoreStateError"]

log = logging.getLogger(__name__)

_OK = b"OK\0"
_PACK_HEADER = HEADER.pack
_UNPACK_HEADER = HEADER.unpack_from
_MAX_OUTPUT = 8 << 20  # bytes of unsent replies/events before a client is dropped


class _Domain:
    __slots__ = ("domid", "listener", "socket_path", "target", "transactions", "watches")

    def __init__(self, domid: int) -> None:
        self.domid = domid
        self.listener: socket.socket | None = None
        self.socket_path: str | None = None
        self.target: int | None = None
        self.watches = 0
        self.transactions = 0


class _Watch:
    __slots__ = ("conn", "path", "prefix", "token")

    def __init__(self, conn: Connection, path: str, token: bytes, prefix: str | None) -> None:
        self.conn = conn
        self.path = path  # absolute
        self.token = token
        self.prefix = prefix  # set for a relative watch: stripped from event paths


class Connection:
    """One client connection (socket or in-process)."""

    __slots__ = (
        "caller", "closed", "domain", "inbuf", "out", "sock", "transactions", "want_write",
        "watches",
    )  # fmt: skip

    def __init__(self, sock: socket.socket | None, domain: _Domain) -> None:
        self.sock = sock
        self.domain = domain
        self.caller = Caller(domain.domid, domain.target)
        self.inbuf = bytearray()
        self.out = bytearray()
        self.transactions: dict[int, Transaction] = {}
        self.watches: list[_Watch] = []
        self.closed = False
        self.want_write = False

    def deliver(self, data: bytes) -> None:
        self.out += data


class _LocalConnection(Connection):
    """An in-process connection: replies are handed back, events go to ``on_event``."""

    __slots__ = ("on_close", "on_event")

    def __init__(self, domain: _Domain, on_event: Callable[[bytes, bytes], None],
                 on_close: Callable[[], None]) -> None:  # fmt: skip
        super().__init__(None, domain)
        self.on_event = on_event
        self.on_close = on_close

    def deliver(self, data: bytes) -> None:
        op = HEADER.unpack_from(data)[0]
        if op == Op.WATCH_EVENT:
            path, token = ([*_wire.split_strings(data[_wire.HEADER_SIZE :]), b"", b""])[:2]
            self.on_event(path, token)
        else:
            self.out += data


class XenStoreServer:
    """A xenstored on the unix socket ``path`` (see the module docstring for the design)."""

    def __init__(self, path: str | os.PathLike[str], *, quota: Quota | None = None,
                 max_output: int = _MAX_OUTPUT, state_dir: str | os.PathLike[str] | None = None,
                 sync: bool = True, journal_limit: int = JOURNAL_LIMIT) -> None:  # fmt: skip
        self.path = str(path)
        self.quota = quota or Quota()
        self.max_output = max_output
        self.store = Store(self.quota, record=state_dir is not None)
        #: True once ``start()`` has loaded a saved state from ``state_dir``.
        self.restored = False
        self._state: StateFiles | None = None
        self._state_is_ours = False  # the files hold what this object had at its last save
        self.lock = threading.RLock()
        self._domains: dict[int, _Domain] = {0: _Domain(0)}
        self._conns: set[Connection] = set()
        self._watches: dict[str, list[_Watch]] = {}
        self._dirty: set[Connection] = set()
        self._abs_paths: dict[bytes, str] = {}
        self._next_tx = 0
        self._ep: select.epoll | None = None
        self._fd_objs: dict[int, object] = {}  # fd -> Connection, _Domain (listener), wake socket
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._handlers: dict[int, Callable[[Connection, int, bytes], bytes]] = {
            Op.CONTROL: self._op_control,
            Op.DIRECTORY: self._op_directory,
            Op.READ: self._op_read,
            Op.GET_PERMS: self._op_get_perms,
            Op.WATCH: self._op_watch,
            Op.UNWATCH: self._op_unwatch,
            Op.TRANSACTION_START: self._op_transaction_start,
            Op.TRANSACTION_END: self._op_transaction_end,
            Op.INTRODUCE: self._op_introduce,
            Op.RELEASE: self._op_release,
            Op.GET_DOMAIN_PATH: self._op_get_domain_path,
            Op.WRITE: self._op_write,
            Op.MKDIR: self._op_mkdir,
            Op.RM: self._op_rm,
            Op.SET_PERMS: self._op_set_perms,
            Op.IS_DOMAIN_INTRODUCED: self._op_is_domain_introduced,
            Op.RESUME: self._op_resume,
            Op.SET_TARGET: self._op_set_target,
            Op.RESET_WATCHES: self._op_reset_watches,
            Op.DIRECTORY_PARTIAL: self._op_directory_partial,
            Op.RESTRICT: self._op_restrict,
            Op.RESTRICT_LEGACY: self._op_restrict,
        }
        # The socket loop sends a connection its replies right away; a durable server first
        # journals the batch (see _flush_durable), so replies wait for the end of the batch.
        self._replies_ready: Callable[[Connection], None] = self._flush
        if state_dir is not None:
            self._state = StateFiles(Path(state_dir), sync=sync, journal_limit=journal_limit)
            # Instance attributes: the in-memory server keeps its methods and their speed.
            self._dispatch = self._dispatch_durable  # type: ignore[method-assign]
            self._flush = self._flush_durable  # type: ignore[method-assign]
            self._replies_ready = self._dirty.add

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> XenStoreServer:
        """Bind the dom0 socket (replacing a stale one) and start serving in a thread."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        if self._state is not None:
            self._open_state()  # first: restored domains get their sockets below
        self._ep = select.epoll()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._register(self._wake_r, self._wake_r)
        try:
            self._listen(self._domains[0], self.path)
            with self.lock:
                for dom in self._domains.values():
                    if dom.domid and dom.listener is None:
                        self._listen(dom, self.domain_socket(dom.domid))
        except BaseException:
            if self._state is not None:
                self._state.close()  # saved just now: a later start() saves again
            raise
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="xenstored", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: close every connection and socket, remove the socket files."""
        if self._thread is None:
            return
        self._stopping = True
        self._wake()
        self._thread.join(10)
        self._thread = None
        with self.lock:
            for conn in list(self._conns):
                if conn.sock is not None:
                    self._close(conn)
            for dom in self._domains.values():
                self._unlisten(dom)
            assert self._ep is not None
            self._ep.close()
            self._ep = None
            self._fd_objs.clear()
            for s in (self._wake_r, self._wake_w):
                if s is not None:
                    s.close()
            self._wake_r = self._wake_w = None
            if self._state is not None and self._state.open:
                try:
                    self._save()  # the next start() then has no journal to replay
                except OSError:
                    log.exception("xenstored: cannot write the final snapshot")
                self._state.close()

    def __enter__(self) -> XenStoreServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the in-process API (any thread) ------------------------------------------------------

    def domain_socket(self, domid: int) -> str:
        """The socket whose clients act as domain ``domid`` (dom0: the main socket)."""
        return self.path if domid == 0 else f"{self.path}.dom{domid}"

    @property
    def domains(self) -> list[int]:
        """Introduced domains, dom0 included."""
        with self.lock:
            return sorted(self._domains)

    def is_introduced(self, domid: int) -> bool:
        with self.lock:
            return domid in self._domains

    def introduce_domain(self, domid: int, name: str, memory_kib: int, max_kib: int) -> None:
        """Create domain ``domid`` as the toolstack would: lay out ``/local/domain/<domid>``
        (name, domid, memory/target, memory/static-max, control/, data/, ...), then INTRODUCE it
        (its socket appears and ``@introduceDomain`` fires)."""
        if not 0 < domid < 0x7FF0:  # DOMID_FIRST_RESERVED
            raise ValueError(f"domid must be 1..32751: {domid}")
        with self.lock:
            if domid in self._domains:
                raise ValueError(f"domain {domid} already exists")
            xs = self.connect(0)
            try:
                layout_domain(xs, domid, name, memory_kib, max_kib)
            finally:
                xs.close()
            self._introduce(domid)
            self._persist_now()

    def release_domain(self, domid: int) -> None:
        """Destroy domain ``domid`` as the toolstack would: remove ``/local/domain/<domid>``,
        then RELEASE it (its connections close, ``@releaseDomain`` fires)."""
        with self.lock:
            if domid == 0 or domid not in self._domains:
                raise ValueError(f"no such domain: {domid}")
            with contextlib.suppress(XsError):
                self._fire(self.store.mutate("rm", DOM0, f"/local/domain/{domid}"))
            self._release(domid)
            self._persist_now()
        self._wake()

    def connect(self, domid: int = 0) -> LocalXenStore:
        """An in-process client acting as ``domid`` (a :class:`~xentmem.xenstore.XenStore`)."""
        return LocalXenStore(self, domid)

    # used by LocalXenStore
    def _local_connection(self, domid: int, on_event: Callable[[bytes, bytes], None],
                          on_close: Callable[[], None]) -> Connection:  # fmt: skip
        with self.lock:
            dom = self._domains.get(domid)
            if dom is None:
                raise ValueError(f"domain {domid} is not introduced")
            conn = _LocalConnection(dom, on_event, on_close)
            self._conns.add(conn)
            return conn

    def _local_request(
        self, conn: Connection, op: int, tx_id: int, payload: bytes
    ) -> tuple[int, bytes]:
        with self.lock:
            if conn.closed:
                raise ConnectionError("connection closed")
            self._dispatch(conn, op, 0, tx_id, payload)
            data = bytes(conn.out)
            conn.out.clear()
            if self._state is not None:
                try:
                    self._persist_now()
                except OSError:
                    log.exception("xenstored: cannot write the journal")
                    data = _wire.pack(Op.ERROR, 0, tx_id, b"EIO\0")  # not acknowledged
            dirty = bool(self._dirty)
        if dirty:
            self._wake()
        rop, _rq, _tx, size = HEADER.unpack_from(data)
        return rop, data[_wire.HEADER_SIZE : _wire.HEADER_SIZE + size]

    def _local_close(self, conn: Connection) -> None:
        with self.lock:
            if not conn.closed:
                self._drop(conn)

    # --- sockets ------------------------------------------------------------------------------

    def _listen(self, dom: _Domain, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        s.listen(64)
        s.setblocking(False)
        dom.listener, dom.socket_path = s, path
        if self._ep is not None:
            self._register(s, dom)

    def _unlisten(self, dom: _Domain) -> None:
        if dom.listener is None:
            return
        self._unregister(dom.listener)
        dom.listener.close()
        if dom.socket_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dom.socket_path)
        dom.listener = None

    def _wake(self) -> None:
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")

    def _register(self, sock: socket.socket, obj: object) -> None:
        fd = sock.fileno()
        self._fd_objs[fd] = obj
        assert self._ep is not None
        self._ep.register(fd, select.EPOLLIN)

    def _unregister(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if fd < 0:
            return
        self._fd_objs.pop(fd, None)
        if self._ep is not None:
            with contextlib.suppress(OSError, ValueError):
                self._ep.unregister(fd)

    def _run(self) -> None:
        # epoll directly rather than selectors: this loop is most of a request's cost.
        ep = self._ep
        assert ep is not None
        objs = self._fd_objs
        readable = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR
        writable = select.EPOLLOUT
        while not self._stopping:
            try:
                events = ep.poll(1.0)
            except OSError:  # closed under us by stop()
                continue
            with self.lock:
                for fd, mask in events:
                    obj = objs.get(fd)
                    if obj is None:
                        continue
                    try:
                        if type(obj) is Connection:
                            if mask & readable:
                                self._readable(obj)
                            if mask & writable and not obj.closed:
                                self._dirty.add(obj)
                        elif obj is self._wake_r:
                            with contextlib.suppress(OSError):
                                self._wake_r.recv(4096)
                        else:
                            self._accept(obj)  # type: ignore[arg-type]
                    except Exception:  # never let one client take the loop down
                        log.exception("xenstored: error serving %r", obj)
                        if isinstance(obj, Connection) and not obj.closed:
                            self._close(obj)
                if self._dirty:
                    self._flush_dirty()

    def _accept(self, dom: _Domain) -> None:
        assert dom.listener is not None
        try:
            sock, _ = dom.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if dom.domid not in self._domains or self._domains[dom.domid] is not dom:
            sock.close()
            return
        sock.setblocking(False)
        conn = Connection(sock, dom)
        self._conns.add(conn)
        self._register(sock, conn)

    def _readable(self, conn: Connection) -> None:
        assert conn.sock is not None
        try:
            chunk = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._close(conn)
            return
        if conn.inbuf:  # the rest of a partial message came first
            conn.inbuf += chunk
            chunk = bytes(conn.inbuf)
            conn.inbuf.clear()
        pos = 0
        end = len(chunk)
        while end - pos >= 16:  # HEADER_SIZE
            op, rq_id, tx_id, size = _UNPACK_HEADER(chunk, pos)
            if size > PAYLOAD_MAX:
                # Cannot resynchronise on a stream that lies about lengths: answer, then hang up.
                conn.deliver(_wire.pack(Op.ERROR, rq_id, tx_id, b"EINVAL\0"))
                self._flush(conn)
                self._close(conn)
                return
            nxt = pos + 16 + size
            if nxt > end:
                break
            self._dispatch(conn, op, rq_id, tx_id, chunk[pos + 16 : nxt])
            pos = nxt
            if conn.closed:
                return
        if pos < end:
            conn.inbuf += chunk[pos:]
        self._replies_ready(conn)  # the replies now; other connections' events via _dirty

    def _flush_dirty(self) -> None:
        while self._dirty:
            conn = self._dirty.pop()
            if not conn.closed and conn.sock is not None:
                self._flush(conn)

    def _flush(self, conn: Connection) -> None:
        assert conn.sock is not None
        out = conn.out
        if out:
            try:
                sent = conn.sock.send(out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(conn)
                return
            del out[:sent]
        want_write = bool(out)
        if want_write != conn.want_write and self._ep is not None:
            with contextlib.suppress(OSError, ValueError):
                self._ep.modify(conn.sock, select.EPOLLIN | (select.EPOLLOUT if want_write else 0))
            conn.want_write = want_write
        if len(out) > self.max_output:
            log.warning(
                "xenstored: dropping dom%d client: %d bytes unread", conn.caller.domid, len(out)
            )
            self._close(conn)

    def _close(self, conn: Connection) -> None:
        if conn.sock is not None:
            self._unregister(conn.sock)
            conn.sock.close()
        self._drop(conn)

    def _drop(self, conn: Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        if isinstance(conn, _LocalConnection):
            conn.on_close()
        self._conns.discard(conn)
        self._dirty.discard(conn)
        self._remove_watches(conn)
        conn.domain.transactions -= len(conn.transactions)
        conn.transactions.clear()

    # --- durable state ------------------------------------------------------------------------

    def _open_state(self) -> None:
        """Load ``state_dir`` (if it holds a state this object did not write itself), then
        write a fresh snapshot: the journal starts empty."""
        state = self._state
        assert state is not None
        with self.lock:
            if not self._state_is_ours and state.exists():
                if self.store.effects:
                    raise RuntimeError(
                        f"{state.directory} holds a saved xenstore, and this server was changed "
                        "before start(): those changes would be lost"
                    )
                self._restore(state)
                self.restored = True
            self._save()
            self._state_is_ours = True

    def _restore(self, state: StateFiles) -> None:
        gen, effects = state.load()
        # Built aside and swapped in whole: a journal that does not fit leaves the server as is.
        store = Store(self.quota, record=True)
        store.gens.value = max(store.gens.value, gen)  # counters only grow, across restarts too
        store.clear()
        domains = {0: _Domain(0)}
        where = state.directory
        for i, effect in enumerate(effects):
            kind = effect[0]
            try:
                if kind in ("w", "r"):
                    store.apply((effect,))
                elif kind == "i":
                    domid = effect[1]
                    if domid in domains or not 0 < domid < 0x7FF0:
                        raise ValueError(f"introduces domain {domid} twice or out of range")
                    domains[domid] = _Domain(domid)
                elif kind == "x":
                    if effect[1] == 0 or domains.pop(effect[1], None) is None:
                        raise ValueError(f"releases domain {effect[1]}, which is not introduced")
                else:  # "t"
                    dom, target = domains.get(effect[1]), effect[2]
                    if dom is None or (target is not None and target not in domains):
                        raise ValueError(f"targets {effect[1]} -> {target}: no such domain")
                    dom.target = target
            except ValueError as exc:
                raise XenStoreStateError(
                    f"{where}: effect {i} ({kind}) does not apply: {exc}"
                ) from None
        self.store = store
        self._domains = domains
        self._abs_paths.clear()

    def _dump(self) -> Iterator[Effect]:
        """The snapshot: the tree, then the domains and their targets."""
        yield from self.store.dump()
        others = [self._domains[domid] for domid in sorted(self._domains) if domid]
        for dom in others:
            yield ("i", dom.domid)
        for dom in others:
            if dom.target is not None:
                yield ("t", dom.domid, dom.target)

    def _save(self) -> None:
        assert self._state is not None
        self._state.save(self.store.gens.value, self._dump())
        self.store.effects.clear()  # type: ignore[union-attr]  # the snapshot holds them

    def _record(self) -> None:
        """Queue the effects of what just ran as one journal record."""
        effects = self.store.effects
        if effects:
            self._state.add(self.store.gens.value, effects)  # type: ignore[union-attr]
            effects.clear()

    def _commit(self) -> None:
        """Make every queued record durable (OSError if the disk refuses)."""
        state = self._state
        assert state is not None
        if state.broken or state.full:
            self._save()  # holds every change, also those the failed or skipped write had
        else:
            state.commit()

    def _persist_now(self) -> None:
        """Journal and commit what the in-process API just did (nothing while not started: the
        next start() saves it)."""
        state = self._state
        if state is not None and state.open:
            self._record()
            if state.pending:
                self._commit()

    def _dispatch_durable(self, conn: Connection, op: int, rq_id: int, tx_id: int,
                          payload: bytes) -> None:  # fmt: skip
        XenStoreServer._dispatch(self, conn, op, rq_id, tx_id, payload)
        if self.store.effects and self._state.open:  # type: ignore[union-attr]
            self._record()

    def _flush_durable(self, conn: Connection) -> None:
        # Nothing leaves before the journal holds it: not a reply, nor a watch event that
        # tells of a change.
        if self._state.pending:  # type: ignore[union-attr]
            try:
                self._commit()
            except OSError:
                log.exception("xenstored: cannot write the journal; hanging up on a client")
                self._close(conn)  # its replies were never sent: nothing acknowledged
                return
        XenStoreServer._flush(self, conn)

    # --- dispatch -----------------------------------------------------------------------------

    def _dispatch(self, conn: Connection, op: int, rq_id: int, tx_id: int, payload: bytes) -> None:
        # A handler returns the reply payload, or (reply, after): ``after`` is a list of events
        # to fire or a message for this connection, sent once the reply is queued.
        handler = self._handlers.get(op)
        after = None
        try:
            if handler is None:
                raise XsError(E.ENOSYS)
            reply = handler(conn, tx_id, payload)
            if type(reply) is tuple:
                reply, after = reply
            conn.deliver(_PACK_HEADER(op, rq_id, tx_id, len(reply)) + reply)
        except XsError as exc:
            conn.deliver(
                _wire.pack(Op.ERROR, rq_id, tx_id, _wire.errno_to_name(exc.errno).encode() + NUL)
            )
        except Exception:
            log.exception("xenstored: internal error on op %d", op)
            conn.deliver(_wire.pack(Op.ERROR, rq_id, tx_id, b"EIO\0"))
        if after:
            if type(after) is bytes:
                conn.deliver(after)
            else:
                self._fire(after)

    # argument parsing: payloads are NUL-terminated strings

    @staticmethod
    def _strings(payload: bytes, n: int) -> list[bytes]:
        """Exactly ``n`` NUL-terminated strings, else EINVAL."""
        if not payload.endswith(NUL):
            raise XsError(E.EINVAL)
        parts = payload[:-1].split(NUL)
        if len(parts) != n:
            raise XsError(E.EINVAL)
        return parts

    @staticmethod
    def _int(raw: bytes) -> int:
        if not raw.isdigit() or len(raw) > 10:
            raise XsError(E.EINVAL)
        return int(raw)

    def _path(self, conn: Connection, raw: bytes) -> str:
        path = self._abs_paths.get(raw)
        if path is not None:
            return path
        if not _wire.path_is_valid(raw):
            raise XsError(E.EINVAL)
        path = raw.decode("ascii")
        if path[0] == "@":
            return path
        if path[0] != "/":
            return f"/local/domain/{conn.caller.domid}/{path}"
        if path.startswith("/@"):  # "/@introduceDomain" names the same node
            path = path[1:]
        # Validated absolute paths are remembered: clients ask for the same few over and over.
        if len(self._abs_paths) >= 4096:
            self._abs_paths.clear()
        self._abs_paths[raw] = path
        return path

    def _tx(self, conn: Connection, tx_id: int) -> Transaction | None:
        if not tx_id:
            return None
        tx = conn.transactions.get(tx_id)
        if tx is None:
            raise XsError(E.ENOENT)
        return tx

    @staticmethod
    def _privileged(conn: Connection) -> None:
        if not conn.caller.privileged:
            raise XsError(E.EACCES)

    # node ops

    def _op_read(self, conn: Connection, tx_id: int, payload: bytes) -> bytes:
        # The hottest op: argument checks, path lookup and permission check inlined.
        raw = payload[:-1]
        if payload[-1:] != NUL or NUL in raw:
            raise XsError(E.EINVAL)
        path = self._abs_paths.get(raw) or self._path(conn, raw)
        if tx_id:
            return self._tx(conn, tx_id).read(path).value  # type: ignore[union-attr]
        node = walk(self.store.live.root, split(path))
        if node is None:
            raise XsError(E.ENOENT)
        caller = conn.caller
        if caller.domid and not allowed(caller, node.perms, "r"):
            raise XsError(E.EACCES)
        return node.value

    def _listing(self, conn: Connection, tx_id: int, raw: bytes):
        path = self._path(conn, raw)
        tx = self._tx(conn, tx_id)
        node = tx.directory(path) if tx else self.store.read(conn.caller, path)
        return node, b"".join(name.encode() + NUL for name in sorted(node.children))

    def _op_directory(self, conn: Connection, tx_id: int, payload: bytes) -> bytes:
        (raw,) = self._strings(payload, 1)
        _node, data = self._listing(conn, tx_id, raw)
        if len(data) > PAYLOAD_MAX:
            raise XsError(E.E2BIG)  # the client should use DIRECTORY_PARTIAL
        return data

    def _op_directory_partial(self, conn: Connection, tx_id: int, payload: bytes) -> bytes:
        # C xenstored's format: "<generation hex>\0" then whole names from byte offset ``off``
        # of the full listing; a final extra "\0" marks the end.
        raw, raw_off = self._strings(payload, 2)
        off = self._int(raw_off)
        node, data = self._listing(conn, tx_id, raw)
        gen = b"%x\0" % node.cgen
        if off >= len(data):
            return gen + NUL
        maxlen = PAYLOAD_MAX - len(gen) - 1
        end = off
        while end < len(data):
            nxt = data.index(NUL, end) + 1
            if nxt - off > maxlen:
                break
            end = nxt
        if end == off:
            raise XsError(E.E2BIG)  # cannot happen: names are shorter than a payload
        return gen + data[off:end] + (NUL if end == len(data) else b"")

    def _op_get_perms(self, conn: Connection, tx_id: int, payload: bytes) -> bytes:
        (raw,) = self._strings(payload, 1)
        path = self._path(conn, raw)
        tx = self._tx(conn, tx_id)
        node = tx.read(path) if tx else self.store.read(conn.caller, path)
        return _wire.format_perms(list(node.perms))

    def _mutate(self, conn: Connection, tx_id: int, name: str, path: str, *args: object):
        tx = self._tx(conn, tx_id)
        if tx is not None:
            tx.mutate(name, path, *args)
            return _OK
        return _OK, self.store.mutate(name, conn.caller, path, *args)

    def _op_write(self, conn: Connection, tx_id: int, payload: bytes):
        i = payload.find(NUL)
        if i < 0:
            raise XsError(E.EINVAL)
        raw = payload[:i]
        path = self._abs_paths.get(raw) or self._path(conn, raw)
        if tx_id:
            return self._mutate(conn, tx_id, "write", path, payload[i + 1 :])
        store = self.store
        store.live.write(conn.caller, path, payload[i + 1 :])
        return _OK, store._settle(store.live)

    def _op_mkdir(self, conn: Connection, tx_id: int, payload: bytes):
        (raw,) = self._strings(payload, 1)
        return self._mutate(conn, tx_id, "mkdir", self._path(conn, raw))

    def _op_rm(self, conn: Connection, tx_id: int, payload: bytes):
        (raw,) = self._strings(payload, 1)
        return self._mutate(conn, tx_id, "rm", self._path(conn, raw))

    def _op_set_perms(self, conn: Connection, tx_id: int, payload: bytes):
        if not payload.endswith(NUL):
            raise XsError(E.EINVAL)
        parts = payload[:-1].split(NUL)
        if len(parts) < 2:
            raise XsError(E.EINVAL)
        path = self._path(conn, parts[0])
        try:
            perms = tuple(Perm.parse(p) for p in parts[1:])
        except (ValueError, UnicodeDecodeError):
            raise XsError(E.EINVAL) from None
        return self._mutate(conn, tx_id, "set_perms", path, perms)

    # transactions

    def _op_transaction_start(self, conn: Connection, tx_id: int, payload: bytes) -> bytes:
        if tx_id:
            raise XsError(E.EBUSY)  # nested transactions are not supported (oxenstored: EBUSY)
        dom = conn.domain
        if not conn.caller.privileged and dom.transactions >= self.quota.max_transactions:
            raise XsError(E.ENOSPC)
        self._next_tx = self._next_tx % 0xFFFFFFFF + 1
        while self._next_tx in conn.transactions:
            self._next_tx = self._next_tx % 0xFFFFFFFF + 1
        tx = self.store.begin(self._next_tx, conn.caller)
        conn.transactions[tx.id] = tx
        dom.transactions += 1
        return b"%d\0" % tx.id

    def _op_transaction_end(self, conn: Connection, tx_id: int, payload: bytes):
        (arg,) = self._strings(payload, 1)
        if arg not in (b"T", b"F"):
            raise XsError(E.EINVAL)
        tx = self._tx(conn, tx_id)
        if tx is None:
            raise XsError(E.ENOENT)
        del conn.transactions[tx_id]
        conn.domain.transactions -= 1
        if arg == b"F":
            return _OK
        return _OK, self.store.commit(tx)

    # watches

    def _op_watch(self, conn: Connection, tx_id: int, payload: bytes) -> tuple[bytes, bytes]:
        raw, token = self._strings(payload, 2)
        path = self._path(conn, raw)
        for w in conn.watches:
            if w.path == path and w.token == token:
                raise XsError(E.EEXIST)
        dom = conn.domain
        if not conn.caller.privileged and dom.watches >= self.quota.max_watches:
            raise XsError(E.ENOSPC)
        prefix = None if raw[:1] in (b"/", b"@") else f"/local/domain/{conn.caller.domid}/"
        watch = _Watch(conn, path, token, prefix)
        conn.watches.append(watch)
        self._watches.setdefault(path, []).append(watch)
        dom.watches += 1
        # The reply goes first, then the initial event (oxenstored's order).
        return _OK, _wire.pack(Op.WATCH_EVENT, 0, 0, raw + NUL + token + NUL)

    def _op_unwatch(self, conn: Connection, tx_id: int, payload: bytes) -> bytes:
        raw, token = self._strings(payload, 2)
        path = self._path(conn, raw)
        for w in conn.watches:
            if w.path == path and w.token == token:
                self._remove_watch(w)
                return _OK
        raise XsError(E.ENOENT)

    def _op_reset_watches(self, conn: Connection, tx_id: int, payload: bytes) -> bytes:
        self._remove_watches(conn)
        conn.domain.transactions -= len(conn.transactions)
        conn.transactions.clear()
        return _OK

    def _remove_watches(self, conn: Connection) -> None:
        for w in list(conn.watches):
            self._remove_watch(w)

    def _remove_watch(self, w: _Watch) -> None:
        w.conn.watches.remove(w)
        w.conn.domain.watches -= 1
        lst = self._watches.get(w.path)
        if lst is not None:
            lst.remove(w)
            if not lst:
                del self._watches[w.path]

    def _fire(self, events: list[Event]) -> None:
        watches = self._watches
        if not watches:
            return
        for ev in events:
            path = ev.path
            # Watches on the path itself and on each ancestor.
            probe = path
            while True:
                lst = watches.get(probe)
                if lst:
                    for w in lst:
                        self._notify(w, path, ev.perms, ev.old_perms)
                if probe == "/" or probe[0] != "/":
                    break
                probe = probe.rsplit("/", 1)[0] or "/"
            # A removed subtree fires the watches inside it, each with its own path.
            if ev.removed is not None:
                base = path + "/"
                for wpath, lst in list(watches.items()):
                    if wpath.startswith(base):
                        node = walk(ev.removed, split(wpath)[len(split(path)) :])
                        perms = node.perms if node is not None else ev.perms
                        for w in list(lst):
                            self._notify(w, wpath, perms, None)

    def _notify(self, w: _Watch, path: str, perms, old_perms) -> None:
        conn = w.conn
        caller = conn.caller
        if not (
            allowed(caller, perms, "r")
            or (old_perms is not None and allowed(caller, old_perms, "r"))
        ):
            return
        if w.prefix is not None and path.startswith(w.prefix):
            path = path[len(w.prefix) :]
        conn.deliver(_wire.pack(Op.WATCH_EVENT, 0, 0, path.encode() + NUL + w.token + NUL))
        if conn.sock is not None:
            self._dirty.add(conn)

    # domains

    def _op_introduce(self, conn: Connection, tx_id: int, payload: bytes) -> bytes:
        self._privileged(conn)
        raw_dom, raw_mfn, raw_port = self._strings(payload, 3)
        domid = self._int(raw_dom)
        self._int(raw_mfn)
        self._int(raw_port)
        if domid == 0 or domid >= 0x7FF0:
            raise XsError(E.EINVAL)
        if domid not in self._domains:
            self._introduce(domid)
        return _OK

    def _introduce(self, domid: int) -> None:
        dom = _Domain(domid)
        self._domains[domid] = dom
        if self.store.effects is not None:
            self.store.effects.append(("i", domid))
        if self._ep is not None:
            self._listen(dom, self.domain_socket(domid))
        self._fire([Event("@introduceDomain", self._special_perms("@introduceDomain"))])

    def _special_perms(self, name: str) -> tuple[Perm, ...]:
        node = self.store.get(name)
        return node.perms if node is not None else (Perm("n", 0),)

    def _op_release(self, conn: Connection, tx_id: int, payload: bytes) -> bytes:
        self._privileged(conn)
        (raw,) = self._strings(payload, 1)
        domid = self._int(raw)
        if domid == 0 or domid not in self._domains:
            raise XsError(E.EINVAL)
        self._release(domid)
        return _OK

    def _release(self, domid: int) -> None:
        dom = self._domains.pop(domid)
        if self.store.effects is not None:
            self.store.effects.append(("x", domid))
        self._unlisten(dom)
        for c in list(self._conns):
            if c.domain is dom:
                if c.sock is not None:
                    self._flush(c)
                    self._close(c)
                else:
                    self._drop(c)
        for other in self._domains.values():
            if other.target == domid:
                self._set_target(other, None)
        # oxenstored: nodes the domain owns go, and it leaves every ACL (no watch fires).
        self.store.strip_domain(domid)
        self._fire([Event("@releaseDomain", self._special_perms("@releaseDomain"))])

    def _op_is_domain_introduced(self, conn: Connection, tx_id: int, payload: bytes) -> bytes:
        self._privileged(conn)
        (raw,) = self._strings(payload, 1)
        return b"T\0" if self._int(raw) in self._domains else b"F\0"

    def _op_get_domain_path(self, conn: Connection, tx_id: int, payload: bytes) -> bytes:
        (raw,) = self._strings(payload, 1)
        return b"/local/domain/%d\0" % self._int(raw)

    def _op_resume(self, conn: Connection, tx_id: int, payload: bytes) -> bytes:
        self._privileged(conn)
        (raw,) = self._strings(payload, 1)
        domid = self._int(raw)
        if domid == 0 or domid not in self._domains:
            raise XsError(E.EINVAL)
        return _OK

    def _op_set_target(self, conn: Connection, tx_id: int, payload: bytes) -> bytes:
        self._privileged(conn)
        raw_dom, raw_target = self._strings(payload, 2)
        domid, target = self._int(raw_dom), self._int(raw_target)
        if domid not in self._domains or target not in self._domains or domid == 0:
            raise XsError(E.ENOENT)
        self._set_target(self._domains[domid], target)
        return _OK

    def _set_target(self, dom: _Domain, target: int | None) -> None:
        dom.target = target
        if self.store.effects is not None:
            self.store.effects.append(("t", dom.domid, target))
        for c in self._conns:
            if c.domain is dom:
                c.caller = Caller(dom.domid, target)

    def _op_restrict(self, conn: Connection, tx_id: int, payload: bytes) -> bytes:
        self._privileged(conn)
        (raw,) = self._strings(payload, 1)
        domid = self._int(raw)
        dom = self._domains.get(domid)
        if dom is None:
            raise XsError(E.ENOENT)
        if conn.transactions:
            raise XsError(E.EBUSY)
        if domid:
            conn.domain.watches -= len(conn.watches)
            conn.domain = dom
            conn.caller = Caller(domid, dom.target)
            dom.watches += len(conn.watches)
        return _OK

    def _op_control(self, conn: Connection, tx_id: int, payload: bytes) -> bytes:
        self._privileged(conn)
        parts = _wire.split_strings(payload)
        if not parts:
            raise XsError(E.EINVAL)
        cmd = parts[0]
        if cmd == b"print":
            log.info("xenstored: %s", b" ".join(parts[1:]).decode("ascii", "replace"))
            return _OK
        if cmd == b"check":
            return _OK
        if cmd == b"help":
            return b"check\nprint <text>\n\0"
        raise XsError(E.EINVAL)
