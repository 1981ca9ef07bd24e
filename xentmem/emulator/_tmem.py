"""Hypervisor-side tmem: clients, pools, objects, pages, LRU lists, eviction (ref §3).

This module knows nothing about bytes on the wire: the entry (``_host.py``) decodes structs and
resolves guest addresses, then calls ``Tmem`` methods with plain values, a domain's memory and a
byte offset into it (``-1`` when the frame is not a RAM page of the caller). Methods return what
Xen's C functions return (ints, negative errno). The one exception that may leave this module on
purpose is ``HypervisorCrash``: a path where the imitated release dereferenced freed memory.
"""

from __future__ import annotations

import mmap
from collections import Counter, OrderedDict, deque
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
from xentmem.emulator._codec import compress_page, decode_into, decompress_page

if TYPE_CHECKING:
    from xentmem.emulator._behaviour import Behaviour
    from xentmem.emulator._host import Domain, EmulatedHost

PAGE = PAGE_SIZE
# Xen's sub-page allocator (xmem pool) serves at most one page minus two block headers; a
# compressed page only pays when it fits there (§3.7), else it is stored raw and counted in `cn`.
SUBPAGE_MAX = PAGE - 32
# Xen's sub-page allocator (xmalloc_tlsf.c) hands out blocks from pools of whole pages: a block
# is the request rounded up to 16 bytes (at least 16; from 128 bytes up to its size class, a
# sixty-fourth of a power of two) plus a 16-byte header, and one page holds blocks worth
# ``REGION`` bytes (a 16-byte sentinel ends it). tmem keeps its objects, page descriptors,
# radix nodes and compressed data there (§9.4): a page is taken when the blocks no longer fit
# and given back (to tmem's free list) when they fit in one page fewer.
REGION = PAGE - 16
OBJ_BYTES = 128  # struct tmem_object_root (oid, rb node, counts, radix root, pool, lock)
NODE_BYTES = 528  # struct tmem_object_node: object pointer + radix_tree_node (64 slots)


def xmem_block(size: int) -> int:
    """Bytes of a pool page that ``xmem_pool_alloc(size)`` takes, its header included."""
    size = 16 if size < 16 else (size + 15) & ~15
    if size >= 128:  # MAPPING_SEARCH rounds up to the next size class
        t = (1 << (size.bit_length() - 6)) - 1
        size = (size + t) & ~t
    return size + 16


