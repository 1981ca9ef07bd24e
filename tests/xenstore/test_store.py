"""The emulator's store directly: owner counts stay exact, transactions replay, RELEASE cleanup."""

from __future__ import annotations

import errno
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xentmem.xenstore import Perm
from xentmem.xenstore._store import DOM0, Caller, Store, XsError, iter_subtree

# XENTMEM_HYPOTHESIS_EXAMPLES=3000 for a soak; the default keeps the suite fast.
EXAMPLES = int(os.environ.get("XENTMEM_HYPOTHESIS_EXAMPLES", "150"))
PATHS = ["/a", "/a/b", "/a/b/c", "/a/d", "/e", "/e/f/g", "/local/domain/5/x", "/local/domain/5"]
CALLERS = [DOM0, Caller(5), Caller(6)]
PERMS = [
    (Perm("n", 0),),
    (Perm("n", 5),),
    (Perm("n", 6), Perm("b", 5)),
    (Perm("r", 0), Perm("w", 6)),
]

_op = st.one_of(
    st.tuples(
        st.just("write"), st.sampled_from(CALLERS), st.sampled_from(PATHS), st.binary(max_size=4)
    ),
    st.tuples(st.just("mkdir"), st.sampled_from(CALLERS), st.sampled_from(PATHS)),
    st.tuples(st.just("rm"), st.sampled_from(CALLERS), st.sampled_from(PATHS)),
    st.tuples(
        st.just("set_perms"),
        st.sampled_from(CALLERS),
        st.sampled_from(PATHS),
        st.sampled_from(PERMS),
    ),
    st.tuples(st.just("strip"), st.sampled_from([5, 6])),
)


def recount(store: Store) -> dict[int, int]:
    counts: dict[int, int] = {}
    for _path, node in iter_subtree(store.root, "/"):
        counts[node.owner] = counts.get(node.owner, 0) + 1
    return counts


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(_op, max_size=30))
def test_owner_counts_always_match_the_tree(ops) -> None:
    store = Store()
    for op in ops:
        try:
            if op[0] == "strip":
                store.strip_domain(op[1])
            else:
                store.mutate(op[0], op[1], *op[2:])
        except XsError:
            pass
        assert store.entries == recount(store)


def snapshot(store: Store) -> dict[str, tuple[bytes, tuple]]:
    return {p: (n.value, n.perms) for p, n in iter_subtree(store.root, "/")}


def attempt(fn):
    try:
        return ("ok", fn())
    except XsError as exc:
        return ("err", exc.errno)


def run_step(target, caller, step):
    """One step on a transaction (caller None) or on a store as ``caller``; its outcome."""
    kind, path, args = step[0], step[2], step[3:]
    if kind == "read":
        return attempt(
            lambda: (target.read(path) if caller is None else target.read(caller, path)).value
        )
    if kind == "list":
        node_of = (
            (lambda: target.directory(path))
            if caller is None
            else (lambda: target.read(caller, path))
        )
        return attempt(lambda: sorted(node_of().children))
    if caller is None:
        return attempt(lambda: target.mutate(kind, path, *args))
    return attempt(lambda: (target.mutate(kind, caller, path, *args), None)[1])


