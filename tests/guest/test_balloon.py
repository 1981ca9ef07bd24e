"""The balloon driver (ref §4.1-§4.2) and the self-balloon worker driving it (§4.3-§4.5)."""

from __future__ import annotations

from xentmem.guest import Guest, InMemoryTargetSource, Zcache
from xentmem.guest.balloon import BATCH_PAGES, parse_target_kib
from xentmem.guest.selfballoon import MB, selfballoon_target


def test_init_values_follow_the_driver():
    g = Guest("b", memory_mb=128, max_memory_mb=256)
    s = g.balloon.stats
    assert (s.current_pages, s.target_pages) == (128 * MB, 128 * MB)
    assert (s.schedule_delay, s.max_schedule_delay, s.retry_count, s.max_retry_count) == \
        (1, 32, 1, 0)


def test_lower_target_inflates_balloon_and_shrinks_totalram():
    g = Guest("b", memory_mb=128)
    before = g.totalram_pages
    g.balloon.set_new_target(100 * MB)
    assert g.balloon.stats.current_pages == 100 * MB
    assert g.balloon.stats.balloon_low == 28 * MB
    assert g.totalram_pages == before - 28 * MB


def test_raise_target_deflates_only_what_the_balloon_holds():
    g = Guest("b", memory_mb=128, max_memory_mb=256)
    g.balloon.set_new_target(100 * MB)
    g.balloon.set_new_target(200 * MB)  # credit capped by the pages in the balloon
    assert g.balloon.stats.current_pages == 128 * MB
    assert g.balloon.stats.balloon_low == 0


def test_memory_target_watch_converts_kib_and_ignores_garbage():
    g = Guest("b", memory_mb=128)
    source = InMemoryTargetSource()
    g.attach_target(source)
    source.write(96 * 1024)
    assert g.balloon.stats.target_pages == 96 * MB
    source.write("lots")
    assert g.balloon.stats.target_pages == 96 * MB
    assert parse_target_kib(b"1024\n") == 256
    assert parse_target_kib(None) is None and parse_target_kib("-4") is None


def test_short_allocation_backs_off_exponentially_then_cancels():
    """No swap and pinned anonymous memory: the balloon cannot get pages (EAGAIN)."""
    g = Guest("b", memory_mb=64)
    g.alloc_anon(g.free_pages)  # no free memory and nothing reclaimable
    g.balloon.stats.max_retry_count = 3
    g.balloon.set_new_target(32 * MB)
    assert (g.balloon.stats.schedule_delay, g.balloon.stats.retry_count) == (2, 2)
    g.tick(2)
    assert (g.balloon.stats.schedule_delay, g.balloon.stats.retry_count) == (4, 3)
    g.tick(6)  # retry_count 4 > max 3: reset and give up
    assert (g.balloon.stats.schedule_delay, g.balloon.stats.retry_count) == (1, 1)
    g.tick(100)
    assert g.balloon.stats.current_pages == 64 * MB


def test_balloon_reclaims_by_swapping_when_it_can():
    g = Guest("b", memory_mb=64)
    g.swapon(8192)
    pids = g.alloc_anon(g.free_pages)
    g.balloon.set_new_target(48 * MB)
    assert g.balloon.stats.current_pages == 48 * MB
    assert g.stats.swapouts >= 16 * MB
    assert g.verify_anon() == len(pids) and g.stats.lost == g.stats.stale == 0


def test_batches_are_512_pages():
    assert BATCH_PAGES == 512


def test_selfballoon_worker_runs_every_interval_and_sets_the_law_target():
    g = Guest("b", memory_mb=256)
    assert not g.selfballoon.scheduled  # flags off until the tmem module inits it
    assert g.selfballoon.init(True, True)
    g.tick(4.9)
    assert g.selfballoon.runs == 0
    expected = selfballoon_target(g.selfballoon.knobs, g.memory_snapshot())
    g.tick(5.0)
    assert g.selfballoon.runs == 1 and g.selfballoon.last_target == expected
    assert g.balloon.stats.target_pages == expected
    g.tick(15.0)
    assert g.selfballoon.runs == 3


def test_selfballoon_init_on_dom0_is_refused():
    g = Guest("dom0", memory_mb=256, dom0=True)
    assert g.selfballoon.init(True, True) is False
    assert not g.selfballoon.scheduled


def test_selfshrink_brings_frontswap_pages_back_after_inertia():
    g = Guest("b", memory_mb=64)
    g.swapon(4096)
    g.load_backend(Zcache(exclusive_gets=False))
    for pid in g.alloc_anon(400):
        g.swap_out(pid)
    g.selfballoon.init(False, True)  # self-shrinking only
    held = []
    for t in range(5, 30, 5):
        g.tick(t)
        held.append(g.frontswap.curr_pages())
    # run1 arms (grew from 0), runs 2-3 count down, run 4 shrinks 5%, run 5 again
    assert held == [400, 400, 400, 380, 361]
    assert g.stats.lost == g.stats.stale == 0


def test_hypervisor_reservation_moves_the_emulated_domain_and_host_heap():
    from xentmem.emulator import EmulatedHost
    from xentmem.emulator.transport import EmulatedHypervisor
    from xentmem.guest.balloon import HypervisorReservation

    host = EmulatedHost(memory_mb=1024)
    domid = host.create_domain("g", memory_mb=64, max_memory_mb=128)
    g = Guest("g", memory_mb=64, max_memory_mb=128,
              reservation=HypervisorReservation(EmulatedHypervisor(host, domid)))
    free = host.heap_free
    g.balloon.set_new_target(48 * MB)
    assert host.domain_info(domid)["nr_pages"] == 48 * MB
    assert host.heap_free == free + 16 * MB
    g.balloon.set_new_target(64 * MB)
    assert host.domain_info(domid)["nr_pages"] == 64 * MB
    assert g.balloon.stats.balloon_low == 0 and host.heap_free == free


def test_failed_increase_backs_off():
    class Refusing:
        def decrease(self, pages: int) -> int:
            return pages

        def increase(self, pages: int) -> int:
            return 0

    g = Guest("r", memory_mb=64, reservation=Refusing())
    g.balloon.set_new_target(48 * MB)
    g.balloon.set_new_target(64 * MB)
    assert g.balloon.stats.current_pages == 48 * MB
    assert (g.balloon.stats.schedule_delay, g.balloon.stats.retry_count) == (2, 2)
