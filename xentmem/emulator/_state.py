"""Everything persistent about an ``EmulatedHost`` as plain data, and back.

The state is a dict of ints, strings, bytes, lists and dicts (picklable, and JSON-able once bytes
are encoded), so the daemon can write it atomically. It keeps the configuration, domains (names,
sizes, which frames are RAM), every tmem client, pool, object and page (compressed pages stay
compressed), the ephemeral LRU order, the save cursors and every counter. Guest frame contents
and handed-out buffers are not kept: they belong to connections, which a restart ends.
"""

from __future__ import annotations

import copy
import zlib
from typing import TYPE_CHECKING, Any

from xentmem.abi import PAGE_SIZE
from xentmem.emulator._codec import compress_page
from xentmem.emulator._tmem import REGION, SUBPAGE_MAX, Obj, Page, Pool, Tmem, _index

if TYPE_CHECKING:
    from xentmem.emulator._host import EmulatedHost

# 1: lz4 blocks (read: _lz4_to_lzo); 2: no metadata pages, `cbytes` (read: _settle_metadata)
FORMAT = 3
_TMEM = ("Tt", "Te", "Cf", "Af", "Pf", "Lm", "Et", "Ea", "Rt", "Ra", "Rx", "Fp", "Ep", "Em",
         "Om", "Pm", "Fm", "Nm", "free_list", "reserve", "auth_disabled", "weight_sum",
         "raw_pages", "meta_used", "meta_pages", "npages", "nobjs", "nodes", "eph_count", "ptr_seq",
         "dying_pools", "Sc", "Sm", "Gd", "Zt", "Gz")
_CLIENT = ("weight", "cap", "compress", "frozen", "was_frozen", "saving", "migrating",
           "eph_count", "Em", "Ge", "Pp", "Gp", "cp", "cb", "cn", "cm", "inv_logged",
           "dangling_inv", "inv_at", "meta_used", "meta_pages")
_POOL = ("slot", "flags", "persistent", "shared", "gslot", "freed", "list_crash", "dying", "pt",
         "ps", "pr", "pd", "px", "gt", "gs", "ft", "fs", "ot", "os", "Pm", "Om", "Nm")


def _pool_state(tm, pool: Pool) -> dict[str, Any]:
    pages = []
    order = pool.pages_in_order() if pool.persistent else \
        [pg for obj in pool.objs.values() for pg in obj.pages.values()]
    # descriptors a failed GET left out of their objects (§9.4), and objects they emptied
    orphans = [pg for pg in tm.orphans if pg.obj.pool is pool]
    for pg in order + orphans:
        data = pg.data if pg.csize else tm.page_bytes(pg)
        pages.append((pg.obj.oid, pg.index, data, pg.csize, pg.obj.last_client))
    cursor = -1
    if pool.cursor is pool.head:
        cursor = -2
    elif pool.cursor is not None:
        cursor = order.index(pool.cursor)
    out = {name: getattr(pool, name) for name in _POOL}
    out.update(owner=pool.client.domid, uuid=list(pool.uuid),
               sharers=[c.domid for c in pool.sharers], cursor=cursor, pages=pages,
               orphans=len(orphans),
               empty=[(obj.oid, obj.last_client) for obj in pool.objs.values() if not obj.pages])
    return out


def to_state(host: EmulatedHost) -> dict[str, Any]:
    tm = host.tmem
    pools: dict[int, Pool] = {}
    for client in tm.clients.values():
        for pool in client.pools:
            if pool is not None:
                pools.setdefault(id(pool), pool)
    for pool in tm.shared:
        if pool is not None:
            pools.setdefault(id(pool), pool)
    ref = {key: i for i, key in enumerate(pools)}
    page_ref = {}
    for key, pool in pools.items():
        if not pool.persistent:
            for obj in pool.objs.values():
                for pg in obj.pages.values():
                    page_ref[pg] = (ref[key], obj.oid, pg.index)
    for pg in tm.orphans:
        page_ref[pg] = (ref[id(pg.obj.pool)], pg.obj.oid, pg.index, "orphan")
    return {
        "format": FORMAT,
        "config": {"memory_mb": host.memory_mb,
                   "xen_version": f"{host.version}{host.extraversion}",
                   **host.boot, "designed": host.designed},
        "crashed": host.crashed,
        "next_domid": host._next_domid,
        "heap_free": host.heap_free,
        "domains": [{"domid": d.domid, "name": d.name, "nr_pages": d.nr_pages,
                     "max_pages": d.max_pages, "tmem_pages": d.tmem_pages,
                     "populated": zlib.compress(bytes(d.populated))}
                    for d in host.domains.values()],
        "tmem": {
            **{name: getattr(tm, name) for name in _TMEM},
            "clients": [{"domid": c.domid, **{n: getattr(c, n) for n in _CLIENT},
                         "auth": [list(u) for u in c.auth],
                         "inv": [(s, i, list(o)) for s, i, o in c.inv],
                         "pools": [None if p is None else ref[id(p)] for p in c.pools]}
                        for c in tm.clients.values()],
            "pools": [_pool_state(tm, pool) for pool in pools.values()],
            "shared": [None if p is None else ref[id(p)] for p in tm.shared],
            "eph_order": [page_ref[pg] for pg in tm.g_eph],
        },
    }


