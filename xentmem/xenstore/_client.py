"""Our ``XenStore`` protocol and its implementations: a pyxs-backed client and an in-process one.

pyxs 0.4.1 supplies the transports (unix socket, XenBus device) and the ``Router`` thread that
multiplexes requests by ``rq_id`` and fans watch events out by token. Everything else is ours,
because pyxs hangs forever when the server dies, cannot reopen a client, rejects legal values
(empty, multi-line, binary), accepts only bytes paths and has no RESET_WATCHES or
DIRECTORY_PARTIAL (ref ecosystem.md §1.6):

* every request waits at most ``timeout`` seconds (``XenStoreTimeout``); the socket has the same
  timeout, so a stalled server cannot block a send either;
* a dead connection fails every pending request at once (``XenStoreUnavailable``), and the next
  call reconnects with a fresh pyxs ``Router``;
* after a timeout the connection is dropped (a late reply would otherwise be matched to nothing
  and kill pyxs's router), so the next call starts clean;
* packets are built here (any value bytes, any op), ``rq_id`` comes from a locked counter;
* server errors map to ``XenStoreNotFound`` (ENOENT), ``XenStorePermission`` (EACCES/EPERM) or
  ``XenStoreError`` with ``.errno`` (a quota is ENOSPC from either server: oxenstored's
  non-errno "EQUOTA" is read as ENOSPC).
"""

from __future__ import annotations

import contextlib
import errno as E
import itertools
import os
import queue
import select
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar, Union, runtime_checkable

import pyxs
import pyxs._internal
import pyxs.connection
import pyxs.exceptions

from xentmem.errors import (
    XenStoreError,
    XenStoreNotFound,
    XenStorePermission,
    XenStoreTimeout,
    XenStoreUnavailable,
)

from . import _wire
from ._wire import NUL, PAYLOAD_MAX, Op, Perm

if TYPE_CHECKING:
    from ._conn import Connection
    from .server import XenStoreServer

PathLike = Union[str, bytes]  # noqa: UP007  (evaluated at run time: a guest may run 3.9)
T = TypeVar("T")

DEFAULT_TIMEOUT = 5.0
DEFAULT_RUNDIR = "/var/run/xenstored"
XENBUS_PATHS = ("/dev/xen/xenbus", "/proc/xen/xenbus")
_RECV_SIZE = 65536  # bytes per recv() of replies: a pipelined batch's in one or a few


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class WatchEvent(NamedTuple):
    """A fired watch: the ``path`` that changed (relative if the watch was) and its ``token``."""

    path: str
    token: str


# --- the protocol ---------------------------------------------------------------------------


@runtime_checkable
class XenStoreOps(Protocol):
    """Node operations; what a transaction offers too. Paths are ``str`` or ``bytes``, absolute
    or relative to the caller's ``/local/domain/<domid>``; values are bytes (``str`` is written
    as UTF-8)."""

    def read(self, path: PathLike, default: Any = MISSING) -> bytes:
        """The value at ``path``; ``default`` (if given) instead of raising XenStoreNotFound."""
        ...

    def read_many(self, paths: Iterable[PathLike], default: Any = MISSING) -> list[Any]:
        """:meth:`read` of each path, in order (pipelined where the connection allows)."""
        ...

    def write(self, path: PathLike, value: bytes | str) -> None: ...
    def mkdir(self, path: PathLike) -> None: ...
    def rm(self, path: PathLike) -> None: ...
    def list(self, path: PathLike) -> list[str]: ...
    def exists(self, path: PathLike) -> bool: ...
    def get_perms(self, path: PathLike) -> list[Perm]: ...
    def set_perms(self, path: PathLike, perms: Iterable[Perm | str]) -> None: ...
    def get_domain_path(self, domid: int) -> str: ...


@runtime_checkable
class XenStore(XenStoreOps, Protocol):
    """A xenstore connection: node operations plus watches and transactions."""

    def watch(
        self, path: PathLike, token: str | None = None, *, timeout: float | None = MISSING
    ) -> Watch: ...
    def transaction(self) -> Transaction: ...
    def read_groups(self, groups: Sequence[Sequence[PathLike]], default: Any = MISSING
                    ) -> list[list[Any]]: ...
    def close(self) -> None: ...


# --- shared implementation ------------------------------------------------------------------


def _enc_path(path: PathLike) -> bytes:
    raw = path.encode("ascii", "replace") if isinstance(path, str) else bytes(path)
    if not raw or NUL in raw:
        raise XenStoreError(f"invalid xenstore path {path!r}", E.EINVAL, _text(raw))
    return raw


def _text(raw: bytes) -> str:
    return raw.decode("ascii", "replace")


