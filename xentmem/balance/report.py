"""The HTML report of ``balance compare``, made with the tuning report's machinery (its figure,
PNG and template helpers and its style): the score table, the events, and a plot per run of
every guest's target, reservation and need over time."""

from __future__ import annotations

from pathlib import Path

from xentmem.balance.compare import Comparison, Run
from xentmem.tuning.report import b64, figure, generated, png, render_template

__all__ = ["plot_run", "render_html", "write_html"]

_TEMPLATES = Path(__file__).parent / "templates"
_EVENTS_SHOWN = 40  # per run; the JSON output has them all


def plot_run(run: Run) -> bytes:
    """Every guest's target (solid), reservation (thin) and need (dashed) in MiB."""
    fig, ax = figure(height=4.2)
    for g, name in enumerate(run.names):
        colour = f"C{g % 10}"
        ax.step(run.time_s, [s[g] / 1024 for s in run.target], where="post", color=colour,
                lw=1.8, label=f"{name} target")
        ax.step(run.time_s, [s[g] / 1024 for s in run.memory], where="post", color=colour,
                lw=0.8, alpha=0.6)
        ax.step(run.time_s, [s[g] / 1024 for s in run.need], where="post", color=colour,
                ls="--", lw=1.0, label=f"{name} need")
    ax.set_xlabel("time (model s)")
    ax.set_ylabel("MiB")
    ax.set_title(f"{run.policy}: target (solid), reservation (thin), need (dashed)")
    ax.legend(loc="upper left", fontsize="x-small", ncol=4)
    return png(fig)


def render_html(result: Comparison, *, title: str | None = None) -> str:
    """The report page (self-contained: plots embedded)."""
    spec = result.spec
    runs = sorted(result.runs, key=lambda r: r.scores["rank"])
    return render_template(
        "compare.html.j2", search=[_TEMPLATES],
        title=title or f"balance compare: {len(spec.guests)} guests, {spec.duration_s:g} s",
        generated=generated(),
        spec={"guests": ", ".join(spec.guests), "memory per guest (MiB)": spec.memory_mb,
              "host (MiB)": spec.host_memory_mb, "duration (model s)": spec.duration_s,
              "round interval (model s)": spec.interval_s},
        rows=result.rows(), columns=list(result.rows()[0]),
        runs=[{"policy": r.policy, "plot": b64(plot_run(r)),
               "events": r.events[:_EVENTS_SHOWN], "more": max(len(r.events) - _EVENTS_SHOWN, 0)}
              for r in runs])


def write_html(path: str | Path, result: Comparison, **kwargs: str) -> Path:
    """Write :func:`render_html` to ``path``."""
    path = Path(path)
    path.write_text(render_html(result, **kwargs), encoding="utf-8")
    return path