def _lz4_to_lzo(state: dict[str, Any]) -> int:
    """A format 1 state (written when lz4 stood in for LZO) as format 2, in place: each
    compressed page recompressed as Xen's LZO1X-1 does, its owner's `cp` and `cb` following;
    one whose LZO block would not fit Xen's sub-page allocator is stored raw instead, in a
    frame (`Fc`), compression found poor (`cn`). `cbytes` and the domains' charges stay as
    written (``_old_charges`` reads them). Returns the frames still to take."""
    import lz4.block

    t = state["tmem"]
    clients = {c["domid"]: c for c in t["clients"]}
    frames = 0
    for p in t["pools"]:
        owner = clients.get(p["owner"])
        for n, (oid, index, data, csize, last) in enumerate(p["pages"]):
            if not csize:
                continue
            page = lz4.block.decompress(data, uncompressed_size=PAGE_SIZE)
            packed = compress_page(page)
            if len(packed) < SUBPAGE_MAX:
                p["pages"][n] = (oid, index, packed, len(packed), last)
                if owner is not None:
                    owner["cb"] += len(packed) - csize
                continue
            p["pages"][n] = (oid, index, page, 0, last)
            frames += 1
            t["raw_pages"] += 1
            t["Fm"] = max(t["Fm"], t["raw_pages"])
            if owner is not None:
                owner["cp"] -= 1
                owner["cb"] -= csize
                owner["cn"] += 1
    state["format"] = 2
    return frames


