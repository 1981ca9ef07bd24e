"""``xentmem xenstore ...``: read and change xenstore with the client that never hangs.

The text output is that of Debian's C tools (``xenstore-ls [-f]``, ``-read``, ``-list``), so a
script can switch between them; values are escaped by the one sanitiser, so whatever a guest
wrote prints safely. The xenstored is the host's that ``-c URI`` names (on a real host found as
the C tools find it: ``$XENSTORED_PATH``, ``$XENSTORED_RUNDIR/socket``, the xenbus device;
``-c emulator:DIR?domid=N`` is the emulator's as domain N), or ``--xenstored PATH``; every call
has ``--timeout``.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterable
from typing import Annotated

import typer

from xentmem.cli._app import UsageError, sub_app
from xentmem.cli._connect import resolve_target
from xentmem.cli._options import Connect, Json, Timeout, XenStored
from xentmem.cli._render import emit_json, render
from xentmem.errors import XenStoreError, XenStoreTimeout, XenStoreUnavailable
from xentmem.xenstore import XenStoreClient, escape_value, ls_lines, walk

xenstore_app = sub_app("xenstore")

Paths = Annotated[list[str], typer.Argument(help="xenstore paths.", show_default=False)]


def _xs(connect: str | None, xenstored: str | None, timeout: float) -> XenStoreClient:
    return resolve_target(connect, xenstored=xenstored).xenstore(timeout)


def _check(path: str) -> str:
    if not path or "\0" in path:
        raise UsageError(f"invalid xenstore path {path!r}")
    return path


def _out(lines: Iterable[str]) -> None:
    sys.stdout.writelines(f"{line}\n" for line in lines)


@xenstore_app.command("ls")
def ls(
    path: Annotated[str, typer.Argument(help="Subtree to list.")] = "/",
    full_paths: Annotated[bool, typer.Option("--full-paths", "-f",
                                             help="Full paths, whole values.")] = False,
    as_json: Json = False, connect: Connect = None, xenstored: XenStored = None,
    timeout: Timeout = 5.0,
) -> None:
    """Every node below PATH, as xenstore-ls prints it (exit 1 if any could not be read)."""
    with _xs(connect, xenstored, timeout) as xs:
        nodes = list(walk(xs, _check(path)))
    if as_json:
        render([{"path": n.path, "value": None if n.value is None else escape_value(n.value),
                 **({"error": str(n.error)} if n.error else {})} for n in nodes], as_json=True,
               key="nodes")
    else:
        # the C tool fits a terminal's width, and 80 columns anywhere else
        width = shutil.get_terminal_size((80, 24)).columns if sys.stdout.isatty() else 80
        _out(ls_lines(nodes, full_paths=full_paths, width=width))
    failed = [n for n in nodes if n.error is not None]
    if failed:
        raise XenStoreError(f"{len(failed)} node(s) could not be read, first "
                            f"{failed[0].path}: {failed[0].error}")


@xenstore_app.command("read")
def read(paths: Paths, as_json: Json = False, connect: Connect = None,
         xenstored: XenStored = None, timeout: Timeout = 5.0) -> None:
    """The value of each PATH, one per line, escaped as xenstore-read prints it."""
    with _xs(connect, xenstored, timeout) as xs:
        values = {p: escape_value(xs.read(_check(p))) for p in paths}
    if as_json:
        render({"values": values}, as_json=True)
    else:
        _out(list(values.values()))


@xenstore_app.command("list")
def list_(path: Annotated[str, typer.Argument(help="Directory to list.")],
          as_json: Json = False, connect: Connect = None, xenstored: XenStored = None,
          timeout: Timeout = 5.0) -> None:
    """The children of PATH, one per line (xenstore-list)."""
    with _xs(connect, xenstored, timeout) as xs:
        names = xs.list(_check(path))
    if as_json:
        render({"path": path, "children": names}, as_json=True)
    else:
        _out(names)


@xenstore_app.command("write")
def write(pairs: Annotated[list[str], typer.Argument(help="PATH VALUE [PATH VALUE ...]",
                                                     show_default=False)],
          as_json: Json = False, connect: Connect = None, xenstored: XenStored = None,
          timeout: Timeout = 5.0) -> None:
    """Write each VALUE to its PATH (created with its parents, as xenstore-write does)."""
    if len(pairs) % 2:
        raise UsageError("write takes PATH VALUE pairs")
    writes = [(_check(p), v) for p, v in zip(pairs[::2], pairs[1::2], strict=True)]
    with _xs(connect, xenstored, timeout) as xs:
        for path, value in writes:
            xs.write(path, value)
    if as_json:
        emit_json({"written": [{"path": p, "value": v} for p, v in writes]})


@xenstore_app.command("rm")
def rm(paths: Paths, as_json: Json = False, connect: Connect = None,
       xenstored: XenStored = None, timeout: Timeout = 5.0) -> None:
    """Remove each PATH and everything below it."""
    with _xs(connect, xenstored, timeout) as xs:
        for path in paths:
            xs.rm(_check(path))
    if as_json:
        emit_json({"removed": paths})


@xenstore_app.command("watch")
def watch(
    path: Annotated[str, typer.Argument(help="Path to watch (and its subtree).")],
    count: Annotated[int | None, typer.Option("--count", "-n", min=1,
                                              help="Stop after this many events.")] = None,
    duration: Annotated[float | None, typer.Option(
        "--for", min=0.1, help="Stop this many seconds after the watch is set.")] = None,
    as_json: Json = False, connect: Connect = None, xenstored: XenStored = None,
    timeout: Timeout = 5.0,
) -> None:
    """Print the path of each event (the first fires at once), as xenstore-watch does; with
    --json one JSON object per line and event."""
    seen = 0
    with _xs(connect, xenstored, timeout) as xs, \
            xs.watch(_check(path), timeout=None) as w:
        deadline = None if duration is None else time.monotonic() + duration  # once watching
        while count is None or seen < count:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            try:
                event = w.get(left)
            except XenStoreTimeout:
                break  # --for ran out
            except XenStoreUnavailable:
                raise XenStoreUnavailable(f"the xenstored at {xs.path} went away while "
                                          f"watching {path} (after {seen} event(s))") from None
            if as_json:
                emit_json({"event": escape_value(event.path)}, indent=None)
                sys.stdout.flush()
            else:
                print(escape_value(event.path), flush=True)
            seen += 1
