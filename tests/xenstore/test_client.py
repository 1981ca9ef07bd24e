"""Our client on its own: where it connects, argument handling, helpers, thread safety."""

from __future__ import annotations

import errno
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import xentmem.xenstore as xenstore
from xentmem.errors import XenStoreError, XenStoreNotFound, XenStoreUnavailable
from xentmem.xenstore import XenStore, XenStoreClient, XenStoreOps, resolve_path, transaction

if TYPE_CHECKING:
    from conftest import Ours


def test_resolve_path_like_libxenstore(tmp_path: Path) -> None:
    assert resolve_path({"XENSTORED_PATH": "/x/y"}) == "/x/y"
    assert resolve_path({"XENSTORED_PATH": "/x/y", "XENSTORED_RUNDIR": "/r"}) == "/x/y"
    # RUNDIR's socket, when it exists
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "socket"))
    try:
        assert resolve_path({"XENSTORED_RUNDIR": str(tmp_path)}) == str(tmp_path / "socket")
    finally:
        sock.close()
    # Nothing there and no xenbus device on this host: the socket path, for the error message.
    missing = tmp_path / "nowhere"
    assert resolve_path({"XENSTORED_RUNDIR": str(missing)}) == str(missing / "socket")


def test_default_path_comes_from_environment(monkeypatch: pytest.MonkeyPatch, ours: Ours) -> None:
    monkeypatch.setenv("XENSTORED_PATH", ours.dom0_path)
    xs = XenStoreClient()
    assert xs.path == ours.dom0_path
    assert "local" in xs.list("/")
    xs.close()


def test_non_socket_path_is_a_xenbus_device(tmp_path: Path) -> None:
    """A path that is not a socket is opened as the XenBus device (as inside a guest). Here
    /dev/null stands in for it: it answers nothing (EOF), so we must get an error, never hang."""
    xs = XenStoreClient("/dev/null", timeout=1)
    with pytest.raises((XenStoreUnavailable, XenStoreError)):
        xs.read("/x")
    xs.close()


def test_protocols_are_satisfied(ours: Ours) -> None:
    xs = ours.client()
    assert isinstance(xs, XenStore)
    assert isinstance(ours.server.connect(), XenStore)
    tx = xs.transaction()
    assert isinstance(tx, XenStoreOps)
    tx.abort()


def test_bad_client_arguments(ours: Ours, base: str) -> None:
    xs = ours.dom0
    with pytest.raises(XenStoreError) as info:
        xs.read("")
    assert info.value.errno == errno.EINVAL
    with pytest.raises(XenStoreError):
        xs.read("/a\0b")
    with pytest.raises(XenStoreError) as info:
        xs.read("/caf\u00e9")  # the server judges it: EINVAL
    assert info.value.errno == errno.EINVAL
    with pytest.raises(ValueError):
        xs.set_perms(f"{base}/x", [])
    with pytest.raises(ValueError):
        xs.set_perms(f"{base}/x", ["q1"])


def test_watch_token_must_be_unique_per_connection(ours: Ours, base: str) -> None:
    xs = ours.client()
    w = xs.watch(f"{base}/a", token="mine")
    with pytest.raises(ValueError):
        xs.watch(f"{base}/b", token="mine")
    w.close()
    xs.watch(f"{base}/b", token="mine").close()  # free again after close
    w.close()  # closing twice is fine
    with pytest.raises(XenStoreError):
        w.get()


def test_failed_watch_leaves_no_subscription(ours: Ours) -> None:
    xs = ours.client()
    with pytest.raises(XenStoreError):
        xs.watch("/bad//path", token="t1")
    xs.watch("/good", token="t1").close()  # the token was released


def test_transaction_end_states(ours: Ours, base: str) -> None:
    xs = ours.dom0
    tx = xs.transaction()
    tx.write(f"{base}/t", b"1")
    assert tx.commit()
    with pytest.raises(XenStoreError):
        tx.write(f"{base}/t", b"2")
    tx.abort()  # no-op once ended
    assert xs.read(f"{base}/t") == b"1"


def test_transaction_helper_gives_up_with_eagain(ours: Ours, base: str) -> None:
    xs, other = ours.client(), ours.client()
    xs.write(f"{base}/hot", b"0")
    calls = []

    def always_conflicts(tx) -> None:
        calls.append(1)
        tx.read(f"{base}/hot")
        other.write(f"{base}/hot", str(len(calls)))
        tx.write(f"{base}/out", b"x")

    with pytest.raises(XenStoreError) as info:
        transaction(xs, always_conflicts, retries=3, backoff=0)
    assert info.value.errno == errno.EAGAIN
    assert len(calls) == 4
    assert not xs.exists(f"{base}/out")


def test_transaction_helper_propagates_other_errors(ours: Ours, base: str) -> None:
    with pytest.raises(XenStoreNotFound):
        transaction(ours.dom0, lambda tx: tx.read(f"{base}/absent"))


def test_one_client_many_threads(ours: Ours, base: str) -> None:
    xs = ours.client()
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(50):
                xs.write(f"{base}/th{k}", str(i))
                assert xs.read(f"{base}/th{k}") == str(i).encode()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_exported_names() -> None:
    assert set(xenstore.__all__) == {
        "ConnectionLimits", "LocalXenStore", "Op", "Perm", "Quota", "Transaction", "TreeNode",
        "Watch", "WatchEvent", "XenStore", "XenStoreClient", "XenStoreOps", "XenStoreServer",
        "escape_value", "layout_dom0", "layout_domain", "ls_lines", "resolve_path", "sanitize_bool",
        "sanitize_choice", "sanitize_domid", "sanitize_int", "sanitize_kib", "sanitize_meminfo",
        "sanitize_text", "teardown_domain", "transaction", "walk",
    }  # fmt: skip
    for name in xenstore.__all__:
        assert getattr(xenstore, name) is not None
