"""The ``xentmem`` command line: one Typer app, one module per command group.

Each command parses, calls one library function and renders through ``_render``. Errors are
caught once, at the edge (``_app``): one red line on stderr, exit 1 (2 for usage, 130 for
Ctrl-C), traceback only with ``--debug``. This package imports nothing until used, so that a
Ctrl-C while the CLI loads is caught too.
"""

from __future__ import annotations

import sys

from xentmem._lazy import lazy_exports

__all__ = ["UsageError", "app", "main"]

__getattr__, __dir__ = lazy_exports(__name__, {"._app": ("UsageError", "app")})


def main() -> None:
    """Console-script entry point."""
    try:
        from xentmem.cli._app import run

        code = run(sys.argv[1:])
    except KeyboardInterrupt:  # while the CLI itself was still loading
        sys.stderr.write("error: interrupted\n")
        code = 130
    sys.exit(code)
