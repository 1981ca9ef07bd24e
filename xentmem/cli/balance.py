"""``xentmem balance ...``: the host memory manager -- every guest's memory target decided from
dom0, each decision with its one-line reason.

``plan`` runs one dry round; ``run`` keeps balancing (a live table on a terminal, a log line per
change otherwise, and always a line when it stops acting on a guest); ``explain`` shows one
guest's last decisions and the inputs behind them; ``set`` stores a guest's floor, ceiling,
opt-out and priority; ``compare`` scores the policies on fresh living emulated hosts.

The host is chosen with ``-c URI`` as for every command: a real host needs libvirt (its memory
and domains), an emulated one is the daemon of ``xentmem emulator up``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from xentmem.cli._app import UsageError, check_writable, sub_app
from xentmem.cli._connect import Target, resolve_target
from xentmem.cli._options import Connect, Json, LibvirtUri, Timeout, XenStored
from xentmem.cli._render import progress, render, say
from xentmem.cli.guest import open_host
from xentmem.errors import TmemError, TransportError, XentmemError

if TYPE_CHECKING:
    from xentmem.balance.manager import Manager, Round

__all__ = ["balance_app"]

balance_app = sub_app("balance")

POLICY_NAMES = ("qmemman", "mom", "tmem")  # xentmem.balance.POLICIES, without importing it
Policy = Annotated[str, typer.Option("--policy", "-p", help="qmemman (proportional, donors "
                                     "first), mom (shrink under host pressure) or tmem (ours: "
                                     "committed memory, tmem as the overflow).")]
Dom = Annotated[str, typer.Argument(help="Domain name or id.", show_default=False)]
LogFile = Annotated[Path | None, typer.Option(
    "--log", metavar="FILE", show_default=False,
    help="The decision log (JSON lines) `run` appends to and `explain` reads (default: "
    "$XENTMEM_BALANCE_LOG, else balance.jsonl in the emulator's state directory or "
    "~/.local/state/xentmem).")]
LOG_ENV = "XENTMEM_BALANCE_LOG"
LOG_MAX_BYTES = 8 << 20  # then the log moves to FILE.1 (one old file kept)
_TABLE = ["name", "memory_mib", "target_mib", "reason"]  # fits 80 columns; --json has all


def _policy(name: str) -> str:
    if name not in POLICY_NAMES:
        raise UsageError(f"unknown policy {name!r}: one of {', '.join(POLICY_NAMES)}")
    return name


def _log_path(target: Target, given: Path | None) -> Path:
    if given is not None:
        return given
    if os.environ.get(LOG_ENV):
        return Path(os.environ[LOG_ENV])
    if target.state_dir is not None:
        return Path(target.state_dir) / "balance.jsonl"
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "xentmem" / "balance.jsonl"


class _Log:
    """Appends decision records to the log file, one JSON object a line, rotated at
    :data:`LOG_MAX_BYTES`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, record: dict[str, Any]) -> None:
        with contextlib.suppress(FileNotFoundError):
            if self.path.stat().st_size > LOG_MAX_BYTES:
                self.path.replace(self.path.with_name(self.path.name + ".1"))
        stamped = {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record}  # the wall clock
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(stamped) + "\n")


@contextmanager
def _manager(connect: str | None, xenstored: str | None, libvirt_uri: str | None,
             timeout: float, **options: Any) -> Iterator[Manager]:
    """A :class:`Manager` over the host ``-c`` names: its memory from libvirt (real host) or
    the emulator daemon's host API, tmem control through its hypervisor when it has one."""
    from xentmem.balance.collect import Collector, daemon_memory, libvirt_memory
    from xentmem.balance.manager import Manager
    from xentmem.hypercalls import Tmem

    target = resolve_target(connect, xenstored=xenstored, libvirt_uri=libvirt_uri)
    hv = None
    with contextlib.ExitStack() as stack:
        if target.hypervisor_uri is not None:
            with contextlib.suppress(TransportError):  # no privcmd here: no tmem control
                hv = target.open_hypervisor()
                stack.callback(hv.close)
        host = stack.enter_context(open_host(target, timeout))
        if host.libvirt is not None:
            memory = libvirt_memory(host.libvirt)
        elif hv is not None and hasattr(hv, "control"):
            memory = daemon_memory(hv)
        else:
            raise UsageError(f"{target.uri or 'this host'}: balancing needs the host's memory: "
                             "libvirt (-c xen:///system) or the emulator daemon (-c emulator)")
        tmem = None
        if hv is not None:
            with contextlib.suppress(TmemError, TransportError):
                tmem = Tmem(hv)
        manager = Manager(host, Collector(host, memory, tmem=tmem), tmem=tmem, **options)
        try:
            yield manager
        finally:
            manager.close()


