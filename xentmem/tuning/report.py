"""Reports: PNG plots (matplotlib's Agg canvas, no display, no pyplot global state) and
self-contained HTML pages (jinja2 templates, the plots embedded as base64): one guest's
(a sweep's JSON report, or one replay's knobs) and a fleet's.

Everything a page shows comes from the JSON report (``SweepResult.as_dict``) and the trace, so
a report read back from a file (a fleet's results) renders the same page.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from xentmem.guest.selfballoon import MB, SelfBalloonKnobs
from xentmem.tuning.knobs import knob_values, parse_knobs
from xentmem.tuning.replay import Replay, replay
from xentmem.tuning.trace import Trace

__all__ = ["b64", "figure", "generated", "label", "plot_fleet", "plot_pareto", "plot_replay",
           "plot_trace", "png", "render_fleet_html", "render_html", "render_template",
           "write_html"]

_TEMPLATES = Path(__file__).parent / "templates"

# column headers for people; anything else: its words, capitalised
_LABELS = {
    "index": "#", "mean_held_mib": "Mean held (MiB)", "peak_held_mib": "Peak held (MiB)",
    "saved_mib": "Saved vs never ballooning (MiB)", "saved_pct": "Saved vs never ballooning (%)",
    "shortfall_page_s": "Shortfall (page-s)", "mean_shortfall_mib": "Mean shortfall (MiB)",
    "peak_shortfall_mib": "Peak shortfall (MiB)", "frontswap_page_s": "Frontswap (page-s)",
    "target_changes": "Target changes", "shrinks": "Self-shrinks", "runs": "Worker runs",
    "pareto": "Pareto", "recommended": "Recommended", "min_usable_mb": "min_usable_mb",
    "reserved_mb": "reserved_mb", "name": "Trace", "samples": "Samples",
    "duration_s": "Duration", "max_pfn_mib": "Guest memory (MiB)",
    "start_totalram_mib": "totalram at start (MiB)", "committed_mean_mib": "Committed mean (MiB)",
    "committed_peak_mib": "Committed peak (MiB)", "held_mib": "Held (MiB)",
    "freed_mib": "Freed vs kernel defaults (MiB)", "short_mib": "Shortfall (MiB)",
    "short_change_mib": "Shortfall vs kernel defaults (MiB)",
}
# the score columns of the page's tables (the JSON report has them all)
_SCORE_COLUMNS = ("mean_held_mib", "peak_held_mib", "saved_pct", "mean_shortfall_mib",
                  "peak_shortfall_mib", "target_changes", "shrinks")
_LABELLED = 12  # Pareto points that get a label (evenly spread, plus defaults and pick)


def label(column: str) -> str:
    """A column's header: knob names stay as they are typed (they are what ``-k`` and
    ``xentmem guest set`` take); the rest in words."""
    if column in knob_values(SelfBalloonKnobs()):
        return column
    return _LABELS.get(column, column.replace("_", " ").capitalize())


def _cell(value: Any) -> Any:
    if isinstance(value, bool):
        return "yes" if value else ""
    return value


def _duration(seconds: float) -> str:
    """A duration in the unit a reader thinks in."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:g} s"


# -- plots ---------------------------------------------------------------------------------------

def png(fig: Figure) -> bytes:
    """The figure as PNG bytes (Agg canvas: no display, no pyplot global state)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def figure(height: float = 3.6) -> tuple[Figure, Any]:
    """A report-sized figure with one gridded axes."""
    fig = Figure(figsize=(9, height))
    ax = fig.add_subplot()
    ax.grid(True, alpha=0.3)
    return fig, ax


def _time_axis(trace: Trace) -> tuple[float, str]:
    """Seconds per unit and the axis label, by the trace's length."""
    span = trace.duration_ms / 1000
    for unit, size in (("days", 86400.0), ("hours", 3600.0), ("minutes", 60.0)):
        if span >= 2 * size:
            return size, f"time ({unit})"
    return 1.0, "time (seconds)"


def _times(trace: Trace, ms: Any, size: float) -> np.ndarray:
    return (np.asarray(ms) - trace.time_ms[0]) / 1000 / size


def plot_trace(trace: Trace) -> bytes:
    """The trace as recorded: demand (committed + reserve), totalram, maxram, frontswap."""
    fig, ax = figure()
    size, xlabel = _time_axis(trace)
    t = _times(trace, trace.time_ms, size)
    ax.step(t, trace.demand / MB, where="post", label="committed + reserve", color="C3", lw=0.8)
    ax.step(t, trace.totalram / MB, where="post", label="totalram (recorded)", color="C0")
    ax.step(t, trace.maxram / MB, where="post", label="maxram", color="grey", ls=":")
    if trace.frontswap.any():
        ax.step(t, trace.frontswap / MB, where="post", label="frontswap (recorded)", color="C2")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("MiB")
    ax.set_xlim(t[0], t[-1])
    ax.set_title(f"trace {trace.name}")
    ax.legend(loc="upper left", fontsize="small")
    return png(fig)


