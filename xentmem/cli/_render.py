"""The one renderer: commands produce rows (or one record); this prints a rich table on a
terminal, or plain JSON (snake_case keys, no markup) with ``--json``."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table


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


def render(data: Mapping[str, Any] | Sequence[Mapping[str, Any]], *, as_json: bool,
           title: str | None = None, columns: Sequence[str] | None = None) -> None:
    """Print ``data`` (one record or a list of rows) as JSON or as a rich table."""
    if as_json:
        sys.stdout.write(json.dumps(_plain(data), indent=2, sort_keys=False) + "\n")
        return
    console = Console(highlight=False)
    table = Table(title=title, title_justify="left")
    if isinstance(data, Mapping):
        table.add_column("key", style="bold")
        table.add_column("value")
        for key, value in data.items():
            table.add_row(str(key), _cell(value))
    else:
        rows = list(data)
        cols = list(columns or (rows[0].keys() if rows else []))
        for col in cols:
            table.add_column(col)
        for row in rows:
            table.add_row(*(_cell(row.get(c)) for c in cols))
    console.print(table)


def _cell(value: Any) -> str:
    value = _plain(value)
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)
