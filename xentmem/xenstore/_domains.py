"""The domain lifecycle: INTRODUCE, RELEASE, SET_TARGET, RESTRICT, and each domain's socket.

Domain N is served on its own socket, ``<path>.dom<N>``, from INTRODUCE until RELEASE (dom0 on
``<path>``). RELEASE closes every connection acting as N, drops N from every SET_TARGET, removes
the nodes N owns and its ACL entries (oxenstored; no watch fires for those) and fires
``@releaseDomain``. With a recording store, each change is also a store effect (``("i", domid)``,
``("x", domid)``, ``("t", domid, target)``) for the journal.
"""

from __future__ import annotations

from ._conn import Connection, ConnectionLimits, Domain
from ._loop import EventLoop
from ._store import Caller, Event, Store
from ._watches import WatchRegistry
from ._wire import Perm

__all__ = ["Domains"]


class Domains:
    """Every introduced domain (``table``, dom0 included) of the server on ``path``."""

    def __init__(self, path: str, store: Store, watches: WatchRegistry, loop: EventLoop,
                 limits: ConnectionLimits, dom0_limits: ConnectionLimits) -> None:  # fmt: skip
        self.path = path
        self.store = store
        self.watches = watches
        self.loop = loop
        self.limits = limits
        self.dom0_limits = dom0_limits
        self.table: dict[int, Domain] = {0: self.new(0)}

    def new(self, domid: int) -> Domain:
        """A record for ``domid`` with its limits (not introduced: see :meth:`introduce`)."""
        return Domain(domid, self.dom0_limits if domid == 0 else self.limits)

    def socket_path(self, domid: int) -> str:
        return self.path if domid == 0 else f"{self.path}.dom{domid}"

    def listen_all(self) -> None:
        for dom in self.table.values():
            if dom.listener is None:
                self.loop.listen(dom, self.socket_path(dom.domid))

    def introduce(self, domid: int) -> None:
        """Introduce ``domid`` (not yet introduced); OSError if its socket cannot be made, and
        then nothing changed."""
        dom = self.new(domid)
        if self.loop.running:
            self.loop.listen(dom, self.socket_path(domid))
        self.table[domid] = dom
        if self.store.effects is not None:
            self.store.effects.append(("i", domid))
        self.watches.fire([Event("@introduceDomain", self.special_perms("@introduceDomain"))])

    def release(self, domid: int) -> None:
        dom = self.table.pop(domid)
        if self.store.effects is not None:
            self.store.effects.append(("x", domid))
        self.loop.unlisten(dom)
        for conn in list(dom.conns):
            if conn.sock is not None:
                self.loop.flush(conn)
                self.loop.close_connection(conn)
            else:
                self.loop.drop(conn)
        for other in self.table.values():
            if other.target == domid:
                self.set_target(other, None)
        # oxenstored: nodes the domain owns go, and it leaves every ACL (no watch fires).
        self.store.strip_domain(domid)
        self.watches.fire([Event("@releaseDomain", self.special_perms("@releaseDomain"))])

    def set_target(self, dom: Domain, target: int | None) -> None:
        dom.target = target
        if self.store.effects is not None:
            self.store.effects.append(("t", dom.domid, target))
        for conn in dom.conns:
            conn.caller = Caller(dom.domid, target)

    def restrict(self, conn: Connection, dom: Domain) -> None:
        """``conn`` acts as ``dom`` from now on (with its quotas and limits)."""
        old = conn.domain
        old.conns.discard(conn)
        old.watches -= len(conn.watches)
        dom.conns.add(conn)
        dom.watches += len(conn.watches)
        if conn.sock is not None:
            old.sockets -= 1
            dom.sockets += 1
        conn.domain = dom
        conn.caller = Caller(dom.domid, dom.target)

    def special_perms(self, name: str) -> tuple[Perm, ...]:
        node = self.store.get(name)
        return node.perms if node is not None else (Perm("n", 0),)
