"""``xentmem emulator up|down|status|create-domain|destroy-domain``: the emulator daemon."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer
from rich.console import Console

from xentmem.cli._app import UsageError
from xentmem.cli._options import Json
from xentmem.cli._render import render, unit_keys
from xentmem.cli.emulator import emulator_app
from xentmem.errors import EmulatorError, TransportError
from xentmem.host.tmemlist import parse_tmem_list
from xentmem.hypercalls._where import default_state_dir

__all__ = ["create_domain", "destroy_domain", "down", "status", "up"]

State = Annotated[Path | None, typer.Option(
    "--state", help="State directory: sockets, pid, saved host (default $XENTMEM_STATE, "
    "/run/xentmem as root, else $XDG_RUNTIME_DIR/xentmem).", show_default=False)]
Workload = Annotated[list[str] | None, typer.Option(
    "--workload", help="What the guests run: idle, web, db or batch, for all guests or as "
    "N=NAME for guest N (repeat); or a scenario TOML file whose guests to run instead "
    "(default: web, db, batch, idle in turn).", show_default=False)]
Kernel = Annotated[list[str] | None, typer.Option(
    "--kernel", help="Guest kernel release, for all guests or as N=VERSION (repeat): "
    "3.10-5.2 have tmem and self-ballooning, 5.3+ the balloon driver only (default 3.10).",
    show_default=False)]
Bare = Annotated[bool, typer.Option(
    "--bare", help="Plain domains with no guest kernel running in them (drive them "
    "yourself through the hypercall socket).")]


def _per_guest(values: list[str] | None, guests: int, option: str) -> tuple[str, ...]:
    """``["web", "2=db"]`` -> one value per guest 1..N (a bare value applies to all)."""
    default: str | None = None
    chosen: dict[int, str] = {}
    for value in values or ():
        index, sep, rest = value.partition("=")
        if not sep:
            default = value
            continue
        if not index.isdigit() or not 1 <= int(index) <= max(guests, 1) or not rest:
            raise UsageError(f"{option} {value!r}: expected NAME or N=NAME with 1 <= N <= "
                             f"{max(guests, 1)}")
        chosen[int(index)] = rest
    if not chosen and default is None:
        return ()
    return tuple(chosen.get(i, default or "") for i in range(1, guests + 1))


def _check_living(workloads: tuple[str, ...], kernels: tuple[str, ...]) -> None:
    from xentmem.emulator.machine import WORKLOADS
    from xentmem.errors import GuestError
    from xentmem.guest.kernel import Kernel

    for w in workloads:
        if w and w not in WORKLOADS:
            raise UsageError(f"--workload {w!r}: one of {', '.join(WORKLOADS)}, or a scenario "
                             "TOML file for all guests")
    for k in kernels:
        if k:
            try:
                Kernel.parse(k)
            except GuestError as exc:
                raise UsageError(f"--kernel {k!r}: {exc}") from None


def _daemon() -> ModuleType:
    """The daemon's library side, imported when a command needs it (start-up stays light)."""
    from xentmem.emulator import daemon

    return daemon


def _dir(state: Path | None) -> Path:
    directory = (state or default_state_dir()).absolute()
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{'--state ' if state else 'state directory '}{directory} is not a "
                         "directory")
    return directory


def _summary(info: dict[str, Any]) -> dict[str, Any]:
    return {"pid": info["pid"], "xen_version": info["xen_version"],
            "memory_mib": info["memory_mib"], "free_mib": info["free_mib"],
            "domains": " ".join(str(d["domid"]) for d in info["domains"]) or "-",
            "crashed": info["crashed"] or "no",
            "hypercall_socket": info["hypercall_socket"],
            "xenstore_socket": info["xenstore_socket"],
            "connect": f"--connect {info['connect']}  (or XENTMEM_CONNECT={info['connect']})"}


