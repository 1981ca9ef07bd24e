"""frontswap, the Linux 3.10-3.12 frontend (``mm/frontswap.c``; ref §1) plus backend unload.

The swap layer calls ``store``/``load``/``invalidate_page`` holding the slot's lock (the kernel
holds the page lock or the device spinlock), and ``init``/``invalidate_area`` holding
``swapon_mutex``. Two attributes hold the backend:

- ``_routing``: the ops new stores go to. ``None`` means no backend: a store then costs exactly
  one attribute check (the static_key idea of the seed).
- ``_ops``: the ops loads and invalidates go to. It differs from ``_routing`` only while a backend
  is being unloaded: stores are refused at once, loads still find pages that are not drained yet.

Unload (the seed's "next goal", never in a kernel): ``unregister_ops`` flips routing, waits until
no store that saw the old routing is still running (a barrier over the slot locks), then moves
every page the backend holds back to its swap slot (backend ``load``, disk write, backend
``invalidate_page``, bit cleared — one slot lock held throughout, so a racing load finds the page
either still in the backend or already on disk), calls ``invalidate_area`` for every type and
re-queues the active types so that a later backend is initialised for them.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from xentmem.abi import PAGE_SIZE
from xentmem.errors import GuestError
from xentmem.guest.swap import MAX_SWAPFILES, ZERO_PAGE, SwapDevice

__all__ = ["LOST", "DrainReport", "Frontswap", "FrontswapOps", "SwapHost"]

log = logging.getLogger(__name__)

# A load's answer beyond the kernel's: the backend held the page and lost it (RAMster's
# faithful mode after a node died). The swap slot is no copy of it: the caller must not read
# it, and the page is reported lost, as a swap read I/O error would be.
LOST = -errno.EIO


@runtime_checkable
class FrontswapOps(Protocol):
    """``struct frontswap_ops``: what a backend provides (ref §1.2)."""

    def init(self, type: int) -> None:
        """Prepare to receive pages of swap type ``type`` (may allocate)."""

    def store(self, type: int, offset: int, page: bytes) -> int:
        """Copy the page; 0 = stored, non-zero = rejected. A rejected duplicate must drop the
        old copy."""

    def load(self, type: int, offset: int, page: bytearray) -> int:
        """Fill ``page``; 0 = filled, ``LOST`` = held and lost, other non-zero = miss."""

    def invalidate_page(self, type: int, offset: int) -> None:
        """Drop the page; later loads must fail. Must not block."""

    def invalidate_area(self, type: int) -> None:
        """Drop every page of ``type`` and refuse further stores for it."""


class SwapHost(Protocol):
    """The swap layer as frontswap sees it (``swapfile.c``)."""

    swap_info: list[SwapDevice | None]
    swapon_mutex: AbstractContextManager[object]

    def active_swap_devices(self) -> Sequence[SwapDevice]:
        """Devices on the swap list, highest priority first."""

    def vm_enough_memory(self, pages: int) -> bool:
        """``security_vm_enough_memory_mm`` + ``vm_unacct_memory``: could RAM take ``pages``?"""

    def try_to_unuse(self, type: int, frontswap: bool, pages: int) -> int:
        """Bring pages of ``type`` back into RAM (only frontswap ones if ``frontswap``; all when
        ``pages`` is 0); return how many came back."""


class _Draining:
    """Routing while a backend unloads: every store is refused, and a refused duplicate drops
    the backend's old copy (the contract of ref §1.2), so the drain can never write it over the
    newer disk copy."""

    __slots__ = ("ops",)

    def __init__(self, ops: FrontswapOps) -> None:
        self.ops = ops

    def store(self, type: int, offset: int, page: bytes) -> int:
        self.ops.invalidate_page(type, offset)
        return -1


@dataclass(frozen=True)
class DrainReport:
    """What ``unregister_ops`` moved: pages written back to swap slots, and pages the backend
    could not return (only legitimate for writeback backends or writethrough mode)."""

    drained: int
    missing: int
    seconds: float


class Frontswap:
    """The frontswap frontend of one guest kernel."""

    def __init__(self, host: SwapHost, *, swapoff_invalidates_area: bool = False) -> None:
        self.host = host
        self._ops: FrontswapOps | None = None
        self._routing: FrontswapOps | _Draining | None = None
        self.need_init = [False] * MAX_SWAPFILES
        self.writethrough_enabled = False
        self.exclusive_gets_enabled = False
        # False: the 3.10-3.12 swapoff quirk (map NULLed first, backend invalidate_area never
        # called); True: the 3.13 fix (ref §1.4).
        self.swapoff_invalidates_area = swapoff_invalidates_area
        # debugfs counters: racy increments, as in the kernel (ref §1.7)
        self.succ_stores = 0
        self.failed_stores = 0
        self.loads = 0
        self.invalidates = 0

    @property
    def ops(self) -> FrontswapOps | None:
        """The registered backend (``frontswap_ops``), or ``None``."""
        return self._ops

    # -- registration ----------------------------------------------------------------------

    def register_ops(self, ops: FrontswapOps) -> FrontswapOps | None:
        """``frontswap_register_ops``: init every queued swap type (increasing order), then
        publish ``ops``; return the previous backend.

        A second registration replaces the first without re-initialising active types, exactly
        like the kernel: pages the old backend holds are then unreachable. Use
        ``unregister_ops`` first to move them back to disk. The kernel takes no lock here; the
        model takes ``swapon_mutex`` so that a concurrent swapon cannot queue a type after the
        queue was scanned.
        """
        with self.host.swapon_mutex:
            old = self._ops
            for i in range(MAX_SWAPFILES):
                if self.need_init[i]:
                    self.need_init[i] = False
                    sis = self.host.swap_info[i]
                    if sis is None or sis.frontswap_map is None:
                        # ERR_PTR(-EINVAL): ops not published, higher bits stay queued
                        raise GuestError(f"frontswap_register_ops: swap type {i} has no "
                                         "frontswap map (-EINVAL)")
                    ops.init(i)
            if old is not None:
                log.warning("frontswap: WARNING: frontswap_ops overridden")
            self._ops = ops
            self._routing = ops
            return old

    def unregister_ops(self) -> DrainReport:
        """Unload the backend: stop routing stores atomically, drain every page it holds back
        to its swap slot, ``invalidate_area`` every type, and forget it. A later
        ``register_ops`` initialises the active types again."""
        with self.host.swapon_mutex:
            ops = self._ops
            if ops is None:
                raise GuestError("frontswap: no backend registered")
            started = time.perf_counter()
            self._routing = _Draining(ops)
            devices = [d for d in self.host.swap_info if d is not None]
            try:
                drained, missing = self._drain(ops, devices)
            except BaseException:
                # e.g. the swap device failed a write: stay loaded, nothing was dropped
                self._routing = ops
                raise
            for sis in devices:
                ops.invalidate_area(sis.type)
                sis.fs_reset()
                if sis.frontswap_map is not None:
                    self.need_init[sis.type] = True
            self._ops = None
            self._routing = None
            return DrainReport(drained, missing, time.perf_counter() - started)

    @staticmethod
    def _drain(ops: FrontswapOps, devices: list[SwapDevice]) -> tuple[int, int]:
        for sis in devices:
            sis.locks.barrier()  # stores that saw the old routing have finished
        drained = missing = 0
        page = bytearray(PAGE_SIZE)
        for sis in devices:
            for offset in sis.fs_offsets():
                with sis.slot_lock(offset):
                    if not sis.fs_test(offset):
                        continue  # invalidated or loaded exclusively meanwhile
                    ret = ops.load(sis.type, offset, page)
                    if ret == 0:
                        sis.store.write(offset, bytes(page))  # before the backend lets go
                        drained += 1
                    else:
                        missing += 1
                        if ret == LOST:  # poison the slot: read later, it is a loss, never
                            sis.store.write(offset, ZERO_PAGE)  # an older copy

                    ops.invalidate_page(sis.type, offset)
                    sis.fs_clear(offset)
        return drained, missing

    # -- hooks called by the swap layer -------------------------------------------------------

    def init(self, type: int, fmap: bytearray | None) -> None:
        """``__frontswap_init`` at swapon (``swapon_mutex`` held)."""
        sis = self.host.swap_info[type]
        if sis is None:
            raise GuestError(f"frontswap_init: no swap device of type {type}")  # BUG()
        if fmap is None:
            log.warning("frontswap_init: swap type %d has no frontswap map", type)
            return
        sis.frontswap_map = fmap
        if self._ops is not None:
            self._ops.init(type)
        else:
            self.need_init[type] = True

    def test(self, sis: SwapDevice, offset: int) -> bool:
        """``__frontswap_test``: backend registered and the bit set."""
        return self._ops is not None and sis.fs_test(offset)

    def store(self, type: int, offset: int, page: bytes) -> int:
        """``__frontswap_store``; 0 means the caller may skip the disk write."""
        ops = self._routing
        if ops is None:  # the whole cost of frontswap with no backend
            return -1
        sis = self.host.swap_info[type]
        dup = self.test(sis, offset)
        ret = ops.store(type, offset, page)
        if ret == 0:
            sis.fs_set(offset)
            self.succ_stores += 1
        else:
            self.failed_stores += 1
            if dup:  # 3.10-3.12: the backend itself dropped the old copy
                sis.fs_clear(offset)
        if self.writethrough_enabled:
            ret = -1  # the page also goes to disk; the bit stays set
        return ret

    def load(self, type: int, offset: int, page: bytearray) -> int:
        """``__frontswap_load``; non-zero means the caller reads the disk, but ``LOST``: the
        page is gone."""
        ops = self._ops
        if ops is None:
            return -1
        sis = self.host.swap_info[type]
        if not sis.fs_test(offset):
            return -1
        ret = ops.load(type, offset, page)
        if ret == 0:
            self.loads += 1
            if self.exclusive_gets_enabled:
                sis.fs_clear(offset)  # the caller marks the page dirty
        return ret

    def invalidate_page(self, type: int, offset: int) -> None:
        """``__frontswap_invalidate_page`` (slot freed)."""
        ops = self._ops
        if ops is None:
            return
        sis = self.host.swap_info[type]
        if sis.fs_test(offset):
            ops.invalidate_page(type, offset)
            sis.fs_clear(offset)
            self.invalidates += 1

    def invalidate_area(self, type: int) -> None:
        """``__frontswap_invalidate_area`` (swapoff, ``swapon_mutex`` held)."""
        sis = self.host.swap_info[type]
        if self._ops is not None:
            if sis is None or sis.frontswap_map is None:
                return
            self._ops.invalidate_area(type)
            sis.fs_reset()
        self.need_init[type] = False

    # -- modes and partial swapoff ----------------------------------------------------------

    def writethrough(self, enable: bool) -> None:
        """``frontswap_writethrough``."""
        self.writethrough_enabled = bool(enable)

    def tmem_exclusive_gets(self, enable: bool) -> None:
        """``frontswap_tmem_exclusive_gets``."""
        self.exclusive_gets_enabled = bool(enable)

    def curr_pages(self) -> int:
        """``frontswap_curr_pages``: pages held, over the active devices."""
        return sum(d.frontswap_pages for d in self.host.active_swap_devices())

    def shrink(self, target_pages: int) -> int:
        """``frontswap_shrink``: partial swapoff of ONE device towards ``target_pages``; return
        the pages brought back."""
        total = self.curr_pages()
        if total <= target_pages:
            return 0
        want = total - target_pages
        for sis in self.host.active_swap_devices():
            pages = want if want < sis.frontswap_pages else sis.frontswap_pages
            if self.host.vm_enough_memory(pages):
                n = want if want < sis.frontswap_pages else 0  # 0 = the whole device
                return self.host.try_to_unuse(sis.type, True, n)
        return 0

    def debugfs(self) -> dict[str, int]:
        """The four counters of ``/sys/kernel/debug/frontswap``."""
        return {"succ_stores": self.succ_stores, "failed_stores": self.failed_stores,
                "loads": self.loads, "invalidates": self.invalidates}
