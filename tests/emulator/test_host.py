"""The host: domains and their frames, domain death (§3.2, §9.3), crashes (§9), the other
hypercalls (xen_version, multicall, memory_op), and state round trips."""

from __future__ import annotations

import pickle
import struct

import lz4.block
import pytest

from xentmem import abi
from xentmem.abi import PAGE_SIZE, Hypercall, TmemCmd
from xentmem.emulator import EmulatedHost
from xentmem.emulator._codec import decompress_page
from xentmem.emulator._tmem import REGION
from xentmem.emulator.transport import EmulatedHypervisor
from xentmem.errors import EmulatorError, HostCrashed, TmemNoPoolError
from xentmem.hypercalls.tmem import Tmem

from .driver import PRIV_EPH, PRIV_PERS, SHARED_EPH, Guest, make, page, text_page

U = (0xAAAA, 0xBBBB)


def test_public_api():
    import xentmem.emulator as pkg

    assert sorted(pkg.__all__) == ["Behaviour", "BenchRow", "Domain", "EmulatedHost", "TmemBench",
                                   "bench_tmem"]
    for name in pkg.__all__:
        assert getattr(pkg, name).__doc__


def test_domains_and_memory_budget():
    host = EmulatedHost(64, dom0_memory_mb=16)
    assert set(host.domains) == {0}
    a = host.create_domain("a", 16, 32)
    assert host.domain_info(a)["nr_pages"] == 16 * 256
    with pytest.raises(EmulatorError, match="already used"):
        host.create_domain("a", 1)
    with pytest.raises(EmulatorError, match="not enough free host memory"):
        host.create_domain("big", 64)
    with pytest.raises(EmulatorError):
        host.create_domain("bad", 8, 4)
    with pytest.raises(EmulatorError, match="domain 0"):
        host.destroy_domain(0)
    host.destroy_domain(a)
    assert host.create_domain("big", 40) == 2  # memory came back; domids are not reused
    with pytest.raises(EmulatorError):
        host.hypercall(a, Hypercall.tmem_op, 0)
    with pytest.raises(ValueError):
        EmulatedHost(64, xen_version="4.0")


def test_frames_and_buffers_are_guest_memory():
    host = EmulatedHost(64, dom0_memory_mb=16)
    hv = EmulatedHypervisor(host, 0)
    frame, buf = hv.alloc_frame(), hv.alloc_buffer(3 * PAGE_SIZE)
    assert frame.number >= 1 and buf.address % PAGE_SIZE == 0
    assert buf.address // PAGE_SIZE > frame.number  # buffers from the top
    frame.write(page(1))
    assert host.read_memory(0, frame.number * PAGE_SIZE, PAGE_SIZE) == page(1)
    host.write_memory(0, buf.address + 5, b"xyz")
    assert buf.read(3, 5) == b"xyz"
    with pytest.raises(EmulatorError):
        host.read_memory(0, 0, 16)  # the null page
    with pytest.raises(ValueError):
        buf.write(b"x", 3 * PAGE_SIZE)
    number = frame.number
    frame.close()
    again = hv.alloc_frame()
    assert again.number == number  # the lowest free frame again
    assert again.read() == bytes(PAGE_SIZE)  # given back zeroed


def test_xen_version_hypercall():
    host = EmulatedHost(64, xen_version="4.12.4")
    hv = EmulatedHypervisor(host, 0)
    buf = hv.alloc_buffer(16)
    assert hv.hypercall(Hypercall.xen_version, 0, 0) == 0x0004000C
    assert hv.hypercall(Hypercall.xen_version, 1, buf.address) == 0
    assert buf.read() == b".4" + bytes(14)
    assert hv.hypercall(Hypercall.xen_version, 7, 0) == 4096
    assert host.hypercall(0, Hypercall.xen_version, 1, 0) == -14
    assert host.hypercall(0, Hypercall.xen_version, 99, 0) == -38
    assert host.hypercall(0, 99) == -38


