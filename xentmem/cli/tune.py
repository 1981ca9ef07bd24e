"""``xentmem tune``: memory traces through the self-balloon law — synthesize or collect a
trace, replay it with some knobs, sweep a grid of knobs, write reports, measure the engine."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from xentmem.cli._app import UsageError, check_writable, sub_app
from xentmem.cli._connect import resolve_target
from xentmem.cli._options import Connect, Json, Timeout, XenStored
from xentmem.cli._render import progress, render, say
from xentmem.errors import TraceError
from xentmem.guest.selfballoon import SelfBalloonKnobs

tune_app = sub_app("tune")

TraceArg = Annotated[Path, typer.Argument(help="Trace file (CSV, JSON lines or .parquet; see "
                                          "xentmem.tuning.trace for the format).")]
KnobOpt = Annotated[list[str] | None, typer.Option(
    "--knob", "-k", help="A knob as name=value (repeatable), e.g. downhysteresis=4.")]
RateOpt = Annotated[int, typer.Option(
    "--balloon-rate", min=0, help="Pages per second the balloon can move (0 = immediately).")]
# 256 settings over all seven numeric knobs
BENCH_GRID = ("downhysteresis=1,2,4,8", "uphysteresis=1,2", "reserved_mb=0,64",
              "min_usable_mb=0,128", "interval=5,10", "frontswap_hysteresis=10,20",
              "frontswap_inertia=1,3")
# the score columns a terminal has room for (--json and the HTML report carry them all)
_BRIEF = ("mean_held_mib", "saved_pct", "shortfall_page_s", "peak_shortfall_mib",
          "target_changes")
HtmlOpt = Annotated[Path | None, typer.Option("--html", help="Also write an HTML report here.")]


@contextmanager
def _usage() -> Iterator[None]:
    """Bad traces, knobs and grids are the user's input: exit 2 with the parser's message."""
    try:
        yield
    except TraceError as exc:
        raise UsageError(str(exc)) from None


def _save(trace: Any, path: Path) -> None:
    from xentmem.tuning import save_trace

    try:
        save_trace(trace, path)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write: {exc.strerror or exc}") from None


def _load(path: Path) -> Any:
    from xentmem.tuning import load_trace

    with _usage():
        return load_trace(path)


def _html(path: Path | None, trace: Any, **kwargs: Any) -> None:
    if path is not None:
        from xentmem.tuning.report import write_html  # matplotlib: only when asked for

        typer.echo(f"wrote {write_html(path, trace, **kwargs)}", err=True)


@tune_app.command("synth")
def synth_cmd(
    kind: Annotated[str, typer.Argument(help="steady | ramp | bursty | diurnal")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Trace file to write (.csv, .jsonl or "
                                      ".parquet).")],
    duration: Annotated[int, typer.Option(help="Seconds.")] = 3600,
    step: Annotated[int, typer.Option(help="Seconds between samples.")] = 5,
    memory_mb: Annotated[int, typer.Option("--memory-mb", help="Guest memory (max_pfn).")] = 1024,
    base: Annotated[float, typer.Option(help="Usual Committed_AS, fraction of RAM.")] = 0.3,
    peak: Annotated[float, typer.Option(help="Highest Committed_AS, fraction of RAM.")] = 0.8,
    noise: Annotated[float, typer.Option(help="Relative jitter per sample.")] = 0.02,
    bursts: Annotated[float, typer.Option(help="Bursts per hour (bursty).")] = 6.0,
    burst: Annotated[int, typer.Option(help="Mean burst length, s (bursty).")] = 120,
    period: Annotated[int | None, typer.Option(
        help="Diurnal period, s (default: a day, or the duration if shorter).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    as_json: Json = False,
) -> None:
    """Write a synthetic trace."""
    from xentmem.tuning import SynthSpec, synthesize

    check_writable(out, "--out")
    with _usage():
        trace = synthesize(SynthSpec(kind, duration, step, memory_mb, base, peak, noise, bursts,
                                     burst, period, seed))
    _save(trace, out)
    render({**trace.summary(), "file": str(out)}, as_json=as_json)


@tune_app.command("collect")
def collect_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Trace file to write.")],
    workload: Annotated[list[str] | None, typer.Option(
        "--workload", "-w", help="kind[:field=value,...] (repeatable), e.g. "
        "anon:mb=96,grow=20,shrink=10 or burst:start=30,duration=10,mb=64: run a new guest "
        "model with these workloads.")] = None,
    connect: Connect = None,
    domid: Annotated[int | None, typer.Option(
        "--domid", min=1, help="Instead of -w: sample living guest DOMID of the emulator "
        "daemon that -c names (xentmem emulator up), as it runs.")] = None,
    duration: Annotated[float, typer.Option(help="Model seconds.")] = 60.0,
    step: Annotated[float, typer.Option(help="Seconds between samples.")] = 1.0,
    memory_mb: Annotated[int, typer.Option("--memory-mb")] = 256,
    swap_mb: Annotated[int, typer.Option("--swap-mb")] = 256,
    tmem_mb: Annotated[int, typer.Option("--tmem-mb", help="Domain max above memory.")] = 128,
    backend: Annotated[str, typer.Option(help="tmem | none")] = "tmem",
    as_json: Json = False,
) -> None:
    """Record a trace: run guest-model workloads on the emulator (self-ballooning off), or
    sample a living guest of the emulator daemon (``-c emulator:DIR --domid N``)."""
    from xentmem.tuning import CollectSpec, collect_trace, parse_workload

    check_writable(out, "--out")
    if (domid is None) == (not workload):
        raise UsageError("give either --workload (a new guest model) or --domid (a living "
                         "guest of the daemon -c names)")
    spec = None
    if workload:
        with _usage():
            spec = CollectSpec(tuple(parse_workload(w, seed=i) for i, w in enumerate(workload)),
                               duration, step, memory_mb, swap_mb, tmem_mb, backend)
    with progress("collecting (model seconds)", duration) as tick:
        if spec is not None:
            trace = collect_trace(spec, name=out.stem, on_tick=tick)
        else:
            trace = _collect_living(connect, int(domid), duration, step, out.stem, tick)  # type: ignore[arg-type]
    _save(trace, out)
    render({**trace.summary(), "frontswap_peak_mib": round(int(trace.frontswap.max()) / 256, 1),
            "file": str(out)}, as_json=as_json)


def _collect_living(connect: str | None, domid: int, duration: float, step: float, name: str,
                    on_tick: Any) -> Any:
    from xentmem.emulator.daemon import control
    from xentmem.tuning.collect import record_living

    target = resolve_target(connect)
    if target.state_dir is None:
        raise UsageError(f"{target.uri or 'this host'}: --domid samples a living guest of the "
                         "emulator daemon; name it with -c emulator:DIR")
    directory = Path(target.state_dir)
    speed = float(control(directory, "status")["clock"]["speed"])
    with _usage():
        return record_living(lambda: control(directory, "meminfo", domid=domid), duration,
                             step, speed=speed, name=name, on_tick=on_tick)


@tune_app.command("record")
def record_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Trace file to write.")],
    duration: Annotated[float, typer.Option(min=0.001, help="Seconds to record.")] = 600.0,
    step: Annotated[float, typer.Option(min=0.001, help="Seconds between samples.")] = 5.0,
    root: Annotated[Path, typer.Option(help="Read proc/ and sys/ under this root.")]
    = Path("/"),
    as_json: Json = False,
) -> None:
    """Record this Linux system's memory (/proc/meminfo, /proc/zoneinfo, Xen balloon sysfs);
    Ctrl-C stops early and writes what was recorded (exit 130)."""
    from xentmem.tuning.procfs import RecordInterrupted, read_sample, record_procfs

    check_writable(out, "--out")
    with _usage():
        read_sample(root)  # an unreadable /proc fails now, not after the first step
    try:
        with _usage(), progress("recording (seconds)", duration) as tick:
            trace = record_procfs(duration, step, root=root, name=out.stem, on_sample=tick)
    except RecordInterrupted as stopped:
        if stopped.trace is None:
            raise KeyboardInterrupt from None  # under two samples: nothing to keep
        _save(stopped.trace, out)
        render({**stopped.trace.summary(), "file": str(out), "interrupted": True},
               as_json=as_json)
        typer.echo(f"interrupted: wrote the {len(stopped.trace)} samples taken to "
                   f"{out}", err=True)
        raise typer.Exit(130) from None
    _save(trace, out)
    render({**trace.summary(), "file": str(out), "interrupted": False}, as_json=as_json)


@tune_app.command("show")
def show_cmd(trace_file: TraceArg, as_json: Json = False) -> None:
    """Check a trace file and summarise it."""
    render(_load(trace_file).summary(), as_json=as_json)


@tune_app.command("replay")
def replay_cmd(
    trace_file: TraceArg,
    knob: KnobOpt = None,
    balloon_rate: RateOpt = 0,
    series: Annotated[bool, typer.Option("--series", help="Also print every run.")] = False,
    html: HtmlOpt = None,
    as_json: Json = False,
) -> None:
    """Replay a trace through the law with the given knobs (kernel defaults otherwise)."""
    from xentmem.tuning import parse_knobs, replay
    from xentmem.tuning.sweep import knob_values

    check_writable(html, "--html")
    trace = _load(trace_file)
    with _usage():
        knobs = parse_knobs(knob or [])
    with progress("replaying"):
        result = replay(trace, knobs, balloon_rate=balloon_rate)
    values = knob_values(knobs)
    record = {"trace": trace.name, "balloon_rate": balloon_rate, **result.scores.as_row()}
    if as_json:
        render({"knobs": values, **record, "exact": result.scores.as_dict(),
                **({"series": result.rows()} if series else {})}, as_json=True)
    else:
        default = knob_values(SelfBalloonKnobs())
        changed = ", ".join(f"{k}={v}" for k, v in values.items() if default[k] != v)
        render({"knobs": changed or "kernel defaults", **record}, as_json=False,
               title=f"replay of {trace.name}")
        if series:
            render(result.rows(), as_json=False, title="runs (pages)",
                   columns=["time_s", "committed", "totalram", "goal", "target", "frontswap",
                            "shortfall", "shrink_to"])
    _html(html, trace, knobs=knobs, balloon_rate=balloon_rate)


@tune_app.command("sweep")
def sweep_cmd(
    trace_files: Annotated[list[Path], typer.Argument(
        help="Trace file(s) (CSV, JSON lines or .parquet); several: a fleet, one guest per "
        "file (its name without the suffix).")],
    grid: Annotated[list[str], typer.Option(
        "--grid", "-g", help="A knob and its values, name=v1,v2,... (repeatable).")],
    knob: KnobOpt = None,
    balloon_rate: RateOpt = 0,
    max_shortfall: Annotated[float | None, typer.Option(
        "--max-shortfall", min=0, help="Shortfall budget in page-seconds (default: the "
        "kernel defaults' shortfall on this trace).")] = None,
    show_all: Annotated[bool, typer.Option("--all", help="Print every setting, not only the "
                                           "Pareto front.")] = False,
    html: HtmlOpt = None,
    cluster: Annotated[str | None, typer.Option(
        "--cluster", help="Run the guests' sweeps on Dask: tcp://HOST:PORT (a running "
        "scheduler) or local[:N] (start N worker processes here).")] = None,
    results: Annotated[Path | None, typer.Option(
        "--results", help="Fleet: keep each finished guest in this file and skip those it "
        "already holds (resume an interrupted sweep).")] = None,
    report_dir: Annotated[Path | None, typer.Option(
        "--report-dir", help="Fleet: write a report per guest (guests/GUEST.json and .html) "
        "and the fleet's (fleet.json, fleet.html) into this existing directory.")] = None,
    as_json: Json = False,
) -> None:
    """Replay every combination of a knob grid; print the Pareto front and a recommendation
    (several traces, --cluster, --results or --report-dir: a fleet, one report per guest)."""
    from xentmem.tuning import parse_grid, parse_knobs, sweep

    check_writable(html, "--html")
    with _usage():
        base = parse_knobs(knob or [])
        parsed = parse_grid(grid)
    if len(trace_files) > 1 or cluster or results or report_dir:
        _sweep_fleet(trace_files, parsed, base, balloon_rate, max_shortfall, cluster, results,
                     report_dir, html, as_json)
        return
    trace = _load(trace_files[0])
    with _usage(), progress("sweeping the grid"):
        result = sweep(trace, parsed, base=base, balloon_rate=balloon_rate,
                       max_shortfall_page_s=max_shortfall)
    if as_json:
        render(result.as_dict(all_rows=True), as_json=True)
    else:
        rows = [result.row(j) for j in (range(len(result.knobs)) if show_all else result.pareto)]
        render(rows, as_json=False, columns=["index", *result.grid, *_BRIEF, "recommended"],
               title=f"{len(result.knobs)} settings on {trace.name}: "
               + ("all" if show_all else "Pareto front (memory held vs shortfall)"))
        picked = result.scores(result.recommended).as_row()
        render([{"setting": f"recommended (#{result.recommended})", **picked},
                {"setting": "kernel defaults", **result.defaults.as_row()}],
               as_json=False, columns=["setting", *_BRIEF])
        say(result.rationale)
    _html(html, trace, report=result.as_dict(all_rows=True))


def _sweep_fleet(paths: list[Path], grid: dict[str, tuple[int, ...]], base: SelfBalloonKnobs,
                 balloon_rate: int, max_shortfall: float | None, cluster: str | None,
                 results: Path | None, report_dir: Path | None, html: Path | None,
                 as_json: bool) -> None:
    from xentmem.tuning.fleet import (
        FleetSpec,
        fleet_rows,
        load_fleet,
        parse_cluster,
        run_fleet,
        write_reports,
    )

    spec = FleetSpec(grid, base, balloon_rate, max_shortfall)
    with _usage():
        if cluster is not None:
            parse_cluster(cluster)
        traces = load_fleet(paths)
    if report_dir is not None and not report_dir.is_dir():
        raise UsageError(f"--report-dir {report_dir}: not a directory")
    with progress(f"sweeping {len(traces)} guests" + (f" on {cluster}" if cluster else ""),
                  total=len(traces)) as update:
        try:
            with _usage():
                fleet = run_fleet(traces, spec, cluster=cluster, results=results,
                                  on_result=lambda _g, done, _n: update(done))
        except KeyboardInterrupt:
            kept = f"; finished guests are in {results}, run again to resume" if results else ""
            typer.echo(f"interrupted{kept}", err=True)
            raise typer.Exit(130) from None
    if report_dir is not None or html is not None:
        for path in write_reports(fleet, traces, report_dir, fleet_html=html):
            typer.echo(f"wrote {path}", err=True)
    if as_json:
        render(fleet.as_dict(), as_json=True)
        return
    summary = fleet.as_dict()
    render(fleet_rows(summary), as_json=False,
           title=f"{len(traces)} guests, {summary['fleet']['combinations']} settings each"
           + (f" ({fleet.resumed} taken from {results})" if fleet.resumed else ""))
    say(fleet.describe())


@tune_app.command("bench")
def bench_cmd(
    trace_file: Annotated[Path | None, typer.Argument(
        help="Trace file (default: a synthetic bursty 6 h sampled every 10 s).")] = None,
    grid: Annotated[list[str] | None, typer.Option("--grid", "-g", help="name=v1,v2,...")]
    = None,
    repeat: Annotated[int, typer.Option(min=1, help="Vectorised passes (best kept).")] = 3,
    as_json: Json = False,
) -> None:
    """Time the vectorised sweep against the scalar reference on the same grid."""
    from xentmem.tuning import SynthSpec, bench, expand_grid, parse_grid, synthesize

    with _usage():
        trace = (_load(trace_file) if trace_file is not None else
                 synthesize(SynthSpec("bursty", duration=21600, step=10, seed=1)))
        knobs = expand_grid(parse_grid(grid or list(BENCH_GRID)))
    with progress(f"timing {len(knobs)} settings"):
        result = bench(trace, knobs, repeat=repeat)
    render(result, as_json=as_json, title="vectorised vs scalar replay")


@tune_app.command("apply")
def apply_cmd(
    report: Annotated[Path, typer.Argument(help="A report written by xentmem tune sweep "
                                           "--json (or a fleet report naming DOM).")],
    dom: Annotated[str, typer.Argument(help="Domain name or id.", show_default=False)],
    wait: Annotated[float, typer.Option(min=0, max=600, help="Seconds to wait for the guest "
                                        "agent's answer.")] = 5.0,
    connect: Connect = None,
    xenstored: XenStored = None,
    timeout: Timeout = 5.0,
    as_json: Json = False,
) -> None:
    """Apply a report's recommendation to a guest: exactly its ``xentmem guest set DOM ...``
    line (exit 1 if the guest refused any setting)."""
    from xentmem.cli.guest import set_
    from xentmem.tuning.apply import load_recommendation

    with _usage():
        settings = load_recommendation(report, dom)
    set_(dom, **settings, wait=wait, as_json=as_json, connect=connect, xenstored=xenstored,
         libvirt_uri=None, timeout=timeout)