@emulator_app.command()
def up(state: State = None,
       xen_version: Annotated[str | None, typer.Option(
           "--xen-version", help="Xen release to imitate (default 4.12).")] = None,
       memory_mb: Annotated[int | None, typer.Option(
           "--memory-mb", min=16, help="Host memory in MiB (default 2048).")] = None,
       guests: Annotated[int, typer.Option(
           "--guests", min=0, max=64, help="Living guests guest1..N on a new host.")] = 0,
       guest_memory_mb: Annotated[int, typer.Option(
           "--guest-memory-mb", min=16, help="Memory of each new guest (max: twice).")] = 128,
       workload: Workload = None, kernel: Kernel = None, bare: Bare = False,
       speed: Annotated[float, typer.Option(
           "--speed", min=0.01, max=1000, help="Guest clocks run this many times faster "
           "than wall time (demos).")] = 1.0,
       checkpoint_interval: Annotated[float, typer.Option(
           "--checkpoint-interval", min=1, max=3600, help="Seconds between saves of the "
           "running guests (a SIGKILL rewinds them at most this far, losing no page).")] = 30.0,
       tmem_compress: Annotated[bool | None, typer.Option(
           "--tmem-compress/--no-tmem-compress", help="Boot option tmem_compress.",
           show_default=False)] = None,
       designed: Annotated[bool | None, typer.Option(
           "--designed/--as-released", help="Designed behaviour instead of the release's "
           "defects (ref §9).", show_default=False)] = None,
       tmem_dedup: Annotated[bool | None, typer.Option(
           "--tmem-dedup/--no-tmem-dedup", help="Boot option tmem_dedup (Xen 4.0-4.7).",
           show_default=False)] = None,
       tmem_tze: Annotated[bool | None, typer.Option(
           "--tmem-tze/--no-tmem-tze", help="Boot option tmem_tze (Xen 4.0-4.7, with "
           "tmem_dedup).", show_default=False)] = None,
       fresh: Annotated[bool, typer.Option(
           "--fresh", help="Discard the saved host and boot a new one.")] = False,
       recover: Annotated[bool, typer.Option(
           "--recover", help="Saved state is damaged: keep a copy of it, truncate the journal "
           "at its last good record (or boot a new host if the snapshot is unreadable) and "
           "start.")] = False,
       timeout: Annotated[float, typer.Option(
           "--timeout", min=1, help="Seconds to wait for the daemon to serve.")] = 60.0,
       as_json: Json = False) -> None:
    """Start an emulated host in the background (hypercall socket + xenstored); a saved host in
    the state directory comes back with every persistent page."""
    if xen_version is not None:
        from xentmem.abi import XenVersion

        try:
            XenVersion.parse(xen_version)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    scenario = None
    if workload and len(workload) == 1 and workload[0].endswith(".toml"):
        scenario = str(Path(workload[0]).absolute())
        if not Path(scenario).is_file():
            raise UsageError(f"--workload {workload[0]}: no such scenario file")
        workload = None
    workloads = _per_guest(workload, guests, "--workload")
    kernels = _per_guest(kernel, guests, "--kernel")
    _check_living(workloads, kernels)
    config = _daemon().HostConfig(xen_version, memory_mb, tmem_compress, designed, guests,
                               guest_memory_mb, workloads, kernels, bare, speed, scenario,
                               checkpoint_interval, tmem_dedup, tmem_tze)
    info = unit_keys(_daemon().start(_dir(state), config, fresh=fresh, recover=recover,
                                     timeout=timeout))
    if as_json:
        render(info, as_json=True)
        return
    console = Console(highlight=False)
    if info["already_running"]:
        console.print(f"[yellow]already running[/yellow] in {info['state_dir']} "
                      f"(pid {info['pid']}); nothing started")
    else:
        console.print(f"[green]up[/green]: {info['note']}")
    render(_summary(info), as_json=False, title="emulator")
    if info.get("guests"):
        _render_guests(info["guests"])


def _render_guests(guests: list[dict[str, Any]]) -> None:
    rows = [{"dom": g["domid"], "name": g["name"], "kernel": g["kernel"],
             "runs": g["workload"], "MiB": g["memory_mib"], "target": g["target_mib"],
             "tmem": g["tmem_pages"], "swap": g["swap_pages"], "lost": g["lost"],
             "stale": g["stale"], "agent": (g["agent"] or {}).get("state", "-")}
            for g in guests]
    render(rows, as_json=False, title="guests (tmem, swap: pages; lost and stale stay 0)")


