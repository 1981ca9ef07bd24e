"""``read_many``: the reads of one batch, pipelined on a socket connection (what ``status``
uses per guest), answered as that many ``read`` calls would be, on either server and in a
transaction."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from xentmem.errors import XenStoreNotFound, XenStorePermission
from xentmem.xenstore import LocalXenStore, XenStoreServer, transaction

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
