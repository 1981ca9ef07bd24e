"""Fleet sweeps: the same reports in this process, on a local Dask cluster and on an existing
scheduler; an interrupted sweep resumes from its results file to the same result; reports per
guest and for the fleet."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xentmem.cli import app
from xentmem.errors import TraceError, TransportError
from xentmem.tuning.apply import load_recommendation
from xentmem.tuning.fleet import FleetSpec, load_fleet, parse_cluster, run_fleet
from xentmem.tuning.knobs import parse_grid, parse_knobs
from xentmem.tuning.synth import SynthSpec, synthesize
from xentmem.tuning.trace import save_trace

runner = CliRunner()
GRID = ["downhysteresis=1,4,8", "reserved_mb=0,32"]
SPEC = FleetSpec(parse_grid(GRID))


@pytest.fixture(scope="module")
def fleet_files(tmp_path_factory) -> list[Path]:
    """Four guests' traces, in three formats."""
    work = tmp_path_factory.mktemp("fleet")
    kinds = [("web", "bursty", ".csv"), ("db", "diurnal", ".parquet"),
             ("batch", "ramp", ".jsonl"), ("cache", "bursty", ".parquet")]
    return [save_trace(synthesize(SynthSpec(kind, duration=3600, step=10, memory_mb=512,
                                            seed=seed)), work / f"{name}{suffix}")
            for seed, (name, kind, suffix) in enumerate(kinds)]


@pytest.fixture(scope="module")
def in_process(fleet_files):
    return run_fleet(load_fleet(fleet_files), SPEC)


def test_in_process_reports_per_guest(in_process, fleet_files):
    assert list(in_process.reports) == ["web", "db", "batch", "cache"]
    web = in_process.reports["web"]
    assert web["combinations"] == 6 and len(web["results"]) == 6
    assert web["recommended"]["apply"].startswith("xentmem guest set web ")
    fleet = in_process.as_dict()["fleet"]
    assert fleet["guests"] == 4
    assert fleet["mean_held_mib"]["defaults"] == pytest.approx(sum(
        r["defaults"]["mean_held_mib"] for r in in_process.reports.values()), abs=0.01)


def test_cli_local_dask_cluster_equals_in_process(fleet_files, in_process):
    args = ["tune", "sweep", *map(str, fleet_files), *(a for g in GRID for a in ("-g", g))]
    local = runner.invoke(app, [*args, "--json"])
    dask = runner.invoke(app, [*args, "--cluster", "local:2", "--json"])
    assert local.exit_code == 0, local.output
    assert dask.exit_code == 0, dask.output
    envelope = {"schema_version": 1, "command": "tune sweep"}  # the CLI's JSON contract
    assert json.loads(dask.stdout) == json.loads(local.stdout) == {**envelope,
                                                                   **in_process.as_dict()}


