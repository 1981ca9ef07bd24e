"""Choosing the hypervisor transport at the edge, from ``--connect URI`` (or $XENTMEM_CONNECT).

``privcmd`` / ``privcmd:/dev/xen/privcmd``: a real Xen host (this domain's privcmd device).
``emulator[:SOCKET|STATE_DIR][?domid=N&timeout=S]``: the daemon of ``xentmem emulator up``
(default: its default state directory), as domain N (default 0).
Other schemes register here with ``TRANSPORTS[scheme] = factory(rest_of_uri)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from xentmem.cli._app import UsageError
from xentmem.hypercalls import Hypervisor, PrivcmdHypervisor
from xentmem.hypercalls.socket import SocketHypervisor

DEFAULT_URI = "privcmd"

TRANSPORTS: dict[str, Callable[[str], Hypervisor]] = {
    "privcmd": lambda rest: PrivcmdHypervisor(rest or None),
}


def _emulator(rest: str) -> Hypervisor:
    try:
        return SocketHypervisor.from_uri(rest)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


TRANSPORTS["emulator"] = _emulator


def resolve_uri(uri: str | None) -> str:
    return uri or os.environ.get("XENTMEM_CONNECT") or DEFAULT_URI


def open_hypervisor(uri: str | None) -> Hypervisor:
    """The transport named by ``uri``; an unknown scheme is a usage error (exit 2)."""
    uri = resolve_uri(uri)
    scheme, _, rest = uri.partition(":")
    factory = TRANSPORTS.get(scheme)
    if factory is None:
        raise UsageError(f"unknown connection {uri!r}: expected one of "
                         + ", ".join(f"{s}[:...]" for s in sorted(TRANSPORTS)))
    return factory(rest)
