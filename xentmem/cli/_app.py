"""The Typer app object, global options, the command table and the single error edge.

The edge lives in ``XentmemGroup.main`` so that the console script and
``typer.testing.CliRunner`` behave identically: one red line on stderr (a JSON object with
``--json``), exit 2 for bad usage, 1 for a failed operation, 130 for Ctrl-C, a traceback only
with ``--debug`` (never for usage).

Commands are imported when they run (:data:`COMMANDS`): ``xentmem --help`` imports none of
them, ``xentmem status`` only its own module and what it uses.
"""

from __future__ import annotations

import importlib
import re
import sys
from typing import Annotated, Any

import typer
from typer._click import core as click_core
from typer._click import exceptions as click_exc  # typer vendors Click since 0.26 (pinned)
from typer._click.formatting import HelpFormatter
from typer.core import TyperGroup

from xentmem import __version__
from xentmem.cli._params import light_coercion
from xentmem.errors import XentmemError

__all__ = ["COMMANDS", "UsageError", "XentmemGroup", "app", "check_writable", "run", "sub_app",
           "summary"]


class UsageError(XentmemError):
    """Bad command-line input that only the command itself can detect (exit 2)."""


def check_writable(path: Any, option: str) -> None:
    """Refuse an output file (a ``Path``) whose directory does not exist: before the work,
    not after it."""
    if path is not None and not path.absolute().parent.is_dir():
        raise UsageError(f"{option} {path}: no directory {path.absolute().parent}")


# name -> (the modules that define it, the first holding ``<name>_app``; the line --help shows,
# held equal to the command's own help by tests/test_cli_startup.py)
COMMANDS: dict[str, tuple[tuple[str, ...], str]] = {
    "status": (("xentmem.cli.status",),
               "Host summary: domains, memory, and each guest's tmem / agent state."),
    "guest": (("xentmem.cli.guest",),
              "Per-guest tmem / self-ballooning toggles and memory targets."),
    "tmem": (("xentmem.cli.tmem",),
             "tmem control plane: list, freeze, thaw, set, shared-auth, ..."),
    "xenstore": (("xentmem.cli.xenstore",),
                 "Read and change xenstore (the C xenstore-* tools' output, with timeouts)."),
    "doctor": (("xentmem.cli.doctor",),
               "Check privcmd, the Xen version, tmem, xenstored and libvirt."),
    "agent": (("xentmem.cli.agent",),
              "The guest agent: control/ in xenstore -> sysfs -> data/tmem."),
    "emulator": (("xentmem.cli.emulator", "xentmem.cli.emulator_run",
                  "xentmem.cli.emulator_daemon"),
                 "The emulated Xen host: run scenarios, start or stop the daemon."),
    "demo": (("xentmem.cli.demo",),
             "Run the built-in scenario on an emulated Xen host (no Xen needed)."),
    "tune": (("xentmem.cli.tune",),
             "Replay memory traces through the self-balloon law, sweep its knobs, report."),
    "balance": (("xentmem.cli.balance",),
                "The host memory manager: every guest's memory target, and why."),
    "bench": (("xentmem.cli.bench", "xentmem.cli.bench_guest"),
              "Benchmarks of the emulated data paths and of this CLI."),
}


def summary(name: str) -> str:
    """The one-line help of command ``name`` (a command module's Typer uses it too)."""
    return COMMANDS[name][1]


def sub_app(name: str | None = None) -> typer.Typer:
    """The Typer of a command module: the group ``name`` (its help from :data:`COMMANDS`), or
    with no name one command (its help its docstring); plain help, as the top level's."""
    return typer.Typer(help=summary(name) if name else None, no_args_is_help=name is not None,
                       add_completion=False, pretty_exceptions_enable=False,
                       rich_markup_mode=None)


def _json_asked(args: list[str]) -> bool:
    return "--json" in args[:args.index("--")] if "--" in args else "--json" in args


def _fail(message: str, code: int, args: list[str]) -> int:
    line = message.strip().splitlines()[0] if message.strip() else "failed"
    if _json_asked(args):
        import json

        from xentmem.cli._render import JSON_VERSION

        sys.stderr.write(json.dumps({"schema_version": JSON_VERSION, "error": {
            "message": line, "exit_code": code}}) + "\n")
        return code
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"[red]error:[/red] {line}", markup=True
    )
    return code


def _status(args: list[str], call) -> int:
    # --debug before the command: after it, it is the command's (unknown) option
    debug = "--debug" in args[:next((i for i, a in enumerate(args) if a in COMMANDS),
                                    len(args))]
    try:
        # standalone_mode=False: click returns a typer.Exit's code instead of raising it
        result = call()
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        return _fail("aborted", 1, args)
    except click_exc.NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help() if exc.ctx else "")
        return 0
    except (click_exc.UsageError, UsageError) as exc:
        # bad input is never worth a traceback, --debug or not
        text = exc.format_message() if isinstance(exc, click_exc.UsageError) else str(exc)
        return _fail(text, 2, args)
    except (XentmemError, OSError, TimeoutError) as exc:
        if debug:
            raise
        return _fail(str(exc) or type(exc).__name__, 1, args)
    except KeyboardInterrupt:
        return _fail("interrupted", 130, args)
    return result if type(result) is int else 0


