"""``xentmem emulator run SCENARIO.toml``: boot an emulated host with guests, run workloads,
load and unload backends on schedule, print a summary; exit 1 if any page was lost or stale."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from xentmem.cli._app import UsageError
from xentmem.cli._options import Json
from xentmem.cli._render import render, say, unit_keys
from xentmem.cli.emulator import emulator_app
from xentmem.errors import GuestError

if TYPE_CHECKING:  # the emulator is imported when a scenario runs, not at start-up
    from xentmem.emulator.scenario import Scenario, ScenarioResult

__all__ = ["run_and_report"]

# what fits 80 columns; --json has every field (backend, frontswap_pages, memory_mb too)
_COLUMNS = ["guest", "stored", "loaded", "drained", "to_disk", "cache_hits", "lost", "stale"]


def run_and_report(scenario: Scenario, *, as_json: bool) -> ScenarioResult:
    """Run ``scenario`` with live event lines (and a progress bar on a terminal), then render
    the per-guest summary and the verdict."""
    console = Console(highlight=False)
    live = not as_json
    if live:
        heading = (f"{scenario.name} · emulated Xen {scenario.xen_version} · "
                   f"{len(scenario.guests)} guest(s) · {scenario.duration:g} model seconds")
        if console.is_terminal:
            console.rule(f"[bold]{heading}[/bold]")
        else:  # a log: no ruled line
            say(heading)
        if scenario.description:
            console.print(" ".join(scenario.description.split()), style="dim")
    progress = Progress(TextColumn("model time"), BarColumn(),
                        TextColumn("{task.completed:.1f}/{task.total:g} s"),
                        console=console, transient=True, disable=not live)

    def on_event(entry: dict[str, Any]) -> None:
        if live:
            progress.console.print(f"[cyan]t={entry['at']:>5.1f}s[/cyan] "
                                   f"[bold]{entry['guest']}[/bold]  {entry['event']}")

    from xentmem.emulator.scenario import run_scenario

    with progress:
        task = progress.add_task("run", total=scenario.duration)
        result = run_scenario(scenario, on_event=on_event,
                              on_tick=lambda t: progress.update(task, completed=t))
    if as_json:
        render(unit_keys({"summary": result.totals(), "guests": result.rows,
                          "events": result.events}), as_json=True)
        return result
    render(result.rows, as_json=False, title="guests", columns=_COLUMNS)
    t = result.totals()
    verdict = (f"{t['stored']} pages stored, {t['loaded']} loaded, {t['drained']} drained, "
               f"{t['lost']} lost, {t['stale']} stale  ({t['operations']} operations in "
               f"{t['seconds']} s)")
    console.print(("[green]OK[/green]  " if result.ok else "[red]FAIL[/red]  ") + verdict)
    return result


@emulator_app.command("run")
def run(scenario: Annotated[Path, typer.Argument(help="Scenario TOML file.",
                                                 show_default=False)],
        as_json: Json = False) -> None:
    """Run a scenario on an in-process emulated host; exit 1 on any lost or stale page."""
    from xentmem.emulator.scenario import load_scenario

    try:
        spec = load_scenario(scenario)
    except GuestError as exc:
        raise UsageError(str(exc)) from None
    if not run_and_report(spec, as_json=as_json).ok:
        raise typer.Exit(1)