def _enc_value(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def _error(op: int, number: int, path: str | None, detail: str = "") -> XenStoreError:
    name = _wire.errno_to_name(number)
    where = f" {path}" if path else ""
    msg = f"{_op_name(op)}{where}: {name} ({os.strerror(number)})"
    if detail:
        msg += f": {detail}"
    if number == E.ENOENT:
        return XenStoreNotFound(msg, number, path)
    if number in (E.EACCES, E.EPERM):
        return XenStorePermission(msg, number, path)
    return XenStoreError(msg, number, path)


class _ErrorReply(NamedTuple):
    """An error answer to one request of a batch; the exception is built only if raised (a
    host's status meets some 2000 missing nodes, each read with a default)."""

    op: int
    errno: int
    path: str | None

    def exception(self) -> XenStoreError:
        return _error(self.op, self.errno, self.path)


def _or_default(reply: bytes, error: _ErrorReply | None, default: Any) -> Any:
    """A read's value: its reply, ``default`` for a missing node if there is one, else its
    error raised."""
    if error is None:
        return reply
    if error.errno == E.ENOENT and default is not MISSING:
        return default
    raise error.exception()


def _op_name(op: int) -> str:
    try:
        return Op(op).name
    except ValueError:
        return f"op{op}"


class _Link(Protocol):
    """One connection lifetime: send requests, subscribe watch sinks by token."""

    def request(self, op: int, payload: bytes, tx_id: int, timeout: float) -> tuple[int, bytes]: ...
    def request_many(self, requests: list[tuple[int, bytes, int]], timeout: float
                     ) -> list[tuple[int, bytes]]: ...
    def alive(self) -> bool: ...
    def subscribe(self, token: bytes, sink: _Sink) -> None: ...
    def unsubscribe(self, token: bytes, sink: _Sink) -> None: ...
    def close(self) -> None: ...


class _Sink:
    """Where a link puts the events of one watch (pyxs calls ``events.put``)."""

    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events: queue.SimpleQueue[Any] = queue.SimpleQueue()


_LOST = object()  # put into sinks and reply slots when a link dies


class _Ops:
    """XenStoreOps on top of ``_call(op, payload, path) -> reply payload``."""

    def _call(self, op: int, payload: bytes, path: str | None) -> bytes:
        raise NotImplementedError

    def read(self, path: PathLike, default: Any = MISSING) -> bytes:
        raw = _enc_path(path)
        try:
            return self._call(Op.READ, raw + NUL, _text(raw))
        except XenStoreNotFound:
            if default is MISSING:
                raise
            return default

    def read_many(self, paths: Iterable[PathLike], default: Any = MISSING) -> list[Any]:
        """:meth:`read` of each path, in order; sent together where the connection allows
        (one round trip instead of one each), answered and checked one by one."""
        raws = [_enc_path(p) for p in paths]
        return [_or_default(reply, error, default) for reply, error in
                self._call_many([(Op.READ, raw + NUL, _text(raw)) for raw in raws])]

    def _call_many(self, calls: list[tuple[int, bytes, str | None]]
                   ) -> list[tuple[bytes, _ErrorReply | None]]:
        """``_call`` of each (op, payload, path), pipelined: (reply, None) or (b"", the
        error)."""
        raise NotImplementedError

    def write(self, path: PathLike, value: bytes | str) -> None:
        raw = _enc_path(path)
        self._call(Op.WRITE, raw + NUL + _enc_value(value), _text(raw))

    def mkdir(self, path: PathLike) -> None:
        raw = _enc_path(path)
        self._call(Op.MKDIR, raw + NUL, _text(raw))

    def rm(self, path: PathLike) -> None:
        raw = _enc_path(path)
        self._call(Op.RM, raw + NUL, _text(raw))

    def list(self, path: PathLike) -> list[str]:
        raw = _enc_path(path)
        try:
            reply = self._call(Op.DIRECTORY, raw + NUL, _text(raw))
        except XenStoreError as exc:
            if exc.errno != E.E2BIG:
                raise
            return self._list_partial(raw)
        return [_text(n) for n in _wire.split_strings(reply)]

    def _list_partial(self, raw: bytes) -> list[str]:
        # DIRECTORY_PARTIAL, as libxenstore's xs_directory_part: restart if the node changes.
        for _attempt in range(16):
            names: list[bytes] = []
            gen: bytes | None = None
            off = 0
            while True:
                reply = self._call(Op.DIRECTORY_PARTIAL, raw + NUL + b"%d\0" % off, _text(raw))
                g, _, rest = reply.partition(NUL)
                if gen is None:
                    gen = g
                elif g != gen:
                    break  # changed under us: start over
                done = rest == NUL or rest.endswith(NUL + NUL) or not rest
                chunk = rest[:-1] if done and rest else rest
                names.extend(_wire.split_strings(chunk))
                off += len(chunk)
                if done:
                    return [_text(n) for n in names]
        raise XenStoreError(f"DIRECTORY_PARTIAL {_text(raw)}: kept changing", E.EAGAIN, _text(raw))

    def exists(self, path: PathLike) -> bool:
        try:
            self.read(path)
        except XenStoreNotFound:
            return False
        return True

    def get_perms(self, path: PathLike) -> list[Perm]:
        raw = _enc_path(path)
        reply = self._call(Op.GET_PERMS, raw + NUL, _text(raw))
        try:
            return _wire.parse_perms(_wire.split_strings(reply))
        except ValueError as exc:
            raise XenStoreError(
                f"GET_PERMS {_text(raw)}: bad reply {reply!r}", E.EIO, _text(raw)
            ) from exc

    def set_perms(self, path: PathLike, perms: Iterable[Perm | str]) -> None:
        raw = _enc_path(path)
        plist = [p if isinstance(p, Perm) else Perm.parse(p) for p in perms]
        if not plist:
            raise ValueError("set_perms needs at least the owner entry")
        self._call(Op.SET_PERMS, raw + NUL + _wire.format_perms(plist), _text(raw))

    def get_domain_path(self, domid: int) -> str:
        return _text(self._call(Op.GET_DOMAIN_PATH, b"%d\0" % domid, None).rstrip(NUL))


class _Connection(_Ops):
    """Link management, watches and transactions shared by both clients."""

    timeout: float

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._link: _Link | None = None
        self._closed = False
        self._tokens = itertools.count(1)
        self._active_tokens: set[bytes] = set()

    def _open_link(self) -> _Link:
        raise NotImplementedError

    def _current(self) -> _Link:
        """The live link, reconnecting if the last one died."""
        with self._lock:
            if self._closed:
                raise XenStoreUnavailable("xenstore client is closed")
            link = self._link
            if link is not None and link.alive():
                return link
            if link is not None:
                link.close()
                self._link = None
            self._link = link = self._open_link()
            return link

    def _drop_link(self, link: _Link) -> None:
        with self._lock:
            if self._link is link:
                self._link = None
        link.close()

    def connect(self) -> None:
        """Connect now rather than on first use (raises XenStoreUnavailable)."""
        self._current()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            link, self._link = self._link, None
        if link is not None:
            link.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, op: int, payload: bytes, path: str | None) -> bytes:
        return self._call_on(self._current(), op, payload, 0, path)

    def _call_many(self, calls: list[tuple[int, bytes, str | None]]
                   ) -> list[tuple[bytes, _ErrorReply | None]]:
        return self._call_many_on(self._current(), [(*call, 0) for call in calls])

    @staticmethod
    def _check_size(op: int, payload: bytes, path: str | None) -> None:
        if len(payload) > PAYLOAD_MAX:
            raise XenStoreError(
                f"{_op_name(op)} {path or ''}: {len(payload)} bytes exceed {PAYLOAD_MAX}",
                E.E2BIG,
                path,
            )

    def _call_on(self, link: _Link, op: int, payload: bytes, tx_id: int, path: str | None) -> bytes:
        self._check_size(op, payload, path)
        try:
            rop, reply = link.request(op, payload, tx_id, self.timeout)
        except (XenStoreTimeout, XenStoreUnavailable):
            self._drop_link(link)
            raise
        return self._reply(link, op, rop, reply, path)

    def _call_many_on(self, link: _Link, calls: list[tuple[int, bytes, str | None, int]]
                      ) -> list[tuple[bytes, _ErrorReply | None]]:
        """The calls (op, payload, path, transaction) pipelined on ``link``: all sent, then
        each reply checked as ``_call_on`` checks one; an error reply is returned beside the
        others (b"", the error), for the caller to raise."""
        for op, payload, path, _ in calls:
            self._check_size(op, payload, path)
        try:
            replies = link.request_many([(op, payload, tx) for op, payload, _, tx in calls],
                                        self.timeout)
        except (XenStoreTimeout, XenStoreUnavailable):
            self._drop_link(link)
            raise
        out: list[tuple[bytes, _ErrorReply | None]] = []
        for (op, _, path, _), (rop, reply) in zip(calls, replies, strict=True):
            if rop == Op.ERROR:
                out.append((b"", _ErrorReply(op, _wire.errno_from_name(reply), path)))
            else:
                out.append((self._reply(link, op, rop, reply, path), None))
        return out

    def _reply(self, link: _Link, op: int, rop: int, reply: bytes, path: str | None) -> bytes:
        if rop == Op.ERROR:
            raise _error(op, _wire.errno_from_name(reply), path)
        if rop != op:
            self._drop_link(link)
            raise XenStoreUnavailable(
                f"{_op_name(op)}: unexpected reply op {rop}; connection dropped"
            )
        if op == Op.READ or op == Op.DIRECTORY_PARTIAL:
            return reply
        return reply.rstrip(NUL)

    # --- watches and transactions -----------------------------------------------------------

    def watch(
        self, path: PathLike, token: str | None = None, *, timeout: float | None = MISSING
    ) -> Watch:
        """Watch ``path`` and its subtree; iterate the result for :class:`WatchEvent` s.

        The first event fires at once (the node need not exist). ``timeout`` bounds each wait
        for the next event: the client's timeout by default, ``None`` to wait forever.
        ``token`` defaults to a unique one; it must be unique on this connection.
        """
        raw_token = (token or f"xentmem-{os.getpid()}-{id(self):x}-{next(self._tokens)}").encode()
        with self._lock:
            if raw_token in self._active_tokens:
                raise ValueError(f"watch token {token!r} is already in use on this connection")
            self._active_tokens.add(raw_token)
        w = Watch(self, _enc_path(path), raw_token, self.timeout if timeout is MISSING else timeout)
        try:
            w._arm()
        except BaseException:
            w._release_token()
            raise
        return w

    def transaction(self) -> Transaction:
        """Start a transaction (see :func:`transaction` for the retry loop)."""
        link = self._current()
        reply = self._call_on(link, Op.TRANSACTION_START, NUL, 0, None)
        try:
            tx_id = int(reply)
        except ValueError:
            raise XenStoreError(f"TRANSACTION_START: bad reply {reply!r}", E.EIO) from None
        return Transaction(self, link, tx_id)

    def read_groups(self, groups: Sequence[Sequence[PathLike]], default: Any = MISSING, *,
                    retries: int = 16, backoff: float = 0.002) -> list[list[Any]]:
        """:meth:`read_many` of each group, each group in a transaction of its own (a
        consistent view of it), as ``transaction(xs, lambda tx: tx.read_many(group))`` for
        each would read them, but the groups' transactions pipelined together: three round
        trips for any number of groups, not three per group. A group whose transaction
        conflicts is read again (up to ``retries`` times, then ``XenStoreError`` EAGAIN)."""
        calls = [[(Op.READ, raw + NUL, _text(raw)) for raw in map(_enc_path, group)]
                 for group in groups]
        out: list[list[Any]] = [[] for _ in groups]
        todo = list(range(len(groups)))
        for attempt in range(retries + 1):
            if not todo:
                break
            link = self._current()
            starts = self._call_many_on(link, [(Op.TRANSACTION_START, NUL, None, 0)] * len(todo))
            tx_ids = [int(reply) for reply, error in starts if error is None and reply.isdigit()]
            if len(tx_ids) < len(todo):  # a start refused (a quota?) or answered with junk
                self._end_all(link, tx_ids)
                raise next((error.exception() for _, error in starts if error is not None),
                           XenStoreError("TRANSACTION_START: bad reply", E.EIO))
            try:
                replies = iter(self._call_many_on(link, [
                    (*call, tx) for i, tx in zip(todo, tx_ids, strict=True) for call in calls[i]]))
                for i in todo:
                    out[i] = [_or_default(reply, error, default)
                              for reply, error in itertools.islice(replies, len(calls[i]))]
            except BaseException:
                self._end_all(link, tx_ids)
                raise
            ends = self._call_many_on(link, [(Op.TRANSACTION_END, b"T\0", None, tx)
                                             for tx in tx_ids])
            conflicted = []
            for i, (_, error) in zip(todo, ends, strict=True):
                if error is not None and error.errno != E.EAGAIN:
                    raise error.exception()
                if error is not None:
                    conflicted.append(i)
            todo = conflicted
            if todo:
                time.sleep(min(backoff * (2**attempt), 0.1))
        if todo:
            raise XenStoreError(f"transaction still conflicting after {retries} retries",
                                E.EAGAIN)
        return out

    def _end_all(self, link: _Link, tx_ids: list[int]) -> None:
        """Abort these transactions (nothing to do once the connection is lost)."""
        with contextlib.suppress(XenStoreUnavailable, XenStoreTimeout):
            self._call_many_on(link, [(Op.TRANSACTION_END, b"F\0", None, tx) for tx in tx_ids])

    # --- domain management (dom0) ------------------------------------------------------------

    def is_domain_introduced(self, domid: int) -> bool:
        return self._call(Op.IS_DOMAIN_INTRODUCED, b"%d\0" % domid, None) == b"T"

    def introduce_domain(self, domid: int, mfn: int, port: int) -> None:
        self._call(Op.INTRODUCE, b"%d\0%d\0%d\0" % (domid, mfn, port), None)

    def release_domain(self, domid: int) -> None:
        self._call(Op.RELEASE, b"%d\0" % domid, None)

    def resume_domain(self, domid: int) -> None:
        self._call(Op.RESUME, b"%d\0" % domid, None)

    def set_target(self, domid: int, target: int) -> None:
        self._call(Op.SET_TARGET, b"%d\0%d\0" % (domid, target), None)

    def restrict(self, domid: int) -> None:
        """Make this connection act as ``domid`` from now on (our server; oxenstored: ENOSYS)."""
        self._call(Op.RESTRICT, b"%d\0" % domid, None)

    def reset_watches(self) -> None:
        self._call(Op.RESET_WATCHES, NUL, None)


