"""frontswap contracts of ref §1 (Linux 3.10-3.12), one test per rule, named after it.

Most tests drive the frontend directly with the recording fake backend (see ``_fakes``) so the
exact backend calls can be asserted; the end-to-end ones go through the guest's swap paths.
"""

from __future__ import annotations

import pytest

from xentmem.abi import PAGE_SIZE
from xentmem.errors import GuestError
from xentmem.guest import Guest, Zcache
from xentmem.guest.swap import MAX_SWAPFILES

from ._fakes import RecordingFrontswap, page


def _stored(guest: Guest, ops: RecordingFrontswap, type: int, offset: int, fill: int) -> int:
    return guest.frontswap.store(type, offset, page(fill))


def test_register_ops_returns_previous_backend(guest: Guest):
    first, second = RecordingFrontswap(), RecordingFrontswap()
    assert guest.frontswap.register_ops(first) is None
    assert guest.frontswap.register_ops(second) is first
    assert guest.frontswap.ops is second


def test_swapon_before_backend_queues_type_in_need_init(guest: Guest):
    sis = guest.swapon(64)
    assert guest.frontswap.need_init[sis.type] is True
    assert sis.frontswap_map is not None  # map installed even with no backend


def test_register_runs_init_for_queued_types_in_increasing_order(guest: Guest):
    devs = [guest.swapon(32) for _ in range(3)]
    ops = RecordingFrontswap()
    guest.frontswap.register_ops(ops)
    assert ops.calls == [("init", d.type) for d in devs]
    assert not any(guest.frontswap.need_init)


def test_swapon_with_backend_calls_init_immediately(guest: Guest):
    ops = RecordingFrontswap()
    guest.frontswap.register_ops(ops)
    sis = guest.swapon(32)
    assert ops.calls == [("init", sis.type)]
    assert guest.frontswap.need_init[sis.type] is False


def test_register_with_queued_type_without_map_fails_einval(guest: Guest):
    a, b, c = (guest.swapon(32) for _ in range(3))
    b.frontswap_map = None  # only reachable through the 3.10 swapoff ordering
    ops = RecordingFrontswap()
    with pytest.raises(GuestError, match="EINVAL"):
        guest.frontswap.register_ops(ops)
    assert guest.frontswap.ops is None  # not published
    assert ops.calls == [("init", a.type)]
    assert guest.frontswap.need_init[a.type] is False  # processed bits stay cleared
    assert guest.frontswap.need_init[b.type] is False
    assert guest.frontswap.need_init[c.type] is True  # higher bits stay set


def test_store_without_backend_returns_minus_one_and_counts_nothing(guest: Guest):
    sis = guest.swapon(32)
    assert guest.frontswap.store(sis.type, 1, page(1)) == -1
    assert guest.frontswap.debugfs() == {"succ_stores": 0, "failed_stores": 0, "loads": 0,
                                         "invalidates": 0}
    assert sis.frontswap_pages == 0


def test_successful_store_sets_bit_and_counts(guest: Guest):
    sis = guest.swapon(32)
    ops = RecordingFrontswap()
    guest.frontswap.register_ops(ops)
    assert guest.frontswap.store(sis.type, 5, page(1)) == 0
    assert sis.fs_test(5) and sis.frontswap_pages == 1
    assert guest.frontswap.succ_stores == 1


def test_duplicate_store_success_overwrites_without_recounting(guest: Guest):
    sis = guest.swapon(32)
    ops = RecordingFrontswap()
    guest.frontswap.register_ops(ops)
    guest.frontswap.store(sis.type, 5, page(1))
    assert guest.frontswap.store(sis.type, 5, page(2)) == 0
    assert sis.frontswap_pages == 1 and guest.frontswap.succ_stores == 2
    buf = bytearray(PAGE_SIZE)
    assert guest.frontswap.load(sis.type, 5, buf) == 0 and bytes(buf) == page(2)


def test_failed_duplicate_store_clears_bit_and_does_not_call_invalidate(guest: Guest):
    sis = guest.swapon(32)
    ops = RecordingFrontswap()
    guest.frontswap.register_ops(ops)
    guest.frontswap.store(sis.type, 5, page(1))
    ops.reject.add((sis.type, 5))
    ops.calls.clear()
    assert guest.frontswap.store(sis.type, 5, page(2)) == -1
    assert not sis.fs_test(5) and sis.frontswap_pages == 0
    assert guest.frontswap.failed_stores == 1
    assert "invalidate_page" not in ops.names()  # 3.10-3.12: the backend drops it itself
    assert guest.frontswap.load(sis.type, 5, bytearray(PAGE_SIZE)) == -1  # never stale