def test_multicall_writes_results_in_place():
    host, (g,) = make("4.12")
    p = g.new_pool(PRIV_PERS)
    ops = g.hv.alloc_buffer(3 * 56)
    entries = g.hv.alloc_buffer(4 * 64)
    ops.write(abi.pack_tmem_op(TmemCmd.TMEM_PUT_PAGE, p, oid=(1, 0, 0), cmfn=g.frame.number), 0)
    ops.write(abi.pack_tmem_op(TmemCmd.TMEM_GET_PAGE, p, oid=(1, 0, 0), index=1,
                               cmfn=g.frame.number), 56)
    ops.write(abi.pack_tmem_op(TmemCmd.TMEM_GET_PAGE, 9), 112)
    raw = b"".join(abi.MULTICALL_ENTRY.pack(38, 0, ops.address + i * 56, 0, 0, 0, 0, 0)
                   for i in range(3))
    raw += abi.MULTICALL_ENTRY.pack(Hypercall.multicall, 0, 0, 0, 0, 0, 0, 0)
    entries.write(raw)
    assert host.hypercall(0, Hypercall.multicall, entries.address, 4) == 0
    results = [struct.unpack_from("<q", entries.read(), i * 64 + 8)[0] for i in range(4)]
    assert results == [1, 0, -19, -22]
    assert host.hypercall(0, Hypercall.multicall, 0, 1) == -14


def test_memory_op_gives_a_domain_frames_up_to_its_max():
    host = EmulatedHost(64, dom0_memory_mb=16, dom0_max_memory_mb=16)
    dom = host.create_domain("pv", 4, 5)
    hv = EmulatedHypervisor(host, dom)
    buf = hv.alloc_buffer(4096)
    res = buf.address + 64
    buf.write(abi.XEN_MEMORY_RESERVATION.pack(res, 300, 0, 0, abi.DOMID_SELF))
    assert hv.hypercall(Hypercall.memory_op, 0, buf.address) == 256  # up to max_pages
    frames = struct.unpack_from("<256Q", buf.read(2048, 64))
    assert frames[0] == 4 * 256 and len(set(frames)) == 256
    t = Tmem(hv, version="4.12")
    p = t.new_pool(persistent=False)
    host_frame_put = Guest(host, dom)
    assert host_frame_put.put(p, 1, 0, page(3), cmfn=frames[0]) == 1
    buf.write(abi.XEN_MEMORY_RESERVATION.pack(res, 1, 0, 0, abi.DOMID_SELF))
    assert hv.hypercall(Hypercall.memory_op, 1, buf.address) == 1
    assert host_frame_put.put(p, 1, 1, page(3), cmfn=frames[0]) == -14
    assert host.hypercall(dom, Hypercall.memory_op, 0, 0) == -14
    assert host.hypercall(dom, Hypercall.memory_op, 5, buf.address) == -38


# --- domain death (§3.2, §9.3) ------------------------------------------------------------------

def _two_sharers(version: str):
    host, (d0, d1) = make(version, guests=1)
    for d in (d0, d1):
        if version == "4.12":
            d0.auth(d.domid, U)
    return host, d0, d1


def test_domain_death_4_12_owner_takes_unread_objects():
    """§9.3: objects are marked with the pool owner on PUT and with the reader on a shared GET;
    the dead domain's private pools go, a shared pool it created passes to dom0 emptied."""
    host, d0, d1 = _two_sharers("4.12")
    priv = d1.new_pool(PRIV_PERS)
    d1.put(priv, 1, 0, page(1))
    s1 = d1.new_pool(SHARED_EPH, U)  # domU creates: it owns the pool
    s0 = d0.new_pool(SHARED_EPH, U)
    d0.put(s0, 1, 0, page(2))
    d1.put(s1, 2, 0, page(3))
    d0.put(s0, 3, 0, page(4))
    assert d0.get(s0, 3, 0)[0] == 1  # dom0 read object 3: now marked with dom0
    host.destroy_domain(d1.domid)
    text = host.tmem_list()
    assert f"C=CI:{d1.domid}" not in text
    assert "SC:0\n" in text and f"SC:{d1.domid}" not in text
    assert (d0.get(s0, 1, 0)[0], d0.get(s0, 2, 0)[0], d0.get(s0, 3, 0)[0]) == (0, 0, 1)
    assert d0.ctl("FREEZE", d1.domid) == -1
    assert d0.auth(d1.domid, U) == -12
    assert host.tmem.clients[0].eph_count == 1  # the pool's pages moved to the new owner


