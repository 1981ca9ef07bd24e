"""The Xen tmem shim (ref §3) on the emulated hypervisor: pools, handles, parameters, unload."""

from __future__ import annotations

import re

import pytest

from xentmem.abi import PAGE_SIZE
from xentmem.emulator import EmulatedHost
from xentmem.emulator.transport import EmulatedHypervisor
from xentmem.errors import GuestError
from xentmem.guest import Guest, XenTmem, Zcache
from xentmem.guest.backends.tmem import swap_oid_index
from xentmem.hypercalls import Tmem

from ._fakes import page


def _boot(version: str = "4.12", *names: str):
    host = EmulatedHost(memory_mb=1024, xen_version=version)
    domids = [host.create_domain(n, memory_mb=128, max_memory_mb=256) for n in names or ("g",)]
    return host, domids


def _module(host: EmulatedHost, domid: int, **params) -> XenTmem:
    return XenTmem(Tmem(EmulatedHypervisor(host, domid), version=str(host.version)), **params)


def _pool_types(host: EmulatedHost, domid: int) -> list[str]:
    return re.findall(r"PT:(\w\w)", host.tmem_list(domid))


def test_swap_offset_split_uses_swiz_bits_4():
    assert swap_oid_index(2, 0x1237) == (((2 << 4) | 7, 0, 0), 0x123)
    assert swap_oid_index(0, 15) == ((15, 0, 0), 0)


def test_one_persistent_pool_for_every_swap_type_created_at_first_init():
    host, (domid,) = _boot()
    g = Guest("g", memory_mb=64)
    g.swapon(64)
    g.swapon(64)
    module = _module(host, domid)
    g.load_backend(module)
    assert module.frontswap_ops.pool_id == 0
    assert _pool_types(host, domid) == ["PP"]


def test_cleancache_pool_per_filesystem_is_private_ephemeral():
    host, (domid,) = _boot()
    g = Guest("g", memory_mb=64)
    g.mount("a", "ext4")
    g.mount("b", "btrfs")
    g.load_backend(_module(host, domid, frontswap=False))
    assert _pool_types(host, domid) == ["EP", "EP"]


def test_offsets_beyond_32_bits_are_refused():
    host, (domid,) = _boot()
    module = _module(host, domid)
    module.frontswap_ops.init(0)
    assert module.frontswap_ops.store(0, 1 << 32, page(1)) == -1
    assert module.frontswap_ops.store(0, 5, page(1)) == 0


def test_persistent_load_is_not_exclusive_and_ephemeral_private_get_is():
    host, (domid,) = _boot()
    module = _module(host, domid)
    fs_ops, cc_ops = module.frontswap_ops, module.cleancache_ops
    fs_ops.init(0)
    fs_ops.store(0, 7, page(7))
    buf = bytearray(PAGE_SIZE)
    assert fs_ops.load(0, 7, buf) == 0 and fs_ops.load(0, 7, buf) == 0 and buf == page(7)
    pool = cc_ops.init_fs(PAGE_SIZE)
    cc_ops.put_page(pool, (9, 0, 0), 1, page(9))
    assert cc_ops.get_page(pool, (9, 0, 0), 1, buf) == 0 and buf == page(9)
    assert cc_ops.get_page(pool, (9, 0, 0), 1, buf) == -1


def test_invalidate_area_flushes_the_16_objects_of_a_type():
    host, (domid,) = _boot()
    module = _module(host, domid)
    ops = module.frontswap_ops
    ops.init(1)
    for offset in range(40):
        assert ops.store(1, offset, page(offset)) == 0
        assert ops.store(2, offset, page(offset)) == 0
    ops.invalidate_area(1)
    buf = bytearray(PAGE_SIZE)
    assert all(ops.load(1, o, buf) != 0 for o in range(40))
    assert all(ops.load(2, o, buf) == 0 for o in range(40))


def test_shared_pool_by_uuid_is_shared_between_guests_on_xen_4_4():
    uuid = bytes(range(16))
    host, (d1, d2) = _boot("4.4", "a", "b")
    guests = []
    for domid in (d1, d2):
        g = Guest(f"g{domid}", memory_mb=64)
        fs = g.mount("cluster", "ocfs2", uuid=uuid)
        g.load_backend(_module(host, domid, frontswap=False))
        guests.append((g, fs))
    (ga, fsa), (gb, fsb) = guests
    assert _pool_types(host, d1) == ["ES"]
    ga.cleancache.put_page(fsa, fsa.key(3), 0, page(3))
    buf = bytearray(PAGE_SIZE)
    assert gb.cleancache.get_page(fsb, fsb.key(3), 0, buf) == 0 and buf == page(3)
    assert gb.cleancache.get_page(fsb, fsb.key(3), 0, buf) == 0  # shared: not exclusive


