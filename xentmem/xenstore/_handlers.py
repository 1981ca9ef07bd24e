"""The protocol handlers: one method per op, ``op_<name>`` for ``Op.<NAME>``, in one table.

A handler takes ``(conn, tx_id, payload)`` and returns the reply payload, or ``(reply, after)``:
``after`` is a list of store events to fire, or one message for this connection (WATCH's first
event), handled once the reply is queued. It raises :class:`~._store.XsError` to answer ERROR
with that errno; any other exception is a bug, answered EIO (and logged, throttled). An op with
no handler is ENOSYS.
"""

from __future__ import annotations

import errno as E
import logging
from collections.abc import Callable

from . import _wire
from ._conn import Connection, Throttle
from ._domains import Domains
from ._store import Quota, Store, Transaction, XsError, allowed, split, walk
from ._watches import WatchRegistry
from ._wire import HEADER, NUL, PAYLOAD_MAX, Op, Perm

__all__ = ["Handlers"]

log = logging.getLogger("xentmem.xenstore.server")

_OK = b"OK\0"
_PACK_HEADER = HEADER.pack

Handler = Callable[[Connection, int, bytes], object]


class Handlers:
    """The ops over ``store``, ``watches`` and ``domains``; :meth:`dispatch` answers one request."""

    def __init__(self, store: Store, quota: Quota, watches: WatchRegistry, domains: Domains,
                 say: Throttle) -> None:  # fmt: skip
        self.store = store
        self.quota = quota
        self.watches = watches
        self.domains = domains
        self.say = say
        self.abs_paths: dict[bytes, str] = {}  # validated absolute paths (see path())
        self.next_tx = 0
        self.table: dict[int, Handler] = {
            op: getattr(self, f"op_{op.name.lower()}")
            for op in Op
            if hasattr(self, f"op_{op.name.lower()}")
        }
        self.table[Op.RESTRICT_LEGACY] = self.op_restrict

    def use_store(self, store: Store) -> None:
        self.store = store
        self.abs_paths.clear()

    def dispatch(self, conn: Connection, op: int, rq_id: int, tx_id: int, payload: bytes) -> None:
        handler = self.table.get(op)
        after = None
        try:
            if handler is None:
                raise XsError(E.ENOSYS)
            reply = handler(conn, tx_id, payload)
            if type(reply) is tuple:
                reply, after = reply
            conn.deliver(_PACK_HEADER(op, rq_id, tx_id, len(reply)) + reply)  # type: ignore[arg-type]
        except XsError as exc:
            conn.deliver(
                _wire.pack(Op.ERROR, rq_id, tx_id, _wire.errno_to_name(exc.errno).encode() + NUL)
            )
        except Exception:
            self.say(logging.ERROR, ("op", op), "xenstored: internal error on op %d", op,
                     exc_info=True)  # fmt: skip
            conn.deliver(_wire.pack(Op.ERROR, rq_id, tx_id, b"EIO\0"))
        if after:
            if type(after) is bytes:
                conn.deliver_event(after)
            else:
                self.watches.fire(after)  # type: ignore[arg-type]

    # --- arguments: payloads are NUL-terminated strings --------------------------------------

    @staticmethod
    def strings(payload: bytes, n: int) -> list[bytes]:
        """Exactly ``n`` NUL-terminated strings, else EINVAL."""
        if not payload.endswith(NUL):
            raise XsError(E.EINVAL)
        parts = payload[:-1].split(NUL)
        if len(parts) != n:
            raise XsError(E.EINVAL)
        return parts

    @staticmethod
    def integer(raw: bytes) -> int:
        if not raw.isdigit() or len(raw) > 10:
            raise XsError(E.EINVAL)
        return int(raw)

    def path(self, conn: Connection, raw: bytes) -> str:
        path = self.abs_paths.get(raw)
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
        if len(self.abs_paths) >= 4096:
            self.abs_paths.clear()
        self.abs_paths[raw] = path
        return path

    @staticmethod
    def tx(conn: Connection, tx_id: int) -> Transaction | None:
        if not tx_id:
            return None
        tx = conn.transactions.get(tx_id)
        if tx is None:
            raise XsError(E.ENOENT)
        return tx

    @staticmethod
    def privileged(conn: Connection) -> None:
        if not conn.caller.privileged:
            raise XsError(E.EACCES)

    # --- nodes -------------------------------------------------------------------------------

    def op_read(self, conn: Connection, tx_id: int, payload: bytes) -> bytes:
        # The hottest op: argument checks, path lookup and permission check inlined.
        raw = payload[:-1]
        if payload[-1:] != NUL or NUL in raw:
            raise XsError(E.EINVAL)
        path = self.abs_paths.get(raw) or self.path(conn, raw)
        if tx_id:
            return self.tx(conn, tx_id).read(path).value  # type: ignore[union-attr]
        node = walk(self.store.live.root, split(path))
        if node is None:
            raise XsError(E.ENOENT)
        caller = conn.caller
        if caller.domid and not allowed(caller, node.perms, "r"):
            raise XsError(E.EACCES)
        return node.value

    def _listing(self, conn: Connection, tx_id: int, raw: bytes):
        path = self.path(conn, raw)
        tx = self.tx(conn, tx_id)
        node = tx.directory(path) if tx else self.store.read(conn.caller, path)
        return node, b"".join(name.encode() + NUL for name in sorted(node.children))

    def op_directory(self, conn: Connection, tx_id: int, payload: bytes) -> bytes:
        (raw,) = self.strings(payload, 1)
        _node, data = self._listing(conn, tx_id, raw)
        if len(data) > PAYLOAD_MAX:
            raise XsError(E.E2BIG)  # the client should use DIRECTORY_PARTIAL
        return data

    def op_directory_partial(self, conn: Connection, tx_id: int, payload: bytes) -> bytes:
        # C xenstored's format: "<generation hex>\0" then whole names from byte offset ``off``
        # of the full listing; a final extra "\0" marks the end.
        raw, raw_off = self.strings(payload, 2)
        off = self.integer(raw_off)
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

    def op_get_perms(self, conn: Connection, tx_id: int, payload: bytes) -> bytes:
        (raw,) = self.strings(payload, 1)
        path = self.path(conn, raw)
        tx = self.tx(conn, tx_id)
        node = tx.read(path) if tx else self.store.read(conn.caller, path)
        return _wire.format_perms(list(node.perms))

    def _mutate(self, conn: Connection, tx_id: int, name: str, path: str, *args: object):
        tx = self.tx(conn, tx_id)
        if tx is not None:
            tx.mutate(name, path, *args)
            return _OK
        return _OK, self.store.mutate(name, conn.caller, path, *args)

    def op_write(self, conn: Connection, tx_id: int, payload: bytes):
        i = payload.find(NUL)
        if i < 0:
            raise XsError(E.EINVAL)
        raw = payload[:i]
        path = self.abs_paths.get(raw) or self.path(conn, raw)
        if tx_id:
            return self._mutate(conn, tx_id, "write", path, payload[i + 1 :])
        store = self.store
        store.live.write(conn.caller, path, payload[i + 1 :])
        return _OK, store._settle(store.live)

    def op_mkdir(self, conn: Connection, tx_id: int, payload: bytes):
        (raw,) = self.strings(payload, 1)
        return self._mutate(conn, tx_id, "mkdir", self.path(conn, raw))

    def op_rm(self, conn: Connection, tx_id: int, payload: bytes):
        (raw,) = self.strings(payload, 1)
        return self._mutate(conn, tx_id, "rm", self.path(conn, raw))

    def op_set_perms(self, conn: Connection, tx_id: int, payload: bytes):
        if not payload.endswith(NUL):
            raise XsError(E.EINVAL)
        parts = payload[:-1].split(NUL)
        if len(parts) < 2:
            raise XsError(E.EINVAL)
        path = self.path(conn, parts[0])
        try:
            perms = tuple(Perm.parse(p) for p in parts[1:])
        except (ValueError, UnicodeDecodeError):
            raise XsError(E.EINVAL) from None
        return self._mutate(conn, tx_id, "set_perms", path, perms)

    # --- transactions ------------------------------------------------------------------------

    def op_transaction_start(self, conn: Connection, tx_id: int, payload: bytes) -> bytes:
        if tx_id:
            raise XsError(E.EBUSY)  # nested transactions are not supported (oxenstored: EBUSY)
        dom = conn.domain
        if not conn.caller.privileged and dom.transactions >= self.quota.max_transactions:
            raise XsError(E.ENOSPC)
        self.next_tx = self.next_tx % 0xFFFFFFFF + 1
        while self.next_tx in conn.transactions:
            self.next_tx = self.next_tx % 0xFFFFFFFF + 1
        tx = self.store.begin(self.next_tx, conn.caller)
        conn.transactions[tx.id] = tx
        dom.transactions += 1
        return b"%d\0" % tx.id

    def op_transaction_end(self, conn: Connection, tx_id: int, payload: bytes):
        (arg,) = self.strings(payload, 1)
        if arg not in (b"T", b"F"):
            raise XsError(E.EINVAL)
        tx = self.tx(conn, tx_id)
        if tx is None:
            raise XsError(E.ENOENT)
        del conn.transactions[tx_id]
        conn.domain.transactions -= 1
        if arg == b"F":
            return _OK
        return _OK, self.store.commit(tx)

    # --- watches -----------------------------------------------------------------------------

    def op_watch(self, conn: Connection, tx_id: int, payload: bytes) -> tuple[bytes, bytes]:
        raw, token = self.strings(payload, 2)
        path = self.path(conn, raw)
        if self.watches.find(conn, path, token) is not None:
            raise XsError(E.EEXIST)
        if not conn.caller.privileged and conn.domain.watches >= self.quota.max_watches:
            raise XsError(E.ENOSPC)
        prefix = None if raw[:1] in (b"/", b"@") else f"/local/domain/{conn.caller.domid}/"
        self.watches.add(conn, path, token, prefix)
        # The reply goes first, then the initial event (oxenstored's order).
        return _OK, _wire.pack(Op.WATCH_EVENT, 0, 0, raw + NUL + token + NUL)

    def op_unwatch(self, conn: Connection, tx_id: int, payload: bytes) -> bytes:
        raw, token = self.strings(payload, 2)
        w = self.watches.find(conn, self.path(conn, raw), token)
        if w is None:
            raise XsError(E.ENOENT)
        self.watches.remove(w)
        return _OK

    def op_reset_watches(self, conn: Connection, tx_id: int, payload: bytes) -> bytes:
        self.watches.remove_all(conn)
        conn.domain.transactions -= len(conn.transactions)
        conn.transactions.clear()
        return _OK

    # --- domains -----------------------------------------------------------------------------

    def op_introduce(self, conn: Connection, tx_id: int, payload: bytes) -> bytes:
        self.privileged(conn)
        raw_dom, raw_mfn, raw_port = self.strings(payload, 3)
        domid = self.integer(raw_dom)
        self.integer(raw_mfn)
        self.integer(raw_port)
        if domid == 0 or domid >= 0x7FF0:
            raise XsError(E.EINVAL)
        if domid not in self.domains.table:
            try:
                self.domains.introduce(domid)
            except OSError:  # no socket for it (EMFILE...): nothing was introduced
                raise XsError(E.ENOMEM) from None
        return _OK

    def op_release(self, conn: Connection, tx_id: int, payload: bytes) -> bytes:
        self.privileged(conn)
        (raw,) = self.strings(payload, 1)
        domid = self.integer(raw)
        if domid == 0 or domid not in self.domains.table:
            raise XsError(E.EINVAL)
        self.domains.release(domid)
        return _OK

    def op_is_domain_introduced(self, conn: Connection, tx_id: int, payload: bytes) -> bytes:
        self.privileged(conn)
        (raw,) = self.strings(payload, 1)
        return b"T\0" if self.integer(raw) in self.domains.table else b"F\0"

    def op_get_domain_path(self, conn: Connection, tx_id: int, payload: bytes) -> bytes:
        (raw,) = self.strings(payload, 1)
        return b"/local/domain/%d\0" % self.integer(raw)

    def op_resume(self, conn: Connection, tx_id: int, payload: bytes) -> bytes:
        self.privileged(conn)
        (raw,) = self.strings(payload, 1)
        domid = self.integer(raw)
        if domid == 0 or domid not in self.domains.table:
            raise XsError(E.EINVAL)
        return _OK

    def op_set_target(self, conn: Connection, tx_id: int, payload: bytes) -> bytes:
        self.privileged(conn)
        raw_dom, raw_target = self.strings(payload, 2)
        domid, target = self.integer(raw_dom), self.integer(raw_target)
        table = self.domains.table
        if domid not in table or target not in table or domid == 0:
            raise XsError(E.ENOENT)
        self.domains.set_target(table[domid], target)
        return _OK

    def op_restrict(self, conn: Connection, tx_id: int, payload: bytes) -> bytes:
        self.privileged(conn)
        (raw,) = self.strings(payload, 1)
        dom = self.domains.table.get(self.integer(raw))
        if dom is None:
            raise XsError(E.ENOENT)
        if conn.transactions:
            raise XsError(E.EBUSY)
        if dom.domid:
            self.domains.restrict(conn, dom)
        return _OK

    def op_control(self, conn: Connection, tx_id: int, payload: bytes) -> bytes:
        self.privileged(conn)
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