def test_domain_death_designed_marks_the_putter():
    host, (d0, d1) = make("4.12", guests=1, designed=True)
    for d in (d0, d1):
        d0.auth(d.domid, U)
    s1 = d1.new_pool(SHARED_EPH, U)
    s0 = d0.new_pool(SHARED_EPH, U)
    d0.put(s0, 1, 0, page(2))
    d1.put(s1, 2, 0, page(3))
    host.destroy_domain(d1.domid)
    assert (d0.get(s0, 1, 0)[0], d0.get(s0, 2, 0)[0]) == (1, 0)


def test_4_5_joiner_death_destroys_dom0_pool():
    host, d0, d1 = _two_sharers("4.5")
    s0 = d0.new_pool(SHARED_EPH, U)
    s1 = d1.new_pool(SHARED_EPH, U)
    d0.put(s0, 1, 0, page(1))
    assert d1.get(s1, 1, 0)[0] == 1
    assert f"S=SI:0,PT:ES,U0:aaaa,U1:bbbb,SC:{d1.domid}\n" in host.tmem_list()  # no creator
    host.destroy_domain(d1.domid)
    assert d0.get(s0, 1, 0)[0] == -19
    assert d0.destroy(s0) == 0


def test_4_5_creator_leaving_crashes_on_next_shared_call():
    host, d0, d1 = _two_sharers("4.5")
    s0 = d0.new_pool(SHARED_EPH, U)
    s1 = d1.new_pool(SHARED_EPH, U)
    d0.put(s0, 1, 0, page(1))
    assert d0.destroy(s0) == 1
    assert d1.get(s1, 1, 0)[0] == -1001
    with pytest.raises(HostCrashed, match="freed"):
        d0.new_pool(SHARED_EPH, (5, 5))
    assert host.crashed and host.domains == {}


@pytest.mark.parametrize("then", ["joiner_destroy", "joiner_death_then_list", "list"])
def test_4_5_stale_pool_after_the_creator_left(then):
    """§9.3, §9.4: after the creator destroyed a shared pool a domU still uses, LIST prints the
    stale pool; the joiner's DESTROY_POOL crashes the hypervisor, and so does a LIST once the
    joiner has died."""
    host, d0, d1 = _two_sharers("4.5")
    s0 = d0.new_pool(SHARED_EPH, U)
    s1 = d1.new_pool(SHARED_EPH, U)
    assert d0.destroy(s0) == 1
    if then == "list":
        assert "S=SI:0,PT:EP," in host.tmem_list()
        return
    if then == "joiner_destroy":
        with pytest.raises(HostCrashed, match="freed"):
            d1.destroy(s1)
    else:
        host.destroy_domain(d1.domid)
        with pytest.raises(HostCrashed, match="freed"):
            d0.list()
    assert host.crashed and host.domains == {}


def test_4_5_sole_creator_destroy_then_list_all_crashes():
    host, (d0,) = make("4.5")
    s = d0.new_pool(SHARED_EPH, U)
    assert d0.destroy(s) == 1
    assert d0.list(0)[0] == 0
    with pytest.raises(HostCrashed):
        d0.list()
    with pytest.raises(HostCrashed):
        host.tmem_list()


def test_dying_domain_ops_enodev():
    host, (_d0, d1) = make("4.12", guests=1)
    d1.new_pool()
    host.domains[d1.domid].dying = True
    assert d1.new_pool() == -19


def test_hypervisor_errors_become_exceptions_on_the_transport():
    host = EmulatedHost(64, dom0_memory_mb=16)
    t = Tmem(EmulatedHypervisor(host, 0), version="4.12")
    with pytest.raises(TmemNoPoolError):
        t.put_page(3, 1, 0, page(1))


