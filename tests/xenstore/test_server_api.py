"""The in-process API the emulator daemon calls: start/stop, introduce/release, local clients."""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

import pytest

from xentmem.errors import XenStoreError, XenStorePermission, XenStoreUnavailable
from xentmem.xenstore import LocalXenStore, Op, Perm, Quota, XenStoreClient, XenStoreServer
from xentmem.xenstore.testing import RawClient


@pytest.fixture
def server():
    work = Path(tempfile.mkdtemp(prefix="xs-api-", dir="/tmp"))
    s = XenStoreServer(str(work / "socket")).start()
    yield s
    s.stop()


def test_start_stop_cleans_up_sockets(server: XenStoreServer) -> None:
    server.introduce_domain(3, "three", 1024, 2048)
    paths = [server.path, server.domain_socket(3)]
    assert all(os.path.exists(p) for p in paths)
    assert server.domain_socket(3) == server.path + ".dom3"
    server.stop()
    assert not any(os.path.exists(p) for p in paths)
    server.stop()  # idempotent


def test_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    Path(path).write_text("stale")
    with XenStoreServer(path) as s:
        assert XenStoreClient(s.path).list("/")


def test_introduce_domain_lays_out_and_fires(server: XenStoreServer) -> None:
    dom0 = server.connect()
    with dom0.watch("@introduceDomain", timeout=5) as intro:
        intro.get()
        server.introduce_domain(7, "web", memory_kib=262144, max_kib=524288)
        assert intro.get().path == "@introduceDomain"
    assert dom0.read("/local/domain/7/name") == b"web"
    assert dom0.read("/local/domain/7/domid") == b"7"
    assert dom0.read("/local/domain/7/memory/target") == b"262144"
    assert dom0.read("/local/domain/7/memory/static-max") == b"524288"
    assert dom0.get_perms("/local/domain/7/data") == [Perm("n", 7)]
    assert server.domains == [0, 7]
    assert server.is_introduced(7)
    with pytest.raises(ValueError):
        server.introduce_domain(7, "again", 1, 2)
    with pytest.raises(ValueError):
        server.introduce_domain(0, "dom0", 1, 2)
    with pytest.raises(ValueError):
        server.introduce_domain(9, "bad", 4, 2)  # memory above max
    assert not server.is_introduced(9)


def test_release_domain_tears_down_and_disconnects(server: XenStoreServer) -> None:
    server.introduce_domain(8, "gone", 1024, 1024)
    guest = XenStoreClient(server.domain_socket(8), timeout=5)
    guest.write("data/x", b"1")
    local_guest = server.connect(8)
    local_guest.read("domid")
    dom0 = server.connect()
    with dom0.watch("@releaseDomain", timeout=5) as rel:
        rel.get()
        server.release_domain(8)
        assert rel.get().path == "@releaseDomain"
    assert not dom0.exists("/local/domain/8")
    assert not os.path.exists(server.domain_socket(8))
    with pytest.raises(XenStoreUnavailable):
        guest.read("domid")  # its connection was closed and its socket is gone
    with pytest.raises(XenStoreUnavailable):
        local_guest.read("domid")
    with pytest.raises(ValueError):
        server.release_domain(8)
    guest.close()


def test_local_client_is_a_full_xenstore(server: XenStoreServer) -> None:
    xs = server.connect()
    assert isinstance(xs, LocalXenStore)
    other = XenStoreClient(server.path)
    with xs.watch("/loc", timeout=5) as w:
        assert w.get().path == "/loc"
        other.write("/loc/a", b"from the socket")
        assert w.get().path == "/loc/a"
        xs.write("/loc/b", b"in process")
        assert w.get().path == "/loc/b"
    assert other.read("/loc/b") == b"in process"
    tx = xs.transaction()
    tx.write("/loc/c", b"tx")
    assert not other.exists("/loc/c")
    assert tx.commit()
    assert other.read("/loc/c") == b"tx"
    xs.close()
    with pytest.raises(XenStoreUnavailable):
        xs.read("/loc/a")
    other.close()


def test_local_client_as_guest(server: XenStoreServer) -> None:
    server.introduce_domain(4, "g", 1024, 2048)
    g = server.connect(4)
    assert g.read("memory/target") == b"1024"
    with pytest.raises(XenStorePermission):
        g.write("memory/target", b"1")
    with pytest.raises(XenStoreUnavailable):
        server.connect(99).read("/")  # not introduced


def test_wire_introduce_creates_a_domain_socket(server: XenStoreServer) -> None:
    dom0 = XenStoreClient(server.path)
    dom0.introduce_domain(12, 4096, 1)
    assert os.path.exists(server.domain_socket(12))
    dom0.introduce_domain(12, 4096, 1)  # again: nothing changes
    g = XenStoreClient(server.domain_socket(12))
    with pytest.raises(XenStorePermission):
        g.write("/local/domain/12/x", b"no layout, no perms")  # /local is n0
    dom0.release_domain(12)
    assert not os.path.exists(server.domain_socket(12))
    g.close()
    dom0.close()


