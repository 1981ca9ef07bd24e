"""``xentmem emulator up|status|create-domain|destroy-domain|down`` and ``xentmem tmem ...
-c emulator:DIR`` end to end, through typer's CliRunner, against a real daemon process."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from xentmem.cli import app
from xentmem.emulator import daemon
from xentmem.hypercalls import Tmem
from xentmem.hypercalls.socket import SocketHypervisor
from xentmem.xenstore import XenStoreClient

runner = CliRunner()


def run(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, (args, result.output, result.stderr)
    return result.stdout


def run_json(*args: str) -> object:
    return json.loads(run(*args, "--json"))


def test_up_status_tmem_commands_down(process_daemon: Path):
    state = str(process_daemon)
    uri = f"emulator:{state}"
    info = run_json("emulator", "up", "--state", state, "--guests", "2",
                    "--xen-version", "4.12", "--memory-mb", "1024")
    assert info["already_running"] is False and info["connect"] == uri
    assert [d["domid"] for d in info["domains"]] == [0, 1, 2]
    assert Path(info["hypercall_socket"]).is_socket()
    assert "already running" in run("emulator", "up", "--state", state)
    assert run_json("emulator", "up", "--state", state)["pid"] == info["pid"]

    with SocketHypervisor(process_daemon, 1) as hv:  # guest 1 stores something
        tm = Tmem(hv)
        pool = tm.new_pool(persistent=True)
        for i in range(3):
            tm.put_page(pool, 1, i, bytes([i]) * 4096)

    rows = run_json("tmem", "list", "-a", "-c", uri)["records"]
    client = next(r for r in rows if r["kind"] == "client")
    assert client["CI"] == 1 and client["Pp"] == 3
    run("tmem", "freeze", "1", "-c", uri)
    assert next(r for r in run_json("tmem", "list", "1", "-c", uri)["records"]
                if r["kind"] == "client")["fr"] == 1
    run("tmem", "thaw", "1", "-c", uri)
    run("tmem", "set", "1", "--weight", "5", "-c", uri)
    client = next(r for r in run_json("tmem", "list", "1", "-c", uri)["records"]
                  if r["kind"] == "client")
    assert client["fr"] == 0 and client["ww"] == 5
    assert run_json("tmem", "freeable", "-c", uri)["freeable_mib"] == 0
    run("tmem", "list", "-a", "-c", f"{uri}?domid=1", code=1)  # a guest: -EPERM, one line
    run("tmem", "list", "-a", "-c", f"{uri}?bogus=1", code=2)
    run("tmem", "list", "-a", "-c", f"emulator:{state}/nowhere", code=1)

    status = run_json("emulator", "status", "--state", state)
    assert status["xen_version"].startswith("4.12") and status["memory_mib"] == 1024
    # three frames and the page their metadata takes, all charged to the domain (§9.4)
    assert status["domains"][1]["tmem_persistent_pages"] == 4
    assert [r["kind"] for r in status["tmem"]][:2] == ["global", "client"]
    assert "hypercall_socket" in run("emulator", "status", "--state", state)

    # domains come and go in xenstore as in the host
    xs = XenStoreClient(status["xenstore_socket"])
    try:
        assert xs.read("/local/domain/1/name") == b"guest1"
        introduced = xs.watch("@introduceDomain", timeout=10)
        released = xs.watch("@releaseDomain", timeout=10)
        assert introduced.get().path == "@introduceDomain"  # the initial events
        assert released.get().path == "@releaseDomain"
        created = run_json("emulator", "create-domain", "extra", "--memory-mb", "32",
                           "--state", state)
        domid = created["domid"]
        assert introduced.get().path == "@introduceDomain"
        assert xs.read(f"/local/domain/{domid}/memory/target") == b"32768"
        run("emulator", "destroy-domain", str(domid), "--state", state)
        assert released.get().path == "@releaseDomain"
        assert not xs.exists(f"/local/domain/{domid}")
    finally:
        xs.close()
    run("emulator", "destroy-domain", "77", "--state", state, code=1)
    run("emulator", "create-domain", "x", "--memory-mb", "64", "--max-memory-mb", "8",
        "--state", state, code=2)

    down = run_json("emulator", "down", "--state", state)
    assert down["stopped"] and not down["killed"]
    assert daemon.running(process_daemon) is None
    assert "no emulator daemon running" in run("emulator", "down", "--state", state)
    run("emulator", "status", "--state", state, code=1)
    run("tmem", "list", "-a", "-c", uri, code=1)

    # up again: the saved host, with guest 1's persistent pages
    again = run_json("emulator", "up", "--state", state)
    assert "restored" in again["note"] and [d["domid"] for d in again["domains"]] == [0, 1, 2]
    with SocketHypervisor(process_daemon, 1) as hv:
        assert Tmem(hv).get_page(pool, 1, 2) == bytes([2]) * 4096
    run("emulator", "up", "--state", state, "--xen-version", "4.5", code=1)  # running already
    run("emulator", "down", "--state", state)
    result = runner.invoke(app, ["emulator", "up", "--state", state, "--xen-version", "4.5"])
    assert result.exit_code == 1 and "--fresh" in result.stderr