class Watch:
    """An armed watch. Iterating yields :class:`WatchEvent`; each wait is bounded by ``timeout``
    (``XenStoreTimeout`` if nothing fires). A lost connection raises ``XenStoreUnavailable``
    once; the next wait re-arms the watch on a new connection, whose initial event tells the
    consumer to re-read what it watches (changes in between were not seen)."""

    def __init__(self, client: _Connection, path: bytes, token: bytes, timeout: float) -> None:
        self.client = client
        self.path = _text(path)
        self.token = _text(token)
        self.timeout = timeout
        self._raw_path = path
        self._raw_token = token
        self._link: _Link | None = None
        self._sink: _Sink | None = None
        self._closed = False

    def _arm(self) -> None:
        link = self.client._current()
        sink = _Sink()
        link.subscribe(self._raw_token, sink)
        try:
            self.client._call_on(
                link, Op.WATCH, self._raw_path + NUL + self._raw_token + NUL, 0, self.path
            )
        except BaseException:
            link.unsubscribe(self._raw_token, sink)
            raise
        self._link, self._sink = link, sink

    def _release_token(self) -> None:
        with self.client._lock:
            self.client._active_tokens.discard(self._raw_token)

    def get(self, timeout: float | None = MISSING) -> WatchEvent:
        """The next event, waiting at most ``timeout`` s (default: the watch's; None: forever)."""
        if self._closed:
            raise XenStoreError(f"watch on {self.path} is closed")
        if timeout is MISSING:
            timeout = self.timeout
        if self._sink is None:
            self._arm()
        assert self._sink is not None
        try:
            item = self._sink.events.get(timeout=timeout)
        except queue.Empty:
            raise XenStoreTimeout(
                f"no event on {self.path} within {timeout} s", 0, self.path
            ) from None
        if item is _LOST:
            self._sink = self._link = None
            raise XenStoreUnavailable(
                f"connection lost while watching {self.path}; the next wait re-arms the watch",
                0,
                self.path,
            )
        return WatchEvent(
            item.path.decode("ascii", "replace"), item.token.decode("ascii", "replace")
        )

    def poll(self, timeout: float = 0.0) -> WatchEvent | None:
        """The next event, or None if none arrives within ``timeout`` s."""
        try:
            return self.get(timeout)
        except XenStoreTimeout:
            return None

    def __iter__(self) -> Iterator[WatchEvent]:
        return self

    def __next__(self) -> WatchEvent:
        return self.get()

    def close(self) -> None:
        """Remove the watch (best effort if the connection is gone)."""
        if self._closed:
            return
        self._closed = True
        link, sink = self._link, self._sink
        self._link = self._sink = None
        try:
            if link is not None and sink is not None and link.alive():
                with contextlib.suppress(XenStoreError):
                    self.client._call_on(
                        link, Op.UNWATCH, self._raw_path + NUL + self._raw_token + NUL, 0, self.path
                    )
                link.unsubscribe(self._raw_token, sink)
        finally:
            self._release_token()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Transaction(_Ops):
    """A transaction: node operations isolated until :meth:`commit`.

    As a context manager it commits on a clean exit (raising ``XenStoreError`` with
    ``errno.EAGAIN`` on a conflict) and aborts on an exception. Bound to the connection it
    started on: if that dies, every call raises ``XenStoreUnavailable``.
    """

    def __init__(self, client: _Connection, link: _Link, tx_id: int) -> None:
        self.client = client
        self.id = tx_id
        self._link = link
        self._done = False

    def _call(self, op: int, payload: bytes, path: str | None) -> bytes:
        if self._done:
            raise XenStoreError("transaction already ended", E.EINVAL, path)
        if not self._link.alive():
            self._done = True
            raise XenStoreUnavailable("connection lost; the transaction was aborted", 0, path)
        return self.client._call_on(self._link, op, payload, self.id, path)

    def _call_many(self, calls: list[tuple[int, bytes, str | None]]
                   ) -> list[tuple[bytes, _ErrorReply | None]]:
        if self._done:
            raise XenStoreError("transaction already ended", E.EINVAL, None)
        if not self._link.alive():
            self._done = True
            raise XenStoreUnavailable("connection lost; the transaction was aborted")
        return self.client._call_many_on(self._link, [(*call, self.id) for call in calls])

    def commit(self) -> bool:
        """Commit: True, or False if it conflicted (EAGAIN) and must be redone."""
        try:
            self._call(Op.TRANSACTION_END, b"T\0", None)
        except XenStoreError as exc:
            if exc.errno == E.EAGAIN:
                return False
            raise
        finally:
            self._done = True
        return True

    def abort(self) -> None:
        """Discard the transaction (never raises for a lost connection)."""
        if self._done:
            return
        try:
            self._call(Op.TRANSACTION_END, b"F\0", None)
        except (XenStoreUnavailable, XenStoreTimeout):
            pass
        finally:
            self._done = True

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self.abort()
        elif not self.commit():
            raise XenStoreError(f"transaction {self.id} conflicted", E.EAGAIN)