def test_restrict_turns_a_dom0_connection_into_a_guest(server: XenStoreServer) -> None:
    server.introduce_domain(5, "five", 1024, 2048)
    server.introduce_domain(6, "six", 1024, 2048)
    xs = XenStoreClient(server.path)
    xs.write("/local/domain/6/data/secret", b"6")
    with pytest.raises(XenStoreError) as info:
        xs.restrict(77)
    assert info.value.errno == 2  # no such domain
    xs.restrict(5)
    assert xs.read("memory/target") == b"1024"  # relative paths are now domain 5's
    with pytest.raises(XenStorePermission):
        xs.read("/local/domain/6/data/secret")
    with pytest.raises(XenStorePermission):
        xs.restrict(0)  # no way back
    xs.close()
    with RawClient(server.path) as raw:  # the legacy XS_RESTRICT number works too
        assert raw.request(Op.RESTRICT_LEGACY, "5") == (Op.RESTRICT_LEGACY, b"OK\0")
        assert raw.request(Op.READ, "/local/domain/6/name")[1] == b"EACCES\0"


def test_set_target_grants_the_targets_rights(server: XenStoreServer) -> None:
    server.introduce_domain(5, "five", 1024, 2048)
    server.introduce_domain(9, "stubdom", 1024, 2048)
    stub = XenStoreClient(server.domain_socket(9))
    with pytest.raises(XenStorePermission):
        stub.read("/local/domain/5/name")
    dom0 = XenStoreClient(server.path)
    dom0.set_target(9, 5)  # device-model stub domain 9 serves domain 5
    assert stub.read("/local/domain/5/name") == b"five"
    stub.write("/local/domain/5/data/from-stub", b"1")  # 5's own node (n5): full access
    dom0.resume_domain(5)
    server.release_domain(5)  # the target goes away with the domain ...
    server.introduce_domain(5, "new five", 1024, 2048)
    with pytest.raises(XenStorePermission):
        stub.read("/local/domain/5/name")  # ... and a new domain 5 is not the stub's target
    stub.close()
    dom0.close()


def test_directory_partial_format(server: XenStoreServer) -> None:
    xs = server.connect()
    for i in range(3):
        xs.write(f"/dp/n{i}", b"")
    with RawClient(server.path) as raw:
        op, body = raw.request(Op.DIRECTORY_PARTIAL, "/dp", "0")
        assert op == Op.DIRECTORY_PARTIAL
        gen, rest = body.split(b"\0", 1)
        assert int(gen, 16) > 0
        assert rest == b"n0\0n1\0n2\0\0"  # the extra NUL: nothing more
        assert raw.request(Op.DIRECTORY_PARTIAL, "/dp", "3")[1] == gen + b"\0n1\0n2\0\0"
        assert raw.request(Op.DIRECTORY_PARTIAL, "/dp", "99")[1] == gen + b"\0\0"
        assert raw.request(Op.DIRECTORY_PARTIAL, "/dp", "x")[1] == b"EINVAL\0"


def test_big_directory_through_our_client(server: XenStoreServer) -> None:
    xs = XenStoreClient(server.path)
    names = [f"n{i:040d}" for i in range(150)]  # ~6 KiB of names
    for n in names:
        xs.write(f"/big/{n}", b"")
    assert xs.list("/big") == names  # DIRECTORY says E2BIG; the client pages with PARTIAL
    xs.close()


def test_quota_is_configurable(tmp_path: Path) -> None:
    with XenStoreServer(str(tmp_path / "q"), quota=Quota(max_value=8, max_watches=1)) as s:
        s.introduce_domain(5, "five", 1, 2)
        g = XenStoreClient(s.domain_socket(5))
        with pytest.raises(XenStoreError) as info:
            g.write("data/x", b"123456789")
        assert info.value.errno == 7  # E2BIG
        g.watch("data").close()
        w = g.watch("data")
        with pytest.raises(XenStoreError):
            g.watch("data/other")
        w.close()
        g.close()


def test_api_calls_from_many_threads(server: XenStoreServer) -> None:
    errors: list[BaseException] = []

    def churn(base: int) -> None:
        try:
            for i in range(5):
                domid = base + i
                server.introduce_domain(domid, f"d{domid}", 1024, 2048)
                XenStoreClient(server.domain_socket(domid)).write("data/x", b"1")
                server.release_domain(domid)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(100 + 10 * k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert server.domains == [0]


def test_toolstack_helpers(server: XenStoreServer) -> None:
    from xentmem.xenstore import layout_dom0, layout_domain, teardown_domain

    xs = server.connect()
    layout_dom0(xs, memory_kib=4096)
    assert xs.read("/local/domain/0/name") == b"Domain-0"
    assert xs.read("/local/domain/0/memory/target") == b"4096"
    layout_domain(xs, 20, "pre", 1024, 2048)
    layout_domain(xs, 20, "replaced", 512, 2048)  # leftovers are replaced, as libxl does
    assert xs.read("/local/domain/20/name") == b"replaced"
    assert xs.read("/local/domain/20/memory/target") == b"512"
    teardown_domain(xs, 20)
    assert not xs.exists("/local/domain/20")
    with pytest.raises(ValueError):
        layout_domain(xs, 21, "bad", -1, 2048)


def test_serve_entry_point_with_domains(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = str(tmp_path / "served")
    proc = subprocess.Popen(
        [sys.executable, "-m", "xentmem.xenstore", "serve", path, "--domain", "5:web:1024:2048"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        guest = XenStoreClient(path + ".dom5")
        assert guest.read("name") == b"web"
        assert guest.read("memory/static-max") == b"2048"
        guest.close()
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
    assert not os.path.exists(path)  # the socket is removed on SIGTERM
