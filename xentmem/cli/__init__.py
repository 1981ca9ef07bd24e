"""The ``xentmem`` command line: one Typer app, one module per command group.

Each command parses, calls one library function and renders through ``_render``. Errors are
caught once, in ``main``: one red line on stderr, exit 1 (2 for usage), traceback only with
``--debug``.
"""

from __future__ import annotations

import sys

from xentmem.cli._app import UsageError, app, run

__all__ = ["UsageError", "app", "main"]


def main() -> None:
    """Console-script entry point."""
    sys.exit(run(sys.argv[1:]))
