"""``xentmem agent run``: the guest agent (inside a guest, or as domain N of our xenstored)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from xentmem.agent import Agent, SysfsSink
from xentmem.cli._app import UsageError, app
from xentmem.cli._render import render
from xentmem.xenstore import XenStoreClient, resolve_path

__all__ = ["agent_app"]

agent_app = typer.Typer(help="The guest agent: control/ in xenstore -> sysfs -> data/tmem.",
                        no_args_is_help=True)
app.add_typer(agent_app, name="agent")


@agent_app.command("run")
def run(
    domid: Annotated[int | None, typer.Option(
        min=1, max=0x7FEF, help="Act as this domain of our xenstored: connect to its "
        "per-domain socket, <--xenstored>.dom<N>. Omit inside a real guest.")] = None,
    xenstored: Annotated[str | None, typer.Option(
        "--xenstored", help="xenstore path (default: $XENSTORED_PATH, $XENSTORED_RUNDIR/socket, "
        "or the guest's /dev/xen/xenbus).")] = None,
    sysfs_root: Annotated[Path, typer.Option(
        "--sysfs-root", help="Directory holding sys/ (a real guest: /).")] = Path("/"),
    stats_interval: Annotated[float, typer.Option(
        min=0.1, max=3600, help="Seconds between counter updates.")] = 5.0,
    timeout: Annotated[float, typer.Option(min=0.1, max=600,
                                           help="Seconds per xenstore call.")] = 5.0,
    once: Annotated[bool, typer.Option(
        "--once", help="Apply control/ once, publish data/tmem, print the outcome, exit "
        "(1 if refused).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --once: print JSON.")] = False,
) -> None:
    """Watch control/tmem and control/selfballoon, apply them to sysfs, publish data/tmem."""
    if not (sysfs_root / "sys").is_dir():
        raise UsageError(f"{sysfs_root}/sys is not a directory (see --sysfs-root)")
    path = xenstored or resolve_path()
    if domid is not None:
        path = f"{path}.dom{domid}"  # XenStoreServer.domain_socket's naming
        if not os.path.exists(path):
            raise UsageError(f"no socket {path}: is domain {domid} introduced to that xenstored?")
    xs = XenStoreClient(path, timeout=timeout)
    agent = Agent(xs, SysfsSink(sysfs_root), stats_interval=stats_interval, heartbeat=not once)
    try:
        if once:
            report = agent.reconcile()
            render({"request": report.seq, "state": report.state, "reason": report.reason,
                    **{f"applied_{k}": v for k, v in report.applied.items()}},
                   as_json=as_json, title="agent")
            if report.state == "refused":
                raise typer.Exit(1)
            return
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        logging.getLogger("xentmem.agent").info("serving %s via %s", sysfs_root, path)
        agent.run()  # until interrupted (the edge turns ^C into exit 130)
    finally:
        xs.close()
