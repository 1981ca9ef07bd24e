"""``xentmem doctor``: is this machine a usable Xen/tmem host?"""

from __future__ import annotations

from typing import Annotated

import typer

from xentmem.cli._app import app
from xentmem.cli._render import render
from xentmem.host.doctor import run_checks


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    privcmd: Annotated[str | None, typer.Option(help="privcmd device to use.")] = None,
    xenstored: Annotated[str | None, typer.Option(
        help="xenstored socket (default: $XENSTORED_PATH, $XENSTORED_RUNDIR/socket).")] = None,
    libvirt_uri: Annotated[str | None, typer.Option(
        "--libvirt-uri", help="libvirt URI (default: $LIBVIRT_DEFAULT_URI or xen:///system).")
    ] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds per network check.")] = 3.0,
) -> None:
    """Check privcmd, the Xen version, tmem, xenstored and libvirt. Always exits 0."""
    checks = run_checks(privcmd_path=privcmd, xenstored=xenstored, libvirt_uri=libvirt_uri,
                        timeout=timeout)
    render([c.as_dict() for c in checks], as_json=as_json, title="xentmem doctor",
           columns=["check", "ok", "status", "detail"])
