"""``xentmem guest ...``: per-guest tmem and self-balloon toggles and memory targets.

The host is chosen at the edge with ``-c URI`` (``xentmem.cli._connect``): its xenstored is
where the agent keys live; a real host's libvirt (``xen:///system``) manages its domains and
memory. An emulated host (``-c emulator[:DIR]``) has no libvirt: it is xenstore-only.
``--xenstored`` and ``--libvirt-uri`` override either part.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from xentmem.cli._app import UsageError, sub_app
from xentmem.cli._connect import Target, resolve_target
from xentmem.cli._options import Connect, Json, LibvirtUri, Timeout, XenStored
from xentmem.cli._render import render
from xentmem.errors import XentmemError
from xentmem.host.guests import GuestInfo, Host, ToggleResult, mib
from xentmem.xenstore.keys import key

__all__ = [
    "guest_app",
    "open_host",
    "render_guests",
]

guest_app = sub_app("guest")

Dom = Annotated[str, typer.Argument(help="Domain name or id.", show_default=False)]


@contextmanager
def open_host(target: Target, timeout: float) -> Iterator[Host]:
    """The :class:`Host` at ``target`` (its xenstored, and its libvirt if any); closed on exit."""
    xs = target.xenstore(timeout)
    lv = None
    if target.libvirt_uri:
        from xentmem.host.libvirt import LibvirtConnection  # libvirt only for a host with it

        lv = LibvirtConnection(target.libvirt_uri, timeout=timeout)
    try:
        yield Host(xs, lv, ack_timeout=timeout)
    except (ValueError, LookupError) as exc:
        if isinstance(exc, XentmemError):  # e.g. XenStoreNotFound: a failure, not bad input
            raise
        raise UsageError(str(exc)) from None  # a bad value or an unknown domain: exit 2
    finally:
        xs.close()
        if lv is not None:
            lv.close()


def _target(connect: str | None, xenstored: str | None, libvirt_uri: str | None) -> Target:
    return resolve_target(connect, xenstored=xenstored, libvirt_uri=libvirt_uri)


def _show(g: GuestInfo) -> dict[str, Any]:
    t = g.tmem
    record: dict[str, Any] = {
        "domid": g.domid, "name": g.name, "state": g.state,
        "memory_mib": mib(g.memory_kib), "target_mib": mib(g.target_kib),
        "max_mib": mib(g.max_kib), "agent": t.status if t else "unknown",
        "sink": t.sink if t else None, "selfballoon_mode": t.mode if t else None,
        "request": t.requested_seq if t else None,
        "answered": t.seq if t else None, "reason": (t.reason or None) if t else None,
        "heartbeat_age_s": t.heartbeat_age_s if t else None,
    }
    if g.metadata is not None:
        record["libvirt_metadata"] = g.metadata
    if g.note:
        record["note"] = g.note
    settings = [] if t is None else [
        {"key": k.name, "requested": t.requested.get(k.name), "applied": t.applied.get(k.name),
         "refused": t.refused.get(k.name)}
        for k in (key(n) for n in t.applied)]
    return {"guest": record, "settings": settings,
            "stats": dict(t.stats) if t else {},
            "balloon": ({n.replace("_kib", "_mib"): mib(v) for n, v in t.balloon.items()}
                        if t else {})}


def _tmem_cell(row: dict[str, Any]) -> str:
    if row["frontswap"] is None and row["cleancache"] is None:
        return "-"  # nobody reported
    return "+".join(n for n in ("frontswap", "cleancache") if row[n]) or "off"


def render_guests(rows: list[dict[str, Any]], *, as_json: bool) -> None:
    """``GuestInfo.row()``s: every field with ``--json``; a table that fits 80 columns."""
    if as_json:
        render(rows, as_json=True, key="guests")
        return
    table = [{"domid": r["domid"], "name": r["name"], "state": r["state"],
              "memory_mib": r["memory_mib"], "tmem": _tmem_cell(r),
              "selfballoon": {None: "-", 0: "off", 1: "on"}.get(r["selfballooning"], "-"),
              "agent": r["agent"]} for r in rows]
    render(table, as_json=False, title="guests",
           columns=["domid", "name", "state", "memory_mib", "tmem", "selfballoon", "agent"],
           headers={"memory_mib": "MiB"})


@guest_app.command("list")
def list_(as_json: Json = False, connect: Connect = None, xenstored: XenStored = None,
          libvirt_uri: LibvirtUri = None,
          timeout: Timeout = 5.0) -> None:
    """Every domain with its memory and tmem state."""
    with open_host(_target(connect, xenstored, libvirt_uri), timeout) as host:
        rows = [g.row() for g in host.guests()]
    render_guests(rows, as_json=as_json)


@guest_app.command("show")
def show(dom: Dom, as_json: Json = False, connect: Connect = None, xenstored: XenStored = None,
         libvirt_uri: LibvirtUri = None, timeout: Timeout = 5.0) -> None:
    """One guest: requested and applied settings, counters, balloon."""
    with open_host(_target(connect, xenstored, libvirt_uri), timeout) as host:
        data = _show(host.guest(dom))
    if as_json:
        render(data, as_json=True)
        return
    render(data["guest"], as_json=False, title=f"guest {data['guest']['name']}")
    if data["settings"]:
        render(data["settings"], as_json=False, title="settings")
    if data["stats"]:
        render({**data["stats"], **{f"balloon_{n}": v for n, v in data["balloon"].items()}},
               as_json=False, title="counters")


def _flag(name: str) -> Any:
    return Annotated[bool | None, typer.Option(f"--{name}/--no-{name}", help=key(name).help,
                                               show_default=False)]


def _knob(name: str) -> Any:
    k = key(name)
    return Annotated[int | None, typer.Option(f"--{name.replace('_', '-')}", min=k.lo, max=k.hi,
                                              help=k.help,
                                              show_default=False)]


@guest_app.command("set")
def set_(dom: Dom,
         frontswap: _flag("frontswap") = None,
         cleancache: _flag("cleancache") = None,
         selfballooning: _flag("selfballooning") = None,
         selfshrinking: _flag("selfshrinking") = None,
         interval: _knob("interval") = None,
         downhysteresis: _knob("downhysteresis") = None,
         uphysteresis: _knob("uphysteresis") = None,
         min_usable_mb: _knob("min_usable_mb") = None,
         reserved_mb: _knob("reserved_mb") = None,
         frontswap_hysteresis: _knob("frontswap_hysteresis") = None,
         frontswap_inertia: _knob("frontswap_inertia") = None,
         clear: Annotated[list[str] | None, typer.Option(
             "--clear", metavar="KEY", help="Withdraw the standing request for KEY (e.g. one "
             "the guest refused); the guest keeps its current value. Repeatable.",
             show_default=False)] = None,
         wait: Annotated[float, typer.Option(min=0, max=600, help="Seconds to wait for the "
                                             "guest agent's answer.")] = 5.0,
         as_json: Json = False, connect: Connect = None, xenstored: XenStored = None,
          libvirt_uri: LibvirtUri = None,
         timeout: Timeout = 5.0) -> None:
    """Request settings for a guest and report applied / pending / refused (exit 1 if the
    guest refused any)."""
    values = {name: value for name, value in (
        ("frontswap", frontswap), ("cleancache", cleancache),
        ("selfballooning", selfballooning), ("selfshrinking", selfshrinking),
        ("interval", interval), ("downhysteresis", downhysteresis),
        ("uphysteresis", uphysteresis), ("min_usable_mb", min_usable_mb),
        ("reserved_mb", reserved_mb), ("frontswap_hysteresis", frontswap_hysteresis),
        ("frontswap_inertia", frontswap_inertia)) if value is not None}
    for name in (n.replace("-", "_") for n in clear or ()):  # reserved-mb is reserved_mb
        if name in values:
            raise UsageError(f"--clear {name} contradicts setting {name}")
        values[name] = None
    if not values:
        raise UsageError("nothing to set: give at least one option (see --help)")
    with open_host(_target(connect, xenstored, libvirt_uri), timeout) as host:
        result = host.set_toggles(dom, values, timeout=wait)
    _report(result, as_json)
    if result.status == "refused":
        raise typer.Exit(1)


def _report(result: ToggleResult, as_json: bool) -> None:
    if as_json:
        render({"domid": result.domid, "name": result.name, "request": result.seq,
                "status": result.status, "reason": result.reason or None,
                "settings": result.rows()},
               as_json=True)
        return
    render(result.rows(), as_json=False, title=f"{result.name}: request {result.seq}",
           columns=["key", "requested", "applied", "status", "reason"])
    colour = {"applied": "green", "pending": "yellow", "refused": "red"}[result.status]
    line = f"[{colour}]{result.status}[/{colour}]"
    if result.reason:
        line += f"  {result.reason}"
    from rich.console import Console  # for a person only: --json stays light

    Console(highlight=False).print(line)


@guest_app.command("memory")
def memory(dom: Dom,
           target: Annotated[int, typer.Option("--target", min=1, help="New balloon target in "
                                               "MiB.", show_default=False)],
           config: Annotated[bool, typer.Option(help="libvirt: also change the persistent "
                                                "definition.")] = False,
           wait: Annotated[float, typer.Option(min=0, max=600, help="Seconds to wait for the "
                                               "guest agent to report the new balloon "
                                               "target.")] = 5.0,
           as_json: Json = False, connect: Connect = None, xenstored: XenStored = None,
          libvirt_uri: LibvirtUri = None,
           timeout: Timeout = 5.0) -> None:
    """Set a guest's memory target (libvirt setMemoryFlags, or memory/target in xenstore) and
    report whether its balloon driver took it (applied / pending; requested if no agent)."""
    with open_host(_target(connect, xenstored, libvirt_uri), timeout) as host:
        result = host.set_memory_target(dom, target * 1024, config=config, wait=wait)
    render({"domid": result.domid, "name": result.name, "target_mib": mib(result.target_kib),
            "previous_mib": mib(result.previous_kib), "via": result.via,
            "status": result.status, "guest_target_mib": mib(result.guest_target_kib),
            "guest_current_mib": mib(result.guest_current_kib),
            "note": result.note}, as_json=as_json, title="memory target")
