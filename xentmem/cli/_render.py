"""The one renderer: commands produce rows (or one record); this prints them for a person, or
one JSON object with ``--json``.

For a person (the rendering rule): on a terminal wide enough, a rich table; anywhere else (a
pipe, a CI log: 80 columns, or ``$COLUMNS``) or on a narrow terminal, plain aligned text when
it fits, else one block per record (``key  value`` lines), so that no cell is ever cut or
wrapped. ``--wide`` forces the table at its natural width.

For a script (the JSON contract, README "JSON output"): a top-level object with
``schema_version`` and ``command`` and the command's keys; a list is under a named key; units
are in the key names (``_mib``, ``_kib``, ``_s``, ``_per_s``); an absent value is ``null``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ["JSON_VERSION", "emit_json", "progress", "render", "render_table", "say",
           "set_wide", "unit_key", "unit_keys"]

JSON_VERSION = 1  # bump when a key changes meaning or goes away (adding keys does not)

_options = {"wide": False}

# key suffixes with the unit spelled out; the guest's own knob names (min_usable_mb, ...) stay
# as the kernel spells them (they are also what --knob and `guest set` take)
_UNITS = (("_mb", "_mib"), ("_kb", "_kib"), ("pages_s", "pages_per_s"))
_KERNEL_NAMES = ("min_usable_mb", "reserved_mb")


def set_wide(on: bool) -> None:
    """``--wide``: tables even where the rule would print text."""
    _options["wide"] = on


def unit_key(key: str) -> str:
    """``key`` with its unit spelled the one way (``memory_mb`` -> ``memory_mib``)."""
    if key.endswith(_KERNEL_NAMES):  # also applied_min_usable_mb and the like
        return key
    for old, new in _UNITS:
        if key.endswith(old):
            return key[: -len(old)] + new
    return key


def unit_keys(value: Any) -> Any:
    """``value`` with every mapping key through :func:`unit_key` (for records a library still
    names the old way, such as the emulator daemon's ``memory_mb``)."""
    if isinstance(value, Mapping):
        return {unit_key(str(k)): unit_keys(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [unit_keys(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    if hasattr(value, "value") and hasattr(value, "name"):  # enums
        return value.name
    return value


def _command() -> str:
    from typer._click.globals import get_current_context

    ctx = get_current_context(silent=True)
    return " ".join(ctx.command_path.split()[1:]) if ctx is not None else ""


def emit_json(payload: Mapping[str, Any], *, indent: int | None = 2) -> None:
    """Print ``payload`` as the command's one JSON object (``indent=None``: on one line, as
    a command that streams objects prints each)."""
    body = {"schema_version": JSON_VERSION, "command": _command(), **_plain(payload)}
    sys.stdout.write(json.dumps(body, indent=indent) + "\n")


def render(data: Mapping[str, Any] | Sequence[Mapping[str, Any]], *, as_json: bool,
           title: str | None = None, columns: Sequence[str] | None = None,
           key: str = "rows", headers: Mapping[str, str] | None = None) -> None:
    """Print ``data`` (one record, or rows under ``key`` in JSON) as JSON or by the rule above;
    ``headers`` renames columns for a person (JSON keeps the keys)."""
    if as_json:
        emit_json(data if isinstance(data, Mapping) else {key: list(data)})
        return
    if isinstance(data, Mapping):
        rows = [{"key": unit_key(str(k)), "value": v} for k, v in data.items()]
        render_table(rows, ["key", "value"], title=title, record=True)
        return
    rows = list(data)
    cols = list(columns or (rows[0].keys() if rows else []))
    render_table(rows, cols, title=title, headers=headers)


def _cell(value: Any) -> str:
    value = _plain(value)
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return "; ".join(str(value).splitlines())  # one line per row, whatever the value


def _width() -> tuple[int, bool]:
    """Columns to fit, and whether stdout is a terminal."""
    if sys.stdout.isatty():
        return shutil.get_terminal_size((80, 24)).columns, True
    try:
        return max(20, int(os.environ.get("COLUMNS", "80"))), False
    except ValueError:
        return 80, False


def render_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *,
                 title: str | None = None, headers: Mapping[str, str] | None = None,
                 record: bool = False) -> None:
    """Rows by the rendering rule; ``record``: key/value rows of one record (no header)."""
    if not rows or not columns:
        say(f"{title}: none" if title else "none")
        return
    names = [unit_key((headers or {}).get(c, c)) for c in columns]
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(n) * (not record), *(len(r[i]) for r in cells)])
              for i, n in enumerate(names)]
    plain_width = sum(widths) + 2 * (len(widths) - 1)
    width, terminal = _width()
    out = sys.stdout
    if _options["wide"] or (terminal and plain_width + 3 * len(widths) + 1 <= width):
        _rich_table(title, names, cells, record, natural=plain_width + 3 * len(widths) + 1)
        return
    if title:
        say(title)
    if record or plain_width <= width:
        if not record:
            out.write("  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)).rstrip()
                      + "\n")
        for r in cells:
            out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                      + "\n")
        return
    # too wide for text in columns: one block per record, every value whole
    label = max(len(n) for n in names)
    for i, r in enumerate(cells):
        if i:
            out.write("\n")
        for n, c in zip(names, r, strict=True):
            out.write(f"{n.ljust(label)}  {c}\n")


def say(text: str) -> None:
    """A line of prose for a person, wrapped at the width the rule uses (never cut)."""
    import textwrap

    width, _ = _width()
    sys.stdout.write(textwrap.fill(text, width, break_long_words=False,
                                   break_on_hyphens=False) + "\n")


def _rich_table(title: str | None, names: list[str], cells: list[list[str]], record: bool,
                natural: int) -> None:
    from rich.console import Console
    from rich.table import Table

    width, _ = _width()
    console = Console(highlight=False, width=max(width, natural) if _options["wide"] else None)
    table = Table(title=title, title_justify="left", show_header=not record)
    for i, name in enumerate(names):
        table.add_column(name, style="bold" if record and i == 0 else None, no_wrap=True)
    for r in cells:
        table.add_row(*r)
    console.print(table)


@contextmanager
def progress(what: str, total: float | None = None) -> Iterator[Callable[[float], None]]:
    """Work that may take more than a few seconds: a bar (with ``total``) or a spinner, with
    the time elapsed, on stderr and only on a terminal (a log or a pipe gets nothing);
    yields ``update(done)``."""
    if not sys.stderr.isatty():
        yield lambda done: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    bar = [BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f}")] if total else []
    with Progress(SpinnerColumn(), TextColumn(what), *bar, TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as shown:
        task = shown.add_task(what, total=total)
        yield lambda done: shown.update(task, completed=done)
