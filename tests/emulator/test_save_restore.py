"""Save / restore / live migration (ref §3.10, §9.1): a guest's persistent pool moves between
two emulated hosts with the typed client's libxc-style sequences; the real 4.12.4 and 4.5.5
defects are reproduced by default."""

from __future__ import annotations

import pytest

from xentmem.abi import TMEM_HANDLE, TmemcSubop
from xentmem.emulator import EmulatedHost
from xentmem.emulator.transport import EmulatedHypervisor
from xentmem.errors import HostCrashed, TmemError
from xentmem.hypercalls.tmem import Tmem

from .driver import ALL, PRIV_EPH, PRIV_PERS, Guest, page, text_page


def _host_with_guest(version: str, *, designed: bool, compress: bool = False):
    host = EmulatedHost(512, xen_version=version, designed=designed, tmem_compress=compress)
    domid = host.create_domain("vm", 64, 128)
    guest = Tmem(EmulatedHypervisor(host, domid), version=version)
    return host, domid, guest


def _fill(guest: Tmem, pages) -> int:
    p = guest.new_pool(persistent=True)
    guest.new_pool(persistent=False)  # ephemeral pools are not saved
    for oid, index, data in pages:
        guest.put_page(p, oid, index, data)
    return p


PAGES = [(7, i, page(i)) for i in range(5)] + [((1, 2, 3), 9, text_page(9))]


@pytest.mark.parametrize("version", ["4.5", "4.12"])
def test_designed_migration_moves_every_persistent_page(version):
    src, domid, guest = _host_with_guest(version, designed=True)
    pool = _fill(guest, PAGES)
    guest.flush_page(pool, 7, 4)
    image = Tmem(EmulatedHypervisor(src, 0), version=version).save(domid)
    assert image is not None
    assert [(oid, i) for oid, i, _ in image.pools[0].pages] == \
        [((7, 0, 0), 0), ((7, 0, 0), 1), ((7, 0, 0), 2), ((7, 0, 0), 3), ((1, 2, 3), 9)]
    assert "fr:0" in src.tmem_list(domid)  # SAVE_END restored the pre-save state

    dst = EmulatedHost(512, xen_version=version, designed=True)
    new = dst.create_domain("vm", 64, 128)
    Tmem(EmulatedHypervisor(dst, 0), version=version).restore(new, image)
    moved = Tmem(EmulatedHypervisor(dst, new), version=version)
    for oid, index, data in PAGES[:4] + PAGES[5:]:
        assert moved.get_page(pool, oid, index) == data
    assert moved.get_page(pool, 7, 4) is None


def test_real_4_12_refuses_uncompressed_pages():
    src, domid, guest = _host_with_guest("4.12", designed=False)
    _fill(guest, PAGES)
    with pytest.raises(TmemError) as exc:
        Tmem(EmulatedHypervisor(src, 0), version="4.12").save(domid)
    assert exc.value.errno == 22
    assert "fr:0" in src.tmem_list(domid)  # the client is thawed again by SAVE_END


def test_real_4_12_compressed_save_skips_first_page_and_restore_puts():
    """§9.1, §9.4: the save skips the first page; RESTORE_PUT_PAGE is an ordinary PUT, so the
    restored client (compression on, from the image) stores the compressible pages."""
    src, domid, guest = _host_with_guest("4.12", designed=False, compress=True)
    _fill(guest, [(7, i, text_page(i)) for i in range(4)])
    image = Tmem(EmulatedHypervisor(src, 0), version="4.12").save(domid)
    assert [i for _, i, _ in image.pools[0].pages] == [1, 2, 3]  # page 0 skipped
    assert all(data == text_page(i) for _, i, data in image.pools[0].pages)
    dst = EmulatedHost(512, xen_version="4.12")
    new = dst.create_domain("vm", 64, 128)
    Tmem(EmulatedHypervisor(dst, 0), version="4.12").restore(new, image)
    moved = Tmem(EmulatedHypervisor(dst, new), version="4.12")
    assert [moved.get_page(0, 7, i) for i in range(4)] == [None] + [text_page(i)
                                                                   for i in range(1, 4)]