def transaction(
    xs: XenStore,
    fn: Callable[[Transaction], T],
    *,
    retries: int = 16,
    backoff: float = 0.002,
) -> T:
    """Run ``fn(tx)`` in a transaction, redoing it on EAGAIN up to ``retries`` times.

    ``fn`` must only touch xenstore through ``tx`` (it may run several times). Its return value
    is returned after a successful commit. An exception from ``fn`` aborts and propagates.
    Exhausted retries raise ``XenStoreError`` with ``errno.EAGAIN``.
    """
    for attempt in range(retries + 1):
        tx = xs.transaction()
        try:
            result = fn(tx)
        except XenStoreError as exc:
            tx.abort()
            if exc.errno != E.EAGAIN:
                raise
        except BaseException:
            tx.abort()
            raise
        else:
            if tx.commit():
                return result
        time.sleep(min(backoff * (2**attempt), 0.1))
    raise XenStoreError(f"transaction still conflicting after {retries} retries", E.EAGAIN)


# --- the pyxs-backed client -----------------------------------------------------------------


def resolve_path(env: dict[str, str] | None = None) -> str:
    """Where a xenstore client should connect, as libxenstore's ``xs_open`` decides.

    ``XENSTORED_PATH`` if set; else ``$XENSTORED_RUNDIR/socket`` (``/var/run/xenstored``) if it
    exists; else the guest's XenBus device (``/dev/xen/xenbus``, ``/proc/xen/xenbus``) if it
    exists; else the socket path (connecting will then say why it failed).
    """
    env = os.environ if env is None else env
    if env.get("XENSTORED_PATH"):
        return env["XENSTORED_PATH"]
    sock = os.path.join(env.get("XENSTORED_RUNDIR") or DEFAULT_RUNDIR, "socket")
    if os.path.exists(sock):
        return sock
    for dev in XENBUS_PATHS:
        if os.path.exists(dev):
            return dev
    return sock


