"""Hypervisor-side tmem: clients, pools, objects, pages, LRU lists, eviction (ref §3).

This module knows nothing about bytes on the wire: the entry (``_host.py``) decodes structs and
resolves guest addresses, then calls ``Tmem`` methods with plain values, a domain's memory and a
byte offset into it (``-1`` when the frame is not a RAM page of the caller). Methods return what
Xen's C functions return (ints, negative errno). The one exception that may leave this module on
purpose is ``HypervisorCrash``: a path where the imitated release dereferenced freed memory.
"""

from __future__ import annotations

import mmap
from collections import OrderedDict, deque
from collections.abc import Sequence
from itertools import islice, repeat
from typing import TYPE_CHECKING

from xentmem.abi import (
    MAX_GLOBAL_SHARED_POOLS,
    MAX_POOLS_PER_DOMAIN,
    PAGE_SIZE,
    TMEM_SPEC_VERSION,
    PoolFlags,
    XenErrno,
)
from xentmem.emulator._codec import compress_page, decode_into, decompress

if TYPE_CHECKING:
    from xentmem.emulator._behaviour import Behaviour
    from xentmem.emulator._host import Domain, EmulatedHost

PAGE = PAGE_SIZE
# Xen's sub-page allocator (xmem pool) serves at most one page minus two block headers; a
# compressed page only pays when it fits there (§3.7), else it is stored raw and counted in `cn`.
SUBPAGE_MAX = PAGE - 32
# Stand-in for the addresses of hypervisor objects that leaked into guest-visible handles (§9.1).
XEN_POINTER = 0xFFFF830000000000
UUID_NONE = (0xFFFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF)

EPERM = -XenErrno.EPERM
ENOENT = -XenErrno.ENOENT
ENOMEM = -XenErrno.ENOMEM
EFAULT = -XenErrno.EFAULT
EINVAL = -XenErrno.EINVAL
ENOSPC = -XenErrno.ENOSPC
EFROZEN = -XenErrno.EFROZEN
EEMPTY = -XenErrno.EEMPTY

# Linux MAP_NORESERVE (not exported by the mmap module): emulated RAM is address space only
# until touched, so a guest with a large max_memory must not be refused by overcommit checks.
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)


def anonymous_memory(size: int) -> mmap.mmap:
    """Zero-filled memory that costs nothing until touched (transparent huge pages asked)."""
    mem = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE)
    mem.madvise(mmap.MADV_HUGEPAGE)  # fewer first-touch faults per stored page
    return mem


class HypervisorCrash(Exception):
    """The imitated hypervisor would have crashed here (ref §9); ``str()`` says why."""


def _corrupt() -> None:
    # Xen ASSERTs that a stored page decompresses to a whole page: a debug build stops there.
    raise HypervisorCrash("a compressed page did not decompress to 4096 bytes")


class Page:
    """A page descriptor (Xen's ``pgp``). A raw page's ``data`` is its byte offset in the
    host's page arena (``csize`` 0); a compressed page's ``data`` is the compressed bytes.
    ``prev``/``next`` link persistent pages in put order (save walks it)."""

    __slots__ = ("csize", "data", "index", "next", "obj", "prev")

    def __init__(self, obj: Obj | None, index: int, data: bytes | int, csize: int) -> None:
        self.obj = obj
        self.index = index
        self.data = data
        self.csize = csize
        self.prev: Page = self
        self.next: Page = self


class Obj:
    """An object: the pages of one 192-bit oid in one pool."""

    __slots__ = ("last_client", "oid", "pages", "pool")

    def __init__(self, pool: Pool, oid: tuple[int, int, int]) -> None:
        self.pool = pool
        self.oid = oid
        self.pages: dict[int, Page] = {}
        self.last_client = -1


class Pool:
    """A tmem pool. ``client`` is the owner; ``slot`` its local id in the owner's table."""

    __slots__ = (
        "Nm",
        "Om",
        "Pm",
        "client",
        "cursor",
        "dying",
        "flags",
        "freed",
        "fs",
        "ft",
        "gs",
        "gslot",
        "gt",
        "head",
        "list_crash",
        "npages",
        "objs",
        "os",
        "ot",
        "pd",
        "persistent",
        "pr",
        "ps",
        "pt",
        "px",
        "shared",
        "sharers",
        "slot",
        "uuid",
    )

    def __init__(self, client: Client, slot: int, flags: int, persistent: bool, shared: bool,
                 uuid: tuple[int, int]) -> None:
        self.client = client
        self.slot = slot
        self.flags = flags
        self.persistent = persistent
        self.shared = shared
        self.uuid = uuid
        self.objs: dict[tuple[int, int, int], Obj] = {}
        self.npages = 0
        self.sharers: list[Client] = []
        self.gslot = -1
        self.head = Page(None, 0, b"", 0)  # sentinel of the persistent page list
        self.cursor: Page | None = None  # SAVE_GET_NEXT_PAGE position
        self.freed = False  # freed by Xen but still referenced (4.5 share-list defects)
        self.list_crash = False  # such a pool crashes the LIST that walks it
        self.dying = False  # Xen's is_dying: its pages are never evicted
        self.pt = self.ps = self.pr = self.pd = self.px = 0
        self.gt = self.gs = self.ft = self.fs = self.ot = self.os = 0
        self.Pm = self.Om = self.Nm = 0

    @property
    def type_letters(self) -> str:
        return ("P" if self.persistent else "E") + ("S" if self.shared else "P")

    def pages_in_order(self) -> list[Page]:
        """Persistent pages in put order."""
        out, p = [], self.head.next
        while p is not self.head:
            out.append(p)
            p = p.next
        return out

    def radix_nodes(self) -> int:
        """Radix-tree nodes of all objects (64-slot nodes; Xen's ``Nc``), computed on demand."""
        return sum(self.obj_nodes(obj) for obj in self.objs.values())

    @staticmethod
    def obj_nodes(obj: Obj) -> int:
        if not obj.pages:
            return 0
        top = max(obj.pages)
        height = 1
        while top >> (6 * height):
            height += 1
        return sum(len({i >> (6 * level) for i in obj.pages}) for level in range(1, height + 1))


