"""``read_many``: the reads of one batch, pipelined on a socket connection (what ``status``
uses per guest), answered as that many ``read`` calls would be, on either server and in a
transaction."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

import pytest

from xentmem.errors import XenStoreNotFound, XenStorePermission
from xentmem.xenstore import LocalXenStore, Op, XenStoreServer, transaction
from xentmem.xenstore._client import _ErrorReply

if TYPE_CHECKING:
    from conftest import ServerUnderTest


def test_answers_in_order_with_the_default_for_missing_nodes(xs_server: ServerUnderTest,
                                                             base: str) -> None:
    xs = xs_server.dom0
    for i in range(40):
        xs.write(f"{base}/n{i}", str(i))
    paths = [f"{base}/n{i}" for i in range(40)] + [f"{base}/absent"]
    assert xs.read_many(paths, None) == [str(i).encode() for i in range(40)] + [None]
    assert xs.read_many(paths, None) == [xs.read(p, None) for p in paths]
    with pytest.raises(XenStoreNotFound):
        xs.read_many(paths)  # no default: as read() raises
    assert xs.read_many([]) == []
    assert transaction(xs, lambda tx: tx.read_many(paths[:3])) == [b"0", b"1", b"2"]


def test_a_node_the_caller_may_not_read_raises_as_read_does(xs_server: ServerUnderTest,
                                                            base: str) -> None:
    domid = xs_server.fresh_domid()
    guest = xs_server.guest(domid)
    xs_server.dom0.write(f"{base}/private", "dom0's")
    with pytest.raises(XenStorePermission):
        guest.read_many([f"{base}/private"], None)
    xs_server.release(domid)


def test_the_in_process_client_reads_the_same(xs_server: ServerUnderTest, base: str,
                                              ours_server: XenStoreServer) -> None:
    if not xs_server.is_ours:
        pytest.skip("the in-process client talks to our server only")
    xs_server.dom0.write(f"{base}/a", "1")
    local = LocalXenStore(ours_server)
    assert local.read_many([f"{base}/a", f"{base}/b"], b"-") == [b"1", b"-"]
    local.close()


def test_read_groups_reads_each_group_as_read_many_does(xs_server: ServerUnderTest,
                                                        base: str) -> None:
    """Each group in a transaction of its own, all pipelined: what read_many in a transaction
    per group would read, the default where a node is missing, an error raised where not."""
    xs = xs_server.dom0
    groups = [[f"{base}/g{g}/n{i}" for i in range(g + 1)] + [f"{base}/g{g}/absent"]
              for g in range(5)]
    for group in groups:
        for path in group[:-1]:
            xs.write(path, path.rsplit("/", 2)[-2])
    assert xs.read_groups(groups, None) == [
        transaction(xs, lambda tx, group=group: tx.read_many(group, None)) for group in groups]
    assert xs.read_groups([], None) == []
    assert xs.read_groups([[], [f"{base}/g0/n0"]]) == [[], [b"g0"]]
    with pytest.raises(XenStoreNotFound):
        xs.read_groups(groups)  # no default: as read() raises


def test_read_groups_reads_a_conflicting_group_again(xs_server: ServerUnderTest, base: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A group whose commit answers EAGAIN is read again, the others' reads stand. (Read-only
    transactions never conflict on either server, snapshot isolation: the first commits of the
    batch are answered EAGAIN for group 0 here, after a write that its second reading sees.)"""
    xs, other = xs_server.dom0, xs_server.client()
    for name in ("a", "b"):
        xs.write(f"{base}/{name}", "old")
    real = type(xs)._call_many_on
    ends: list[int] = []

    def conflicting(self, link, calls):  # type: ignore[no-untyped-def]
        replies = real(self, link, calls)
        if calls and calls[0][0] == Op.TRANSACTION_END:
            ends.append(len(calls))
            if len(ends) == 1:
                other.write(f"{base}/a", "new")
                replies[0] = (b"", _ErrorReply(Op.TRANSACTION_END, errno.EAGAIN, None))
        return replies

    monkeypatch.setattr(type(xs), "_call_many_on", conflicting)
    assert xs.read_groups([[f"{base}/a"], [f"{base}/b"]]) == [[b"new"], [b"old"]]
    assert ends == [2, 1]  # both committed at once, then only the conflicted one again
    other.close()