def _connect(sock: socket.socket, path: str, timeout: float) -> None:
    """connect(), retrying while the server's listen backlog is full (EAGAIN on AF_UNIX)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock.connect(path)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise TimeoutError(E.ETIMEDOUT, "listen backlog full") from None
            time.sleep(0.005)


class _UnixTransport:
    """pyxs's socket transport with a connect/send/recv timeout."""

    def __init__(self, path: str, timeout: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self._inbuf, self._pos = b"", 0  # received, and how much of it was read
        try:
            _connect(self.sock, path, timeout)
        except BaseException:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self, size: int) -> bytes:
        """``size`` bytes, from what an earlier recv() brought beyond its own first."""
        end = self._pos + size
        while len(self._inbuf) < end:  # one recv() can bring a whole pipelined batch
            chunk = self.sock.recv(_RECV_SIZE)
            if not chunk:
                raise OSError(E.ECONNRESET, "xenstored closed the connection")
            self._inbuf, end = self._inbuf[self._pos:] + chunk, size
            self._pos = 0
        self._pos = end
        return self._inbuf[end - size:end]

    def buffered(self) -> bool:
        """Whether bytes already received wait to be read (select() would not see them)."""
        return self._pos < len(self._inbuf)

    def whole_packets(self) -> list[tuple[int, int, int, int, bytes]]:
        """Every whole packet already received, (op, rq_id, tx_id, size, payload): a batch's
        replies parsed in one loop rather than a recv() call each."""
        buf, pos, end = self._inbuf, self._pos, len(self._inbuf)
        out = []
        while end - pos >= _wire.HEADER_SIZE:
            op, rq_id, tx_id, size = _wire.HEADER.unpack_from(buf, pos)
            start = pos + _wire.HEADER_SIZE
            if start + size > end:
                break
            out.append((op, rq_id, tx_id, size, buf[start:start + size]))
            pos = start + size
        self._pos = pos
        return out

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def shutdown(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.shutdown()
        self.sock.close()


class _AnyOpRecv:
    """pyxs's ``recv`` builds a ``Packet``, whose constructor rejects ops pyxs does not know
    (DIRECTORY_PARTIAL replies would kill the router); build it with ``_make`` instead."""

    transport: Any
    is_connected: bool

    def recv(self) -> Any:
        if not self.is_connected:
            raise pyxs.exceptions.ConnectionError("not connected")
        try:
            op, rq_id, tx_id, size = _wire.HEADER.unpack(self.transport.recv(_wire.HEADER_SIZE))
            payload = self.transport.recv(size) if size else b""
        except OSError as exc:
            self.close()  # type: ignore[attr-defined]
            raise pyxs.exceptions.ConnectionError(f"error while reading: {exc}") from None
        return pyxs._internal.Packet._make((op, rq_id, tx_id, size, payload))


class _UnixConnection(_AnyOpRecv, pyxs.connection.PacketConnection):
    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout

    def create_transport(self) -> _UnixTransport:
        return _UnixTransport(self.path, self.timeout)

    def buffered(self) -> bool:
        return self.transport is not None and self.transport.buffered()

    def recv_all(self) -> list[Any]:
        """The next packet (waiting for it) and every whole one received with it."""
        first = self.recv()
        return [first, *map(pyxs._internal.Packet._make, self.transport.whole_packets())]

    def send_many(self, packets: list[Any]) -> None:
        """Every packet in one write (pyxs writes header and payload apart: two system calls
        and two wake-ups of xenstored per request)."""
        if not self.is_connected:
            raise pyxs.exceptions.ConnectionError("not connected")
        try:
            self.transport.send(b"".join(
                b"%b%b" % (_wire.HEADER.pack(p.op, p.rq_id, p.tx_id, p.size), p.payload)
                for p in packets))
        except OSError as exc:
            self.close()
            raise pyxs.exceptions.ConnectionError(f"error while writing: {exc}") from None


class _XenBusConnection(_AnyOpRecv, pyxs.connection.XenBusConnection):
    def buffered(self) -> bool:
        return False

    def recv_all(self) -> list[Any]:
        return [self.recv()]

    def send_many(self, packets: list[Any]) -> None:
        # the device takes one message per write (the kernel drops what follows one)
        for packet in packets:
            self.send(packet)


class _Slot:
    """Where the router puts one reply (pyxs's ``RVar`` interface: ``set``, ``target``)."""

    __slots__ = ("_replies", "target")

    def __init__(self, replies: _Replies) -> None:
        self._replies = replies
        self.target: Any = None

    def set(self, packet: Any) -> None:
        self.target = packet
        self._replies.arrived()


class _Replies:
    """The replies of one batch of requests, waited for together: one wake-up for the batch
    rather than a condition variable per request."""

    def __init__(self, count: int) -> None:
        self.slots = [_Slot(self) for _ in range(count)]
        self._left = count
        self._done = threading.Event()
        if not count:
            self._done.set()

    def arrived(self) -> None:
        # only the router's thread calls this (a reply, or the link's end): no lock needed
        self._left -= 1
        if not self._left:
            self._done.set()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)