def test_writethrough_returns_minus_one_after_store_and_bit_stays(guest: Guest):
    sis = guest.swapon(32)
    ops = RecordingFrontswap()
    guest.frontswap.register_ops(ops)
    guest.frontswap.writethrough(True)
    assert guest.frontswap.store(sis.type, 3, page(7)) == -1
    assert sis.fs_test(3) and guest.frontswap.succ_stores == 1
    buf = bytearray(PAGE_SIZE)
    assert guest.frontswap.load(sis.type, 3, buf) == 0 and bytes(buf) == page(7)


def test_load_only_asks_backend_when_bit_set_and_counts_successes(guest: Guest):
    sis = guest.swapon(32)
    ops = RecordingFrontswap()
    guest.frontswap.register_ops(ops)
    assert guest.frontswap.load(sis.type, 4, bytearray(PAGE_SIZE)) == -1
    assert "load" not in ops.names() and guest.frontswap.loads == 0
    guest.frontswap.store(sis.type, 4, page(4))
    assert guest.frontswap.load(sis.type, 4, bytearray(PAGE_SIZE)) == 0
    assert guest.frontswap.loads == 1 and sis.fs_test(4)  # non-exclusive: still held


def test_failed_load_after_store_is_not_counted_and_falls_back_to_disk(guest: Guest):
    """Checklist 1: a set bit does not guarantee the backend has the page."""
    sis = guest.swapon(32)
    ops = RecordingFrontswap()
    guest.frontswap.register_ops(ops)
    guest.frontswap.store(sis.type, 4, page(4))
    ops.pages.clear()  # e.g. zswap wrote it back
    assert guest.frontswap.load(sis.type, 4, bytearray(PAGE_SIZE)) != 0
    assert guest.frontswap.loads == 0


def test_exclusive_gets_clear_bit_and_decrement_count(guest: Guest):
    sis = guest.swapon(32)
    ops = RecordingFrontswap()
    ops.exclusive = True
    guest.frontswap.register_ops(ops)
    guest.frontswap.tmem_exclusive_gets(True)
    guest.frontswap.store(sis.type, 9, page(9))
    assert guest.frontswap.load(sis.type, 9, bytearray(PAGE_SIZE)) == 0
    assert not sis.fs_test(9) and sis.frontswap_pages == 0


def test_exclusive_get_page_is_dirty_and_rewritten_on_next_swapout(guest: Guest):
    guest.swapon(256)
    guest.load_backend(Zcache())  # zcache turns exclusive gets on
    (pid,) = guest.alloc_anon(1)
    guest.swap_out(pid)
    assert guest.read_anon(pid) == "frontswap"
    before = guest.frontswap.succ_stores
    guest.swap_out(pid)  # dirty: must be stored again, not dropped
    assert guest.frontswap.succ_stores == before + 1
    assert guest.read_anon(pid) == "frontswap" and guest.stats.lost == guest.stats.stale == 0


def test_invalidate_page_calls_backend_only_when_bit_set(guest: Guest):
    sis = guest.swapon(32)
    ops = RecordingFrontswap()
    guest.frontswap.register_ops(ops)
    guest.frontswap.invalidate_page(sis.type, 2)
    assert "invalidate_page" not in ops.names() and guest.frontswap.invalidates == 0
    guest.frontswap.store(sis.type, 2, page(2))
    guest.frontswap.invalidate_page(sis.type, 2)
    assert ops.calls[-1] == ("invalidate_page", sis.type, 2)
    assert guest.frontswap.invalidates == 1 and sis.frontswap_pages == 0
    assert guest.frontswap.load(sis.type, 2, bytearray(PAGE_SIZE)) == -1


def test_invalidate_area_resets_map_and_count(guest: Guest):
    sis = guest.swapon(32)
    ops = RecordingFrontswap()
    guest.frontswap.register_ops(ops)
    for off in (1, 2, 3):
        guest.frontswap.store(sis.type, off, page(off))
    guest.frontswap.invalidate_area(sis.type)
    assert ops.calls[-1] == ("invalidate_area", sis.type)
    assert sis.frontswap_pages == 0 and not any(sis.frontswap_map)


