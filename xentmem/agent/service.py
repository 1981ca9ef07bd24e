"""The agent as a guest's service: :func:`serve` runs an :class:`~xentmem.agent.Agent` until
SIGTERM or ^C (the balloon given back to dom0's target on the way out), :func:`unit_text` is its
systemd unit, and :func:`main` is the command line of the single-file agent built by
:mod:`xentmem.agent.pyz` (argparse: that file carries no package but pyxs).

Like everything the single-file agent imports: standard library only, and Python 3.9-safe
(annotations are strings; no ``X | Y`` outside them, no ``match``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from xentmem import __version__
from xentmem.errors import XentmemError
from xentmem.xenstore import XenStoreClient

from .agent import Agent, Report
from .sinks import SysfsSink

__all__ = ["UNIT_NAME", "main", "once_row", "serve", "unit_text"]

UNIT_NAME = "xentmem-agent.service"
_PROG = "xentmem-agent.pyz"
_DEFAULTS = {"sysfs_root": "/", "stats_interval": 5.0, "timeout": 5.0}


def serve(agent: Agent) -> None:
    """Run ``agent`` in this thread until SIGTERM (a clean return) or ^C (``KeyboardInterrupt``
    after the same clean close): either way a balloon the agent was moving goes back to dom0's
    ``memory/target`` first."""
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main_thread else None
    if main_thread:
        signal.signal(signal.SIGTERM, lambda *_: agent.request_stop())
    try:
        agent.run()
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def unit_text(exec_start: Sequence[str]) -> str:
    """The systemd unit that runs the agent as ``exec_start`` (``xentmem-agent.service``)."""
    return f"""\
# {UNIT_NAME}: the xentmem guest agent (dom0's tmem and self-balloon requests, control/ in
# xenstore, applied in this guest; data/tmem/ reports back). Install:
#   cp THIS /etc/systemd/system/{UNIT_NAME} && systemctl enable --now {UNIT_NAME.split('.')[0]}
[Unit]
Description=xentmem guest agent (tmem and self-ballooning, driven by dom0 through xenstore)
# a Xen domain with a xenbus device (xenfs on older guests mounts /proc/xen)
ConditionPathExists=|/dev/xen/xenbus
ConditionPathExists=|/proc/xen/xenbus
After=local-fs.target proc-xen.mount

[Service]
Type=simple
ExecStart={shlex.join(exec_start)}
# SIGTERM: the agent gives the balloon back to dom0's memory/target, then exits 0
KillMode=mixed
TimeoutStopSec=30
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
"""


def once_row(report: Report) -> dict[str, object]:
    """What ``run --once`` prints: the request answered, its outcome, the applied values."""
    return {"request": report.seq, "state": report.state, "reason": report.reason,
            **{f"applied_{k}": v for k, v in report.applied.items()}}


def _seconds(lo: float, hi: float):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text} is not in [{lo:g}, {hi:g}]")
        return value
    return parse


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="The xentmem guest agent: watches control/ in this domain's "
        "xenstore home, applies it to the kernel's sysfs knobs (or, without a self-balloon "
        "driver, runs the self-balloon law itself), publishes data/tmem/. Stop it with SIGTERM.")
    p.add_argument("command", nargs="?", choices=["run"], default="run",
                   help="run the agent (the default)")
    p.add_argument("--xenstored", metavar="PATH",
                   help="xenstored socket (default: $XENSTORED_PATH, the local xenstored, "
                   "else this domain's xenbus device, /dev/xen/xenbus)")
    p.add_argument("--sysfs-root", metavar="DIR", default=_DEFAULTS["sysfs_root"],
                   help="directory holding sys/ and proc/ (default: /)")
    p.add_argument("--stats-interval", metavar="S", type=_seconds(0.1, 3600),
                   default=_DEFAULTS["stats_interval"],
                   help="seconds between counter and heartbeat updates (default: 5)")
    p.add_argument("--timeout", metavar="S", type=_seconds(0.1, 600),
                   default=_DEFAULTS["timeout"], help="seconds per xenstore call (default: 5)")
    p.add_argument("--once", action="store_true",
                   help="apply control/ once, publish data/tmem, print the outcome, exit "
                   "(1 if refused)")
    p.add_argument("--json", action="store_true", help="with --once: print JSON")
    p.add_argument("--print-unit", action="store_true",
                   help=f"print a systemd unit ({UNIT_NAME}) running this agent with these "
                   "options, and exit")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("--version", action="version", version=f"%(prog)s (xentmem {__version__})")
    return p


def _passed_on(args: argparse.Namespace) -> list[str]:
    """The options of ``args`` a unit's ExecStart repeats (those not at their default)."""
    out: list[str] = []
    if args.xenstored is not None:
        out += ["--xenstored", args.xenstored]
    for name in ("sysfs_root", "stats_interval", "timeout"):
        value = getattr(args, name)
        if value != _DEFAULTS[name]:
            out += [f"--{name.replace('_', '-')}", f"{value:g}" if isinstance(value, float)
                    else str(value)]
    return out


def main(argv: Sequence[str] | None = None, *, program: Sequence[str] | None = None) -> int:
    """The single-file agent's command line; the exit status. ``program`` is how the unit's
    ExecStart starts this agent (default: this Python and ``sys.argv[0]``, made absolute)."""
    if program is None:
        program = [sys.executable, os.path.abspath(sys.argv[0])]
    args = _parser(os.path.basename(program[-1]) or _PROG).parse_args(argv)
    if args.print_unit:
        sys.stdout.write(unit_text([*program, "run", *_passed_on(args)]))
        return 0
    root = Path(args.sysfs_root)
    if not (root / "sys").is_dir():
        print(f"error: {root}/sys is not a directory (see --sysfs-root)", file=sys.stderr)
        return 2
    try:
        return _run(args, root)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (XentmemError, OSError, TimeoutError) as exc:
        if args.debug:
            raise
        print(f"error: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}",
              file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, root: Path) -> int:
    xs = XenStoreClient(args.xenstored, timeout=args.timeout)
    agent = Agent(xs, SysfsSink(root), stats_interval=args.stats_interval,
                  heartbeat=not args.once)
    try:
        if args.once:
            row = once_row(agent.reconcile())
            if args.json:
                print(json.dumps(row, indent=2))
            else:
                for key, value in row.items():
                    print(f"{key}: {'' if value is None else value}")
            return 1 if row["state"] == "refused" else 0
        logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                            format="%(asctime)s %(name)s: %(message)s")
        logging.getLogger("xentmem.agent").info("serving %s via %s", root, xs.path)
        serve(agent)
        return 0
    finally:
        xs.close()
