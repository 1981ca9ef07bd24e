"""Behaviour tables of ref/xen-tmem-abi.md §2.2, §3, §7 and §9, one row per rule.

Each row names the rule, the imitated releases it is checked on, a scenario written against
raw hypercalls, and the expected observation (one value, or one per release where the rule
differs). Default hosts imitate the real releases (defects included); rows marked ``designed``
build the host with ``designed=True``.
"""

from __future__ import annotations

import pytest

from xentmem import abi
from xentmem.abi import PAGE_SIZE, TmemCmd
from xentmem.emulator import EmulatedHost

from .driver import ALL, PRIV_EPH, PRIV_PERS, SHARED_EPH, SHARED_PERS, make, page, text_page

C = TmemCmd
U = (0x1122334455667788, 0x8877665544332211)


def _pool_then(flags, fn):
    def run(host, g):
        pid = g[0].new_pool(flags)
        return fn(host, g, pid)
    return run


def _stat(host, pool_key: str, domid: int = 0, slot: int = 0) -> int:
    line = next(ln for ln in host.tmem_list(domid, long=True).splitlines()
            if ln.startswith(f"P=CI:{domid},PI:{slot},"))
    return int(dict(kv.split(":") for kv in line[2:].split(","))[pool_key])


def _g(host, key: str) -> int:
    line = host.tmem_list(long=True).splitlines()[0]
    return int(dict(kv.split(":") for kv in line[2:].split(","))[key])


def _seq(*steps):
    """Run callables in order, return every result."""
    def run(host, g):
        return tuple(step(host, g) for step in steps)
    return run


# --- §2.2 / §9.1 pool and page operations -----------------------------------------------------

POOL_RULES = [
    ("new_pool_lowest_slot", "*", lambda h, g: (g[0].new_pool(), g[0].new_pool()), (0, 1)),
    ("new_pool_version_not_1_eperm", "*", lambda h, g: g[0].new_pool(0x02000001), -1),
    ("new_pool_pagesize_field_eperm", "*", lambda h, g: g[0].new_pool(0x01000011), -1),
    ("new_pool_precompressed_eperm", "*", lambda h, g: g[0].new_pool(0x01000005), -1),
    ("new_pool_reserved_bits_eperm", "*", lambda h, g: g[0].new_pool(0x01000101), -1),
    ("new_pool_bit3_accepted", "*", lambda h, g: g[0].new_pool(0x01000009), 0),
    ("new_pool_ignores_pool_id_and_arg1", "*",
     lambda h, g: g[0].op(C.TMEM_NEW_POOL, 7, flags=PRIV_PERS, arg1=99), 0),
    ("new_pool_17th_eperm", "*",
     lambda h, g: [g[0].new_pool() for _ in range(17)][-1], -1),
    ("shared_persistent_refused_from_4_5", "*",
     lambda h, g: g[0].new_pool(SHARED_PERS, U), {"4.1": 0, "4.5": -1, "4.12": -1}),
    ("destroy_out_of_range_or_empty_is_0", "*",
     lambda h, g: tuple(g[0].destroy(i) for i in (0, 16, 17, -1, 1000, 0x7FFFFFFF, -16)),
     (0,) * 7),
    ("destroy_existing_is_1", "*", _pool_then(PRIV_PERS, lambda h, g, p: g[0].destroy(p)), 1),
    ("bogus_cmd_creates_client", "*",
     lambda h, g: (g[0].op(200, 0), 0 in h.tmem.clients), (-19, True)),
    ("unknown_cmd_valid_pool", "*",
     _pool_then(PRIV_PERS, lambda h, g, p: tuple(
         g[0].op(c, p) for c in (11, 12, 100, 200, 0xFFFFFFFF, 0x80000004))),
     {"4.1": (0,) * 6, "4.5": (-38,) * 6, "4.12": (-38,) * 6}),
    ("removed_cmds_enosys_from_4_4", ("4.5", "4.12"),
     _pool_then(PRIV_PERS, lambda h, g, p: tuple(g[0].op(c, p) for c in (3, 8, 9, 10))),
     (-38,) * 4),
    ("xchg_returns_0_on_4_1", ("4.1",),
     _pool_then(PRIV_PERS, lambda h, g, p: g[0].op(C.TMEM_XCHG, p)), 0),
    ("new_page_puts_zero_page_on_4_1", ("4.1",),
     _pool_then(PRIV_PERS, lambda h, g, p: (g[0].op(C.TMEM_NEW_PAGE, p, oid=(1, 0, 0)),
                                             g[0].get(p, 1, 0))),
     (1, (1, bytes(PAGE_SIZE)))),
    ("unknown_cmd_invalid_pool_enodev", "*", lambda h, g: g[0].op(200, 5), -19),
    ("control_cmds_eopnotsupp_on_4_12", ("4.12",),
     lambda h, g: tuple(g[0].op(c, p) for c in (0, 101, 102) for p in (0, 99)), (-95,) * 6),
    ("get_empty_pool_eempty_not_counted", "*",
     _pool_then(PRIV_PERS, lambda h, g, p: (g[0].get(p, 1, 0)[0], _stat(h, "gt"))), (-1001, 0)),
    ("get_miss_is_0", "*",
     _pool_then(PRIV_PERS, lambda h, g, p: (g[0].put(p, 1, 0, page(1)), g[0].get(p, 1, 1)[0],
                                             g[0].get(p, 2, 0)[0])), (1, 0, 0)),
    ("miss_leaves_frame_untouched", "*",
     _pool_then(PRIV_PERS, lambda h, g, p: (g[0].put(p, 1, 0, page(1)),
                                             g[0].get(p, 1, 9)[1] == b"\xee" * PAGE_SIZE)),
     (1, True)),
    ("private_ephemeral_get_is_destructive", "*",
     _pool_then(PRIV_EPH, lambda h, g, p: (g[0].put(p, 1, 0, page(1)), g[0].get(p, 1, 0),
                                            g[0].get(p, 1, 0)[0])),
     (1, (1, page(1)), -1001)),
    ("persistent_get_non_destructive", "*",
     _pool_then(PRIV_PERS, lambda h, g, p: (g[0].put(p, 1, 0, page(1)), g[0].get(p, 1, 0)[0],
                                             g[0].get(p, 1, 0))),
     (1, 1, (1, page(1)))),
    ("flush_absent_is_1", "*",
     _pool_then(PRIV_PERS, lambda h, g, p: (g[0].flush(p, 1, 0), g[0].flush_object(p, 1))),
     (1, 1)),
    ("flush_page_and_object_remove", "*",
     _pool_then(PRIV_PERS, lambda h, g, p: (
         g[0].put(p, 1, 0, page(1)), g[0].put(p, 1, 1, page(2)), g[0].put(p, 2, 0, page(3)),
         g[0].flush(p, 1, 0), g[0].get(p, 1, 0)[0], g[0].flush_object(p, 1),
         g[0].get(p, 1, 1)[0], g[0].get(p, 2, 0)[0], _stat(h, "Oc"))),
     (1, 1, 1, 1, 0, 1, 0, 1, 1)),
    ("duplicate_put_replaces_in_place", "*",
     _pool_then(PRIV_PERS, lambda h, g, p: (g[0].put(p, 1, 0, page(1)), g[0].put(p, 1, 0, page(2)),
                                             g[0].get(p, 1, 0), _stat(h, "pr"), _stat(h, "Pc"))),
     (1, 1, (1, page(2)), 1, 1)),
    ("put_bad_frame_efault", "*",
     _pool_then(PRIV_PERS, lambda h, g, p: (g[0].put(p, 1, 0, page(1), cmfn=0),
                                             g[0].put(p, 1, 0, page(1), cmfn=1 << 40),
                                             _stat(h, "px"))), (-14, -14, 2)),
    ("duplicate_put_bad_frame_discards_old", "*",
     _pool_then(PRIV_PERS, lambda h, g, p: (g[0].put(p, 1, 0, page(1)),
                                             g[0].put(p, 1, 0, page(2), cmfn=0),
                                             g[0].get(p, 1, 0)[0], _stat(h, "pd"))),
     (1, -14, -1001, 1)),
    ("private_ephemeral_get_bad_frame_consumes_page", "*",
     _pool_then(PRIV_EPH, lambda h, g, p: (g[0].put(p, 1, 0, page(1)), g[0].get(p, 1, 0, cmfn=0)[0],
                                            g[0].get(p, 1, 0)[0], _g(h, "Ec"))),
     # the leaked descriptor keeps the pool's Pc at 1 (§9.4): the next GET is a miss (0), not
     # -EEMPTY
     {"4.1": (1, -14, 1, 0), "4.5": (1, -14, 0, 1), "4.12": (1, -14, 0, 1)}),
    ("persistent_get_bad_frame_keeps_page", "*",
     _pool_then(PRIV_PERS, lambda h, g, p: (g[0].put(p, 1, 0, page(1)),
                                             g[0].get(p, 1, 0, cmfn=0)[0],
                                             g[0].get(p, 1, 0)[0])), (1, -14, 1)),
    ("null_struct_pointer_efault_counted", "*",
     lambda h, g: (h.hypercall(0, 38, 0), h.hypercall(0, 38, 1 << 50), _g(h, "Tt"), _g(h, "Te")),
     (-14, -14, 2, 2)),
    ("oid_uses_all_192_bits", "*",
     _pool_then(PRIV_PERS, lambda h, g, p: (g[0].put(p, (1, 2, 3), 0, page(1)),
                                             g[0].get(p, (1, 2, 4), 0)[0],
                                             g[0].get(p, (1, 2, 3), 0)[0])), (1, 0, 1)),
]


