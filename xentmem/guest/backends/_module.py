"""What a loadable backend module is, and what unloading one reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from xentmem.guest.guest import Guest

__all__ = ["BackendModule", "UnloadReport"]


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
