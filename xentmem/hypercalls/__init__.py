"""The hypercall layer: one ``Hypervisor`` seam, its transports, and the typed ``Tmem`` client.

Transports (chosen at the edge, never by a global switch):

- ``PrivcmdHypervisor``: a real Xen host through ``/dev/xen/privcmd``;
- ``xentmem.emulator.transport.EmulatedHypervisor``: the in-process emulator;
- ``xentmem.hypercalls.socket.SocketHypervisor``: the emulator daemon over a unix socket.
"""

from xentmem.hypercalls._base import Buffer, Frame, Frames, Hypervisor
from xentmem.hypercalls.privcmd import PrivcmdHypervisor
from xentmem.hypercalls.tmem import ALL_CLIENTS, ClientImage, PoolImage, Tmem, xen_version

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