# --- §3.6 freeze / thaw / destroy ---------------------------------------------------------------

def _frozen(host, g):
    t = g[0]
    p = t.new_pool(PRIV_EPH)
    t.put(p, 1, 0, page(1))
    t.put(p, 1, 1, page(2))
    freeze = t.ctl("FREEZE", 0)
    return (freeze, t.put(p, 1, 2, page(3)), t.put(p, 1, 0, page(4)), t.get(p, 1, 0),
            t.flush(p, 1, 1), t.get(p, 1, 1)[0], t.new_pool(), t.destroy(1),
            t.ctl("DESTROY", 0), t.put(p, 1, 2, page(3)))


def _freeze_all_then_new_client(host, g):
    rc = g[0].ctl("FREEZE", ALL)
    p = g[1].new_pool(PRIV_PERS)
    return rc, g[1].put(p, 1, 0, page(1))


FREEZE_RULES = [
    ("frozen_client_semantics", "*", _frozen,
     (0, -1000, 1, (1, page(4)), -1000, -1001, 1, 1, 0, 1)),
    ("freeze_unknown_client_or_domid_self_eperm", "*",
     lambda h, g: (g[0].ctl("FREEZE", 5), g[0].ctl("THAW", abi.DOMID_SELF)), (-1, -1)),
    ("freeze_all_spares_later_clients", "*", _freeze_all_then_new_client, (0, 1)),
]


# --- §3.3-§3.5 memory, eviction, weights, flush, freeable ---------------------------------------

def _persistent_ceiling(host, g):
    dom = host.create_domain("small", 4, 6)  # 512 frames headroom of tmem pages
    from .driver import Guest
    t = Guest(host, dom)
    p = t.new_pool(PRIV_PERS)
    n = 0
    while t.put(p, 1, n, page(n & 3)) == 1:
        n += 1
    last = t.put(p, 1, n, page(0))
    info = host.domain_info(dom)
    return n, last, info["tot_pages"] == info["max_pages"], _g(host, "Pf") >= 1


def _flush_kib(host, g):
    t = g[0]
    p = t.new_pool(PRIV_EPH)
    for i in range(40):
        t.put(p, 1, i, page(i))
    first = t.ctl("FLUSH", ALL, **t.value_arg(64))
    oldest = [t.get(p, 1, i)[0] for i in (15, 16)]
    return first, oldest, t.ctl("FLUSH", ALL, **t.value_arg(1)), t.ctl("FLUSH", 0, **t.value_arg(4))


def _freeable(host, g):
    t = g[0]
    p = t.new_pool(PRIV_EPH)
    q = t.new_pool(PRIV_PERS)
    for i in range(600):
        t.put(p, 1, i, page(i))
        t.put(q, 1, i, page(i))
    return t.ctl("QUERY_FREEABLE_MB"), (600 + host.tmem.free_list) >> 8


MEMORY_RULES = [
    # the headroom holds the pages and their metadata (§9.4): 13 pages of 4.8+'s 96-byte
    # descriptor blocks, 15 of the 112-byte ones before, each with 9 radix nodes and an object
    ("persistent_pages_charged_to_domain", "*", _persistent_ceiling,
     {"4.1": (497, -12, True, True), "4.5": (497, -12, True, True),
      "4.12": (499, -12, True, True)}),
    ("flush_kib_evicts_oldest_returns_kib", "*", _flush_kib, (64, [0, 1], 4, -1)),
    ("freeable_is_free_list_plus_ephemeral", "*", _freeable, (2, 2)),
]


# --- §3.9 shared pools and authorisation ---------------------------------------------------------

def _shared_unauthorised(host, g):
    t = g[0]
    p = t.new_pool(SHARED_EPH, U)
    return p, t.list(0)[1].splitlines()[1]


def _shared_authorised(host, g):
    t = g[0]
    a = t.auth(0, U) if host.version.minor >= 9 else None
    if host.version.minor < 9:
        t.new_pool()  # ≤4.8 TMEM_AUTH needs an existing client
        t.destroy(0)
        a = t.auth(0, U)
    p = t.new_pool(SHARED_EPH, U)
    q = t.new_pool(SHARED_EPH, U)
    return a, p, q, [ln for ln in t.list()[1].splitlines() if ln.startswith(("S=", "P="))]


def _uuid_all_ones(host, g):
    t = g[0]
    return t.new_pool(SHARED_EPH, (2**64 - 1, 2**64 - 1)), t.list(0)[1].splitlines()[1]


def _set_auth_rules(host, g):
    t = g[0]
    outcomes = [t.auth(0, (i, i)) for i in range(17)]
    return (outcomes[0], outcomes[-1], t.auth(0, (99, 99), enable=False), t.auth(ALL, U),
            t.auth(77, U))


def _set_auth_args(host, g):
    t = g[0]
    t.out.write(abi.XEN_TMEM_POOL_INFO.pack(4, 0, 5, *U))
    return (t.ctl("SET_AUTH", 0, arg1=32), t.ctl("SET_AUTH", 0, arg1=31),
            t.ctl("SET_AUTH", 0, arg1=0), t.ctl("SET_AUTH", 0, arg1=17 * 32))


def _tmem_auth_45(host, g):
    t = g[0]
    before = t.auth(0, U)
    t.new_pool()
    outcomes = [t.auth(0, (i, i)) for i in range(17)]
    t.auth(0, (0, 0), enable=False)
    return (before, outcomes[0], outcomes[-1], t.auth(0, (1, 1)), t.auth(0, (99, 99), False),
            t.auth(77, U), t.auth(abi.DOMID_SELF, U), t.auth(ALL, U), host.tmem.auth_disabled)


def _cross_domain_share(host, g):
    d0, d1 = g[0], g[1]
    for d in (d0, d1):
        d0.auth(d.domid, U)  # SET_AUTH is dom0's (privileged) business
    p0 = d0.new_pool(PRIV_PERS)  # slot 0 taken: the shared pool lands in slot 1 for dom0
    s0 = d0.new_pool(SHARED_EPH, U)
    s1 = d1.new_pool(SHARED_EPH, U)
    d0.put(s0, 5, 0, page(1))
    got = d1.get(s1, 5, 0)
    again = d1.get(s1, 5, 0)[0]
    d1.put(s1, 5, 0, page(2))
    back = d0.get(s0, 5, 0)
    sline = [ln for ln in d0.list()[1].splitlines() if ln.startswith("S=")]
    return p0, s0, s1, got, again, back, sline


SHARED_RULES = [
    ("shared_without_auth_is_private_on_4_12", ("4.12",), _shared_unauthorised,
     (0, "P=CI:0,PI:0,PT:EP,U0:0,U1:0")),
    ("shared_needs_no_auth_on_4_5", ("4.1", "4.5"), _shared_unauthorised,
     (0, f"P=CI:0,PI:0,PT:ES,U0:{U[0]:x},U1:{U[1]:x}")),
    ("shared_uuid_all_ones_is_private", "*", _uuid_all_ones, (0, "P=CI:0,PI:0,PT:EP,U0:0,U1:0")),
    ("authorised_same_uuid_twice_two_slots_one_pool", ("4.12",), _shared_authorised,
     (1, 0, 1, [f"S=SI:0,PT:ES,U0:{U[0]:x},U1:{U[1]:x},SC:0,SC:0",
                f"P=CI:0,PI:0,PT:ES,U0:{U[0]:x},U1:{U[1]:x}",
                f"P=CI:0,PI:0,PT:ES,U0:{U[0]:x},U1:{U[1]:x}"])),
    ("set_auth_limits", ("4.12",), _set_auth_rules, (1, -12, 1, -12, -12)),
    ("set_auth_argument_checks", ("4.12",), _set_auth_args, (-22, -22, 0, -7)),
    ("tmem_auth_4_5", ("4.5",), _tmem_auth_45, (-22, 1, -12, 1, 0, -22, -22, 1, True)),
    ("cross_domain_shared_pool", ("4.12",), _cross_domain_share,
     (0, 1, 0, (1, page(1)), 1, (1, page(2)),
      [f"S=SI:0,PT:ES,U0:{U[0]:x},U1:{U[1]:x},SC:0,SC:1"])),
]


