"""Fleet sweeps: one knob grid over many guests' traces, in this process or on a Dask cluster,
resumable from a results file; a report per guest and one for the fleet.

Each guest's sweep is independent (the guest is its trace file's stem), so the work is one task
per guest: ``guest_report(trace, spec, guest)`` gives the JSON report ``xentmem tune sweep
--json`` prints for that trace. The traces are read here and shipped to the workers, so a remote
cluster needs no access to the files. Results are the same wherever they run (the sweep is
exact integer arithmetic).

The results file is JSON lines: a header naming the sweep (grid, base knobs, balloon rate,
budget), then one line per finished guest with its trace's digest. Each line is flushed and
synced as its guest finishes; a run that stops (Ctrl-C, a lost cluster, a crash) keeps every
finished guest, and the next run with the same file skips them (a torn last line is dropped; a
guest whose trace changed is swept again).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xentmem.errors import TraceError, TransportError
from xentmem.guest.selfballoon import SelfBalloonKnobs
from xentmem.tuning.knobs import knob_values
from xentmem.tuning.trace import COLUMNS, Trace, load_trace

__all__ = ["FleetResult", "FleetSpec", "fleet_rows", "guest_name", "guest_report",
           "load_fleet", "parse_cluster", "run_fleet", "trace_digest"]

RESULTS_FORMAT = "xentmem fleet sweep results v1"
_CONNECT_TIMEOUT = 10  # s to reach an existing scheduler
_LOCAL_START_TIMEOUT = 60  # s for a local cluster's workers to come up
_POLL = 5.0  # s between looks at a cluster that finishes nothing
_NO_WORKERS = 120.0  # s a cluster may have no worker before the sweep gives up


@dataclass(frozen=True)
class FleetSpec:
    """What every guest is swept with."""

    grid: dict[str, tuple[int, ...]]
    base: SelfBalloonKnobs = field(default_factory=SelfBalloonKnobs)
    balloon_rate: int = 0
    max_shortfall_page_s: float | None = None

    def header(self) -> dict[str, Any]:
        """The results file's first line: a resumed run must be the same sweep."""
        return {"format": RESULTS_FORMAT, "grid": {k: list(v) for k, v in self.grid.items()},
                "base": knob_values(self.base), "balloon_rate": self.balloon_rate,
                "max_shortfall_page_s": self.max_shortfall_page_s}


def guest_name(path: str | Path) -> str:
    """The guest a trace file is of: its name without the suffix (``web.parquet`` -> web)."""
    return Path(path).stem


def guest_report(trace: Trace, spec: FleetSpec, guest: str) -> dict[str, Any]:
    """Sweep one guest's trace: its JSON report (runs on a worker too)."""
    from xentmem.tuning.sweep import sweep  # numpy and numba, in the worker

    result = sweep(trace, spec.grid, base=spec.base, balloon_rate=spec.balloon_rate,
                   max_shortfall_page_s=spec.max_shortfall_page_s, guest=guest)
    return result.as_dict(all_rows=True)


def trace_digest(trace: Trace) -> str:
    """What a guest's result was computed from (its samples, not the file's bytes)."""
    h = hashlib.sha256()
    for col in ("time_ms", *COLUMNS[1:]):
        h.update(getattr(trace, col).tobytes())
    return h.hexdigest()


# -- the results file ----------------------------------------------------------------------------

def _read_results(path: Path, spec: FleetSpec) -> dict[str, tuple[str, dict[str, Any]]]:
    """guest -> (digest, report) of the results file (the last line for a guest wins)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise TraceError(f"{path}: cannot read results: {exc.strerror or exc}") from None
    lines = raw.split(b"\n")
    if lines[-1]:  # no newline at the end: the last write was torn by an interruption
        _truncate_torn(path, len(raw) - len(lines[-1]))
    lines = [ln for ln in lines[:-1] if ln.strip()]
    if not lines:
        return {}
    try:
        head = json.loads(lines[0])
    except json.JSONDecodeError:
        head = None
    if not isinstance(head, dict) or head.get("format") != RESULTS_FORMAT:
        raise TraceError(f"{path}: not a fleet sweep results file")
    if head != spec.header():
        raise TraceError(f"{path}: the results are of another sweep (grid, knobs, balloon rate "
                         "or budget differ); use another results file")
    done: dict[str, tuple[str, dict[str, Any]]] = {}
    for n, line in enumerate(lines[1:], 2):
        try:
            rec = json.loads(line)
            done[str(rec["guest"])] = (str(rec["digest"]), dict(rec["report"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise TraceError(f"{path}:{n}: not a result line") from None
    return done


def _truncate_torn(path: Path, keep: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(keep)
        os.fsync(f.fileno())


class _Results:
    """Appends result lines, each flushed and synced before the guest counts as done."""

    def __init__(self, path: Path | None, spec: FleetSpec, fresh: bool) -> None:
        self._file = None
        if path is not None:
            try:
                self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (see close())
            except OSError as exc:
                raise TraceError(f"{path}: cannot write results: {exc.strerror or exc}"
                                 ) from None
            if fresh:
                self._write(spec.header())

    def _write(self, record: Mapping[str, Any]) -> None:
        assert self._file is not None
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def add(self, guest: str, digest: str, report: dict[str, Any]) -> None:
        if self._file is not None:
            self._write({"guest": guest, "digest": digest, "report": report})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


# -- where the work runs ----------------------------------------------------------------------

def parse_cluster(text: str) -> tuple[str, int | str]:
    """``local`` / ``local:N`` (start N worker processes here; default: one per CPU) or
    ``tcp://HOST:PORT`` (an existing Dask scheduler): ("local", N) or ("tcp", address)."""
    if text == "local" or text.startswith("local:"):
        count = text.partition(":")[2] or str(os.cpu_count() or 1)
        if not (count.isascii() and count.isdigit()) or not 1 <= int(count) <= 256:
            raise TraceError(f"--cluster {text}: local:N needs N workers, 1..256")
        return "local", int(count)
    if text.startswith("tcp://") and text[6:].rpartition(":")[2].isdigit() \
            and text[6:].rpartition(":")[0]:
        return "tcp", text
    raise TraceError(f"--cluster {text!r}: expected local, local:N or tcp://HOST:PORT")