def _held(trace: Trace, rep: Replay, size: float) -> tuple[np.ndarray, np.ndarray]:
    """totalram over time as a step function (start, each run, end)."""
    times = [int(trace.time_ms[0]), *rep.series["time_ms"], int(trace.time_ms[-1])]
    values = [int(trace.totalram[0]), *rep.totalram_after]
    values.append(values[-1])
    return _times(trace, times, size), np.array(values) / MB


_ZOOM_S = 3600  # traces longer than three of these get a closer look at one


def plot_replay(trace: Trace, chosen: Replay, baseline: Replay | None = None,
                label: str = "chosen") -> bytes:
    """The closed loop: demand, totalram for ``chosen`` (and ``baseline``'s, dashed), the
    floor, frontswap, and the shortfall shaded; on a long trace also a closer look at the
    hour around the largest shortfall, where the lines would merge at full length."""
    size, xlabel = _time_axis(trace)
    t = _times(trace, trace.time_ms, size)
    ht, hv = _held(trace, chosen, size)
    # shortfall: demand above the chosen totalram, on the merged time grid
    grid = np.union1d(t, ht)
    dem = trace.demand[np.searchsorted(t, grid, side="right") - 1] / MB
    held = hv[np.searchsorted(ht, grid, side="right") - 1]
    long = trace.duration_ms / 1000 > 3 * _ZOOM_S
    fig = Figure(figsize=(9, 7.2 if long else 3.6), layout="constrained")
    axes = fig.subplots(2 if long else 1, 1, squeeze=False)[:, 0]
    runs = _times(trace, chosen.series["time_ms"], size)
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.step(t, trace.demand / MB, where="post", label="committed + reserve", color="C3",
                lw=0.8)
        if baseline is not None:
            bt, bv = _held(trace, baseline, size)
            ax.step(bt, bv, where="post", ls="--", color="C7", lw=1,
                    label="totalram (kernel defaults)")
        ax.step(ht, hv, where="post", label=f"totalram ({label})", color="C0", lw=1.2)
        if len(runs):
            ax.step(runs, np.array(chosen.series["floor"]) / MB, where="post", color="grey",
                    ls=":", label="floor")
            ax.step(runs, np.array(chosen.series["frontswap"]) / MB, where="post",
                    color="C2", lw=0.8, label="frontswap (model)")
        # no `where=`: matplotlib drops one-step regions with it; a zero-height fill is
        # invisible
        ax.fill_between(grid, held, np.maximum(dem, held), step="post", color="C3",
                        alpha=0.35, lw=0, label="shortfall")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("MiB")
    axes[0].set_xlim(t[0], t[-1])
    axes[0].set_title(f"closed loop over {trace.name}")
    axes[0].legend(loc="upper left", fontsize="small", ncol=3)
    if long:
        worst = grid[int(np.argmax(dem - held))]
        half = _ZOOM_S / 2 / size
        lo = min(max(worst - half, t[0]), t[-1] - 2 * half)
        axes[1].set_xlim(lo, lo + 2 * half)
        axes[1].set_title("closer: the hour around the largest shortfall")
    return png(fig)


def _setting_label(row: Mapping[str, Any], swept: Sequence[str]) -> str:
    """A Pareto point's label: its swept knobs, briefly."""
    return " ".join(f"{name}={row[name]}" for name in swept)