def _plan_rows(r: Round) -> list[dict[str, Any]]:
    """Terminal rows: the target as ``now -> proposed`` (one number when it stays)."""
    rows = []
    for d in r.plan.decisions:
        row = d.row()
        if row["current_mib"] != row["target_mib"]:
            row["target_mib"] = f"{row['current_mib']} -> {row['target_mib']}"
        rows.append(row)
    return rows


@balance_app.command("plan")
def plan_(policy: Policy = "tmem", as_json: Json = False, connect: Connect = None,
          xenstored: XenStored = None, libvirt_uri: LibvirtUri = None,
          timeout: Timeout = 5.0) -> None:
    """One round, dry run: every guest's current and proposed target and the reason."""
    with _manager(connect, xenstored, libvirt_uri, timeout, policy=_policy(policy),
                  act=False) as manager:
        r = manager.round()
    data = {**r.plan.as_dict(), "host_free_mib": r.host.free_kib // 1024,
            "reserve_mib": r.host.reserve_kib // 1024}
    if as_json:
        render(data, as_json=True)
        return
    render(_plan_rows(r), as_json=False, columns=_TABLE,
           title=f"balance plan ({policy}): host {data['host_free_mib']} MiB free, "
           f"guests may hold {data['budget_mib']} MiB")
    if r.plan.tmem:
        render([a.row() for a in r.plan.tmem], as_json=False, title="tmem requests")
    if r.plan.note:
        say(r.plan.note)


def _table(r: Round, policy: str, rounds: int) -> Any:
    from rich.table import Table

    table = Table(title=f"balance run ({policy}), round {rounds} at {time.strftime('%H:%M:%S')}"
                  f": host {r.host.free_kib // 1024} MiB free", title_justify="left")
    for col in _TABLE:
        table.add_column(col)
    for d, row in zip(r.plan.decisions, _plan_rows(r), strict=True):
        table.add_row(*("-" if row[c] is None else str(row[c]) for c in _TABLE),
                      style=None if d.managed else "yellow")
    return table


@balance_app.command("run")
def run(policy: Policy = "tmem",
        interval: Annotated[float, typer.Option("--interval", min=0.1, max=3600,
                                                help="Seconds between rounds.")] = 5.0,
        for_: Annotated[float | None, typer.Option("--for", min=0, show_default=False,
                                                   help="Stop after this many seconds "
                                                   "(default: until interrupted).")] = None,
        take_over: Annotated[bool, typer.Option(
            "--take-over", help="Turn self-ballooning off in guests that do it, and manage "
            "them (else they are left alone: they set their own targets).")] = False,
        follow_timeout: Annotated[float, typer.Option(
            "--follow-timeout", min=0.1, max=3600, help="Seconds a guest has to shrink toward "
            "its target before it is marked uncooperative.")] = 30.0,
        retry: Annotated[float, typer.Option(
            "--retry", min=0, max=86400, help="Seconds an uncooperative guest is left alone "
            "before it is tried again.")] = 300.0,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Decide, change nothing.")]
        = False,
        log: LogFile = None, connect: Connect = None, xenstored: XenStored = None,
        libvirt_uri: LibvirtUri = None, timeout: Timeout = 5.0) -> None:
    """Keep balancing: a live table on a terminal, one line per change otherwise; a line
    whenever it stops (or starts again) acting on a guest."""
    from rich.live import Live

    console = Console(highlight=False, soft_wrap=True)
    target = resolve_target(connect, xenstored=xenstored, libvirt_uri=libvirt_uri)
    writer = _Log(_log_path(target, log))
    with _manager(connect, xenstored, libvirt_uri, timeout, policy=_policy(policy),
                  follow_timeout_s=follow_timeout, retry_s=retry, act=not dry_run,
                  take_over=take_over, log=writer) as manager:
        live = Live(console=console, auto_refresh=False) if console.is_terminal else None
        end = None if for_ is None else time.monotonic() + for_
        rounds = 0
        try:
            with live or contextlib.nullcontext():
                while True:
                    started = time.monotonic()
                    try:
                        r = manager.round()
                    except XentmemError as exc:  # the host went away a moment: say so, go on
                        console.print(f"{time.strftime('%H:%M:%S')} round failed: {exc}")
                    else:
                        rounds += 1
                        for line in r.events:
                            console.print(f"{time.strftime('%H:%M:%S')} {line}", markup=False)
                        if live is not None:
                            live.update(_table(r, policy, rounds), refresh=True)
                    left = None if end is None else end - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    pause = max(interval - (time.monotonic() - started), 0)
                    time.sleep(pause if left is None else min(pause, left))
        except KeyboardInterrupt:
            console.print(f"balance: interrupted after {rounds} round(s); every target stays "
                          "where it is")
            raise
        console.print(f"balance: stopped after {rounds} round(s); every target stays where it "
                      f"is{' (dry run: nothing was changed)' if dry_run else ''}")


@balance_app.command("explain")
def explain(dom: Dom, policy: Policy = "tmem",
            last: Annotated[int, typer.Option("--last", min=1, max=1000,
                                              help="How many logged decisions.")] = 5,
            log: LogFile = None, as_json: Json = False, connect: Connect = None,
            xenstored: XenStored = None, libvirt_uri: LibvirtUri = None,
            timeout: Timeout = 5.0) -> None:
    """One guest: its last decisions (from the log of `balance run`) and, now, the decision
    a round would make with every input behind it."""
    target = resolve_target(connect, xenstored=xenstored, libvirt_uri=libvirt_uri)
    with _manager(connect, xenstored, libvirt_uri, timeout, policy=_policy(policy),
                  act=False) as manager:
        domid = _find(manager, dom)
        manager.round()
        now = manager.history[domid][-1]
    logged = _read_log(_log_path(target, log), domid, now["name"], last)
    if as_json:
        render({"now": now, "logged": logged}, as_json=True)
        return
    say(f"{now['name']} (domain {domid}) with policy {policy}: "
        f"{now['current_mib']} -> {now['target_mib']} MiB")
    say(f"  why: {now['reason']}")
    render(now["inputs"], as_json=False, title="inputs now")
    if logged:
        render([{k: r.get(k) for k in ("at", "policy", "acted", "current_mib",
                                       "target_mib", "reason")} for r in logged],
               as_json=False, title=f"last {len(logged)} logged decision(s)")
    else:
        say("no decisions logged for it yet ('xentmem balance run' logs them)")


def _find(manager: Manager, dom: str) -> int:
    try:
        info = manager.host.guest(dom)
    except LookupError as exc:
        raise UsageError(str(exc)) from None
    if info.domid is None:
        raise UsageError(f"domain {info.name} is not running")
    return info.domid


def _read_log(path: Path, domid: int, name: str, last: int) -> list[dict[str, Any]]:
    """The last ``last`` records of one guest (matched by id and name: ids are reused)."""
    found: list[dict[str, Any]] = []
    with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8") as f:
        for line in f:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("domid") == domid and record.get("name") == name:
                    found.append(record)
    return found[-last:]


@balance_app.command("set")
def set_(dom: Dom,
         floor: Annotated[int | None, typer.Option("--floor", min=1, metavar="MiB",
                                                   help="Never below this.",
                                                   show_default=False)] = None,
         ceiling: Annotated[int | None, typer.Option("--ceiling", min=1, metavar="MiB",
                                                     help="Never above this.",
                                                     show_default=False)] = None,
         opt_out: Annotated[bool | None, typer.Option(
             "--opt-out/--opt-in", help="Leave this guest alone / balance it.",
             show_default=False)] = None,
         priority: Annotated[int | None, typer.Option("--priority", min=1, max=100,
                                                      help="Its weight in shares (default "
                                                      "10).", show_default=False)] = None,
         clear: Annotated[bool, typer.Option("--clear", help="Drop every setting first.")]
         = False,
         as_json: Json = False, connect: Connect = None, xenstored: XenStored = None,
         libvirt_uri: LibvirtUri = None, timeout: Timeout = 5.0) -> None:
    """Store a guest's floor, ceiling, opt-out and priority (libvirt metadata on a real host,
    memory/dynamic-min|max and memory/balance-* in xenstore on an emulated one)."""
    from dataclasses import replace

    from xentmem.balance.model import Settings
    from xentmem.balance.settings import read_settings, write_settings

    target = resolve_target(connect, xenstored=xenstored, libvirt_uri=libvirt_uri)
    with open_host(target, timeout) as host:
        info = host.guest(dom)
        if info.domid is None:
            raise UsageError(f"domain {info.name} is not running")
        old = Settings() if clear else read_settings(host, info.domid, info.name)
        changes: dict[str, Any] = {}
        if floor is not None:
            changes["floor_kib"] = floor * 1024
        if ceiling is not None:
            changes["ceiling_kib"] = ceiling * 1024
        if opt_out is not None:
            changes["opt_out"] = opt_out
        if priority is not None:
            changes["priority"] = priority
        new = replace(old, **changes)
        write_settings(host, info.domid, info.name, new)  # ValueError: exit 2, nothing written
        stored = read_settings(host, info.domid, info.name)
    render({"domid": info.domid, "name": info.name, **stored.row()}, as_json=as_json,
           title="balance settings")


# the compare table's columns on a terminal: (key of Comparison.rows(), header); fits 80 columns
_COMPARE = (("policy", "policy"), ("saved_gib_h", "saved"), ("shortfall_gib_h", "short"),
            ("below_need_s", "below"), ("swap_ins", "swapin"), ("swap_ins_disk", "disk"),
            ("refaults", "refault"), ("tmem_hits", "hits"), ("fairness", "fair"),
            ("net_gib_h", "net"))


def _compare_table(rows: list[dict[str, Any]], title: str) -> None:
    render(rows, as_json=False, title=title, columns=[key for key, _ in _COMPARE],
           headers=dict(_COMPARE))
    say("ranked by net = saved - short (GiB-hours); below: guest-seconds below need; swap-ins "
        "(disk: from the swap disk), refaults and tmem hits in pages")


@balance_app.command("compare")
def compare_(guests: Annotated[str, typer.Option(
                 "--guests", help="Workloads, one guest each: web, db, batch, idle, or "
                 "Nxworkload.")] = "web,db,batch,idle,web,db",
             for_: Annotated[float, typer.Option("--for", min=1, max=86400,
                                                 help="Model seconds per run.")] = 600.0,
             interval: Annotated[float, typer.Option("--interval", min=0.5, max=600,
                                                     help="Model seconds between rounds.")]
             = 5.0,
             memory: Annotated[int, typer.Option("--memory", min=64, max=4096,
                                                 help="MiB per guest at boot.")] = 128,
             host_mb: Annotated[int | None, typer.Option(
                 "--host-mb", min=256, max=1 << 20, show_default=False,
                 help="Host memory (default: the guests' + 25 % + dom0).")] = None,
             policies: Annotated[list[str] | None, typer.Option(
                 "--policy", "-p", help="A policy to run (repeatable; default all three).",
                 show_default=False)] = None,
             html: Annotated[Path | None, typer.Option("--html", metavar="FILE",
                                                       help="Write the HTML report here.",
                                                       show_default=False)] = None,
             series: Annotated[bool, typer.Option("--series",
                                                  help="With --json: every raw series too.")]
             = False,
             as_json: Json = False) -> None:
    """Run the same workloads on a fresh living emulated host once per policy and once with
    static allocation; score memory saved, guest pain, tmem hits and fairness."""
    from xentmem.balance.compare import CompareSpec, compare, parse_guests

    check_writable(html, "--html")

    try:
        spec = CompareSpec(parse_guests(guests), memory_mb=memory, host_mb=host_mb,
                           duration_s=for_, interval_s=interval)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    chosen = tuple(_policy(p) for p in policies) if policies else POLICY_NAMES
    order = ("static", *chosen)
    with progress(f"{len(order)} runs of {for_:g} model s", total=len(order) * for_) as update:
        result = compare(spec, chosen,
                         on_round=lambda p, now: update(order.index(p) * for_ + now))
    if html is not None:
        from xentmem.balance.report import write_html

        write_html(html, result)
    if as_json:
        render(result.as_dict(series=series), as_json=True)
        return
    _compare_table(result.rows(), f"balance compare: {len(spec.guests)} guest(s) ({guests}), "
                   f"{for_:g} s, host {spec.host_memory_mb} MiB")
    if html is not None:
        say(f"report: {html}")