# typer's type placeholders in help (<int range>, <list[str]>) as Click writes them
_TYPE_WORDS = {"int": "INTEGER", "float": "FLOAT", "str": "TEXT", "path": "PATH"}
_PLACEHOLDER = re.compile(r" <(?:list\[)?(\w+)[^>]*>")
_ARGUMENT = re.compile(r"^(\w+(?:\.\.\.)?) <[^>]*>$")  # typer's "domain <int range>"
_USAGE_ARGUMENT = re.compile(r"[{\[](\w+)[}\]]")  # "{trace_file}", "[domain]"


def _quotes(text: str) -> str:
    return text.replace("``", "'").replace("`", "'")  # reStructuredText, or Markdown


class _HelpFormatter(HelpFormatter):
    """Help as a person reads it: Click's type words, not typer's placeholders; arguments in
    capitals; quotes, not reStructuredText backticks."""

    def write_usage(self, prog: str, args: str = "", prefix: str | None = None) -> None:
        super().write_usage(prog, _USAGE_ARGUMENT.sub(
            lambda m: m[0] if m[1].isupper() else
            (m[1].upper() if m[0][0] == "{" else f"[{m[1].upper()}]"), args), prefix)

    def write_dl(self, rows: Any, *args: Any, **kwargs: Any) -> None:
        super().write_dl([(self._term(term), _quotes(text)) for term, text in rows],
                         *args, **kwargs)

    def write_text(self, text: str) -> None:
        super().write_text(_quotes(text))

    @staticmethod
    def _term(term: str) -> str:
        argument = _ARGUMENT.match(term)
        if argument:  # its name says what it is
            return argument[1].upper()
        return _PLACEHOLDER.sub(lambda m: f" {_TYPE_WORDS.get(m[1], '')}".rstrip(), term)


class _Context(click_core.Context):
    formatter_class = _HelpFormatter

    def __init__(self, command: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(command, *args, **kwargs)
        light_coercion(command.get_params(self))  # before parsing coerces anything


def _set_wide(value: bool) -> None:
    if value:
        from xentmem.cli._render import set_wide

        set_wide(True)


def _wide_option() -> Any:
    """The one --wide (typer's own option object, built once from a throw-away command)."""
    holder = typer.Typer(add_completion=False)

    @holder.command()
    def _holder(wide: Annotated[bool, typer.Option(
        "--wide", callback=_set_wide, expose_value=False,
        help="Tables even off a terminal or on a narrow one (default: plain text there).")]
        = False) -> None: ...

    return typer.main.get_command(holder).params[0]


def _finish(command: Any) -> None:
    """Give ``command`` and everything below it the formatter above, and every command that
    renders (has --json) the one --wide."""
    command.context_class = _Context
    subs = getattr(command, "commands", None)
    if subs is None and any("--json" in p.opts for p in command.params):
        command.params.append(_wide_option())
    for sub in (subs or {}).values():
        _finish(sub)


class XentmemGroup(TyperGroup):
    """The top-level group: the edge above, and :data:`COMMANDS` loaded on first use."""

    def main(self, args: Any = None, prog_name: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        from xentmem.cli._render import set_wide

        set_wide(False)  # per run (tests invoke many in one process)
        if not standalone_mode:
            return super().main(argv, prog_name, standalone_mode=False, **extra)
        code = _status(argv, lambda: super(XentmemGroup, self).main(
            argv, prog_name or "xentmem", standalone_mode=False, **extra))
        sys.exit(code)

    context_class = _Context

    def list_commands(self, ctx: Any) -> list[str]:
        return [*COMMANDS, *(n for n in super().list_commands(ctx) if n not in COMMANDS)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            modules, _ = COMMANDS[cmd_name]
            for module in modules:
                importlib.import_module(module)
            command = typer.main.get_command(getattr(sys.modules[modules[0]],
                                                     f"{cmd_name.replace('-', '_')}_app"))
            command.name = cmd_name
            _finish(command)
            self.commands[cmd_name] = command
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        # the table's own summaries: listing the commands imports none of them
        rows = [(name, summary(name)) for name in COMMANDS]
        rows += [(n, c.get_short_help_str(formatter.width)) for n, c in self.commands.items()
                 if n not in COMMANDS and not c.hidden]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


app = typer.Typer(
    name="xentmem",
    cls=XentmemGroup,
    help="Xen transcendent memory (tmem) and self-ballooning toolkit.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"xentmem {__version__}")
        raise typer.Exit(0)


@app.callback()
def _global_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
    )] = False,
) -> None:
    """The options before the command: the edge (_status) reads --debug from the command line
    itself, as it must also decide for an error raised while parsing."""


def run(argv: list[str]) -> int:
    """Run the CLI on ``argv`` and return the exit status."""
    try:
        app(args=argv, prog_name="xentmem")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0
