"""The typed client's batched data path (``Tmem.put_pages`` / ``get_pages``) on a real in-process
emulated host: same answers as the single ops, raw results without raising, and every field
validated before anything is issued."""

from __future__ import annotations

import pytest

from xentmem.abi import PAGE_SIZE
from xentmem.emulator import EmulatedHost
from xentmem.hypercalls.emulated import EmulatedHypervisor
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
