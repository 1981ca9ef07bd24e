"""A guest connection against both servers: isolation, event filtering, quotas.

Against oxenstored the guest is a real domain connection through the fake shared-memory ring
(ref ecosystem.md §2.8), so our permission model is held to the real one. Both servers get the
same toolstack layout (``xentmem.xenstore.toolstack.layout_domain``).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

import pytest

from xentmem.errors import XenStoreError, XenStoreNotFound, XenStorePermission
from xentmem.xenstore import Op, Perm
from xentmem.xenstore._wire import pack
from xentmem.xenstore.testing import event_barrier

if TYPE_CHECKING:
    from conftest import ServerUnderTest

BARRIER = "/local/domain/5/data/barrier"  # guest 5 reads it, dom0 writes it


def error_of(reply: tuple[int, bytes]) -> str | None:
    op, body = reply
    return body.rstrip(b"\0").decode() if op == Op.ERROR else None


def test_layout_perms_as_the_toolstack_sets_them(xs_server: ServerUnderTest) -> None:
    xs_server.guest_path(5)
    xs = xs_server.dom0
    assert xs.get_perms("/local/domain/5") == [Perm("n", 0), Perm("r", 5)]
    assert xs.get_perms("/local/domain/5/memory/target") == [Perm("n", 0), Perm("r", 5)]
    assert xs.get_perms("/local/domain/5/data") == [Perm("n", 5)]
    assert xs.get_perms("/local/domain/5/control/shutdown") == [Perm("n", 5)]
    assert xs.read("/local/domain/5/memory/target") == b"524288"
    assert xs.read("/local/domain/5/memory/static-max") == b"1048576"
    assert xs.read("/local/domain/5/name") == b"guest5"


def test_guest_reads_its_own_tree_but_not_toolstack_values(xs_server: ServerUnderTest) -> None:
    g = xs_server.guest(5)
    assert g.read("memory/target") == b"524288"  # relative to /local/domain/5
    assert g.read("/local/domain/5/domid") == b"5"
    with pytest.raises(XenStorePermission):
        g.write("memory/target", b"1")  # only the toolstack sets targets
    with pytest.raises(XenStorePermission):
        g.write("newkey", b"1")  # /local/domain/5 itself is n0 r5
    with pytest.raises(XenStorePermission):
        g.rm("memory/target")
    with pytest.raises(XenStorePermission):
        g.mkdir("/local/domain/5")  # existing but read-only
    g.write("data/report", b"ok")
    assert g.get_perms("data/report") == [Perm("n", 5)]


def test_guest_cannot_touch_another_guest(xs_server: ServerUnderTest) -> None:
    g5 = xs_server.guest(5)
    xs_server.guest(6).write("data/secret", b"six")
    for call in (
        lambda: g5.read("/local/domain/6/data/secret"),
        lambda: g5.write("/local/domain/6/data/secret", b"x"),
        lambda: g5.write("/local/domain/6/data/new", b"x"),
        lambda: g5.list("/local/domain/6/data"),
        lambda: g5.get_perms("/local/domain/6/data"),
        lambda: g5.set_perms("/local/domain/6/data", ["b5"]),
        lambda: g5.rm("/local/domain/6/data/secret"),
        lambda: g5.read("/local/domain/6/name"),
    ):
        with pytest.raises(XenStorePermission) as info:
            call()
        assert info.value.errno == errno.EACCES
    assert xs_server.dom0.read("/local/domain/6/data/secret") == b"six"


def test_guest_cannot_touch_dom0_only_nodes(xs_server: ServerUnderTest) -> None:
    g = xs_server.guest(5)
    for call in (
        lambda: g.write("/local/domain/0/evil", b"x"),
        lambda: g.mkdir("/local/domain/0/evil2"),
        lambda: g.read("/tool/xenstored"),
        lambda: g.list("/"),
        lambda: g.list("/local/domain"),
        lambda: g.write("/evil", b"x"),
        lambda: g.get_perms("/local"),
    ):
        with pytest.raises(XenStorePermission):
            call()
    assert not xs_server.dom0.exists("/local/domain/0/evil")
    assert not xs_server.dom0.exists("/evil")


def test_guest_domain_management_is_refused(xs_server: ServerUnderTest) -> None:
    g = xs_server.guest(5)
    with pytest.raises(XenStorePermission):
        g.introduce_domain(77, 1, 1)
    with pytest.raises(XenStorePermission):
        g.release_domain(6)
    with pytest.raises(XenStorePermission):
        g.set_target(5, 6)
    with pytest.raises(XenStorePermission):
        g.resume_domain(6)
    with pytest.raises(XenStorePermission):
        g.is_domain_introduced(6)
    assert g.get_domain_path(6) == "/local/domain/6"  # anyone may ask
    assert xs_server.dom0.is_domain_introduced(6)


def test_guest_restrict_is_refused(xs_server: ServerUnderTest) -> None:
    g = xs_server.guest(5)
    with pytest.raises(XenStoreError) as info:
        g.restrict(6)
    # Ours: only a privileged connection may restrict itself; oxenstored has no RESTRICT.
    assert info.value.errno == (errno.EACCES if xs_server.is_ours else errno.ENOSYS)


def test_owner_may_grant_but_not_give_away(xs_server: ServerUnderTest) -> None:
    g5, g6 = xs_server.guest(5), xs_server.guest(6)
    g5.write("data/shared", b"hello")
    with pytest.raises(XenStorePermission):
        g5.set_perms("data/shared", ["n6"])  # unprivileged domains may not change the owner
    g5.set_perms("data/shared", ["n5", "r6"])
    assert g6.read("/local/domain/5/data/shared") == b"hello"
    with pytest.raises(XenStorePermission):
        g6.write("/local/domain/5/data/shared", b"x")
    with pytest.raises(XenStorePermission):
        g6.set_perms("/local/domain/5/data/shared", ["n5", "b6"])  # not the owner
    g5.set_perms("data/shared", ["n5", "w6"])
    with pytest.raises(XenStorePermission):
        g6.read("/local/domain/5/data/shared")  # write-only
    g6.write("/local/domain/5/data/shared", b"from6")
    g6.write("/local/domain/5/data/shared/child", b"c")
    # A node a guest creates inherits the parent's perms, owner included (oxenstored 4.17).
    assert g5.get_perms("data/shared/child") == [Perm("n", 5), Perm("w", 6)]
    g5.rm("data/shared")


def test_missing_nodes_do_not_leak_more_than_enoent(xs_server: ServerUnderTest) -> None:
    g5 = xs_server.guest(5)
    with pytest.raises(XenStoreNotFound):
        g5.read("/local/domain/6/data/nothing-here")
    g5.rm("/local/domain/6/data/nothing-here")  # RM of a missing node is OK, changes nothing


def test_guest_sees_no_events_for_unreadable_paths(xs_server: ServerUnderTest) -> None:
    g5 = xs_server.guest(5)
    xs_server.guest(6)
    dom0 = xs_server.dom0
    with (
        g5.watch("/local/domain/6/data", timeout=5) as other,
        g5.watch("/local/domain", timeout=5) as parent,
        g5.watch("data", timeout=5) as own,
    ):
        # The initial event is always delivered, even for a path the guest may not read.
        assert other.get().path == "/local/domain/6/data"
        assert parent.get().path == "/local/domain"
        assert own.get().path == "data"
        dom0.write("/local/domain/6/data/q", b"z")
        dom0.write("/local/domain/5/data/q", b"z")
        assert parent.get().path == "/local/domain/5/data/q"
        assert own.get().path == "data/q"  # relative watch, relative event
        event_barrier(g5, dom0, BARRIER)
        assert other.poll(0) is None
        assert parent.get().path == BARRIER  # the barrier's own write; nothing about domain 6
        assert own.get().path == "data/barrier"
        assert parent.poll(0) is None
        dom0.rm("/local/domain/6/data/q")
        dom0.rm("/local/domain/5/data/q")
        assert parent.get().path == "/local/domain/5/data/q"
        assert own.get().path == "data/q"
        event_barrier(g5, dom0, BARRIER)
        assert other.poll(0) is None


def test_event_after_being_granted_read(xs_server: ServerUnderTest, base: str) -> None:
    g5 = xs_server.guest(5)
    dom0 = xs_server.dom0
    dom0.write(f"{base}/grant", b"")
    with g5.watch(f"{base}/grant", timeout=5) as w:
        w.get()
        dom0.write(f"{base}/grant", b"1")
        event_barrier(g5, dom0, BARRIER)
        assert w.poll(0) is None
        dom0.set_perms(f"{base}/grant", ["n0", "r5"])
        assert w.get().path == f"{base}/grant"  # the perms change itself is visible
        dom0.write(f"{base}/grant", b"2")
        assert w.get().path == f"{base}/grant"


def test_guest_does_not_see_other_domains_come_and_go(xs_server: ServerUnderTest) -> None:
    g5 = xs_server.guest(5)
    with (
        g5.watch("@introduceDomain", timeout=5) as intro,
        g5.watch("@releaseDomain", timeout=5) as rel,
    ):
        intro.get(), rel.get()  # initial events
        domid = xs_server.fresh_domid()
        xs_server.guest_path(domid)
        xs_server.release(domid)
        # @introduceDomain / @releaseDomain are n0 nodes: only dom0 hears about domains.
        event_barrier(g5, xs_server.dom0, BARRIER)
        assert intro.poll(0) is None
        assert rel.poll(0) is None


def test_guest_value_size_quota(xs_server: ServerUnderTest) -> None:
    g = xs_server.guest(5)
    with pytest.raises(XenStoreError) as info:
        g.write("data/big", b"x" * 2049)
    assert info.value.errno == errno.E2BIG
    assert not g.exists("data/big")


def _first_failure(fn, limit: int) -> tuple[int, XenStoreError]:
    for i in range(limit):
        try:
            fn(i)
        except XenStoreError as exc:
            return i, exc
    raise AssertionError(f"no failure within {limit} attempts")


def test_guest_watch_quota(xs_server: ServerUnderTest) -> None:
    domid = xs_server.fresh_domid()
    g = xs_server.guest(domid)
    watches = []

    def add(i: int) -> None:
        watches.append(g.watch("data", token=f"q{i}"))

    count, exc = _first_failure(add, 150)
    assert exc.errno == errno.ENOSPC  # oxenstored sends "EQUOTA"
    # quota-maxwatch = 100: we allow exactly 100; oxenstored lets a 101st through.
    assert count == (100 if xs_server.is_ours else 101)
    for w in watches[:5]:
        w.close()
    g.watch("data", token="after-close").close()  # room again
    for w in watches[5:]:
        w.close()
    xs_server.release(domid)


def test_guest_transaction_quota(xs_server: ServerUnderTest) -> None:
    domid = xs_server.fresh_domid()
    g = xs_server.guest(domid)
    txs = []
    count, exc = _first_failure(lambda i: txs.append(g.transaction()), 30)
    assert exc.errno == errno.ENOSPC
    # quota-transaction = 10: exactly 10 for us; oxenstored allows 11.
    assert count == (10 if xs_server.is_ours else 11)
    for tx in txs:
        tx.abort()
    g.transaction().abort()
    xs_server.release(domid)


def test_guest_node_quota(xs_server: ServerUnderTest) -> None:
    domid = xs_server.fresh_domid()
    g = xs_server.guest(domid)
    # Pipelined in batches on one raw connection of the guest: a round trip per write through
    # the polled fake ring is slow on a busy machine, and one deep pipeline can outrun
    # oxenstored's per-domain queue of unread replies.
    n = 1005
    replies = []
    with xs_server.raw(xs_server.guest_path(domid)) as raw:
        for batch in range(0, n, 50):
            ids = range(batch, min(n, batch + 50))
            raw.send_raw(b"".join(pack(Op.WRITE, i, 0, b"data/n%d\0" % i) for i in ids))
            replies += [raw.recv_message() for _ in ids]
    replies.sort(key=lambda m: m[1])  # by request id
    failures = [rq for op, rq, _tx, _body in replies if op == Op.ERROR]
    assert failures, "the node quota never hit"
    first = failures[0]
    # On the wire: ENOSPC (xsd_errors, C xenstored, ours) vs oxenstored's non-errno "EQUOTA".
    assert replies[first][3] == (b"ENOSPC\0" if xs_server.is_ours else b"EQUOTA\0")
    # quota-maxentity = 1000 nodes owned by the domain; the layout gave it 7 (data, drivers,
    # feature, attr, error, control/shutdown, control/sysrq).
    assert first == 1000 - 7
    assert failures == list(range(first, n))
    with pytest.raises(XenStoreError) as info:
        g.mkdir("data/more")
    assert info.value.errno == errno.ENOSPC
    g.write("data/n0", b"rewrite is fine")  # no new node
    xs_server.dom0.write(f"/local/domain/{domid}/data/by-dom0", b"")  # dom0 is exempt
    xs_server.release(domid)


def test_set_target_gives_a_stub_domain_its_targets_rights(xs_server: ServerUnderTest) -> None:
    """A device-model stub domain (SET_TARGET stub target) acts with the target's rights."""
    target, stub = xs_server.fresh_domid(), xs_server.fresh_domid()
    xs_server.guest(target).write("data/for-the-stub", b"t")
    s = xs_server.guest(stub)
    with pytest.raises(XenStorePermission):
        s.read(f"/local/domain/{target}/data/for-the-stub")
    xs_server.dom0.set_target(stub, target)
    assert s.read(f"/local/domain/{target}/data/for-the-stub") == b"t"  # owner: the target
    assert s.read(f"/local/domain/{target}/name") == f"guest{target}".encode()  # ACL r<target>
    s.write(f"/local/domain/{target}/data/from-stub", b"s")
    with pytest.raises(XenStorePermission):
        s.write(f"/local/domain/{target}/memory/target", b"1")  # the target may not either
    with pytest.raises(XenStorePermission):
        s.read("/tool/xenstored")
    xs_server.release(stub)
    xs_server.release(target)


def test_control_and_restrict_differences(xs_server: ServerUnderTest) -> None:
    g = xs_server.guest(5)
    with xs_server.raw(xs_server.guest_path(5)) as raw:
        reply = raw.request(Op.CONTROL, "print", "from a guest")
    # XS_CONTROL is a dom0 tool's call (C xenstored: EACCES); oxenstored 4.17 obliges anyone.
    assert reply == ((Op.ERROR, b"EACCES\0") if xs_server.is_ours else (Op.CONTROL, b"OK\0"))
    g.read("domid")  # the shared guest client takes its ring back
    with xs_server.raw() as raw:
        reply = raw.request(Op.RESTRICT, "5")
    # RESTRICT on a dom0 socket: C xenstored's XS_RESTRICT, which we keep; oxenstored: ENOSYS.
    assert reply == ((Op.RESTRICT, b"OK\0") if xs_server.is_ours else (Op.ERROR, b"ENOSYS\0"))
