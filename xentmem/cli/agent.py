"""``xentmem agent run``: the guest agent (inside a guest, or as domain N of our xenstored).

It talks to one xenstored, the one ``-c`` names (``xentmem.cli._connect``): inside a real guest
(no ``-c``) the guest's xenbus device, found as the C tools find it; ``-c emulator:DIR?domid=N``
(or ``-c emulator:DIR --domid N``) the emulator's xenstored as domain N, its socket
``DIR/xenstore.sock.domN``. ``--xenstored PATH`` overrides the xenstored.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from xentmem.agent import Agent, SysfsSink
from xentmem.cli._app import UsageError, app
from xentmem.cli._connect import Connect, XenStored, resolve_target
from xentmem.cli._render import render

__all__ = ["agent_app"]

agent_app = typer.Typer(help="The guest agent: control/ in xenstore -> sysfs -> data/tmem.",
                        no_args_is_help=True)
app.add_typer(agent_app, name="agent")


@agent_app.command("run")
def run(
    connect: Connect = None,
    domid: Annotated[int | None, typer.Option(
        min=1, max=0x7FEF, help="Act as this domain of our xenstored (as -c "
        "emulator:DIR?domid=N does): connect to its per-domain socket, <xenstored>.dom<N>. "
        "Omit inside a real guest.")] = None,
    xenstored: XenStored = None,
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
    target = resolve_target(connect, xenstored=xenstored, domid=domid)
    xs = target.xenstore(timeout)
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
        logging.getLogger("xentmem.agent").info("serving %s via %s", sysfs_root, xs.path)
        agent.run()  # until interrupted (the edge turns ^C into exit 130)
    finally:
        xs.close()