def test_test_reads_clear_without_backend(guest: Guest):
    sis = guest.swapon(32)
    sis.frontswap_map[1] = 1
    assert guest.frontswap.test(sis, 1) is False


def test_swapoff_quirk_3_10_never_calls_backend_invalidate_area(guest: Guest):
    sis = guest.swapon(32)
    ops = RecordingFrontswap()
    guest.frontswap.register_ops(ops)
    guest.swapoff(sis.type)
    assert "invalidate_area" not in ops.names()
    assert guest.swap_info[sis.type] is None


def test_swapoff_3_13_calls_backend_invalidate_area():
    guest = Guest("g313", memory_mb=64, swapoff_invalidates_area=True)
    sis = guest.swapon(32)
    ops = RecordingFrontswap()
    guest.frontswap.register_ops(ops)
    guest.swapoff(sis.type)
    assert ("invalidate_area", sis.type) in ops.calls


def test_swapoff_before_backend_forgets_queued_type(guest: Guest):
    sis = guest.swapon(32)
    guest.swapoff(sis.type)
    assert guest.frontswap.need_init[sis.type] is False
    ops = RecordingFrontswap()
    guest.frontswap.register_ops(ops)
    assert ops.calls == []


def test_second_registration_does_not_reinit_active_types(guest: Guest):
    guest.swapon(32)
    first, second = RecordingFrontswap(), RecordingFrontswap()
    guest.frontswap.register_ops(first)
    assert guest.frontswap.register_ops(second) is first
    assert second.calls == []


def test_pages_swapped_while_queued_stay_on_disk_after_registration(guest: Guest):
    """The seed: after a late registration "some pages still go to disk" and come back from it."""
    guest.swapon(256)
    early = guest.alloc_anon(20)
    for pid in early:
        guest.swap_out(pid)
    guest.load_backend(Zcache())
    late = guest.alloc_anon(20)
    for pid in late:
        guest.swap_out(pid)
    assert [guest.read_anon(p) for p in early] == ["swap"] * 20
    assert [guest.read_anon(p) for p in late] == ["frontswap"] * 20
    assert guest.stats.lost == guest.stats.stale == 0


def test_curr_pages_sums_active_devices(guest: Guest):
    a, b = guest.swapon(32), guest.swapon(32)
    guest.frontswap.register_ops(RecordingFrontswap())
    for off in (1, 2):
        guest.frontswap.store(a.type, off, page(1))
    guest.frontswap.store(b.type, 1, page(1))
    assert guest.frontswap.curr_pages() == 3


def test_shrink_unuses_part_of_one_device_only(guest: Guest):
    guest.swapon(256, priority=10)
    guest.swapon(256, priority=5)
    guest.load_backend(Zcache(exclusive_gets=False))
    pids = guest.alloc_anon(300)
    for pid in pids:
        guest.swap_out(pid)
    hi, lo = guest.active_swap_devices()
    assert hi.frontswap_pages == 255 and lo.frontswap_pages == 45
    assert guest.frontswap.shrink(290) == 10  # want 10 < 255: 10 pages of the first device
    assert hi.frontswap_pages == 245 and lo.frontswap_pages == 45
    # want 290 >= 245: the whole first device, and nothing of the second in this call
    assert guest.frontswap.shrink(0) == 245
    assert hi.frontswap_pages == 0 and lo.frontswap_pages == 45
    assert guest.verify_anon() == 300 and guest.stats.lost == guest.stats.stale == 0


def test_shrink_skips_devices_failing_the_vm_commit_check(guest: Guest, monkeypatch):
    guest.swapon(64)
    guest.load_backend(Zcache())
    for pid in guest.alloc_anon(10):
        guest.swap_out(pid)
    monkeypatch.setattr(guest, "vm_enough_memory", lambda pages: False)
    assert guest.frontswap.shrink(0) == 0
    assert guest.frontswap.curr_pages() == 10


def test_max_swapfiles_is_29(guest: Guest):
    assert MAX_SWAPFILES == 29
    for _ in range(29):
        guest.swapon(2)
    with pytest.raises(GuestError):
        guest.swapon(2)
