"""Reports: PNG plots (matplotlib's Agg canvas, no display, no pyplot global state) and a
self-contained HTML page (jinja2 template, the plots embedded as base64)."""

from __future__ import annotations

import base64
import datetime as dt
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from xentmem.guest.selfballoon import MB, SelfBalloonKnobs
from xentmem.tuning.replay import Replay, replay
from xentmem.tuning.sweep import SweepResult, knob_values
from xentmem.tuning.trace import Trace

__all__ = ["plot_pareto", "plot_replay", "plot_trace", "render_html", "write_html"]

_TEMPLATES = Path(__file__).parent / "templates"


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _figure() -> tuple[Figure, Any]:
    fig = Figure(figsize=(9, 3.6))
    ax = fig.add_subplot()
    ax.grid(True, alpha=0.3)
    return fig, ax


def _seconds(trace: Trace) -> np.ndarray:
    return (trace.time_ms - trace.time_ms[0]) / 1000


def plot_trace(trace: Trace) -> bytes:
    """The trace as recorded: demand (committed + reserve), totalram, maxram, frontswap."""
    fig, ax = _figure()
    t = _seconds(trace)
    ax.step(t, trace.demand / MB, where="post", label="committed + reserve", color="C3")
    ax.step(t, trace.committed / MB, where="post", label="committed", color="C1", alpha=0.6)
    ax.step(t, trace.totalram / MB, where="post", label="totalram (recorded)", color="C0")
    ax.step(t, trace.maxram / MB, where="post", label="maxram", color="grey", ls=":")
    if trace.frontswap.any():
        ax.step(t, trace.frontswap / MB, where="post", label="frontswap (recorded)", color="C2")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("MiB")
    ax.set_title(f"trace {trace.name}")
    ax.legend(loc="upper left", fontsize="small")
    return _png(fig)


def _held(trace: Trace, rep: Replay) -> tuple[np.ndarray, np.ndarray]:
    """totalram over time as a step function (start, each run, end)."""
    t0 = int(trace.time_ms[0])
    times = [t0, *rep.series["time_ms"], int(trace.time_ms[-1])]
    values = [int(trace.totalram[0]), *rep.totalram_after]
    values.append(values[-1])
    return (np.array(times) - t0) / 1000, np.array(values) / MB


def plot_replay(trace: Trace, chosen: Replay, baseline: Replay | None = None,
                label: str = "chosen") -> bytes:
    """The closed loop: demand, the law's target and totalram for ``chosen`` (and
    ``baseline``'s totalram, dashed), the floor, frontswap, and the shortfall shaded."""
    fig, ax = _figure()
    t = _seconds(trace)
    ax.step(t, trace.demand / MB, where="post", label="committed + reserve", color="C3")
    ht, hv = _held(trace, chosen)
    ax.step(ht, hv, where="post", label=f"totalram ({label})", color="C0", lw=2)
    runs = (np.array(chosen.series["time_ms"]) - trace.time_ms[0]) / 1000
    if len(runs):
        ax.plot(runs, np.array(chosen.series["target"]) / MB, ".", ms=3, color="C0",
                alpha=0.5, label="target (each run)")
        ax.step(runs, np.array(chosen.series["floor"]) / MB, where="post", color="grey",
                ls=":", label="floor")
        ax.step(runs, np.array(chosen.series["frontswap"]) / MB, where="post", color="C2",
                label="frontswap (model)")
    if baseline is not None:
        bt, bv = _held(trace, baseline)
        ax.step(bt, bv, where="post", ls="--", color="C7", label="totalram (kernel defaults)")
    # shortfall: demand above the chosen totalram, on the merged time grid
    grid = np.union1d(t, ht)
    dem = trace.demand[np.searchsorted(t, grid, side="right") - 1] / MB
    held = hv[np.searchsorted(ht, grid, side="right") - 1]
    # no `where=`: matplotlib drops one-step regions with it; a zero-height fill is invisible
    ax.fill_between(grid, held, np.maximum(dem, held), step="post", color="C3", alpha=0.3,
                    lw=0, label="shortfall")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("MiB")
    ax.set_title(f"replay on {trace.name}")
    ax.legend(loc="upper left", fontsize="small", ncol=2)
    return _png(fig)


def plot_pareto(result: SweepResult) -> bytes:
    """Mean memory held vs shortfall for every setting; front, defaults and recommendation."""
    fig, ax = _figure()
    held = result.replays.scores["held_page_ms"] / result.trace.duration_ms / MB
    short = result.replays.scores["shortfall_page_ms"] / 1000
    ax.scatter(held, short, s=10, color="C7", alpha=0.5, label="settings")
    front = np.array(result.pareto)
    ax.plot(held[front], short[front], "o-", ms=4, color="C0", label="Pareto front")
    ax.scatter([result.defaults.mean_held_mib], [result.defaults.shortfall_page_s], marker="s",
               s=60, color="C1", label="kernel defaults", zorder=3)
    r = result.recommended
    ax.scatter([held[r]], [short[r]], marker="*", s=200, color="C3", label="recommended",
               zorder=4)
    ax.set_xlabel("mean memory held (MiB)")
    ax.set_ylabel("shortfall (page-s)")
    ax.set_title("knob settings: memory held vs shortfall (both lower is better)")
    ax.legend(fontsize="small")
    return _png(fig)


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def _knob_table(knobs: SelfBalloonKnobs) -> list[tuple[str, int, int]]:
    default = knob_values(SelfBalloonKnobs())
    return [(name, value, default[name]) for name, value in knob_values(knobs).items()]


def render_html(trace: Trace, *, sweep_result: SweepResult | None = None,
                knobs: SelfBalloonKnobs | None = None, balloon_rate: int = 0,
                title: str | None = None) -> str:
    """The HTML report of a sweep (``sweep_result``) or of one replay (``knobs``)."""
    if sweep_result is not None:
        knobs = sweep_result.knobs[sweep_result.recommended]
        balloon_rate = sweep_result.replays.balloon_rate
    knobs = knobs or SelfBalloonKnobs()
    chosen = replay(trace, knobs, balloon_rate=balloon_rate)
    defaults = replay(trace, SelfBalloonKnobs(), balloon_rate=balloon_rate)
    label = "recommended" if sweep_result is not None else "these knobs"
    plots = {"trace": _b64(plot_trace(trace)),
             "replay": _b64(plot_replay(trace, chosen, defaults, label))}
    pareto_rows: Sequence[dict[str, Any]] = ()
    if sweep_result is not None:
        plots["pareto"] = _b64(plot_pareto(sweep_result))
        pareto_rows = [sweep_result.row(j) for j in sweep_result.pareto]
    template = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES),
        autoescape=jinja2.select_autoescape(default=True),
        undefined=jinja2.StrictUndefined,
    ).get_template("report.html.j2")
    return template.render(
        title=title or f"self-balloon tuning: {trace.name}",
        generated=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        trace=trace.summary(), knobs=_knob_table(knobs), balloon_rate=balloon_rate,
        chosen=chosen.scores.as_row(), defaults=defaults.scores.as_row(),
        sweep=sweep_result, pareto_rows=pareto_rows,
        pareto_columns=list(pareto_rows[0]) if pareto_rows else [], plots=plots)


def write_html(path: str | Path, trace: Trace, **kwargs: Any) -> Path:
    """Write ``render_html(trace, **kwargs)`` to ``path``."""
    path = Path(path)
    path.write_text(render_html(trace, **kwargs), encoding="utf-8")
    return path
