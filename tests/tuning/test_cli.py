"""``xentmem tune ...`` through typer's CliRunner: exit codes, JSON parsed, HTML written with
its plots, bad input exits 2 with one line naming the problem."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xentmem.cli import app
from xentmem.tuning import load_trace

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tune") / "bursty.csv"
    result = invoke("tune", "synth", "bursty", "--out", path, "--duration", "1800",
                    "--memory-mb", "512", "--seed", "5", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["samples"] == 361 and summary["file"] == str(path)
    return path


def test_synth_writes_a_loadable_trace(trace_file: Path):
    assert len(load_trace(trace_file)) == 361


def test_show(trace_file: Path):
    result = invoke("tune", "show", trace_file, "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["name"] == "bursty.csv"


def test_replay_json_with_series(trace_file: Path):
    result = invoke("tune", "replay", trace_file, "-k", "downhysteresis=2", "-k",
                    "reserved_mb=16", "--series", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["knobs"]["downhysteresis"] == 2 and out["knobs"]["reserved_mb"] == 16
    assert out["runs"] == 360 == len(out["series"])
    assert out["exact"]["held_page_ms"] / 1800_000 / 256 == pytest.approx(out["mean_held_mib"],
                                                                          abs=0.01)
    assert out["series"][0]["time_s"] == 5.0


def test_replay_table(trace_file: Path):
    result = invoke("tune", "replay", trace_file, "-k", "interval=10")
    assert result.exit_code == 0
    assert "interval=10" in result.stdout and "mean_held_mib" in result.stdout


def _pngs(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)",
                                                    html)]


def test_sweep_json_and_html(trace_file: Path, tmp_path: Path):
    out = tmp_path / "report.html"
    result = invoke("tune", "sweep", trace_file, "-g", "downhysteresis=1,4,8", "-g",
                    "reserved_mb=0,32", "-g", "interval=5,10", "--html", out, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["combinations"] == 12 == len(data["results"])
    assert data["grid"] == {"downhysteresis": [1, 4, 8], "reserved_mb": [0, 32],
                            "interval": [5, 10]}
    rec = data["recommended"]
    assert data["results"][rec["index"]]["recommended"] is True
    assert any(row["index"] == rec["index"] for row in data["pareto"])
    assert rec["knobs"]["downhysteresis"] in (1, 4, 8) and rec["rationale"]
    html = out.read_text()
    pngs = _pngs(html)
    assert len(pngs) == 3 and all(p.startswith(PNG) for p in pngs)  # trace, replay, Pareto
    assert "Pareto front" in html and rec["rationale"].split(":")[0] in html


def test_sweep_table(trace_file: Path):
    result = invoke("tune", "sweep", trace_file, "-g", "downhysteresis=2,8", "--all")
    assert result.exit_code == 0
    assert "kernel defaults" in result.stdout and "settings on bursty.csv" in result.stdout


def test_replay_html_has_two_plots(trace_file: Path, tmp_path: Path):
    out = tmp_path / "replay.html"
    result = invoke("tune", "replay", trace_file, "--html", out)
    assert result.exit_code == 0
    assert len(_pngs(out.read_text())) == 2


@pytest.mark.parametrize(("args", "message"), [
    (("replay", "{trace}", "-k", "downhysteresis=0"),
     "downhysteresis: must be an integer in [1, 10000], not 0"),
    # what the guest's kernel would refuse (0 for a numeric knob) is no recommendation
    (("sweep", "{trace}", "-g", "frontswap-inertia=0,3"), "frontswap_inertia: must be an"),
    (("replay", "{trace}", "-k", "hysteresis=3"), "unknown knob 'hysteresis'"),
    (("replay", "{trace}", "-k", "interval"), "expected name=value"),
    (("sweep", "{trace}", "-g", "selfballooning=0,2"), "must be 0 or 1"),
    (("sweep", "{trace}", "-g", "interval=5", "-g", "interval=10"), "given twice"),
    (("replay", "{bad}"), "bad.csv:2: committed"),
    (("show", "{missing}"), "cannot read trace"),
    (("synth", "spiky", "--out", "{out}"), "unknown trace kind 'spiky'"),
    (("collect", "--out", "{out}", "-w", "heap"), "unknown workload kind"),
])
def test_bad_input_exits_2(trace_file: Path, tmp_path: Path, args, message):
    bad = tmp_path / "bad.csv"
    bad.write_text("time,committed,reserve,max_pfn,totalram\n0,-1,1,100,50\n")
    values = {"trace": trace_file, "bad": bad, "missing": tmp_path / "none.csv",
              "out": tmp_path / "x.csv"}
    result = invoke("tune", *(a.format(**values) for a in args))
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.csv").exists()


def test_collect(tmp_path: Path):
    out = tmp_path / "c.jsonl"
    result = invoke("tune", "collect", "--out", out, "-w", "anon:mb=8,grow=2,rate=50",
                    "--duration", "4", "--memory-mb", "32", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["samples"] == 5
    assert len(load_trace(out)) == 5


def test_bench_reports_identical_results(trace_file: Path):
    result = invoke("tune", "bench", trace_file, "-g", "downhysteresis=2,8", "-g",
                    "interval=5,10", "--repeat", "1", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["settings"] == 4 and data["identical"] is True
    assert data["setting_runs"] == 2 * 360 + 2 * 180


EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "traces"


@pytest.mark.parametrize("name", ["ref-example.csv", "bursty-2h.csv", "diurnal-day.csv",
                                  "collected-web.jsonl"])
def test_example_traces_load(name: str):
    assert len(load_trace(EXAMPLES / name)) >= 5


def test_reference_example_file_replays_to_the_hand_numbers():
    # ref §4.4: 240000 -> 223000 -> 208125 -> 195110 -> 183722 (each run: excess // 8)
    result = invoke("tune", "replay", EXAMPLES / "ref-example.csv", "--series", "--json")
    assert result.exit_code == 0
    series = json.loads(result.stdout)["series"]
    assert [row["target"] for row in series] == [223000, 208125, 195110, 183722]
    assert {row["floor"] for row in series} == {36619}


def test_record_from_a_root(tmp_path: Path):
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "proc/meminfo").write_text("MemTotal: 1000000 kB\nCommitted_AS: 400000 kB\n")
    zoneinfo = Path(__file__).parent / "fixtures" / "zoneinfo-3.10.txt"
    (root / "proc/zoneinfo").write_text(zoneinfo.read_text())
    out = tmp_path / "rec.csv"
    result = invoke("tune", "record", "--out", out, "--duration", "0.02", "--step", "0.01",
                    "--root", root, "--json")
    assert result.exit_code == 0, result.output
    tr = load_trace(out)
    assert len(tr) == 3 and set(tr.committed.tolist()) == {100000}
    result = invoke("tune", "record", "--out", out, "--duration", "0.02", "--step", "0.01",
                    "--root", tmp_path / "none")
    assert result.exit_code == 2 and "cannot read" in result.stderr
