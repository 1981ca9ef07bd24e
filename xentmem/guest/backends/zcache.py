"""A compressed in-guest backend in the spirit of zcache (ref §6): an in-kernel tmem engine
whose pages are lz4-compressed in guest RAM.

Frontswap uses one persistent pool for every swap type with zcache's SWIZ_BITS = 8
(``oid = (type << 8) | (offset & 255)``, ``index = offset >> 8``) and enables exclusive gets;
cleancache gets one private ephemeral pool per filesystem (shared pools are mapped to private
ones) and private gets are exclusive. Ephemeral pages are evicted oldest first when the pool
budget is reached; persistent stores are then rejected instead.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

import lz4.block

from xentmem.abi import PAGE_SIZE
from xentmem.guest.backends._module import UnloadReport
from xentmem.guest.cleancache import FileKey

if TYPE_CHECKING:
    from xentmem.guest.guest import Guest

__all__ = ["Zcache"]

SWIZ_BITS = 8
SWIZ_MASK = (1 << SWIZ_BITS) - 1

_Handle = tuple[int, int, int, int]  # (oid0, oid1, oid2, index)


def compress(page: bytes) -> bytes:
    """A page as the engine keeps it."""
    return lz4.block.compress(bytes(page), store_size=False)


def decompress(data: bytes) -> bytes:
    """The page ``compress`` made ``data`` of (``lz4.block.LZ4BlockError`` if it is not)."""
    return lz4.block.decompress(data, uncompressed_size=PAGE_SIZE)


class _Pool:
    __slots__ = ("ephemeral", "pages")

    def __init__(self, ephemeral: bool) -> None:
        self.ephemeral = ephemeral
        self.pages: OrderedDict[_Handle, bytes] = OrderedDict()


class _Engine:
    """The in-guest tmem engine: pools of compressed pages under one lock."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.pools: dict[int, _Pool] = {}
        self.lock = threading.Lock()
        self._next = 0

    def new_pool(self, ephemeral: bool) -> int:
        with self.lock:
            pool_id = self._next
            self._next += 1
            self.pools[pool_id] = _Pool(ephemeral)
            return pool_id

    def destroy_pool(self, pool_id: int) -> None:
        with self.lock:
            pool = self.pools.pop(pool_id, None)
            if pool is not None:
                self.bytes -= sum(len(v) for v in pool.pages.values())

    def _evict_ephemeral(self, need: int) -> None:
        for pool in self.pools.values():
            while pool.ephemeral and pool.pages and self.bytes + need > self.max_bytes:
                _, data = pool.pages.popitem(last=False)
                self.bytes -= len(data)

    def put(self, pool_id: int, handle: _Handle, page: bytes) -> bool:
        data = compress(page)
        with self.lock:
            return self._put_locked(pool_id, handle, data)

    def _put_locked(self, pool_id: int, handle: _Handle, data: bytes) -> bool:
        """Store compressed ``data`` (the engine's lock held); False if it does not fit."""
        pool = self.pools.get(pool_id)
        if pool is None:
            return False
        old = pool.pages.pop(handle, None)
        if old is not None:  # a duplicate: the old copy goes whatever happens next
            self.bytes -= len(old)
        if self.bytes + len(data) > self.max_bytes:
            self._evict_ephemeral(len(data))
            if self.bytes + len(data) > self.max_bytes:
                return False
        pool.pages[handle] = data
        self.bytes += len(data)
        return True

    def get(self, pool_id: int, handle: _Handle, page: bytearray, exclusive: bool) -> bool:
        with self.lock:
            pool = self.pools.get(pool_id)
            data = None if pool is None else (
                pool.pages.pop(handle, None) if exclusive else pool.pages.get(handle))
            if data is None:
                return False
            if exclusive:
                self.bytes -= len(data)
        page[:] = decompress(data)
        return True

    def flush(self, pool_id: int, handle: _Handle) -> None:
        with self.lock:
            pool = self.pools.get(pool_id)
            data = None if pool is None else pool.pages.pop(handle, None)
            if data is not None:
                self.bytes -= len(data)

    def flush_where(self, pool_id: int, match) -> None:
        with self.lock:
            pool = self.pools.get(pool_id)
            if pool is None:
                return
            for h in [h for h in pool.pages if match(h)]:
                self.bytes -= len(pool.pages.pop(h))


