"""The hypercall layer: one ``Hypervisor`` seam, its transports, and the typed ``Tmem`` client.

Transports (chosen at the edge, never by a global switch):

- ``PrivcmdHypervisor``: a real Xen host through ``/dev/xen/privcmd``;
- ``xentmem.emulator.transport.EmulatedHypervisor``: the in-process emulator;
- ``xentmem.hypercalls.socket.SocketHypervisor``: the emulator daemon over a unix socket.
"""

from xentmem._lazy import lazy_exports

__all__ = [
    "ALL_CLIENTS",
    "Buffer",
    "ClientImage",
    "Frame",
    "Frames",
    "Hypervisor",
    "PoolImage",
    "PrivcmdHypervisor",
    "Tmem",
    "xen_version",
]

# each name's module is imported on first use: importing a submodule (or this package)
# stays light
__getattr__, __dir__ = lazy_exports(__name__, {
    "._base": ("Buffer", "Frame", "Frames", "Hypervisor"),
    ".privcmd": ("PrivcmdHypervisor",),
    ".tmem": ("ALL_CLIENTS", "ClientImage", "PoolImage", "Tmem", "xen_version"),
})
