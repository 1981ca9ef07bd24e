"""``xentmem status``: the host in one screen: where it is, its memory, tmem state per guest."""

from __future__ import annotations

from rich.console import Console

from xentmem.cli._app import app
from xentmem.cli._render import render
from xentmem.cli.guest import Json, LibvirtUri, Timeout, XenStored, open_host, render_guests

__all__ = ["status"]


@app.command()
def status(as_json: Json = False, xenstored: XenStored = None, libvirt_uri: LibvirtUri = None,
           timeout: Timeout = 5.0) -> None:
    """Host summary: domains, memory, and each guest's tmem / agent state."""
    with open_host(xenstored, libvirt_uri, timeout) as host:
        summary = host.summary()
    if as_json:
        render(summary, as_json=True)
        return
    h = summary["host"]
    where = h["libvirt"] or h["xenstore"]
    memory = (f", {h['memory_mib']} MiB ({h['free_mib']} MiB free)"
              if "memory_mib" in h else "")
    Console(highlight=False, soft_wrap=True).print(
        f"[bold]{h['kind']} host[/bold] {where}{memory}: {summary['domains']} domain(s), "
        f"{summary['assigned_mib']} MiB assigned, {summary['agents']} agent(s) reporting")
    render_guests(summary["guests"], as_json=False)
