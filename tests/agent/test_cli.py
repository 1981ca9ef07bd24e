"""``xentmem guest ...``, ``xentmem status`` and ``xentmem agent run`` through CliRunner, against
our xenstored with agents running as the guests (the same fixtures as the loop tests)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from xentmem.cli import app
from xentmem.emulator.machine import GuestSpec, MachineGuest
from xentmem.guest.selfballoon import MB
from xentmem.host.guests import Host
from xentmem.xenstore import XenStoreClient, XenStoreServer

from ._wait import eventually

runner = CliRunner()


@pytest.fixture
def cli(server: XenStoreServer):
    def invoke(*args: str):
        return runner.invoke(app, [*args, "--xenstored", server.path])
    return invoke


def test_status_json_lists_domains_and_agents(cli, web: MachineGuest, db: MachineGuest):
    result = cli("status", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["host"]["kind"] == "xenstore" and data["domains"] == 2 and data["agents"] == 2
    rows = {r["name"]: r for r in data["guests"]}
    assert rows["web"]["memory_mib"] == 128 and rows["web"]["max_mib"] == 256
    assert rows["web"]["frontswap"] == 1 and rows["db"]["agent"] == "applied"
    table = cli("status")
    assert table.exit_code == 0 and "2 agent(s) reporting" in table.stdout


def test_list_and_show(cli, web: MachineGuest):
    rows = json.loads(cli("guest", "list", "--json").stdout)["guests"]
    assert [(r["domid"], r["name"]) for r in rows] == [(web.domid, "web")]
    shown = cli("guest", "show", "web", "--json")
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.stdout)
    assert data["guest"]["sink"] == "model" and data["guest"]["agent"] == "applied"
    settings = {s["key"]: s for s in data["settings"]}
    assert settings["interval"]["applied"] == 5 and settings["interval"]["requested"] is None
    assert "frontswap_succ_stores" in data["stats"]
    assert cli("guest", "show", str(web.domid)).exit_code == 0  # by id, as a table


def test_set_applied(cli, web: MachineGuest):
    result = cli("guest", "set", "web", "--interval", "9", "--no-selfshrinking", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["status"] == "applied" and data["request"] == 1
    assert {s["key"]: s["applied"] for s in data["settings"]} == {"interval": 9,
                                                                  "selfshrinking": 0}
    assert web.guest.selfballoon.knobs.interval == 9
    table = cli("guest", "set", "web", "--uphysteresis", "3")
    assert table.exit_code == 0 and "applied" in table.stdout and "request 2" in table.stdout


def test_set_refused_exits_1(cli, db: MachineGuest):
    result = cli("guest", "set", "db", "--no-cleancache", "--json")
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    assert data["status"] == "refused" and "read-only" in data["reason"]
    assert data["settings"][0]["status"] == "refused"
    cleared = cli("guest", "set", "db", "--clear", "cleancache", "--json")
    assert cleared.exit_code == 0, cleared.output
    assert json.loads(cleared.stdout)["settings"][0]["status"] == "withdrawn"


def test_set_pending_without_agent(cli, machine):
    machine.add_guest(GuestSpec("quiet", 64, backend="tmem", agent=False))
    result = cli("guest", "set", "quiet", "--interval", "8", "--wait", "0.2", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "pending"


@pytest.mark.parametrize("args, message", [
    (["guest", "set", "web", "--interval", "0"], "--interval"),
    (["guest", "set", "web", "--interval", "abc"], "--interval"),
    (["guest", "set", "web"], "nothing to set"),
    (["guest", "set", "web", "--clear", "bogus"], "unknown setting 'bogus'"),
    (["guest", "set", "web", "--interval", "3", "--clear", "interval"], "contradicts"),
    (["guest", "set", "nosuch", "--interval", "3"], "no domain 'nosuch'"),
    (["guest", "show", "nosuch"], "no domain"),
    (["guest", "memory", "web", "--target", "4096"], "above the maximum"),
    (["guest", "memory", "web", "--target", "0"], "--target"),
])
def test_bad_input_exits_2_and_changes_nothing(cli, dom0: XenStoreClient, web: MachineGuest,
                                               args, message):
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert not dom0.exists(f"/local/domain/{web.domid}/control/tmem/seq")
    assert dom0.read(f"/local/domain/{web.domid}/memory/target") == b"131072"


def test_memory_target(cli, web: MachineGuest):
    result = cli("guest", "memory", "web", "--target", "100", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {k: data[k] for k in ("domid", "name", "target_mib", "previous_mib", "via",
                                 "status", "guest_target_mib")} == {
        "domid": web.domid, "name": "web", "target_mib": 100, "previous_mib": 128,
        "via": "xenstore", "status": "applied", "guest_target_mib": 100}
    assert eventually(lambda: web.guest.balloon.stats.target_pages == 100 * MB)


def test_agent_run_once_against_a_sysfs_tree(server: XenStoreServer, dom0: XenStoreClient,
                                             tmp_path, emulated_host):
    from xentmem.guest import Guest, SysfsView

    domid = emulated_host.create_domain("cli", 64)
    server.introduce_domain(domid, "cli", 65536, 65536)
    root = SysfsView(Guest("cli", memory_mb=64)).mirror(tmp_path / "root")
    base = f"/local/domain/{domid}"
    dom0.write(f"{base}/control/selfballoon/interval", "4")
    dom0.write(f"{base}/control/tmem/seq", "3")
    argv = ["agent", "run", "--once", "--json", "--domid", str(domid), "--xenstored",
            server.path, "--sysfs-root", str(root)]
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["request"] == 3 and data["state"] == "applied" and data["applied_interval"] == 4
    assert (root / "sys/devices/system/xen_memory/xen_memory0/selfballoon/"
                   "selfballoon_interval").read_text() == "4\n"
    assert dom0.read(f"{base}/data/tmem/sink") == b"sysfs"
    # a one-shot agent sends no heartbeat, and takes down one a running agent left behind, so
    # dom0 never calls it silent between runs
    assert not dom0.exists(f"{base}/data/tmem/heartbeat")
    dom0.write(f"{base}/data/tmem/heartbeat", "1")
    dom0.write(f"{base}/data/tmem/heartbeat_interval", "5")
    assert runner.invoke(app, argv).exit_code == 0
    assert not dom0.exists(f"{base}/data/tmem/heartbeat")
    assert not dom0.exists(f"{base}/data/tmem/heartbeat_interval")
    assert not Host(dom0, clock=lambda: 1e12).tmem_report(domid).silent
    dom0.write(f"{base}/control/tmem/frontswap", "1")  # no tmem module in this tree
    dom0.write(f"{base}/control/tmem/seq", "4")
    refused = runner.invoke(app, argv)
    assert refused.exit_code == 1 and "not loaded" in json.loads(refused.stdout)["reason"]
    missing = runner.invoke(app, ["agent", "run", "--once", "--domid", "999", "--xenstored",
                                  server.path, "--sysfs-root", str(root)])
    assert missing.exit_code == 2 and "no socket" in missing.stderr


def test_python_m_agent_serves_until_interrupted(server: XenStoreServer, dom0: XenStoreClient,
                                                 tmp_path, emulated_host):
    """``python -m xentmem.agent run`` as its own process, as inside a guest."""
    import signal
    import subprocess
    import sys

    from xentmem.guest import Guest, SysfsView
    from xentmem.host.guests import Host

    domid = emulated_host.create_domain("proc", 64)
    server.introduce_domain(domid, "proc", 65536, 65536)
    root = SysfsView(Guest("proc", memory_mb=64)).mirror(tmp_path / "root")
    proc = subprocess.Popen(
        [sys.executable, "-m", "xentmem.agent", "run", "--domid", str(domid), "--xenstored",
         server.path, "--sysfs-root", str(root), "--stats-interval", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        host = Host(dom0, ack_timeout=20)  # the first answer waits for the interpreter to start
        result = host.set_toggles("proc", {"downhysteresis": 16})
        assert result.status == "applied", result
        assert (root / "sys/devices/system/xen_memory/xen_memory0/selfballoon/"
                       "selfballoon_downhysteresis").read_text() == "16\n"
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=20)
        assert proc.returncode == 130, err  # ^C: Typer's Exit(130), after a clean close
        assert "serving" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