@emulator_app.command()
def down(state: State = None,
         timeout: Annotated[float, typer.Option(
             "--timeout", min=0.1, help="Seconds to wait after SIGTERM before SIGKILL.")] = 30.0,
         as_json: Json = False) -> None:
    """Stop the daemon; the host (every persistent page) is saved in the state directory."""
    directory = _dir(state)
    result = _daemon().stop(directory, timeout=timeout)
    if as_json:
        render({"stopped": result is not None, "state_dir": str(directory),
                **(result or {})}, as_json=True)
    elif result is None:
        typer.echo(f"no emulator daemon running in {directory}")
    elif result["killed"]:
        typer.echo(f"emulator daemon (pid {result['pid']}) did not stop within {timeout:g} s "
                   "and was killed; its journal keeps every acknowledged hypercall")
    elif result["saved"]:
        typer.echo(f"emulator daemon (pid {result['pid']}) stopped; state saved in {directory}")
    if result is not None and not result["saved"] and not result["killed"]:
        raise EmulatorError(f"emulator daemon (pid {result['pid']}) stopped but its final "
                            f"snapshot failed ({result['error'] or 'see daemon.log'}); the "
                            f"journal in {directory} still holds every acknowledged call")


def _control(state: Path | None, cmd: str, **args: Any) -> Any:
    directory = _dir(state)
    if _daemon().running(directory) is None:
        raise TransportError(f"no emulator daemon running in {directory} "
                             "(start one with `xentmem emulator up`)")
    return _daemon().control(directory, cmd, **args)


@emulator_app.command()
def status(state: State = None, as_json: Json = False) -> None:
    """The running host: configuration, domains, memory and the tmem summary."""
    info = unit_keys(_control(state, "status"))
    text = info.pop("tmem_list")
    tmem = [r.as_dict() for r in parse_tmem_list(text or "")]
    if as_json:
        render({**info, "tmem": tmem}, as_json=True)
        return
    render(_summary(info), as_json=False, title="emulator")
    if info["domains"]:
        render(info["domains"], as_json=False, title="domains")
    if info.get("guests"):
        _render_guests(info["guests"])
    from xentmem.cli.tmem import render_tmem_records

    render_tmem_records([r for r in tmem if r["kind"] in ("global", "client")])


@emulator_app.command("create-domain")
def create_domain(name: Annotated[str, typer.Argument(help="Domain name.")],
                  memory_mb: Annotated[int, typer.Option("--memory-mb", min=1)] = 128,
                  max_memory_mb: Annotated[int | None, typer.Option(
                      "--max-memory-mb", min=1,
                      help="Default: twice --memory-mb (--memory-mb with --bare).")] = None,
                  workload: Annotated[str, typer.Option(
                      "--workload", help="idle, web, db or batch.")] = "web",
                  kernel: Annotated[str, typer.Option(
                      "--kernel", help="Guest kernel release.")] = "3.10",
                  bare: Bare = False, state: State = None, as_json: Json = False) -> None:
    """Create a guest on the running host (it appears in xenstore, @introduceDomain fires)
    and boot its kernel model with its workload and agent (or a bare domain)."""
    if max_memory_mb is not None and max_memory_mb < memory_mb:
        raise UsageError(f"--max-memory-mb {max_memory_mb} is below --memory-mb {memory_mb}")
    if not bare:
        if memory_mb < 16:
            raise UsageError(f"--memory-mb {memory_mb}: a guest kernel needs at least 16")
        _check_living((workload,), (kernel,))
    result = _control(state, "create_domain", name=name, memory_mb=memory_mb,
                      max_memory_mb=max_memory_mb, workload=workload, kernel=kernel,
                      bare=bare)
    if as_json:
        render(unit_keys(result), as_json=True)
    else:
        typer.echo(f"created domain {result['domid']} ({name})")


@emulator_app.command("destroy-domain")
def destroy_domain(domid: Annotated[int, typer.Argument(min=1, max=0x7FEF, help="Domain id.")],
                   state: State = None, as_json: Json = False) -> None:
    """Destroy a guest (tmem teardown, xenstore release, @releaseDomain fires)."""
    result = _control(state, "destroy_domain", domid=domid)
    if as_json:
        render(result, as_json=True)
    else:
        typer.echo(f"destroyed domain {domid}")
