"""``tmem-list`` text (ref §4.2, §9) for a scripted scenario against expected files in
``tests/emulator/fixtures/tmem-list/`` (``<version>[-designed]-<all|dom>[-long].txt``), plus
the LIST buffer-length rules. ``XENTMEM_REGEN=1`` rewrites the files (review the diff before
committing).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xentmem import abi

from .driver import ALL, PRIV_EPH, PRIV_PERS, SHARED_EPH, Guest, make, page, text_page

FIXTURES = Path(__file__).parent / "fixtures" / "tmem-list"
UA = (0x8877665544332211, 0x1122334455667788)
UB = (0x0123456789ABCDEF, 0xFEDCBA9876543210)


def scenario(version: str, designed: bool = False):
    """dom0 and one guest; two shared pools, private pools of each kind, compression on for
    the guest, some hits, misses, flushes and a frozen guest."""
    host, (d0, d1) = make(version, guests=1, designed=designed)
    if version == "4.12":
        for d in (d0, d1):
            for u in (UA, UB):
                d0.auth(d.domid, u)
    p0 = d0.new_pool(PRIV_PERS)
    sa = d0.new_pool(SHARED_EPH, UA)
    d1.new_pool(PRIV_EPH)
    q1 = d1.new_pool(PRIV_PERS)
    sa1 = d1.new_pool(SHARED_EPH, UA)
    sb1 = d1.new_pool(SHARED_EPH, UB)
    e1 = 0
    if version == "4.12":
        d0.out.write(abi.XEN_TMEM_CLIENT.pack(1, 16, 0, 2, 3))
        d0.ctl("SET_CLIENT_INFO", d1.domid)
    else:
        d0.ctl("SET_WEIGHT", d1.domid, arg1=3)
        d0.ctl("SET_COMPRESS", d1.domid, arg1=1)
    for i in range(12):
        d0.put(p0, 1, i, page(i))
        d1.put(e1, (2, 0, 0), i, text_page(i))
        d1.put(q1, (3, i, 0), 0, page(i) if i % 3 else text_page(i))
    for i in range(5):
        d0.put(sa, 4, i, page(i))
        d1.put(sb1, 6, i, text_page(i))
    d0.put(p0, 1, 0, page(100))  # duplicate
    d0.get(p0, 1, 3)
    d0.get(p0, 9, 3)  # miss
    d1.get(e1, (2, 0, 0), 5)  # destructive
    d1.get(sa1, 4, 2)  # shared hit by the joiner
    d0.flush(p0, 1, 11)
    d0.flush_object(p0, 7)
    d0.ctl("FREEZE", d1.domid)
    d1.put(q1, (3, 99, 0), 0, page(1))  # -EFROZEN
    return host


CASES = [(v, False) for v in ("4.1", "4.5", "4.12")] + [("4.12", True)]


@pytest.mark.parametrize(("version", "designed"), CASES,
                         ids=[f"{v}{'-designed' if d else ''}" for v, d in CASES])
@pytest.mark.parametrize("long", [False, True], ids=["short", "long"])
@pytest.mark.parametrize("who", ["all", "dom"])
def test_tmem_list_matches_expected_text(version, designed, long, who):
    host = scenario(version, designed)
    text = host.tmem_list(None if who == "all" else 1, long=long)
    name = f"{version}{'-designed' if designed else ''}-{who}{'-long' if long else ''}.txt"
    path = FIXTURES / name
    if os.environ.get("XENTMEM_REGEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_list_through_the_control_plane_equals_host_view(version):
    host = scenario(version)
    d0 = Guest(host, 0)
    rc, text = d0.list(ALL, use_long=True, length=32768)
    assert rc == 0
    assert text + "\n" == host.tmem_list(long=True)


def test_list_length_rules_4_12():
    """§9.1, §9.4: a C= line even with length 0; G=, S=, P= and T are dropped when they do
    not fit the length that remains, which wraps once an unchecked C= line passed it (here
    at the first client: the second's C= and T still go out); NULL buffer returns 0;
    unknown client -1."""
    host = scenario("4.12")
    d0 = Guest(host, 0)
    assert d0.list(1, length=0)[1].startswith("C=CI:1,")
    rc, text = d0.list(ALL, length=50)
    full = host.tmem_list().splitlines()
    clients = [ln for ln in full if ln.startswith("C=")]
    assert rc == 0 and text.splitlines() == [*clients, "T"]
    assert len(text) > 50
    assert d0.ctl("LIST", ALL, arg1=4096, arg2=0, buf=0) == 0
    assert d0.list(7)[0] == -1


def test_list_length_designed_drops_records_that_do_not_fit():
    host = scenario("4.12", designed=True)
    d0 = Guest(host, 0)
    assert d0.list(1, length=0)[1] == ""
    full = d0.list(ALL)[1].splitlines()
    rc, text = d0.list(ALL, length=100)
    assert rc == 0 and len(text) < 100
    lines = text.splitlines()  # whole records only, in order, the ones that fit
    assert lines == [ln for ln in full if ln in lines] and lines[0].startswith("G=")


def test_second_shared_record_garbled_on_real_releases():
    text = scenario("4.12").tmem_list().splitlines()
    first, second = (ln for ln in text if ln.startswith("S="))
    own_header = f"S=SI:1,PT:ES,U0:{UB[0]:x},U1:{UB[1]:x}"
    assert second == first[:len(own_header)] + ",SC:1"
    designed = scenario("4.12", designed=True).tmem_list().splitlines()
    assert f"{own_header},SC:1" in designed