def test_an_existing_scheduler_gives_the_same(fleet_files, in_process):
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp",
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tcp://")
        seen = []
        on_dask = run_fleet(load_fleet(fleet_files), SPEC, cluster=address,
                            on_result=lambda g, done, total: seen.append((done, total)))
    assert on_dask.reports == in_process.reports
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_resume_after_an_interruption_gives_the_same_result(fleet_files, in_process,
                                                            tmp_path: Path):
    results = tmp_path / "results.jsonl"
    traces = load_fleet(fleet_files)

    def stop_after_two(guest: str, done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_fleet(traces, SPEC, results=results, on_result=stop_after_two)
    lines = results.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["format"].startswith("xentmem fleet")
    with results.open("a") as f:  # the interruption tore the third guest's line
        f.write('{"guest": "batch", "digest": "12')
    seen: list[str] = []
    resumed = run_fleet(traces, SPEC, results=results,
                        on_result=lambda g, done, total: seen.append(g))
    assert resumed.resumed == 2 and seen == ["", "batch", "cache"]
    assert resumed.reports == in_process.reports
    assert resumed.as_dict() == in_process.as_dict()
    # a third run finds everything done; every line in the file is whole
    assert run_fleet(traces, SPEC, results=results).resumed == 4
    assert len(results.read_text().splitlines()) == 5


def test_a_changed_trace_is_swept_again(fleet_files, tmp_path: Path):
    results = tmp_path / "r.jsonl"
    traces = load_fleet(fleet_files[:2])
    run_fleet(traces, SPEC, results=results)
    traces["db"] = synthesize(SynthSpec("steady", duration=3600, step=10, memory_mb=512))
    again = run_fleet(traces, SPEC, results=results)
    assert again.resumed == 1 and again.reports["db"]["trace"]["name"].startswith("steady")


def test_results_of_another_sweep_are_refused(fleet_files, tmp_path: Path):
    results = tmp_path / "r.jsonl"
    traces = load_fleet(fleet_files[:1])
    run_fleet(traces, SPEC, results=results)
    before = results.read_bytes()
    other = FleetSpec(SPEC.grid, parse_knobs(["interval=10"]))
    with pytest.raises(TraceError, match="results are of another sweep"):
        run_fleet(traces, other, results=results)
    assert results.read_bytes() == before


def test_report_dir_holds_a_report_per_guest_and_the_fleet(fleet_files, tmp_path: Path):
    out = tmp_path / "reports"
    out.mkdir()
    result = runner.invoke(app, ["tune", "sweep", *map(str, fleet_files[:2]), "-g", GRID[0],
                                 "--report-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "guests").iterdir()) == [
        "db.html", "db.json", "web.html", "web.json"]
    page = (out / "fleet.html").read_text()
    assert 'href="guests/web.html"' in page and "xentmem guest set db " in page
    fleet = out / "fleet.json"
    assert load_recommendation(fleet, "db") == load_recommendation(out / "guests" / "db.json",
                                                                   "db")


@pytest.mark.parametrize(("text", "expected"), [
    ("local:3", ("local", 3)), ("tcp://10.0.0.5:8786", ("tcp", "tcp://10.0.0.5:8786"))])
def test_parse_cluster(text, expected):
    assert parse_cluster(text) == expected


@pytest.mark.parametrize("text", ["local:0", "local:x", "udp://h:1", "tcp://host", "tcp://:80"])
def test_parse_cluster_rejects(text):
    with pytest.raises(TraceError, match="--cluster"):
        parse_cluster(text)


def test_two_traces_of_one_guest_are_refused(fleet_files, tmp_path: Path):
    twin = save_trace(synthesize(SynthSpec("steady", duration=60)), tmp_path / "web.parquet")
    result = runner.invoke(app, ["tune", "sweep", str(fleet_files[0]), str(twin), "-g",
                                 GRID[0]])
    assert result.exit_code == 2 and "a second trace of guest 'web'" in result.stderr


def test_a_cluster_without_workers_is_given_up(fleet_files, monkeypatch):
    from distributed import LocalCluster

    import xentmem.tuning.fleet as fleet_module

    monkeypatch.setattr(fleet_module, "_POLL", 0.1)
    monkeypatch.setattr(fleet_module, "_NO_WORKERS", 0.3)
    with LocalCluster(n_workers=0, processes=False, protocol="tcp", dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, \
            pytest.raises(TransportError, match=r"no worker for \d+ s; 1 guests not swept"):
        run_fleet(load_fleet(fleet_files[:1]), SPEC, cluster=cluster.scheduler_address)


def test_cli_results_file_resumes(fleet_files, tmp_path: Path):
    results = tmp_path / "r.jsonl"
    args = ["tune", "sweep", *map(str, fleet_files), "-g", GRID[0], "--results", str(results)]
    first = runner.invoke(app, [*args[:3], *args[4:]])  # three of the four guests
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "(3 taken from" in again.stdout and results.name in again.stdout
    assert len(results.read_text().splitlines()) == 5  # the header and four guests
