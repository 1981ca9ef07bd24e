"""``xentmem bench guest``: frontswap throughput with and without a backend, and drain time."""

from __future__ import annotations

from typing import Annotated

import typer

from xentmem.abi import XenVersion
from xentmem.cli._app import UsageError
from xentmem.cli._options import Json
from xentmem.cli._render import progress, render
from xentmem.cli.bench import bench_app

__all__ = ["guest"]


@bench_app.command("guest")
def guest(
    pages: Annotated[int, typer.Option("--pages", "-n", help="Pages per run (>= 100).")] = 20000,
    drain_pages: Annotated[int | None, typer.Option(
        "--drain-pages", help="Pages to drain on unload (default: --pages).")] = None,
    xen_version: Annotated[str, typer.Option("--xen-version", help="Imitated Xen.")] = "4.12",
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Timed rounds (best kept).")] = 3,
    as_json: Json = False,
) -> None:
    """frontswap store+load pages/s with no backend (the fast path), zcache and tmem on the
    emulator; the cost of one store call; the time to drain N pages when tmem unloads."""
    if pages < 100 or (drain_pages is not None and drain_pages < 100):
        raise UsageError("--pages and --drain-pages must be at least 100")
    try:
        XenVersion.parse(xen_version)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    from xentmem.emulator.bench_guest import bench_guest

    with progress(f"bench guest: {rounds} round(s) of {pages} pages"):
        rows = [r.as_dict() for r in bench_guest(pages, rounds=rounds,
                                                 xen_version=xen_version,
                                                 drain_pages=drain_pages)]
    render(rows, as_json=as_json, title="guest model: frontswap data path and unload drain",
           columns=["case", "pages", "seconds", "pages_per_s", "ns_per_call"])
