"""Swap devices: a page-slot store (memory or a file), the slot allocator and the per-device
frontswap state of ``struct swap_info_struct`` (ref §1.1)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Protocol, runtime_checkable

from xentmem.abi import PAGE_SIZE
from xentmem.errors import GuestError
from xentmem.guest._locks import StripedLock
from xentmem.guest._pages import compact

__all__ = ["MAX_SWAPFILES", "FileSlotStore", "MemorySlotStore", "SlotStore", "SwapDevice"]

# 32 swap types minus the migration (2) and hwpoison (1) entries of a typical config (ref §1.1).
MAX_SWAPFILES = 29
ZERO_PAGE = bytes(PAGE_SIZE)


@runtime_checkable
class SlotStore(Protocol):
    """Where a swap device keeps its pages: ``pages`` slots of ``PAGE_SIZE`` bytes."""

    pages: int

    def read(self, offset: int) -> bytes: ...

    def write(self, offset: int, data: bytes) -> None: ...

    def close(self) -> None: ...


class MemorySlotStore:
    """Slots in RAM (sparse); a never-written slot reads as zeros, like a fresh disk."""

    def __init__(self, pages: int) -> None:
        if pages < 2:
            raise GuestError(f"a swap device needs at least 2 slots (header + 1), not {pages}")
        self.pages = pages
        self._slots: dict[int, bytes] = {}

    def read(self, offset: int) -> bytes:
        return self._slots.get(offset, ZERO_PAGE)

    def write(self, offset: int, data: bytes) -> None:
        self._slots[offset] = bytes(data)

    def close(self) -> None:
        self._slots.clear()

    def __getstate__(self) -> dict[str, object]:
        return {"pages": self.pages, "_slots": {k: compact(v) for k, v in self._slots.items()}}


class FileSlotStore:
    """Slots in a (sparse) file: slot ``n`` is bytes ``n*PAGE_SIZE`` .. ``(n+1)*PAGE_SIZE``."""

    def __init__(self, path: str | os.PathLike[str], pages: int) -> None:
        if pages < 2:
            raise GuestError(f"a swap device needs at least 2 slots (header + 1), not {pages}")
        self.pages = pages
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(self._fd, pages * PAGE_SIZE)

    def read(self, offset: int) -> bytes:
        data = os.pread(self._fd, PAGE_SIZE, offset * PAGE_SIZE)
        return data if len(data) == PAGE_SIZE else data.ljust(PAGE_SIZE, b"\0")

    def write(self, offset: int, data: bytes) -> None:
        os.pwrite(self._fd, data, offset * PAGE_SIZE)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class SwapDevice:
    """One swapon'ed device (``swap_info[type]``).

    ``frontswap_map`` has one byte per slot (1 = the frontend believes the backend holds the page)
    and ``frontswap_pages`` counts the set entries; both change only under the slot's lock, the
    count also under ``_count_lock`` because different slots update it concurrently.
    """

    def __init__(self, type: int, store: SlotStore, priority: int = -1, name: str = "") -> None:
        self.type = type
        self.store = store
        self.priority = priority
        self.name = name or f"swap{type}"
        self.max = store.pages
        self.frontswap_map: bytearray | None = None
        self.frontswap_pages = 0
        self.writeok = True
        self.locks = StripedLock()
        self.owner: dict[int, object] = {}  # slot -> the page using it (reverse map for unuse)
        self._count_lock = threading.Lock()
        self._alloc_lock = threading.Lock()
        self._free = list(range(self.max - 1, 0, -1))  # offset 0 is the swap header

    # -- slots ------------------------------------------------------------------------------

    def slot_lock(self, offset: int) -> threading.Lock:
        return self.locks.for_key(offset)

    def alloc_slot(self, owner: object) -> int | None:
        """A free slot for ``owner``, or ``None`` when full or being swapped off."""
        with self._alloc_lock:
            if not self.writeok or not self._free:
                return None
            offset = self._free.pop()
            self.owner[offset] = owner
            return offset

    def free_slot(self, offset: int) -> None:
        with self._alloc_lock:
            if self.owner.pop(offset, None) is not None:
                self._free.append(offset)

    @property
    def inuse_pages(self) -> int:
        return len(self.owner)

    # -- frontswap bitmap (callers hold the slot lock) ------------------------------------

    def fs_test(self, offset: int) -> bool:
        fmap = self.frontswap_map
        return fmap is not None and fmap[offset] == 1

    def fs_set(self, offset: int) -> None:
        """Set the bit; count it if it was clear."""
        fmap = self.frontswap_map
        if fmap is not None and not fmap[offset]:
            fmap[offset] = 1
            with self._count_lock:
                self.frontswap_pages += 1

    def fs_clear(self, offset: int) -> None:
        fmap = self.frontswap_map
        if fmap is not None and fmap[offset]:
            fmap[offset] = 0
            with self._count_lock:
                self.frontswap_pages -= 1

    def fs_offsets(self, start: int = 1) -> list[int]:
        """Set offsets, scanning circularly from ``start`` as ``try_to_unuse`` does."""
        fmap = self.frontswap_map
        if fmap is None:
            return []
        hits: list[int] = []
        pos = fmap.find(1, 1)
        while pos >= 0:
            hits.append(pos)
            pos = fmap.find(1, pos + 1)
        cut = next((n for n, i in enumerate(hits) if i >= start), len(hits))
        return hits[cut:] + hits[:cut]

    def fs_reset(self) -> None:
        """Zero the map and the count (``invalidate_area``)."""
        if self.frontswap_map is not None:
            self.frontswap_map[:] = bytes(len(self.frontswap_map))
        with self._count_lock:
            self.frontswap_pages = 0

    def __repr__(self) -> str:
        return (f"SwapDevice(type={self.type}, name={self.name!r}, slots={self.max}, "
                f"inuse={self.inuse_pages}, frontswap_pages={self.frontswap_pages})")
