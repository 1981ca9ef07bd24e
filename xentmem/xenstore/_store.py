"""The in-memory xenstore of the emulator: a node tree with permissions, quotas, transactions.

Semantics follow the real oxenstored 4.17 (measured through vm-images/oxenstored, see
tests/xenstore) unless the protocol documents say otherwise; every deliberate difference is listed
in ``DIFFERENCES`` and checked in tests/xenstore.

* Tree: :class:`Node` objects, copy-on-write by epoch. Taking a snapshot (a transaction
  starting) bumps the store's epoch; a node made in the current epoch cannot be reached from any
  snapshot and is changed in place, an older one is copied (with its path from the root) first.
  Snapshots are therefore O(1) and, with no transaction open, a write allocates nothing.
* Permissions: a node's perms list is ``[owner+default, acl...]``. dom0 (and only dom0) is
  privileged; the owner (or a domain whose SET_TARGET target is the owner) has full access; else
  the ACL entry for the domain (or its target), else the default. New nodes inherit the perms of
  their parent unchanged (oxenstored; C xenstored makes the creating domain the owner).
* Quotas (oxenstored's defaults): nodes owned per domain, value size, watches and open
  transactions per domain. dom0 is exempt from all but the value size. A quota exceeded is
  ENOSPC (C xenstored; oxenstored sends "EQUOTA", which no errno.h names); a value too long is
  E2BIG (both).
* Transactions: snapshot isolation with optimistic validation by generation counters. Every node
  carries ``vgen`` (value/perms changed) and ``cgen`` (set of children changed). A transaction
  records the stamps of what it *read* (in its start snapshot) and a log of its mutations. At
  commit: no mutations -> OK; root unchanged since start -> install the transaction's tree; else
  any recorded stamp that differs in the live tree -> EAGAIN, otherwise the mutation log is
  replayed on the live tree (any failure there -> EAGAIN). Blind writes therefore never
  conflict, exactly like oxenstored's merge mode; reads of absent nodes are validated too (a
  phantom that oxenstored 4.17 lets through).
* Effects (for a durable server, see :mod:`._persist`): when the store is made with
  ``record=True``, every change to the live tree is appended to ``Store.effects`` as whole-node
  effects, ``("w", path, value, perms)`` (the node now is exactly this; its children are kept) or
  ``("r", path)`` (the subtree is gone), in order. :meth:`Store.apply` replays them exactly,
  so a journal never re-runs a request with its permission checks and quotas.
"""

from __future__ import annotations

import errno as E
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from xentmem._compat import DATACLASS_SLOTS

from ._wire import Perm

# ("w", path, value, perms) or ("r", path); the server adds domain effects of its own.
Effect = tuple

DIFFERENCES = """\
Where our server deliberately differs from oxenstored 4.17 (tests/xenstore checks each one,
except that it never deletes "/" on the real server):
- Path length: the protocol's 3072 bytes for absolute and 2048 for relative paths
  (xs_wire.h XENSTORE_ABS_PATH_MAX / XENSTORE_REL_PATH_MAX); oxenstored caps both at 2048.
- DIRECTORY whose reply would exceed 4096 bytes: E2BIG, and DIRECTORY_PARTIAL (22) serves it in
  pieces, as C xenstored does; oxenstored 4.17 sends an oversized reply and has no
  DIRECTORY_PARTIAL.
- Unknown transaction id: ENOENT (C xenstored, docs/misc/xenstore.txt); oxenstored says EIO.
- GET_DOMAIN_PATH / IS_DOMAIN_INTRODUCED / RELEASE with a non-numeric domid: EINVAL;
  oxenstored answers /local/domain/0 for GET_DOMAIN_PATH.
- SET_PERMS with a domid above 65535 (domid_t is 16 bits): EINVAL; oxenstored accepts it.
- A transaction that read a node which was absent and has since been created: EAGAIN at commit;
  oxenstored commits it (a phantom read).
- CONTROL from an unprivileged domain: EACCES (C xenstored); oxenstored answers OK.
- RESTRICT (op 128, or 20 as XS_RESTRICT was numbered before Xen removed it): supported on dom0
  socket connections, as C xenstored did; oxenstored answers ENOSYS.
- Zero-length requests are answered at once (oxenstored waits for more bytes first).
- An oversized or unparsable header gets an EINVAL reply and the connection is closed;
  oxenstored replies EINVAL and then stalls that connection.
- Watch quota: exactly ``max_watches`` per domain; oxenstored lets one more through (same for
  transactions).
- RM of "/" is EINVAL; oxenstored lets dom0 delete the whole tree, special nodes included.
- Quota exceeded: ENOSPC, a name of xs_wire.h's xsd_errors (C xenstored too); oxenstored sends
  "EQUOTA", which libxenstore reports as EINVAL (our client reads it as ENOSPC).
"""