# --- §9.4 shared pools on 4.5 (the creator is not on its pool's share list) ----------------------

S45 = f"S=SI:0,PT:ES,U0:{U[0]:x},U1:{U[1]:x}"
G45 = "G=Tt:{},Te:{},Cf:0,Af:0,Pf:0,Ta:{},Lm:0,Et:0,Ea:0,Rt:0,Ra:0,Rx:0,Fp:0"
C45 = "C=CI:0,ww:0,ca:0,co:0,fr:0,Tc:0,Ge:0,Pp:0,Gp:0"


def _gkeys(host, *keys):
    return tuple(_g(host, k) for k in keys)


def _owner_drops_joiner_slot(host, g):
    """Slot 0 creates, slot 1 joins; destroying slot 1 clears both slots and frees the pool:
    no crash, no S= or P= line, DESTROY_POOL of either slot then 0."""
    t = g[0]
    steps = (t.new_pool(SHARED_EPH, U), t.new_pool(SHARED_EPH, U), t.put(0, 1, 0, page(1)),
             t.destroy(1), t.get(0, 1, 0)[0], t.get(1, 1, 0)[0], t.destroy(0), t.destroy(1))
    return steps, t.list()[1], _gkeys(host, "Ec", "Pc", "Oc", "Fc")


def _owner_drops_joiner_of_three(host, g):
    """Slots 0 (creator), 1 and 2 (joins): destroying slot 1 clears slots 1 and 0, destroys
    every object the client used last (GET -1001 through slot 2) and moves ownership to slot 2,
    which P= shows as PI."""
    t = g[0]
    steps = (tuple(t.new_pool(SHARED_EPH, U) for _ in range(3)), t.put(0, 1, 0, page(1)),
             t.put(0, 2, 0, page(2)), t.destroy(1), t.get(0, 1, 0)[0], t.get(2, 1, 0)[0],
             t.destroy(0))
    listed = t.list()[1]
    return steps, listed, t.destroy(2), t.list()[1]


def _creator_leaves_joiner_stays(host, g):
    """dom0 creates, the guest joins and reads object 2 (marking it); dom0 destroys its slot:
    object 1 (marked by dom0) goes, object 2 leaks; LIST prints the stale pool (PT:EP, zero
    counters, SC of the joiner) and the joiner's P= line; the joiner's GET gives -1001."""
    d0, d1 = g
    steps = (d0.new_pool(SHARED_EPH, U), d1.new_pool(SHARED_EPH, U), d0.put(0, 1, 0, page(1)),
             d0.put(0, 2, 0, page(2)), d1.get(0, 2, 0)[0], d0.destroy(0), d1.get(0, 2, 0)[0])
    rc, text = d0.list(use_long=True)
    lines = [ln for ln in text.splitlines() if ln.startswith(("S=", "P="))]
    return (steps, rc, [ln[:2] for ln in text.splitlines()], lines,
            _gkeys(host, "Tt", "Te", "Ec", "Pc", "Oc", "Fc", "Ta"))


def _last_sharer_leaves(how):
    """dom0 creates, the guest joins and reads object 2; the guest leaves (DESTROY_POOL or
    death): the pool goes with dom0's slot; object 2 (the guest's) is destroyed, object 1 is
    leaked: still counted in G= Ec/Pc/Oc/Fc and dom0's Ec, not on the free list (Ta 1)."""
    def run(host, g):
        d0, d1 = g
        steps = (d0.new_pool(SHARED_EPH, U), d1.new_pool(SHARED_EPH, U),
                 d0.put(0, 1, 0, page(1)), d0.put(0, 2, 0, page(2)), d1.get(0, 2, 0)[0])
        if how == "destroy":
            steps += (d1.destroy(0),)
        else:
            host.destroy_domain(d1.domid)
        steps += (d0.get(0, 1, 0)[0], d0.destroy(0))
        lines = [ln for ln in d0.list(use_long=True)[1].splitlines()]
        return (steps, [ln[:2] for ln in lines], _gkeys(host, "Ec", "Pc", "Oc", "Fc", "Ta"),
                host.tmem.clients[0].eph_count)
    return run


ZEROS = ("Pc:0,Pm:0,Oc:0,Om:0,Nc:0,Nm:0,ps:0,pt:0,pd:0,pr:0,px:0,gs:0,gt:0,fs:0,ft:0,os:0,"
         "ot:0")

PEAKS_POOL = {"CI": 0, "PI": 1, "PT": "PP", "U0": 0, "U1": 0, "Pc": 0, "Pm": 1, "Oc": 0,
              "Om": 1, "Nc": 0, "Nm": 2, "ps": 0, "pt": 1, "pd": 0, "pr": 0, "px": 1, "gs": 0,
              "gt": 0, "fs": 0, "ft": 0, "os": 0, "ot": 0}

SHARED_45_RULES = [
    ("owner_drops_joiner_slot_clears_both_4_5", ("4.5",), _owner_drops_joiner_slot,
     # Ta: the pool's frame and, once the pool is gone, its metadata page (§9.4)
     ((0, 1, 1, 1, -19, -19, 0, 0), "\n".join([G45.format(9, 2, 2), C45, "T", ""]),
      (0, 0, 0, 0))),
    ("owner_drops_joiner_of_three_moves_ownership_4_5", ("4.5",), _owner_drops_joiner_of_three,
     (((0, 1, 2), 1, 1, 1, -19, -1001, 0),
      "\n".join([G45.format(10, 2, 3), f"{S45},SC:0", C45,
                 f"P=CI:0,PI:2,PT:ES,U0:{U[0]:x},U1:{U[1]:x}", "T", ""]),
      1, "\n".join([G45.format(12, 2, 3), C45, "T", ""]))),
    ("creator_leaves_joiner_stays_stale_list_4_5", ("4.5",), _creator_leaves_joiner_stays,
     ((0, 0, 1, 1, 1, 1, -1001), 0, ["G=", "S=", "C=", "C=", "P=", "T"],
      [f"S=SI:0,PT:EP,U0:{U[0]:x},U1:{U[1]:x},SC:1,{ZEROS}",
       f"P=CI:1,PI:0,PT:EP,U0:0,U1:0,{ZEROS}"],
      (8, 1, 1, 1, 1, 1, 1))),
    ("last_sharer_destroy_leaks_the_rest_4_5", ("4.5",), _last_sharer_leaves("destroy"),
     ((0, 0, 1, 1, 1, 1, -19, 0), ["G=", "C=", "C=", "T"], (1, 1, 1, 1, 1), 1)),
    ("last_sharer_death_leaks_the_rest_4_5", ("4.5",), _last_sharer_leaves("death"),
     ((0, 0, 1, 1, 1, -19, 0), ["G=", "C=", "T"], (1, 1, 1, 1, 1), 1)),
]


# --- §9.4 counters (every release) ----------------------------------------------------------------

def _keys(line: str) -> dict[str, int | str]:
    pairs = (kv.split(":") for kv in line[2:].split(","))
    return {k: int(v) if v.isdigit() else v for k, v in pairs}


def _c(host, domid: int, *keys: str):
    line = next(ln for ln in host.tmem_list(domid, long=True).splitlines()
                if ln.startswith("C="))
    got = _keys(line)
    return tuple(got[k] for k in keys)


def _dup_persistent_put_counts_pp(host, g):
    t = g[0]
    p = t.new_pool(PRIV_PERS)
    return (t.put(p, 1, 0, page(1)), t.put(p, 1, 0, page(2)), t.put(p, 1, 1, page(3)),
            _c(host, 0, "Pp"), _stat(host, "ps"), _stat(host, "pr"))


