"""Backends: kernel modules that register frontswap and cleancache ops, and (beyond any kernel)
can be unloaded again.

- ``XenTmem``: the Xen tmem shim (``drivers/xen/tmem.c``; ref §3) over a ``Tmem`` client;
- ``Zcache``: a compressed in-guest backend in the spirit of zcache (ref §6), lz4.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from xentmem.guest.guest import Guest

__all__ = ["BackendModule", "UnloadReport", "XenTmem", "Zcache"]


@dataclass(frozen=True)
class UnloadReport:
    """What unloading a backend did: persistent pages written back to their swap slots, pages
    the backend could not return, cleancache pools surrendered, and the time it took."""

    backend: str
    drained: int
    missing: int
    pools_flushed: int
    seconds: float


@runtime_checkable
class BackendModule(Protocol):
    """A loadable backend: ``module_init`` registers its ops with a guest's frontends,
    ``module_exit`` unregisters them (draining frontswap) and releases its pools."""

    name: str

    def module_init(self, guest: Guest) -> None: ...

    def module_exit(self, guest: Guest) -> UnloadReport: ...


from xentmem.guest.backends.tmem import XenTmem  # noqa: E402
from xentmem.guest.backends.zcache import Zcache  # noqa: E402
