"""Filesystems: a disk of file pages, and the mounted superblock cleancache keys against.

A file page's content is derived from (disk, inode, generation, index, version), so any copy can
be checked against what the disk holds now: a cleancache hit that differs is stale.
"""

from __future__ import annotations

import itertools
import struct
import threading
from dataclasses import dataclass

from xentmem.errors import GuestError
from xentmem.guest._locks import StripedLock
from xentmem.guest.cleancache import FileKey, key_from_fh, key_from_ino

__all__ = ["FSTYPES", "Filesystem", "FsDisk", "FsType"]

_PAGE = struct.Struct("<QQQQ")
_disk_ids = itertools.count(1)


@dataclass(frozen=True)
class FsType:
    """How a filesystem type uses cleancache (ref §2.4): opt-in, shared, keyed by file handle."""

    cleancache: bool
    shared: bool = False
    file_handles: bool = False


FSTYPES: dict[str, FsType] = {
    "ext3": FsType(cleancache=True),
    "ext4": FsType(cleancache=True),
    "btrfs": FsType(cleancache=True, file_handles=True),
    "ocfs2": FsType(cleancache=True, shared=True, file_handles=True),
    "xfs": FsType(cleancache=False),
    "tmpfs": FsType(cleancache=False),
}


class FsDisk:
    """The persistent content of a filesystem: a version per (inode, page index). Two guests
    mounting the same cluster filesystem (ocfs2) share one ``FsDisk``."""

    def __init__(self) -> None:
        self.id = next(_disk_ids)
        self._versions: dict[tuple[int, int], int] = {}
        self._generation: dict[int, int] = {}
        self._lock = threading.Lock()

    def generation(self, ino: int) -> int:
        return self._generation.get(ino, 0)

    def version(self, ino: int, index: int) -> int:
        return self._versions.get((ino, index), 0)

    def content(self, ino: int, index: int) -> bytes:
        """The page as the disk holds it now."""
        return self.page(ino, self.generation(ino), index, self.version(ino, index))

    def page(self, ino: int, generation: int, index: int, version: int) -> bytes:
        return _PAGE.pack(self.id, ino << 16 | generation & 0xFFFF, index, version) * 128

    def write(self, ino: int, index: int) -> bytes:
        """A new version of the page reaches the disk; return its content."""
        with self._lock:
            self._versions[(ino, index)] = self._versions.get((ino, index), 0) + 1
        return self.content(ino, index)

    def truncate(self, ino: int) -> None:
        """The file is emptied and rewritten: a new generation, versions restart."""
        with self._lock:
            self._generation[ino] = self._generation.get(ino, 0) + 1
            for k in [k for k in self._versions if k[0] == ino]:
                del self._versions[k]


class Filesystem:
    """A mounted filesystem (its superblock): type, 16-byte uuid, disk, cleancache pool id, and
    the page locks its page-cache pages are operated under."""

    def __init__(self, name: str, fstype: str = "ext4", uuid: bytes | None = None,
                 disk: FsDisk | None = None) -> None:
        if fstype not in FSTYPES:
            raise GuestError(f"unknown filesystem type {fstype!r} "
                             f"(one of {', '.join(sorted(FSTYPES))})")
        if uuid is not None and len(uuid) != 16:
            raise GuestError(f"a filesystem uuid is 16 bytes, not {len(uuid)}")
        self.name = name
        self.fstype = fstype
        self.type = FSTYPES[fstype]
        self.uuid = uuid if uuid is not None else bytes(16)
        self.disk = disk if disk is not None else FsDisk()
        self.cleancache_poolid = -1  # alloc_super default: not cleancache-enabled
        self.locks = StripedLock()
        self.mounted = False

    def page_lock(self, ino: int, index: int) -> threading.Lock:
        return self.locks.for_key(ino * 0x9E3779B1 + index)

    def barrier(self) -> None:
        self.locks.barrier()

    def key(self, ino: int) -> FileKey | None:
        """The cleancache key of inode ``ino``: a file handle (ino, generation) on filesystems
        with ``encode_fh``, else the inode number."""
        if self.type.file_handles:
            return key_from_fh((ino & 0xFFFFFFFF, ino >> 32, self.disk.generation(ino)))
        return key_from_ino(ino)

    def __repr__(self) -> str:
        return (f"Filesystem({self.name!r}, {self.fstype}, "
                f"cleancache_poolid={self.cleancache_poolid})")
