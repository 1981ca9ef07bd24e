"""A Linux guest kernel, modelled as far as tmem cares: anonymous memory that swaps, swap devices,
filesystems with a page cache, frontswap and cleancache with lazy backend registration (the seed),
backend unload, and the balloon / self-balloon drivers.

Every page's content is derived from its identity and version, so every read is checked: a page
read back with the wrong content is *stale*, one read back as zeros (never written anywhere) is
*lost*. Both are counted in ``Guest.stats`` and are bugs by definition.

Locking, outermost first: an anonymous page's lock, then the swap slot's lock (or a file page's
lock), then the backend's own locks. ``swapon_mutex`` serialises swapon/swapoff/registration.
"""

from __future__ import annotations

import itertools
import logging
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from xentmem.abi import PAGE_SIZE
from xentmem.errors import GuestError
from xentmem.guest._pages import compact
from xentmem.guest.backends import BackendModule, UnloadReport
from xentmem.guest.balloon import Balloon, Reservation, SelfBalloon, TargetSource
from xentmem.guest.cleancache import Cleancache
from xentmem.guest.frontswap import LOST, Frontswap
from xentmem.guest.fs import Filesystem, FsDisk
from xentmem.guest.kernel import DEFAULT_KERNEL, Kernel
from xentmem.guest.selfballoon import MB, MemorySnapshot
from xentmem.guest.swap import MAX_SWAPFILES, ZERO_PAGE, MemorySlotStore, SlotStore, SwapDevice

__all__ = ["AnonPage", "Guest", "GuestStats", "anon_content"]

log = logging.getLogger(__name__)

_ANON = struct.Struct("<QQ")
Source = Literal["ram", "frontswap", "swap", "pagecache", "cleancache", "disk"]


