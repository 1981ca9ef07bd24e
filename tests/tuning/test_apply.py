"""The loop back to the admin: a recommendation's ``xentmem guest set`` line, and ``xentmem tune
apply``, on a living emulated guest (our xenstored, the guest's agent applying to its model)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xentmem.cli import app
from xentmem.emulator.machine import EmulatedMachine, GuestSpec, MachineGuest
from xentmem.errors import TraceError
from xentmem.guest.selfballoon import SelfBalloonKnobs
from xentmem.tuning.apply import recommendation
from xentmem.tuning.knobs import KNOBS, guest_set_args, knob_values, parse_knobs
from xentmem.xenstore.keys import key

runner = CliRunner()


@pytest.fixture
def web() -> Iterator[MachineGuest]:
    """Guest "web", living: its agent applies to its kernel model what the CLI, reaching the
    machine's xenstored with ``--xenstored``, requests."""
    work = Path(tempfile.mkdtemp(prefix="xttu", dir="/tmp"))  # AF_UNIX paths: <108 bytes
    machine = EmulatedMachine.boot(memory_mb=1024, xenstore=work / "xs")
    try:
        with machine:
            yield machine.add_guest(GuestSpec("web", 128, 256, backend="tmem"))
    finally:
        machine.xenstore.stop()
        shutil.rmtree(work, ignore_errors=True)


def _xenstored(guest: MachineGuest) -> str:
    return str(guest.machine.xenstore.path)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A sweep's JSON report whose recommendation is not the kernel defaults, with the two
    frontswap knobs away from theirs."""
    work = tmp_path_factory.mktemp("apply")
    trace = work / "bursty.csv"
    made = runner.invoke(app, ["tune", "synth", "bursty", "-o", str(trace), "--duration",
                               "7200", "--memory-mb", "512", "--seed", "3"])
    assert made.exit_code == 0, made.output
    swept = runner.invoke(app, ["tune", "sweep", str(trace), "-g", "downhysteresis=1,2,4,8",
                                "-g", "reserved-mb=0,32,64", "-k", "frontswap_inertia=5",
                                "-k", "frontswap-hysteresis=10", "--json"])
    assert swept.exit_code == 0, swept.output
    path = work / "report.json"
    path.write_text(swept.stdout)
    return path


def _knobs_of(guest: MachineGuest) -> dict[str, int]:
    return knob_values(guest.guest.selfballoon.knobs)


def test_the_report_line_applies_on_a_living_guest(report: Path, web: MachineGuest):
    rec = json.loads(report.read_text())["recommended"]
    assert rec["rationale"].endswith("Apply with: " + rec["apply"])
    assert rec["knobs"]["frontswap_inertia"] == 5 and rec["knobs"] != knob_values(
        SelfBalloonKnobs()) | {"frontswap_inertia": 5, "frontswap_hysteresis": 10}
    argv = shlex.split(rec["apply"])
    assert argv[:4] == ["xentmem", "guest", "set", "DOM"]
    before = _knobs_of(web)
    result = runner.invoke(app, ["guest", "set", "web", *argv[4:], "--json",
                                 "--xenstored", _xenstored(web)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["status"] == "applied", out
    assert {s["key"]: s["applied"] for s in out["settings"]} == rec["knobs"]
    assert _knobs_of(web) == rec["knobs"] != before  # the guest model runs with them now


def test_tune_apply_requests_the_same(report: Path, web: MachineGuest):
    result = runner.invoke(app, ["tune", "apply", str(report), "web", "--json",
                                 "--xenstored", _xenstored(web)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "applied"
    assert _knobs_of(web) == json.loads(report.read_text())["recommended"]["knobs"]


def test_tune_apply_bad_report_exits_2(tmp_path: Path, web: MachineGuest):
    bad = tmp_path / "r.json"
    bad.write_text(json.dumps({"recommended": {"knobs": {"interval": 0}}}))
    before = _knobs_of(web)
    result = runner.invoke(app, ["tune", "apply", str(bad), "web", "--xenstored", _xenstored(web)])
    assert result.exit_code == 2, result.output
    assert "missing selfballooning, downhysteresis" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert _knobs_of(web) == before


def test_guest_set_args_follow_the_naming_rule():
    knobs = parse_knobs(["selfshrinking=0", "reserved_mb=32", "frontswap-inertia=7"])
    args = guest_set_args(knobs)
    assert args[:3] == ["--selfballooning", "--interval", "5"]
    assert "--no-selfshrinking" in args and args[args.index("--reserved-mb") + 1] == "32"
    assert args[args.index("--frontswap-inertia") + 1] == "7"
    for name in KNOBS:  # every knob the tuner knows is a key guest set applies
        assert key(name).name == name


GOOD = {"recommended": {"knobs": knob_values(SelfBalloonKnobs())}}


@pytest.mark.parametrize(("report", "dom", "message"), [
    ({}, "web", "no recommended knobs"),
    ({"recommended": {"knobs": {**GOOD["recommended"]["knobs"], "speed": 1}}}, "web",
     "unknown speed"),
    ({"recommended": {"knobs": {**GOOD["recommended"]["knobs"], "interval": 0}}}, "web",
     "interval: must be an integer in [1, 3600]"),
    ({"recommended": {"knobs": {**GOOD["recommended"]["knobs"], "interval": "5"}}}, "web",
     "must be a whole number"),
    ({"guests": {"db": GOOD}}, "web", "no guest 'web' in this fleet report (guests: db)"),
])
def test_recommendation_rejects(report, dom, message):
    with pytest.raises(TraceError, match=re.escape(message)):
        recommendation(report, dom)


def test_recommendation_of_a_fleet_guest():
    fleet = {"guests": {"web": {"recommended": {"knobs": {
        **GOOD["recommended"]["knobs"], "reserved_mb": 64}}}}}
    assert recommendation(fleet, "web")["reserved_mb"] == 64