def plot_pareto(report: Mapping[str, Any]) -> bytes:
    """Mean memory held vs mean shortfall for every setting of a sweep report; the front
    labelled with its knob values, the kernel defaults and the recommendation marked."""
    fig = Figure(figsize=(9, 4.8))
    ax = fig.add_subplot()
    ax.grid(True, alpha=0.3)
    rows, swept = report["results"], list(report["grid"])
    held = np.array([r["mean_held_mib"] for r in rows])
    short = np.array([r["mean_shortfall_mib"] for r in rows])
    ax.scatter(held, short, s=10, color="C7", alpha=0.5, label="settings")
    front = [r["index"] for r in report["pareto"]]
    ax.plot(held[front], short[front], "o-", ms=4, color="C0", label="Pareto front")
    d = report["defaults"]
    ax.scatter([d["mean_held_mib"]], [d["mean_shortfall_mib"]], marker="s", s=60, color="C1",
               label="kernel defaults", zorder=3)
    r = report["recommended"]["index"]
    ax.scatter([held[r]], [short[r]], marker="*", s=220, color="C3", label="recommended",
               zorder=4)
    every = max(1, -(-len(front) // _LABELLED))
    shown = set(front[::every]) | {r}
    for n, j in enumerate(j for j in front if j in shown):
        # alternate above and below the front, which falls left to right: fewer collisions
        ax.annotate(_setting_label(rows[j], swept), (held[j], short[j]),
                    xytext=(5, 5) if n % 2 else (-5, -11), textcoords="offset points",
                    ha="left" if n % 2 else "right", fontsize=7,
                    color="C3" if j == r else "C0")
    ax.set_xlabel("mean memory held (MiB)")
    ax.set_ylabel("mean shortfall (MiB)")
    ax.set_title("knob settings: memory held vs shortfall (lower is better for both)")
    ax.legend(fontsize="small", loc="upper right")
    return png(fig)


def plot_fleet(fleet: Mapping[str, Any]) -> bytes:
    """Per guest, most first: the memory its recommendation saves against the kernel defaults
    (bars, MiB) and the change in its shortfall (dots, MiB; below zero: less swapping)."""
    guests = fleet["guests"]
    saved = {g: r["defaults"]["mean_held_mib"] - r["recommended"]["scores"]["mean_held_mib"]
             for g, r in guests.items()}
    order = sorted(guests, key=lambda g: -saved[g])
    more_short = [guests[g]["recommended"]["scores"]["mean_shortfall_mib"]
                  - guests[g]["defaults"]["mean_shortfall_mib"] for g in order]
    fig, ax = figure()
    x = np.arange(len(order))
    ax.bar(x, [saved[g] for g in order], color="C0", label="memory saved (MiB)")
    ax.plot(x, more_short, "o", ms=3, color="C3", label="change in shortfall (MiB)")
    ax.axhline(0, color="black", lw=0.6)
    if len(order) <= 40:
        ax.set_xticks(x, order, rotation=90, fontsize=7)
        ax.set_xlabel("guest")
    else:
        ax.set_xticks([])
        ax.set_xlabel(f"{len(order)} guests, by memory saved")
    ax.set_ylabel("MiB, on average")
    ax.set_title("recommended against kernel defaults, per guest")
    ax.legend(fontsize="small", loc="upper right")
    return png(fig)


# -- pages ---------------------------------------------------------------------------------------

def b64(png: bytes) -> str:
    """PNG bytes as base64 text, for a ``data:`` URI in a report."""
    return base64.b64encode(png).decode("ascii")


def _environment(search: Sequence[Path] = ()) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader([*search, _TEMPLATES]),
                             autoescape=jinja2.select_autoescape(default=True),
                             undefined=jinja2.StrictUndefined)
    env.filters["label"] = label
    env.filters["cell"] = _cell
    return env


def render_template(name: str, *, search: Sequence[Path] = (), **context: Any) -> str:
    """Render template ``name`` found in ``search`` or among the reports' own templates (which
    any template may include: ``style.css.j2`` is the reports' style)."""
    return _environment(search).get_template(name).render(**context)


def generated() -> str:
    """When a report was made, as its page says it."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def render_html(trace: Trace, *, report: Mapping[str, Any] | None = None,
                knobs: SelfBalloonKnobs | None = None, balloon_rate: int = 0,
                title: str | None = None) -> str:
    """One guest's page: of a sweep (its JSON ``report``) or of one replay (``knobs``)."""
    if report is not None:
        rec = report["recommended"]
        knobs = parse_knobs([f"{k}={v}" for k, v in rec["knobs"].items()])
        balloon_rate = int(report["balloon_rate"])
    knobs = knobs or SelfBalloonKnobs()
    chosen = replay(trace, knobs, balloon_rate=balloon_rate)
    defaults = replay(trace, SelfBalloonKnobs(), balloon_rate=balloon_rate)
    which = "recommended" if report is not None else "these knobs"
    plots = {"trace": b64(plot_trace(trace)),
             "replay": b64(plot_replay(trace, chosen, defaults, which))}
    pareto_columns: list[str] = []
    if report is not None:
        plots["pareto"] = b64(plot_pareto(report))
        pareto_columns = ["index", *report["grid"], *_SCORE_COLUMNS, "recommended"]
    default = knob_values(SelfBalloonKnobs())
    summary = {**trace.summary(), "duration_s": _duration(trace.duration_ms / 1000)}
    return _environment().get_template("report.html.j2").render(
        title=title or f"Self-balloon tuning: {trace.name}", generated=generated(),
        trace=summary, balloon_rate=balloon_rate,
        knobs=[(n, v, default[n]) for n, v in knob_values(knobs).items()],
        which=which, score_columns=_SCORE_COLUMNS,
        scores=[(which, chosen.scores.as_row()), ("kernel defaults", defaults.scores.as_row())],
        report=report, pareto_columns=pareto_columns, plots=plots)


def render_fleet_html(fleet: Mapping[str, Any], links: Mapping[str, str] | None = None) -> str:
    """The fleet's page: totals, memory per guest, and each guest's recommendation (linked to
    its own page where ``links`` names one)."""
    from xentmem.tuning.fleet import fleet_rows  # the table both the CLI and this show

    return _environment().get_template("fleet.html.j2").render(
        title=f"Self-balloon tuning: {fleet['fleet']['guests']} guests",
        generated=generated(), fleet=fleet["fleet"], rows=fleet_rows(fleet),
        links=links or {}, plot=b64(plot_fleet(fleet)),
        applies={g: r["recommended"]["apply"] for g, r in fleet["guests"].items()})


def write_html(path: str | Path, trace: Trace, **kwargs: Any) -> Path:
    """Write ``render_html(trace, **kwargs)`` to ``path``."""
    path = Path(path)
    path.write_text(render_html(trace, **kwargs), encoding="utf-8")
    return path