# --- state ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["4.5", "4.12"])
def test_state_round_trip(version):
    host, (d0, d1) = make(version, guests=1, tmem_compress=True)
    if version == "4.12":
        d0.auth(0, U)
        d0.auth(d1.domid, U)
    pp = d1.new_pool(PRIV_PERS)
    pe = d1.new_pool(PRIV_EPH)
    s0 = d0.new_pool(SHARED_EPH, U)
    s1 = d1.new_pool(SHARED_EPH, U)
    for i in range(20):
        d1.put(pp, (i % 3, 1, 2), i, page(i) if i % 2 else text_page(i))
        d1.put(pe, 4, i, page(i))
        d0.put(s0, 5, i, text_page(i))
    d1.get(s1, 5, 3)
    d0.ctl("FREEZE", d1.domid)
    before = host.tmem_list(long=True)
    state = pickle.loads(pickle.dumps(host.to_state()))
    again = EmulatedHost.from_state(state)
    assert again.tmem_list(long=True) == before
    e1, e0 = Guest(again, d1.domid), Guest(again, 0)
    assert e1.get(pp, (1, 1, 2), 7) == (1, page(7))
    assert e1.get(pp, (0, 1, 2), 6) == (1, text_page(6))
    assert e1.get(pe, 4, 19) == (1, page(19))
    assert e0.get(s0, 5, 0) == (1, text_page(0))
    assert e1.put(pp, 9, 0, page(1)) == -1000  # still frozen
    assert e0.ctl("THAW", d1.domid) == 0
    assert e1.put(pp, 9, 0, page(1)) == 1
    assert again.domain_info(d1.domid) == host.domain_info(d1.domid) | {
        "tmem_pages": host.domain_info(d1.domid)["tmem_pages"] + 1,
        "tot_pages": host.domain_info(d1.domid)["tot_pages"] + 1}
    assert again.create_domain("next", 16) == host.create_domain("next", 16)