def _old_charges(state: dict[str, Any]) -> int:
    """Formats 1 and 2 charged a domain a page for each persistent page, compressed or not,
    and took the pages the global `cbytes` of compressed data spanned: the compressed pages'
    charges go (``_settle_metadata`` charges their blocks) and so does `cbytes`. Returns the
    pages it spanned, which tmem gives back."""
    t = state["tmem"]
    domains = {d["domid"]: d for d in state["domains"]}
    for p in t["pools"]:
        if p["persistent"] and p["owner"] in domains:
            domains[p["owner"]]["tmem_pages"] -= sum(1 for page in p["pages"] if page[3])
    return -(-t.pop("cbytes") // PAGE_SIZE)


def _settle_metadata(tm: Tmem, pools: list[Pool | None], owed: int) -> None:
    """Tmem's own structures on a host loaded from a state that kept none (format 1 or 2),
    charged as the model would have charged them storing the same pages: each sub-page
    pool's blocks (``Tmem.meta_bytes`` of its pools) and the pages they span (the ephemeral
    pools' the host's, a persistent pool's its owner's, charged to the owner's domain). Those
    pages and ``owed`` (frames, less the pages the old compressed data took) come from tmem's
    free list, then Xen's heap. Where the old host has too few, ephemeral pages are evicted,
    oldest first (`Et`, `Ea`), as Xen would to make room. A persistent page is never
    dropped: a domain may end up past its max_pages (it then PUTs nothing new until it
    frees pages), and if even with every ephemeral page gone the host cannot hold the
    persistent pages' metadata, the load fails (ValueError), the state left as it was
    written for the release that wrote it."""
    for pool in pools:
        if pool is not None:
            holder = pool.client if pool.persistent else tm
            holder.meta_used += tm.meta_bytes(pool)
    for holder in (tm, *tm.clients.values()):
        holder.meta_pages = -(-holder.meta_used // REGION)
        owed += holder.meta_pages
        if holder is not tm:
            holder.dom.tmem_pages += holder.meta_pages  # type: ignore[union-attr]
    # an eviction frees a frame, or with the last ephemeral page the ephemeral pool's pages,
    # to the free list: ``owed`` counts them, taken back below
    while owed > tm.free_list + tm.host.heap_free and tm.evict(None):
        pass
    if owed < 0:
        tm.free_list -= owed
    elif not tm._take_pages(owed):
        raise ValueError(f"the saved host (state format 1 or 2) needs {owed} pages for "
                         f"tmem's persistent pages and their metadata, and has "
                         f"{tm.free_list + tm.host.heap_free}: load it with the release that "
                         "wrote it and free persistent pages first")


def from_state(cls: type[EmulatedHost], state: dict[str, Any]) -> EmulatedHost:
    fmt = state.get("format")
    # formats 1 and 2 kept no metadata: the pages their compressed data spanned go back (main
    # at e5148d6 wrote today's state, with no `cbytes`, as format 2)
    old = fmt == 1 or (fmt == 2 and "cbytes" in state["tmem"])
    if old or fmt == 2:
        state = copy.deepcopy(state)  # a failed load leaves the caller's state as it was
        owed = (_lz4_to_lzo(state) if fmt == 1 else 0) - _old_charges(state) if old else 0
        state["format"] = FORMAT
    if state.get("format") != FORMAT:
        raise ValueError(f"unknown emulator state format {state.get('format')!r}")
    cfg = state["config"]
    host = cls(cfg["memory_mb"], xen_version=cfg["xen_version"], tmem=cfg["tmem"],
               tmem_compress=cfg["tmem_compress"], tmem_shared_auth=cfg["tmem_shared_auth"],
               designed=cfg["designed"], dom0_memory_mb=1,
               tmem_dedup=cfg.get("tmem_dedup", False), tmem_tze=cfg.get("tmem_tze", False))
    from xentmem.emulator._host import Domain

    for dom in host.domains.values():
        dom.close()
    host.domains = {}
    for d in state["domains"]:
        dom = Domain(d["domid"], d["name"], 0, d["max_pages"])
        dom.populated[:] = zlib.decompress(d["populated"])
        dom.avail[:] = dom.populated
        dom.avail[0] = 0
        dom.nr_pages = d["nr_pages"]
        dom.tmem_pages = d["tmem_pages"]
        host.domains[dom.domid] = dom
    host._next_domid = state["next_domid"]
    host.heap_free = state["heap_free"]
    host.crashed = state["crashed"]

    tm = host.tmem
    t = state["tmem"]
    clients = {}
    for c in t["clients"]:
        client = tm.create_client(host.domains[c["domid"]])
        for name in _CLIENT:
            setattr(client, name, c.get(name, 0))
        client.auth = [tuple(u) for u in c["auth"]]
        client.inv = [(s, i, tuple(o)) for s, i, o in c["inv"]]
        clients[client.domid] = client
    pools: list[Pool | None] = []
    page_at: dict[tuple[int, tuple[int, int, int], int], Page] = {}
    for i, p in enumerate(t["pools"]):
        owner = clients.get(p["owner"])
        if owner is None:  # a pool only a freed 4.5 global slot still points at
            pools.append(None)
            continue
        pool = Pool(owner, p["slot"], p["flags"], p["persistent"], p["shared"], tuple(p["uuid"]))
        for name in _POOL:
            setattr(pool, name, p.get(name, False))
        pool.uuid = tuple(p["uuid"])
        pool.sharers = [clients[d] for d in p["sharers"] if d in clients]
        order = []
        entries = p["pages"]
        orphans = len(entries) - p.get("orphans", 0)
        for n, (oid, index, data, csize, last) in enumerate(entries):
            oid = tuple(oid)
            obj = pool.objs.get(oid)
            if obj is None:
                obj = pool.objs[oid] = Obj(pool, oid)
            obj.last_client = last
            if not csize:
                at = tm.next_slot
                tm.next_slot += PAGE_SIZE
                tm.av[at:at + PAGE_SIZE] = data
                data = at
            pg = Page(obj, index, data, csize)
            pool.npages += 1
            if n >= orphans:
                tm.orphans[pg] = None
                page_at[(i, oid, index, "orphan")] = pg
                continue
            pool.nodes += _index(obj, pg)
            order.append(pg)
            page_at[(i, oid, index)] = pg
        for oid, last in p.get("empty", []):
            pool.objs.setdefault(tuple(oid), Obj(pool, tuple(oid))).last_client = last
        if pool.persistent:
            head = pool.head
            for pg in order:
                pg.prev, pg.next = head.prev, head
                head.prev.next = pg
                head.prev = pg
        cursor = p["cursor"]
        pool.cursor = None if cursor == -1 else pool.head if cursor == -2 else order[cursor]
        pools.append(pool)
    for c in t["clients"]:
        clients[c["domid"]].pools = [None if r is None else pools[r] for r in c["pools"]]
    tm.shared = [None if r is None else pools[r] for r in t["shared"]]
    for i, oid, index, *orphan in t["eph_order"]:
        pg = page_at[(i, tuple(oid), index, *orphan)]
        tm.g_eph[pg] = None
        pg.obj.pool.client.eph[pg] = None
    if tm.dedup:  # the shared copies, rebuilt by storing the pages again (counters below)
        for pool in pools:
            if pool is not None and not pool.persistent:
                for pg in [pg for obj in pool.objs.values() for pg in obj.pages.values()]:
                    _reassociate(tm, pool, pg)
        host.heap_free = state["heap_free"]
    for name in _TMEM:
        setattr(tm, name, t.get(name, 0))
    if old:
        _settle_metadata(tm, pools, owed)
    return host


def _reassociate(tm, pool: Pool, pg: Page) -> None:
    if pg.csize < 0:  # trimmed: whole again, in a frame, to be trimmed anew
        at = tm.next_slot
        tm.next_slot += PAGE_SIZE
        tm.av[at:at + PAGE_SIZE] = tm.page_bytes(pg)
        pg.data, pg.csize = at, 0
    tm._associate(pool, pg, pg.data if pg.csize > 0 else None)
