"""The living emulated host, driven as a user drives it: separate ``xentmem`` processes against
one ``xentmem emulator up --guests 3`` (guest 3 on Linux 6.1), named with ``-c emulator:DIR``.

The tests run in file order on one daemon; the last one kills it with SIGKILL and brings it back.
Guests run at ``--speed 5`` so that self-ballooning (whose interval is in model seconds) acts
within a few wall seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

XENTMEM = str(Path(sys.executable).with_name("xentmem"))


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([XENTMEM, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "XENTMEM_CONNECT": ""})
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def run_json(*args: str) -> Any:
    return json.loads(run(*args, "--json").stdout)


def eventually(check: Callable[[], Any], within: float = 30.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        got = check()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


@pytest.fixture(scope="module")
def state() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="xtl", dir="/tmp"))  # short socket paths
    run("emulator", "up", "--state", str(directory), "--guests", "3", "--kernel", "3=6.1",
        "--speed", "5", "--checkpoint-interval", "2")
    yield directory
    run("emulator", "down", "--state", str(directory), check=False)
    shutil.rmtree(directory, ignore_errors=True)


def guests(state: Path) -> dict[str, dict[str, Any]]:
    """``emulator status --json``'s per-guest rows, by name."""
    return {g["name"]: g for g in run_json("emulator", "status", "--state", str(state))["guests"]}


def clients_with_pages(state: Path) -> set[int]:
    rows = run_json("tmem", "list", "-a", "-c", f"emulator:{state}")["records"]
    return {r["CI"] for r in rows if r["kind"] == "client" and r["Pp"] > 0}


def test_guests_use_tmem_and_every_agent_reports(state: Path) -> None:
    assert eventually(lambda: {1, 2} <= clients_with_pages(state))  # guest3 has no tmem
    summary = run_json("status", "-c", f"emulator:{state}")
    assert summary["agents"] == 3
    assert {g["name"]: g["agent"] for g in summary["guests"] if g["domid"]} == {
        "guest1": "applied", "guest2": "applied", "guest3": "applied"}
    rows = guests(state)
    assert [rows[n]["kernel"] for n in ("guest1", "guest2", "guest3")] == ["3.10", "3.10", "6.1"]
    assert rows["guest3"]["backend"] is None
    assert all(r["lost"] == 0 and r["stale"] == 0 for r in rows.values())


def test_selfballooning_brings_memory_down_to_the_committed_memory(state: Path) -> None:
    run("guest", "set", "1", "--no-selfballooning", "-c", f"emulator:{state}")
    run("guest", "memory", "1", "--target", "120", "-c", f"emulator:{state}")
    assert eventually(lambda: guests(state)["guest1"]["memory_mib"] == 120)
    result = run_json("guest", "set", "1", "--selfballooning", "--interval", "1",
                      "-c", f"emulator:{state}")
    assert result["status"] == "applied"
    assert eventually(lambda: guests(state)["guest1"]["memory_mib"] < 110)
    assert eventually(lambda: (run_json("status", "-c", f"emulator:{state}")["guests"][1]
                               ["balloon_mib"] or 999) < 110)


def test_frontswap_off_drains_to_swap_and_loses_nothing(state: Path) -> None:
    assert eventually(lambda: guests(state)["guest2"]["tmem_pages"] > 0)
    result = run_json("guest", "set", "2", "--no-frontswap", "-c", f"emulator:{state}")
    assert result["status"] == "applied", result
    row = guests(state)["guest2"]
    assert row["tmem_pages"] == 0 and row["drained"] > 0
    assert row["lost"] == 0 and row["stale"] == 0


def test_a_modern_kernel_refuses_frontswap_with_its_reason(state: Path) -> None:
    proc = run("guest", "set", "3", "--frontswap", "-c", f"emulator:{state}", "--json",
               check=False)
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert result["status"] == "refused"
    assert "Linux 6.1 has no tmem (removed in 5.3)" in result["reason"]


def test_memory_target_balloons_the_guest_down(state: Path) -> None:
    run("guest", "memory", "3", "--target", "96", "-c", f"emulator:{state}")
    assert eventually(lambda: guests(state)["guest3"]["memory_mib"] == 96)
    shown = eventually(lambda: (g := run_json("status", "-c", f"emulator:{state}")["guests"][3])
                       ["balloon_mib"] == 96 and g)
    assert shown["memory_mib"] == shown["target_mib"] == 96


def test_tune_collect_samples_a_living_guest(state: Path, tmp_path: Path) -> None:
    trace = tmp_path / "living.csv"
    run("tune", "collect", "-c", f"emulator:{state}", "--domid", "2", "--duration", "5",
        "--step", "1", "--out", str(trace))
    replayed = run_json("tune", "replay", str(trace), "--knob", "interval=1")
    assert replayed["runs"] >= 4 and replayed["trace"] == "living.csv"


def test_sigkill_then_up_continues_the_same_guests(state: Path) -> None:
    before = guests(state)
    pid = int((state / "daemon.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    assert eventually(lambda: not Path(f"/proc/{pid}").exists(), within=10)
    up = run_json("emulator", "up", "--state", str(state))
    assert "living guests continue" in up["note"]
    after = eventually(lambda: (g := guests(state)) and all(r["agent"] for r in g.values())
                       and g)
    assert sorted(after) == sorted(before)
    assert all(r["lost"] == 0 and r["stale"] == 0 for r in after.values())
    assert after["guest3"]["memory_mib"] == 96  # memory/target survived in xenstore
    shown = run_json("guest", "show", "1", "-c", f"emulator:{state}")
    interval = next(s for s in shown["settings"] if s["key"] == "interval")
    assert interval["requested"] == 1  # the requested settings too
    assert eventually(lambda: {1} <= clients_with_pages(state))
    assert guests(state)["guest2"]["tmem_pages"] == 0  # frontswap stays off