class _FrontswapOps:
    def __init__(self, engine: _Engine) -> None:
        self.engine = engine
        self.pool_id = -1
        self.types: set[int] = set()
        self.exclusive = True  # zcache's frontswap_has_exclusive_gets default

    @staticmethod
    def _handle(type: int, offset: int) -> _Handle:
        return ((type << SWIZ_BITS) | (offset & SWIZ_MASK), 0, 0, offset >> SWIZ_BITS)

    def init(self, type: int) -> None:
        if self.pool_id < 0:
            self.pool_id = self.engine.new_pool(ephemeral=False)
        self.types.add(type)

    def store(self, type: int, offset: int, page: bytes) -> int:
        handle = self._handle(type, offset)
        if type not in self.types:
            self.engine.flush(self.pool_id, handle)
            return -1
        return 0 if self.engine.put(self.pool_id, handle, page) else -1

    def load(self, type: int, offset: int, page: bytearray) -> int:
        return 0 if self.engine.get(self.pool_id, self._handle(type, offset), page,
                                    self.exclusive) else -1

    def invalidate_page(self, type: int, offset: int) -> None:
        self.engine.flush(self.pool_id, self._handle(type, offset))

    def invalidate_area(self, type: int) -> None:
        self.types.discard(type)
        self.engine.flush_where(self.pool_id, lambda h: h[0] >> SWIZ_BITS == type)


class _CleancacheOps:
    def __init__(self, engine: _Engine) -> None:
        self.engine = engine

    def init_fs(self, pagesize: int) -> int:
        return self.engine.new_pool(ephemeral=True) if pagesize == PAGE_SIZE else -1

    def init_shared_fs(self, uuid: bytes, pagesize: int) -> int:
        return self.init_fs(pagesize)  # zcache maps shared pools to private ones

    def get_page(self, pool_id: int, key: FileKey, index: int, page: bytearray) -> int:
        return 0 if self.engine.get(pool_id, (*key, index), page, exclusive=True) else -1

    def put_page(self, pool_id: int, key: FileKey, index: int, page: bytes) -> None:
        self.engine.put(pool_id, (*key, index), page)

    def invalidate_page(self, pool_id: int, key: FileKey, index: int) -> None:
        self.engine.flush(pool_id, (*key, index))

    def invalidate_inode(self, pool_id: int, key: FileKey) -> None:
        self.engine.flush_where(pool_id, lambda h: h[:3] == key)

    def invalidate_fs(self, pool_id: int) -> None:
        if pool_id >= 0:
            self.engine.destroy_pool(pool_id)


class Zcache:
    """The zcache module. ``frontswap``/``cleancache`` mirror ``disable_frontswap`` /
    ``disable_cleancache``; ``exclusive_gets`` mirrors ``frontswap_has_exclusive_gets``."""

    name = "zcache"

    def __init__(self, *, max_pool_mb: int = 64, frontswap: bool = True,
                 cleancache: bool = True, exclusive_gets: bool = True) -> None:
        self.engine = self._new_engine(max_pool_mb << 20)
        self.frontswap_enabled = frontswap
        self.cleancache_enabled = cleancache
        self.frontswap_ops = self._new_frontswap_ops()
        self.frontswap_ops.exclusive = exclusive_gets
        self.cleancache_ops = _CleancacheOps(self.engine)

    def _new_engine(self, max_bytes: int) -> _Engine:
        return _Engine(max_bytes)

    def _new_frontswap_ops(self) -> _FrontswapOps:
        return _FrontswapOps(self.engine)

    def module_init(self, guest: Guest) -> None:
        if self.frontswap_enabled:
            guest.frontswap.register_ops(self.frontswap_ops)
            guest.frontswap.tmem_exclusive_gets(self.frontswap_ops.exclusive)
        if self.cleancache_enabled:
            guest.cleancache.register_ops(self.cleancache_ops)

    def module_exit(self, guest: Guest) -> UnloadReport:
        started = time.perf_counter()
        drained = missing = pools = 0
        if guest.cleancache.ops is self.cleancache_ops:
            pools = guest.cleancache.unregister_ops()
        if guest.frontswap.ops is self.frontswap_ops:
            report = guest.frontswap.unregister_ops()
            drained, missing = report.drained, report.missing
            guest.frontswap.tmem_exclusive_gets(False)
        if self.frontswap_ops.pool_id >= 0:
            self.engine.destroy_pool(self.frontswap_ops.pool_id)
            self.frontswap_ops.pool_id = -1
        return UnloadReport(self.name, drained, missing, pools, time.perf_counter() - started)
