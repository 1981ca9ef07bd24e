"""The watch registry: who watches what, and the events a change fires.

A watch on a path fires for a change of that path or of anything below it; a removed subtree
fires the watches inside it, each with its own path; a watcher only hears of a node it may read
(before or after the change). An event is queued on its connection
(:meth:`~._conn.Connection.deliver_event`), which is then marked dirty for the event loop to send;
what a connection may have queued is bounded there (``ConnectionLimits.watch_events``).
"""

from __future__ import annotations

from ._conn import Connection
from ._store import Event, allowed, split, walk
from ._wire import NUL, Op, pack

__all__ = ["Watch", "WatchRegistry"]


class Watch:
    __slots__ = ("conn", "path", "prefix", "token")

    def __init__(self, conn: Connection, path: str, token: bytes, prefix: str | None) -> None:
        self.conn = conn
        self.path = path  # absolute
        self.token = token
        self.prefix = prefix  # set for a relative watch: stripped from event paths


class WatchRegistry:
    """Every watch, by absolute path; ``dirty`` collects the socket connections given events."""

    def __init__(self, dirty: set[Connection]) -> None:
        self.by_path: dict[str, list[Watch]] = {}
        self.dirty = dirty

    def find(self, conn: Connection, path: str, token: bytes) -> Watch | None:
        for w in conn.watches:
            if w.path == path and w.token == token:
                return w
        return None

    def add(self, conn: Connection, path: str, token: bytes, prefix: str | None) -> Watch:
        watch = Watch(conn, path, token, prefix)
        conn.watches.append(watch)
        self.by_path.setdefault(path, []).append(watch)
        conn.domain.watches += 1
        return watch

    def remove(self, w: Watch) -> None:
        w.conn.watches.remove(w)
        w.conn.domain.watches -= 1
        lst = self.by_path.get(w.path)
        if lst is not None:
            lst.remove(w)
            if not lst:
                del self.by_path[w.path]

    def remove_all(self, conn: Connection) -> None:
        for w in list(conn.watches):
            self.remove(w)

    def fire(self, events: list[Event]) -> None:
        watches = self.by_path
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
                        self.notify(w, path, ev.perms, ev.old_perms)
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
                            self.notify(w, wpath, perms, None)

    def notify(self, w: Watch, path: str, perms, old_perms) -> None:
        conn = w.conn
        caller = conn.caller
        if not (
            allowed(caller, perms, "r")
            or (old_perms is not None and allowed(caller, old_perms, "r"))
        ):
            return
        if w.prefix is not None and path.startswith(w.prefix):
            path = path[len(w.prefix) :]
        conn.deliver_event(pack(Op.WATCH_EVENT, 0, 0, path.encode() + NUL + w.token + NUL))
        if conn.sock is not None:
            self.dirty.add(conn)
