"""``xentmem agent run``: the guest agent (inside a guest, or as domain N of our xenstored).

It talks to one xenstored, the one ``-c`` names (``xentmem.cli._connect``): inside a real guest
(no ``-c``) the guest's xenbus device, found as the C tools find it; ``-c emulator:DIR?domid=N``
(or ``-c emulator:DIR --domid N``) the emulator's xenstored as domain N, its socket
``DIR/xenstore.sock.domN``. ``--xenstored PATH`` overrides the xenstored.

``agent run --print-unit`` prints a systemd unit running that command; ``agent build-zipapp
OUT.pyz`` makes the single-file agent for a guest that has Python and nothing else
(:mod:`xentmem.agent.pyz`; it has ``--print-unit`` too).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from xentmem.agent import Agent, SysfsSink
from xentmem.agent.service import once_row, serve, unit_text
from xentmem.cli._app import UsageError, sub_app
from xentmem.cli._connect import resolve_target
from xentmem.cli._options import Connect, Json, Timeout, XenStored
from xentmem.cli._render import render

__all__ = ["agent_app"]

agent_app = sub_app("agent")


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
    timeout: Timeout = 5.0,
    once: Annotated[bool, typer.Option(
        "--once", help="Apply control/ once, publish data/tmem, print the outcome, exit "
        "(1 if refused).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --once: print JSON.")] = False,
    print_unit: Annotated[bool, typer.Option(
        "--print-unit", help="Print a systemd unit running this command (with these options) "
        "and exit.")] = False,
) -> None:
    """Watch control/tmem and control/selfballoon, apply them to sysfs (or run the self-balloon
    law here where the kernel has no self-balloon driver), publish data/tmem."""
    if print_unit:
        typer.echo(unit_text([sys.executable, "-m", "xentmem.agent", "run",
                              *_passed_on(connect, domid, xenstored, sysfs_root,
                                          stats_interval, timeout)]), nl=False)
        return
    if not (sysfs_root / "sys").is_dir():
        raise UsageError(f"{sysfs_root}/sys is not a directory (see --sysfs-root)")
    target = resolve_target(connect, xenstored=xenstored, domid=domid)
    xs = target.xenstore(timeout)
    agent = Agent(xs, SysfsSink(sysfs_root), stats_interval=stats_interval, heartbeat=not once)
    try:
        if once:
            row = once_row(agent.reconcile())
            row["reason"] = row["reason"] or None  # applied: no reason, null
            render(row, as_json=as_json, title="agent")
            if row["state"] == "refused":
                raise typer.Exit(1)
            return
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        logging.getLogger("xentmem.agent").info("serving %s via %s", sysfs_root, xs.path)
        serve(agent)  # until SIGTERM, or interrupted (the edge turns ^C into exit 130)
    finally:
        xs.close()


def _passed_on(connect: str | None, domid: int | None, xenstored: str | None, sysfs_root: Path,
               stats_interval: float, timeout: float) -> list[str]:
    """The options a unit's ExecStart repeats (those given, or not at their default)."""
    out: list[str] = []
    for flag, value, default in (("--connect", connect, None), ("--domid", domid, None),
                                 ("--xenstored", xenstored, None),
                                 ("--sysfs-root", sysfs_root, Path("/")),
                                 ("--stats-interval", stats_interval, 5.0),
                                 ("--timeout", timeout, 5.0)):
        if value is not None and value != default:
            out += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return out


@agent_app.command("build-zipapp")
def build_zipapp(
    out: Annotated[Path, typer.Argument(metavar="OUT.pyz", help="The file to write.")],
    interpreter: Annotated[str, typer.Option(
        help="The #! line's interpreter.")] = "/usr/bin/env python3",
    as_json: Json = False,
) -> None:
    """Build the single-file agent for a guest: pure Python (pyxs inside), no compiled parts;
    in the guest `python3 OUT.pyz run`, `python3 OUT.pyz --print-unit` for its systemd unit."""
    from xentmem.agent.pyz import build_pyz

    info = build_pyz(out, interpreter=interpreter)
    render({"path": str(info.path), "bytes": info.size, "modules": len(info.modules),
            "python": f"{info.python[0]}.{info.python[1]}+",
            "held_back_by": list(info.blockers)}, as_json=as_json, title="single-file agent")