def test_real_4_12_restore_of_an_uncompressed_page_fails():
    src, domid, guest = _host_with_guest("4.12", designed=False, compress=True)
    _fill(guest, [(7, i, text_page(i)) for i in range(3)])
    image = Tmem(EmulatedHypervisor(src, 0), version="4.12").save(domid)
    image.compress = False
    dst = EmulatedHost(512, xen_version="4.12")
    new = dst.create_domain("vm", 64, 128)
    with pytest.raises(TmemError) as exc:
        Tmem(EmulatedHypervisor(dst, 0), version="4.12").restore(new, image)
    assert exc.value.errno == 22


def _save_ops(host: EmulatedHost, version: str):
    dom0 = Guest(host, 0)
    guest = Guest(host, host.create_domain("vm", 64, 128))
    return dom0, guest


def test_one_page_pool_first_next_page_returns_garbage_handle():
    host = EmulatedHost(256, xen_version="4.12", tmem_compress=True)
    dom0, g = _save_ops(host, "4.12")
    p = g.new_pool(PRIV_PERS)
    g.put(p, 3, 0, text_page(0))
    assert dom0.ctl("SAVE_BEGIN", g.domid) == 0
    rc = dom0.ctl("SAVE_GET_NEXT_PAGE", g.domid, pool_id=p, arg1=4096 + 32)
    _, index, o0, o1, o2 = TMEM_HANDLE.unpack(dom0.out.read(32))
    assert (rc, index, o0, o1) == (0, 1, 0, 0)
    assert o2 >= 0xFFFF800000000000  # a hypervisor pointer leaked into the handle
    assert dom0.ctl("SAVE_END", g.domid) == 0


def test_save_begin_end_without_client_or_pool():
    host = EmulatedHost(256, xen_version="4.12")
    dom0, g = _save_ops(host, "4.12")
    assert dom0.ctl("SAVE_BEGIN", g.domid) == -2
    assert dom0.ctl("SAVE_END", g.domid) == -2
    assert dom0.ctl("SAVE_GET_NEXT_PAGE", g.domid, arg1=4096 + 32) == -1
    g.new_pool(PRIV_EPH)
    assert dom0.ctl("SAVE_BEGIN", g.domid) == 0
    assert dom0.ctl("SAVE_GET_NEXT_PAGE", g.domid, pool_id=0, arg1=4096 + 32) == -1
    assert dom0.ctl("SAVE_GET_NEXT_PAGE", g.domid, pool_id=0, arg1=100) == -1
    assert dom0.ctl("SAVE_END", g.domid) == 0


def test_live_save_duplicate_put_enospc_and_stale_invalidations_crash():
    """§9.1: live save makes duplicate PUTs fail (-28, old page gone); an invalidation during
    a live save leaves a stale list that the next save cycle's SAVE_END dereferences."""
    host = EmulatedHost(256, xen_version="4.12")
    dom0, g = _save_ops(host, "4.12")
    p = g.new_pool(PRIV_PERS)
    for i in range(3):
        g.put(p, 1, i, page(i))
    assert dom0.ctl("SAVE_BEGIN", g.domid, arg=1) == 0
    assert g.put(p, 1, 0, page(9)) == -28
    assert g.get(p, 1, 0)[0] == 0
    assert g.flush(p, 1, 1) == -1000  # frozen by SAVE_BEGIN; the flush happened
    assert dom0.ctl("SAVE_GET_NEXT_INV", g.domid, arg1=32) == 1
    assert dom0.ctl("SAVE_END", g.domid) == 0
    assert dom0.ctl("SAVE_BEGIN", g.domid, arg=0) == 0
    with pytest.raises(HostCrashed, match="SAVE_END"):
        dom0.ctl("SAVE_END", g.domid)
    assert host.domains == {}
    with pytest.raises(HostCrashed):
        host.create_domain("again", 16)