def _gets_credited_to_owner(host, g):
    """A guest's GET hit in a dom0-owned shared pool raises dom0's Ge, not the guest's."""
    d0, d1 = g
    for d in g:
        if host.version.minor >= 9:
            d0.auth(d.domid, U)
    s0, s1 = d0.new_pool(SHARED_EPH, U), d1.new_pool(SHARED_EPH, U)
    d0.put(s0, 1, 0, page(1))
    d0.put(s0, 1, 1, page(2))
    return (d1.get(s1, 1, 0)[0], d1.get(s1, 1, 1)[0], d0.get(s0, 1, 1)[0],
            _c(host, 0, "Ge"), _c(host, d1.domid, "Ge"))


def _transfer_leaves_em(host, g):
    """The guest creates and fills a shared pool, dom0 joins and reads one object; the guest
    leaves: its objects go, dom0 owns the pool and counts its page in Ec, its Em stays 0."""
    d0, d1 = g
    for d in g:
        if host.version.minor >= 9:
            d0.auth(d.domid, U)
    s1, s0 = d1.new_pool(SHARED_EPH, U), d0.new_pool(SHARED_EPH, U)
    for i in range(3):
        d1.put(s1, i, 0, page(i))
    hit = d0.get(s0, 2, 0)[0]
    return hit, d1.destroy(s1), _c(host, 0, "Ec", "Em"), _g(host, "Ec"), d0.get(s0, 2, 0)[0]


def _radix_nodes(host, g):
    """Three one-page objects at index 0 need no node; {0, 1, 2^32-1}, {0}, {0}, {5} need 12;
    deleting shrinks the trees at once while Nm keeps the peak."""
    t = g[0]
    p = t.new_pool(PRIV_PERS)
    for oid in (2, 3, 4):
        t.put(p, oid, 0, page(oid))
    three = _stat(host, "Nc"), _g(host, "Nc")
    t.flush(p, 4, 0)
    for index in (0, 1, 2**32 - 1):
        t.put(p, 1, index, page(index & 7))
    t.put(p, 4, 5, page(4))
    twelve = _stat(host, "Nc"), _g(host, "Nc")
    t.flush(p, 1, 2**32 - 1)
    two = _stat(host, "Nc")
    t.flush(p, 1, 1)
    line = next(ln for ln in host.tmem_list(0, long=True).splitlines() if ln.startswith("P="))
    return three, twelve, two, line, _gkeys(host, "Nc", "Nm")


def _peaks_at_allocation(host, g):
    """Nm, Fm (and Pm, Om) are peaks raised when a node, frame, descriptor or object is
    allocated, not sampled at LIST; a PUT whose copy fails raises them too (its frame lands on
    tmem's free list)."""
    t = g[0]
    p = t.new_pool(PRIV_EPH)
    for i in range(100):
        t.put(p, 1, i, page(i))
    t.flush_object(p, 1)
    after_flush = _gkeys(host, "Nc", "Nm", "Fc", "Fm", "Pc", "Pm", "Oc", "Om", "Ta")
    q = t.new_pool(PRIV_PERS)
    bad = t.put(q, 9, 70, page(1), cmfn=0)  # index 70: a root and a leaf node
    line = next(ln for ln in host.tmem_list(0, long=True).splitlines()
                if ln.startswith("P=CI:0,PI:1,"))
    return after_flush, bad, _keys(line), _gkeys(host, "Cf", "Fm", "Ta")


def _cp_cb_current(host, g):
    """cp/cb are the compressed pages and bytes now: flushes, destructive GETs and
    replacements take theirs away."""
    from xentmem.emulator._codec import compress_page

    size = [len(compress_page(text_page(i))) for i in range(4)]
    t = g[0]
    e, p = t.new_pool(PRIV_EPH), t.new_pool(PRIV_PERS)
    t.put(e, 1, 0, text_page(0))
    t.put(p, 1, 0, text_page(1))
    t.put(p, 1, 1, text_page(2))
    out = [_c(host, 0, "cp", "cb") == (3, size[0] + size[1] + size[2])]
    t.get(e, 1, 0)
    out.append(_c(host, 0, "cp", "cb") == (2, size[1] + size[2]))
    t.flush(p, 1, 1)
    out.append(_c(host, 0, "cp", "cb") == (1, size[1]))
    t.put(p, 1, 0, text_page(3))
    out.append(_c(host, 0, "cp", "cb") == (1, size[3]))
    t.put(p, 1, 0, page(5))  # the duplicate of a compressed page that does not compress
    return out, _c(host, 0, "cp", "cb", "cn")


def _failed_get_leaks_pc(host, g):
    """A private-ephemeral GET into a bad frame removes the page from its object but frees
    nothing: the pool's Pc keeps it (a later GET misses rather than -EEMPTY), the object
    stays empty (Oc), G= Ec/Pc/Fc and the client's Ec keep it, also once the object goes."""
    t = g[0]
    p = t.new_pool(PRIV_EPH)
    t.put(p, 1, 3, page(1))
    failed = t.get(p, 1, 3, cmfn=0)[0]
    pool_now = _stat(host, "Pc"), _stat(host, "Oc"), _stat(host, "Nc")
    again = t.get(p, 1, 3)[0], t.get(p, 2, 0)[0]
    keys = ("Ec", "Pc", "Fc", "Oc", "Nc", "Ta")
    before = _gkeys(host, *keys), _c(host, 0, "Ec")
    t.flush_object(p, 1)
    return (failed, pool_now, again, before, _gkeys(host, *keys), _stat(host, "Pc"),
            _stat(host, "Oc"))


COUNTER_RULES = [
    ("dup_persistent_put_counts_pp", "*", _dup_persistent_put_counts_pp,
     (1, 1, 1, (3,), 3, 1)),
    ("gets_credited_to_pool_owner", "*", _gets_credited_to_owner, (1, 1, 1, (3,), (0,))),
    ("ownership_transfer_leaves_em", ("4.1", "4.12"), _transfer_leaves_em,
     (1, 1, (1, 0), 1, 1)),
    ("radix_nodes_minimal_tree", "*", _radix_nodes,
     ((0, 0), (12, 12), 2,
      "P=CI:0,PI:0,PT:PP,U0:0,U1:0,Pc:4,Pm:6,Oc:4,Om:4,Nc:1,Nm:12,ps:7,pt:7,pd:0,pr:0,px:0,"
      "gs:0,gt:0,fs:3,ft:3,os:0,ot:0", (1, 12))),
    # Ta after the flush: the frames and the metadata pages, once the last object is gone
    # (§9.4: 100 descriptors, 2 radix nodes and an object take 4 pages, 3 with 4.8+'s)
    ("nm_fm_pm_om_peaks_at_allocation", "*", _peaks_at_allocation,
     {v: ((0, 3, 0, 100, 0, 100, 0, 1, ta), -14, PEAKS_POOL, (1, 100, ta))
      for v, ta in (("4.1", 104), ("4.5", 104), ("4.12", 103))}),
    ("failed_ephemeral_get_leaks_pc", ("4.5", "4.12"), _failed_get_leaks_pc,
     (-14, (1, 1, 0), (0, 0), ((1, 1, 1, 1, 0, 0), (1,)), (1, 1, 1, 0, 0, 0), 1, 0)),
    ("failed_ephemeral_get_keeps_page_on_4_1", ("4.1",), _failed_get_leaks_pc,
     (-14, (1, 1, 1), (1, -1001), ((0, 0, 0, 0, 0, 2), (0,)), (0, 0, 0, 0, 0, 2), 0, 0)),
]


def _compressing(fn):
    """The same scenario on a host booted with `tmem_compress`."""
    def run(host, g):
        return fn(host, g)
    run.compress = True
    return run


def _one_byte_page_is_44_bytes(host, g):
    """lzo1x_1 packs a page of one repeated byte into 44 bytes; a page that does not shrink
    below a sub-page allocation is stored raw and counted in `cn` (§3.7)."""
    t = g[0]
    p = t.new_pool(PRIV_PERS)
    t.put(p, 1, 0, b"\xab" * PAGE_SIZE)
    first = _c(host, 0, "cp", "cb", "cn")
    t.put(p, 1, 1, page(1))
    return first, _c(host, 0, "cp", "cb", "cn")


COMPRESS_RULES = [
    ("cp_cb_are_current_values", "*", _compressing(_cp_cb_current),
     ([True, True, True, True], (0, 0, 0))),
    ("lzo1x_1_one_byte_page_cb_44", ("4.5", "4.12"), _compressing(_one_byte_page_is_44_bytes),
     ((1, 44, 0), (1, 44, 1))),
]