class Client:
    """One tmem client per domain (``cli_id`` = domid)."""

    __slots__ = (
        "Em", "Ge", "Gp", "Pp", "auth", "cap", "cb", "cm", "cn", "compress", "cp", "dangling_inv",
        "dom", "domid", "eph", "eph_count", "frozen", "inv", "inv_logged", "migrating", "pools",
        "saving", "was_frozen", "weight",
    )

    def __init__(self, dom: Domain, compress: bool) -> None:
        self.dom = dom
        self.domid = dom.domid
        self.weight = 0
        self.cap = 0
        self.compress = compress
        self.frozen = False
        self.was_frozen = False
        self.saving = False
        self.migrating = False
        self.pools: list[Pool | None] = [None] * MAX_POOLS_PER_DOMAIN
        self.auth: list[tuple[int, int]] = []
        self.eph: OrderedDict[Page, None] = OrderedDict()
        self.eph_count = 0
        self.inv: list[tuple[int, int, tuple[int, int, int]]] = []
        self.inv_logged = False
        self.dangling_inv = False
        self.Em = self.Ge = self.Pp = self.Gp = 0
        self.cp = self.cb = self.cn = self.cm = 0


def _cdiv(a: int, b: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _sequential_run(dom: Domain, o0s: Sequence[int], o1s: Sequence[int], o2s: Sequence[int],
                    indexes: Sequence[int], cmfns: Sequence[int]) -> tuple[int, int, int] | None:
    """The oid of a run whose ops all name one object, distinct indexes, and consecutive RAM
    frames of ``dom`` (how a batching client, or Linux swapping out a cluster, issues them), or
    None. Such a run is where ``put_run``/``get_run`` move pages in bulk; checked in C."""
    count = len(cmfns)
    first = cmfns[0]
    if (o0s.count(o0s[0]) != count or o1s.count(o1s[0]) != count
            or o2s.count(o2s[0]) != count or not 0 < first <= dom.max_pages - count
            or cmfns[-1] != first + count - 1 or b"\0" in dom.populated[first:first + count]
            or len(set(indexes)) != count):
        return None
    if count > 2 and tuple(cmfns) != tuple(range(first, first + count)):
        return None
    return o0s[0], o1s[0], o2s[0]


def _consecutive(slots: list[int]) -> bool:
    """Whether arena offsets follow one another (one copy moves them all)."""
    return slots[-1] - slots[0] == (len(slots) - 1) * PAGE and (
        len(slots) < 3 or slots == list(range(slots[0], slots[-1] + 1, PAGE)))


class Tmem:
    """The hypervisor's tmem state and the guest operations on it."""

    def __init__(self, host: EmulatedHost, behaviour: Behaviour, *, compress: bool,
                 shared_auth: bool) -> None:
        self.host = host
        self.b = behaviour
        self.mark_owner = behaviour.bug_owner_marks_objects
        self.compress_default = compress
        self.shared_auth = shared_auth
        self.clients: dict[int, Client] = {}
        self.shared: list[Pool | None] = [None] * MAX_GLOBAL_SHARED_POOLS
        self.auth_disabled = False  # global "authorisation not required" flag
        self.g_eph: OrderedDict[Page, None] = OrderedDict()
        self.eph_count = 0
        self.weight_sum = 0
        self.raw_pages = 0  # pages holding one raw page each
        self.cbytes = 0  # bytes of compressed pages (packed into sub-page allocations)
        self.free_list = 0  # `Ta`: pages tmem keeps for reuse
        self.reserve = 0  # Xen's mid-size reserve: max ever seen of free/128
        self.npages = 0  # page descriptors
        self.nobjs = 0
        # Raw pages live in one arena the size of host RAM (tmem can never hold more): a PUT
        # copies into a slot and a GET copies out, no allocation per page. Freed slots are
        # reused first, oldest first: pages freed in order (a flushed object) come back in
        # order, so runs of pages keep runs of slots and move with one copy. (Where a page
        # sits in the arena is ours alone: Xen's ABI never shows it.)
        self.arena = anonymous_memory(host.memory_mb << 20)
        self.av = memoryview(self.arena)
        self.free_slots: deque[int] = deque()
        self.next_slot = 0
        self.leak_pages = 0  # counters that real releases never decremented (§9)
        self.leak_frames = 0
        self.leaked_nodes = 0  # radix nodes of objects leaked with their pool (§9.4)
        self.dying_pools = 0  # pools marked is_dying that still hold pages
        self.ptr_seq = 0
        self.Tt = self.Te = self.Cf = self.Af = self.Pf = self.Lm = self.Et = self.Ea = 0
        self.Rt = self.Ra = self.Rx = self.Fp = self.Ep = 0
        self.Em = self.Om = self.Pm = self.Fm = self.Nm = 0

    # ---- memory -----------------------------------------------------------------------------

    @property
    def used_pages(self) -> int:
        return self.raw_pages + ((self.cbytes + PAGE - 1) >> 12)

    def _grow(self, pages: int) -> bool:
        """Take ``pages`` (0 or 1) more pages for storage: tmem's free list, then Xen's heap."""
        if pages <= 0:
            if pages < 0:
                self.free_list -= pages
            return True
        if self.free_list:
            self.free_list -= 1
            return True
        host = self.host
        if host.heap_free > 0:
            host.heap_free -= 1
            return True
        return False

    def _store(self, client: Client, src) -> tuple[bytes | int, int] | None:
        """Storage for one page: compressed bytes when the owner compresses and it pays,
        else a slot of the page arena. Returns ``(data, csize)`` for ``Page``."""
        if client.compress:
            packed = compress_page(src)
            size = len(packed)
            if size < SUBPAGE_MAX:
                before = (self.cbytes + PAGE - 1) >> 12
                after = (self.cbytes + size + PAGE - 1) >> 12
                if after > before and not self._grow(after - before):  # most fit the last page
                    client.cm += 1
                    self.Af += 1
                    return None
                self.cbytes += size
                client.cp += 1
                client.cb += size
                return packed, size
            client.cn += 1
        if not self._grow(1):
            return None
        self.raw_pages += 1
        slots = self.free_slots
        if slots:
            at = slots.popleft()
        else:
            at = self.next_slot
            self.next_slot = at + PAGE
        self.av[at:at + PAGE] = src
        return at, 0

    def _release(self, pg: Page) -> None:
        csize = pg.csize
        if csize:
            before = (self.cbytes + PAGE - 1) >> 12
            self.cbytes -= csize
            self.free_list += before - ((self.cbytes + PAGE - 1) >> 12)
        else:
            self.raw_pages -= 1
            self.free_list += 1
            self.free_slots.append(pg.data)

    def note_heap(self) -> None:
        """Pages went back to Xen's heap: the mid-size reserve is the max ever seen of
        free/128 (``init_heap_pages``)."""
        reserve = self.host.heap_free // 128
        if reserve > self.reserve:
            self.reserve = reserve

    def free_mb(self) -> int:
        return (self.free_list + max(0, self.host.heap_free - self.reserve)) >> 8

    def ensure_free(self, cc: Client) -> bool:
        """The "ensure 1 MiB free" step before every PUT (§3.4)."""
        if self.free_list + self.host.heap_free - self.reserve >= 256:
            return True
        # One successful eviction puts a page on the free list for this PUT (§9.1: past the
        # threshold every PUT evicts exactly one page, even when the heap is exhausted); ten
        # failed attempts give up (each failing PUT adds 10 to `Ea`).
        for _ in range(10):
            if self.evict(cc):
                return True
        return not self.b.ensure_free_gives_up

    def relinquish(self, pages: int) -> int:
        """Xen's allocator taking pages back from tmem (free list, else evictions)."""
        self.Ra += 1
        got = evictions = 0
        while got < pages:
            if self.free_list:
                self.free_list -= 1
                got += 1
                continue
            if evictions >= 10 or not self.evict(None):
                break
            evictions += 1
        self.Rx = max(self.Rx, evictions)
        self.Rt += got
        return got

    def close(self) -> None:
        self.av.release()
        self.arena.close()

    def give_back_free_list(self) -> int:
        """Return tmem's whole free list to Xen's heap; the number of pages."""
        pages, self.free_list = self.free_list, 0
        self.host.heap_free += pages
        self.note_heap()
        return pages

    # ---- clients ----------------------------------------------------------------------------

    def client(self, domid: int) -> Client | None:
        return self.clients.get(domid)

    def create_client(self, dom: Domain) -> Client:
        client = Client(dom, self.compress_default)
        self.clients[dom.domid] = client
        dom.client = client
        return client

    def set_weight(self, client: Client, weight: int) -> None:
        self.weight_sum += weight - client.weight
        client.weight = weight

    # ---- eviction ---------------------------------------------------------------------------

    def over_quota(self, c: Client) -> bool:
        """Literal ``tmem_client_over_quota`` (§3.5), inverted as the code was."""
        total = self.weight_sum
        if total == 0 or c.weight == 0 or c.eph_count == 0:
            return False
        return _cdiv(self.eph_count * 100, c.eph_count) > _cdiv(total * 100, c.weight)

    def evict(self, cc: Client | None) -> bool:
        """``tmem_evict``: the first evictable page of the current client's list when it is
        over quota, else of the global list; pages of dying pools are skipped."""
        self.Ea += 1
        if cc is not None and cc.eph and self.over_quota(cc):
            victim = self._first_evictable(cc.eph)
        elif self.g_eph:
            victim = self._first_evictable(self.g_eph)
        else:
            return False
        if victim is None:
            return False
        self.remove_page(victim)
        self.Et += 1
        return True

    def _first_evictable(self, pages: OrderedDict[Page, None]) -> Page | None:
        if not self.dying_pools:
            return next(iter(pages))
        return next((pg for pg in pages if not pg.obj.pool.dying), None)  # type: ignore[union-attr]

    # ---- pages ------------------------------------------------------------------------------

    def remove_page(self, pg: Page, *, leak: bool = False, release: bool = True) -> None:
        """Drop a page (and its object when it was the last). ``leak`` keeps the global and
        client counters one too high, as 4.5/4.12 did on a failed destructive GET."""
        obj = pg.obj
        pool = obj.pool  # type: ignore[union-attr]
        del obj.pages[pg.index]  # type: ignore[union-attr]
        pool.npages -= 1
        if not obj.pages:  # type: ignore[union-attr]
            del pool.objs[obj.oid]  # type: ignore[union-attr]
            self.nobjs -= 1
        if release:
            self._release(pg)
        owner = pool.client
        if pool.persistent:
            if pool.cursor is pg:
                pool.cursor = pg.prev if pg.prev is not pool.head else None
            pg.prev.next = pg.next
            pg.next.prev = pg.prev
            owner.dom.tmem_pages -= 1
            self.npages -= 1
            return
        del self.g_eph[pg]
        del owner.eph[pg]
        if leak:
            self.leak_pages += 1
            self.leak_frames += 1
            return
        self.npages -= 1
        self.eph_count -= 1
        owner.eph_count -= 1

    def _new_obj(self, pool: Pool, oid: tuple[int, int, int]) -> Obj:
        """A new, empty object in ``pool`` (counted, with the high-water marks)."""
        obj = pool.objs[oid] = Obj(pool, oid)
        self.nobjs += 1
        if self.nobjs > self.Om:
            self.Om = self.nobjs
        if len(pool.objs) > pool.Om:
            pool.Om = len(pool.objs)
        return obj

    def put(self, cc: Client, pool: Pool, oid: tuple[int, int, int], index: int,
            data) -> int:
        """PUT (§2.2): ``data`` is the 4 KiB page (any buffer), or None when the frame is
        bad."""
        pool.pt += 1
        if pool.freed:
            raise HypervisorCrash("PUT into a shared pool that Xen 4.5 had already freed")
        obj = pool.objs.get(oid)
        if obj is not None:
            pg = obj.pages.get(index)
            if pg is not None:
                return self._dup_put(cc, pool, obj, pg, data)
        if cc.frozen:
            pool.px += 1
            return EFROZEN
        owner = pool.client
        if pool.persistent:
            dom = owner.dom
            if dom.tmem_pages + dom.nr_pages >= dom.max_pages:
                pool.px += 1
                self.Pf += 1
                return ENOMEM
        if data is None:
            pool.px += 1
            self.Cf += 1
            return EFAULT
        stored = self._store(owner, data)
        if stored is None:
            pool.px += 1
            self.Pf += 1
            return ENOMEM
        at, csize = stored
        if obj is None:
            obj = self._new_obj(pool, oid)
        pg = Page(obj, index, at, csize)
        obj.pages[index] = pg
        pool.npages += 1
        if pool.npages > pool.Pm:
            pool.Pm = pool.npages
        self.npages += 1
        if self.npages > self.Pm:
            self.Pm = self.npages
        if pool.persistent:
            head = pool.head
            tail = head.prev
            pg.prev = tail
            pg.next = head
            tail.next = pg
            head.prev = pg
            owner.dom.tmem_pages += 1
            cc.Pp += 1
        else:
            self.g_eph[pg] = None
            owner.eph[pg] = None
            self.eph_count += 1
            owner.eph_count += 1
            if self.eph_count > self.Em:
                self.Em = self.eph_count
            if owner.eph_count > owner.Em:
                owner.Em = owner.eph_count
            self.Ep += 1
        obj.last_client = owner.domid if self.mark_owner else cc.domid
        pool.ps += 1
        return 1

    def put_run(self, cc: Client, pool: Pool, dom: Domain, o0s: Sequence[int],
                o1s: Sequence[int], o2s: Sequence[int], indexes: Sequence[int],
                cmfns: Sequence[int]) -> list[int]:
        """A run of PUTs by ``dom`` into one pool (a multicall; the oid words, indexes and
        frames as columns): op by op exactly what the entry (ensure-free step, frame lookup)
        and ``put`` do, with the common case, a new page, inline and every other case handed
        to ``put``. A run of new pages of one object from consecutive frames, with room for
        all of them, is stored in bulk. Returns each op's result."""
        host = self.host
        results: list[int] = []
        append = results.append
        objs = pool.objs
        owner = pool.client
        odom = owner.dom
        persistent = pool.persistent
        # Neither can change during a run of PUTs; either sends every op through ``put``.
        inline = not pool.freed and not cc.frozen
        # A PUT takes at most one page of memory and charges at most one page to the owner: with
        # that much headroom for every op of the run, the ensure-free step and the max-memory
        # check cannot trip, so they are not even evaluated.
        count = len(cmfns)
        check_free = self.free_list + host.heap_free - self.reserve - 256 < count
        check_max = persistent and odom.max_pages - odom.nr_pages - odom.tmem_pages < count
        pop, max_pages, mv = dom.populated, dom.max_pages, dom.mv
        g_eph, o_eph = self.g_eph, owner.eph
        remove = self.remove_page
        head = pool.head
        last = owner.domid if self.mark_owner else cc.domid

        def peaks() -> None:
            # Inline PUTs only add pages, so the high-water marks are taken before anything
            # that may remove some (eviction, ``put``) and at the end.
            if pool.npages > pool.Pm:
                pool.Pm = pool.npages
            if self.npages > self.Pm:
                self.Pm = self.npages
            if self.eph_count > self.Em:
                self.Em = self.eph_count
            if owner.eph_count > owner.Em:
                owner.Em = owner.eph_count

        if inline and not check_max:
            oid = _sequential_run(dom, o0s, o1s, o2s, indexes, cmfns)
            obj = objs.get(oid) if oid is not None else None
            if oid is not None and (obj is None or obj.pages.keys().isdisjoint(indexes)):
                victims = self._run_victims(pool, obj, count) if check_free else []
                if victims is not None:
                    results = self._put_new_pages(cc, pool, oid, obj, indexes,
                                                  cmfns[0] << 12, dom, victims)
                    peaks()
                    return results
        handed = 0  # successes of ops handed to ``put``, which counted them itself
        for oid, index, cmfn in zip(zip(o0s, o1s, o2s, strict=True), indexes, cmfns,
                                    strict=True):
            if check_free and self.free_list + host.heap_free - self.reserve < 256:
                peaks()
                if not self.weight_sum and g_eph and not self.dying_pools:
                    # ensure_free's one eviction, inlined: with no weights set nobody is over
                    # quota, so the victim is the head of the global LRU list
                    self.Ea += 1
                    remove(next(iter(g_eph)))
                    self.Et += 1
                elif not self.ensure_free(cc):
                    append(ENOMEM)
                    continue
            data = mv[cmfn << 12:(cmfn << 12) + PAGE] if 0 < cmfn < max_pages and pop[cmfn] \
                else None
            obj = objs.get(oid)
            if (not inline or data is None or (obj is not None and index in obj.pages)
                    or (check_max and odom.tmem_pages + odom.nr_pages >= odom.max_pages)):
                peaks()
                rc = self.put(cc, pool, oid, index, data)
                handed += rc == 1
                append(rc)
                continue
            kept = self._store(owner, data)
            if kept is None:
                pool.pt += 1
                pool.px += 1
                self.Pf += 1
                append(ENOMEM)
                continue
            at, csize = kept
            if obj is None:
                obj = self._new_obj(pool, oid)
            pg = Page(obj, index, at, csize)
            obj.pages[index] = pg
            pool.npages += 1
            self.npages += 1
            if persistent:
                tail = head.prev
                pg.prev = tail
                pg.next = head
                tail.next = pg
                head.prev = pg
                odom.tmem_pages += 1
            else:
                g_eph[pg] = None
                o_eph[pg] = None
                self.eph_count += 1
                owner.eph_count += 1
            obj.last_client = last
            append(1)
        peaks()
        stored = results.count(1) - handed
        pool.pt += stored
        pool.ps += stored
        if persistent:
            cc.Pp += stored
        else:
            self.Ep += stored
        return results

    def _run_victims(self, pool: Pool, obj: Obj | None, count: int) -> list[Page] | None:
        """The pages a run of ``count`` new raw pages would evict, oldest first, when that is
        simple to do in bulk: no weights (each victim is the global LRU head), every victim
        raw and older than the run, and ``obj`` never emptied by one. Else None."""
        if pool.client.compress or self.weight_sum or self.dying_pools:
            return None
        # The ensure-free step evicts once the free memory is below 256 pages; the first ops
        # take free pages until then, and each later op evicts one page and reuses it.
        free_ops = max(0, min(count, self.free_list + self.host.heap_free - self.reserve - 255))
        if self.free_list + max(self.host.heap_free, 0) < free_ops \
                or count - free_ops > len(self.g_eph):
            return None
        victims = list(islice(self.g_eph, count - free_ops))
        if any(pg.csize for pg in victims) or (
                victims and not free_ops and obj is not None and len(obj.pages) == 1
                and victims[0].obj is obj):
            return None
        return victims

    def _put_new_pages(self, cc: Client, pool: Pool, oid: tuple[int, int, int],
                       obj: Obj | None, indexes: Sequence[int], src: int,
                       dom: Domain, victims: list[Page]) -> list[int]:
        """``put_run`` for new pages of one object from consecutive frames at ``src`` with no
        max-memory refusal possible: the same storage, slots, evictions (``victims``, from
        ``_run_victims``), descriptors, lists and counters as op-by-op PUTs, taken in bulk.
        Only a compressing owner can still refuse an op (-ENOMEM when a compressed page needs
        a page Xen lacks); it never evicts here."""
        host, owner, mv = self.host, pool.client, dom.mv
        count = len(indexes)
        results = [1] * count
        if victims:
            evicted = self._evict_for_run(pool, oid, obj, count, victims)
            if obj is None:
                obj = pool.objs.get(oid)  # made between the first eviction and the others
        if owner.compress:
            stored: list[tuple[bytes | int, int]] = []
            kept_indexes: list[int] = []
            failed = 0
            for i, index in enumerate(indexes):
                at = src + i * PAGE
                kept = self._store(owner, mv[at:at + PAGE])
                if kept is None:
                    results[i] = ENOMEM
                    failed += 1
                    continue
                stored.append(kept)
                kept_indexes.append(index)
            if failed:
                pool.pt += failed
                pool.px += failed
                self.Pf += failed
            indexes = kept_indexes
            if not indexes:
                return results
            datas, csizes = [d for d, _ in stored], [c for _, c in stored]
        else:
            # Storage: tmem's free list first, then Xen's heap, for the ops that evict nothing;
            # each later op reuses the page (and slot) of the page it evicted.
            free_ops = count - len(victims)
            from_list = min(self.free_list, free_ops)
            self.free_list -= from_list
            host.heap_free -= free_ops - from_list
            self.raw_pages += free_ops
            slots = self.free_slots
            reused = min(len(slots), free_ops)
            take = slots.popleft
            datas = [take() for _ in range(reused)]
            if reused < free_ops:
                fresh = self.next_slot
                self.next_slot = fresh + (free_ops - reused) * PAGE
                datas += range(fresh, self.next_slot, PAGE)
            if victims:
                datas += evicted
            av = self.av
            if _consecutive(datas):
                av[datas[0]:datas[0] + count * PAGE] = mv[src:src + count * PAGE]
            else:
                for at in datas:
                    av[at:at + PAGE] = mv[src:src + PAGE]
                    src += PAGE
            csizes = repeat(0)
        stored_count = len(indexes)
        if obj is None:
            obj = self._new_obj(pool, oid)
        pages = list(map(Page, repeat(obj), indexes, datas, csizes))
        obj.pages.update(zip(indexes, pages, strict=True))
        pool.npages += stored_count
        self.npages += stored_count
        if pool.persistent:
            head = pool.head
            prev = head.prev
            for pg in pages:
                pg.prev = prev
                prev.next = pg
                prev = pg
            prev.next = head
            head.prev = prev
            owner.dom.tmem_pages += stored_count
            cc.Pp += stored_count
        else:
            fresh_pages = dict.fromkeys(pages)
            self.g_eph.update(fresh_pages)
            owner.eph.update(fresh_pages)
            self.eph_count += stored_count
            owner.eph_count += stored_count
            self.Ep += stored_count
        obj.last_client = owner.domid if self.mark_owner else cc.domid
        pool.pt += stored_count
        pool.ps += stored_count
        return results

    def _evict_for_run(self, pool: Pool, oid: tuple[int, int, int], obj: Obj | None,
                       count: int, victims: list[Page]) -> list[int]:
        """The evictions of a bulk run of ``count`` new pages into ``pool``: every victim
        removed, and the object made when op 0 would make it (after its eviction, if op 0
        evicts). Returns the victims' arena slots, which the run's last pages reuse.

        The high-water marks need nothing here: op by op, the pool's page count and the
        owner's ephemeral count only grow (each op adds a page and evicts at most one) or,
        for a persistent pool, the owner's only shrinks, so the marks ``put_run`` takes at
        the end are the ones op-by-op PUTs would have reached."""
        first = 0
        if obj is None:
            if len(victims) == count:
                # op 0 evicts before it makes the object
                self._remove_ephemeral(victims[:1], release=False)
                first = 1
            self._new_obj(pool, oid)
        self._remove_ephemeral(victims[first:], release=False)
        self.Ea += len(victims)
        self.Et += len(victims)
        return [victim.data for victim in victims]  # type: ignore[misc]

    def _dup_put(self, cc: Client, pool: Pool, obj: Obj, pg: Page, data) -> int:
        owner = pool.client
        if owner.migrating:
            self._flush_one(pool, pg)
            pool.pd += 1
            return ENOSPC
        if data is None:
            self._flush_one(pool, pg)
            pool.pd += 1
            self.Cf += 1
            return EFAULT
        self._release(pg)  # the old copy goes first, as in Xen
        stored = self._store(owner, data)
        if stored is None:
            self._flush_one(pool, pg, release=False)
            pool.pd += 1
            return ENOSPC
        pg.data, pg.csize = stored
        obj.last_client = owner.domid if self.b.bug_owner_marks_objects else cc.domid
        pool.pr += 1
        pool.ps += 1
        return 1

    def _flush_one(self, pool: Pool, pg: Page, *, release: bool = True) -> None:
        owner = pool.client
        if pool.persistent and owner.migrating:
            owner.inv.append((pool.slot, pg.index, pg.obj.oid))  # type: ignore[union-attr]
            owner.inv_logged = True
        self.remove_page(pg, release=release)

    def page_bytes(self, pg: Page) -> bytes:
        """The 4 KiB content of a page."""
        if pg.csize:
            return decompress(pg.data, uncompressed_size=PAGE)
        at = pg.data
        return self.arena[at:at + PAGE]

    def get(self, cc: Client, pool: Pool, oid: tuple[int, int, int], index: int,
            off: int) -> int:
        """GET (§2.2) into the caller's memory at ``off``; ``off`` < 0 means a bad frame."""
        if pool.npages == 0:
            return EEMPTY
        pool.gt += 1
        obj = pool.objs.get(oid)
        if obj is None:
            return 0
        pg = obj.pages.get(index)
        if pg is None:
            return 0
        persistent = pool.persistent
        if off < 0:
            self.Cf += 1
            if not persistent and not pool.shared and self.b.bug_get_fault_consumes:
                self.remove_page(pg, leak=True)
            return EFAULT
        dom = cc.dom
        if pg.csize:
            if not decode_into(pg.data, dom.mem, off):
                _corrupt()
        else:
            at = pg.data
            dom.mem[off:off + PAGE] = self.av[at:at + PAGE]
        if dom.dirty is not None:
            dom.dirty.add(off >> 12)
        if persistent:
            cc.Gp += 1
        elif pool.shared:
            self.g_eph.move_to_end(pg)
            pool.client.eph.move_to_end(pg)
            obj.last_client = cc.domid
            cc.Ge += 1
        else:
            self.remove_page(pg)
            cc.Ge += 1
        pool.gs += 1
        return 1

    def get_run(self, cc: Client, pool: Pool, dom: Domain, o0s: Sequence[int],
                o1s: Sequence[int], o2s: Sequence[int], indexes: Sequence[int],
                cmfns: Sequence[int]) -> list[int]:
        """A run of GETs by ``dom`` from one pool (a multicall; the oid words, indexes and
        frames as columns): op by op exactly what ``get`` does, with hits and misses of a
        private pool inline and every other case handed to ``get``. A run of hits on one
        object into consecutive frames is copied in bulk. Returns each op's result."""
        mem, pop, max_pages = dom.mem, dom.populated, dom.max_pages
        oids = zip(o0s, o1s, o2s, strict=True)
        if pool.shared:  # LRU refresh and last_client per hit: rare enough for ``get``
            return [self.get(cc, pool, oid, index,
                             cmfn << 12 if 0 < cmfn < max_pages and pop[cmfn] else -1)
                    for oid, index, cmfn in zip(oids, indexes, cmfns, strict=True)]
        oid = _sequential_run(dom, o0s, o1s, o2s, indexes, cmfns)
        obj = pool.objs.get(oid) if oid is not None else None
        if obj is not None:
            pages = list(map(obj.pages.get, indexes))
            if None not in pages:
                return self._get_pages(cc, pool, obj, pages, dom, cmfns[0] << 12)
        results: list[int] = []
        append = results.append
        objs, persistent, copy_out = pool.objs, pool.persistent, self._copy_out
        remove = self.remove_page
        skipped = 0  # ops that did not look the page up here (-EEMPTY, or handed to ``get``)
        for oid, index, cmfn in zip(oids, indexes, cmfns, strict=True):
            if pool.npages == 0:
                skipped += 1
                append(EEMPTY)
                continue
            obj = objs.get(oid)
            pg = obj.pages.get(index) if obj is not None else None
            if pg is None:
                append(0)
                continue
            if not 0 < cmfn < max_pages or not pop[cmfn]:
                skipped += 1
                append(self.get(cc, pool, oid, index, -1))  # -EFAULT, never a hit
                continue
            copy_out(pg, mem, cmfn << 12)
            if not persistent:
                remove(pg)
            append(1)
        hits = results.count(1)
        pool.gt += len(results) - skipped
        pool.gs += hits
        if persistent:
            cc.Gp += hits
        else:
            cc.Ge += hits
        return results

    def _copy_out(self, pg: Page, mem, off: int) -> None:
        """A stored page into ``mem[off:off+4096]``: decoded when compressed, else copied from
        its arena slot. (``get``, the single-op hot path, has this inline.)"""
        if pg.csize:
            if not decode_into(pg.data, mem, off):
                _corrupt()
        else:
            at = pg.data
            mem[off:off + PAGE] = self.av[at:at + PAGE]

    def _get_pages(self, cc: Client, pool: Pool, obj: Obj, pages: list[Page], dom: Domain,
                   dst: int) -> list[int]:
        """``get_run`` for a run of hits on one object of a private pool into consecutive
        frames at ``dst``: the same copies (one, when the pages sit in consecutive arena
        slots), removals (ephemeral GETs are destructive) and counters as op-by-op GETs."""
        count = len(pages)
        av, mem = self.av, dom.mem
        slots = [pg.data for pg in pages]
        if not any(pg.csize for pg in pages) and _consecutive(slots):
            mem[dst:dst + count * PAGE] = av[slots[0]:slots[0] + count * PAGE]
        else:
            for pg in pages:
                self._copy_out(pg, mem, dst)
                dst += PAGE
        pool.gt += count
        pool.gs += count
        if pool.persistent:
            cc.Gp += count
            return [1] * count
        cc.Ge += count
        self._remove_ephemeral(pages, release=True)  # destructive: every page goes
        return [1] * count

    def _remove_ephemeral(self, pages: list[Page], *, release: bool) -> None:
        """``remove_page`` of each ephemeral page in turn (an object goes with its last
        page), with the shared counters updated once."""
        g_eph, slots = self.g_eph, self.free_slots
        raw = 0
        for pg in pages:
            obj = pg.obj
            pool = obj.pool  # type: ignore[union-attr]
            by_index = obj.pages  # type: ignore[union-attr]
            del by_index[pg.index]
            pool.npages -= 1
            if not by_index:
                del pool.objs[obj.oid]  # type: ignore[union-attr]
                self.nobjs -= 1
            if release:
                if pg.csize:
                    self._release(pg)
                else:
                    slots.append(pg.data)
                    raw += 1
            owner = pool.client
            del g_eph[pg]
            del owner.eph[pg]
            owner.eph_count -= 1
        self.raw_pages -= raw
        self.free_list += raw
        self.npages -= len(pages)
        self.eph_count -= len(pages)

    def flush_page(self, cc: Client, pool: Pool, oid: tuple[int, int, int], index: int) -> int:
        pool.ft += 1
        obj = pool.objs.get(oid)
        if obj is not None:
            pg = obj.pages.get(index)
            if pg is not None:
                self._flush_one(pool, pg)
                pool.fs += 1
        return EFROZEN if cc.frozen else 1

    def flush_object(self, cc: Client, pool: Pool, oid: tuple[int, int, int]) -> int:
        pool.ot += 1
        obj = pool.objs.get(oid)
        if obj is not None:
            for pg in list(obj.pages.values()):
                self._flush_one(pool, pg)
            pool.os += 1
        return EFROZEN if cc.frozen else 1

    def partial(self, cc: Client, pool: Pool, oid: tuple[int, int, int], index: int, mem,
                off: int, tmem_offset: int, pfn_offset: int, length: int, write: bool) -> int:
        """TMEM_READ / TMEM_WRITE (<= 4.3): a byte range of a page."""
        if tmem_offset > PAGE or pfn_offset > PAGE or length > PAGE \
                or tmem_offset + length > PAGE or pfn_offset + length > PAGE:
            return EINVAL
        if off < 0:
            return EFAULT
        obj = pool.objs.get(oid)
        pg = obj.pages.get(index) if obj is not None else None
        if write:
            page = bytearray(self.page_bytes(pg) if pg is not None else bytes(PAGE))
            page[tmem_offset:tmem_offset + length] = mem[off + pfn_offset:
                                                         off + pfn_offset + length]
            return self.put(cc, pool, oid, index, bytes(page))
        if pool.npages == 0:
            return EEMPTY
        if pg is None:
            return 0
        data = self.page_bytes(pg)
        mem[off + pfn_offset:off + pfn_offset + length] = data[tmem_offset:tmem_offset + length]
        if not pool.persistent and not pool.shared:
            self.remove_page(pg)
        return 1

    # ---- pools ------------------------------------------------------------------------------

    def check_flags(self, flags: int) -> int:
        """NEW_POOL flag validation in Xen's order; 0 when acceptable, else -EPERM."""
        if flags >> 24 != TMEM_SPEC_VERSION:
            return EPERM
        if (self.b.shared_persist_refused and flags & PoolFlags.PERSIST
                and flags & PoolFlags.SHARED):
            return EPERM
        if flags & PoolFlags.PAGESIZE_MASK:
            return EPERM
        if flags & PoolFlags.PRECOMPRESSED:
            return EPERM
        if flags & PoolFlags.RESERVED_BITS:
            return EPERM
        return 0

    def new_pool(self, cc: Client, flags: int, uuid: tuple[int, int],
                 slot: int | None = None) -> int:
        """NEW_POOL (or RESTORE_NEW / SET_POOLS with a requested ``slot``)."""
        rc = self.check_flags(flags)
        if rc:
            return rc
        if slot is None:
            slot = next((i for i, p in enumerate(cc.pools) if p is None), -1)
            if slot < 0:
                return EPERM
        elif not 0 <= slot < MAX_POOLS_PER_DOMAIN or cc.pools[slot] is not None:
            return EPERM
        persistent = bool(flags & PoolFlags.PERSIST)
        shared = bool(flags & PoolFlags.SHARED)
        stale = [p for p in self.shared if p is not None and p.freed]
        if stale and (shared or any(p.client is cc for p in stale)):
            # the global table still names a pool the 4.5 creator freed (§9.3, §9.4)
            raise HypervisorCrash("NEW_POOL walked a freed shared pool in the global table")
        if shared:
            needs_auth = (self.b.auth_always or self.shared_auth) and not self.auth_disabled
            if uuid == UUID_NONE or (needs_auth and uuid not in cc.auth):
                shared = False  # silently a private pool (§3.9)
        if shared:
            for pool in self.shared:
                if pool is not None and pool.uuid == uuid and not pool.freed:
                    cc.pools[slot] = pool
                    pool.sharers.append(cc)
                    return slot
            gslot = next((i for i, p in enumerate(self.shared) if p is None), -1)
            if gslot < 0:
                return EPERM
            pool = Pool(cc, slot, flags, persistent, True, uuid)
            pool.gslot = gslot
            self.shared[gslot] = pool
            if not self.b.bug_creator_not_sharer:
                pool.sharers.append(cc)
        else:
            pool = Pool(cc, slot, flags, persistent, False, uuid)
        cc.pools[slot] = pool
        return slot

    def _destroy_obj(self, obj: Obj) -> None:
        """``obj_destroy``: every page of the object goes, and the object with its last."""
        for pg in list(obj.pages.values()):
            self.remove_page(pg)

    def _leak_obj(self, obj: Obj) -> None:
        """An object of a pool Xen freed without destroying it (4.5+, §9.4): its pages stay
        allocated and counted (`G=` Ec/Pc/Fc/Oc/Nc, the owner's Ec) but leave every list, so
        nothing ever evicts or frees them."""
        pool = obj.pool
        del pool.objs[obj.oid]
        owner = pool.client
        for pg in obj.pages.values():
            del self.g_eph[pg]
            del owner.eph[pg]
        pool.npages -= len(obj.pages)
        self.leaked_nodes += pool.obj_nodes(obj)

    def destroy_pool(self, cc: Client, pool_id: int) -> int:
        """DESTROY_POOL: 1 if a pool was in the slot, else 0 (``do_tmem_destroy_pool``)."""
        if not 0 <= pool_id < MAX_POOLS_PER_DOMAIN:
            return 0
        pool = cc.pools[pool_id]
        if pool is None:
            return 0
        if pool.freed:
            raise HypervisorCrash("DESTROY_POOL of a shared pool that Xen 4.5 had already freed")
        cc.pools[pool_id] = None
        self._pool_flush(pool, cc)
        return 1

    def _pool_flush(self, pool: Pool, cc: Client) -> None:
        """``pool_flush``: ``cc`` quits a shared pool; a private pool, or a shared one nobody
        is left on the share list of, is destroyed and freed."""
        if pool.shared and self._shared_quit(pool, cc) > 0:
            return
        owner = pool.client
        if self.b.bug_live_save and owner.migrating:
            # "can't destroy pool while live-migrating": the slot is empty, the pages stay
            # counted forever (§9.1)
            self.host.leaked_pools.append(pool)
            return
        # Xen destroys the objects with no last client: every object of a private pool; of a
        # shared pool (always marked, §9.3) only 4.4 and before destroyed the rest too.
        keep = pool.shared and self.b.bug_flush_keeps_marked
        for obj in list(pool.objs.values()):
            (self._leak_obj if keep else self._destroy_obj)(obj)
        if 0 <= pool.slot < MAX_POOLS_PER_DOMAIN:
            owner.pools[pool.slot] = None
        self._free_pool(pool)

    def _shared_quit(self, pool: Pool, cc: Client) -> int:
        """``shared_pool_quit``: the objects ``cc`` used last go, ``cc`` leaves the share list
        (its first entry), ownership moves if it owned the pool. Returns the sharers left, or
        -1 when ``cc`` was not on the list (the 4.5 creator, §9.2)."""
        for obj in list(pool.objs.values()):
            if obj.last_client == cc.domid:
                self._destroy_obj(obj)
        if self.b.bug_quit_pins_pool and not pool.dying:
            pool.dying = True  # pool_destroy_objs set is_dying: eviction skips it from now on
            self.dying_pools += 1
        if cc not in pool.sharers:
            return -1
        pool.sharers.remove(cc)
        if pool.client is cc:
            self._reassign(pool)
        if pool.sharers:
            return len(pool.sharers)
        if pool.gslot >= 0 and self.shared[pool.gslot] is pool:
            self.shared[pool.gslot] = None
        return 0

    def _reassign(self, pool: Pool) -> None:
        """``shared_pool_reassign``: ownership passes to the first sharer, at its lowest slot
        holding the pool; the pool's pages move to its `Ec`."""
        if not pool.sharers:
            return
        old = pool.client
        if self.b.bug_reassign_clears_owner_slot:
            # Xen clears the old owner's slot even when the old owner is also the new one (a
            # client that joined its own pool, §9.4); with no slot left the id reads 16.
            if 0 <= pool.slot < MAX_POOLS_PER_DOMAIN:
                old.pools[pool.slot] = None
            new = pool.sharers[0]
        else:
            holders = [c for c in pool.sharers if pool in c.pools]
            new = old if old in holders else holders[0] if holders else pool.sharers[0]
        slot = next((i for i, p in enumerate(new.pools) if p is pool), MAX_POOLS_PER_DOMAIN)
        if new is not old:
            moved = [pg for pg in old.eph if pg.obj.pool is pool]  # type: ignore[union-attr]
            for pg in moved:
                del old.eph[pg]
                new.eph[pg] = None
            old.eph_count -= len(moved)
            new.eph_count += len(moved)
            new.Em = max(new.Em, new.eph_count)
            pool.client = new
        pool.slot = slot

    def _free_pool(self, pool: Pool) -> None:
        """``pool_free``. A 4.5 creator's pool can stay in the global table (and in joiners'
        slots), pointing at freed memory that reads as an unshared pool with zero counters."""
        pool.freed = True
        if pool.dying:
            self.dying_pools -= 1
            pool.dying = False
        if pool.gslot >= 0 and self.shared[pool.gslot] is pool:
            # LIST prints it while it has sharers; with an empty share list it crashes (§9.2)
            pool.list_crash = not pool.sharers
            pool.persistent = pool.shared = False
            pool.pt = pool.ps = pool.pr = pool.pd = pool.px = 0
            pool.gt = pool.gs = pool.ft = pool.fs = pool.ot = pool.os = 0
            pool.Pm = pool.Om = pool.Nm = 0

    def list_crashes(self) -> bool:
        """Whether a LIST of all clients walks freed memory that kills the host (§9.2, §9.3)."""
        return any(p is not None and p.list_crash for p in self.shared)

    def destroy_client(self, cc: Client) -> None:
        """Domain death (§3.2, ``client_flush``): flush every slot, free the client."""
        for slot, pool in enumerate(cc.pools):
            if pool is None:
                continue
            if pool.freed:
                # a joiner's slot of a pool the 4.5 creator freed: the dead client stays on
                # that pool's share list, which the next LIST walks (§9.3)
                pool.list_crash = True
            else:
                self._pool_flush(pool, cc)
            cc.pools[slot] = None
        self.weight_sum -= cc.weight
        del self.clients[cc.domid]
        cc.dom.client = None

    # ---- auth ---------------------------------------------------------------------------------

    def auth(self, cc: Client, uuid: tuple[int, int], enable: bool) -> int:
        """Authorise (1 / -ENOMEM when full) or de-authorise (1 found / 0 absent) a uuid."""
        if enable:
            if self.b.auth_dedup and uuid in cc.auth:
                return 1
            if len(cc.auth) >= 16:
                return ENOMEM
            cc.auth.append(uuid)
            return 1
        if uuid in cc.auth:
            cc.auth.remove(uuid)
            return 1
        return 0

    def next_pointer(self) -> int:
        self.ptr_seq += 1
        return XEN_POINTER + self.ptr_seq * 0x40
