"""Concurrent hypercalls: threads on two domains hammering one host through their own typed
clients (single ops and multicall batches), with the interpreter switching threads as often as
it can. Every persistent page reads back intact, every ephemeral GET gives the page or a miss,
and the host's books balance afterwards (page and object counts, LRU lists, arena slots).
Races without the host lock show up here only now and then (the interpreter must switch inside
the entry); the last test checks the lock itself deterministically."""

from __future__ import annotations

import random
import sys
import threading

import pytest

from xentmem.abi import PAGE_SIZE
from xentmem.emulator import EmulatedHost
from xentmem.emulator.transport import EmulatedHypervisor
from xentmem.hypercalls.tmem import Tmem


def _page(tag: int, i: int) -> bytes:
    return (tag * 100003 + i).to_bytes(8, "little") * (PAGE_SIZE // 8)


def _worker(tmem: Tmem, tag: int, seed: int, errors: list[str]) -> None:
    rng = random.Random(seed)
    pers = tmem.new_pool(persistent=True)
    eph = tmem.new_pool(persistent=False)
    stored: dict[int, bytes] = {}
    try:
        for step in range(250):
            keys = rng.sample(range(400), rng.randint(1, 40))
            if rng.random() < 0.5:
                pages = [_page(tag, k + step * 1000) for k in keys]
                assert tmem.put_pages(pers, [(tag, k, p) for k, p in zip(keys, pages,
                                                                         strict=True)]) \
                    == [1] * len(keys)
                stored.update(zip(keys, pages, strict=True))
                tmem.put_pages(eph, [(tag, k, _page(tag, k)) for k in keys])
            else:
                got = tmem.get_pages(pers, [(tag, k) for k in keys])
                assert got == [stored.get(k) for k in keys]
                for k, page in zip(keys, tmem.get_pages(eph, [(tag, k) for k in keys]),
                                   strict=True):
                    assert page in (None, _page(tag, k))
            k = rng.randrange(400)
            tmem.put_page(pers, tag, k, _page(tag, -k))
            stored[k] = _page(tag, -k)
            assert tmem.get_page(pers, tag, k) == stored[k]
            if rng.random() < 0.1:
                tmem.flush_page(pers, tag, k)
                del stored[k]
    except Exception as exc:  # reported to the main thread
        errors.append(f"{tag}: {exc!r}")


def _books_balance(host: EmulatedHost) -> None:
    tm = host.tmem
    pools = [p for c in tm.clients.values() for p in c.pools if p is not None]
    pages = [pg for p in pools for obj in p.objs.values() for pg in obj.pages.values()]
    assert tm.npages == len(pages)
    assert tm.nobjs == sum(len(p.objs) for p in pools)
    assert all(p.npages == sum(len(o.pages) for o in p.objs.values()) for p in pools)
    eph = [pg for pg in pages if not pg.obj.pool.persistent]
    assert tm.eph_count == len(tm.g_eph) == len(eph) and set(tm.g_eph) == set(eph)
    raw = {pg.data for pg in pages if not pg.csize}
    assert tm.raw_pages == len(raw)
    assert len(raw) + len(tm.free_slots) == tm.next_slot // PAGE_SIZE
    assert raw.isdisjoint(tm.free_slots)
    for c in tm.clients.values():  # its persistent frames and its metadata pages (§9.4)
        assert c.dom.tmem_pages == c.meta_pages + sum(
            1 for pg in pages if pg.obj.pool.persistent and pg.obj.pool.client is c
            and not pg.csize)


@pytest.mark.parametrize("compress", [False, True])
def test_threads_on_two_domains_keep_the_host_consistent(compress):
    host = EmulatedHost(40, tmem_compress=compress, dom0_memory_mb=8)
    guest = host.create_domain("g", 8, 16)
    # one client (its own op buffer and frames) per thread, two threads per domain
    clients = [Tmem(EmulatedHypervisor(host, (0, guest)[i % 2]), version="4.12")
               for i in range(6)]
    errors: list[str] = []
    threads = [threading.Thread(target=_worker, args=(clients[i], i + 1, i, errors))
               for i in range(6)]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        sys.setswitchinterval(old)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    _books_balance(host)
    assert EmulatedHost.from_state(host.to_state()).to_state() == host.to_state()


def test_a_hypercall_waits_for_the_host_lock():
    """While another thread holds the host (as a running hypercall does), a hypercall from a
    second domain cannot run; it completes once the host is released."""
    host = EmulatedHost(32, dom0_memory_mb=8)
    guest = Tmem(EmulatedHypervisor(host, host.create_domain("g", 4)), version="4.12")
    done = threading.Event()

    def call() -> None:
        guest.new_pool(persistent=True)
        done.set()

    worker = threading.Thread(target=call)
    with host.lock:
        worker.start()
        assert not done.wait(0.2)  # cannot finish while the host is held
        assert host.tmem.clients.get(guest.hv.domid) is None
    worker.join(timeout=30)
    assert done.is_set() and host.tmem.clients[guest.hv.domid].pools[0] is not None
