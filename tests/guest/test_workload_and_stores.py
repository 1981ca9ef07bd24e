"""Workload generators and swap slot stores."""

from __future__ import annotations

import pytest

from xentmem.errors import GuestError
from xentmem.guest import FileSlotStore, Guest, MemorySlotStore, Zcache
from xentmem.guest.selfballoon import MB
from xentmem.guest.swap import ZERO_PAGE
from xentmem.guest.workload import Workload, WorkloadSpec


def test_anon_grows_holds_and_shrinks_on_schedule():
    g = Guest("w", memory_mb=64)
    g.swapon(64 * MB)
    w = Workload(WorkloadSpec("anon", start=1, duration=8, mb=8, grow=2, shrink=2, rate=100), g)
    sizes = []
    for t in range(0, 11):
        w.step(float(t), 1.0)
        sizes.append(len(w.pids))
    # t=1 starts at 0, t=2 half, t=3..6 full, shrinking over t=7..9, gone at the end
    assert sizes == [0, 0, 4 * MB, 8 * MB, 8 * MB, 8 * MB, 8 * MB, 8 * MB, 4 * MB, 0, 0]
    assert w.finished and g.anon_pages == 0


def test_burst_allocates_at_start_and_frees_after_duration():
    g = Guest("b", memory_mb=64)
    w = Workload(WorkloadSpec("burst", start=2, duration=3, mb=4, rate=50), g)
    counts = []
    for t in range(0, 7):
        w.step(float(t), 1.0)
        counts.append(g.anon_pages)
    assert counts == [0, 0, 4 * MB, 4 * MB, 4 * MB, 0, 0]


def test_file_reads_prefer_the_working_set():
    g = Guest("f", memory_mb=256)
    g.mount("root", "ext4")
    w = Workload(WorkloadSpec("file", fs="root", files=2, file_mb=4, working_set=0.1,
                              hot_share=1.0, write_fraction=0.0, rate=5000), g)
    w.step(0.0, 1.0)
    hot = int(2 * 4 * MB * 0.1)
    assert g.pagecache_pages <= hot and g.stats.file_reads == g.pagecache_pages


def test_anon_pressure_swaps_through_frontswap_and_reads_back_clean():
    g = Guest("p", memory_mb=32)
    g.swapon(32 * MB)
    g.load_backend(Zcache())
    w = Workload(WorkloadSpec("anon", mb=30, grow=1, rate=4000, write_fraction=0.5), g)
    for t in range(4):
        w.step(float(t), 1.0)
    assert g.frontswap.succ_stores > 0 and g.stats.swapins_frontswap > 0
    assert g.verify_anon() == 30 * MB and g.stats.lost == g.stats.stale == 0


@pytest.mark.parametrize("bad", [{"kind": "disk"}, {"kind": "anon", "rate": -1},
                                 {"kind": "file", "working_set": 2.0},
                                 {"kind": "anon", "duration": 0}])
def test_bad_workload_specs_are_refused(bad):
    with pytest.raises(GuestError):
        WorkloadSpec(**bad)


def test_file_slot_store_survives_drain_and_reads_back(tmp_path):
    g = Guest("file", memory_mb=64)
    store = FileSlotStore(tmp_path / "swapfile", 512)
    g.swapon(store)
    g.load_backend(Zcache(exclusive_gets=False))
    pids = g.alloc_anon(200)
    for pid in pids:
        g.swap_out(pid)
    assert g.unload_backend().drained == 200
    assert (tmp_path / "swapfile").stat().st_size == 512 * 4096
    assert [g.read_anon(p) for p in pids] == ["swap"] * 200
    assert g.stats.lost == g.stats.stale == 0
    store.close()


def test_memory_slot_store_reads_zeros_until_written():
    store = MemorySlotStore(4)
    assert store.read(2) == ZERO_PAGE
    with pytest.raises(GuestError):
        MemorySlotStore(1)