class XsError(Exception):
    """A request failed with ``errno`` (positive). Internal: the server turns it into ERROR."""

    def __init__(self, errno: int) -> None:
        super().__init__(errno)
        self.errno = errno


@dataclass(frozen=True, **DATACLASS_SLOTS)
class Quota:
    """Per-domain limits, oxenstored 4.17's defaults (``quota-*`` keys of oxenstored.conf)."""

    max_entries: int = 1000  # nodes a domain may own (quota-maxentity)
    max_value: int = 2048  # bytes in one value (quota-maxsize)
    max_watches: int = 100  # watches per domain (quota-maxwatch)
    max_transactions: int = 10  # open transactions per domain (quota-transaction)


@dataclass(frozen=True, **DATACLASS_SLOTS)
class Caller:
    """Who is asking: ``domid`` (0 is privileged) and its SET_TARGET ``target`` if any."""

    domid: int
    target: int | None = None

    @property
    def privileged(self) -> bool:
        return self.domid == 0


DOM0 = Caller(0)


class Node:
    """One node. Mutable only while ``epoch`` is the store's current epoch: then no snapshot can
    reach it, and its ``children`` dict is its own (invariant: a current-epoch node is reached
    only through current-epoch ancestors)."""

    __slots__ = ("cgen", "children", "epoch", "perms", "value", "vgen")

    def __init__(
        self,
        value: bytes,
        perms: tuple[Perm, ...],
        children: dict[str, Node],
        vgen: int,
        cgen: int,
        epoch: int,
    ) -> None:
        self.value = value
        self.perms = perms
        self.children = children
        self.vgen = vgen
        self.cgen = cgen
        self.epoch = epoch

    @property
    def owner(self) -> int:
        return self.perms[0].domid


READ, WRITE = "r", "w"


def allowed(caller: Caller, perms: tuple[Perm, ...], want: str) -> bool:
    """May ``caller`` ``want`` (``"r"`` or ``"w"``) a node with ``perms``?"""
    if caller.domid == 0:
        return True
    owner = perms[0].domid
    ids = (caller.domid,) if caller.target is None else (caller.domid, caller.target)
    if owner in ids:
        return True
    for domid in ids:
        kind = perms[0].kind
        for p in perms[1:]:
            if p.domid == domid:
                kind = p.kind
                break
        if kind == "b" or kind == want:
            return True
    return False


@dataclass(**DATACLASS_SLOTS)
class Event:
    """A change to fire watches for. ``path`` changed; a watcher sees it if it may read a node
    with ``perms`` (or ``old_perms``, for a SET_PERMS); ``removed`` is a deleted subtree, whose
    watchers below ``path`` fire too."""

    path: str
    perms: tuple[Perm, ...]
    old_perms: tuple[Perm, ...] | None = None
    removed: Node | None = None


def split(path: str) -> list[str]:
    """``"/a/b"`` -> ``["a", "b"]``; ``"/"`` -> ``[]``; ``"@introduceDomain"`` -> itself."""
    if path == "/":
        return []
    return path[1:].split("/") if path.startswith("/") else [path]


def child_path(path: str, name: str) -> str:
    """The path of child ``name`` of ``path``, in the form :func:`split` reads back: a
    child of "/" named "@..." is a special node, spelled without the "/" (its name may hold
    "/": "@a/b" is one node)."""
    if path == "/":
        return name if name[0] == "@" else "/" + name
    return path + "/" + name


def walk(node: Node | None, comps: list[str]) -> Node | None:
    for c in comps:
        if node is None:
            return None
        node = node.children.get(c)
    return node


def iter_subtree(node: Node, path: str):
    """Yield ``(path, node)`` for ``node`` and all its descendants."""
    stack = [(path, node)]
    while stack:
        p, n = stack.pop()
        yield p, n
        base = p if p.endswith("/") else p + "/"
        for name, child in n.children.items():
            stack.append((base + name, child))