# Stand-in for the addresses of hypervisor objects that leaked into guest-visible handles (§9.1).
XEN_POINTER = 0xFFFF830000000000
UUID_NONE = (0xFFFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF)
NO_CLIENT = 0xFFFF  # TMEM_CLI_ID_NULL: an object's last client before any is recorded

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
    host's page arena (``csize`` 0); a compressed page's ``data`` is the compressed bytes;
    ``None`` once its data is freed. ``prev``/``next`` link persistent pages in put order (save
    walks it). A descriptor a failed destructive GET took out of its object but never freed
    (§9.4) keeps ``obj`` while ``obj.pages`` no longer holds it."""

    __slots__ = ("csize", "data", "index", "next", "obj", "prev")

    prev: Page
    next: Page

    def __init__(self, obj: Obj | None, index: int, data: bytes | int | None, csize: int) -> None:
        self.obj = obj
        self.index = index
        self.data = data
        self.csize = csize


class Pcd:
    """A page content descriptor (Xen's ``pcd``, 4.0-4.7 with ``tmem_dedup``): one stored
    copy that identical ephemeral pages share. ``data`` is an arena offset (a whole page),
    compressed bytes, or the bytes left after trailing zeros (``tmem_tze``); ``size`` is
    4096, the compressed size, or the trimmed size; ``key`` its entry in the lookup table
    (None for a trimmed page, which Xen never finds again)."""

    __slots__ = ("data", "key", "refs", "size")

    def __init__(self, data: bytes | int, size: int, key: bytes | None) -> None:
        self.data = data
        self.size = size
        self.key = key
        self.refs = 0


# A trimmed page (tze) has this ``csize``: its ``data`` holds the bytes before the trailing
# zeros, which a GET pads back to a page.
TRIMMED = -1
PCD_BYTES = 56  # struct tmem_page_content_descriptor: data pointer, list, rb node, count, size
PCD_TZE_MAX_SIZE = PAGE - PAGE // 64  # a longer trimmed page is kept whole


def trimmed_size(page) -> int:
    """``tmem_tze_pfp_scan``: the page's length without its trailing zero 8-byte words."""
    end = len(bytes(page).rstrip(b"\0"))
    return (end + 7) & ~7


# Radix trees (Xen's per-object page index, 64 slots a node, indexes of 32 bits: up to six
# levels). Only the node count is observable (`Nc`/`Nm`), and Xen's tree is always the
# minimal one: a lone page at index 0 hangs off the root with no node, and deletions shrink
# the tree eagerly (§9.4). ``Obj.radix`` keeps, for levels 1-5, the children present under
# each node (key ``prefix << 3 | level``, prefix = index >> 6 * level) and the number of nodes
# of the level (key ``-level``); the single level-6 node needs no entry.

def _radix_nodes(radix: dict[int, int], pages: dict[int, Page]) -> int:
    """Nodes of the minimal tree holding ``pages``' indexes."""
    if len(pages) <= 1 and (not pages or 0 in pages):
        return 0
    total = 0
    for level in (1, 2, 3, 4, 5):
        width = radix[-level]
        total += width
        if width == 1 and level in radix:  # one node, of prefix 0: the root
            return total
    return total + 1


def _add_leaf(radix: dict[int, int], index: int, pages: int) -> None:
    """``pages`` pages join the leaf node of ``index``: a new leaf joins its parent, and so
    on up to the first node that exists."""
    key = (index >> 6) << 3 | 1
    seen = radix.get(key)
    if seen:
        radix[key] = seen + pages
        return
    radix[key] = pages
    radix[-1] = radix.get(-1, 0) + 1
    for level in (2, 3, 4, 5):
        key = (index >> 6 * level) << 3 | level
        seen = radix.get(key)
        if seen:
            radix[key] = seen + 1
            return
        radix[key] = 1
        radix[-level] = radix.get(-level, 0) + 1


def _index(obj: Obj, pg: Page) -> int:
    """``pgp_add_to_obj``: ``pg`` joins its object's index; the change in its node count."""
    index = pg.index
    pages = obj.pages
    pages[index] = pg
    radix = obj.radix
    key = (index >> 6) << 3 | 1
    seen = radix.get(key)
    if seen and obj.nodes:  # its leaf node and the path above it exist already
        radix[key] = seen + 1
        return 0
    _add_leaf(radix, index, 1)
    nodes = _radix_nodes(radix, pages)
    delta = nodes - obj.nodes
    obj.nodes = nodes
    return delta


def _index_many(obj: Obj, pages: Sequence[Page]) -> int:
    """``_index`` for new pages of one object at once, leaf by leaf (insertions only add
    nodes: the count after the last is the peak of the run); the change in its node count."""
    indexes = [pg.index for pg in pages]
    obj.pages.update(zip(indexes, pages, strict=True))
    radix = obj.radix
    for leaf, count in Counter([index >> 6 for index in indexes]).items():
        _add_leaf(radix, leaf << 6, count)
    nodes = _radix_nodes(radix, obj.pages)
    delta = nodes - obj.nodes
    obj.nodes = nodes
    return delta


def _unindex(obj: Obj, index: int) -> int:
    """``pgp_delete_from_obj``: the page at ``index`` leaves its object's index; the change
    in its node count."""
    pages = obj.pages
    del pages[index]
    radix = obj.radix
    key = (index >> 6) << 3 | 1
    left = radix[key] - 1
    if left:
        radix[key] = left
        if obj.nodes != 1:  # only {0, i} -> {0} shrinks a tree whose leaf stays
            return 0
    else:
        del radix[key]
        radix[-1] -= 1
        for level in (2, 3, 4, 5):
            key = (index >> 6 * level) << 3 | level
            left = radix[key] - 1
            if left:
                radix[key] = left
                break
            del radix[key]
            radix[-level] -= 1
    nodes = _radix_nodes(radix, pages)
    delta = nodes - obj.nodes
    obj.nodes = nodes
    return delta


class Obj:
    """An object: the pages of one 192-bit oid in one pool (Xen's ``tmem_object_root``)."""

    __slots__ = ("last_client", "nodes", "oid", "pages", "pool", "radix")

    def __init__(self, pool: Pool, oid: tuple[int, int, int]) -> None:
        self.pool = pool
        self.oid = oid
        self.pages: dict[int, Page] = {}
        self.last_client = NO_CLIENT  # PUT marks it (owner or putter), a shared GET the reader
        self.radix: dict[int, int] = {}
        self.nodes = 0  # radix-tree nodes now


class Pool:
    """A tmem pool. ``client`` is the owner; ``slot`` its local id in the owner's table.

    Its counters carry the names of the pool's `P=`/`S=` line (§3.11), each explained where
    ``__init__`` sets it up.
    """

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
        "nodes",
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
        self.objs: dict[tuple[int, int, int], Obj] = {}  # `Oc` is its length
        self.sharers: list[Client] = []
        self.gslot = -1
        self.head = head = Page(None, 0, b"", 0)  # sentinel of the persistent page list
        head.prev = head.next = head
        self.cursor: Page | None = None  # SAVE_GET_NEXT_PAGE position
        self.freed = False  # freed by Xen but still referenced (4.5 share-list defects)
        self.list_crash = False  # such a pool crashes the LIST that walks it
        self.dying = False  # Xen's is_dying: its pages are never evicted
        self.npages = 0  # Pc: page descriptors now (a failed destructive GET's stays counted)
        self.Pm = 0  # Pm: peak of Pc, raised at each descriptor allocation
        self.Om = 0  # Om: peak of Oc, raised at each object allocation
        self.nodes = 0  # Nc: radix-tree nodes now
        self.Nm = 0  # Nm: peak of Nc, raised at each node allocation
        self.pt = 0  # pt: PUTs into the pool
        self.ps = 0  # ps: successful PUTs, duplicates included
        self.pr = 0  # pr: duplicate PUTs that replaced the data
        self.pd = 0  # pd: duplicate PUTs that failed (the old copy flushed)
        self.px = 0  # px: other failed PUTs
        self.gt = 0  # gt: GETs on a non-empty pool
        self.gs = 0  # gs: GET hits
        self.ft = 0  # ft: FLUSH_PAGE calls
        self.fs = 0  # fs: FLUSH_PAGEs that found the page
        self.ot = 0  # ot: FLUSH_OBJECT calls
        self.os = 0  # os: FLUSH_OBJECTs that found the object

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


class Client:
    """One tmem client per domain (``cli_id`` = domid).

    Counters of its `C=` line count what happens in the pools it *owns* (Xen credits the pool's
    client, whoever calls, §9.4).
    """

    __slots__ = (
        "Em", "Ge", "Gp", "Pp", "auth", "cap", "cb", "cm", "cn", "compress", "cp", "dangling_inv",
        "dom", "domid", "eph", "eph_count", "frozen", "inv", "inv_at", "inv_logged",
        "meta_pages", "meta_used", "migrating", "pools", "saving", "was_frozen", "weight",
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
        self.eph: OrderedDict[Page, None] = OrderedDict()  # its ephemeral pages, oldest first
        self.inv: list[tuple[int, int, tuple[int, int, int]]] = []  # logged invalidations
        self.inv_at = -1  # SAVE_GET_NEXT_INV cursor into ``inv`` (-1: before the first)
        self.inv_logged = False
        self.dangling_inv = False
        self.eph_count = 0  # Ec: ephemeral pages of the pools it owns (leaked ones included)
        self.Em = 0  # Em: peak of Ec, raised by PUTs (not by an ownership transfer)
        self.Ge = 0  # Ge: successful ephemeral GETs
        self.Pp = 0  # Pp: successful persistent PUTs, duplicates included
        self.Gp = 0  # Gp: successful persistent GETs (SAVE_GET_NEXT_PAGE's included)
        self.cp = 0  # cp: pages stored compressed now
        self.cb = 0  # cb: bytes of those compressed pages now
        self.cn = 0  # cn: compression tried on a new page and found poor (stored raw)
        self.cm = 0  # cm: compression of a new page that found no memory for the result
        # its persistent pools' sub-page pool (descriptors, objects, radix nodes, compressed
        # data): bytes of blocks, and the pages they take, charged to its domain (§9.4)
        self.meta_used = 0
        self.meta_pages = 0


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
    """The hypervisor's tmem state and the guest operations on it.

    The global counters carry the names of the `G=` line (§4.2), each explained where
    ``__init__`` sets it up. Every path that adds or removes pages (single ops, the batched
    multicall runs and their bulk moves, flushes, eviction, pool destruction) goes through
    one set of per-page helpers: ``_fill`` (storage), ``_take_frames``/``_free_data``/
    ``_free_frame`` (frames), ``_meta`` (the pages tmem's own structures take, §9.4),
    ``_obj_alloc``/``_obj_free`` (objects), ``_add_pages`` (descriptors, radix nodes),
    ``_insert_pages`` (lists, counters), ``remove_pages``, ``_associate``/``_disassociate``
    (dedup's shared copies), ``_got`` (GET hits), ``_index``/``_unindex`` (the radix tree).
    """

    def __init__(self, host: EmulatedHost, behaviour: Behaviour, *, compress: bool,
                 shared_auth: bool, dedup: bool = False, tze: bool = False) -> None:
        self.host = host
        self.b = behaviour
        self.mark_owner = behaviour.bug_owner_marks_objects
        self.compress_default = compress
        self.shared_auth = shared_auth
        self.clients: dict[int, Client] = {}
        self.shared: list[Pool | None] = [None] * MAX_GLOBAL_SHARED_POOLS
        self.auth_disabled = False  # global "authorisation not required" flag
        self.g_eph: OrderedDict[Page, None] = OrderedDict()  # every ephemeral page, oldest first
        self.weight_sum = 0
        # tmem's sub-page pool for ephemeral and shared pools (descriptors, objects, radix
        # nodes, compressed data): bytes of blocks, and the pages they take, which are
        # freeable but not in `Fc` (§9.4)
        self.meta_used = 0
        self.meta_pages = 0
        self.pgp_block = xmem_block(behaviour.pgp_bytes)
        self.obj_block = xmem_block(OBJ_BYTES)
        self.node_block = xmem_block(NODE_BYTES)
        # dedup / tze (boot options of 4.0-4.7, §3.7): identical ephemeral pages share one
        # copy; Xen turns tze off when compression is on too
        self.dedup = dedup
        self.tze = tze and dedup and not compress
        self.pcd_block = xmem_block(PCD_BYTES)
        self.pcds: dict[bytes, Pcd] = {}  # whole or compressed copies, by content
        self.pcd_of: dict[Page, Pcd] = {}  # the copy each deduplicated page shares
        self.attempted: set[Page] = set()  # shared pages an eviction passed over once
        self.Sc = 0  # Sc: page content descriptors now
        self.Sm = 0  # Sm: peak of Sc
        self.Gd = 0  # Gd: PUTs that found their content already stored
        self.Zt = 0  # Zt: bytes the content descriptors keep with tze (4096 a whole page)
        self.Gz = 0  # Gz: bytes the compressed ones keep (4096 a whole page, with compression)
        self.free_list = 0  # Ta: pages tmem keeps for reuse (its free list)
        self.reserve = 0  # Xen's mid-size reserve: max ever seen of free/128
        # Raw pages live in one arena the size of host RAM (tmem can never hold more): a PUT
        # copies into a slot and a GET copies out, no allocation per page. Freed slots are
        # reused first, oldest first: pages freed in order (a flushed object) come back in
        # order, so runs of pages keep runs of slots and move with one copy. (Where a page
        # sits in the arena is ours alone: Xen's ABI never shows it.)
        self.arena = anonymous_memory(host.memory_mb << 20)
        self.av = memoryview(self.arena)
        self.free_slots: deque[int] = deque()
        self.next_slot = 0
        self.orphans: dict[Page, None] = {}  # descriptors failed destructive GETs left behind
        self.dying_pools = 0  # pools marked is_dying that still hold pages
        self.ptr_seq = 0
        self.Tt = 0  # Tt: tmem operations (every tmem_op; TMEM_CONTROL's too on <= 4.5)
        self.Te = 0  # Te: operations that returned an error
        self.Cf = 0  # Cf: failed copies to or from the guest
        self.Af = 0  # Af: failed sub-page allocations (compressed data, metadata)
        self.Pf = 0  # Pf: failed page allocations
        self.Lm = 0  # Lm: low-memory events (never counted)
        self.Et = 0  # Et: pages evicted
        self.Ea = 0  # Ea: eviction attempts
        self.Rt = 0  # Rt: pages relinquished to Xen's allocator
        self.Ra = 0  # Ra: relinquish attempts
        self.Rx = 0  # Rx: most evictions one relinquish needed
        self.Fp = 0  # Fp: pools flushed (never counted)
        self.Ep = 0  # Ep: successful ephemeral PUTs of new pages
        self.eph_count = 0  # Ec: ephemeral pages now (leaked ones included)
        self.Em = 0  # Em: peak of Ec
        self.nobjs = 0  # Oc: objects now (leaked ones included)
        self.Om = 0  # Om: peak of Oc, raised at allocation
        self.nodes = 0  # Nc: radix-tree nodes now (leaked ones included)
        self.Nm = 0  # Nm: peak of Nc, raised at allocation
        self.npages = 0  # Pc: page descriptors now (leaked and orphaned ones included)
        self.Pm = 0  # Pm: peak of Pc, raised at allocation
        self.raw_pages = 0  # Fc: page frames holding raw page data (compressed data is not)
        self.Fm = 0  # Fm: peak of Fc, raised at allocation (failed copies' frames included)

    # ---- memory -----------------------------------------------------------------------------

    def _take_pages(self, count: int) -> bool:
        """``count`` pages for tmem: tmem's free list first, then Xen's heap; False (nothing
        taken) when both together have too few."""
        free = self.free_list
        if count <= free:
            self.free_list = free - count
            return True
        host = self.host
        if count - free > host.heap_free:
            return False
        host.heap_free -= count - free
        self.free_list = 0
        return True

    def _meta(self, pool: Pool, delta: int) -> bool:
        """``tmem_malloc`` / ``tmem_free`` of ``delta`` bytes of blocks for ``pool``: in the
        owner's persistent sub-page pool (its pages charged to the owner's domain, refused at
        its max_pages) or in the ephemeral one (its pages freeable). Pages are taken as the
        blocks outgrow them. Xen gives a page back only once every block in it is free, and
        which page a block sits in depends on the pool's history; the model keeps the pages
        until the pool is empty, when all of them go to tmem's free list (`Ta`) at once (as
        after a pool's destruction, §9.4). False (`Af`, nothing changed) when a page is
        needed and none can be had."""
        holder: Tmem | Client
        if pool.persistent:
            holder = pool.client
            dom = holder.dom
        else:
            holder, dom = self, None
        used = holder.meta_used + delta
        pages = holder.meta_pages
        if used > pages * REGION:
            grow = -(-used // REGION) - pages
            if (dom is not None and dom.nr_pages + dom.tmem_pages + grow > dom.max_pages) \
                    or not self._take_pages(grow):
                self.Af += 1
                return False
            if dom is not None:
                dom.tmem_pages += grow
            holder.meta_pages = pages + grow
        elif not used and pages:
            self.free_list += pages
            if dom is not None:
                dom.tmem_pages -= pages
            holder.meta_pages = 0
        holder.meta_used = used
        return True

    def meta_bytes(self, pool: Pool) -> int:
        """The bytes of blocks ``pool``'s structures hold in its sub-page pool, from its
        contents: what ``_meta`` charged for its objects (those a failed GET emptied too),
        page descriptors (orphans included), radix nodes and compressed data. Without dedup:
        a shared copy (``pcd_of``) belongs to no one pool."""
        pages = [pg for obj in pool.objs.values() for pg in obj.pages.values()]
        pages += [pg for pg in self.orphans if pg.obj.pool is pool]  # type: ignore[union-attr]
        return (len(pool.objs) * self.obj_block + pool.npages * self.pgp_block
                + pool.nodes * self.node_block
                + sum(xmem_block(pg.csize) for pg in pages if pg.csize > 0))

    def _meta_bound(self, indexes: Sequence[int]) -> int:
        """At most the pages the descriptors, object and radix nodes of new pages at
        ``indexes`` (of one object) take: a bulk run with that much room never fails."""
        leaves = len({index >> 6 for index in indexes})
        return (len(indexes) * self.pgp_block + (5 * leaves + 1) * self.node_block
                + self.obj_block) // REGION + 2

    def _take_frames(self, count: int, pool: Pool):
        """``tmem_alloc_page`` ``count`` times for ``pool``: page frames for raw data (the
        free list first, then Xen's heap; a persistent pool's charged to its owner's domain),
        as arena slots (one slot for a count of 1, else a list); `Fc` and its peak `Fm`. None
        (nothing taken, `Pf`) when Xen has too few."""
        if not self._take_pages(count):
            self.Pf += 1
            return None
        if pool.persistent:
            pool.client.dom.tmem_pages += count
        raw = self.raw_pages = self.raw_pages + count
        if raw > self.Fm:
            self.Fm = raw
        slots = self.free_slots
        if count == 1:
            if slots:
                return slots.popleft()
            at = self.next_slot
            self.next_slot = at + PAGE
            return at
        reused = min(len(slots), count)
        take = slots.popleft
        out = [take() for _ in range(reused)]
        if reused < count:
            fresh = self.next_slot
            self.next_slot = fresh + (count - reused) * PAGE
            out += range(fresh, self.next_slot, PAGE)
        return out

    def _free_data(self, pg: Page) -> None:
        """``pgp_free_data``: the page's data goes (`cp`/`cb` fall for compressed data; a
        frame goes to tmem's free list; a shared copy loses a reference)."""
        data = pg.data
        if data is None:
            return
        csize = pg.csize
        pool = pg.obj.pool  # type: ignore[union-attr]
        if self.pcd_of and pg in self.pcd_of:
            self._disassociate(pool, pg)
        elif csize:
            self._meta(pool, -xmem_block(csize))
        else:
            self._free_frame(pool, data)  # type: ignore[arg-type]
        if csize > 0:
            owner = pool.client
            owner.cp -= 1
            owner.cb -= csize
        pg.data = None
        pg.csize = 0

    def _free_frame(self, pool: Pool, at: int) -> None:
        """``tmem_free_page``: a frame back to tmem's free list (uncharged from a persistent
        pool's domain)."""
        self.raw_pages -= 1
        self.free_list += 1
        self.free_slots.append(at)
        if pool.persistent:
            pool.client.dom.tmem_pages -= 1

    def _associate(self, pool: Pool, pg: Page, packed: bytes | None) -> bool:
        """``pcd_associate`` (dedup): the page just stored (``packed``: its compressed bytes,
        else a whole page in its frame) shares the copy of identical content, or its content
        becomes a new copy (with tze, a trimmed one). A trimmed copy never matches again; a
        page of zeros keeps its frame, which nobody ever frees (§9.2). False (its data
        freed) when the copy finds no memory."""
        if packed is None:
            at = pg.data
            content = bytes(self.av[at:at + PAGE])  # type: ignore[misc]
            size = PAGE
            if self.tze:
                size = trimmed_size(content)
                if size > PCD_TZE_MAX_SIZE:
                    size = PAGE
            key = content if size == PAGE else None
        else:
            key, size = packed, len(packed)
        pcd = self.pcds.get(key) if key is not None else None
        if pcd is not None:
            if packed is None:
                self._free_data(pg)  # the new frame: Xen frees it at the match
            self.Gd += 1
        else:
            if not self._meta(pool, self.pcd_block):
                self._free_data(pg)
                return False
            if packed is not None:
                if not self._meta(pool, xmem_block(size)):
                    self._meta(pool, -self.pcd_block)
                    return False
                pcd = Pcd(packed, size, key)
                self.Gz += size
            elif size == PAGE or (size and not self._meta(pool, xmem_block(size))):
                pcd = Pcd(at, PAGE, content)  # type: ignore[arg-type]
                self.Zt += PAGE if self.tze else 0
                self.Gz += PAGE if self.compress_default else 0
            else:
                pcd = Pcd(content[:size], size, None)
                self.Zt += size
                if size:
                    self._free_frame(pool, at)  # type: ignore[arg-type]
            if pcd.key is not None:
                self.pcds[pcd.key] = pcd
            n = self.Sc = self.Sc + 1
            if n > self.Sm:
                self.Sm = n
        pcd.refs += 1
        self.pcd_of[pg] = pcd
        self.attempted.discard(pg)
        pg.data = pcd.data
        pg.csize = size if packed is not None else 0 if pcd.size == PAGE else TRIMMED
        return True

    def _disassociate(self, pool: Pool, pg: Page) -> None:
        """``pcd_disassociate``: the page stops sharing its copy, which goes with its last
        page (a page of zeros leaves its frame behind)."""
        pcd = self.pcd_of.pop(pg)
        self.attempted.discard(pg)
        pcd.refs -= 1
        if pcd.refs:
            return
        self.Sc -= 1
        self._meta(pool, -self.pcd_block)
        if pcd.key is not None and self.pcds.get(pcd.key) is pcd:
            del self.pcds[pcd.key]
        if pg.csize > 0:
            self._meta(pool, -xmem_block(pcd.size))
            self.Gz -= pcd.size
        elif pcd.size == PAGE:
            self.Zt -= PAGE if self.tze else 0
            self.Gz -= PAGE if self.compress_default else 0
            self._free_frame(pool, pcd.data)  # type: ignore[arg-type]
        elif pcd.size:
            self._meta(pool, -xmem_block(pcd.size))
            self.Zt -= pcd.size

    def _fill(self, pool: Pool, pg: Page, src, new: bool, buffer: bool) -> int:
        """Store the guest's page ``src`` (None: its frame cannot be read) in ``pg``, as
        ``do_tmem_put`` (``new``) or ``do_tmem_dup_put`` does: compressed when the owner
        compresses and the result fits a sub-page allocation (a duplicate only tries when the
        old copy was compressed), else in a page frame. ``buffer``: from a guest buffer
        (RESTORE_PUT_PAGE), which 4.5/4.12 cannot copy raw. 1, or Xen's error."""
        owner = pool.client
        if owner.compress and (new or pg.csize):
            if src is None:
                self.Cf += 1
                return EFAULT
            if not new:
                self._free_data(pg)
            packed = compress_page(src)
            size = len(packed)
            if size < SUBPAGE_MAX:
                if self.dedup and not pool.persistent:
                    stored = self._associate(pool, pg, packed)
                elif self._meta(pool, xmem_block(size)):
                    pg.data, pg.csize = packed, size
                    stored = True
                else:
                    stored = False
                if not stored:
                    if new:
                        owner.cm += 1
                    return ENOMEM
                owner.cp += 1
                owner.cb += size
                return 1
            if new:
                owner.cn += 1
        if new:
            if pool.persistent:
                dom = owner.dom
                if dom.tmem_pages + dom.nr_pages >= dom.max_pages:  # the domain's max_pages
                    self.Pf += 1
                    return ENOMEM
        else:
            self._free_data(pg)
        at = self._take_frames(1, pool)
        if at is None:
            return ENOMEM
        if src is not None and not buffer:
            self.av[at:at + PAGE] = src
            pg.data = at  # csize is 0: a new descriptor's, or _free_data reset it
            if self.dedup and not pool.persistent and not self._associate(pool, pg, None):
                return ENOMEM
            return 1
        if src is None:
            rc = EFAULT
        elif self.b.bug_save_raw_einval:
            rc = EINVAL  # 4.5/4.12 copy routines refuse a guest buffer (§9.1)
        else:
            self.av[at:at + PAGE] = src
            pg.data = at
            if self.dedup and not pool.persistent and not self._associate(pool, pg, None):
                return ENOMEM
            return 1
        pg.data = at
        self._free_data(pg)
        self.Cf += 1
        return rc

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

    def freeable_pages(self) -> int:
        """``tmem_freeable_pages``: the free list, the ephemeral pools' frames and the pages
        of the ephemeral sub-page pool (what Xen may take back)."""
        persistent_frames = sum(c.dom.tmem_pages - c.meta_pages for c in self.clients.values())
        return self.free_list + self.raw_pages - persistent_frames + self.meta_pages

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
        self.remove_pages((victim,))
        self.Et += 1
        return True

    def _first_evictable(self, pages: OrderedDict[Page, None]) -> Page | None:
        """The list's first page not of a dying pool. With dedup, a page whose copy others
        share gets one second chance: it moves to the young end of both lists and this
        attempt finds nothing (Xen's walk ends there, §3.5)."""
        if not self.dying_pools:
            pg = next(iter(pages))
        else:
            pg = next((p for p in pages if not p.obj.pool.dying), None)  # type: ignore[union-attr]
        if pg is None or not self.pcd_of:
            return pg
        pcd = self.pcd_of.get(pg)
        if pcd is not None and pcd.refs > 1 and pg not in self.attempted:
            self.attempted.add(pg)
            self.g_eph.move_to_end(pg)
            pg.obj.pool.client.eph.move_to_end(pg)  # type: ignore[union-attr]
            return None
        return pg

    # ---- per-page bookkeeping -----------------------------------------------------------------
    # Every path that adds or removes pages (single ops, the batched multicall runs and their
    # bulk moves, flushes, eviction, pool destruction) goes through these, so each rule (a
    # counter, a peak, a list, a metadata charge) is written once.

    def _obj_alloc(self, pool: Pool, oid: tuple[int, int, int]) -> Obj | None:
        """``obj_alloc``: a new, empty object in ``pool`` (its block in the sub-page pool);
        `Oc` and its peaks. None when no memory is left for it."""
        if not self._meta(pool, self.obj_block):
            return None
        obj = pool.objs[oid] = Obj(pool, oid)
        self.nobjs += 1
        if self.nobjs > self.Om:
            self.Om = self.nobjs
        if len(pool.objs) > pool.Om:
            pool.Om = len(pool.objs)
        return obj

    def _obj_free(self, obj: Obj) -> None:
        """``obj_free``: an empty object leaves its pool (its block freed)."""
        pool = obj.pool
        del pool.objs[obj.oid]
        self.nobjs -= 1
        self._meta(pool, -self.obj_block)
        if self.orphans:
            self._orphans_lose(lambda pg: pg.obj is obj)

    def _nodes(self, pool: Pool, delta: int) -> bool:
        """Radix nodes allocated (``delta`` > 0) or freed, with their blocks: `Nc` and the
        peaks `Nm`. False (nothing counted) when the blocks find no memory."""
        if not self._meta(pool, delta * self.node_block):
            return False
        pool.nodes += delta
        self.nodes += delta
        if delta > 0:
            if pool.nodes > pool.Nm:
                pool.Nm = pool.nodes
            if self.nodes > self.Nm:
                self.Nm = self.nodes
        return True

    def _add_pages(self, pool: Pool, obj: Obj, pages: Sequence[Page],
                   indexed: bool = False) -> bool:
        """New pages of one object are allocated: ``pgp_alloc`` (the descriptors' blocks,
        `Pc`, `Pm`) and ``pgp_add_to_obj`` (the radix nodes: `Nc`, `Nm`); a bulk run that did
        both op by op passes ``indexed`` and only `Pc`/`Pm` remain. False (nothing changed)
        when the blocks find no memory."""
        count = len(pages)
        if not indexed:
            if not self._meta(pool, count * self.pgp_block):
                return False
            delta = _index(obj, pages[0]) if count == 1 else _index_many(obj, pages)
            if delta and not self._nodes(pool, delta):
                for pg in pages:
                    _unindex(obj, pg.index)
                self._meta(pool, -count * self.pgp_block)
                return False
        n = pool.npages = pool.npages + count
        if n > pool.Pm:
            pool.Pm = n
        n = self.npages = self.npages + count
        if n > self.Pm:
            self.Pm = n
        return True

    def _insert_pages(self, pool: Pool, obj: Obj, pages: Sequence[Page], mark: int) -> None:
        """``do_tmem_put``'s ``insert_page`` for stored pages of one object: the pool's
        persistent list or the ephemeral lists (`Ec`, `Em`), counted as good PUTs (`ps`;
        `Pp` or `Ep`); the object is marked with ``mark`` (the owner, or the putter)."""
        count = len(pages)
        owner = pool.client
        if pool.persistent:
            head = pool.head
            prev = head.prev
            if count == 1:
                pg = pages[0]
                pg.prev = prev
                prev.next = pg
                pg.next = head
                head.prev = pg
            else:
                for pg in pages:
                    pg.prev = prev
                    prev.next = pg
                    prev = pg
                prev.next = head
                head.prev = prev
            owner.Pp += count
        else:
            if count == 1:
                pg = pages[0]
                self.g_eph[pg] = None
                owner.eph[pg] = None
            else:
                fresh = dict.fromkeys(pages)
                self.g_eph.update(fresh)
                owner.eph.update(fresh)
            n = self.eph_count = self.eph_count + count
            if n > self.Em:
                self.Em = n
            n = owner.eph_count = owner.eph_count + count
            if n > owner.Em:
                owner.Em = n
            self.Ep += count
        obj.last_client = mark
        pool.ps += count

    def _detach(self, pool: Pool, obj: Obj, pg: Page) -> None:
        """Undo ``_add_pages`` for one page (``pgp_delete_from_obj`` + ``pgp_free``): a PUT
        whose storage failed."""
        delta = _unindex(obj, pg.index)
        if delta:
            self._nodes(pool, delta)
        self._meta(pool, -self.pgp_block)
        pool.npages -= 1
        self.npages -= 1

    def remove_pages(self, pages: Sequence[Page], free_data: bool = True,
                     indexed: bool = True) -> None:
        """``pgp_delete_from_obj`` + ``pgp_delist_free`` for each page (flush, eviction,
        destructive GET, failed duplicate, destroyed object): out of its object's index
        (`Nc`) and its descriptor's block freed, unless a bulk run did both already (not
        ``indexed``), the object freed with its last page, its descriptor freed (`Pc`); off
        the ephemeral lists (`Ec`), or off the persistent list (the save cursor steps back;
        logged for a live save); its data freed (`Fc`, `cp`, `cb`) unless ``free_data`` is
        False (an eviction whose frame a PUT takes)."""
        g_eph, orphans, slots = self.g_eph, self.orphans, self.free_slots
        pgp_block, pcd_of = self.pgp_block, self.pcd_of
        frames = eph = 0
        for pg in pages:
            obj = pg.obj
            pool = obj.pool  # type: ignore[union-attr]
            owner = pool.client
            by_index = obj.pages  # type: ignore[union-attr]
            if indexed:
                index = pg.index
                if not orphans or by_index.get(index) is pg:
                    radix = obj.radix  # type: ignore[union-attr]
                    key = (index >> 6) << 3 | 1
                    left = radix[key] - 1
                    if left and obj.nodes != 1:  # type: ignore[union-attr]
                        # _unindex's common case: a leaf that stays loses one
                        radix[key] = left
                        del by_index[index]
                    else:
                        delta = _unindex(obj, index)  # type: ignore[arg-type]
                        if delta:
                            self._nodes(pool, delta)
                else:  # a failed GET's orphan, evicted at last (§9.4)
                    del orphans[pg]
            if not by_index and pool.objs.get(obj.oid) is obj:  # type: ignore[union-attr]
                self._obj_free(obj)  # type: ignore[arg-type]
            pool.npages -= 1
            if not pool.persistent:
                del g_eph[pg]
                del owner.eph[pg]
                owner.eph_count -= 1
                eph += 1
                eph_pool = pool
            else:
                if owner.migrating:
                    oid = obj.oid  # type: ignore[union-attr]
                    if pool.cursor is pg and self.b.bug_live_save:
                        # Xen leaves the cursor's descriptor on the pool list, whose
                        # pointers then overwrite the logged oid (§9.4)
                        oid = (self.next_pointer(), oid[1], oid[2])
                    owner.inv.append((pool.slot, pg.index, oid))
                    owner.inv_logged = True
                if pool.cursor is pg:
                    pool.cursor = pg.prev if pg.prev is not pool.head else None
                pg.prev.next = pg.next
                pg.next.prev = pg.prev
                if indexed:
                    self._meta(pool, -pgp_block)
                if free_data and not pg.csize and pg.data is not None:
                    owner.dom.tmem_pages -= 1  # its frame, freed below
            if free_data:
                if pg.csize or (pcd_of and pg in pcd_of):
                    self._free_data(pg)
                elif pg.data is not None:  # _free_data's frame back, counted once below
                    slots.append(pg.data)  # type: ignore[arg-type]
                    frames += 1
        self.npages -= len(pages)
        self.eph_count -= eph
        if eph and indexed:  # the ephemeral descriptors' blocks, all in one sub-page pool
            self._meta(eph_pool, -eph * pgp_block)
        if frames:
            self.raw_pages -= frames
            self.free_list += frames

    def _orphans_lose(self, lost) -> None:
        """Orphans whose object (or pool) Xen frees: their descriptors point at freed memory
        from then on; they stay counted forever and never come off a list again."""
        for pg in [pg for pg in self.orphans if lost(pg)]:
            del self.orphans[pg]
            pool = pg.obj.pool  # type: ignore[union-attr]
            if not pool.persistent:
                del self.g_eph[pg]
                del pool.client.eph[pg]

    def _orphan(self, pg: Page) -> None:
        """A private-ephemeral GET whose copy failed after the page left its object (§9.1,
        §9.4): the descriptor is neither delisted nor freed. It keeps counting in the pool's
        and the global `Pc`, in `Ec` and `Fc`; its object stays even when empty."""
        obj = pg.obj
        delta = _unindex(obj, pg.index)  # type: ignore[arg-type]
        if delta:
            self._nodes(obj.pool, delta)  # type: ignore[union-attr]
        self.orphans[pg] = None

    # ---- PUT ----------------------------------------------------------------------------------

    def put(self, cc: Client, pool: Pool, oid: tuple[int, int, int], index: int, src, *,
            buffer: bool = False) -> int:
        """``do_tmem_put`` (§2.2): ``src`` is the 4 KiB page (any buffer), or None when the
        guest's frame (or buffer) cannot be read; ``buffer``: it comes from a guest buffer."""
        pool.pt += 1
        if pool.freed:
            raise HypervisorCrash("PUT into a shared pool that Xen 4.5 had already freed")
        obj = pool.objs.get(oid)
        if obj is not None:
            pg = obj.pages.get(index)
            if pg is not None:
                return self._dup_put(cc, pool, obj, pg, src, buffer)
        if pool.client.frozen:
            if obj is not None:  # Xen counts it only when the object exists
                pool.px += 1
            return EFROZEN
        # the object (made when missing), the descriptor and its radix path, then the data;
        # a failure undoes them in Xen's order and counts `px` (not when the object itself
        # found no memory)
        new_obj = obj is None
        if new_obj:
            obj = self._obj_alloc(pool, oid)
            if obj is None:
                return ENOMEM
        pg = Page(obj, index, None, 0)
        if self._add_pages(pool, obj, (pg,)):  # type: ignore[arg-type]
            rc = self._fill(pool, pg, src, True, buffer)
            if rc == 1:
                self._insert_pages(pool, obj, (pg,),  # type: ignore[arg-type]
                                   pool.client.domid if self.mark_owner else cc.domid)
                return 1
            self._detach(pool, obj, pg)  # type: ignore[arg-type]
        else:
            rc = ENOMEM
        if new_obj:
            self._obj_free(obj)  # type: ignore[arg-type]
        pool.px += 1
        return rc

    def _dup_put(self, cc: Client, pool: Pool, obj: Obj, pg: Page, src, buffer: bool) -> int:
        """``do_tmem_dup_put``: replace in place (1), or flush the old copy and fail: -ENOSPC
        while live-saving or without memory, the copy's error for a bad source."""
        owner = pool.client
        rc = ENOSPC if owner.migrating else self._fill(pool, pg, src, False, buffer)
        if rc == 1:
            obj.last_client = owner.domid if self.mark_owner else cc.domid
            pool.pr += 1
            pool.ps += 1
            if pool.persistent:
                owner.Pp += 1
            return 1
        self.remove_pages((pg,))
        pool.pd += 1
        return ENOSPC if rc == ENOMEM else rc

    def put_run(self, cc: Client, pool: Pool, dom: Domain, o0s: Sequence[int],
                o1s: Sequence[int], o2s: Sequence[int], indexes: Sequence[int],
                cmfns: Sequence[int]) -> list[int]:
        """A run of PUTs by ``dom`` into one pool (a multicall; the oid words, indexes and
        frames as columns): op by op what the entry (ensure-free step, frame lookup) and
        ``put`` do. A run of new pages of one object from consecutive frames, with room for
        all of them (or raw ephemeral pages to evict), is stored in bulk. Returns each op's
        result."""
        count = len(cmfns)
        host = self.host
        odom = pool.client.dom
        if not pool.freed and not pool.client.frozen and not self.dedup:
            oid = _sequential_run(dom, o0s, o1s, o2s, indexes, cmfns)
            obj = pool.objs.get(oid) if oid is not None else None
            if oid is not None and (obj is None or obj.pages.keys().isdisjoint(indexes)):
                # A PUT takes at most one frame (or a page of compressed data) and its
                # metadata: with that much room for every op of the run, neither the
                # ensure-free step nor max_pages can trip.
                need = count * (1 + pool.client.compress) + self._meta_bound(indexes)
                room = self.free_list + host.heap_free - self.reserve - 256 >= need and (
                    not pool.persistent
                    or odom.max_pages - odom.nr_pages - odom.tmem_pages >= need)
                victims = None if room else self._run_victims(pool, obj, count, need)
                if room or victims is not None:
                    return self._put_new_pages(cc, pool, oid, obj, indexes, cmfns[0] << 12,
                                               dom, victims)
        results: list[int] = []
        append = results.append
        pop, max_pages, mv = dom.populated, dom.max_pages, dom.mv
        put, ensure_free = self.put, self.ensure_free
        for oid, index, cmfn in zip(zip(o0s, o1s, o2s, strict=True), indexes, cmfns,
                                    strict=True):
            if self.free_list + host.heap_free - self.reserve < 256 and not ensure_free(cc):
                append(ENOMEM)
                continue
            src = mv[cmfn << 12:(cmfn << 12) + PAGE] if 0 < cmfn < max_pages and pop[cmfn] \
                else None
            append(put(cc, pool, oid, index, src))
        return results

    def _run_victims(self, pool: Pool, obj: Obj | None, count: int,
                     need: int) -> list[Page] | None:
        """The pages a run of ``count`` new raw ephemeral pages may evict (the oldest
        ``count``: the ensure-free step evicts at most one a PUT), when that is simple to do
        in bulk: no weights (each victim is the global LRU head), no dying pool or orphan,
        every candidate raw and older than the run, and pages enough for the
        metadata (``need``); one page of another stays, so the ephemeral sub-page pool
        never empties in the run. Else None."""
        if pool.persistent or pool.client.compress or self.weight_sum or self.dying_pools \
                or self.orphans or count >= len(self.g_eph) \
                or self.free_list + self.host.heap_free < need - count:
            return None
        victims = list(islice(self.g_eph, count))
        if any(pg.csize for pg in victims):
            return None
        return victims

    def _put_new_pages(self, cc: Client, pool: Pool, oid: tuple[int, int, int],
                       obj: Obj | None, indexes: Sequence[int], src: int,
                       dom: Domain, victims: list[Page] | None) -> list[int]:
        """``put_run`` for new pages of one object from consecutive frames at ``src`` with
        no refusal possible: what single PUTs do, op by op where an order shows (the
        ensure-free step's evictions, the storage, the radix nodes behind `Nm` and the
        metadata pages), the rest in bulk: the frames (one copy when their slots follow one
        another), descriptors, lists and counters. ``victims``: the pages the ensure-free
        step may evict, oldest first (None: there is room for every op, as there always is
        for a compressing owner, whose pages are stored one by one)."""
        count = len(indexes)
        mark = pool.client.domid if self.mark_owner else cc.domid
        mv = dom.mv
        if victims is None and obj is None:
            obj = self._obj_alloc(pool, oid)
        if pool.client.compress:  # each page stored as ``put`` stores it
            pages = list(map(Page, repeat(obj), indexes, repeat(None), repeat(0)))
            self._add_pages(pool, obj, pages)  # type: ignore[arg-type]
            fill = self._fill
            for pg in pages:
                fill(pool, pg, mv[src:src + PAGE], True, False)
                src += PAGE
            self._insert_pages(pool, obj, pages, mark)  # type: ignore[arg-type]
            pool.pt += count
            return [1] * count
        if victims is None:
            datas = self._take_frames(count, pool)
            assert datas is not None and obj is not None  # put_run saw the room
            if count == 1:
                datas = [datas]
            pages = list(map(Page, repeat(obj), indexes, datas, repeat(0)))
            self._add_pages(pool, obj, pages)
        else:
            # Op by op: the ensure-free step evicts the oldest page while fewer than 256
            # pages are free, then the PUT takes a descriptor, its radix path and a frame
            # (the free list's oldest slot: with no slot left over, the victim's own).
            # Descriptors and lists follow in bulk, the victims' first, so the peaks are
            # those of single PUTs. An evicting op frees a descriptor's block and takes one
            # of the same size from the same pool, which stays in use (``_run_victims``):
            # only the others charge theirs here.
            host, nodes, take, slots = self.host, self._nodes, self._take_frames, self.free_slots
            pgp_block = self.pgp_block
            taken = 0
            datas = []
            pages = []
            for index in indexes:
                evicts = self.free_list + host.heap_free - self.reserve < 256
                if evicts:
                    victim = victims[taken]
                    taken += 1
                    vobj = victim.obj
                    delta = _unindex(vobj, victim.index)  # type: ignore[arg-type]
                    if delta:
                        nodes(vobj.pool, delta)  # type: ignore[union-attr]
                    if not vobj.pages:  # type: ignore[union-attr]
                        self._obj_free(vobj)  # type: ignore[arg-type]
                        if vobj is obj:  # the run's object lost its last page: a new one
                            obj = None
                    # its frame goes to the free list and the PUT takes the list's oldest
                    # slot (`Fc`, `Ta` unchanged); with none left over, the victim's own
                    if slots:
                        slots.append(victim.data)  # type: ignore[arg-type]
                        at = slots.popleft()
                    else:
                        at = victim.data
                    victim.data = None
                else:
                    self._meta(pool, pgp_block)
                    at = take(1, pool)
                if obj is None:
                    obj = self._obj_alloc(pool, oid)
                pg = Page(obj, index, at, 0)
                delta = _index(obj, pg)  # type: ignore[arg-type]
                if delta:
                    nodes(pool, delta)
                datas.append(at)
                pages.append(pg)
            if taken:
                self._evicted(victims[:taken])
            self._add_pages(pool, obj, pages, True)  # type: ignore[arg-type]
        av = self.av
        if _consecutive(datas):
            av[datas[0]:datas[0] + count * PAGE] = mv[src:src + count * PAGE]
        else:
            for at in datas:
                av[at:at + PAGE] = mv[src:src + PAGE]
                src += PAGE
        self._insert_pages(pool, obj, pages, mark)  # type: ignore[arg-type]
        pool.pt += count
        return [1] * count

    def _evicted(self, victims: list[Page]) -> None:
        """The rest of the evictions of a bulk run, whose victims it took out of their
        objects op by op (and whose frames and descriptor blocks it reused): descriptors,
        lists, `Et`/`Ea`."""
        self.remove_pages(victims, False, False)
        self.Ea += len(victims)
        self.Et += len(victims)

    # ---- GET ----------------------------------------------------------------------------------

    def page_bytes(self, pg: Page) -> bytes:
        """The 4 KiB content of a page."""
        if pg.csize > 0:
            return decompress_page(pg.data)
        if pg.csize:
            return pg.data.ljust(PAGE, b"\0")  # type: ignore[union-attr]
        at = pg.data
        return self.arena[at:at + PAGE]  # type: ignore[misc]

    def _copy_out(self, pg: Page, mem, off: int) -> None:
        """A stored page into ``mem[off:off+4096]``: decoded when compressed, else copied from
        its arena slot."""
        if pg.csize > 0:
            if not decode_into(pg.data, mem, off):
                _corrupt()
        elif pg.csize:  # trimmed: the bytes kept, then zeros
            data = pg.data
            mem[off:off + len(data)] = data  # type: ignore[arg-type]
            mem[off + len(data):off + PAGE] = bytes(PAGE - len(data))  # type: ignore[arg-type]
        else:
            at = pg.data
            mem[off:off + PAGE] = self.av[at:at + PAGE]  # type: ignore[misc]

    def _got(self, pool: Pool, hits: int) -> None:
        """GET hits: `gs`, and the owner's `Gp` or `Ge` (§9.4)."""
        pool.gs += hits
        if pool.persistent:
            pool.client.Gp += hits
        else:
            pool.client.Ge += hits

    def get(self, dom: Domain, pool: Pool, oid: tuple[int, int, int], index: int, off: int, *,
            buffer: bool = False) -> int:
        """``do_tmem_get`` (§2.2) by domain ``dom`` into its memory at ``off`` (< 0: a bad
        frame); ``buffer``: a guest buffer rather than a frame (SAVE_GET_NEXT_PAGE)."""
        if pool.npages == 0:
            return EEMPTY
        pool.gt += 1
        obj = pool.objs.get(oid)
        if obj is None:
            return 0
        pg = obj.pages.get(index)
        if pg is None:
            return 0
        if off < 0:
            rc = EFAULT
        elif buffer and not pg.csize and self.b.bug_save_raw_einval:
            rc = EINVAL  # 4.5/4.12 copy routines refuse a guest buffer (§9.1)
        else:
            self._copy_out(pg, dom.mem, off)
            if dom.dirty is not None:
                dom.dirty.add(off >> 12)
            if pool.persistent:
                pass
            elif pool.shared:
                self.g_eph.move_to_end(pg)
                pool.client.eph.move_to_end(pg)
                obj.last_client = dom.domid
            else:
                self.remove_pages((pg,))
            self._got(pool, 1)
            return 1
        self.Cf += 1
        if not pool.persistent and not pool.shared and self.b.bug_get_fault_consumes:
            self._orphan(pg)
        return rc

    def get_run(self, pool: Pool, dom: Domain, o0s: Sequence[int], o1s: Sequence[int],
                o2s: Sequence[int], indexes: Sequence[int], cmfns: Sequence[int]) -> list[int]:
        """A run of GETs by ``dom`` from one pool (a multicall; the oid words, indexes and
        frames as columns): op by op what ``get`` does. A run of hits on one object of a
        private pool into consecutive frames is copied in bulk. Returns each op's result."""
        pop, max_pages = dom.populated, dom.max_pages
        get = self.get
        if not pool.shared:
            oid = _sequential_run(dom, o0s, o1s, o2s, indexes, cmfns)
            obj = pool.objs.get(oid) if oid is not None else None
            if obj is not None:
                pages = list(map(obj.pages.get, indexes))
                dst = cmfns[0] << 12
                if None not in pages:
                    return self._get_pages(pool, pages, dom, dst)  # type: ignore[arg-type]
                # Hits move in bulk, misses go one by one, in order: the indexes differ, so
                # no op changes what a later one finds (an emptied pool aside, which ``get``
                # sees).
                results: list[int] = []
                start = None
                for i, pg in enumerate([*pages, None]):
                    if pg is not None:
                        if start is None:
                            start = i
                        continue
                    if start is not None:
                        results += self._get_pages(pool, pages[start:i], dom,  # type: ignore[arg-type]
                                                   dst + start * PAGE)
                        start = None
                    if i < len(pages):
                        results.append(get(dom, pool, oid, indexes[i], dst + i * PAGE))
                return results
        return [get(dom, pool, oid, index,
                    cmfn << 12 if 0 < cmfn < max_pages and pop[cmfn] else -1)
                for oid, index, cmfn in zip(zip(o0s, o1s, o2s, strict=True), indexes, cmfns,
                                            strict=True)]

    def _get_pages(self, pool: Pool, pages: list[Page], dom: Domain, dst: int) -> list[int]:
        """``get_run`` for a run of hits on one object of a private pool into consecutive
        frames at ``dst``: the copies of op-by-op GETs (one, when the pages sit in consecutive
        arena slots), then their removals (ephemeral GETs are destructive) and counters."""
        count = len(pages)
        av, mem = self.av, dom.mem
        slots = [pg.data for pg in pages]
        if not any(pg.csize for pg in pages) and _consecutive(slots):  # type: ignore[arg-type]
            mem[dst:dst + count * PAGE] = av[slots[0]:slots[0] + count * PAGE]  # type: ignore[operator]
        else:
            for pg in pages:
                self._copy_out(pg, mem, dst)
                dst += PAGE
        pool.gt += count
        self._got(pool, count)
        if not pool.persistent:
            self.remove_pages(pages)
        return [1] * count

    # ---- flush --------------------------------------------------------------------------------

    def flush_page(self, cc: Client, pool: Pool, oid: tuple[int, int, int], index: int) -> int:
        pool.ft += 1
        obj = pool.objs.get(oid)
        if obj is not None:
            pg = obj.pages.get(index)
            if pg is not None:
                self.remove_pages((pg,))
                pool.fs += 1
        return EFROZEN if pool.client.frozen else 1

    def flush_object(self, cc: Client, pool: Pool, oid: tuple[int, int, int]) -> int:
        pool.ot += 1
        obj = pool.objs.get(oid)
        if obj is not None:
            self._destroy_obj(obj)
            pool.os += 1
        return EFROZEN if pool.client.frozen else 1

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
            self.remove_pages((pg,))
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
        """``obj_destroy``: every page of the object goes, and the object with its last (an
        object a failed GET emptied goes all the same)."""
        if obj.pages:
            self.remove_pages(list(obj.pages.values()))
        else:
            self._obj_free(obj)

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
        pool.nodes -= obj.nodes
        if self.orphans:
            self._orphans_lose(lambda pg: pg.obj is obj)

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
            new.eph_count += len(moved)  # its `Em` stays (§9.4)
            pool.client = new
        pool.slot = slot

    def _free_pool(self, pool: Pool) -> None:
        """``pool_free``. A 4.5 creator's pool can stay in the global table (and in joiners'
        slots), pointing at freed memory that reads as an unshared pool with zero counters."""
        pool.freed = True
        if self.orphans:
            self._orphans_lose(lambda pg: pg.obj.pool is pool)
        if pool.dying:
            self.dying_pools -= 1
            pool.dying = False
        if pool.gslot >= 0 and self.shared[pool.gslot] is pool:
            # LIST prints it while it has sharers; with an empty share list it crashes (§9.2)
            pool.list_crash = not pool.sharers
            pool.persistent = pool.shared = False
            pool.pt = pool.ps = pool.pr = pool.pd = pool.px = 0
            pool.gt = pool.gs = pool.ft = pool.fs = pool.ot = pool.os = 0
            pool.npages = pool.nodes = pool.Pm = pool.Om = pool.Nm = 0

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