def test_frontswap_parameter_off_forces_selfballooning_and_selfshrinking_off():
    host, (domid,) = _boot()
    g = Guest("g", memory_mb=64)
    g.swapon(64)
    module = _module(host, domid, frontswap=False)
    g.load_backend(module)
    assert g.frontswap.ops is None and g.cleancache.ops is module.cleancache_ops
    assert module.params == {"frontswap": False, "cleancache": True,
                             "selfballooning": False, "selfshrinking": False}
    assert not g.selfballoon.scheduled


def test_defaults_turn_selfballooning_on():
    host, (domid,) = _boot()
    g = Guest("g", memory_mb=64)
    g.load_backend(_module(host, domid))
    assert g.selfballoon.knobs.selfballooning and g.selfballoon.knobs.frontswap_selfshrinking
    assert g.selfballoon.scheduled


def test_second_module_init_logs_override_warning():
    host, (domid,) = _boot()
    g = Guest("g", memory_mb=64)
    g.load_backend(_module(host, domid))
    second = _module(host, domid)
    second.module_init(g)  # what a second insmod does in the kernel
    assert "xen:tmem: frontswap: WARNING: frontswap_ops overridden" in second.log


def test_unload_drains_every_page_to_swap_and_destroys_pools():
    host, (domid,) = _boot()
    g = Guest("g", memory_mb=64)
    g.swapon(1024)
    g.mount("root", "ext4")
    g.load_backend(_module(host, domid))
    pids = g.alloc_anon(500)
    for pid in pids:
        g.swap_out(pid)
    for i in range(20):
        g.read_file("root", 1, i)
    g.drop_caches()
    report = g.unload_backend()
    assert (report.backend, report.drained, report.missing, report.pools_flushed) == \
        ("tmem", 500, 0, 1)
    assert _pool_types(host, domid) == []
    assert [g.read_anon(p) for p in pids] == ["swap"] * 500
    assert g.stats.lost == g.stats.stale == 0


def test_second_backend_loads_after_unload_and_gets_the_devices_initialised():
    host, (domid,) = _boot()
    g = Guest("g", memory_mb=64)
    g.swapon(1024)
    g.load_backend(_module(host, domid))
    g.unload_backend()
    zc = Zcache()
    g.load_backend(zc)
    assert zc.frontswap_ops.types == {0}
    (pid,) = g.alloc_anon(1)
    g.swap_out(pid)
    assert g.read_anon(pid) == "frontswap"


def test_loading_over_a_loaded_backend_is_refused_unless_replace():
    host, (domid,) = _boot()
    g = Guest("g", memory_mb=64)
    g.swapon(256)
    g.load_backend(_module(host, domid))
    for pid in g.alloc_anon(30):
        g.swap_out(pid)
    with pytest.raises(GuestError, match="already loaded"):
        g.load_backend(Zcache())
    report = g.load_backend(Zcache(), replace=True)
    assert report.drained == 30 and g.backend.name == "zcache"
    with pytest.raises(GuestError):
        Guest("x").unload_backend()


def test_pool_creation_failure_sends_every_page_to_disk():
    """tmem disabled in the hypervisor: NEW_POOL fails, init retries at each swapon, every
    store is refused, and the swap device keeps everything."""
    host = EmulatedHost(memory_mb=1024, tmem=False)
    domid = host.create_domain("g", memory_mb=64, max_memory_mb=128)
    g = Guest("g", memory_mb=64)
    g.swapon(256)
    module = _module(host, domid)
    g.load_backend(module)
    assert module.frontswap_ops.pool_id == -1
    pids = g.alloc_anon(50)
    for pid in pids:
        g.swap_out(pid)
    assert g.frontswap.failed_stores == 50 and g.stats.disk_writes == 50
    g.swapon(64)  # init runs again for the new type and retries the pool: still refused
    assert module.frontswap_ops.pool_id == -1
    assert [g.read_anon(p) for p in pids] == ["swap"] * 50
    assert g.unload_backend().drained == 0
