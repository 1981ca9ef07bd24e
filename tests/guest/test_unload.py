"""Backend unload (the seed's "next goal"): routing stops atomically, pages drain back to their
swap slots, and loads racing with the drain get the right data from wherever it is."""

from __future__ import annotations

import threading

import pytest

from xentmem.errors import GuestError
from xentmem.guest import Guest, Zcache


class GatedZcache(Zcache):
    """zcache whose frontswap ``load`` parks the drain at one slot until released, so a test
    can act in the middle of an unload. A real backend; only the pause is added."""

    def __init__(self, gate_offset: int) -> None:
        super().__init__(exclusive_gets=False)
        self.gate_offset = gate_offset
        self.parked = threading.Event()
        self.release = threading.Event()
        self.armed = False
        inner = self.frontswap_ops.load

        def load(type: int, offset: int, page: bytearray) -> int:
            if self.armed and offset == self.gate_offset:
                self.armed = False
                self.parked.set()
                assert self.release.wait(10)
            return inner(type, offset, page)

        self.frontswap_ops.load = load  # type: ignore[method-assign]


def _setup(n: int = 10):
    g = Guest("u", memory_mb=64)
    sis = g.swapon(256)
    pids = g.alloc_anon(n)
    gated = GatedZcache(gate_offset=5)
    g.load_backend(gated)
    for pid in pids:
        g.swap_out(pid)
    offsets = {pid: p.entry[1] for pid, p in zip(pids, g.pages_in(pids), strict=True)}
    return g, sis, pids, offsets, gated


def test_loads_racing_with_the_drain_read_backend_or_disk_and_never_stale():
    g, _sis, _pids, offsets, gated = _setup()
    by_offset = {o: pid for pid, o in offsets.items()}
    gated.armed = True
    unload = threading.Thread(target=g.unload_backend)
    unload.start()
    assert gated.parked.wait(10)
    # offsets 1-4 are drained already, 5 is being drained, 6-10 still in the backend
    assert g.read_anon(by_offset[2]) == "swap"
    assert g.read_anon(by_offset[8]) == "frontswap"
    racer_source: list[str | None] = []
    racer = threading.Thread(target=lambda: racer_source.append(g.read_anon(by_offset[5])))
    racer.start()
    racer.join(0.2)
    assert racer.is_alive()  # waits for the slot the drain holds
    gated.release.set()
    unload.join(10)
    racer.join(10)
    assert racer_source == ["swap"]
    assert g.stats.drained == 10
    assert g.verify_anon() == 10 and g.stats.lost == g.stats.stale == 0


def test_stores_during_the_drain_go_to_disk_and_drop_the_old_copy():
    g, sis, _pids, offsets, gated = _setup()
    by_offset = {o: pid for pid, o in offsets.items()}
    victim = by_offset[9]
    g.read_anon(victim)  # swap cache: bit still set, backend holds version 0
    g.write_anon(victim)  # dirty, slot kept: the next swap-out is a duplicate store
    gated.armed = True
    unload = threading.Thread(target=g.unload_backend)
    unload.start()
    assert gated.parked.wait(10)
    failed = g.frontswap.failed_stores
    assert g.swap_out(victim)
    assert g.frontswap.failed_stores == failed + 1  # refused: routing already stopped
    assert not sis.fs_test(offsets[victim])
    gated.release.set()
    unload.join(10)
    assert g.read_anon(victim) == "swap"  # version 1 from disk, not version 0 drained over it
    assert g.stats.drained == 9 and g.stats.lost == g.stats.stale == 0


def test_unload_requeues_active_types_for_the_next_backend():
    g, sis, _pids, _offsets, _gated = _setup()
    g.unload_backend()
    assert g.frontswap.need_init[sis.type] is True
    assert g.frontswap.ops is None and sis.frontswap_pages == 0
    nxt = Zcache()
    g.load_backend(nxt)
    assert nxt.frontswap_ops.types == {sis.type}


def test_unload_with_writethrough_still_drains_and_loses_nothing():
    g = Guest("w", memory_mb=64)
    g.swapon(256)
    g.frontswap.writethrough(True)
    g.load_backend(Zcache(exclusive_gets=False))
    pids = g.alloc_anon(20)
    for pid in pids:
        g.swap_out(pid)
    assert g.unload_backend().drained == 20
    assert g.verify_anon() == 20 and g.stats.lost == g.stats.stale == 0


def test_unregister_without_backend_is_refused():
    g = Guest("n", memory_mb=64)
    with pytest.raises(GuestError):
        g.frontswap.unregister_ops()
    with pytest.raises(GuestError):
        g.cleancache.unregister_ops()


def test_swapoff_after_unload_brings_everything_back():
    g, sis, _pids, _offsets, _gated = _setup()
    g.unload_backend()
    g.swapoff(sis.type)
    assert g.verify_anon() == 10 and g.stats.lost == g.stats.stale == 0
    assert g.resident_anon_pages == 10


def test_a_failing_swap_device_aborts_the_unload_and_keeps_the_backend():
    g = Guest("f", memory_mb=64)
    sis = g.swapon(256)
    backend = Zcache(exclusive_gets=False)
    g.load_backend(backend)
    pids = g.alloc_anon(10)
    for pid in pids:
        g.swap_out(pid)

    def broken(offset: int, data: bytes) -> None:
        raise OSError(5, "Input/output error")

    good = sis.store.write
    sis.store.write = broken  # type: ignore[method-assign]
    with pytest.raises(OSError):
        g.unload_backend()
    assert g.backend is backend and g.frontswap.ops is backend.frontswap_ops
    (new,) = g.alloc_anon(1)
    g.swap_out(new)  # routing restored: stores reach the backend again
    assert sis.fs_test(g.pages_in([new])[0].entry[1])
    sis.store.write = good  # type: ignore[method-assign]
    assert g.unload_backend().drained == 11
    assert g.verify_anon() == 11 and g.stats.lost == g.stats.stale == 0
