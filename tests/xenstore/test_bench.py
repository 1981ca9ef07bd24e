"""The load generator, run against both servers (``pytest -m bench tests/xenstore``).

Benchmarks are excluded from the default run. The assertion is the issue's target: our server
reaches at least half of oxenstored's throughput for READ and WRITE with 1 and 8 clients.
"""

from __future__ import annotations

import os

import pytest

from xentmem.xenstore import bench
from xentmem.xenstore.testing import unavailable_reason


@pytest.mark.bench
@pytest.mark.oxenstored
def test_ours_vs_oxenstored_throughput(capsys: pytest.CaptureFixture[str]) -> None:
    if reason := unavailable_reason():
        pytest.skip(f"real oxenstored unavailable: {reason}")
    report = bench.run(1.0, [1, 8], ["READ", "WRITE"], with_oxenstored=True, rounds=3)
    with capsys.disabled():
        for r in report["results"]:
            print(f"\n{r['server']:<11} {r['op']:<6} x{r['clients']}: {r['rps']:.0f} req/s "
                  f"p50 {r['p50_us']:.0f} us p99 {r['p99_us']:.0f} us", end="")  # fmt: skip
        print()
    ratios = report["ratio_ours_over_oxenstored"]
    assert set(ratios) == {"READ x1", "READ x8", "WRITE x1", "WRITE x8"}
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if load > cpus:
        # Both servers and 8 client processes share the CPUs; with other work queued the
        # numbers measure the scheduler, not the servers.
        pytest.skip(f"load average {load:.1f} > {cpus} CPUs: ratios {ratios} not meaningful")
    for case, ratio in ratios.items():
        assert ratio >= 0.5, f"{case}: ours reaches only {ratio:.2f}x of oxenstored"


def test_load_generator_smoke(ours) -> None:
    """The closed-loop client itself, briefly, against our in-process server."""
    bench._prepare(ours.dom0_path, 2)
    lats, elapsed = bench.run_load(ours.dom0_path, "WRITE", 2, 0.1)
    assert len(lats) > 2 and elapsed > 0
    assert ours.dom0.read("/bench/c1") == bench.VALUE


def test_bench_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m xentmem.xenstore.bench`` end to end, tiny, our server only, as JSON."""
    import json

    argv = ["--no-oxenstored", "--seconds", "0.2", "--rounds", "1", "--clients", "1,2", "--json"]
    assert bench.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    cases = {(r["server"], r["op"], r["clients"]) for r in report["results"]}
    assert cases == {("ours", op, n) for op in ("READ", "WRITE") for n in (1, 2)}
    assert all(r["requests"] > 0 and r["p99_us"] >= r["p50_us"] for r in report["results"])
    assert all(r["server_cpu_us"] >= 0 for r in report["results"])
    assert report["ratio_ours_over_oxenstored"] == {}
    with pytest.raises(SystemExit):
        bench.main(["--ops", "DELETE"])
