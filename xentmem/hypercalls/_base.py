"""The one seam: the ``Hypervisor`` transport protocol and the memory it hands out.

A hypercall's arguments are addresses in the caller's address space (DESIGN §3). Each transport
therefore also hands out argument memory (``Buffer``: locked process memory on privcmd, emulated
guest memory on the emulator) and page frames of the calling domain (``Frame``: what ``cmfn``
names; ``Frames``: a run of them for batched PUT/GET, copied in and out in one go). The typed
client asks its transport for both and never knows which it got.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from xentmem.abi import PAGE_SIZE, XenVersion


@runtime_checkable
class Buffer(Protocol):
    """Memory the hypervisor can read or write at ``address`` (``size`` bytes)."""

    address: int
    size: int

    def write(self, data: bytes, offset: int = 0) -> None: ...

    def read(self, size: int | None = None, offset: int = 0) -> bytes: ...

    def packer(self, layout: struct.Struct) -> Callable[..., None]:
        """A function that writes ``layout.pack(*values)`` at offset 0 in one step (the data
        path's argument struct); ``ValueError`` here if ``layout`` does not fit. The values are
        the caller's to check: a bad one raises ``struct.error`` after some fields went in."""
        ...

    def close(self) -> None: ...


def check_fits(layout: struct.Struct, size: int) -> None:
    """``Buffer.packer``'s check, shared by every transport."""
    if layout.size > size:
        raise ValueError(f"a {layout.size}-byte struct overflows a {size}-byte buffer")


@runtime_checkable
class Frame(Protocol):
    """One 4 KiB page of the calling domain; ``number`` is what goes into ``cmfn``."""

    number: int

    def write(self, data: bytes) -> None: ...

    def read(self) -> bytes: ...

    def close(self) -> None: ...


@runtime_checkable
class Frames(Protocol):
    """``count`` pages of the calling domain, addressed by page index; ``numbers[i]`` is page
    ``i``'s frame number (what goes into ``cmfn``). Page data moves whole pages at a time,
    from any bytes-like object and into any writable one, with one copy."""

    numbers: list[int]

    def write(self, data: bytes, first: int = 0) -> None:
        """Copy ``data`` (whole pages) into pages ``first ..``."""

    def read(self, first: int = 0, count: int | None = None) -> bytes:
        """Pages ``first .. first+count-1`` (default: to the end)."""

    def read_into(self, out: bytearray | memoryview, first: int = 0) -> None:
        """Copy ``len(out) // 4096`` pages from page ``first`` into ``out`` (whole pages)."""

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

    def alloc_frames(self, count: int) -> Frames: ...

    def close(self) -> None: ...


def check_page(data: bytes) -> bytes:
    """Page data for PUT must be exactly one page."""
    if len(data) != PAGE_SIZE:
        raise ValueError(f"a tmem page is {PAGE_SIZE} bytes, got {len(data)}")
    return bytes(data)


def page_span(size: int, first: int, count: int) -> tuple[int, int]:
    """Byte range, within a run of ``count`` frames, of ``size`` bytes of whole pages from
    page ``first``; ``ValueError`` unless that is 1 or more whole pages inside the run."""
    pages, rest = divmod(size, PAGE_SIZE)
    if rest or not pages:
        raise ValueError(f"frames move whole {PAGE_SIZE}-byte pages, got {size} bytes")
    if first < 0 or first + pages > count:
        raise ValueError(f"pages {first}..{first + pages - 1} are outside a run of {count} "
                         "frame(s)")
    return first * PAGE_SIZE, (first + pages) * PAGE_SIZE


__all__ = ["Buffer", "Frame", "Frames", "Hypervisor", "XenVersion", "check_page", "page_span"]
