"""The one seam: the ``Hypervisor`` transport protocol and the memory it hands out.

A hypercall's arguments are addresses in the caller's address space (DESIGN §3). Each transport
therefore also hands out argument memory (``Buffer``: locked process memory on privcmd, emulated
guest memory on the emulator) and page frames of the calling domain (``Frame``: what ``cmfn``
names). The typed client asks its transport for both and never knows which it got.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from xentmem.abi import PAGE_SIZE, XenVersion


@runtime_checkable
class Buffer(Protocol):
    """Memory the hypervisor can read or write at ``address`` (``size`` bytes)."""

    address: int
    size: int

    def write(self, data: bytes, offset: int = 0) -> None: ...

    def read(self, size: int | None = None, offset: int = 0) -> bytes: ...

    def close(self) -> None: ...


@runtime_checkable
class Frame(Protocol):
    """One 4 KiB page of the calling domain; ``number`` is what goes into ``cmfn``."""

    number: int

    def write(self, data: bytes) -> None: ...

    def read(self) -> bytes: ...

    def close(self) -> None: ...


@runtime_checkable
class Hypervisor(Protocol):
    """A way to issue hypercalls as one domain.

    ``hypercall`` returns the non-negative result or raises ``TmemError`` (subclass chosen by
    ``xentmem.errors.tmem_error``) carrying the positive errno.
    """

    def hypercall(self, op: int, *args: int) -> int: ...

    def alloc_buffer(self, size: int) -> Buffer: ...

    def alloc_frame(self) -> Frame: ...

    def close(self) -> None: ...


def check_page(data: bytes) -> bytes:
    """Page data for PUT must be exactly one page."""
    if len(data) != PAGE_SIZE:
        raise ValueError(f"a tmem page is {PAGE_SIZE} bytes, got {len(data)}")
    return bytes(data)


__all__ = ["Buffer", "Frame", "Hypervisor", "XenVersion", "check_page"]
