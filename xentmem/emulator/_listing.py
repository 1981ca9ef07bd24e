"""The ``tmem-list`` text (ref §4.2), record by record, per imitated release."""

from __future__ import annotations

from typing import TYPE_CHECKING

from xentmem.abi import TMEM_CLI_ID_NULL

if TYPE_CHECKING:
    from xentmem.emulator._behaviour import Behaviour
    from xentmem.emulator._tmem import Client, Pool, Tmem

_T_TAGS = "GPgpFOCcd"


def _pool_long(pool: Pool) -> str:
    return (f"Pc:{pool.npages},Pm:{pool.Pm},Oc:{len(pool.objs)},Om:{pool.Om},Nc:{pool.nodes},"
            f"Nm:{pool.Nm},ps:{pool.ps},pt:{pool.pt},pd:{pool.pd},pr:{pool.pr},px:{pool.px},"
            f"gs:{pool.gs},gt:{pool.gt},fs:{pool.fs},ft:{pool.ft},os:{pool.os},ot:{pool.ot}")


def _all_pools(tm: Tmem) -> list[Pool]:
    seen: dict[int, Pool] = {}
    for client in tm.clients.values():
        for pool in client.pools:
            if pool is not None and not pool.freed:
                seen.setdefault(id(pool), pool)
    return list(seen.values())


def _global(tm: Tmem, use_long: bool) -> str:
    text = (f"G=Tt:{tm.Tt},Te:{tm.Te},Cf:{tm.Cf},Af:{tm.Af},Pf:{tm.Pf},Ta:{tm.free_list},"
            f"Lm:{tm.Lm},Et:{tm.Et},Ea:{tm.Ea},Rt:{tm.Rt},Ra:{tm.Ra},Rx:{tm.Rx},Fp:{tm.Fp}")
    if not use_long:
        return text + "\n"
    return (text + f",Ec:{tm.eph_count},Em:{tm.Em},Oc:{tm.nobjs},Om:{tm.Om},Nc:{tm.nodes},"
            f"Nm:{tm.Nm},Pc:{tm.npages},Pm:{tm.Pm},Fc:{tm.raw_pages},Fm:{tm.Fm},Sc:{tm.Sc},"
            f"Sm:{tm.Sm},Ep:{tm.Ep},Gd:{tm.Gd},Zt:{tm.Zt},Gz:{tm.Gz}\n")


def _client(c: Client, b: Behaviour, use_long: bool) -> str:
    cap = f"ca:{c.cap}," if b.list_cap_key else ""
    text = (f"C=CI:{c.domid},ww:{c.weight},{cap}co:{int(c.compress)},fr:{int(c.frozen)},"
            f"Tc:0,Ge:{c.Ge},Pp:{c.Pp},Gp:{c.Gp}")
    if use_long:
        text += f",Ec:{c.eph_count},Em:{c.Em},cp:{c.cp},cb:{c.cb},cn:{c.cn},cm:{c.cm}"
    return text + "\n"


def _pool(c: Client, pool: Pool, use_long: bool) -> str:
    u0, u1 = pool.uuid if pool.shared else (0, 0)
    text = f"P=CI:{c.domid},PI:{pool.slot},PT:{pool.type_letters},U0:{u0:x},U1:{u1:x}"
    if use_long:
        text += "," + _pool_long(pool)
    return text + "\n"


def _t_line(tm: Tmem, b: Behaviour) -> str:
    if not b.list_full_t_line:
        return "T\n"
    pools = _all_pools(tm)
    gets = sum(p.gs for p in pools)
    puts = sum(p.ps for p in pools)
    counts = {
        "G": gets, "P": puts, "g": sum(p.gt - p.gs for p in pools),
        "p": sum(p.pt - p.ps for p in pools), "F": sum(p.ft for p in pools),
        "O": sum(p.ot for p in pools), "C": gets + puts,
        "c": sum(c.cp for c in tm.clients.values()), "d": 0,
    }
    # cycle counts are not modelled: total, max and min read 0
    return "T=" + ",".join(f"{t}n:{counts[t]},{t}t:0,{t}x:0,{t}m:0" for t in _T_TAGS) + "\n"


def records(tm: Tmem, b: Behaviour, cli_id: int, use_long: bool) -> list[tuple[str, str]] | None:
    """The records of ``tmem-list`` as ``(kind, text)``; None for an unknown client."""
    if cli_id != TMEM_CLI_ID_NULL:
        c = tm.clients.get(cli_id)
        if c is None:
            return None
        return [("C", _client(c, b, use_long)),
                *(("P", _pool(c, p, use_long)) for p in c.pools if p is not None)]
    out = [("G", _global(tm, use_long))]
    previous = None
    for gslot, pool in enumerate(tm.shared):
        if pool is None:  # a freed 4.5 pool still here prints as freed memory reads (§9.4)
            continue
        head = f"S=SI:{gslot},PT:{pool.type_letters},U0:{pool.uuid[0]:x},U1:{pool.uuid[1]:x}"
        tail = "".join(f",SC:{c.domid}" for c in pool.sharers)
        if use_long:
            tail += "," + _pool_long(pool)
        if previous is not None and b.bug_garbled_shared_list:
            head = previous[:len(head)]
        previous = head + tail + "\n"
        out.append(("S", previous))
    for c in tm.clients.values():
        out.append(("C", _client(c, b, use_long)))
        out.extend(("P", _pool(c, p, use_long)) for p in c.pools if p is not None)
    out.append(("T", _t_line(tm, b)))
    return out


def render(recs: list[tuple[str, str]], length: int, b: Behaviour) -> bytes:
    """The NUL-terminated bytes LIST writes for a buffer of ``length`` bytes (§4.2, §9.4).

    As ``tmemc_list`` is written: the `G=` record, the group of `S=` records, each client's
    `C=` record with its `P=` records, and `T` each get the length that remains (``len -
    off``, unsigned 32-bit); a record is dropped when it does not fit (the rest of its group
    with it), except `C=`, written unchecked, past the length, after which what remains
    wraps and everything fits. Designed: whole records that fit, in order."""
    out = bytearray()
    if not b.bug_list_remaining_length:
        for _, text in recs:
            data = text.encode()
            if len(out) + len(data) < length:
                out += data
        return bytes(out + b"\0") if len(out) < length else bytes(out)
    room = used = 0  # the length the current group was given (as Xen computes it), its use
    closed = False  # a record of the group did not fit: the rest of the group is dropped
    group = ""
    for kind, text in recs:
        data = text.encode()
        if kind == "C" or group != ("C" if kind == "P" else kind):  # G, the S group, C+P, T
            group = "C" if kind == "P" else kind
            room = (length - len(out)) & 0xFFFFFFFF
            used = 0
            closed = False
        if kind != "C" and (closed or used + len(data) >= room):
            closed = True
            continue
        out += data
        used += len(data)
    return bytes(out + b"\0") if out else b""
