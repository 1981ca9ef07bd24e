"""``xentmem status``: the host in one screen: where it is, its memory, tmem state per guest."""

from __future__ import annotations

from xentmem.cli._app import sub_app
from xentmem.cli._connect import resolve_target
from xentmem.cli._options import Connect, Json, LibvirtUri, Timeout, XenStored
from xentmem.cli._render import render, say
from xentmem.cli.guest import open_host, render_guests

__all__ = ["status_app"]

status_app = sub_app()


@status_app.command()
def status(as_json: Json = False, connect: Connect = None, xenstored: XenStored = None,
           libvirt_uri: LibvirtUri = None, timeout: Timeout = 5.0) -> None:
    """Host summary: domains, memory, and each guest's tmem / agent state."""
    target = resolve_target(connect, xenstored=xenstored, libvirt_uri=libvirt_uri)
    with open_host(target, timeout) as host:
        summary = host.summary()
    summary["host"] = {"connect": target.uri, **summary["host"]}
    if as_json:
        render(summary, as_json=True)
        return
    h = summary["host"]
    where = h["connect"] or h["libvirt"] or h["xenstore"]
    memory = (f", {h['memory_mib']} MiB ({h['free_mib']} MiB free)"
              if "memory_mib" in h else "")
    say(f"{h['kind']} host {where}{memory}:")
    say(f"{summary['domains']} domain(s), {summary['assigned_mib']} MiB assigned, "
        f"{summary['agents']} agent(s) reporting")
    render_guests(summary["guests"], as_json=False)
