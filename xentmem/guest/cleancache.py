"""cleancache, the Linux 3.10-3.12 frontend (``mm/cleancache.c``; ref §2) plus backend unload.

Filesystems mounted before a backend registers get FAKE pool ids (1000+i private, 2000+i
shared) whose slots hold ``FS_NO_BACKEND``; ``register_ops`` creates the real pools for them.
The page-cache layer calls the data-path functions holding the file page's lock.

Unload (beyond the kernel): ``unregister_ops`` unpublishes the backend, waits until no data-path
call that saw it is still running (a barrier over every mounted filesystem's page locks), then
``invalidate_fs`` for every real pool — ephemeral pages are simply dropped — and marks those slots
``FS_NO_BACKEND`` again, so the next backend creates fresh pools for them.
"""

from __future__ import annotations

import struct
import threading
from typing import Protocol, runtime_checkable

from xentmem.abi import PAGE_SIZE
from xentmem.errors import GuestError

__all__ = [
    "FAKE_FS_POOLID_OFFSET",
    "FAKE_SHARED_FS_POOLID_OFFSET",
    "FS_NO_BACKEND",
    "FS_UNKNOWN",
    "MAX_INITIALIZABLE_FS",
    "Cleancache",
    "CleancacheOps",
    "FileKey",
    "Superblock",
]

MAX_INITIALIZABLE_FS = 32
FAKE_FS_POOLID_OFFSET = 1000
FAKE_SHARED_FS_POOLID_OFFSET = 2000
FS_UNKNOWN = -2  # slot free
FS_NO_BACKEND = -1  # slot used, no real pool yet
CLEANCACHE_KEY_MAX = 6  # u32 words of a file handle

FileKey = tuple[int, int, int]
"""``struct cleancache_filekey``: the 24-byte union read as three u64 (tmem's oid)."""

_FH = struct.Struct("<6I")
_KEY = struct.Struct("<3Q")


def key_from_ino(ino: int) -> FileKey:
    """The key of a filesystem without ``encode_fh`` (ext3/ext4): ``[ino, 0, 0]``."""
    return (ino, 0, 0)


def key_from_fh(words: tuple[int, ...]) -> FileKey | None:
    """The key from a file handle of up to 6 u32 words; ``None`` (key error) if too long."""
    if not 0 < len(words) <= CLEANCACHE_KEY_MAX:
        return None
    return _KEY.unpack(_FH.pack(*words, *([0] * (CLEANCACHE_KEY_MAX - len(words)))))


class Superblock(Protocol):
    """What cleancache needs of a mounted filesystem."""

    cleancache_poolid: int

    def barrier(self) -> None:
        """Wait until no page operation that started before the call is still running."""


@runtime_checkable
class CleancacheOps(Protocol):
    """``struct cleancache_ops`` (ref §2.1)."""

    def init_fs(self, pagesize: int) -> int:
        """Create a private ephemeral pool; its id, or negative on failure."""

    def init_shared_fs(self, uuid: bytes, pagesize: int) -> int:
        """Create or join the shared pool of ``uuid`` (16 bytes); its id or negative."""

    def get_page(self, pool_id: int, key: FileKey, index: int, page: bytearray) -> int:
        """0 = hit (``page`` filled; private pools also drop it), −1 = miss."""

    def put_page(self, pool_id: int, key: FileKey, index: int, page: bytes) -> None:
        """Store a clean page; may silently drop it."""

    def invalidate_page(self, pool_id: int, key: FileKey, index: int) -> None: ...

    def invalidate_inode(self, pool_id: int, key: FileKey) -> None: ...

    def invalidate_fs(self, pool_id: int) -> None:
        """Drop everything and surrender the pool (ignore negative ids)."""


