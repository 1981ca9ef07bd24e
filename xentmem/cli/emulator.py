"""``xentmem emulator ...``: the emulated host (``run`` a scenario; ``up``/``down`` the daemon)."""

from __future__ import annotations

import typer

from xentmem.cli._app import app

__all__ = ["emulator_app"]

emulator_app = typer.Typer(help="The emulated Xen host: run scenarios, start or stop the daemon.",
                           no_args_is_help=True)
app.add_typer(emulator_app, name="emulator")