@contextlib.contextmanager
def _client(cluster: str) -> Iterator[Any]:
    """A Dask client on ``cluster`` (see :func:`parse_cluster`); a local cluster ends with it."""
    kind, where = parse_cluster(cluster)
    from distributed import Client, LocalCluster  # dask: only for cluster runs

    if kind == "local":
        local = LocalCluster(n_workers=int(where), threads_per_worker=1, processes=True,
                             dashboard_address=None, silence_logs=logging.ERROR,
                             timeout=_LOCAL_START_TIMEOUT)
        try:
            with Client(local, timeout=_CONNECT_TIMEOUT) as client:
                yield client
        finally:
            local.close()
        return
    try:
        client = Client(str(where), timeout=_CONNECT_TIMEOUT)
    except OSError as exc:  # also TimeoutError
        raise TransportError(f"--cluster {where}: cannot reach the Dask scheduler: {exc}"
                             ) from None
    with client:
        yield client


def _completed(client: Any, futures: Mapping[Any, str]) -> Iterator[Any]:
    """``futures`` as they finish; ``TransportError`` once the cluster has had no worker for
    ``_NO_WORKERS`` s (a sweep can take long, but not on nobody)."""
    from distributed import wait

    pending, idle = set(futures), 0.0
    while pending:
        try:
            done, pending = wait(pending, timeout=_POLL, return_when="FIRST_COMPLETED")
        except TimeoutError:  # nothing finished in this slice: is anyone working?
            idle = 0.0 if client.scheduler_info()["workers"] else idle + _POLL
            if idle >= _NO_WORKERS:
                raise TransportError(f"the Dask cluster has had no worker for {idle:.0f} s; "
                                     f"{len(pending)} guests not swept") from None
            continue
        yield from done


# -- the fleet ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class FleetResult:
    """Every guest's report (in the order the traces were given), and how many were taken
    from the results file rather than swept in this run."""

    spec: FleetSpec
    reports: dict[str, dict[str, Any]]
    resumed: int

    def as_dict(self) -> dict[str, Any]:
        """The fleet report: totals, and per guest its recommendation and the defaults'
        scores (``xentmem tune apply FLEET.json DOM`` applies a guest's)."""
        guests = {g: {"trace": r["trace"], "combinations": r["combinations"],
                      "recommended": r["recommended"], "defaults": r["defaults"]}
                  for g, r in self.reports.items()}

        def total(which: str, score: str) -> float:
            return round(sum(
                (r["recommended"]["scores"] if which == "recommended" else r["defaults"])[score]
                for r in self.reports.values()), 2)

        held = {w: total(w, "mean_held_mib") for w in ("recommended", "defaults")}
        short = {w: total(w, "mean_shortfall_mib") for w in ("recommended", "defaults")}
        # the same grid for every guest: any guest's count is the fleet's
        combinations = next(iter(guests.values()))["combinations"] if guests else 0
        default = knob_values(SelfBalloonKnobs())
        return {"fleet": {"guests": len(self.reports), "spec": self.spec.header(),
                          "combinations": combinations,
                          "mean_held_mib": held, "mean_shortfall_mib": short,
                          "saved_vs_defaults_mib": round(held["defaults"] - held["recommended"],
                                                         2),
                          "tuned": sum(1 for r in self.reports.values()
                                       if r["recommended"]["knobs"] != default)},
                "guests": guests}

    def describe(self) -> str:
        """The fleet's outcome in a sentence, with the numbers."""
        f = self.as_dict()["fleet"]
        held, short = f["mean_held_mib"], f["mean_shortfall_mib"]
        return (f"{f['tuned']} of {f['guests']} guests tuned: together they hold "
                f"{held['recommended']:.1f} MiB on average against {held['defaults']:.1f} MiB "
                f"with the kernel defaults ({f['saved_vs_defaults_mib']:.1f} MiB less), and are "
                f"{short['recommended']:.2f} MiB short on average against "
                f"{short['defaults']:.2f} MiB. Apply a guest's with xentmem tune apply "
                "REPORT.json GUEST (fleet.json holds every guest's).")


