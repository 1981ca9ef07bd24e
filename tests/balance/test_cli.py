"""``xentmem balance ...`` through typer's CliRunner: against a living emulator daemon (its guests
self-balloon until ``run --take-over`` stops them), and ``compare`` on fresh emulated hosts."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.daemon.conftest import ThreadDaemon
from xentmem.cli import app
from xentmem.emulator import daemon as daemon_mod
from xentmem.xenstore import XenStoreClient

runner = CliRunner()


def run(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, (args, result.output, result.stderr)
    return result.stdout if code == 0 else result.stderr


@pytest.fixture
def living() -> Iterator[str]:
    """A daemon with three living guests (web, db, idle), as ``xentmem emulator up`` runs."""
    with tempfile.TemporaryDirectory(prefix="xtb") as d:
        td = ThreadDaemon(Path(d), daemon_mod.HostConfig(
            guests=3, workloads=("web", "db", "idle"), memory_mb=1024, speed=4.0,
            xen_version="4.12")).start()
        try:
            yield d
        finally:
            td.stop()


def _targets(state: str) -> dict[int, int]:
    xs = XenStoreClient(str(Path(state) / daemon_mod.XENSTORE_SOCKET), timeout=5)
    try:
        return {d: int(xs.read(f"/local/domain/{d}/memory/target")) for d in (1, 2, 3)}
    finally:
        xs.close()


def test_plan_leaves_self_ballooning_guests_alone_and_says_so(living):
    data = json.loads(run("balance", "plan", "-c", f"emulator:{living}", "--json"))
    assert data["policy"] == "tmem" and len(data["guests"]) == 3
    assert all(not g["managed"] and "self-ballooning" in g["reason"] for g in data["guests"])
    table = run("balance", "plan", "-c", f"emulator:{living}", "--policy", "mom")
    assert "balance plan (mom)" in table and "left alone" in table


def test_run_takes_over_changes_targets_the_guests_follow_and_explain_shows_why(living):
    uri = f"emulator:{living}"
    before = _targets(living)
    out = run("balance", "run", "-c", uri, "--take-over", "--interval", "0.5", "--for", "4",
              "--policy", "tmem")
    assert "self-ballooning off" in out
    assert "guest3: " in out and " -> " in out  # a line per change
    assert "stopped after" in out
    after = _targets(living)
    changed = {d for d in after if after[d] != before[d]}
    assert changed
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the guests' balloons follow (the daemon's view)
        status = daemon_mod.control(Path(living), "status")
        held = {d["domid"]: d["memory_mb"] for d in status["domains"]}
        if all(abs(held[d] - after[d] // 1024) <= 1 for d in changed):
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"guests did not follow: targets {after}, hold {held}")

    explained = json.loads(run("balance", "explain", "guest3", "-c", uri, "--json"))
    assert explained["now"]["name"] == "guest3" and explained["now"]["inputs"]["source"] == "agent"
    assert explained["logged"] and all(r["name"] == "guest3" for r in explained["logged"])
    text = run("balance", "explain", "3", "-c", uri)
    assert "why:" in text and "logged decision" in text


def test_set_stores_settings_and_refuses_bad_ones(living):
    uri = f"emulator:{living}"
    data = json.loads(run("balance", "set", "guest1", "--floor", "100", "--priority", "20",
                          "-c", uri, "--json"))
    assert data == {"schema_version": 1, "command": "balance set", "domid": 1, "name": "guest1",
                    "floor_mib": 100, "ceiling_mib": None, "opt_out": False, "priority": 20}
    err = run("balance", "set", "guest1", "--floor", "300", "--ceiling", "200", "-c", uri, code=2)
    assert "above the ceiling" in err and len(err.strip().splitlines()) == 1
    data = json.loads(run("balance", "set", "guest1", "--opt-out", "-c", uri, "--json"))
    assert data["floor_mib"] == 100 and data["opt_out"] is True  # the rest is kept
    run("balance", "set", "nosuch", "--opt-out", "-c", uri, code=2)


def test_bad_input_exits_2_with_one_line(tmp_path):
    for args in (("plan", "--policy", "nope"), ("compare", "--guests", "web,nope"),
                 ("compare", "--policy", "nope"), ("plan", "--xenstored",
                                                   str(tmp_path / "xs.sock"))):
        err = run("balance", *args, code=2)
        assert len(err.strip().splitlines()) == 1, err


def test_compare_json_and_html(tmp_path):
    html = tmp_path / "r.html"
    data = json.loads(run("balance", "compare", "--guests", "idle,web", "--for", "10",
                          "--policy", "tmem", "--html", str(html), "--json", "--series"))
    assert [r["policy"] for r in sorted(data["table"], key=lambda r: r["policy"])] == [
        "static", "tmem"]
    assert {r["policy"] for r in data["runs"]} == {"static", "tmem"}
    assert all(len(r["time_s"]) == 3 for r in data["runs"])  # 0, 5, 10 s
    page = html.read_text()
    assert page.count("<img") == 2 and "net_gib_h" in page


def test_the_cli_names_every_policy():
    from xentmem.balance import POLICIES
    from xentmem.cli.balance import POLICY_NAMES

    assert tuple(POLICIES) == POLICY_NAMES


def test_compare_table_on_a_terminal():
    out = run("balance", "compare", "--guests", "idle", "--for", "5", "--policy", "mom")
    assert "balance compare: 1 guest(s) (idle), 5 s" in out
    assert all(word in out for word in ("static", "mom", "saved", "hits", "ranked by net"))