def iter_subtree_preorder(root: Node) -> Iterator[tuple[str, Node]]:
    """Yield ``(path, node)`` for the whole tree from ``root`` ("/"), every parent before its
    children, children by name (a stable order: equal trees dump equal bytes)."""
    stack: list[tuple[str, Node]] = [("/", root)]
    while stack:
        p, n = stack.pop()
        yield p, n
        for name in sorted(n.children, reverse=True):
            stack.append((child_path(p, name), n.children[name]))


class Work:
    """A handle on one tree: the live store, a transaction's own tree, or a commit replay.

    Mutations copy what a snapshot may share (see :class:`Node`), record ``events`` to fire and
    the change of node counts per owner in ``delta``. ``entries`` are the committed counts the
    quota is checked against.
    """

    __slots__ = ("delta", "effects", "entries", "events", "gens", "quota", "root")

    def __init__(self, root: Node, gens: _Gen, quota: Quota, entries: dict[int, int],
                 effects: list[Effect] | None = None) -> None:  # fmt: skip
        self.root = root
        self.gens = gens
        self.quota = quota
        self.entries = entries
        self.delta: dict[int, int] = {}
        self.events: list[Event] = []
        self.effects = effects  # None: not recording (an in-memory server pays one test)

    # --- helpers --------------------------------------------------------------------------

    def get(self, path: str) -> Node | None:
        return walk(self.root, split(path))

    def _count(self, owner: int, n: int) -> None:
        self.delta[owner] = self.delta.get(owner, 0) + n

    def _owned(self, owner: int) -> int:
        return self.entries.get(owner, 0) + self.delta.get(owner, 0)

    def _check_entries(self, caller: Caller, owner: int) -> None:
        # oxenstored: unprivileged callers may not create nodes whose (inherited) owner, a
        # domain other than dom0, already owns quota-maxentity nodes.
        if not caller.privileged and owner != 0 and self._owned(owner) >= self.quota.max_entries:
            raise XsError(E.ENOSPC)

    def _owned_path(self, comps: list[str]) -> Node:
        """The node at ``comps`` (which must exist), made private to the current epoch together
        with every ancestor: older nodes, which a snapshot may share, are copied and relinked."""
        epoch = self.gens.epoch
        node = self.root
        if node.epoch != epoch:
            node = self.root = Node(
                node.value, node.perms, dict(node.children), node.vgen, node.cgen, epoch
            )
        for c in comps:
            child = node.children[c]
            if child.epoch != epoch:
                child = Node(
                    child.value, child.perms, dict(child.children), child.vgen, child.cgen, epoch
                )
                node.children[c] = child  # node is private: relink in place
            node = child
        return node

    # --- operations -----------------------------------------------------------------------

    def read(self, caller: Caller, path: str) -> Node:
        node = self.get(path)
        if node is None:
            raise XsError(E.ENOENT)
        if not allowed(caller, node.perms, READ):
            raise XsError(E.EACCES)
        return node

    def write(self, caller: Caller, path: str, value: bytes) -> None:
        if len(value) > self.quota.max_value:
            raise XsError(E.E2BIG)
        comps = split(path)
        node = walk(self.root, comps)
        if node is None:
            self._create(caller, path, comps, value)
            return
        if caller.domid and not allowed(caller, node.perms, WRITE):
            raise XsError(E.EACCES)
        if node.epoch != self.gens.epoch:
            node = self._owned_path(comps)
        node.value = value
        node.vgen = self.gens.next()
        self.events.append(Event(path, node.perms))
        if self.effects is not None:
            self.effects.append(("w", path, value, node.perms))

    def mkdir(self, caller: Caller, path: str) -> None:
        comps = split(path)
        node = walk(self.root, comps)
        if node is not None:
            if not allowed(caller, node.perms, WRITE):
                raise XsError(E.EACCES)
            return
        self._create(caller, path, comps, b"")

    def _create(self, caller: Caller, path: str, comps: list[str], value: bytes) -> None:
        # Deepest existing ancestor: it needs WRITE, and every new node inherits its perms.
        depth = 0
        parent = self.root
        for c in comps[:-1]:
            nxt = parent.children.get(c)
            if nxt is None:
                break
            parent = nxt
            depth += 1
        if not allowed(caller, parent.perms, WRITE):
            raise XsError(E.EACCES)
        perms = parent.perms
        owner = perms[0].domid
        self._check_entries(caller, owner)
        gen = self.gens.next()
        epoch = self.gens.epoch
        new = Node(value, perms, {}, gen, gen, epoch)
        for c in reversed(comps[depth + 1 :]):
            new = Node(b"", perms, {c: new}, gen, gen, epoch)
        self._count(owner, len(comps) - depth)
        parent = self._owned_path(comps[:depth])
        parent.children[comps[depth]] = new
        parent.cgen = gen
        self.events.append(Event(path, perms))
        if self.effects is not None:
            # Every node made, top down: the ancestors made on the way are nodes too.
            for k in range(depth + 1, len(comps)):
                self.effects.append(("w", "/" + "/".join(comps[:k]), b"", perms))
            self.effects.append(("w", path, value, perms))

    def rm(self, caller: Caller, path: str) -> None:
        comps = split(path)
        if not comps:
            # oxenstored lets dom0 delete "/" (and with it every node); we refuse.
            raise XsError(E.EINVAL)
        parent = walk(self.root, comps[:-1])
        if parent is None:
            raise XsError(E.ENOENT)
        node = parent.children.get(comps[-1])
        if node is None:
            return  # not an error when the parent exists (docs/misc/xenstore.txt)
        if not allowed(caller, node.perms, WRITE):
            raise XsError(E.EACCES)
        for _p, n in iter_subtree(node, path):
            self._count(n.owner, -1)
        parent = self._owned_path(comps[:-1])
        del parent.children[comps[-1]]
        parent.cgen = self.gens.next()
        self.events.append(Event(path, node.perms, None, node))
        if self.effects is not None:
            self.effects.append(("r", path))

    def set_perms(self, caller: Caller, path: str, perms: tuple[Perm, ...]) -> None:
        comps = split(path)
        node = walk(self.root, comps)
        if node is None:
            raise XsError(E.ENOENT)
        if not caller.privileged:
            ids = (caller.domid, caller.target)
            if node.owner not in ids:
                raise XsError(E.EACCES)
            if perms[0].domid != node.owner:  # unprivileged domains may not give nodes away
                raise XsError(E.EACCES)
        old_perms = node.perms
        if perms[0].domid != node.owner:
            self._count(node.owner, -1)
            self._count(perms[0].domid, 1)
        node = self._owned_path(comps)
        node.perms = perms
        node.vgen = self.gens.next()
        # Watchers who could read the node before or after the change learn of it.
        self.events.append(Event(path, perms, old_perms))
        if self.effects is not None:
            self.effects.append(("w", path, node.value, perms))

    def strip_domain(self, domid: int) -> None:
        """What oxenstored does on RELEASE: delete every node ``domid`` owns (with its subtree)
        and drop ``domid`` from every ACL. No watch fires."""
        effects = self.effects

        def visit(node: Node, path: str) -> Node | None:
            if node.owner == domid and path != "/":
                for _p, n in iter_subtree(node, path):
                    self._count(n.owner, -1)
                if effects is not None:
                    effects.append(("r", path))
                return None
            children = node.children
            new_children: dict[str, Node] | None = None
            for name, child in children.items():
                got = visit(child, child_path(path, name))
                if got is not child:
                    if new_children is None:
                        new_children = dict(children)
                    if got is None:
                        del new_children[name]
                    else:
                        new_children[name] = got
            perms = node.perms
            if any(p.domid == domid for p in perms[1:]):
                perms = (perms[0], *(p for p in perms[1:] if p.domid != domid))
            if new_children is None and perms is node.perms:
                return node
            if effects is not None and perms is not node.perms:
                effects.append(("w", path, node.value, perms))
            gen = self.gens.next()
            return Node(
                node.value,
                perms,
                dict(node.children) if new_children is None else new_children,
                node.vgen if perms is node.perms else gen,
                node.cgen if new_children is None else gen,
                self.gens.epoch,
            )

        new_root = visit(self.root, "/")
        assert new_root is not None
        self.root = new_root


