"""Clients nobody on this project wrote, against our server (and, as the control, oxenstored):
Debian's C tools (xenstore-utils, libxenstore 4.17) and pyxs 0.4.1 used directly."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import TYPE_CHECKING

import pytest
import pyxs

from xentmem.xenstore import transaction

if TYPE_CHECKING:
    from conftest import ServerUnderTest

needs_tools = pytest.mark.skipif(
    shutil.which("xenstore-read") is None, reason="xenstore-utils not installed"
)


def tool(path: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XENSTORED_")}
    env["XENSTORED_PATH"] = path
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=20)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args}: rc {proc.returncode}: {proc.stderr}")
    return proc


@needs_tools
def test_c_tools_write_read_ls_rm(xs_server: ServerUnderTest, base: str) -> None:
    p = xs_server.dom0_path
    tool(p, "xenstore-write", f"{base}/a", "hello", f"{base}/b/c", "world")
    assert tool(p, "xenstore-read", f"{base}/a").stdout == "hello\n"
    assert tool(p, "xenstore-list", base).stdout.split() == ["a", "b"]
    ls = tool(p, "xenstore-ls", "-p", base).stdout
    assert 'a = "hello"' in ls and "(n0)" in ls and 'c = "world"' in ls
    assert tool(p, "xenstore-exists", f"{base}/b/c").returncode == 0
    tool(p, "xenstore-rm", f"{base}/b")
    assert tool(p, "xenstore-exists", f"{base}/b/c", check=False).returncode != 0
    missing = tool(p, "xenstore-read", f"{base}/missing", check=False)
    assert missing.returncode == 1
    assert "couldn't read path" in missing.stderr
    assert xs_server.dom0.read(f"{base}/a") == b"hello"


@needs_tools
def test_c_tools_chmod(xs_server: ServerUnderTest, base: str) -> None:
    p = xs_server.dom0_path
    tool(p, "xenstore-write", f"{base}/perm", "")
    tool(p, "xenstore-chmod", f"{base}/perm", "n0", "r5", "b7")
    assert [str(x) for x in xs_server.dom0.get_perms(f"{base}/perm")] == ["n0", "r5", "b7"]
    assert "(n0,r5,b7)" in tool(p, "xenstore-ls", "-p", base).stdout


@needs_tools
def test_c_tools_watch(xs_server: ServerUnderTest, base: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XENSTORED_")}
    env["XENSTORED_PATH"] = xs_server.dom0_path
    watcher = subprocess.Popen(
        ["xenstore-watch", "-n", "3", f"{base}/w"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        # The initial event proves the watch is registered before we write.
        assert watcher.stdout is not None
        assert watcher.stdout.readline().strip() == f"{base}/w"
        xs_server.dom0.write(f"{base}/w", b"1")
        xs_server.dom0.write(f"{base}/w/sub", b"2")
        out, _ = watcher.communicate(timeout=20)
    finally:
        watcher.kill()
    assert out.split() == [f"{base}/w", f"{base}/w/sub"]


@needs_tools
def test_c_tools_as_a_guest(xs_server: ServerUnderTest) -> None:
    p = xs_server.guest_path(5)
    assert tool(p, "xenstore-read", "memory/target").stdout == "524288\n"
    tool(p, "xenstore-write", "data/from-c-tool", "yes")
    denied = tool(p, "xenstore-write", "/local/domain/0/evil", "x", check=False)
    assert denied.returncode != 0
    assert xs_server.dom0.read("/local/domain/5/data/from-c-tool") == b"yes"
    xs_server.guest(5).read("data/from-c-tool")  # take the ring back for the shared client


@needs_tools
def test_c_tools_big_directory_uses_directory_partial(ours: ServerUnderTest, base: str) -> None:
    # libxenstore answers E2BIG from DIRECTORY with DIRECTORY_PARTIAL requests (op 22 in 4.17's
    # xs_wire.h); a wrong op number or reply format would break xenstore-list here.
    names = [f"entry-{i:030d}" for i in range(200)]
    transaction(ours.dom0, lambda tx: [tx.write(f"{base}/big/{n}", b"") for n in names])
    assert tool(ours.dom0_path, "xenstore-list", f"{base}/big").stdout.split() == names


def test_pyxs_directly(xs_server: ServerUnderTest, base: str) -> None:
    with pyxs.Client(unix_socket_path=xs_server.dom0_path) as c:
        c.write(f"{base}/py".encode(), b"value")
        assert c.read(f"{base}/py".encode()) == b"value"
        assert c.list(base.encode()) == [b"py"]
        c.set_perms(f"{base}/py".encode(), [b"n0", b"r5"])
        assert c.get_perms(f"{base}/py".encode()) == [b"n0", b"r5"]
        assert c.exists(f"{base}/py".encode())
        c.delete(f"{base}/py".encode())
        assert not c.exists(f"{base}/py".encode())
        with pytest.raises(pyxs.PyXSError) as info:
            c.read(f"{base}/missing".encode())
        assert info.value.args[0] == 2


def test_pyxs_transactions_and_monitor(xs_server: ServerUnderTest, base: str) -> None:
    import copy

    with pyxs.Client(unix_socket_path=xs_server.dom0_path) as c:
        c.write(f"{base}/x".encode(), b"0")
        tx = copy.copy(c)
        tx.transaction()
        tx.read(f"{base}/x".encode())
        c.write(f"{base}/x".encode(), b"1")
        tx.write(f"{base}/y".encode(), b"1")
        assert tx.commit() is False  # EAGAIN
        m = c.monitor()
        m.watch(f"{base}/m".encode(), b"tok")
        events = m.wait()
        assert next(events) == (f"{base}/m".encode(), b"tok")
        c.write(f"{base}/m/k".encode(), b"v")
        assert next(events) == (f"{base}/m/k".encode(), b"tok")
        m.unwatch(f"{base}/m".encode(), b"tok")
