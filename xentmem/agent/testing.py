"""An emulated guest wired to our xenstored the way a real one is to Xen's (tests, the daemon).

``EmulatedGuest(server, host, "web", 128, 256)`` creates the domain on the
:class:`~xentmem.emulator.EmulatedHost`, introduces it to the
:class:`~xentmem.xenstore.XenStoreServer` (which lays out ``/local/domain/N`` as libxl does),
boots a :class:`~xentmem.guest.Guest` with the ``tmem`` backend on that domain, connects to the
domain's own xenstore socket *as the guest*, feeds ``memory/target`` to its balloon driver and
runs the :class:`~xentmem.agent.Agent` on it. With ``sysfs_root`` the agent drives a sysfs tree
mirrored from the model there (as on a real guest) instead of the model itself.
"""

from __future__ import annotations

import os
from pathlib import Path

from xentmem.emulator import EmulatedHost
from xentmem.emulator.transport import EmulatedHypervisor
from xentmem.guest import Guest, SysfsView, XenTmem
from xentmem.hypercalls import Tmem
from xentmem.xenstore import XenStoreClient, XenStoreServer

from .agent import Agent
from .sinks import ModelSink, Sink, SysfsSink
from .target import XenStoreTargetSource

__all__ = ["EmulatedGuest"]


class EmulatedGuest:
    """One guest of an emulated host, with its xenstore connection, balloon watch and agent.
    ``start()`` runs the agent thread; ``close()`` stops everything it started."""

    def __init__(self, server: XenStoreServer, host: EmulatedHost, name: str,
                 memory_mb: int = 128, max_memory_mb: int | None = None, *,
                 sysfs_root: str | os.PathLike[str] | None = None,
                 stats_interval: float = 5.0, timeout: float = 5.0) -> None:
        max_memory_mb = memory_mb if max_memory_mb is None else max_memory_mb
        self.domid = host.create_domain(name, memory_mb, max_memory_mb)
        server.introduce_domain(self.domid, name, memory_mb * 1024, max_memory_mb * 1024)
        self.guest = Guest(name, memory_mb=memory_mb, max_memory_mb=max_memory_mb)
        self.guest.load_backend(XenTmem(Tmem(EmulatedHypervisor(host, self.domid),
                                             version=host.version)))
        self.xs = XenStoreClient(server.domain_socket(self.domid), timeout=timeout)
        self.target = XenStoreTargetSource(self.xs)
        self.guest.attach_target(self.target)
        sink: Sink
        if sysfs_root is None:
            sink = ModelSink(self.guest)
        else:
            sink = SysfsSink(SysfsView(self.guest).mirror(Path(sysfs_root)))
        self.sink = sink
        self.agent = Agent(self.xs, sink, stats_interval=stats_interval)

    def start(self) -> EmulatedGuest:
        """Start the agent and wait (bounded) for its first report."""
        self.agent.start(wait=self.xs.timeout)
        return self

    def close(self) -> None:
        self.agent.request_stop()
        self.target.request_stop()
        self.xs.close()  # wakes both watchers at once
        self.agent.stop()
        self.target.close()

    def __enter__(self) -> EmulatedGuest:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
