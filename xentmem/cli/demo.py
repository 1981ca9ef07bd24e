"""``xentmem demo``: the built-in scenario — backends loading after swapon/mount (the seed),
then unloading with every frontswap page drained back to swap — on an emulated host."""

from __future__ import annotations

from importlib.resources import files

import typer

from xentmem.cli._app import sub_app
from xentmem.cli._options import Json
from xentmem.cli.emulator_run import run_and_report

__all__ = ["demo_app"]

demo_app = sub_app()


@demo_app.command()
def demo(as_json: Json = False) -> None:
    """Run the built-in scenario on an emulated Xen host (no Xen needed); exit 1 if any page
    was lost or stale."""
    from xentmem.emulator.scenario import load_scenario

    scenario = load_scenario(files("xentmem.guest") / "demo.toml")
    if not run_and_report(scenario, as_json=as_json).ok:
        raise typer.Exit(1)
