"""The Xen tmem shim (``drivers/xen/tmem.c``, Linux 3.10-3.12; ref §3) as a loadable — and,
beyond the kernel, unloadable — module over a ``Tmem`` client.

Frontswap: one private persistent pool for every swap type, created at the first ``init``;
``oid = [(type << 4) | (offset & 15), 0, 0]``, ``index = offset >> 4`` (SWIZ_BITS = 4); offsets
must fit 32 bits. Cleancache: a private ephemeral pool per filesystem, a shared pool per uuid
(lo = bytes 0-7, hi = bytes 8-15, little-endian), the 24-byte file key as the oid. The hypercall
succeeds with 1; anything else (a negative errno here raised as ``TmemError``) is a failure.

Pages move through one frame of the transport (``put_page_from`` / ``get_page_to``): the guest's
page is copied into the frame for a PUT and out of it after a GET, and the hypervisor copies
between the frame and its store, one copy per direction as Linux's shim (which hands Xen the
page's own frame) plus the one our model needs because its pages are not guest frames. The
``Tmem`` client's op buffer and that frame are shared by every caller, so each call holds the
client's own lock (``Tmem.lock``); nothing else is serialised here.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING

from xentmem.abi import PAGE_SIZE
from xentmem.errors import TmemError
from xentmem.guest.backends._module import UnloadReport
from xentmem.guest.cleancache import FileKey

if TYPE_CHECKING:
    from xentmem.guest.guest import Guest
    from xentmem.hypercalls import Frames, Tmem

__all__ = ["XenTmem", "swap_oid_index"]

SWIZ_BITS = 4
SWIZ_MASK = (1 << SWIZ_BITS) - 1
_U32 = 0xFFFFFFFF


def swap_oid_index(type: int, offset: int) -> tuple[tuple[int, int, int], int]:
    """The tmem handle of swap slot (type, offset): 16 objects per type, for concurrency."""
    return ((type << SWIZ_BITS) | (offset & SWIZ_MASK), 0, 0), offset >> SWIZ_BITS


class _Shim:
    """What both halves of the shim share: the client, its lock and the page frame."""

    def __init__(self, tmem: Tmem, frame: Frames) -> None:
        self.tmem = tmem
        self.lock: threading.Lock = tmem.lock
        self.frame = frame

    def _get_into(self, pool: int, oid, index: int, page: bytearray) -> int:
        """The shim's GET: 0 with ``page`` filled on a hit, -1 on a miss or any hypervisor
        error (``xen_tmem_get_page``'s ``1 -> 0, else -1``)."""
        with self.lock:
            try:
                if not self.tmem.get_page_to(pool, oid, index, self.frame):
                    return -1
            except TmemError:
                return -1
            self.frame.read_into(page)
        return 0

    def _put_from(self, pool: int, oid, index: int, page: bytes) -> None:
        """The shim's PUT (caller holds the lock); raises ``TmemError``."""
        self.frame.write(page)
        self.tmem.put_page_from(pool, oid, index, self.frame)  # type: ignore[arg-type]


class _FrontswapOps(_Shim):
    def __init__(self, tmem: Tmem, frame: Frames) -> None:
        super().__init__(tmem, frame)
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
                self._put_from(pool, oid, index, page)
            except TmemError:
                return -1  # Xen already dropped a failed duplicate (-ENOSPC)
        return 0

    def load(self, type: int, offset: int, page: bytearray) -> int:
        pool = self.pool_id
        if pool < 0 or offset > _U32:
            return -1
        oid, index = swap_oid_index(type, offset)
        return self._get_into(pool, oid, index, page)

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


class _CleancacheOps(_Shim):

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
        return self._get_into(pool_id, key, index, page)

    def put_page(self, pool_id: int, key: FileKey, index: int, page: bytes) -> None:
        if pool_id < 0 or index > _U32:
            return
        with self.lock, contextlib.suppress(TmemError):  # "always succeeds" for the caller
            self._put_from(pool_id, key, index, page)

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
        frame = tmem.hv.alloc_frames(1)
        self.frontswap_ops = _FrontswapOps(tmem, frame)
        self.cleancache_ops = _CleancacheOps(tmem, frame)
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
