"""``xentmem bench ...``: measurements of our own data paths (not timed tests)."""

from __future__ import annotations

from typing import Annotated

import typer

from xentmem.abi import XenVersion
from xentmem.cli._app import UsageError, sub_app
from xentmem.cli._options import Json
from xentmem.cli._render import progress, render

bench_app = sub_app("bench")


@bench_app.command("tmem")
def tmem(
    pages: Annotated[int, typer.Option("--pages", "-n", help="Pages per run (>= 100).")] = 20000,
    xen_version: Annotated[str, typer.Option("--xen-version", help="Imitated Xen.")] = "4.12",
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Timed rounds (best kept).")] = 9,
    as_json: Json = False,
) -> None:
    """PUT then GET of 4 KiB pages through Tmem client -> struct -> entry -> pool, against a
    plain dict in the same process: pages/s, ratio and GB/s per scenario."""
    if pages < 100:
        raise UsageError(f"--pages must be at least 100, not {pages}")
    try:
        XenVersion.parse(xen_version)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    from xentmem.emulator import bench_tmem

    with progress(f"bench tmem: {rounds} round(s) of {pages} pages"):
        result = bench_tmem(pages, xen_version=xen_version, rounds=rounds)
    if as_json:
        render(result.as_dict(), as_json=True)
        return
    render([row.as_dict() for row in result.rows], as_json=False,
           title=f"tmem data path, {pages} pages of 4 KiB (resident memory per stored page: "
           f"{result.resident_bytes_per_page:.0f} bytes, "
           f"{result.resident_bytes_per_compressed_page:.0f} compressed; LZO1X-1 alone: "
           f"{result.lzo_compress_pages_s:,.0f} compressions/s, "
           f"{result.lzo_decompress_pages_s:,.0f} decompressions/s)")


@bench_app.command("living")
def living(
    guests: Annotated[list[int] | None, typer.Option(
        "--guests", "-g", min=1, max=64, help="Guest counts to measure (repeat; default 3 and "
        "20).")] = None,
    seconds: Annotated[float, typer.Option("--seconds", min=1, help="Measured window.")] = 20.0,
    warmup: Annotated[float, typer.Option("--warmup", min=0, help="Seconds before it.")] = 10.0,
    as_json: Json = False,
) -> None:
    """A living emulated host per guest count: the daemon's CPU share (total and per guest),
    tmem hypercalls/s, clock lag, and `status --json` wall time beside `virsh list`."""
    from xentmem.emulator.bench_living import bench_living

    counts = tuple(guests or (3, 20))
    with progress(f"bench living: {len(counts)} host(s), {warmup + seconds:g} s or more each"):
        rows = [r.as_dict() for r in bench_living(counts, seconds=seconds, warmup=warmup)]
    render(rows, as_json=as_json, title="living emulated host (default workloads, speed 1)",
           key="rows")


@bench_app.command("cli")
def cli_cmd(
    guests: Annotated[int, typer.Option("--guests", "-g", min=1, max=64,
                                        help="Living guests of the host status reads.")] = 50,
    runs: Annotated[int, typer.Option("--runs", min=1, max=99,
                                      help="Runs of each command (the median is kept).")] = 9,
    as_json: Json = False,
) -> None:
    """This CLI's start-up as a person meets it: `xentmem --help` and `xentmem status --json`
    on a living emulated host, beside `virsh -c test:///default list` in the same run."""
    from xentmem.emulator.bench_living import bench_startup

    with progress(f"bench cli: {runs} run(s) of each, {guests} guests"):
        rows = [r.as_dict() for r in bench_startup(guests, runs=runs)]
    render(rows, as_json=as_json, key="rows", title="whole-process wall time, median "
           f"of {runs} (ratio: to virsh list; goal: issue 16)")


@bench_app.command("daemon")
def daemon_cmd(
    mib: Annotated[int, typer.Option("--mib", min=16, max=8192,
                                     help="Persistent pages to hold, MiB.")] = 400,
    as_json: Json = False,
) -> None:
    """The emulator daemon holding --mib of persistent pages: the longest wait another client
    sees while a snapshot is written (foreground, and forked to the background), and the
    resident memory one hostile guest can add through its own socket."""
    from xentmem.emulator.bench_daemon import bench_daemon

    with progress(f"bench daemon: {mib} MiB"):
        result = bench_daemon(mib).as_dict()
    render(result, as_json=as_json, title="emulator daemon: snapshot pauses, hostile guest")


@bench_app.command("ramster")
def ramster_cmd(
    pages: Annotated[int, typer.Option("--pages", "-n", min=100, max=1_000_000,
                                       help="Pages per data-path run.")] = 20000,
    seconds: Annotated[float, typer.Option("--seconds", min=1, max=3600,
                                           help="Model seconds of the swap-out workload.")]
    = 20.0,
    as_json: Json = False,
) -> None:
    """RAMster over loopback TCP, each figure beside its same-process baseline: pages/s
    remotified and repatriated, GET latency of remote vs local pages (faithful and durable
    mode), and a memory-heavy guest's swap-outs with and without a memory server."""
    from xentmem.emulator.bench_ramster import bench_ramster

    with progress(f"bench ramster: {pages} pages, {seconds:g} model s"):
        rows = [f.as_dict() for f in bench_ramster(pages, seconds)]
    render(rows, as_json=as_json, key="rows", title="RAMster (value, and its baseline in the "
           "same process)")