class _Router(pyxs.Router):
    """pyxs's Router, plus: when its thread ends for any reason, every waiter is woken."""

    def __init__(self, connection: Any) -> None:
        super().__init__(connection)
        self.dead = False
        self.failure: BaseException | None = None

    def send_many(self, packets: list[Any]) -> _Replies:
        """:meth:`send` for a batch: written at once, its replies awaited together."""
        replies = _Replies(len(packets))
        with self.send_lock:
            for packet, slot in zip(packets, replies.slots, strict=True):
                # registered first: the reply may beat send_many's return
                self.rvars[packet.rq_id] = slot
            self.connection.send_many(packets)
        return replies

    def _serve(self) -> None:
        """pyxs's loop, reading whatever the transport already holds before select()."""
        connection = self.connection
        try:
            while True:
                if not connection.buffered():
                    ready, _, _ = select.select([connection, self.r_terminator], [], [])
                    if self.r_terminator in ready:
                        break
                for packet in connection.recv_all():
                    if packet.op == Op.WATCH_EVENT:
                        event = pyxs._internal.Event(*packet.payload.split(NUL)[:-1])
                        for monitor in self.monitors[event.token]:
                            monitor.events.put(event)
                        continue
                    rvar = self.rvars.pop(packet.rq_id, None)
                    if rvar is None:
                        raise pyxs.exceptions.UnexpectedPacket(packet)
                    rvar.set(packet)
        finally:
            connection.close()
            self.r_terminator.close()
            self.w_terminator.close()

    def __call__(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # ECONNRESET, UnexpectedPacket, ...: the link is over
            self.failure = exc
        finally:
            self.dead = True
            for rvar in list(self.rvars.values()):
                rvar.set(_LOST)
            self.rvars.clear()
            for sinks in list(self.monitors.values()):
                for sink in list(sinks):
                    sink.events.put(_LOST)


class _PyxsLink:
    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            raise XenStoreUnavailable(
                f"cannot connect to xenstore at {path}: {exc.strerror}", exc.errno or 0
            ) from None
        if stat.S_ISSOCK(mode):
            connection: Any = _UnixConnection(path, timeout)
        else:
            connection = _XenBusConnection(path)
        self.router = _Router(connection)
        try:
            self.router.start()
        except (OSError, pyxs.PyXSError) as exc:
            self.router.terminate()
            raise XenStoreUnavailable(f"cannot connect to xenstore at {path}: {exc}") from None
        self._rq = itertools.count(1)
        self._rq_lock = threading.Lock()

    def alive(self) -> bool:
        return not self.router.dead and self.router.thread.is_alive()

    def request(self, op: int, payload: bytes, tx_id: int, timeout: float) -> tuple[int, bytes]:
        return self.request_many([(op, payload, tx_id)], timeout)[0]

    def request_many(self, requests: list[tuple[int, bytes, int]], timeout: float
                     ) -> list[tuple[int, bytes]]:
        """Every request sent before the first reply is awaited (xenstored answers a
        connection's requests in order); ``timeout`` bounds the whole batch."""
        deadline = time.monotonic() + timeout
        with self._rq_lock:  # pyxs's own next_rq_id() is an unlocked global
            ids = [next(self._rq) & 0xFFFFFFFF for _ in requests]
        # Packet._make skips pyxs's op whitelist (no RESET_WATCHES / DIRECTORY_PARTIAL there)
        packets = [pyxs._internal.Packet._make((op, rq_id, tx_id, len(payload), payload))
                   for (op, payload, tx_id), rq_id in zip(requests, ids, strict=True)]
        replies = self._send(packets)
        if not replies.wait(max(0.0, deadline - time.monotonic())):
            op = next(op for (op, _, _), slot in zip(requests, replies.slots, strict=True)
                      if slot.target is None)
            raise XenStoreTimeout(f"{_op_name(op)}: no reply from {self.path} within "
                                  f"{timeout} s")
        out = []
        for (op, _, _), slot in zip(requests, replies.slots, strict=True):
            if slot.target is _LOST:
                raise XenStoreUnavailable(f"connection to {self.path} lost during "
                                          f"{_op_name(op)}")
            out.append((slot.target.op, slot.target.payload))
        return out

    def _send(self, packets: list[Any]) -> _Replies:
        """The packets written, or ``XenStoreUnavailable`` if the link is dead."""
        router = self.router
        if router.dead:
            raise XenStoreUnavailable(f"connection to {self.path} lost")
        try:
            replies = router.send_many(packets)
        except (OSError, pyxs.PyXSError) as exc:
            raise XenStoreUnavailable(f"connection to {self.path} lost: {exc}") from None
        if router.dead and any(slot.target is None for slot in replies.slots):
            raise XenStoreUnavailable(f"connection to {self.path} lost")
        return replies

    def subscribe(self, token: bytes, sink: _Sink) -> None:
        self.router.subscribe(token, sink)

    def unsubscribe(self, token: bytes, sink: _Sink) -> None:
        sinks = self.router.monitors.get(token)
        if sinks and sink in sinks:
            sinks.remove(sink)
            if not sinks:
                del self.router.monitors[token]

    def close(self) -> None:
        router = self.router
        transport = getattr(router.connection, "transport", None)
        if isinstance(transport, _UnixTransport):
            transport.shutdown()  # unblocks the router thread at once
        try:
            if router.is_connected:
                router.w_terminator.sendall(NUL)
        except OSError:
            pass
        if router.thread.is_alive() and router.thread is not threading.current_thread():
            router.thread.join(1.0)


class XenStoreClient(_Connection):
    """The pyxs-backed :class:`XenStore`: connects lazily to ``path`` (default
    :func:`resolve_path`), bounds every call by ``timeout`` seconds and reconnects after the
    connection is lost. Thread-safe; one connection is shared by all threads."""

    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        super().__init__(timeout)
        self.path = str(path) if path is not None else resolve_path()

    def __repr__(self) -> str:
        return f"XenStoreClient({self.path!r})"

    def _open_link(self) -> _Link:
        return _PyxsLink(self.path, self.timeout)


# --- the in-process client ------------------------------------------------------------------


class _LocalLink:
    def __init__(self, server: XenStoreServer, domid: int) -> None:
        self.server = server
        self._sinks: dict[bytes, list[_Sink]] = {}
        self.conn: Connection = server._local_connection(domid, self._on_event, self._lost)

    def _on_event(self, path: bytes, token: bytes) -> None:
        for sink in self._sinks.get(token, ()):
            sink.events.put(pyxs._internal.Event(path, token))

    def alive(self) -> bool:
        return not self.conn.closed

    def request(self, op: int, payload: bytes, tx_id: int, timeout: float) -> tuple[int, bytes]:
        try:
            return self.server._local_request(self.conn, op, tx_id, payload)
        except ConnectionError:
            self._lost()
            raise XenStoreUnavailable("in-process xenstore connection closed") from None

    def request_many(self, requests: list[tuple[int, bytes, int]], timeout: float
                     ) -> list[tuple[int, bytes]]:
        return [self.request(op, payload, tx_id, timeout) for op, payload, tx_id in requests]

    def _lost(self) -> None:
        for sinks in self._sinks.values():
            for sink in sinks:
                sink.events.put(_LOST)

    def subscribe(self, token: bytes, sink: _Sink) -> None:
        self._sinks.setdefault(token, []).append(sink)

    def unsubscribe(self, token: bytes, sink: _Sink) -> None:
        sinks = self._sinks.get(token)
        if sinks and sink in sinks:
            sinks.remove(sink)
            if not sinks:
                del self._sinks[token]

    def close(self) -> None:
        self.server._local_close(self.conn)  # calls _lost() once


class LocalXenStore(_Connection):
    """A :class:`XenStore` talking to a :class:`~xentmem.xenstore.XenStoreServer` in this
    process, as domain ``domid``, through the very dispatch the sockets use."""

    def __init__(
        self, server: XenStoreServer, domid: int = 0, *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        super().__init__(timeout)
        self.server = server
        self.domid = domid

    def __repr__(self) -> str:
        return f"LocalXenStore(dom{self.domid})"

    def _open_link(self) -> _Link:
        try:
            return _LocalLink(self.server, self.domid)
        except ValueError as exc:
            raise XenStoreUnavailable(str(exc)) from None
