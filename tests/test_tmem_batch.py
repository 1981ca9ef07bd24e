"""The typed client's batched data path (``Tmem.put_pages`` / ``get_pages`` /
``get_pages_into``) on a real in-process emulated host: same answers as the single ops, raw
results without raising, and every field validated before anything is issued."""

from __future__ import annotations

import pytest

from xentmem.abi import PAGE_SIZE
from xentmem.emulator import EmulatedHost
from xentmem.emulator.transport import EmulatedHypervisor
from xentmem.hypercalls.tmem import Tmem


def _page(i: int) -> bytes:
    return i.to_bytes(4, "little") * (PAGE_SIZE // 4)


@pytest.fixture
def client():
    host = EmulatedHost(128)
    tmem = Tmem(EmulatedHypervisor(host, 0), version="4.12")
    yield host, tmem
    tmem.close()


def test_batches_round_trip_like_single_ops(client):
    _, tmem = client
    pool = tmem.new_pool(persistent=True)
    n = 2 * Tmem.BATCH + 7  # several multicalls, the last one short
    items = [((i % 3, 5, 0) if i % 2 else 9, i, _page(i)) for i in range(n)]
    assert tmem.put_pages(pool, items) == [1] * n
    keys = [(oid, index) for oid, index, _ in items] + [(9, 10**6), ((1, 1, 1), 0)]
    got = tmem.get_pages(pool, keys)
    assert got == [_page(i) for i in range(n)] + [None, None]
    assert [tmem.get_page(pool, oid, index) for oid, index in keys[:5]] == got[:5]
    tmem.put_page(pool, 9, 0, _page(77))  # a single PUT replaces a batched one
    assert tmem.get_pages(pool, [(9, 0)]) == [_page(77)]
    assert tmem.put_pages(pool, []) == [] and tmem.get_pages(pool, iter([])) == []


def test_ephemeral_batch_get_is_destructive(client):
    _, tmem = client
    pool = tmem.new_pool(persistent=False)
    tmem.put_pages(pool, ((1, i, _page(i)) for i in range(10)))
    assert tmem.get_pages(pool, [(1, i) for i in range(10)]) == [_page(i) for i in range(10)]
    assert tmem.get_pages(pool, [(1, 3)]) == [None]


def test_batch_results_are_raw_errnos(client):
    _, tmem = client
    assert tmem.put_pages(5, [(1, i, _page(i)) for i in range(3)]) == [-19] * 3  # no pool 5
    assert tmem.get_pages(5, [(1, 0)]) == [None]


@pytest.mark.parametrize("bad", [
    (1, -1, _page(1)),
    (2**64, 0, _page(1)),
    ((1, 2), 0, _page(1)),
    ((1, 2, -3), 0, _page(1)),
    (1, 2**32, _page(1)),
    (1, 1.0, _page(1)),
    (True, 1, b"short"),
    (1, 1),
])
def test_bad_batch_input_issues_nothing(client, bad):
    host, tmem = client
    pool = tmem.new_pool(persistent=True)
    before = host.tmem.Tt
    with pytest.raises(ValueError):
        tmem.put_pages(pool, [(1, 0, _page(0)), bad])
    if bad[2:] != (b"short",):  # a bad key is refused by GET too (the short page is not a key)
        with pytest.raises(ValueError):
            tmem.get_pages(pool, [(1, 0), bad[:2] if len(bad) == 3 else (*bad, 0)])
    assert host.tmem.Tt == before
    assert tmem.get_pages(pool, [(1, 0)]) == [None]


def test_bad_pool_id_is_refused(client):
    _, tmem = client
    with pytest.raises(ValueError):
        tmem.put_pages(2**31, [(1, 0, _page(0))])
    with pytest.raises(ValueError):
        tmem.get_pages(-(2**31) - 1, [(1, 0)])


def test_get_pages_into_lands_hits_in_place_and_leaves_miss_slots_alone(client):
    _, tmem = client
    pool = tmem.new_pool(persistent=True)
    n = Tmem.BATCH + 9
    tmem.put_pages(pool, [(1, i, _page(i)) for i in range(n) if i % 5])  # every 5th is missing
    keys = [(1, i) for i in range(n)] + [((4, 4, 4), 0)]
    out = bytearray(b"\xee" * (len(keys) * PAGE_SIZE + 10))  # longer than needed is fine
    results = tmem.get_pages_into(pool, keys, out)
    assert results == [0 if i % 5 == 0 else 1 for i in range(n)] + [0]
    for i in range(n):
        slot = bytes(out[i * PAGE_SIZE:(i + 1) * PAGE_SIZE])
        assert slot == (b"\xee" * PAGE_SIZE if i % 5 == 0 else _page(i)), i
    assert out[len(keys) * PAGE_SIZE - PAGE_SIZE:] == b"\xee" * (PAGE_SIZE + 10)
    assert tmem.get_pages(pool, keys[:3]) == [None, _page(1), _page(2)]  # same as the list API


def test_get_pages_into_a_view_and_an_ephemeral_pool(client):
    _, tmem = client
    pool = tmem.new_pool(persistent=False)
    tmem.put_pages(pool, [(7, i, _page(i)) for i in range(4)])
    backing = bytearray(6 * PAGE_SIZE)
    view = memoryview(backing)[PAGE_SIZE:]  # an offset view of a bigger buffer
    assert tmem.get_pages_into(pool, [(7, i) for i in range(4)], view) == [1, 1, 1, 1]
    assert bytes(backing[PAGE_SIZE:5 * PAGE_SIZE]) == b"".join(_page(i) for i in range(4))
    # destructive: the pool is now empty, which Xen answers with -EEMPTY
    assert tmem.get_pages_into(pool, [(7, 0)], bytearray(PAGE_SIZE)) == [-1001]
    assert tmem.get_pages_into(5, [(7, 0)], bytearray(PAGE_SIZE)) == [-19]  # raw errno


@pytest.mark.parametrize("out", [bytearray(PAGE_SIZE), bytes(2 * PAGE_SIZE)],
                         ids=["too small", "read-only"])
def test_get_pages_into_refuses_a_bad_buffer_before_issuing(client, out):
    host, tmem = client
    pool = tmem.new_pool(persistent=True)
    tmem.put_pages(pool, [(1, 0, _page(0)), (1, 1, _page(1))])
    before = host.tmem.Tt
    with pytest.raises(ValueError):
        tmem.get_pages_into(pool, [(1, 0), (1, 1)], out)
    assert host.tmem.Tt == before
    with pytest.raises(ValueError):  # a bad key, too, before anything is issued
        tmem.get_pages_into(pool, [(1, 0), (1, -1)], bytearray(2 * PAGE_SIZE))
    assert host.tmem.Tt == before
