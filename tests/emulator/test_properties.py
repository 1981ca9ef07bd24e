"""Property tests: random op sequences from several domains against a reference model.

The model is the rule set of ref §2.2/§3 reduced to what a guest may rely on: a persistent page
reads back exactly as last stored until flushed (or discarded by a failed duplicate PUT); an
ephemeral page reads back intact or misses, never altered; a private-ephemeral hit consumes
the page. The host is tiny so that bursts force eviction and persistent PUTs hit the domain's
max_pages.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xentmem.abi import PAGE_SIZE
from xentmem.emulator import EmulatedHost

from .driver import ALL, PRIV_EPH, PRIV_PERS, Guest, page

KINDS = ("put", "get", "flush", "flush_obj", "burst", "freeze", "thaw", "destroy")
ops = st.lists(
    st.tuples(st.sampled_from(KINDS), st.integers(0, 2), st.booleans(), st.integers(0, 2),
              st.integers(0, 3), st.integers(0, 50)),
    max_size=50)


def text_page(seed: int) -> bytes:
    """A page that compresses well (where compression pays, it is stored compressed)."""
    return (f"line {seed:05d} of a text file; " * 160).encode()[:PAGE_SIZE]


def _run(version: str, designed: bool, sequence, compress: bool = False,
         dedup: bool = False) -> None:
    host = EmulatedHost(16, xen_version=version, designed=designed, dom0_memory_mb=12,
                        tmem_compress=compress, tmem_dedup=dedup, tmem_tze=dedup)
    content = (lambda seed: text_page(seed) if seed % 2 else page(seed)) if compress else page
    guests = [Guest(host, 0)] + [Guest(host, host.create_domain(f"g{i}", 1, 2))
                                 for i in range(2)]
    pools = {}
    for g in guests:
        pools[g.domid, True] = g.new_pool(PRIV_PERS)
        pools[g.domid, False] = g.new_pool(PRIV_EPH)
    pers: dict[tuple, bytes] = {}  # exact content of every persistent page
    eph: dict[tuple, bytes] = {}  # the one content an ephemeral page may show if present
    frozen: set[int] = set()
    for kind, who, persistent, oid, index, seed in sequence:
        g = guests[who]
        pool = pools[g.domid, persistent]
        key = (g.domid, persistent, oid, index)
        model = pers if persistent else eph
        if kind == "put":
            data = content(seed)
            present = key in model
            rc = g.put(pool, oid, index, data)
            if rc == 1:
                model[key] = data
            elif rc in (-28, -14):  # failed duplicate: old copy discarded
                model.pop(key, None)
            else:
                assert rc in (-12, -1000), rc
                assert rc != -1000 or (g.domid in frozen and not present)
        elif kind == "get":
            rc, got = g.get(pool, oid, index)
            if rc == 1:
                assert key in model and got == model[key]
                if not persistent:
                    del model[key]  # private ephemeral GET is exclusive
            else:
                assert rc in (0, -1001), rc
                assert persistent is False or key not in pers
                assert got == b"\xee" * len(got)  # a GET that misses leaves the frame alone
        elif kind == "flush":
            rc = g.flush(pool, oid, index)
            assert rc == (-1000 if g.domid in frozen else 1)
            model.pop(key, None)
        elif kind == "flush_obj":
            rc = g.flush_object(pool, oid)
            assert rc == (-1000 if g.domid in frozen else 1)
            for k in [k for k in model if k[:3] == key[:3]]:
                del model[k]
        elif kind == "burst":  # memory pressure from this domain (host heap, max_pages)
            for i in range(64):
                rc = g.put(pool, 7, seed * 64 + i, page(i))
                assert rc in (1, -12) or (rc == -1000 and g.domid in frozen), rc
                if rc == 1:
                    model[(g.domid, persistent, 7, seed * 64 + i)] = page(i)
        elif kind in ("freeze", "thaw"):
            rc = guests[0].ctl(kind.upper(), g.domid)
            assert rc == 0
            (frozen.add if kind == "freeze" else frozen.discard)(g.domid)
        elif kind == "destroy" and who and not persistent:  # recreate a guest's eph pool
            assert g.destroy(pool) == 1
            for k in [k for k in eph if k[:2] == (g.domid, False)]:
                del eph[k]
            pools[g.domid, False] = g.new_pool(PRIV_EPH)
    guests[0].ctl("THAW", ALL)
    for (domid, _, oid, index), data in pers.items():
        g = next(x for x in guests if x.domid == domid)
        assert g.get(pools[domid, True], oid, index) == (1, data)
    tm = host.tmem
    assert tm.eph_count == len(tm.g_eph) == sum(c.eph_count for c in tm.clients.values())


SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(ops)
def test_random_ops_4_12(sequence):
    _run("4.12", False, sequence)


@SETTINGS
@given(ops)
def test_random_ops_4_12_designed(sequence):
    _run("4.12", True, sequence)


@SETTINGS
@given(ops)
def test_random_ops_4_12_compressed(sequence):
    _run("4.12", False, sequence, compress=True)


@SETTINGS
@given(ops)
def test_random_ops_4_5(sequence):
    _run("4.5", False, sequence)


@SETTINGS
@given(ops, st.booleans())
def test_random_ops_4_5_dedup_tze(sequence, compress):
    _run("4.5", False, sequence, compress, dedup=True)


@SETTINGS
@given(ops)
def test_random_ops_4_1(sequence):
    _run("4.1", False, sequence)


@pytest.mark.slow
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["4.1", "4.5", "4.8", "4.12"]), st.booleans(), ops, st.booleans())
def test_random_ops_long(version, designed, sequence, compress):
    _run(version, designed, sequence, compress)
