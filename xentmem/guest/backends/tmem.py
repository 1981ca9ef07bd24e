"""The Xen tmem shim (``drivers/xen/tmem.c``, Linux 3.10-3.12; ref §3) as a loadable — and,
beyond the kernel, unloadable — module over a ``Tmem`` client.

Frontswap: one private persistent pool for every swap type, created at the first ``init``;
``oid = [(type << 4) | (offset & 15), 0, 0]``, ``index = offset >> 4`` (SWIZ_BITS = 4); offsets
must fit 32 bits. Cleancache: a private ephemeral pool per filesystem, a shared pool per uuid
(lo = bytes 0-7, hi = bytes 8-15, little-endian), the 24-byte file key as the oid. The hypercall
succeeds with 1; anything else (a negative errno here raised as ``TmemError``) is a failure.

The ``Tmem`` client owns one argument buffer and one frame, and the emulated host takes one
hypercall at a time, so calls are serialised by the hypervisor's lock (``hypervisor_lock``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING

from xentmem.abi import PAGE_SIZE
from xentmem.errors import TmemError
from xentmem.guest._locks import hypervisor_lock
from xentmem.guest.backends._module import UnloadReport
from xentmem.guest.cleancache import FileKey

if TYPE_CHECKING:
    from xentmem.guest.guest import Guest
    from xentmem.hypercalls import Tmem

__all__ = ["XenTmem", "swap_oid_index"]

SWIZ_BITS = 4
SWIZ_MASK = (1 << SWIZ_BITS) - 1
_U32 = 0xFFFFFFFF


def swap_oid_index(type: int, offset: int) -> tuple[tuple[int, int, int], int]:
    """The tmem handle of swap slot (type, offset): 16 objects per type, for concurrency."""
    return ((type << SWIZ_BITS) | (offset & SWIZ_MASK), 0, 0), offset >> SWIZ_BITS


def _get_into(tmem: Tmem, lock: threading.Lock, pool: int, oid, index: int,
              page: bytearray) -> int:
    """The shim's GET: 0 with ``page`` filled on a hit, -1 on a miss or any hypervisor error
    (``xen_tmem_get_page``'s ``1 -> 0, else -1``)."""
    with lock:
        try:
            data = tmem.get_page(pool, oid, index)
        except TmemError:
            return -1
    if data is None:
        return -1
    page[:] = data
    return 0


class _FrontswapOps:
    def __init__(self, tmem: Tmem, lock: threading.Lock) -> None:
        self.tmem = tmem
        self.lock = lock
        self.pool_id = -1  # tmem_frontswap_poolid

    def init(self, type: int) -> None:
        if self.pool_id < 0:  # a failed creation is retried at the next init
            with self.lock:
                try:
                    self.pool_id = self.tmem.new_pool(persistent=True)
                except TmemError:
                    self.pool_id = -1

    def store(self, type: int, offset: int, page: bytes) -> int:
        pool = self.pool_id
        if pool < 0 or offset > _U32:
            return -1
        oid, index = swap_oid_index(type, offset)
        with self.lock:
            try:
                self.tmem.put_page(pool, oid, index, bytes(page))
            except TmemError:
                return -1  # Xen already dropped a failed duplicate (-ENOSPC)
        return 0

    def load(self, type: int, offset: int, page: bytearray) -> int:
        pool = self.pool_id
        if pool < 0 or offset > _U32:
            return -1
        oid, index = swap_oid_index(type, offset)
        return _get_into(self.tmem, self.lock, pool, oid, index, page)

    def invalidate_page(self, type: int, offset: int) -> None:
        pool = self.pool_id
        if pool < 0 or offset > _U32:
            return
        oid, index = swap_oid_index(type, offset)
        with self.lock, contextlib.suppress(TmemError):  # result ignored, as in the shim
            self.tmem.flush_page(pool, oid, index)

    def invalidate_area(self, type: int) -> None:
        pool = self.pool_id
        if pool < 0:
            return
        with self.lock:
            for low in range(SWIZ_MASK, -1, -1):
                with contextlib.suppress(TmemError):
                    self.tmem.flush_object(pool, ((type << SWIZ_BITS) | low, 0, 0))


class _CleancacheOps:
    def __init__(self, tmem: Tmem, lock: threading.Lock) -> None:
        self.tmem = tmem
        self.lock = lock

    def _new_pool(self, *, shared: bool, uuid: tuple[int, int], pagesize: int) -> int:
        if pagesize != PAGE_SIZE:
            return -22  # -EINVAL: the shim only speaks the native page size
        with self.lock:
            try:
                return self.tmem.new_pool(persistent=False, shared=shared, uuid=uuid)
            except TmemError as exc:
                return -exc.errno

    def init_fs(self, pagesize: int) -> int:
        return self._new_pool(shared=False, uuid=(0, 0), pagesize=pagesize)

    def init_shared_fs(self, uuid: bytes, pagesize: int) -> int:
        lo = int.from_bytes(uuid[:8], "little")
        hi = int.from_bytes(uuid[8:16], "little")
        return self._new_pool(shared=True, uuid=(lo, hi), pagesize=pagesize)

    def get_page(self, pool_id: int, key: FileKey, index: int, page: bytearray) -> int:
        if pool_id < 0 or index > _U32:
            return -1
        return _get_into(self.tmem, self.lock, pool_id, key, index, page)

    def put_page(self, pool_id: int, key: FileKey, index: int, page: bytes) -> None:
        if pool_id < 0 or index > _U32:
            return
        with self.lock, contextlib.suppress(TmemError):  # "always succeeds" for the caller
            self.tmem.put_page(pool_id, key, index, bytes(page))

    def invalidate_page(self, pool_id: int, key: FileKey, index: int) -> None:
        if pool_id < 0 or index > _U32:
            return
        with self.lock, contextlib.suppress(TmemError):
            self.tmem.flush_page(pool_id, key, index)

    def invalidate_inode(self, pool_id: int, key: FileKey) -> None:
        if pool_id < 0:
            return
        with self.lock, contextlib.suppress(TmemError):
            self.tmem.flush_object(pool_id, key)

    def invalidate_fs(self, pool_id: int) -> None:
        if pool_id < 0:
            return
        with self.lock, contextlib.suppress(TmemError):
            self.tmem.destroy_pool(pool_id)


class XenTmem:
    """The ``tmem`` module with its four parameters (ref §3.1; read-only after load)."""

    name = "tmem"

    def __init__(self, tmem: Tmem, *, frontswap: bool = True, cleancache: bool = True,
                 selfballooning: bool = True, selfshrinking: bool = True) -> None:
        self.tmem = tmem
        self.params = {"frontswap": bool(frontswap), "cleancache": bool(cleancache),
                       "selfballooning": bool(selfballooning),
                       "selfshrinking": bool(selfshrinking)}
        lock = hypervisor_lock(tmem.hv)
        self.frontswap_ops = _FrontswapOps(tmem, lock)
        self.cleancache_ops = _CleancacheOps(tmem, lock)
        self.log: list[str] = []

    def module_init(self, guest: Guest) -> None:
        """``xen_tmem_init`` (ref §3.2)."""
        params = self.params
        if params["frontswap"]:
            self.frontswap_ops.pool_id = -1
            old = guest.frontswap.register_ops(self.frontswap_ops)
            if old is not None:
                self.log.append("xen:tmem: frontswap: WARNING: frontswap_ops overridden")
            self.log.append("xen:tmem: frontswap enabled, RAM provided by "
                            "Xen Transcendent Memory")
        if params["cleancache"]:
            old = guest.cleancache.register_ops(self.cleancache_ops)
            if old is not None:
                self.log.append("xen:tmem: cleancache: WARNING: cleancache_ops overridden")
            self.log.append("xen:tmem: cleancache enabled, RAM provided by "
                            "Xen Transcendent Memory")
        if not params["frontswap"]:
            params["selfshrinking"] = params["selfballooning"] = False
        guest.selfballoon.init(params["selfballooning"], params["selfshrinking"])

    def module_exit(self, guest: Guest) -> UnloadReport:
        """Unload (not in any kernel): self-ballooning off, frontswap drained back to the swap
        devices, cleancache pools destroyed, then the frontswap pool destroyed."""
        started = time.perf_counter()
        guest.selfballoon.init(False, False)
        drained = missing = pools = 0
        if guest.cleancache.ops is self.cleancache_ops:
            pools = guest.cleancache.unregister_ops()
        if guest.frontswap.ops is self.frontswap_ops:
            report = guest.frontswap.unregister_ops()
            drained, missing = report.drained, report.missing
        if self.frontswap_ops.pool_id >= 0:
            with self.frontswap_ops.lock, contextlib.suppress(TmemError):
                self.tmem.destroy_pool(self.frontswap_ops.pool_id)
            self.frontswap_ops.pool_id = -1
        return UnloadReport(self.name, drained, missing, pools, time.perf_counter() - started)