def load_fleet(paths: Sequence[str | Path]) -> dict[str, Trace]:
    """The traces by guest (``TraceError`` for a bad trace or two traces of one guest)."""
    traces: dict[str, Trace] = {}
    for path in paths:
        guest = guest_name(path)
        if guest in traces:
            raise TraceError(f"{path}: a second trace of guest {guest!r}")
        traces[guest] = load_trace(path)
    return traces


def run_fleet(traces: Mapping[str, Trace], spec: FleetSpec, *, cluster: str | None = None,
              results: str | Path | None = None,
              on_result: Callable[[str, int, int], None] | None = None) -> FleetResult:
    """Sweep every guest of ``traces`` with ``spec``: here, or on ``cluster``; finished guests
    go to (and are taken from) ``results``. ``on_result(guest, done, total)`` follows
    progress (resumed guests count as done from the start)."""
    path = Path(results) if results is not None else None
    stored = _read_results(path, spec) if path is not None else {}
    fresh = path is None or not path.exists() or path.stat().st_size == 0
    digests = {g: trace_digest(t) for g, t in traces.items()}
    reports = {g: stored[g][1] for g in traces if g in stored and stored[g][0] == digests[g]}
    resumed = len(reports)
    todo = [g for g in traces if g not in reports]
    total = len(traces)
    if on_result is not None and resumed:
        on_result("", resumed, total)
    sink = _Results(path, spec, fresh)
    try:
        def finish(guest: str, report: dict[str, Any]) -> None:
            reports[guest] = report
            sink.add(guest, digests[guest], report)
            if on_result is not None:
                on_result(guest, len(reports), total)

        if cluster is None:
            for guest in todo:
                finish(guest, guest_report(traces[guest], spec, guest))
        elif todo:
            with _client(cluster) as client:
                futures = {client.submit(guest_report, traces[g], spec, g, pure=False): g
                           for g in todo}
                for future in _completed(client, futures):
                    finish(futures[future], future.result())
    finally:
        sink.close()
    return FleetResult(spec, {g: reports[g] for g in traces}, resumed)


def fleet_rows(fleet: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per guest of a fleet report (``FleetResult.as_dict``): its setting, memory held
    and shortfall (mean MiB), and how they compare with the kernel defaults."""
    rows = []
    default = knob_values(SelfBalloonKnobs())
    for guest, r in fleet["guests"].items():
        rec, d = r["recommended"], r["defaults"]
        changed = {k: v for k, v in rec["knobs"].items() if v != default[k]}
        rows.append({"guest": guest,
                     "setting": ", ".join(f"{k}={v}" for k, v in changed.items())
                     or "kernel defaults",
                     "held_mib": rec["scores"]["mean_held_mib"],
                     "freed_mib": round(d["mean_held_mib"] - rec["scores"]["mean_held_mib"], 2),
                     "short_mib": rec["scores"]["mean_shortfall_mib"],
                     "short_change_mib": round(rec["scores"]["mean_shortfall_mib"]
                                               - d["mean_shortfall_mib"], 3)})
    return rows


def write_reports(fleet: FleetResult, traces: Mapping[str, Trace], directory: Path | None,
                  fleet_html: Path | None = None) -> list[Path]:
    """Write the reports: into ``directory`` each guest's (``guests/GUEST.json`` and
    ``.html``) and the fleet's (``fleet.json``, ``fleet.html``); ``fleet_html`` also (or
    instead) gets the fleet's page. The paths written, in order."""
    from xentmem.tuning.report import render_fleet_html, render_html  # matplotlib, on demand

    written: list[Path] = []

    def write(path: Path, text: str) -> None:
        path.write_text(text, encoding="utf-8")
        written.append(path)

    pages: dict[str, Path] = {}
    summary = fleet.as_dict()
    if directory is not None:
        (directory / "guests").mkdir(exist_ok=True)
        for guest, report in fleet.reports.items():
            base = directory / "guests" / guest
            write(base.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
            write(base.with_suffix(".html"), render_html(traces[guest], report=report))
            pages[guest] = base.with_suffix(".html")
        write(directory / "fleet.json", json.dumps(summary, indent=2) + "\n")
    for path in (directory / "fleet.html" if directory is not None else None, fleet_html):
        if path is not None:  # each guest's page, relative to where this one is
            links = {g: os.path.relpath(p, path.resolve().parent) for g, p in
                     ((g, p.resolve()) for g, p in pages.items())}
            write(path, render_fleet_html(summary, links))
    return written
