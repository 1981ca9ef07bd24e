"""The options many commands share, defined once: ``--json``, ``--timeout``, ``--wide``,
``-c/--connect`` and the parts of a host it may override (``--xenstored``, ``--libvirt-uri``)."""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = ["Connect", "Json", "LibvirtUri", "Timeout", "Wide", "XenStored"]

Json = Annotated[bool, typer.Option(
    "--json", help="Print one JSON object (schema in the README); errors as JSON on stderr.")]
Timeout = Annotated[float, typer.Option(
    "--timeout", min=0.1, max=600, help="Seconds per xenstore / libvirt call.")]
Wide = Annotated[bool, typer.Option(
    "--wide", help="A table even when not on a terminal or the terminal is narrow.")]
Connect = Annotated[str | None, typer.Option(
    "--connect", "-c", metavar="URI", show_default=False,
    help="The host: xen:///system (or privcmd[:DEVICE]) for this dom0, "
    "emulator[:STATE_DIR|SOCKET][?domid=N] for the daemon of 'xentmem emulator up' (default: "
    "$XENTMEM_CONNECT; else this dom0 if /dev/xen/privcmd exists, else a daemon running in "
    "the default state directory).")]
XenStored = Annotated[str | None, typer.Option(
    "--xenstored", metavar="PATH", show_default=False,
    help="xenstored socket, overriding the one --connect names.")]
LibvirtUri = Annotated[str | None, typer.Option(
    "--libvirt-uri", metavar="URI", show_default=False,
    help="libvirt URI, overriding the one --connect names (xen:///system on a real host, none "
    "on an emulated one; default: $XENTMEM_LIBVIRT_URI).")]