# --- §9.4 LIST and GET_POOLS lengths --------------------------------------------------------------

def _list_kinds(host, g, length: int, use_long: bool, *, guest: bool = False):
    """LIST of all clients into ``length`` bytes: the records written, by kind, and the
    lines other than G= (whose Tt counts the LIST itself on <= 4.5)."""
    d0 = g[0]
    if host.version.minor >= 9:
        d0.auth(0, U)
    d0.new_pool(PRIV_PERS)
    s = d0.new_pool(SHARED_EPH, U)
    d0.put(s, 1, 0, page(1))
    if guest:
        g[1].new_pool(PRIV_EPH)
    full = host.tmem_list(long=use_long).split("\n")[:-2]  # xl's newline after the text
    rc, text = d0.list(length=length, use_long=use_long)
    lines = text.splitlines()
    return rc, [ln[0] for ln in lines], [ln for ln in lines if ln[0] != "G"] == [
        ln for ln in full if ln[0] != "G" and ln in lines]


LIST_RULES = [
    # 200 bytes hold the long G= line; the S= record no longer fits what remains; the C=
    # line goes out unchecked past the length, the P= line does not fit, and the length
    # left wraps below zero, so T fits
    ("list_len_200_long_g_c_t", "*", lambda h, g: _list_kinds(h, g, 200, True),
     (0, ["G", "C", "T"], True)),
    # nothing fits 0 bytes but the unchecked C= line; after it the remaining length wraps:
    # the next client's C= and P= lines and T all fit
    ("list_len_0_c_then_t", "*", lambda h, g: _list_kinds(h, g, 0, False),
     (0, ["C", "T"], True)),
    ("list_len_0_wraps_after_first_client", "*",
     lambda h, g: _list_kinds(h, g, 0, False, guest=True), (0, ["C", "C", "P", "T"], True)),
    ("list_len_0_one_client_c_only", "*",
     lambda h, g: (g[0].new_pool(PRIV_PERS), g[0].list(0, length=0)[1].count("\n")), (0, 1)),
]


# --- §9.4 save / restore paths -------------------------------------------------------------------

H = abi.TMEM_HANDLE
NEXT = 4096 + H.size


def _saving(host, g, pages, *, live: int = 0):
    """The guest's persistent pool holding ``pages`` (index -> content), saved by dom0."""
    d0, d1 = g
    p = d1.new_pool(PRIV_PERS)
    for index, data in pages.items():
        d1.put(p, 7, index, data)
    begun = d0.ctl("SAVE_BEGIN", d1.domid, **d0.value_arg(live))
    return d0, d1, p, begun


def _next_page(d0, d1, p, buf=None):
    d0.out.write(bytes(NEXT))
    rc = d0.ctl("SAVE_GET_NEXT_PAGE", d1.domid, pool_id=p, arg1=NEXT, buf=buf)
    index = H.unpack(d0.out.read(H.size))[1]
    return rc, index, d0.out.read(4096, H.size) == text_page(index)


def _next_page_cursor(host, g):
    """SAVE_GET_NEXT_PAGE skips the first page, returns -1 once its cursor is on the last
    page and keeps it there; after SAVE_END and a new PUT the next save continues with the
    page appended after the cursor. Each call that reaches a page is a GET (gt, gs, Gp)."""
    d0, d1, p, _ = _saving(host, g, {i: text_page(i) for i in range(3)})
    first = [_next_page(d0, d1, p) for _ in range(4)]
    d0.ctl("SAVE_END", d1.domid)
    d1.put(p, 7, 3, text_page(3))
    d0.ctl("SAVE_BEGIN", d1.domid, **d0.value_arg(0))
    second = [_next_page(d0, d1, p) for _ in range(2)]
    return (first, second, _stat(host, "gt", d1.domid), _stat(host, "gs", d1.domid),
            _c(host, d1.domid, "Gp"))


def _next_page_null_and_raw(host, g):
    """A NULL buffer fails the handle copy first (-14; the cursor has moved); a page stored
    uncompressed cannot be copied into a buffer (-22, counted in Cf and as a GET)."""
    pages = {0: text_page(0), 1: text_page(1), 2: page(2), 3: text_page(3)}
    d0, d1, p, _ = _saving(host, g, pages)
    cf = _g(host, "Cf")
    out = (d0.ctl("SAVE_GET_NEXT_PAGE", d1.domid, pool_id=p, arg1=NEXT, buf=0),
           _next_page(d0, d1, p)[:2], _next_page(d0, d1, p)[0])
    return out, _g(host, "Cf") - cf, _stat(host, "gt", d1.domid), _stat(host, "gs", d1.domid)


def _next_inv(host, g):
    """SAVE_GET_NEXT_INV: 0 with no client and for a buffer under 32 bytes; in a live save
    only the page invalidated while it was the save cursor reports a heap pointer in
    oid[0]; after the last entry 0, then the list again from its start."""
    d0, d1 = g
    nothing = d0.ctl("SAVE_GET_NEXT_INV", d1.domid, arg1=32)
    d0, d1, p, _ = _saving(host, g, {i: text_page(i) for i in range(4)}, live=1)
    _next_page(d0, d1, p)  # the cursor is on index 1
    d1.flush(p, 7, 1)
    d1.flush(p, 7, 3)
    short = d0.ctl("SAVE_GET_NEXT_INV", d1.domid, arg1=31)
    got = []
    for _ in range(4):
        rc = d0.ctl("SAVE_GET_NEXT_INV", d1.domid, arg1=32)
        _, index, o0, _, _ = H.unpack(d0.out.read(H.size))
        got.append((rc, index, "pointer" if o0 >= 1 << 63 else o0) if rc == 1 else rc)
    return nothing, short, got


def _restore_put(host, g):
    """RESTORE_PUT_PAGE is an ordinary PUT from the buffer: a compressible page with
    compression on is stored (1, new or duplicate) and GETs back; a page that does not
    compress fails the copy (-22: Cf, px, the peaks, cn); a NULL buffer -14; a length other
    than 4096 -22."""
    d0 = g[0]
    dom = host.create_domain("restored", 16, 32)
    if host.version.minor >= 9:
        d0.ctl("RESTORE_BEGIN", dom)
        d0.out.write(abi.XEN_TMEM_CLIENT.pack(1, 16, 0, 2, 0))
        d0.ctl("SET_CLIENT_INFO", dom)
        d0.out.write(abi.XEN_TMEM_POOL_INFO.pack(PRIV_PERS, 2, 0, 0, 0))
        d0.ctl("SET_POOLS", dom, arg1=32)
    else:
        d0.ctl("RESTORE_BEGIN", dom)
        d0.ctl("SET_COMPRESS", dom, arg1=1)
        d0.op(C.TMEM_RESTORE_NEW, 2, flags=PRIV_PERS, arg1=dom)

    def restore(data, index, length=4096, buf=None):
        d0.out.write(data)
        return d0.ctl("RESTORE_PUT_PAGE", dom, pool_id=2, oid=(5, 0, 0), arg1=length,
                      arg2=index, buf=buf)

    cf = _g(host, "Cf")
    rcs = (restore(text_page(1), 0), restore(text_page(2), 0), restore(page(3), 1),
           restore(text_page(4), 2, buf=0), restore(text_page(4), 2, length=4095))
    from .driver import Guest
    back = Guest(host, dom).get(2, 5, 0)
    return (rcs, back == (1, text_page(2)), _g(host, "Cf") - cf,
            _stat(host, "pt", dom, 2), _stat(host, "px", dom, 2), _stat(host, "Pm", dom, 2),
            _c(host, dom, "cn", "Pp"))


SAVE_RULES = [
    ("save_next_page_cursor_and_end", ("4.5", "4.12"), _compressing(_next_page_cursor),
     ([(1, 1, True), (1, 2, True), (-1, 0, False), (-1, 0, False)],
      [(1, 3, True), (-1, 0, False)], 3, 3, (3,))),
    ("save_next_page_null_buffer_and_raw_page", ("4.5", "4.12"),
     _compressing(_next_page_null_and_raw), ((-14, (-22, 2), 1), 1, 2, 1)),
    ("save_next_inv", ("4.5", "4.12"), _compressing(_next_inv),
     (0, 0, [(1, 1, "pointer"), (1, 3, 7), 0, (1, 1, "pointer")])),
    ("restore_put_page_is_a_put", ("4.5", "4.12"), _restore_put,
     ((1, 1, -22, -14, -22), True, 2, 4, 2, 2, (1, 2))),
]


