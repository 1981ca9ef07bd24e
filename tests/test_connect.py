"""One way to name a host: ``-c URI`` / ``$XENTMEM_CONNECT`` for every command that talks to one
(``status``, ``guest``, ``xenstore``, ``tmem``, ``agent run``, ``doctor``), resolved by
``xentmem.cli._connect.resolve_target``, against a real emulator daemon process.

Every test runs hermetic: no privcmd or xenbus device is seen, ``$XENTMEM_STATE`` is an empty
directory, and no ``$XENTMEM_CONNECT`` / ``$XENTMEM_LIBVIRT_URI`` leaks in from the caller.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xentmem.cli import _connect, app
from xentmem.cli._app import UsageError
from xentmem.errors import TransportError
from xentmem.xenstore import XenStoreServer

runner = CliRunner()


@pytest.fixture(scope="module")
def state(emulator_daemon: Path) -> Path:
    return emulator_daemon


@pytest.fixture(autouse=True)
def nowhere(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """This machine has no Xen and no default daemon; the caller's environment stays out."""
    with tempfile.TemporaryDirectory(prefix="xte") as d:
        empty = Path(d)
        monkeypatch.setattr(_connect, "PRIVCMD_PATHS", (str(empty / "privcmd"),))
        monkeypatch.setattr(_connect, "XENBUS_PATHS", (str(empty / "xenbus"),))
        monkeypatch.setenv("XENTMEM_STATE", str(empty))
        for name in ("XENTMEM_CONNECT", "XENTMEM_LIBVIRT_URI", "XENSTORED_PATH"):
            monkeypatch.delenv(name, raising=False)
        yield empty


def run(*args: str, code: int = 0, env: dict[str, str] | None = None):
    result = runner.invoke(app, list(args), env=env)
    assert result.exit_code == code, (args, result.output, result.stderr)
    return result