def anon_content(pid: int, version: int) -> bytes:
    """The content anonymous page ``pid`` has at ``version`` (never the zero page: pid >= 1)."""
    return _ANON.pack(pid, version) * (PAGE_SIZE // _ANON.size)


class AnonPage:
    """An anonymous page: resident (``data``), in a swap slot (``entry``), or both (swap cache;
    ``dirty`` says the slot copy is out of date)."""

    __slots__ = ("data", "dirty", "entry", "freed", "lock", "pid", "version")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.version = 0
        self.data: bytes | None = anon_content(pid, 0)
        self.entry: tuple[int, int] | None = None
        self.dirty = True
        self.freed = False
        self.lock = threading.Lock()

    def __reduce__(self) -> tuple[object, ...]:
        # a checkpoint keeps the state, not the lock; resident data is always the content of
        # (pid, version) (every read is checked and repaired), so a flag stands for it
        return (_anon_page, (self.pid, self.version, self.data is not None, self.entry,
                             self.dirty, self.freed))


def _anon_page(pid: int, version: int, resident: bool, entry: tuple[int, int] | None,
               dirty: bool, freed: bool) -> AnonPage:
    page = AnonPage.__new__(AnonPage)
    page.pid, page.version, page.entry = pid, version, entry
    page.data = anon_content(pid, version) if resident else None
    page.dirty, page.freed, page.lock = dirty, freed, threading.Lock()
    return page


@dataclass
class GuestStats:
    """What happened to pages; ``lost`` and ``stale`` must stay 0."""

    swapouts: int = 0
    swapins: int = 0
    swapins_frontswap: int = 0
    disk_writes: int = 0
    disk_reads: int = 0
    file_reads: int = 0
    cleancache_hits: int = 0
    lost: int = 0
    stale: int = 0
    drained: int = 0
    unloads: list[UnloadReport] = field(default_factory=list)
    incidents: list[str] = field(default_factory=list)

    def record(self, kind: Literal["lost", "stale"], what: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.incidents) < 20:
            self.incidents.append(f"{kind}: {what}")


class Guest:
    """One guest kernel.

    ``memory_mb`` is the initial reservation and ``max_memory_mb`` the domain maximum (max_pfn);
    ``base_committed_mb`` models the kernel and userspace outside the workloads (resident and
    committed; default an eighth of ``memory_mb``, at most 32). ``reservation`` is the hypervisor
    side of ballooning (default: capped at max). ``kernel`` is the release it runs (default
    3.10): from 5.3 there is no tmem driver and no self-balloon driver (:mod:`.kernel`).
    """

    def __init__(self, name: str = "guest", *, memory_mb: int = 256,
                 max_memory_mb: int | None = None, base_committed_mb: int | None = None,
                 reservation: Reservation | None = None, dom0: bool = False,
                 swapoff_invalidates_area: bool = False,
                 kernel: Kernel | str = DEFAULT_KERNEL) -> None:
        max_memory_mb = memory_mb if max_memory_mb is None else max_memory_mb
        if memory_mb < 16 or max_memory_mb < memory_mb:
            raise GuestError(f"need 16 <= memory_mb ({memory_mb}) <= max_memory_mb "
                             f"({max_memory_mb})")
        self.name = name
        self.kernel = Kernel.parse(kernel)
        self.max_pfn = max_memory_mb * MB
        self.kernel_pages = max(MB, self.max_pfn // 100)  # outside totalram (image, memmap)
        self.totalreserve_pages = self.max_pfn // 64
        if base_committed_mb is None:
            base_committed_mb = min(32, memory_mb // 8)
        self.base_pages = base_committed_mb * MB
        self.swap_info: list[SwapDevice | None] = [None] * MAX_SWAPFILES
        self.swapon_mutex = threading.RLock()
        self._swap_list: tuple[SwapDevice, ...] = ()
        self._next_priority = -1
        self.frontswap = Frontswap(self, swapoff_invalidates_area=swapoff_invalidates_area)
        self.cleancache = Cleancache()
        self.balloon = Balloon(self, memory_mb * MB, self.max_pfn, reservation)
        self.selfballoon = SelfBalloon(self, dom0=dom0)
        self.backend: BackendModule | None = None
        self.filesystems: dict[str, Filesystem] = {}
        self.stats = GuestStats()
        self._pages: dict[int, AnonPage] = {}
        self._pids = itertools.count(1)
        self._lru: OrderedDict[int, None] = OrderedDict()  # resident anonymous pages
        self._lru_lock = threading.Lock()
        # keyed by the mounted superblock itself, so a remount under the same name starts empty
        self._pagecache: OrderedDict[tuple[Filesystem, int, int], bytes] = OrderedDict()
        self._pc_lock = threading.Lock()
        self._reclaim_lock = threading.Lock()
        self.now = 0.0

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()  # page-cache pages kept as their patterns
        state["_pagecache"] = OrderedDict((k, compact(v)) for k, v in self._pagecache.items())
        return state

    # -- memory accounting -----------------------------------------------------------------

    @property
    def totalram_pages(self) -> int:
        return self.balloon.stats.current_pages - self.kernel_pages

    @property
    def anon_pages(self) -> int:
        return len(self._pages)

    @property
    def resident_anon_pages(self) -> int:
        return len(self._lru)

    @property
    def pagecache_pages(self) -> int:
        return len(self._pagecache)

    @property
    def committed_pages(self) -> int:
        return self.base_pages + len(self._pages)

    @property
    def free_pages(self) -> int:
        return (self.totalram_pages - self.totalreserve_pages - self.base_pages
                - len(self._lru) - len(self._pagecache))

    def memory_snapshot(self) -> MemorySnapshot:
        return MemorySnapshot(
            totalram_pages=self.totalram_pages, committed_pages=self.committed_pages,
            totalreserve_pages=self.totalreserve_pages, max_pfn=self.max_pfn,
            balloon_current_pages=self.balloon.stats.current_pages,
            frontswap_pages=self.frontswap.curr_pages())

    def meminfo(self) -> dict[str, int]:
        """A few ``/proc/meminfo`` lines, in kB."""
        kb = PAGE_SIZE // 1024
        swap_total = sum(d.max - 1 for d in self._swap_list)
        swap_used = sum(d.inuse_pages for d in self._swap_list)
        return {"MemTotal": self.totalram_pages * kb, "MemFree": max(self.free_pages, 0) * kb,
                "Cached": self.pagecache_pages * kb, "SwapTotal": swap_total * kb,
                "SwapFree": (swap_total - swap_used) * kb,
                "Committed_AS": self.committed_pages * kb}

    # -- swap devices ------------------------------------------------------------------------

    def swapon(self, store: SlotStore | int, *, priority: int | None = None,
               name: str = "") -> SwapDevice:
        """Enable a swap device (a ``SlotStore`` or a slot count for an in-memory one)."""
        if isinstance(store, int):
            store = MemorySlotStore(store)
        with self.swapon_mutex:
            free = [i for i, d in enumerate(self.swap_info) if d is None]
            if not free:
                raise GuestError(f"all {MAX_SWAPFILES} swap types in use")
            if priority is None:
                priority = self._next_priority
                self._next_priority -= 1
            sis = SwapDevice(free[0], store, priority, name)
            self.swap_info[sis.type] = sis
            self.frontswap.init(sis.type, bytearray(store.pages))  # before the swap list
            self._swap_list = tuple(sorted((*self._swap_list, sis), key=lambda d: -d.priority))
            log.info("Adding %dk swap on %s.  Priority:%d extents:1 across:%dk FS",
                     (store.pages - 1) * 4, sis.name, priority, (store.pages - 1) * 4)
            return sis

    def swapoff(self, type: int) -> None:
        """Disable a swap device: every page comes back to RAM first (frontswap, then disk)."""
        sis = self.swap_info[type] if 0 <= type < MAX_SWAPFILES else None
        if sis is None or sis not in self._swap_list:
            raise GuestError(f"swap type {type} is not active")
        if not self.vm_enough_memory(sis.inuse_pages):
            raise GuestError(f"swapoff {sis.name}: not enough memory (-ENOMEM)")
        with self.swapon_mutex:
            sis.writeok = False
            self._swap_list = tuple(d for d in self._swap_list if d is not sis)
        try:
            self.try_to_unuse(type, False, 0)
            if sis.inuse_pages:
                raise GuestError(f"swapoff {sis.name}: {sis.inuse_pages} pages could not be "
                                 "brought back (-ENOMEM)")
        except BaseException:
            with self.swapon_mutex:
                sis.writeok = True
                self._swap_list = tuple(sorted((*self._swap_list, sis),
                                               key=lambda d: -d.priority))
            raise
        with self.swapon_mutex:
            if self.frontswap.swapoff_invalidates_area:
                self.frontswap.invalidate_area(type)
                sis.frontswap_map = None
            else:  # 3.10-3.12: the map is NULLed first, so the backend is never told
                sis.frontswap_map = None
                self.frontswap.invalidate_area(type)
            self.swap_info[type] = None

    def active_swap_devices(self) -> Sequence[SwapDevice]:
        return self._swap_list

    def vm_enough_memory(self, pages: int) -> bool:
        # overcommit "guess" mode, roughly: free RAM plus reclaimable page cache
        return pages <= self.free_pages + self.pagecache_pages

    def _alloc_slot(self, page: AnonPage) -> tuple[int, int] | None:
        for sis in self._swap_list:
            offset = sis.alloc_slot(page)
            if offset is not None:
                return sis.type, offset
        return None

    def _swap_free(self, entry: tuple[int, int]) -> None:
        """``swap_entry_free``: the slot's last reference is gone."""
        type, offset = entry
        sis = self.swap_info[type]
        with sis.slot_lock(offset):
            self.frontswap.invalidate_page(type, offset)
            sis.free_slot(offset)

    def _swap_full(self) -> bool:
        """``vm_swap_full``: more than half of all swap in use."""
        total = sum(d.max - 1 for d in self._swap_list)
        used = sum(d.inuse_pages for d in self._swap_list)
        return used * 2 > total

    # -- anonymous memory (callers of the _locked helpers hold page.lock) ------------------

    def alloc_anon(self, count: int) -> list[int]:
        """Fault in ``count`` new anonymous pages; return their ids."""
        pids = []
        for _ in range(count):
            page = AnonPage(next(self._pids))
            self._pages[page.pid] = page
            with self._lru_lock:
                self._lru[page.pid] = None
            pids.append(page.pid)
        return pids

    def _page(self, pid: int) -> AnonPage | None:
        page = self._pages.get(pid)
        return None if page is None or page.freed else page

    def _check_anon(self, page: AnonPage, data: bytes, where: str) -> bytes:
        expected = anon_content(page.pid, page.version)
        if data != expected:
            kind = "lost" if data == ZERO_PAGE else "stale"
            self.stats.record(kind, f"anon page {page.pid} v{page.version} from {where}")
            return expected  # repaired, so one bug is counted once
        return data

    def _swap_in_locked(self, page: AnonPage) -> Source:
        if page.data is not None:
            return "ram"
        assert page.entry is not None
        type, offset = page.entry
        sis = self.swap_info[type]
        buf = bytearray(PAGE_SIZE)
        with sis.slot_lock(offset):
            ret = self.frontswap.load(type, offset, buf)
            if ret == 0:
                source: Source = "frontswap"
                data = bytes(buf)
                # exclusive get: the backend let go and the bit is clear, so only RAM has it
                page.dirty = not sis.fs_test(offset)
            elif ret == LOST:  # counted lost by the check below, never read from the slot
                source, data, page.dirty = "frontswap", ZERO_PAGE, True
            else:
                source = "swap"
                data = sis.store.read(offset)
                page.dirty = False
        page.data = self._check_anon(page, data, f"{source} {type}:{offset}")
        self.stats.swapins += 1
        if source == "frontswap":
            self.stats.swapins_frontswap += 1
        else:
            self.stats.disk_reads += 1
        with self._lru_lock:
            self._lru[page.pid] = None
        return source

    def _swap_out_locked(self, page: AnonPage) -> bool:
        if page.data is None:
            return True
        if page.entry is not None and not page.dirty:
            page.data = None  # clean swap-cache page: the slot (or frontswap) has it
        else:
            if page.entry is None:
                page.entry = self._alloc_slot(page)
                if page.entry is None:
                    return False  # swap full
            type, offset = page.entry
            sis = self.swap_info[type]
            data = page.data
            with sis.slot_lock(offset):
                if self.frontswap.store(type, offset, data) != 0:
                    sis.store.write(offset, data)
                    self.stats.disk_writes += 1
            page.dirty = False
            page.data = None
        self.stats.swapouts += 1
        with self._lru_lock:
            self._lru.pop(page.pid, None)
        return True

    def read_anon(self, pid: int) -> Source | None:
        """Touch a page for reading (swap it in if needed); ``None`` if it does not exist."""
        page = self._page(pid)
        if page is None:
            return None
        with page.lock:
            if page.freed:
                return None
            source = self._swap_in_locked(page)
            if source == "ram":
                page.data = self._check_anon(page, page.data, "ram")
        return source

    def write_anon(self, pid: int) -> Source | None:
        """Touch a page for writing: swap in, new content. The swap slot is kept unless swap
        is more than half full (``do_swap_page``), so the next swap-out is a duplicate store."""
        page = self._page(pid)
        if page is None:
            return None
        with page.lock:
            if page.freed:
                return None
            source = self._swap_in_locked(page)
            page.version += 1
            page.data = anon_content(page.pid, page.version)
            page.dirty = True
            if page.entry is not None and self._swap_full():
                self._swap_free(page.entry)
                page.entry = None
        return source

    def swap_out(self, pid: int) -> bool:
        """Evict a page to swap (frontswap first); False if it could not be."""
        page = self._page(pid)
        if page is None:
            return False
        with page.lock:
            return not page.freed and self._swap_out_locked(page)

    def free_anon(self, pid: int) -> None:
        """Unmap a page: its slot, if any, is freed (frontswap invalidate)."""
        page = self._page(pid)
        if page is None:
            return
        with page.lock:
            if page.freed:
                return
            page.freed = True
            if page.entry is not None:
                self._swap_free(page.entry)
                page.entry = None
            page.data = None
        with self._lru_lock:
            self._lru.pop(pid, None)
        self._pages.pop(pid, None)

    def try_to_unuse(self, type: int, frontswap: bool, pages: int) -> int:
        """Bring pages of swap ``type`` back into RAM and out of the swap cache; with
        ``frontswap`` only those frontswap holds; stop after ``pages`` (0 = all)."""
        sis = self.swap_info[type]
        if sis is None:
            return 0
        done = 0
        while True:
            offsets = sis.fs_offsets() if frontswap else sorted(sis.owner)
            if not offsets:
                return done
            progress = False
            for offset in offsets:
                page = sis.owner.get(offset)
                if not isinstance(page, AnonPage):
                    continue
                with page.lock:
                    if page.freed or page.entry != (type, offset):
                        continue
                    if frontswap and not sis.fs_test(offset):
                        continue
                    self._swap_in_locked(page)
                    self._swap_free(page.entry)  # delete_from_swap_cache
                    page.entry = None
                    page.dirty = True
                done += 1
                progress = True
                if pages and done >= pages:
                    return done
            if not progress or frontswap:
                return done

    def verify_anon(self) -> int:
        """Read every anonymous page back (swapping in); return how many were checked."""
        count = 0
        for pid in list(self._pages):
            if self.read_anon(pid) is not None:
                count += 1
        return count

    # -- filesystems and the page cache ------------------------------------------------------

    def mount(self, name: str, fstype: str = "ext4", *, uuid: bytes | None = None,
              disk: FsDisk | None = None) -> Filesystem:
        """Mount a filesystem; ext3/ext4/btrfs call ``cleancache_init_fs``, ocfs2
        ``cleancache_init_shared_fs`` with its uuid."""
        if name in self.filesystems:
            raise GuestError(f"{name} is already mounted")
        fs = Filesystem(name, fstype, uuid, disk)
        if fs.type.cleancache:
            if fs.type.shared:
                self.cleancache.init_shared_fs(fs.uuid, fs)
            else:
                self.cleancache.init_fs(fs)
        fs.mounted = True
        self.filesystems[name] = fs
        return fs

    def remount_rw(self, name: str) -> None:
        """Remount read-write. ext4 runs its setup_super again, i.e. a second
        ``cleancache_init_fs`` for the same superblock: a new slot, the old one leaks until
        reboot (ref §2.4)."""
        fs = self._fs(name)
        if fs.fstype == "ext4":
            with fs.locks.all():
                self.cleancache.init_fs(fs)

    def umount(self, name: str) -> None:
        """Unmount: drop its page-cache pages, ``cleancache_invalidate_fs`` (every fs type)."""
        fs = self.filesystems.pop(name, None)
        if fs is None:
            raise GuestError(f"{name} is not mounted")
        with fs.locks.all():  # page operations already inside finish; later ones see it gone
            fs.mounted = False
            with self._pc_lock:
                for k in [k for k in self._pagecache if k[0] is fs]:
                    del self._pagecache[k]
        self.cleancache.invalidate_fs(fs)

    def _fs(self, name: str) -> Filesystem:
        try:
            return self.filesystems[name]
        except KeyError:
            raise GuestError(f"{name} is not mounted") from None

    @staticmethod
    def _still_mounted(fs: Filesystem) -> None:
        """Checked under the page lock: an umount may have run since the lookup."""
        if not fs.mounted:
            raise GuestError(f"{fs.name} is not mounted")

    def _check_file(self, fs: Filesystem, ino: int, index: int, data: bytes, where: str) -> bytes:
        expected = fs.disk.content(ino, index)
        if data != expected:
            self.stats.record("stale", f"{fs.name} ino {ino} page {index} from {where}")
            return expected
        return data

    def read_file(self, fs_name: str, ino: int, index: int) -> Source:
        """Read one file page: page cache, else cleancache, else disk; then cache it."""
        fs = self._fs(fs_name)
        key = (fs, ino, index)
        with fs.page_lock(ino, index):
            self._still_mounted(fs)
            with self._pc_lock:
                data = self._pagecache.get(key)
                if data is not None:
                    self._pagecache.move_to_end(key)
            if data is not None:
                return "pagecache"
            self.stats.file_reads += 1
            source: Source = "disk"
            if fs.cleancache_poolid >= 0:
                buf = bytearray(PAGE_SIZE)
                if self.cleancache.get_page(fs, fs.key(ino), index, buf) == 0:
                    source = "cleancache"
                    self.stats.cleancache_hits += 1
                    data = self._check_file(fs, ino, index, bytes(buf), "cleancache")
            if data is None:
                data = fs.disk.content(ino, index)
            with self._pc_lock:
                self._pagecache[key] = data
        return source

    def write_file(self, fs_name: str, ino: int, index: int) -> None:
        """Write one file page through to disk; the cleancache copy is invalidated."""
        fs = self._fs(fs_name)
        with fs.page_lock(ino, index):
            self._still_mounted(fs)
            data = fs.disk.write(ino, index)
            if fs.cleancache_poolid >= 0:
                self.cleancache.invalidate_page(fs, fs.key(ino), index)
            with self._pc_lock:
                self._pagecache[(fs, ino, index)] = data
                self._pagecache.move_to_end((fs, ino, index))

    def truncate(self, fs_name: str, ino: int) -> None:
        """Truncate a file to nothing and start a new generation of it."""
        fs = self._fs(fs_name)
        with fs.locks.all():  # i_mutex + every page lock of the file: no reader in between
            self._still_mounted(fs)
            if fs.cleancache_poolid >= 0:
                self.cleancache.invalidate_inode(fs, fs.key(ino))
            with self._pc_lock:
                for k in [k for k in self._pagecache if k[0] is fs and k[1] == ino]:
                    del self._pagecache[k]
            fs.disk.truncate(ino)
            if fs.cleancache_poolid >= 0:
                self.cleancache.invalidate_inode(fs, fs.key(ino))

    def evict_file_pages(self, count: int) -> int:
        """Evict the ``count`` oldest page-cache pages; clean ones go to cleancache."""
        done = 0
        while done < count:
            with self._pc_lock:
                if not self._pagecache:
                    break
                key = next(iter(self._pagecache))
            fs, ino, index = key
            with fs.page_lock(ino, index):
                with self._pc_lock:
                    data = self._pagecache.pop(key, None)
                if data is None:
                    continue
                if fs.cleancache_poolid >= 0:  # uptodate and mapped to disk: put
                    self.cleancache.put_page(fs, fs.key(ino), index, data)
            done += 1
        return done

    def drop_caches(self) -> int:
        """``echo 1 > /proc/sys/vm/drop_caches``."""
        return self.evict_file_pages(len(self._pagecache))

    # -- reclaim and the balloon ---------------------------------------------------------------

    def reclaim(self, pages: int) -> int:
        """Free up to ``pages``: page cache first (down to a small floor), then swap out the
        least recently used anonymous pages. Returns pages freed."""
        freed = 0
        with self._reclaim_lock:
            cache_floor = min(4 * MB, self.totalram_pages // 16)
            excess_cache = max(self.pagecache_pages - cache_floor, 0)
            freed += self.evict_file_pages(min(pages, excess_cache))
            failures = 0
            while freed < pages and failures < 8:
                with self._lru_lock:
                    if not self._lru:
                        break
                    pid = next(iter(self._lru))
                    self._lru.move_to_end(pid)
                if self.swap_out(pid):
                    freed += 1
                else:
                    failures += 1
            if freed < pages:
                freed += self.evict_file_pages(pages - freed)
        return freed

    def balance(self) -> int:
        """kswapd: reclaim until free memory is non-negative; return pages freed."""
        short = -self.free_pages
        return self.reclaim(short) if short > 0 else 0

    def balloon_alloc(self, pages: int) -> int:
        """Pages the balloon may take now (a no-retry allocation: one reclaim attempt)."""
        short = pages - self.free_pages
        if short > 0:
            self.reclaim(short)
        return max(0, min(pages, self.free_pages))

    def attach_target(self, source: TargetSource) -> None:
        """Feed the balloon driver from ``memory/target`` (a xenstore watch or in-memory)."""
        self.balloon.attach(source)

    # -- backends -------------------------------------------------------------------------

    def load_backend(self, module: BackendModule, *, replace: bool = False) -> UnloadReport | None:
        """``modprobe``: register ``module``'s ops. With a backend already loaded this refuses
        (the kernel would silently orphan its pages) unless ``replace``, which unloads it
        first — draining its pages — and returns that report."""
        report = None
        if module.name == "tmem" and not self.kernel.has_tmem:
            raise GuestError(self.kernel.missing("tmem"))
        if self.backend is not None:
            if not replace:
                raise GuestError(f"backend {self.backend.name} already loaded "
                                 "(unload it first, or replace=True)")
            report = self.unload_backend()
        module.module_init(self)
        self.backend = module
        return report

    def unload_backend(self) -> UnloadReport:
        """``rmmod``: stop routing, drain frontswap to the swap devices, drop cleancache."""
        if self.backend is None:
            raise GuestError("no backend loaded")
        report = self.backend.module_exit(self)
        self.backend = None
        self.stats.drained += report.drained
        self.stats.unloads.append(report)
        return report

    # -- time ------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Advance the model's clock to ``now``: due balloon retries and self-balloon runs."""
        self.now = now
        self.balloon.tick(now)
        self.selfballoon.tick(now)
        backend_tick = getattr(self.backend, "tick", None)  # a backend's own periodic work
        if backend_tick is not None:
            backend_tick(now)
        self.balance()

    def pages_in(self, pids: Iterable[int]) -> list[AnonPage]:
        """The page objects for ``pids`` (tests and diagnostics)."""
        return [p for p in (self._pages.get(pid) for pid in pids) if p is not None]

    def __repr__(self) -> str:
        backend = self.backend.name if self.backend else None
        return (f"Guest({self.name!r}, totalram={self.totalram_pages}, anon={self.anon_pages}, "
                f"swap={len(self._swap_list)}, backend={backend})")
