"""The Typer app object, global options and the single error edge.

The edge lives in ``XentmemGroup.main`` so that the console script and
``typer.testing.CliRunner`` behave identically: one red line on stderr, exit 2 for bad usage,
1 for a failed operation, a traceback only with ``--debug``.
"""

from __future__ import annotations

import importlib
import sys
from typing import Annotated, Any

import typer
from typer._click import exceptions as click_exc  # typer vendors Click since 0.26 (pinned)
from typer.core import TyperGroup

from xentmem.errors import XentmemError


class UsageError(XentmemError):
    """Bad command-line input that only the command itself can detect (exit 2)."""


def _fail(message: str, code: int) -> int:
    from rich.console import Console

    line = message.strip().splitlines()[0] if message.strip() else "failed"
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"[red]error:[/red] {line}", markup=True
    )
    return code


def _status(args: list[str], call) -> int:
    debug = "--debug" in args
    try:
        # standalone_mode=False: click returns a typer.Exit's code instead of raising it
        result = call()
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        return _fail("aborted", 1)
    except click_exc.NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help() if exc.ctx else "")
        return 0
    except (click_exc.UsageError, UsageError) as exc:
        if debug:
            raise
        text = exc.format_message() if isinstance(exc, click_exc.UsageError) else str(exc)
        return _fail(text, 2)
    except (XentmemError, OSError, TimeoutError) as exc:
        if debug:
            raise
        return _fail(str(exc) or type(exc).__name__, 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    return result if type(result) is int else 0


class XentmemGroup(TyperGroup):
    def main(self, args: Any = None, prog_name: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        if not standalone_mode:
            return super().main(argv, prog_name, standalone_mode=False, **extra)
        code = _status(argv, lambda: super(XentmemGroup, self).main(
            argv, prog_name or "xentmem", standalone_mode=False, **extra))
        sys.exit(code)


app = typer.Typer(
    name="xentmem",
    cls=XentmemGroup,
    help="Xen transcendent memory (tmem) and self-ballooning toolkit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_state = {"debug": False}


@app.callback()
def _global_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = debug


# Command-group modules register themselves on ``app`` when imported; add new groups here.
_COMMAND_MODULES = (
    "xentmem.cli.doctor",
    "xentmem.cli.tmem",
    "xentmem.cli.emulator",
    "xentmem.cli.emulator_run",
    "xentmem.cli.emulator_daemon",
    "xentmem.cli.demo",
    "xentmem.cli.tune",
    "xentmem.cli.agent",
    "xentmem.cli.guest",
    "xentmem.cli.status",
    "xentmem.cli.bench",
    "xentmem.cli.bench_guest",
    "xentmem.cli.xenstore",
    "xentmem.cli.balance",
)
for _name in _COMMAND_MODULES:
    importlib.import_module(_name)


def run(argv: list[str]) -> int:
    """Run the CLI on ``argv`` and return the exit status."""
    try:
        app(args=argv, prog_name="xentmem")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0