def _before_metadata(state: dict, fmt: int) -> dict:
    """``state``, of a host whose tmem never gave a page back (its free list empty, `Fm` =
    `Fc`), as the releases before tmem's metadata took pages wrote it for the same calls
    (``git show 8f207e1:xentmem/emulator/_state.py``): no metadata fields, nothing of dedup,
    the global `cbytes` of compressed data, whose pages (and no others) tmem took, from Xen's
    heap, and a domain charged a page for each persistent page, compressed or not. Format 1
    (8f207e1) also kept lz4 blocks, and a page that lz4 fits in Xen's sub-page allocator
    (LZO does not) compressed; format 2 (20f2f67) kept LZO's."""
    old = pickle.loads(pickle.dumps(state))
    old["format"] = fmt
    del old["config"]["tmem_dedup"], old["config"]["tmem_tze"]
    t = old["tmem"]
    assert t["free_list"] == 0 and t["Fm"] == t["raw_pages"]
    for name in ("meta_used", "Sc", "Sm", "Gd", "Zt", "Gz"):
        del t[name]
    pages = t.pop("meta_pages")  # the pages tmem holds that the old release did not take
    clients = {c["domid"]: c for c in t["clients"]}
    domains = {d["domid"]: d for d in old["domains"]}
    for c in t["clients"]:
        del c["meta_used"]
        domains[c["domid"]]["tmem_pages"] -= c["meta_pages"]
        pages += c.pop("meta_pages")
    cbytes = 0
    for p in t["pools"]:
        owner = clients[p["owner"]]
        for n, (oid, index, data, csize, last) in enumerate(p["pages"]):
            if fmt == 1 and (csize or owner["compress"]):
                block = lz4.block.compress(decompress_page(data) if csize else data,
                                           store_size=False)
                if not csize and len(block) < 4096 - 32:  # no frame, and no `cn`
                    owner.update(cp=owner["cp"] + 1, cn=owner["cn"] - 1)
                    t["raw_pages"] -= 1
                    t["Fm"] -= 1
                    domains[p["owner"]]["tmem_pages"] -= p["persistent"]
                    pages += 1
                elif not csize:
                    continue
                p["pages"][n] = (oid, index, block, len(block), last)
                owner["cb"] += len(block) - csize
                csize = len(block)
            cbytes += csize
            domains[p["owner"]]["tmem_pages"] += p["persistent"] and csize > 0
    t["cbytes"] = cbytes
    old["heap_free"] += pages - -(-cbytes // PAGE_SIZE)
    return old


def _charged(host: EmulatedHost) -> None:
    """Each sub-page pool holds exactly its pools' blocks, in the fewest pages."""
    tm = host.tmem
    pools = {id(p): p for c in tm.clients.values() for p in c.pools if p is not None}
    for holder in (tm, *tm.clients.values()):
        mine = [p for p in pools.values() if (p.client if p.persistent else tm) is holder]
        assert holder.meta_used == sum(map(tm.meta_bytes, mine))
        assert holder.meta_pages == -(-holder.meta_used // REGION)


@pytest.mark.parametrize("fmt", [1, 2])
def test_a_state_from_before_metadata_pages_loads_as_if_this_model_had_stored_its_pages(fmt):
    """A state of the releases before LZO (format 1) and before metadata pages (format 2)
    loads as the host these calls build now, state for state: pages recompressed (one that
    LZO cannot fit stored raw), each sub-page pool's blocks and pages charged, its domain's
    for a persistent pool. The same flushes then give the same host again, down to an
    empty tmem."""
    host, (d0, d1, d2) = make("4.5", guests=2, tmem_compress=True)
    pp = d1.new_pool(PRIV_PERS)
    pe = d1.new_pool(PRIV_EPH)
    raw = d2.new_pool(PRIV_PERS)
    d0.ctl("SET_COMPRESS", d2.domid, arg1=0)  # its pages take frames
    lzo_too_long = page(9)[:3900] + bytes(196)  # lz4: 3937 bytes, LZO1X-1: 4077
    for i in range(400):  # LZO needs 44-53 bytes a page here, lz4 fewer
        d1.put(pp, 1 + i % 3, i * 37, text_page(i) if i % 5 else page(i))
        d1.put(pe, 2, i, text_page(i + 1000))
        d2.put(raw, 4, i * 70, page(i + 2000))
    assert d1.put(pp, 9, 0, lzo_too_long) == 1 and d1.put(pe, 9, 0, lzo_too_long) == 1
    want = host.to_state()
    old = _before_metadata(want, fmt)
    kept = pickle.dumps(old)

    again = EmulatedHost.from_state(old)
    assert pickle.dumps(old) == kept  # the caller's state is left as it was
    assert again.to_state() == want
    _charged(again)
    # main at e5148d6 wrote this very shape as format 2
    assert EmulatedHost.from_state({**want, "format": 2}).to_state() == want
    for h in (host, again):
        g1, g2 = Guest(h, d1.domid), Guest(h, d2.domid)
        assert g1.get(pp, 9, 0) == (1, lzo_too_long)
        assert g1.flush_object(pp, 2) == 1 and g1.flush(pe, 2, 7) == 1
        assert g2.flush_object(raw, 4) == 1
        assert g1.destroy(pe) == 1
    assert again.to_state() == host.to_state()
    assert again.tmem.meta_used == again.tmem.client(d2.domid).meta_used == 0
    assert again.domain_info(d2.domid)["tmem_pages"] == 0


def test_an_old_state_with_no_room_for_metadata_evicts_ephemeral_pages_keeps_persistent():
    """A format 1 host with no page left: its ephemeral pages are evicted, oldest first,
    till the metadata fits; every persistent page stays. With no ephemeral page to evict
    the load fails and says why, changing nothing."""
    host, (_d0, d1) = make("4.12", guests=1)
    pp = d1.new_pool(PRIV_PERS)
    pe = d1.new_pool(PRIV_EPH)
    for i in range(300):
        d1.put(pp, 1, i, page(i))
        d1.put(pe, 2, i, page(i + 1000))
    old = _before_metadata(host.to_state(), 1)
    old["heap_free"] = 0
    again = EmulatedHost.from_state(old)
    tm = again.tmem
    evicted = tm.Et
    assert 0 < evicted < 300 and tm.Ea == evicted and tm.free_list + again.heap_free < 10
    assert tm.eph_count == 300 - evicted
    g = Guest(again, d1.domid)
    assert g.get(pe, 2, evicted - 1)[0] == 0 and g.get(pe, 2, evicted) == (1, page(evicted + 1000))
    assert all(g.get(pp, 1, i) == (1, page(i)) for i in range(300))
    _charged(again)

    host, (_d0, d1) = make("4.12", guests=1)
    pp = d1.new_pool(PRIV_PERS)
    for i in range(300):
        d1.put(pp, 1, i, page(i))
    bare = _before_metadata(host.to_state(), 1)
    bare["heap_free"] = 0
    kept = pickle.dumps(bare)
    with pytest.raises(ValueError, match=r"needs \d+ pages .* has 0: load it with the release"):
        EmulatedHost.from_state(bare)
    assert pickle.dumps(bare) == kept
