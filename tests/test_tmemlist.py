"""The tmem-list parser against the literal examples of ref §4.2 and garbled input."""

from xentmem.host.tmemlist import parse_tmem_list

EXAMPLE_4_12 = """\
G=Tt:5120,Te:12,Cf:0,Af:0,Pf:0,Ta:37,Lm:0,Et:410,Ea:415,Rt:0,Ra:0,Rx:0,Fp:0
S=SI:0,PT:ES,U0:8877665544332211,U1:1122334455667788,SC:3,SC:5
C=CI:3,ww:0,co:0,fr:0,Tc:0,Ge:220,Pp:1800,Gp:600
P=CI:3,PI:0,PT:PP,U0:0,U1:0
P=CI:3,PI:1,PT:EP,U0:0,U1:0
P=CI:3,PI:2,PT:ES,U0:8877665544332211,U1:1122334455667788
T
"""


def test_ref_example():
    records = parse_tmem_list(EXAMPLE_4_12)
    assert [r.kind for r in records] == ["global", "shared_pool", "client", "pool", "pool", "pool",
                                         "timing"]
    assert records[0].fields["Tt"] == 5120 and records[0].fields["Et"] == 410
    assert records[1].fields["SC"] == [3, 5]
    assert records[1].fields["U0"] == 0x8877665544332211
    assert records[2].fields == {"CI": 3, "ww": 0, "co": 0, "fr": 0, "Tc": 0, "Ge": 220,
                                 "Pp": 1800, "Gp": 600}
    assert records[6].fields == {} and not records[6].garbled


def test_pool_type_is_two_letters():
    record = parse_tmem_list("P=CI:3,PI:0,PT:PP,U0:0,U1:0")[0]
    assert record.fields["PT"] == "PP" and not record.garbled
    assert parse_tmem_list("P=PT:XX")[0].garbled == ["PT:XX"]


def test_garbage_never_raises():
    records = parse_tmem_list("S=SI:0,PT:ES,U0:zz\nX=1\n,,,\nC=CI:-\n")
    assert [r.kind for r in records] == ["shared_pool", "unknown", "unknown", "client"]
    assert records[0].garbled and records[3].garbled == ["CI:-"]
