"""What the CLI costs before it does anything, and what a person meets first: lazy imports,
the command table, ``--version``, help text, completion, Ctrl-C while it loads."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from xentmem import __version__
from xentmem.cli import app
from xentmem.cli._app import COMMANDS, summary

runner = CliRunner()
HEAVY = ("numpy", "libvirt", "pyxs", "cffi")


def loaded_after(code: str) -> set[str]:
    """The top-level packages of HEAVY a fresh interpreter has loaded after running ``code``."""
    probe = code + textwrap.dedent(f"""
        import json, sys
        print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & {set(HEAVY)!r})))
    """)
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


CLI = textwrap.dedent("""
    import sys
    from xentmem.cli._app import run
    run({argv!r})
""")


@pytest.mark.parametrize("argv", [["--help"], ["--version"], [], ["bogus"]])
def test_help_imports_no_heavy_module(argv: list[str]):
    assert loaded_after(CLI.format(argv=argv)) == set()


@pytest.mark.parametrize("module", ["xentmem.xenstore.keys", "xentmem.agent", "xentmem.host",
                                    "xentmem.hypercalls", "xentmem.emulator", "xentmem.guest",
                                    "xentmem.xenstore", "xentmem.cli"])
def test_importing_a_package_pulls_in_no_subsystem(module: str):
    assert loaded_after(f"import {module}\n") == set()


def test_a_name_is_still_exported_where_it_was():
    """The lazy re-exports resolve to the defining module's object."""
    from xentmem.hypercalls import Tmem
    from xentmem.hypercalls.tmem import Tmem as defined
    from xentmem.xenstore import XenStoreClient, walk
    from xentmem.xenstore._client import XenStoreClient as client
    from xentmem.xenstore.tree import walk as tree_walk

    assert Tmem is defined and XenStoreClient is client and walk is tree_walk
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        import xentmem.agent as agent

        _ = agent.Nope


def test_top_level_help_lists_every_command_with_its_own_summary():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    commands = result.stdout.split("Commands:")[1]
    for name in COMMANDS:
        assert re.search(rf"^  {name}\s", commands, re.M), name
        command = app_command(name)
        # the table's line is the command's own help (groups: all of it; commands: its start)
        assert (command.help or "").startswith(summary(name).rstrip(".")), name


def app_command(name: str):
    import typer

    group = typer.main.get_command(app)
    return group.get_command(None, name)  # type: ignore[arg-type]


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"xentmem {__version__}\n"


def every_command(command=None, path=()):
    """(path, command) of every command below the top level, groups included."""
    import typer

    command = command or typer.main.get_command(app)
    for name in command.list_commands(None):
        sub = command.get_command(None, name)
        yield (*path, name), sub
        if hasattr(sub, "commands"):
            yield from every_command(sub, (*path, name))


@pytest.mark.parametrize("path", [" ".join(p) for p, _ in every_command()])
def test_help_text_is_plain_and_complete(path: str):
    result = runner.invoke(app, [*path.split(), "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert not re.search(r"<(?:int|float|str|path|bool|list\[[^>]*\]|[a-z]+ range)>", text), text
    assert "`" not in text, text  # reStructuredText / Markdown quotes
    options = text.split("Options:")[1] if "Options:" in text else ""
    # every option says what it does: a line "  -x, --name TYPE" with no help beside it or
    # below it is an option without help
    entries = re.findall(r"^  (-\S.*?)(?=^  -|\Z)", options, re.M | re.S)
    for entry in entries:
        first, *rest = entry.splitlines()
        described = re.search(r"\S\s{2,}\S", first.strip()) or any(r.strip() for r in rest)
        assert described, f"{path}: {first.strip()} has no help"


def test_tmem_set_weight_is_explained():
    text = runner.invoke(app, ["tmem", "set", "--help"], env={"COLUMNS": "200"}).stdout
    assert re.search(r"-w, --weight INTEGER\s+Eviction weight", text)


def test_shell_completion_completes_commands():
    env = {**os.environ, "_XENTMEM_COMPLETE": "complete_bash", "COMP_WORDS": "xentmem tm",
           "COMP_CWORD": "1"}
    proc = subprocess.run([sys.executable, "-m", "xentmem"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.split() == ["tmem"], proc.stdout + proc.stderr
    script = subprocess.run([sys.executable, "-m", "xentmem", "--show-completion", "bash"],
                            capture_output=True, text=True, timeout=60)
    assert script.returncode == 0 and "_XENTMEM_COMPLETE" in script.stdout


def test_ctrl_c_while_the_cli_loads_exits_130_without_traceback():
    """SIGINT delivered exactly while the CLI imports typer (the first half second)."""
    code = textwrap.dedent("""
        import builtins, os, signal, sys
        real = builtins.__import__
        def interrupting(name, *args, **kwargs):
            if name == "typer":
                builtins.__import__ = real
                os.kill(os.getpid(), signal.SIGINT)
            return real(name, *args, **kwargs)
        builtins.__import__ = interrupting
        sys.argv = ["xentmem", "status"]
        from xentmem.cli import main
        main()
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 130
    assert proc.stderr == "error: interrupted\n"


@pytest.mark.parametrize("argv", [["--debug", "bogus"], ["bogus"], ["--debug", "tmem", "list"]])
def test_usage_errors_exit_2_with_one_line_even_with_debug(argv: list[str]):
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
