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

Limits: what no guest can do
----------------------------
A guest may not take the server down, make it spin, fill its log or its memory. Per domain
(:class:`ConnectionLimits`; ``limits=`` for every guest, ``dom0_limits=`` for dom0's socket):

================  ========  ========  =============================================================
field             guest     dom0      what happens
================  ========  ========  =============================================================
``connections``   32        1024      more socket connections are accepted and closed at once
``pause_at``      64 KiB    1 MiB     unsent reply bytes at which the connection's requests are no
                                      longer read (its socket leaves the read set) until half are
                                      sent: back-pressure, as oxenstored stops reading a ring with
                                      ``quota-maxoutstanding`` (1024) replies unread
``max_unread``    1 MiB     8 MiB     unsent bytes (replies and watch events) of one connection:
                                      it is dropped (``max_output=`` sets this for both)
``domain_unread`` 4 MiB     256 MiB   unsent bytes of all the domain's connections: the one that
                                      goes past it is dropped
``watch_events``  1024      65536     unsent watch events of one connection: it is dropped
                                      (oxenstored's ``quota-maxwatchevents``, 1024)
================  ========  ========  =============================================================

A request is read whole before it is dispatched, so a partial request holds at most 16 + 4096
bytes (a header announcing more gets EINVAL and the connection is closed); a paused connection
holds at most one more recv() (64 KiB) of unread requests. One guest thus makes the server hold at
most about ``domain_unread`` + ``connections`` x (``pause_at`` + 4 KiB + 64 KiB) = 8.2 MiB of
buffers, on top of what :class:`Quota` lets it store (1000 nodes of at most 2048 bytes).

When accept() fails for want of a resource (EMFILE, ENFILE, ENOBUFS, ENOMEM), that socket stops
accepting for 100 ms while every open connection is served, with one log line per socket per
10 s. Any other error serving a connection drops that connection only; a bug that kills the event
loop is logged once. The parts: :mod:`._loop` (sockets, epoll, back-pressure, limits),
:mod:`._handlers` (one method per op), :mod:`._watches` (the watch registry), :mod:`._domains`
(introduce, release, set_target, restrict and the domain sockets), :mod:`._conn` (what they
share); this module composes them, with the in-process API and the durable state.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from . import _wire
from ._client import LocalXenStore
from ._conn import DOM0_LIMITS, Connection, ConnectionLimits, Domain, LocalConnection, Throttle
from ._domains import Domains
from ._handlers import Handlers
from ._loop import LOG_INTERVAL, Bind, Dispatch, EventLoop
from ._persist import JOURNAL_LIMIT, StateFiles, XenStoreStateError
from ._store import DOM0, Effect, Quota, Store, XsError
from ._watches import WatchRegistry
from ._wire import HEADER, Op
from .toolstack import layout_domain

__all__ = ["ConnectionLimits", "XenStoreServer", "XenStoreStateError"]

log = logging.getLogger(__name__)


class XenStoreServer:
    """A xenstored on the unix socket ``path`` (see the module docstring for the design).

    ``quota`` bounds what each guest may store, ``limits`` / ``dom0_limits`` what a guest's / dom0's
    connections may make the server hold (``max_output``, if given, replaces ``max_unread`` in
    both). ``bind(sock, path)`` binds each socket (default: bind, then chmod 0600; the
    emulator daemon passes one that is never wider than 0600, even for an instant).
    """

    def __init__(self, path: str | os.PathLike[str], *, quota: Quota | None = None,
                 max_output: int | None = None, state_dir: str | os.PathLike[str] | None = None,
                 sync: bool = True, journal_limit: int = JOURNAL_LIMIT,
                 limits: ConnectionLimits | None = None,
                 dom0_limits: ConnectionLimits | None = None,
                 bind: Bind | None = None) -> None:  # fmt: skip
        self.path = str(path)
        self.quota = quota or Quota()
        guest, dom0 = limits or ConnectionLimits(), dom0_limits or DOM0_LIMITS
        if max_output is not None:
            guest, dom0 = guest.with_max_unread(max_output), dom0.with_max_unread(max_output)
        self.limits, self.dom0_limits = guest, dom0
        #: Unsent bytes at which a dom0 connection is dropped (guests: ``limits.max_unread``).
        self.max_output = dom0.max_unread
        self.store = Store(self.quota, record=state_dir is not None)
        #: True once ``start()`` has loaded a saved state from ``state_dir``.
        self.restored = False
        self._state: StateFiles | None = None
        self._state_is_ours = False  # the files hold what this object had at its last save
        self.lock = threading.RLock()
        say = Throttle(logging.getLogger(__name__), LOG_INTERVAL)
        self._loop = EventLoop(self.lock, self._forget, say, bind)
        self._watches = _watches = WatchRegistry(self._loop.dirty)
        self._lifecycle = Domains(self.path, self.store, _watches, self._loop, guest, dom0)
        self._domains: dict[int, Domain] = self._lifecycle.table  # the same dict, for good
        self._handlers = Handlers(self.store, self.quota, _watches, self._lifecycle, say)
        self._dispatch: Dispatch = self._handlers.dispatch
        if state_dir is not None:
            self._state = StateFiles(Path(state_dir), sync=sync, journal_limit=journal_limit)
            self._dispatch = self._dispatch_durable
            # The socket loop sends a connection its replies right away; a durable server first
            # journals the batch, so replies wait for the end of the batch.
            self._loop.commit = self._commit_pending
            self._loop.replies_ready = self._loop.dirty.add
        self._loop.dispatch = self._dispatch

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> XenStoreServer:
        """Bind the dom0 socket (replacing a stale one) and start serving in a thread."""
        if self._loop.running:
            raise RuntimeError("server already started")
        if self._state is not None:
            self._open_state()  # first: restored domains get their sockets below
        self._loop.open()
        try:
            with self.lock:
                self._lifecycle.listen_all()
        except BaseException:
            self._loop.close()
            if self._state is not None:
                self._state.close()  # saved just now: a later start() saves again
            raise
        self._loop.start()
        return self

    def stop(self) -> None:
        """Stop serving: close every connection and socket, remove the socket files."""
        if not self._loop.running:
            return
        self._loop.close()
        with self.lock:
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
        return self._lifecycle.socket_path(domid)

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
            self._lifecycle.introduce(domid)
            self._persist_now()

    def release_domain(self, domid: int) -> None:
        """Destroy domain ``domid`` as the toolstack would: remove ``/local/domain/<domid>``,
        then RELEASE it (its connections close, ``@releaseDomain`` fires)."""
        with self.lock:
            if domid == 0 or domid not in self._domains:
                raise ValueError(f"no such domain: {domid}")
            with contextlib.suppress(XsError):
                self._watches.fire(self.store.mutate("rm", DOM0, f"/local/domain/{domid}"))
            self._lifecycle.release(domid)
            self._persist_now()
        self._loop.wake()

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
            conn = LocalConnection(dom, on_event, on_close)
            dom.conns.add(conn)
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
            dirty = bool(self._loop.dirty)
        if dirty:
            self._loop.wake()
        rop, _rq, _tx, size = HEADER.unpack_from(data)
        return rop, data[_wire.HEADER_SIZE : _wire.HEADER_SIZE + size]

    def _local_close(self, conn: Connection) -> None:
        with self.lock:
            if not conn.closed:
                self._loop.drop(conn)

    def _forget(self, conn: Connection) -> None:
        """A connection closed: its watches go, its transactions are abandoned."""
        self._watches.remove_all(conn)
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
        domains = {0: self._lifecycle.new(0)}
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
                    domains[domid] = self._lifecycle.new(domid)
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
        self._use_store(store)
        self._domains.clear()  # the one dict every part holds
        self._domains.update(domains)

    def _use_store(self, store: Store) -> None:
        self.store = self._lifecycle.store = store
        self._handlers.use_store(store)

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
        self._handlers.dispatch(conn, op, rq_id, tx_id, payload)
        if self.store.effects and self._state.open:  # type: ignore[union-attr]
            self._record()

    def _commit_pending(self) -> None:
        """Before anything is sent: make what it acknowledges durable (OSError if not)."""
        if self._state.pending:  # type: ignore[union-attr]
            self._commit()