def test_live_save_designed_logs_invalidations_without_crash():
    host = EmulatedHost(256, xen_version="4.12", designed=True)
    dom0, g = _save_ops(host, "4.12")
    p = g.new_pool(PRIV_PERS)
    g.put(p, (5, 6, 7), 3, page(1))
    assert dom0.ctl("SAVE_BEGIN", g.domid, arg=1) == 0
    g.flush(p, (5, 6, 7), 3)
    assert dom0.ctl("SAVE_GET_NEXT_INV", g.domid, arg1=32) == 1
    assert TMEM_HANDLE.unpack(dom0.out.read(32)) == (p, 3, 5, 6, 7)
    assert dom0.ctl("SAVE_GET_NEXT_INV", g.domid, arg1=32) == 0
    for _ in range(2):
        assert dom0.ctl("SAVE_END", g.domid) == 0
        assert dom0.ctl("SAVE_BEGIN", g.domid, arg=1) == 0


def test_live_save_destroy_pool_leaks_counters_on_4_12():
    host = EmulatedHost(256, xen_version="4.12")
    dom0, g = _save_ops(host, "4.12")
    p = g.new_pool(PRIV_PERS)
    for i in range(4):
        g.put(p, 1, i, page(i))
    dom0.ctl("SAVE_BEGIN", g.domid, arg=1)
    assert g.destroy(p) == 1
    assert g.get(p, 1, 0)[0] == -19
    assert ",Pc:4," in host.tmem_list(long=True).splitlines()[0]


def test_4_5_save_values_and_restore_begin():
    host = EmulatedHost(256, xen_version="4.5")
    dom0, g = _save_ops(host, "4.5")
    assert dom0.ctl("SAVE_BEGIN", g.domid) == 0
    p = g.new_pool(PRIV_PERS)
    g.put(p, 1, 0, page(0))
    dom0.ctl("FREEZE", g.domid)
    assert dom0.ctl("SAVE_GET_CLIENT_FLAGS", g.domid) == 0  # a plain FREEZE reads 0
    assert dom0.ctl("SAVE_BEGIN", g.domid) == 1
    assert dom0.ctl("SAVE_GET_CLIENT_FLAGS", g.domid) == 2  # frozen before SAVE_BEGIN
    assert dom0.ctl("SAVE_GET_POOL_NPAGES", g.domid, pool_id=p) == 1
    assert dom0.ctl("SAVE_END", g.domid) == 0
    assert ",fr:1," in host.tmem_list(g.domid)
    assert dom0.ctl("RESTORE_BEGIN", g.domid) == -1
    other = host.create_domain("fresh", 16)
    assert dom0.ctl("RESTORE_BEGIN", other) == 1
    assert dom0.ctl("SAVE_END", 0xBEEF) == -1
    assert int(TmemcSubop.TMEMC_SAVE_GET_VERSION) == 11


def test_restore_put_page_designed_and_length_check():
    host = EmulatedHost(256, xen_version="4.12", designed=True)
    dom0, g = _save_ops(host, "4.12")
    assert dom0.ctl("RESTORE_BEGIN", g.domid) == 0
    assert dom0.ctl("RESTORE_BEGIN", g.domid) == -17
    import xentmem.abi as abi

    dom0.out.write(abi.XEN_TMEM_POOL_INFO.pack(1 | 1 << 24, 3, 0, 0, 0))
    assert dom0.ctl("SET_POOLS", g.domid, arg1=32) == 3
    dom0.out.write(page(5))
    assert dom0.ctl("RESTORE_PUT_PAGE", g.domid, pool_id=3, oid=(1, 0, 0), arg1=4095,
                    arg2=2) == -22
    assert dom0.ctl("RESTORE_PUT_PAGE", g.domid, pool_id=3, oid=(1, 0, 0), arg1=4096,
                    arg2=2) == 1
    assert g.get(3, 1, 2) == (1, page(5))
    assert dom0.ctl("RESTORE_FLUSH_PAGE", g.domid, pool_id=3, oid=(1, 0, 0), arg2=2) == 1
    assert g.get(3, 1, 2)[0] == -1001
    assert dom0.ctl("FREEZE", ALL) == 0