def one_line_error(result) -> str:
    """The one error line (with --json, the message of the JSON error object)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""
    if lines[0].startswith("{"):
        error = json.loads(lines[0])["error"]
        assert error["exit_code"] == result.exit_code
        return error["message"]
    assert lines[0].startswith("error: "), result.stderr
    return lines[0]


def check_status(out: str, state: Path) -> None:
    data = json.loads(out)
    assert data["host"]["connect"] == f"emulator:{state}"
    assert data["host"]["xenstore"] == str(state / "xenstore.sock")
    assert data["host"]["libvirt"] is None and data["host"]["kind"] == "xenstore"
    assert [g["name"] for g in data["guests"]] == ["Domain-0", "guest1", "guest2"]


def check_guests(out: str, state: Path) -> None:
    assert [(g["domid"], g["name"]) for g in json.loads(out)["guests"]] == [
        (0, "Domain-0"), (1, "guest1"), (2, "guest2")]


def check_ls(out: str, state: Path) -> None:
    assert ' name = "guest1"' in out.splitlines() and ' name = "guest2"' in out.splitlines()


def check_tmem(out: str, state: Path) -> None:
    assert json.loads(out)["records"][0]["kind"] == "global"


COMMANDS = {
    "status": (["status", "--json"], check_status),
    "guest list": (["guest", "list", "--json"], check_guests),
    "xenstore ls": (["xenstore", "ls", "/local/domain"], check_ls),
    "tmem list": (["tmem", "list", "-a", "--json"], check_tmem),
}


@pytest.mark.parametrize("how", ["flag", "env", "default state dir"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_reaches_the_daemon(state: Path, command: str, how: str):
    args, check = COMMANDS[command]
    if how == "flag":
        result = run(*args, "-c", f"emulator:{state}")
    elif how == "env":
        result = run(*args, env={"XENTMEM_CONNECT": f"emulator:{state}"})
    else:  # nothing named: the daemon running in the default state directory
        result = run(*args, env={"XENTMEM_STATE": str(state)})
    check(result.stdout, state)


def test_socket_form_and_domid_reach_the_domains_xenstored(state: Path):
    sock = f"emulator:{state}/hypercall.sock"
    check_ls(run("xenstore", "ls", "-c", sock, "/local/domain").stdout, state)
    assert 'name = "guest1"' in run("xenstore", "ls", "-c", f"{sock}?domid=1",
                                    "/local/domain/1").stdout
    # as domain 1 (its own socket, xenstore.sock.dom1), dom0's node is not readable
    denied = run("xenstore", "read", "-c", f"emulator:{state}?domid=1", "/local/domain/0/name",
                 code=1)
    assert "EACCES" in one_line_error(denied)
    missing = run("xenstore", "ls", "-c", f"emulator:{state}?domid=77", "/", code=2)
    assert "xenstore.sock.dom77" in one_line_error(missing)


def test_guest_show_and_memory_via_connect(state: Path):
    shown = json.loads(run("guest", "show", "guest2", "--json", "-c", f"emulator:{state}").stdout)
    assert shown["guest"]["domid"] == 2 and shown["guest"]["max_mib"] == 256
    set_ = json.loads(run("guest", "memory", "guest2", "--target", "100", "--wait", "0",
                          "--json", env={"XENTMEM_CONNECT": f"emulator:{state}"}).stdout)
    assert set_["via"] == "xenstore" and set_["target_mib"] == 100


def test_xenstored_and_libvirt_uri_override_the_resolved_parts(state: Path, nowhere: Path):
    other = XenStoreServer(nowhere / "xs").start()  # an empty xenstored: no domains
    try:
        for env in (None, {"XENTMEM_CONNECT": f"emulator:{state}"}):
            argv = ["status", "--json", "--xenstored", other.path]
            data = json.loads(run(*argv, *([] if env else ["-c", f"emulator:{state}"]),
                                  env=env).stdout)
            assert data["host"]["xenstore"] == other.path and data["guests"] == []
        listed = run("xenstore", "list", "-c", f"emulator:{state}", "--xenstored", other.path,
                     "/local/domain", code=1)
        assert "ENOENT" in one_line_error(listed)  # the empty one, not the daemon's
    finally:
        other.stop()
    # nothing named and no host here: --xenstored alone is enough for xenstore-only commands
    check_ls(run("xenstore", "ls", "--xenstored", str(state / "xenstore.sock"),
                 "/local/domain").stdout, state)
    data = json.loads(run("status", "--json", "-c", f"emulator:{state}",
                          "--libvirt-uri", "test:///default").stdout)
    assert data["host"]["kind"] == "libvirt" and data["host"]["libvirt"] == "test:///default"


@pytest.mark.parametrize("args", [
    ["status"], ["guest", "list"], ["xenstore", "ls", "/"], ["tmem", "list", "-a"],
    ["agent", "run", "--once", "--sysfs-root", "/"],
])
def test_no_daemon_and_no_privcmd_is_one_line_exit_1(args: list[str], nowhere: Path):
    line = one_line_error(run(*args, code=1))
    assert line == ("error: no host here: no /dev/xen/privcmd and no emulator daemon in "
                    f"{nowhere}; start one with `xentmem emulator up`, or name a host with "
                    "-c emulator:DIR or -c xen:///system")


def test_a_named_daemon_that_is_not_running_exits_1(nowhere: Path):
    for args in (["status"], ["xenstore", "ls"], ["tmem", "list", "-a"]):
        line = one_line_error(run(*args, "-c", f"emulator:{nowhere}", code=1))
        assert "no emulator daemon" in line and "xentmem emulator up" in line


@pytest.mark.parametrize("uri", ["foo:bar", "nope", "/run/xentmem", "xen://remote/system",
                                 "emulator:/x?bogus=1", "emulator?domid=x"])
@pytest.mark.parametrize("command", ["status", "guest list", "xenstore ls", "tmem list"])
def test_unknown_or_malformed_uri_exits_2(uri: str, command: str):
    args = COMMANDS[command][0]
    line = one_line_error(run(*args, "-c", uri, code=2))
    assert uri.split("?")[0].split("://")[0] in line


def test_agent_run_as_a_domain_of_the_daemon(state: Path, nowhere: Path):
    (nowhere / "root" / "sys").mkdir(parents=True)
    agent = ["agent", "run", "--once", "--json", "--sysfs-root", str(nowhere / "root")]
    report = json.loads(run(*agent, "-c", f"emulator:{state}?domid=2").stdout)
    assert report["state"] == "applied"
    run(*agent, "-c", f"emulator:{state}", "--domid", "2")  # the same, spelled as before
    line = one_line_error(run(*agent, "-c", f"emulator:{state}?domid=1", "--domid", "2",
                              code=2))
    assert "contradicts" in line
    line = one_line_error(run(*agent, "-c", f"emulator:{state}", "--domid", "9", code=2))
    assert "xenstore.sock.dom9" in line and "introduced" in line


def test_doctor_checks_the_named_daemon(state: Path):
    rows = {r["check"]: r for r in json.loads(run("doctor", "--json", "-c",
                                                  f"emulator:{state}").stdout)["checks"]}
    assert list(rows) == ["emulator", "xen", "tmem", "xenstored", "libvirt"]
    assert rows["emulator"]["ok"] and rows["emulator"]["detail"] == str(state / "hypercall.sock")
    assert rows["xen"]["status"].startswith("4.12") and rows["tmem"]["status"] == "available"
    assert rows["xenstored"]["status"] == "reachable" and rows["libvirt"]["ok"] is None
    # unnamed, it examines this machine as a Xen host (and still exits 0) even with a daemon
    out = run("doctor", "--json", "--libvirt-uri", "test:///default",
              env={"XENTMEM_STATE": str(state)}).stdout
    rows = {r["check"]: r for r in json.loads(out)["checks"]}
    assert rows["privcmd"]["ok"] is False and rows["libvirt"]["ok"] is True
    assert "both name" in one_line_error(run("doctor", "-c", "emulator", "--privcmd", "/x",
                                             code=2))


# ---- the resolver itself --------------------------------------------------------------------


def test_resolver_emulator_forms(state: Path):
    t = _connect.resolve_target(f"emulator:{state}/hypercall.sock?domid=3&timeout=2")
    assert (t.uri, t.domid, t.state_dir) == (f"emulator:{state}?domid=3", 3, str(state))
    assert t.hypervisor_uri == f"emulator:{state}/hypercall.sock?domid=3&timeout=2"
    assert t.xenstored_path == f"{state}/xenstore.sock.dom3" and t.libvirt_uri is None
    assert _connect.resolve_target(f"emulator:{state}") == _connect.resolve_target(
        f"emulator:{state}/hypercall.sock")
    # a directory not made yet is still a state directory; a .sock name is a socket
    assert _connect.resolve_target("emulator:/no/dir").xenstored_path == "/no/dir/xenstore.sock"
    assert _connect.resolve_target("emulator:/no/x.sock").xenstored_path == "/no/xenstore.sock"
    t = _connect.resolve_target("emulator", xenstored="/xs", domid=4)
    assert t.xenstored_path == "/xs.dom4" and t.hypervisor_uri.endswith("?domid=4&timeout=10")
    with pytest.raises(UsageError, match="contradicts"):
        _connect.resolve_target("emulator:/d?domid=1", domid=2)


def test_resolver_dom0(monkeypatch: pytest.MonkeyPatch, nowhere: Path):
    monkeypatch.setenv("XENSTORED_PATH", "/run/xs.sock")  # as libxenstore's xs_open reads it
    expect = _connect.Target("xen:///system", "privcmd:", "/run/xs.sock", "xen:///system")
    assert _connect.resolve_target("xen:///system") == expect
    assert _connect.resolve_target("privcmd:/dev/p").hypervisor_uri == "privcmd:/dev/p"
    with pytest.raises(TransportError, match="no host here"):
        _connect.resolve_target()
    (nowhere / "privcmd").touch()  # now this machine is a dom0
    assert _connect.resolve_target() == expect
    # given only --xenstored, nothing else is looked for: no libvirt is bolted onto it
    assert _connect.resolve_target(xenstored="/xs") == _connect.Target(None, None, "/xs", None)
    monkeypatch.setenv("XENTMEM_LIBVIRT_URI", "test:///default")
    assert _connect.resolve_target(xenstored="/xs").libvirt_uri == "test:///default"
    assert _connect.resolve_target("xen:///system", xenstored="/xs") == _connect.Target(
        "xen:///system", "privcmd:", "/xs", "test:///default")