class _Gen:
    """The store's counters: ``value`` stamps changes, ``epoch`` counts snapshots taken."""

    __slots__ = ("epoch", "value")

    def __init__(self) -> None:
        self.value = 0
        self.epoch = 1

    def next(self) -> int:
        self.value += 1
        return self.value


class Transaction:
    """One open transaction: its start snapshot, its own tree, what it read, what it did.

    What the client saw must still hold at commit, so every read records the start-snapshot
    stamp of the node it depended on, with two exceptions that cannot depend on the snapshot:
    a node this transaction created itself (its absence at the start is recorded instead) and
    anything under a node it removed. Failed mutations record what decided their failure, and a
    creation records the ancestors whose perms the new node inherits.
    """

    __slots__ = ("base", "caller", "created", "id", "log", "reads", "removed", "work")

    def __init__(self, tx_id: int, store: Store, caller: Caller) -> None:
        self.id = tx_id
        self.caller = caller
        self.base = store.snapshot()
        self.work = Work(self.base, store.gens, store.quota, store.entries,
                         None if store.effects is None else [])  # fmt: skip
        self.reads: dict[tuple[str, str], int | None] = {}
        self.log: list[tuple[str, tuple]] = []
        self.created: set[str] = set()
        self.removed: set[str] = set()

    def note_read(self, path: str, kind: str) -> None:
        """Record the start-snapshot stamp of ``path``: kind ``"v"`` (value and perms) or
        ``"c"`` (the set of children)."""
        key = (path, kind)
        if key in self.reads:
            return
        if kind == "v" and (path in self.created or self._under_removed(path)):
            return
        node = walk(self.base, split(path))
        self.reads[key] = None if node is None else (node.vgen if kind == "v" else node.cgen)

    def _under_removed(self, path: str) -> bool:
        return any(path == r or path.startswith(r + "/") for r in self.removed)

    def read(self, path: str) -> Node:
        self.note_read(path, "v")
        return self.work.read(self.caller, path)

    def directory(self, path: str) -> Node:
        self.note_read(path, "v")
        self.note_read(path, "c")
        return self.work.read(self.caller, path)

    def mutate(self, name: str, path: str, *args: object) -> None:
        creates = name in ("write", "mkdir") and self.work.get(path) is None
        try:
            getattr(self.work, name)(self.caller, path, *args)
        except XsError:
            self.note_read(path, "v")
            self.note_read(parent_of(path), "c")
            self._note_ancestors(path)
            raise
        if creates:
            self.note_read(path, "v")  # absent at the start, unless we removed it before
            self._note_ancestors(path)
            self.created.add(path)
        elif name == "rm":
            self.removed.add(path)
        self.log.append((name, (path, *args)))

    def _note_ancestors(self, path: str) -> None:
        while path.startswith("/") and path != "/":
            path = parent_of(path)
            self.note_read(path, "v")


