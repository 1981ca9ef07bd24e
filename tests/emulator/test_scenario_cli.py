"""Scenarios, ``xentmem emulator run`` and ``xentmem demo`` through typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xentmem.cli import app
from xentmem.emulator.scenario import parse_scenario, run_scenario
from xentmem.errors import GuestError
from xentmem.guest import MemorySlotStore

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
runner = CliRunner()

SMALL = """
name = "small"
duration = 4
step = 0.5
[[guests]]
name = "g"
memory_mb = 48
swap = [{ mb = 64 }]
mounts = [{ name = "root", type = "ext4" }]
[[guests.workloads]]
kind = "anon"
mb = 56
grow = 1
rate = 1500
[[events]]
at = 1
guest = "g"
action = "load"
backend = "zcache"
[[events]]
at = 3
guest = "g"
action = "unload"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


def test_emulator_run_prints_json_summary_and_exits_0(tmp_path):
    result = runner.invoke(app, ["emulator", "run", str(_write(tmp_path, SMALL)), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["summary"]["ok"] is True and data["summary"]["lost"] == 0
    assert data["summary"]["drained"] > 0 and data["summary"]["stored"] > 0
    assert [e["event"].split(":")[0] for e in data["events"]] == ["loaded zcache",
                                                                  "unloaded zcache"]


def test_emulator_run_exits_1_when_a_page_is_lost(tmp_path, monkeypatch):
    """Fault injection: the swap device silently drops writes, so pages that went to disk
    (before the backend loaded, and the drained ones) come back as zeros."""
    monkeypatch.setattr(MemorySlotStore, "write", lambda self, offset, data: None)
    result = runner.invoke(app, ["emulator", "run", str(_write(tmp_path, SMALL))])
    assert result.exit_code == 1
    assert "FAIL" in result.stdout


@pytest.mark.parametrize(("text", "message"), [
    ("duration = 'x'\n[[guests]]\nname='g'", "'duration' must be"),
    ("[[guests]]\nname='g'\n[[events]]\nat=1\nguest='h'\naction='load'", "no guest named"),
    ("[[guests]]\nname='g'\n[[events]]\nat=1\nguest='g'\naction='load'", "needs backend"),
    ("[[guests]]\nname='g'\nbogus=1", "unknown key(s) bogus"),
    ("[[guests]]\nname='g'\n[[guests.workloads]]\nkind='disk'", "unknown workload kind"),
    ("not toml [", "not valid TOML"),
])
def test_bad_scenario_exits_2_with_one_line(tmp_path, text, message):
    result = runner.invoke(app, ["emulator", "run", str(_write(tmp_path, text))])
    assert result.exit_code == 2
    assert message in result.output


def test_missing_scenario_file_exits_2(tmp_path):
    result = runner.invoke(app, ["emulator", "run", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.stem)
def test_examples_run_clean(path):
    result = runner.invoke(app, ["emulator", "run", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["summary"]["ok"] is True


def test_demo_states_pages_stored_loaded_drained_lost():
    result = runner.invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    verdict = result.stdout.strip().splitlines()[-2:]
    text = " ".join(verdict)
    for word in ("stored", "loaded", "drained", "lost", "stale"):
        assert word in text
    assert "0 lost, 0 stale" in text


def test_shared_cluster_filesystem_is_one_volume_across_guests():
    data = {"host": {"xen_version": "4.4"}, "duration": 2, "step": 0.5,
            "guests": [{"name": n, "memory_mb": 16,
                        "mounts": [{"name": "c", "type": "ocfs2",
                                    "uuid": "7c2a1f3e-9b1d-4c55-8a1e-2f6b0d9e4a10"}],
                        "workloads": [{"kind": "file", "fs": "c", "files": 4, "file_mb": 4,
                                       "write_fraction": 0.0, "hot_share": 0.3,
                                       "rate": 4000}]}
                       for n in ("a", "b")],
            "events": [{"at": 0, "guest": n, "action": "load", "backend": "tmem",
                        "params": {"frontswap": False}} for n in ("a", "b")]}
    result = run_scenario(parse_scenario(data))
    assert result.ok and sum(r["cache_hits"] for r in result.rows) > 0


def test_scenario_events_apply_targets_and_sysfs():
    data = {"duration": 2, "guests": [{"name": "g", "memory_mb": 64, "max_memory_mb": 128}],
            "events": [{"at": 0, "guest": "g", "action": "target", "value": 48},
                       {"at": 1, "guest": "g", "action": "sysfs",
                        "path": "sys/devices/system/xen_memory/xen_memory0/target_kb",
                        "value": 40 * 1024}]}
    result = run_scenario(parse_scenario(data))
    assert result.rows[0]["memory_mb"] == 40
    assert result.events[0]["event"] == "memory/target = 48 MiB"


def test_event_failure_is_logged_not_fatal():
    data = {"duration": 1, "guests": [{"name": "g"}],
            "events": [{"at": 0, "guest": "g", "action": "unload"}]}
    result = run_scenario(parse_scenario(data))
    assert result.events[0]["event"].startswith("unload failed: no backend loaded")


def test_parse_rejects_duplicate_guest_names():
    with pytest.raises(GuestError, match="unique"):
        parse_scenario({"guests": [{"name": "a"}, {"name": "a"}]})


def test_writes_to_a_cluster_fs_shared_by_guests_are_refused():
    mount = {"name": "c", "type": "ocfs2", "uuid": "7c2a1f3e-9b1d-4c55-8a1e-2f6b0d9e4a10"}
    data = {"guests": [{"name": n, "mounts": [mount],
                        "workloads": [{"kind": "file", "fs": "c"}]} for n in ("a", "b")]}
    with pytest.raises(GuestError, match="no DLM"):
        parse_scenario(data)


def test_concurrent_workloads_with_tmem_and_target_changes_stay_clean():
    data = {"duration": 3, "step": 0.5,
            "guests": [{"name": "g", "memory_mb": 32, "max_memory_mb": 64, "concurrent": True,
                        "swap": [{"mb": 64}], "mounts": [{"name": "root"}],
                        "workloads": [{"kind": "anon", "mb": 28, "grow": 1, "rate": 1500},
                                      {"kind": "burst", "start": 1, "duration": 1, "mb": 8,
                                       "rate": 1000},
                                      {"kind": "file", "files": 4, "rate": 1500}]}],
            "events": [{"at": 0.5, "guest": "g", "action": "load", "backend": "tmem",
                        "params": {"selfballooning": False}},
                       {"at": 1.5, "guest": "g", "action": "target", "value": 28},
                       {"at": 2, "guest": "g", "action": "replace", "backend": "zcache"}]}
    result = run_scenario(parse_scenario(data))
    assert result.ok, result.rows
    assert result.rows[0]["stored"] > 0 and result.rows[0]["drained"] > 0


def test_bench_guest_command_reports_every_case():
    result = runner.invoke(app, ["bench", "guest", "--pages", "300", "--rounds", "1", "--json"])
    assert result.exit_code == 0, result.output
    cases = [row["case"] for row in json.loads(result.stdout)["rows"]]
    assert cases == ["frontswap store+load, no backend", "frontswap store+load, zcache",
                     "frontswap store+load, tmem on emulated Xen 4.12",
                     "one frontswap_store call, no backend",
                     "one frontswap_store call, tmem on emulated Xen 4.12",
                     "one cleancache_get_page call (miss), no backend",
                     "one cleancache_get_page call (miss), tmem on emulated Xen 4.12",
                     "unload tmem: drain to swap"]
    assert runner.invoke(app, ["bench", "guest", "--pages", "5"]).exit_code == 2
