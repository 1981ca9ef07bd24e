"""``xentmem xenstore``: its output is held to Debian's C tools (xenstore-ls [-f], -read, -list)
on the same tree, on our xenstored and on the real oxenstored; hostile values (every byte,
values at the cut width) print exactly as the C tools print them."""

from __future__ import annotations

import json
import shutil
import threading
from typing import TYPE_CHECKING

import pytest
from test_real_clients import tool
from typer.testing import CliRunner

from xentmem.cli import app

if TYPE_CHECKING:
    from conftest import ServerUnderTest

needs_tools = pytest.mark.skipif(shutil.which("xenstore-ls") is None,
                                 reason="xenstore-utils not installed")


def cli(path: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["xenstore", *args, "--xenstored", path])
    return result.exit_code, result.stdout, result.stderr


def _tree(xs, base: str) -> None:
    for b in range(256):  # every byte, between two letters
        xs.write(f"{base}/bytes/b{b:03d}", bytes([0x41, b, 0x42]))
    for n in range(60, 80):  # around where xenstore-ls cuts a line
        xs.write(f"{base}/cut/k{n}", "y" * n)
    xs.write(f"{base}/cut/escaped", b"y" * 60 + b"\x01" * 30)
    xs.write(f"{base}/cut/backslashes", b"y" * 65 + b"\\" * 10)
    xs.write(f"{base}/a/very/deep/and/rather/long/node/name/with/more/levels", "v" * 90)
    xs.write(f"{base}/empty", "")
    xs.write(f"{base}/quote", 'say "hi"')


@needs_tools
def test_ls_read_and_list_print_what_the_c_tools_print(xs_server: ServerUnderTest,
                                                       base: str) -> None:
    p = xs_server.dom0_path
    _tree(xs_server.dom0, base)
    for args in ([base], ["-f", base]):
        code, out, err = cli(p, "ls", *args)
        assert (code, err) == (0, "")
        assert out == tool(p, "xenstore-ls", *args).stdout, args
    paths = [f"{base}/bytes/b{b:03d}" for b in range(0, 256, 7)] + [f"{base}/quote"]
    code, out, _ = cli(p, "read", *paths)
    assert code == 0 and out == tool(p, "xenstore-read", *paths).stdout
    code, out, _ = cli(p, "list", f"{base}/cut")
    assert code == 0 and out == tool(p, "xenstore-list", f"{base}/cut").stdout
    code, out, _ = cli(p, "ls", f"{base}/cut", "--json")
    rows = json.loads(out)["nodes"]
    assert {"path": f"{base}/cut/k60", "value": "y" * 60} in rows and len(rows) == 22


@needs_tools
def test_write_and_rm_change_what_the_c_tools_see(xs_server: ServerUnderTest, base: str) -> None:
    p = xs_server.dom0_path
    assert cli(p, "write", f"{base}/x", "1", f"{base}/y/z", "two words")[0] == 0
    assert tool(p, "xenstore-read", f"{base}/x", f"{base}/y/z").stdout == "1\ntwo words\n"
    assert cli(p, "rm", f"{base}/y")[0] == 0
    assert tool(p, "xenstore-list", base).stdout.split() == ["x"]


def test_bad_input_exits_2_and_a_failed_call_1(xs_server: ServerUnderTest, base: str) -> None:
    p = xs_server.dom0_path
    code, _, err = cli(p, "write", f"{base}/x", "1", f"{base}/dangling")
    assert code == 2 and "PATH VALUE pairs" in err and len(err.splitlines()) == 1
    assert not xs_server.dom0.exists(f"{base}/x")  # nothing written
    code, _, err = cli(p, "read", f"{base}/missing")
    assert code == 1 and len(err.splitlines()) == 1 and "Traceback" not in err
    code, _, err = cli(p, "ls", f"{base}/missing")
    assert code == 1 and len(err.splitlines()) == 1


def test_nothing_listening_fails_within_the_timeout(tmp_path) -> None:
    code, _, err = cli(str(tmp_path / "no-socket"), "ls", "/", "--timeout", "0.5")
    assert code == 1 and len(err.splitlines()) == 1


def test_an_unreadable_node_is_shown_and_fails_the_listing(ours: ServerUnderTest) -> None:
    """As a guest, a node the guest may not read prints as ``name:`` (as in xenstore-ls); the
    rest is still listed and the command exits 1 naming the node."""
    domid = ours.fresh_domid()
    home = f"/local/domain/{domid}"
    guest_socket = ours.guest_path(domid)
    ours.dom0.write(f"{home}/secret", "s")
    ours.dom0.set_perms(f"{home}/secret", ["n0"])
    code, out, err = cli(guest_socket, "ls", home)
    assert code == 1 and "secret:" in out.splitlines() and f'name = "guest{domid}"' in out
    assert f"{home}/secret" in err and len(err.splitlines()) == 1


def test_watch_prints_each_event_path(xs_server: ServerUnderTest, base: str) -> None:
    p = xs_server.dom0_path
    xs_server.dom0.write(f"{base}/w", "")  # the parent exists: one event per child write
    done = threading.Event()

    def keep_writing() -> None:  # until the watch (set at some unknown moment) has seen one
        while not done.wait(0.3):
            xs_server.dom0.write(f"{base}/w/x", "1")

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        code, out, err = cli(p, "watch", f"{base}/w", "--count", "2", "--for", "60")
    finally:
        done.set()
        writer.join()
    assert (code, err) == (0, "")
    assert out.splitlines() == [f"{base}/w", f"{base}/w/x"]
    code, out, _ = cli(p, "watch", f"{base}/w", "--for", "1")  # only the initial event
    assert code == 0
    assert out.splitlines() == [f"{base}/w"]