# --- §2.3/§2.4/§9 control plane ------------------------------------------------------------------

def _sysctl_checks(host, g):
    t = g[0]
    raw = abi.pack_sysctl_tmem_op(host.version, 1, cli_id=ALL, interface_version=0x11)
    t.opbuf.write(raw)
    bad_iv = host.hypercall(0, 35, t.opbuf.address)
    pad = t.ctl("FREEZE", ALL, pad=1)
    t.opbuf.write(abi.pack_sysctl_tmem_op(host.version, 25, cli_id=ALL))
    unassigned = host.hypercall(0, 35, t.opbuf.address)
    g[1].out.write(b"\x55" * 64)
    domu = g[1].ctl("LIST", ALL, arg1=64)
    untouched = g[1].out.read(64) == b"\x55" * 64
    return bad_iv, pad, unassigned, domu, untouched, host.hypercall(0, 35, 0)


def _client_info(host, g):
    t = g[0]
    t.out.write(bytes(20))
    before = t.ctl("GET_CLIENT_INFO", 0), abi.XEN_TMEM_CLIENT.unpack(t.out.read(20))
    t.out.write(abi.XEN_TMEM_CLIENT.pack(1, 16, 0, 2, 7))
    missing = t.ctl("SET_CLIENT_INFO", 0)
    t.new_pool()
    t.out.write(abi.XEN_TMEM_CLIENT.pack(2, 16, 0, 2, 7))
    bad_version = t.ctl("SET_CLIENT_INFO", 0)
    t.out.write(abi.XEN_TMEM_CLIENT.pack(1, 17, 0, 2, 7))
    bad_max = t.ctl("SET_CLIENT_INFO", 0)
    t.out.write(abi.XEN_TMEM_CLIENT.pack(1, 16, 0, 1 | 2 | 4, 7))
    ok = t.ctl("SET_CLIENT_INFO", 0)
    t.ctl("GET_CLIENT_INFO", 0)
    after = abi.XEN_TMEM_CLIENT.unpack(t.out.read(20))
    return before, missing, bad_version, bad_max, ok, after


def _get_pools(host, g):
    t = g[0]
    none = t.ctl("GET_POOLS", 0, arg1=32)
    t.new_pool(PRIV_PERS)
    t.new_pool(PRIV_EPH)
    zero = t.ctl("GET_POOLS", 0, arg1=0)
    one = t.ctl("GET_POOLS", 0, arg1=32)
    return (none, zero, one, t.ctl("GET_POOLS", ALL, arg1=32), t.ctl("GET_POOLS", 0, arg1=544),
            t.ctl("GET_POOLS", 0, arg1=33), t.ctl("GET_POOLS", 0, arg1=64))


def _control_45(host, g):
    t = g[0]
    before = (t.ctl("FREEZE", 0), t.ctl("SAVE_GET_VERSION", 0), t.ctl("SAVE_GET_MAXPOOLS", 0),
              t.ctl("SAVE_BEGIN", 0), t.ctl("SAVE_END", 0))
    p = t.new_pool(PRIV_PERS)
    t.ctl("SET_WEIGHT", 0, arg1=0xFFFFFFFF)
    t.ctl("SET_CAP", 0, arg1=5)
    t.ctl("SET_COMPRESS", 0, arg1=7)
    after = (t.ctl("SAVE_GET_CLIENT_WEIGHT", 0), t.ctl("SAVE_GET_CLIENT_CAP", 0),
             t.ctl("SAVE_GET_CLIENT_FLAGS", 0), t.ctl("SAVE_GET_POOL_FLAGS", 0, pool_id=p),
             t.ctl("SAVE_GET_POOL_FLAGS", 0, pool_id=3), t.ctl("SAVE_GET_POOL_UUID", 0, buf=0),
             t.ctl("RESTORE_BEGIN", 0), t.ctl("RESTORE_BEGIN", 42))
    cline = t.list(0)[1].splitlines()[0]
    return before, after, cline


def _restore_new_45(host, g):
    t = g[0]
    t.new_pool()
    return (t.op(C.TMEM_RESTORE_NEW, 0, flags=PRIV_PERS, arg1=0),
            t.op(C.TMEM_RESTORE_NEW, 5, flags=PRIV_PERS, arg1=0),
            t.op(C.TMEM_RESTORE_NEW, 16, flags=PRIV_PERS, arg1=0),
            t.op(C.TMEM_RESTORE_NEW, 6, flags=0x02000001, arg1=0),
            t.op(C.TMEM_RESTORE_NEW, 9, flags=PRIV_PERS, arg1=ALL),
            t.op(C.TMEM_RESTORE_NEW, 3, flags=PRIV_PERS, arg1=42))


def _no_tmem_boot(host, g):
    t = g[0]
    rc, text = t.list()
    return t.new_pool(), t.op(C.TMEM_PUT_PAGE, 0), rc, text


CONTROL_RULES = [
    ("sysctl_iv_pad_unassigned_privilege", ("4.12",), _sysctl_checks,
     (-13, -22, -1, -1, True, -14)),
    ("client_info_4_12", ("4.12",), _client_info,
     ((0, (1, 16, 0, 0, 0)), -2, -95, -34, 0, (1, 16, 1, 2, 7))),
    # entries go out while idx < len/32, tested after each copy: max(1, len/32) (§9.4)
    ("get_pools_writes_at_least_one_on_4_12", ("4.12",),
     _get_pools, (-22, 1, 1, -22, -7, -22, 2)),
    ("control_plane_4_5", ("4.5",), _control_45,
     ((-1, 1, 16, 0, -1), (-2, 5, 1, 0x01000001, -1, -14, -1, -1),
      "C=CI:0,ww:-1,ca:5,co:1,fr:0,Tc:0,Ge:0,Pp:0,Gp:0")),
    ("restore_new_4_5", ("4.5",), _restore_new_45, (-1, 5, -1, -1, 1, -1)),
    ("tmem_control_privileged_from_4_3", ("4.1", "4.5"),
     lambda h, g: g[1].ctl("FREEZE", ALL), {"4.1": 0, "4.5": -1}),
    ("sysctl_from_domu_eperm", ("4.12",), lambda h, g: g[1].ctl("FREEZE", ALL), -1),
]


def _designed(fn):
    """The same scenario on a host built with ``designed=True``."""
    def run(host, g):
        return fn(host, g)
    run.designed = True
    return run


DESIGNED_RULES = [
    ("designed_get_pools_respects_length", ("4.12",),
     _designed(_get_pools), (-22, 0, 1, -22, -7, -22, 2)),
    ("designed_private_ephemeral_bad_frame_keeps_page", ("4.12",),
     _designed(_pool_then(PRIV_EPH, lambda h, g, p: (
         g[0].put(p, 1, 0, page(1)), g[0].get(p, 1, 0, cmfn=0)[0], g[0].get(p, 1, 0)[0]))),
     (1, -14, 1)),
]

ALL_RULES = POOL_RULES + FREEZE_RULES + MEMORY_RULES + SHARED_RULES + SHARED_45_RULES \
    + COUNTER_RULES + COMPRESS_RULES + LIST_RULES + SAVE_RULES + CONTROL_RULES \
    + DESIGNED_RULES


def _cases():
    for name, versions, fn, expected in ALL_RULES:
        for v in ("4.1", "4.5", "4.12") if versions == "*" else versions:
            want = expected[v] if isinstance(expected, dict) else expected
            yield pytest.param(v, fn, want, id=f"{name}-{v}")


@pytest.mark.parametrize(("version", "scenario", "expected"), list(_cases()))
def test_rule(version, scenario, expected):
    host, guests = make(version, memory_mb=256, guests=1,
                        designed=getattr(scenario, "designed", False),
                        tmem_compress=getattr(scenario, "compress", False))
    assert scenario(host, guests) == expected


def test_no_tmem_boot_option():
    """Without `tmem` every tmem_op is -ENODEV but the 4.12 sysctl still answers (§9.1)."""
    host, g = make("4.12", tmem=False)
    assert _no_tmem_boot(host, g) == (
        -19, -19, 0, "G=Tt:0,Te:0,Cf:0,Af:0,Pf:0,Ta:0,Lm:0,Et:0,Ea:0,Rt:0,Ra:0,Rx:0,Fp:0\nT\n")
    host, g = make("4.5", tmem=False)
    assert (g[0].new_pool(), g[0].ctl("QUERY_FREEABLE_MB")) == (-19, -19)