class Cleancache:
    """The cleancache frontend of one guest kernel."""

    def __init__(self) -> None:
        self._ops: CleancacheOps | None = None
        self.fs_poolid_map = [FS_UNKNOWN] * MAX_INITIALIZABLE_FS
        self.shared_fs_poolid_map = [FS_UNKNOWN] * MAX_INITIALIZABLE_FS
        self.uuids: list[bytes | None] = [None] * MAX_INITIALIZABLE_FS
        self._sbs: dict[int, Superblock] = {}  # fake id -> superblock, for the unload barrier
        self.poolid_mutex = threading.RLock()
        # debugfs counters (racy increments, as in the kernel)
        self.succ_gets = 0
        self.failed_gets = 0
        self.puts = 0
        self.invalidates = 0

    @property
    def ops(self) -> CleancacheOps | None:
        return self._ops

    # -- registration ----------------------------------------------------------------------

    def register_ops(self, ops: CleancacheOps) -> CleancacheOps | None:
        """``cleancache_register_ops``: create real pools for every pending slot (index order,
        private before shared), publish ``ops``, return the previous backend. Backend results
        are stored verbatim (a negative one disables that filesystem)."""
        with self.poolid_mutex:
            old = self._ops
            for i in range(MAX_INITIALIZABLE_FS):
                if self.fs_poolid_map[i] == FS_NO_BACKEND:
                    self.fs_poolid_map[i] = ops.init_fs(PAGE_SIZE)
                if self.shared_fs_poolid_map[i] == FS_NO_BACKEND:
                    self.shared_fs_poolid_map[i] = ops.init_shared_fs(self.uuids[i], PAGE_SIZE)
            self._ops = ops
            return old

    def unregister_ops(self) -> int:
        """Unload the backend: drop every ephemeral page and pool, keep the filesystems'
        fake ids pending for the next backend. Returns the number of pools surrendered."""
        with self.poolid_mutex:
            ops = self._ops
            if ops is None:
                raise GuestError("cleancache: no backend registered")
            self._ops = None
            for sb in list(self._sbs.values()):
                sb.barrier()  # data-path calls that saw the backend have finished
            pools = 0
            for table in (self.fs_poolid_map, self.shared_fs_poolid_map):
                for i, real in enumerate(table):
                    if real == FS_UNKNOWN:
                        continue
                    if real >= 0:
                        ops.invalidate_fs(real)
                        pools += 1
                    table[i] = FS_NO_BACKEND
            return pools

    # -- mount / umount ----------------------------------------------------------------------

    def init_fs(self, sb: Superblock) -> None:
        """``__cleancache_init_fs``: give ``sb`` a fake id 1000+i (or leave −1 if 32 are in use)."""
        with self.poolid_mutex:
            for i in range(MAX_INITIALIZABLE_FS):
                if self.fs_poolid_map[i] == FS_UNKNOWN:
                    sb.cleancache_poolid = FAKE_FS_POOLID_OFFSET + i
                    self._sbs[sb.cleancache_poolid] = sb
                    ops = self._ops
                    self.fs_poolid_map[i] = (ops.init_fs(PAGE_SIZE) if ops is not None
                                             else FS_NO_BACKEND)
                    return

    def init_shared_fs(self, uuid: bytes, sb: Superblock) -> None:
        """``__cleancache_init_shared_fs``: fake id 2000+i, uuid remembered for registration."""
        if len(uuid) != 16:
            raise GuestError(f"a shared filesystem uuid is 16 bytes, not {len(uuid)}")
        with self.poolid_mutex:
            for i in range(MAX_INITIALIZABLE_FS):
                if self.shared_fs_poolid_map[i] == FS_UNKNOWN:
                    sb.cleancache_poolid = FAKE_SHARED_FS_POOLID_OFFSET + i
                    self._sbs[sb.cleancache_poolid] = sb
                    self.uuids[i] = bytes(uuid)
                    ops = self._ops
                    self.shared_fs_poolid_map[i] = (ops.init_shared_fs(uuid, PAGE_SIZE)
                                                    if ops is not None else FS_NO_BACKEND)
                    return

    def invalidate_fs(self, sb: Superblock) -> None:
        """``__cleancache_invalidate_fs`` (every umount): free the slot, tell the backend."""
        with self.poolid_mutex:
            fake = sb.cleancache_poolid
            if fake >= FAKE_SHARED_FS_POOLID_OFFSET:
                idx = fake - FAKE_SHARED_FS_POOLID_OFFSET
                old = self.shared_fs_poolid_map[idx]
                self.shared_fs_poolid_map[idx] = FS_UNKNOWN
                self.uuids[idx] = None
            elif fake >= FAKE_FS_POOLID_OFFSET:
                idx = fake - FAKE_FS_POOLID_OFFSET
                old = self.fs_poolid_map[idx]
                self.fs_poolid_map[idx] = FS_UNKNOWN
            else:
                old = fake
            self._sbs.pop(fake, None)
            sb.cleancache_poolid = -1
            ops = self._ops
            if ops is not None:
                ops.invalidate_fs(old)

    def real_pool_id(self, fake: int) -> int:
        """Translate a superblock's fake id to the backend's pool id (−1 if none)."""
        if fake >= FAKE_SHARED_FS_POOLID_OFFSET:
            return self.shared_fs_poolid_map[fake - FAKE_SHARED_FS_POOLID_OFFSET]
        if fake >= FAKE_FS_POOLID_OFFSET:
            return self.fs_poolid_map[fake - FAKE_FS_POOLID_OFFSET]
        return -1

    # -- data path (callers hold the page lock and only call when poolid >= 0) --------------

    def get_page(self, sb: Superblock, key: FileKey | None, index: int, page: bytearray) -> int:
        """``__cleancache_get_page``; 0 = hit (``page`` filled)."""
        ops = self._ops
        if ops is None:
            self.failed_gets += 1
            return -1
        real = self.real_pool_id(sb.cleancache_poolid)
        if key is None:
            return -1  # key error: skipped, not counted
        ret = ops.get_page(real, key, index, page) if real >= 0 else -1
        if ret == 0:
            self.succ_gets += 1
        else:
            self.failed_gets += 1
        return ret

    def put_page(self, sb: Superblock, key: FileKey | None, index: int, page: bytes) -> None:
        """``__cleancache_put_page`` (a clean page leaves the page cache)."""
        ops = self._ops
        if ops is None:
            self.puts += 1  # counted although nothing is stored (ref §9.2)
            return
        real = self.real_pool_id(sb.cleancache_poolid)
        if real >= 0 and key is not None:
            ops.put_page(real, key, index, page)
            self.puts += 1

    def invalidate_page(self, sb: Superblock, key: FileKey | None, index: int) -> None:
        """``__cleancache_invalidate_page``."""
        ops = self._ops
        if ops is None:
            return
        real = self.real_pool_id(sb.cleancache_poolid)
        if real >= 0 and key is not None:
            ops.invalidate_page(real, key, index)
            self.invalidates += 1

    def invalidate_inode(self, sb: Superblock, key: FileKey | None) -> None:
        """``__cleancache_invalidate_inode`` (not counted)."""
        ops = self._ops
        if ops is None:
            return
        real = self.real_pool_id(sb.cleancache_poolid)
        if real >= 0 and key is not None:
            ops.invalidate_inode(real, key)

    def debugfs(self) -> dict[str, int]:
        """The four counters of ``/sys/kernel/debug/cleancache``."""
        return {"succ_gets": self.succ_gets, "failed_gets": self.failed_gets,
                "puts": self.puts, "invalidates": self.invalidates}