def parent_of(path: str) -> str:
    if not path.startswith("/"):
        return "/"
    head = path.rsplit("/", 1)[0]
    return head or "/"


class Store:
    """The live tree plus node counts per owner. Not thread-safe: the server serialises calls."""

    def __init__(self, quota: Quota | None = None, *, record: bool = False) -> None:
        self.quota = quota or Quota()
        self.gens = _Gen()
        # Whole-node effects of every live change, in order, until the owner drains them.
        self.effects: list[Effect] | None = [] if record else None
        none0 = (Perm("n", 0),)
        g = self.gens.next()
        # The initial tree of oxenstored 4.17: "/", the two special watch nodes, /local, /tool.
        e = self.gens.epoch
        tool = Node(b"", none0, {"xenstored": Node(b"xentmem", none0, {}, g, g, e)}, g, g, e)
        root = Node(
            b"",
            none0,
            {
                "@introduceDomain": Node(b"", none0, {}, g, g, e),
                "@releaseDomain": Node(b"", none0, {}, g, g, e),
                "local": Node(b"", none0, {}, g, g, e),
                "tool": tool,
            },
            g,
            g,
            e,
        )
        self.entries: dict[int, int] = {0: 6}
        self.live = Work(root, self.gens, self.quota, self.entries, self.effects)

    @property
    def root(self) -> Node:
        return self.live.root

    def get(self, path: str) -> Node | None:
        return walk(self.live.root, split(path))

    def read(self, caller: Caller, path: str) -> Node:
        return self.live.read(caller, path)

    def mutate(self, name: str, caller: Caller, path: str, *args: object) -> list[Event]:
        """Run one mutation (``write``, ``mkdir``, ``rm``, ``set_perms``) on the live tree."""
        live = self.live
        getattr(live, name)(caller, path, *args)
        return self._settle(live)

    def strip_domain(self, domid: int) -> None:
        self.live.strip_domain(domid)
        self._settle(self.live)

    def _settle(self, work: Work) -> list[Event]:
        if work.delta:
            for owner, n in work.delta.items():
                total = self.entries.get(owner, 0) + n
                if total:
                    self.entries[owner] = total
                else:
                    self.entries.pop(owner, None)
            work.delta = {}
        events = work.events
        work.events = []
        return events

    def owned(self, domid: int) -> int:
        """How many nodes ``domid`` owns (what the entries quota counts)."""
        return self.entries.get(domid, 0)

    # --- transactions ---------------------------------------------------------------------

    def snapshot(self) -> Node:
        """The current root, frozen: later changes copy what it reaches instead of changing it."""
        self.gens.epoch += 1
        return self.live.root

    def fork(self) -> Store:
        """An independent store that starts as a copy of this one (O(1): shared, frozen nodes).
        Both share the counters, so neither changes in place a node the other can reach."""
        clone = Store.__new__(Store)
        clone.quota = self.quota
        clone.gens = self.gens
        clone.entries = dict(self.entries)
        clone.effects = None
        clone.live = Work(self.snapshot(), self.gens, self.quota, clone.entries)
        return clone

    def begin(self, tx_id: int, caller: Caller) -> Transaction:
        return Transaction(tx_id, self, caller)

    def commit(self, tx: Transaction) -> list[Event]:
        """Commit ``tx``: its events, or XsError(EAGAIN) on a conflict."""
        if not tx.log:
            return []
        effects = self.effects
        if self.live.root is tx.base:
            self.live.root = tx.work.root
            if effects is not None and tx.work.effects:
                effects.extend(tx.work.effects)
            return self._settle(tx.work)
        for (path, kind), stamp in tx.reads.items():
            node = self.get(path)
            now = None if node is None else (node.vgen if kind == "v" else node.cgen)
            if now != stamp:
                raise XsError(E.EAGAIN)
        # Replay on a snapshot of the live tree: a failure halfway must leave it untouched.
        replay = Work(self.snapshot(), self.gens, self.quota, self.entries,
                      None if effects is None else [])  # fmt: skip
        try:
            for name, args in tx.log:
                getattr(replay, name)(tx.caller, *args)
        except XsError:
            raise XsError(E.EAGAIN) from None
        self.live.root = replay.root
        if effects is not None and replay.effects:
            effects.extend(replay.effects)
        return self._settle(replay)

    # --- durable state (see :mod:`._persist`) ---------------------------------------------

    def dump(self) -> Iterator[Effect]:
        """The whole tree as ``("w", ...)`` effects, parents first: applied in order after
        :meth:`clear`, they rebuild it exactly."""
        for path, node in iter_subtree_preorder(self.live.root):
            yield ("w", path, node.value, node.perms)

    def clear(self) -> None:
        """Empty the tree (an empty "/" that only dom0 may touch), to load a snapshot into."""
        g = self.gens.next()
        self.live.root = Node(b"", (Perm("n", 0),), {}, g, g, self.gens.epoch)
        self.entries.clear()
        self.entries[0] = 1

    def apply(self, effects: Iterable[Effect]) -> None:
        """Replay whole-node effects on the live tree: no permission checks, quotas, events or
        recording. ValueError if one does not fit the tree (a parent missing, a removed node
        absent): the effects were not made on this tree."""
        live = self.live
        gens = self.gens
        for effect in effects:
            comps = split(effect[1])
            if effect[0] == "w":
                _kind, path, value, perms = effect
                node = walk(live.root, comps)
                if node is not None:
                    node = live._owned_path(comps)
                    if perms[0].domid != node.owner:
                        live._count(node.owner, -1)
                        live._count(perms[0].domid, 1)
                    node.value, node.perms, node.vgen = value, perms, gens.next()
                    continue
                if not comps or walk(live.root, comps[:-1]) is None:
                    raise ValueError(f"cannot create {path!r}: no parent")
                parent = live._owned_path(comps[:-1])
                g = gens.next()
                parent.children[comps[-1]] = Node(value, perms, {}, g, g, gens.epoch)
                parent.cgen = g
                live._count(perms[0].domid, 1)
            elif effect[0] == "r":
                path = effect[1]
                if not comps or walk(live.root, comps) is None:
                    raise ValueError(f"cannot remove {path!r}: no such node")
                for _p, n in iter_subtree(walk(live.root, comps), path):  # type: ignore[arg-type]
                    live._count(n.owner, -1)
                parent = live._owned_path(comps[:-1])
                del parent.children[comps[-1]]
                parent.cgen = gens.next()
            else:
                raise ValueError(f"not a node effect: {effect[0]!r}")
        live.events = []
        self._settle(live)