_tx_step = st.one_of(
    _op.filter(lambda o: o[0] not in ("strip",)),
    st.tuples(st.just("read"), st.sampled_from(CALLERS), st.sampled_from(PATHS)),
    st.tuples(st.just("list"), st.sampled_from(CALLERS), st.sampled_from(PATHS)),
)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    st.sampled_from(CALLERS),
    st.lists(_tx_step, max_size=10),
    st.lists(_op.filter(lambda o: o[0] != "strip"), max_size=6),
)
def test_committed_transaction_is_serialisable(caller, steps, outside_ops) -> None:
    """If a transaction commits, the store equals running the outside ops first and then the
    transaction's ops, and everything the transaction read is what it would have read then."""
    store = Store()
    store.mutate("write", DOM0, "/a/b", b"seed")
    store.mutate("write", DOM0, "/local/domain/5", b"")
    tx = store.begin(1, caller)
    seen = []
    for step in steps:
        seen.append(run_step(tx, None, step))
    start = store.fork()
    for op in outside_ops:
        attempt(lambda op=op: store.mutate(op[0], op[1], *op[2:]))
    after_outside = store.fork()
    result = attempt(lambda: store.commit(tx))
    if result[0] == "err":
        assert result[1] == errno.EAGAIN
        return
    changed = any(
        kind not in ("read", "list") and out[0] == "ok"
        for (kind, *_), out in zip(steps, seen, strict=True)
    )
    # A transaction that changed nothing is serialised at its start, any other one after the
    # outside operations: replaying it there must give what it saw and what the store holds.
    expected = after_outside.fork() if changed else start.fork()
    for step, outcome in zip(steps, seen, strict=True):
        assert run_step(expected, caller, step) == outcome, step
    if not changed:
        expected = after_outside
    assert snapshot(store) == snapshot(expected)
    assert store.entries == recount(store)


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(_op, max_size=15), st.lists(_op, max_size=15), st.lists(_op, max_size=15))
def test_forks_and_snapshots_never_see_each_others_changes(before, on_a, on_b) -> None:
    """Nodes are changed in place only when no snapshot can reach them: check it."""
    a = Store()
    for op in before:
        apply(a, op)
    b = a.fork()
    frozen = a.snapshot()
    seen_a = snapshot(a)
    assert snapshot(b) == seen_a
    for op in on_b:
        apply(b, op)
    assert snapshot(a) == seen_a
    for op in on_a:
        apply(a, op)
    assert {p: (n.value, n.perms) for p, n in iter_subtree(frozen, "/")} == seen_a
    b_now = snapshot(b)
    for op in on_b:
        apply(a, op)
    assert snapshot(b) == b_now
    assert a.entries == recount(a) and b.entries == recount(b)


def apply(store: Store, op) -> None:
    try:
        if op[0] == "strip":
            store.strip_domain(op[1])
        else:
            store.mutate(op[0], op[1], *op[2:])
    except XsError:
        pass


def test_commit_fast_path_and_replay() -> None:
    store = Store()
    store.mutate("write", DOM0, "/x", b"0")
    tx = store.begin(1, DOM0)
    tx.mutate("write", "/x", b"1")
    store.commit(tx)  # nothing happened meanwhile: the transaction's tree is installed
    assert store.get("/x").value == b"1"
    tx = store.begin(2, DOM0)
    tx.mutate("write", "/y", b"2")
    store.mutate("write", DOM0, "/z", b"3")
    store.commit(tx)  # replayed on top of /z
    assert store.get("/y").value == b"2" and store.get("/z").value == b"3"
    tx = store.begin(3, DOM0)
    assert tx.read("/x").value == b"1"
    tx.mutate("write", "/w", b"")
    store.mutate("write", DOM0, "/x", b"changed")
    with pytest.raises(XsError) as info:
        store.commit(tx)
    assert info.value.errno == errno.EAGAIN
    assert store.get("/w") is None


def test_replay_failure_is_eagain() -> None:
    store = Store()
    store.mutate("write", DOM0, "/g", b"")
    store.mutate("set_perms", DOM0, "/g", (Perm("n", 0), Perm("w", 5)))
    tx = store.begin(1, Caller(5))
    tx.mutate("write", "/g/child", b"1")  # allowed now ...
    store.mutate("set_perms", DOM0, "/g", (Perm("n", 0),))  # ... not any more
    with pytest.raises(XsError) as info:
        store.commit(tx)
    assert info.value.errno == errno.EAGAIN
    assert store.get("/g/child") is None


def test_strip_domain() -> None:
    store = Store()
    store.mutate("write", DOM0, "/local/domain/5/data/x", b"")
    store.mutate("set_perms", DOM0, "/local/domain/5/data", (Perm("n", 5),))
    store.mutate("write", DOM0, "/shared", b"")
    store.mutate("set_perms", DOM0, "/shared", (Perm("n", 0), Perm("r", 5), Perm("r", 6)))
    before = store.root
    store.strip_domain(5)
    assert store.get("/local/domain/5/data") is None
    assert store.get("/local/domain/5") is not None
    assert store.get("/shared").perms == (Perm("n", 0), Perm("r", 6))
    assert before.children["shared"].perms != store.get("/shared").perms  # the old tree intact
    assert store.entries == recount(store)
    assert store.owned(5) == 0


def test_rm_root_is_refused() -> None:
    # oxenstored lets dom0 delete "/" and with it everything, the special nodes included.
    with pytest.raises(XsError) as info:
        Store().mutate("rm", DOM0, "/")
    assert info.value.errno == errno.EINVAL