def test_tmem_compress_boot_option_sets_new_clients():
    _host, g = make("4.12", tmem_compress=True)
    g[0].new_pool()
    assert ",co:1," in g[0].list(0)[1]


def test_absent_hypercall_on_4_13():
    """Xen 4.13 removed tmem: slot 38 answers -ENOSYS (§3.8)."""
    host, g = make("4.13")
    g[0].opbuf.write(abi.pack_sysctl_tmem_op(abi.XenVersion(4, 12), 1, cli_id=ALL,
                                             interface_version=0x13))
    assert (g[0].new_pool(), host.hypercall(0, 35, g[0].opbuf.address)) == (-38, -38)


def test_weights_steer_eviction():
    """Literal over_quota (§3.5, §9.3): a domU with a small share and a positive weight evicts
    its own pages; with weight 0 it evicts dom0's oldest pages."""
    host, g = make("4.12", memory_mb=128, guests=1)
    d0, d1 = g
    tm = host.tmem
    p0, p1 = d0.new_pool(PRIV_EPH), d1.new_pool(PRIV_EPH)
    n = 0
    while tm.free_mb() >= 1 or n < 100:
        assert d0.put(p0, 1, n, page(n & 15)) == 1
        n += 1
        if tm.Et:
            break
    for i in range(n // 20):
        d1.put(p1, 1, i, page(i))
    tm.set_weight(tm.clients[0], 1)
    tm.set_weight(tm.clients[d1.domid], 1)
    assert tm.over_quota(tm.clients[d1.domid])
    own_before = tm.clients[d1.domid].eph_count
    dom0_before = tm.clients[0].eph_count
    for i in range(n // 20, n // 20 + 30):
        assert d1.put(p1, 1, i, page(i)) == 1
    assert tm.clients[0].eph_count == dom0_before  # dom0 untouched
    assert tm.clients[d1.domid].eph_count == own_before  # each PUT evicted one of its own
    tm.set_weight(tm.clients[d1.domid], 0)
    for i in range(n // 20 + 30, n // 20 + 60):
        assert d1.put(p1, 1, i, page(i)) == 1
    assert tm.clients[0].eph_count == dom0_before - 30
    assert tm.Et == tm.Ea


def test_shared_get_moves_to_young_end_duplicate_put_does_not():
    host, g = make("4.5", memory_mb=64)
    t = g[0]
    s = t.new_pool(SHARED_EPH, U)
    tm = host.tmem
    n = 0
    while not tm.Et:
        t.put(s, 1, n, page(n & 7))
        n += 1
        if n == 2:
            t.get(s, 1, 0)  # index 0 becomes young
            t.put(s, 1, 1, page(99))  # index 1 stays old
    assert t.get(s, 1, 0)[0] == 1
    assert t.get(s, 1, 1)[0] == 0


def test_text_pages_compress_and_count():
    _host, g = make("4.12", tmem_compress=True)
    t = g[0]
    p = t.new_pool(PRIV_PERS)
    assert t.put(p, 1, 0, text_page(1)) == 1
    assert t.put(p, 1, 1, page(1)) == 1
    assert t.get(p, 1, 0) == (1, text_page(1))
    assert t.get(p, 1, 1) == (1, page(1))
    cline = t.list(0, use_long=True)[1].splitlines()[0]
    keys = dict(kv.split(":") for kv in cline[2:].split(","))
    assert (keys["cp"], keys["cn"]) == ("1", "1")
    assert 0 < int(keys["cb"]) < 4096


def test_heap_exhaustion_sequence_4_12():
    """§9.1: persistent PUTs exhaust Xen's heap, then -12 with 10 eviction attempts each;
    ephemeral PUTs fail too; NEW_POOL still works; once pages are freed each ephemeral PUT
    evicts the previous ephemeral page."""
    host, g = make("4.12", memory_mb=32, dom0_memory_mb=8, dom0_max_memory_mb=1024)
    t = g[0]
    p = t.new_pool(PRIV_PERS)
    n = 0
    while (rc := t.put(p, 1, n, page(n & 7))) == 1:
        n += 1
    assert rc == -12 and host.tmem.free_mb() == 0
    ea = _g(host, "Ea")
    assert t.put(p, 1, n + 1, page(0)) == -12 and _g(host, "Ea") == ea + 10
    e = t.new_pool(PRIV_EPH)
    assert e == 1 and t.put(e, 2, 0, page(1)) == -12
    t.flush(p, 1, 0)
    t.flush(p, 1, 1)
    et = _g(host, "Et")
    assert [t.put(e, 2, i, page(i)) for i in range(4)] == [1, 1, 1, 1]
    # the two free pages: the first PUT's frame and its metadata page (§9.4); then one
    # eviction per PUT
    assert _g(host, "Et") == et + 3
    assert [t.get(e, 2, i)[0] for i in range(4)] == [0, 0, 0, 1]


@pytest.mark.parametrize("version", ["4.1", "4.12"])
def test_eviction_strictly_oldest_first(version):
    """§9.1: a single client's ephemeral PUTs past the threshold each evict the oldest page;
    every PUT returns 1 and Et = Ea."""
    host, (t,) = make(version, memory_mb=24, dom0_memory_mb=8)
    p = t.new_pool(PRIV_EPH)
    n = 6000
    assert all(t.put(p, 1, i, page(i & 7)) == 1 for i in range(n))
    gone = _g(host, "Et")
    assert 1000 < gone < n and gone == _g(host, "Ea")
    hits = [t.get(p, 1, i)[0] for i in range(n)]
    assert hits == [0] * gone + [1] * (n - gone)


def test_tmem_shared_auth_boot_option_on_4_5():
    """§9.2: booted with `tmem_shared_auth`, 4.5 needs TMEM_AUTH like 4.9+ always does."""
    _host, (t,) = make("4.5", tmem_shared_auth=True)
    assert t.new_pool(SHARED_EPH, U) == 0
    assert ",PT:EP," in t.list(0)[1]
    assert t.auth(0, U) == 1
    assert t.new_pool(SHARED_EPH, U) == 1
    assert f"P=CI:0,PI:1,PT:ES,U0:{U[0]:x},U1:{U[1]:x}" in t.list(0)[1]


def test_only_authorised_domain_owns_and_revocation_keeps_sharers():
    """§9.3: auth is checked at NEW_POOL only; an unauthorised request with the same uuid is
    private; revoking later does not cut an existing sharer off."""
    _host, (d0, d1) = make("4.12", guests=1)
    d0.auth(d1.domid, U)
    s1 = d1.new_pool(SHARED_EPH, U)
    p0 = d0.new_pool(SHARED_EPH, U)
    assert ",PT:EP," in d0.list(0)[1]  # dom0 unauthorised: private
    d0.auth(0, U)
    s0 = d0.new_pool(SHARED_EPH, U)
    assert d0.auth(0, U, enable=False) == 1
    d1.put(s1, 1, 0, page(1))
    assert d0.get(s0, 1, 0) == (1, page(1))
    assert d0.get(p0, 1, 0)[0] == -1001


@pytest.mark.parametrize(("version", "cap_key"), [("4.6", True), ("4.7", True), ("4.8", False),
                                                  ("4.9", False)])
def test_sysctl_releases_between(version, cap_key):
    """4.6-4.7 speak TMEMC numbers over sysctl (SET_WEIGHT 5, `ca` key listed); 4.8 renumbered
    5-7 as client/pool info, dropped `ca`; TMEM_AUTH stays a tmem_op up to 4.8."""
    _host, (t,) = make(version)
    t.new_pool(PRIV_PERS)
    if cap_key:
        assert t.ctl("SET_WEIGHT", 0, arg1=4) == 0
        assert t.ctl("SAVE_GET_CLIENT_WEIGHT", 0) == 4
    else:
        t.out.write(abi.XEN_TMEM_CLIENT.pack(1, 16, 0, 0, 4))
        assert t.ctl("SET_CLIENT_INFO", 0) == 0
    line = t.list(0)[1].splitlines()[0]
    assert line == ("C=CI:0,ww:4,ca:0,co:0,fr:0,Tc:0,Ge:0,Pp:0,Gp:0" if cap_key
                    else "C=CI:0,ww:4,co:0,fr:0,Tc:0,Ge:0,Pp:0,Gp:0")
    auth = t.op(C.TMEM_AUTH, 0, uuid=U, flags=1, arg1=0)
    assert auth == (-95 if version == "4.9" else 1)


# --- §9.4 memory: tmem's metadata takes pages; Xen keeps memory for itself ---------------------

@pytest.mark.parametrize(("version", "puts"), [("4.5", 434), ("4.12", 436)])
def test_persistent_metadata_charged_to_the_domain(version, puts):
    """§9.4: with 448 pages of headroom, 436 (4.12.4) / 434 (4.5.5) persistent PUTs succeed
    before -12; after that pool's DESTROY_POOL `Ta` is 448 (frames and metadata pages)."""
    host, (t,) = make(version, memory_mb=256)
    dom = host.domains[0]
    dom.max_pages = dom.tot_pages + 448
    p = t.new_pool(PRIV_PERS)
    n = 0
    while (rc := t.put(p, 1, n, page(n))) == 1:
        n += 1
    assert (n, rc) == (puts, -12)
    assert t.destroy(p) == 1 and _g(host, "Ta") == 448


@pytest.mark.slow
@pytest.mark.parametrize(("version", "settled", "freeable"),
                         [("4.5", 59602, 239), ("4.12", 59507, 238)])
def test_ephemeral_pool_settles_where_xen_did(version, settled, freeable):
    """§9.4 / §9.1: 512 MiB of RAM, dom0_mem=256M, continuous PUTs of one object: the pool
    settles at 59,507 (4.12.4) / 59,602 (4.5.5) pages, oldest first; FREEABLE reads 238 / 239."""
    from xentmem.emulator.transport import EmulatedHypervisor
    from xentmem.hypercalls.tmem import Tmem

    host = EmulatedHost(512, xen_version=version, dom0_memory_mb=256)
    t = Tmem(EmulatedHypervisor(host, 0), version=version)
    p = t.new_pool(persistent=False)
    for base in range(0, 66000, 1000):
        t.put_pages(p, [(1, i, page(i & 255)) for i in range(base, base + 1000)])
    assert (host.tmem.eph_count, _g(host, "Et")) == (settled, 66000 - settled)
    assert t.freeable_mb() == freeable


# --- §9.4 / §9.2 dedup and trailing-zero elimination (boot options of 4.0-4.7) ----------------

def _dedup_keys(host):
    return _gkeys(host, "Sc", "Sm", "Gd", "Zt", "Pc", "Ec", "Fc")


@pytest.mark.parametrize("version", ["4.5", "4.7"])
def test_dedup_set_compress_refused(version):
    """With tmem_dedup, SET_COMPRESS returns -1 for 0 and for 1 (compression is fixed)."""
    for dedup, expected in ((True, (-1, -1)), (False, (0, 0))):
        _host, (t,) = make(version, tmem_dedup=dedup)
        t.new_pool(PRIV_EPH)
        assert tuple(t.ctl("SET_COMPRESS", 0, **t.value_arg(v)) for v in (0, 1)) == expected


@pytest.mark.parametrize("version", ["4.1", "4.5", "4.7"])
def test_dedup_identical_ephemeral_pages_share_one_copy(version):
    """Identical ephemeral pages share one frame (`Gd` counts the PUTs that found their copy,
    `Sc`/`Sm` the copies); GETs return every page; the copy goes with its last page.
    Identical persistent pages are not shared."""
    host, (t,) = make(version, tmem_dedup=True)
    e = t.new_pool(PRIV_EPH)
    for i, seed in enumerate((1, 1, 1, 2)):
        assert t.put(e, 1, i, page(seed)) == 1
    stored = _dedup_keys(host)
    got = [t.get(e, 1, i) for i in range(4)]
    after = _dedup_keys(host)
    p = t.new_pool(PRIV_PERS)
    for i in range(2):
        t.put(p, 1, i, page(3))
    assert (stored, got, after, _gkeys(host, "Sc", "Gd", "Fc")) == (
        (2, 2, 2, 0, 4, 4, 2), [(1, page(s)) for s in (1, 1, 1, 2)], (0, 2, 2, 0, 0, 0, 0),
        (0, 2, 2))


def test_dedup_is_ignored_from_4_8():
    """4.8 deleted dedup: the boot option is unknown, pages are stored one by one."""
    host, (t,) = make("4.12", tmem_dedup=True, tmem_tze=True)
    e = t.new_pool(PRIV_EPH)
    for i in range(3):
        t.put(e, 1, i, page(1))
    assert _dedup_keys(host) == (0, 0, 0, 0, 3, 3, 3)


def test_dedup_compressed_pages_share_compressed_bytes():
    """dedup + compression: identical pages share one compressed copy (`Gz` its bytes);
    each page still counts in the client's `cp`/`cb`."""
    from xentmem.emulator._codec import compress_page

    size = len(compress_page(text_page(5)))
    host, (t,) = make("4.5", tmem_dedup=True, tmem_compress=True)
    e = t.new_pool(PRIV_EPH)
    for i in range(3):
        t.put(e, 1, i, text_page(5))
    client = next(ln for ln in t.list(0, use_long=True)[1].splitlines() if ln.startswith("C="))
    cp_cb = tuple(int(dict(kv.split(":") for kv in client[2:].split(","))[k])
                  for k in ("cp", "cb"))
    assert (_gkeys(host, "Sc", "Gd", "Gz", "Fc"), cp_cb, t.get(e, 1, 2)) == (
        (1, 2, size, 0), (3, 3 * size), (1, text_page(5)))


def test_tze_trims_trailing_zeros():
    """§9.2 (tmem_dedup tmem_tze on 4.5.5): `Zt` sums the lengths kept after trimming
    trailing zeros (4096 for a full page, 0 for a zero page); two identical trimmed pages
    are not merged; `Fc` stays at 1 after every page is gone (a zero page's frame is never
    freed). GETs return the pages whole."""
    host, (t,) = make("4.5", tmem_dedup=True, tmem_tze=True)
    e = t.new_pool(PRIV_EPH)
    short = page(7)[:1000] + bytes(PAGE_SIZE - 1000)  # 1000 bytes kept: 1000 rounded to 8
    pages = [page(1), bytes(PAGE_SIZE), short, short]
    for i, data in enumerate(pages):
        assert t.put(e, 1, i, data) == 1
    stored = _gkeys(host, "Sc", "Gd", "Zt", "Fc")
    got = [t.get(e, 1, i) for i in range(4)]
    assert (stored, got, _gkeys(host, "Sc", "Sm", "Zt", "Fc", "Ec")) == (
        (4, 0, 4096 + 0 + 1000 + 1000, 2), [(1, d) for d in pages], (0, 4, 0, 1, 0))


def test_tze_off_with_compression():
    """dedup + compression + tze: Xen turns tze off at boot (`Zt` stays 0)."""
    host, (t,) = make("4.5", tmem_dedup=True, tmem_tze=True, tmem_compress=True)
    e = t.new_pool(PRIV_EPH)
    t.put(e, 1, 0, page(1))  # incompressible: kept whole
    assert _gkeys(host, "Sc", "Zt", "Gz", "Fc") == (1, 0, 4096, 1)


def test_dedup_shared_page_gets_a_second_chance():
    """§3.5: with dedup, eviction passes over a page whose copy others share once (it moves
    to the young end; that attempt evicts nothing) and takes the next page."""
    host, (t,) = make("4.5", tmem_dedup=True)
    e = t.new_pool(PRIV_EPH)
    for i, seed in enumerate((1, 2, 1, 3)):
        t.put(e, 1, i, page(seed))
    tm = host.tmem
    assert [tm.evict(None), tm.evict(None)] == [False, True]
    assert [t.get(e, 1, i)[0] for i in range(4)] == [1, 0, 1, 1]
    assert _gkeys(host, "Ea", "Et") == (2, 1)


@pytest.mark.parametrize(("version", "pages"), [("4.5", 583 + 18), ("4.12", 583 + 16)])
def test_flush_returns_a_destroyed_pools_frames_and_metadata(version, pages):
    """§9.4: FLUSH after an ephemeral pool of 583 pages was destroyed returns its frames and
    its metadata pages. (A real host returned 2400 KiB, 17 metadata pages; one object of 583
    pages takes 16 pages of 4.8+'s descriptors, nodes and object, 18 of 4.5's.)"""
    host, (t,) = make(version)
    e = t.new_pool(PRIV_EPH)
    for i in range(583):
        t.put(e, 1, i, page(i))
    assert t.destroy(e) == 1 and _g(host, "Ta") == pages
    assert t.ctl("FLUSH", ALL, **t.value_arg(1 << 20)) == pages * 4 and _g(host, "Ta") == 0
