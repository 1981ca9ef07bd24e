"""The tmem control plane: TMEM_CONTROL subops (<= 4.5), the sysctl tmem op (4.6+), and the
TMEM_AUTH / TMEM_RESTORE_NEW commands (<= 4.8) — ref §2.3, §2.4, §3.6, §3.9, §3.10, §9."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, NamedTuple

from xentmem.abi import (
    MAX_POOLS_PER_DOMAIN,
    PAGE_SIZE,
    TMEM_CLI_ID_NULL,
    TMEM_HANDLE,
    XEN_TMEM_CLIENT,
    XEN_TMEM_POOL_INFO,
    ClientInfoFlags,
    PoolFlags,
    PoolInfoFlags,
    SaveClientFlags,
    SysctlTmemOp,
    TmemcSubop,
    XenErrno,
)
from xentmem.emulator import _listing
from xentmem.emulator._tmem import HypervisorCrash

if TYPE_CHECKING:
    from xentmem.emulator._host import Domain, EmulatedHost
    from xentmem.emulator._tmem import Client, Pool

ALL = TMEM_CLI_ID_NULL
EPERM = -XenErrno.EPERM
ENOENT = -XenErrno.ENOENT
E2BIG = -XenErrno.E2BIG
ENOMEM = -XenErrno.ENOMEM
EFAULT = -XenErrno.EFAULT
EEXIST = -XenErrno.EEXIST
EINVAL = -XenErrno.EINVAL
ERANGE = -XenErrno.ERANGE
EOPNOTSUPP = -XenErrno.EOPNOTSUPP
_UUID = struct.Struct("<2Q")

_TMEMC = {int(op): op.name.removeprefix("TMEMC_") for op in TmemcSubop}
_SYSCTL48 = {int(op): op.name for op in SysctlTmemOp}
_V49_ONLY = {"SET_POOLS", "SET_AUTH"}


class Request(NamedTuple):
    """One control subop as decoded from TMEM_CONTROL or the sysctl."""

    dom: Domain  # the calling domain (its memory holds ``buf``)
    cli: int  # cli_id cut to 16 bits (0xFFFF: all clients)
    client: Client | None  # that client, if it exists
    pool_id: int
    arg1: int  # TMEM_CONTROL arg1 / sysctl len (a buffer's length)
    arg2: int  # TMEM_CONTROL arg2 / sysctl arg (an index, LIST's use_long)
    value: int  # FLUSH KiB, SAVE_BEGIN live, SET_* value: arg1 before 4.8, arg from 4.8
    oid: tuple[int, int, int]
    buf: int
    sysctl: bool


def _s32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


class Control:
    """Control operations on one host's tmem; results are Xen's return values."""

    def __init__(self, host: EmulatedHost) -> None:
        self.host = host
        # every subop name of every release, to the handler named after it
        self._subops = {name: getattr(self, f"subop_{name.lower()}")
                        for name in {*_TMEMC.values(), *_SYSCTL48.values()}}

    @property
    def tm(self):
        return self.host.tmem

    # ---- entry points -----------------------------------------------------------------------

    def tmem_control(self, dom: Domain, t: tuple[int, ...]) -> int:
        """TMEM_CONTROL (cmd 0, <= 4.5): ``t`` is the decoded ``u.ctrl`` struct."""
        _, pool_id, subop, cli_id, arg1, arg2, o0, o1, o2, buf = t
        name = _TMEMC.get(subop)
        if name is None:
            return EPERM
        return self._op(dom, name, pool_id, cli_id & 0xFFFF, arg1, arg2, arg1, (o0, o1, o2),
                        buf, sysctl=False)

    def sysctl(self, dom: Domain, f: tuple[int, ...]) -> int:
        """XEN_SYSCTL_tmem_op (4.6+): ``f`` is the decoded 136-byte ``xen_sysctl``."""
        _, _, tcmd, pool_id, cli_id, length, arg, pad, o0, o1, o2, buf = f
        if pad:
            return EINVAL
        b = self.host.behaviour
        name = (_SYSCTL48 if b.sysctl_v48 else _TMEMC).get(tcmd)
        if name is None or (name in _V49_ONLY and not b.sysctl_v49):
            return EPERM
        value = arg if b.sysctl_v48 else length
        return self._op(dom, name, pool_id, cli_id & 0xFFFF, length, arg, value, (o0, o1, o2),
                        buf, sysctl=True)

    def tmem_auth(self, dom: Domain, cli_arg: int, flags: int, uuid: tuple[int, int]) -> int:
        """TMEM_AUTH (cmd 101, <= 4.8; no privilege check in the code)."""
        tm = self.tm
        cli, enable = cli_arg & 0xFFFF, bool(flags & 0xFF)
        if cli == ALL:
            tm.auth_disabled = enable
            return 1
        client = tm.clients.get(cli)
        if client is None:
            return EINVAL
        return tm.auth(client, uuid, enable)

    def restore_new(self, dom: Domain, pool_id: int, cli_arg: int, flags: int,
                    uuid: tuple[int, int]) -> int:
        """TMEM_RESTORE_NEW (cmd 102, <= 4.8): create a pool in a given slot of a client."""
        tm = self.tm
        cli = cli_arg & 0xFFFF
        if cli == ALL:
            caller = tm.clients.get(dom.domid) or tm.create_client(dom)
            return tm.new_pool(caller, flags, uuid)
        client = tm.clients.get(cli)
        if client is None:
            return EPERM
        return tm.new_pool(client, flags, uuid, slot=pool_id)

    # ---- guest buffers ----------------------------------------------------------------------

    @staticmethod
    def _put(dom: Domain, buf: int, data: bytes) -> bool:
        return buf != 0 and dom.write(buf, data)

    # ---- the subops: one handler each, named after it ---------------------------------------

    def _op(self, dom: Domain, name: str, pool_id: int, cli: int, arg1: int, arg2: int,
            value: int, oid: tuple[int, int, int], buf: int, *, sysctl: bool) -> int:
        req = Request(dom, cli, self.tm.clients.get(cli), pool_id, arg1, arg2, value, oid, buf,
                      sysctl)
        return self._subops[name](req)

    def _set_frozen(self, r: Request, frozen: bool) -> int:
        """FREEZE / THAW / DESTROY (= thaw): existing clients only; -1 for a missing one."""
        if r.cli != ALL and r.client is None:
            return EPERM
        for c in list(self.tm.clients.values()) if r.cli == ALL else [r.client]:
            c.frozen = frozen  # type: ignore[union-attr]
        return 0

    def subop_freeze(self, r: Request) -> int:
        return self._set_frozen(r, True)

    def subop_thaw(self, r: Request) -> int:
        return self._set_frozen(r, False)

    def subop_destroy(self, r: Request) -> int:
        return self._set_frozen(r, False)

    def subop_flush(self, r: Request) -> int:
        """FLUSH: evict until the free list holds ``value`` KiB, give it all back to Xen;
        the KiB released. All clients only."""
        tm = self.tm
        if r.cli != ALL:
            return EPERM
        current = tm.clients.get(r.dom.domid)
        while tm.free_list * 4 < r.value and tm.evict(current):
            pass
        return tm.give_back_free_list() * 4

    def subop_list(self, r: Request) -> int:
        return self._list(r.dom, r.cli, r.buf, r.arg1, r.arg2 & 0xFF)

    def subop_query_freeable_mb(self, r: Request) -> int:
        return self.tm.freeable_pages() >> 8

    def _set_var(self, r: Request, apply) -> int:
        """SET_WEIGHT / SET_CAP / SET_COMPRESS (<= 4.7): 0, -1 without the client."""
        if r.cli != ALL and r.client is None:
            return EPERM
        for c in list(self.tm.clients.values()) if r.cli == ALL else [r.client]:
            apply(c)
        return 0

    def subop_set_weight(self, r: Request) -> int:
        return self._set_var(r, lambda c: self.tm.set_weight(c, _s32(r.value)))

    def subop_set_cap(self, r: Request) -> int:
        return self._set_var(r, lambda c: setattr(c, "cap", _s32(r.value)))

    def subop_set_compress(self, r: Request) -> int:
        if self.tm.dedup:  # "cannot be changed when tmem_dedup is enabled" (§9.2)
            return EPERM
        return self._set_var(r, lambda c: setattr(c, "compress", bool(r.value)))

    def subop_save_get_version(self, r: Request) -> int:
        return 1

    def subop_save_get_maxpools(self, r: Request) -> int:
        return MAX_POOLS_PER_DOMAIN

    def subop_restore_begin(self, r: Request) -> int:
        if r.client is not None:
            return EEXIST if r.sysctl else EPERM
        target = self.host.domains.get(r.cli)
        if target is None:
            return ENOMEM if r.sysctl else EPERM
        self.tm.create_client(target)
        return 0 if r.sysctl else 1

    def subop_get_client_info(self, r: Request) -> int:
        return self._get_client_info(r.dom, r.client, r.cli, r.buf)

    def subop_set_client_info(self, r: Request) -> int:
        return self._set_client_info(r.dom, r.client, r.cli, r.buf)

    def subop_get_pools(self, r: Request) -> int:
        return self._get_pools(r.dom, r.client, r.cli, r.buf, r.arg1)

    def subop_set_pools(self, r: Request) -> int:
        return self._set_pools(r.dom, r.cli, r.buf, r.arg1)

    def subop_set_auth(self, r: Request) -> int:
        return self._set_auth(r.dom, r.cli, r.buf, r.arg1)

    def subop_save_get_next_inv(self, r: Request) -> int:
        return self._next_inv(r.dom, r.client, r.buf, r.arg1)

    def subop_save_begin(self, r: Request) -> int:
        """SAVE_BEGIN: freeze (remembering the prior state), live with ``value``; 4.8+ 0 /
        -ENOENT without client or pool, before 1 / 0."""
        client = r.client
        if client is None or not any(client.pools):
            return ENOENT if r.sysctl else 0
        client.was_frozen = client.frozen
        client.frozen = True
        client.saving = True
        client.migrating = bool(r.value)
        return 0 if r.sysctl else 1

    def subop_save_end(self, r: Request) -> int:
        if r.client is None:
            return ENOENT if r.sysctl else EPERM
        return self._save_end(r.client)

    def subop_save_get_client_weight(self, r: Request) -> int:
        if r.client is None:
            return EPERM
        return -2 if r.client.weight == -1 else r.client.weight

    def subop_save_get_client_cap(self, r: Request) -> int:
        if r.client is None:
            return EPERM
        return -2 if r.client.cap == -1 else r.client.cap

    def subop_save_get_client_flags(self, r: Request) -> int:
        if r.client is None:
            return EPERM
        return (SaveClientFlags.COMPRESS * r.client.compress
                | SaveClientFlags.FROZEN * r.client.was_frozen)

    @staticmethod
    def _pool(r: Request) -> Pool | None:
        """The pool a per-pool subop names (None: no client, a slot >= 16, or empty)."""
        if r.client is None or not 0 <= r.pool_id < MAX_POOLS_PER_DOMAIN:
            return None
        return r.client.pools[r.pool_id]

    def subop_save_get_pool_flags(self, r: Request) -> int:
        pool = self._pool(r)
        if pool is None:
            return EPERM
        return (int(pool.persistent) | int(pool.shared) << 1
                | (1 << 24 if self.host.behaviour.pool_flags_version_bits else 0))

    def subop_save_get_pool_npages(self, r: Request) -> int:
        pool = self._pool(r)
        return EPERM if pool is None else pool.npages

    def subop_save_get_pool_uuid(self, r: Request) -> int:
        pool = self._pool(r)
        if pool is None:
            return EPERM
        return 0 if self._put(r.dom, r.buf, _UUID.pack(*pool.uuid)) else EFAULT

    def subop_save_get_next_page(self, r: Request) -> int:
        pool = self._pool(r)
        if pool is None:
            return EPERM
        return self._next_page(r.dom, pool, r.pool_id, r.buf, r.arg1)

    def subop_restore_put_page(self, r: Request) -> int:
        """RESTORE_PUT_PAGE: after the pool and length checks an ordinary PUT (no
        ensure-free step) from the guest buffer; a NULL one is read as frame 0 (§9.4)."""
        pool = self._pool(r)
        if pool is None:
            return EPERM
        if r.arg1 != PAGE_SIZE:
            return EINVAL
        data = r.dom.read(r.buf, PAGE_SIZE) if r.buf else None
        return self.tm.put(r.client, pool, r.oid, r.arg2, data,  # type: ignore[arg-type]
                           buffer=bool(r.buf))

    def subop_restore_flush_page(self, r: Request) -> int:
        pool = self._pool(r)
        if pool is None:
            return EPERM
        return self.tm.flush_page(r.client, pool, r.oid, r.arg2)  # type: ignore[arg-type]

    def _list(self, dom: Domain, cli: int, buf: int, length: int, use_long: int) -> int:
        tm, b = self.tm, self.host.behaviour
        if cli == ALL and tm.list_crashes():
            raise HypervisorCrash("LIST walked a shared pool that Xen 4.5 had freed")
        recs = _listing.records(tm, b, cli, bool(use_long))
        if recs is None:
            return EPERM
        if buf:
            data = _listing.render(recs, length, b)
            if not dom.write(buf, data):
                # copy_to_guest stops at the first bad page; LIST still returns 0
                for i in range(0, len(data), 256):
                    if not dom.write(buf + i, data[i:i + 256]):
                        break
        return 0

    def _save_end(self, client: Client) -> int:
        b = self.host.behaviour
        if b.bug_live_save:
            if client.dangling_inv:
                raise HypervisorCrash("SAVE_END freed a stale invalidation list (live save)")
            if client.inv or client.inv_logged:
                client.dangling_inv = True
        client.migrating = False
        client.inv.clear()
        client.inv_at = -1
        client.inv_logged = False
        client.frozen = client.was_frozen
        client.saving = False
        if not b.bug_save_skips_first:
            for pool in client.pools:
                if pool is not None:
                    pool.cursor = None
        return 0

    def _next_page(self, dom: Domain, pool: Pool, pool_id: int, buf: int,
                   length: int) -> int:
        """SAVE_GET_NEXT_PAGE (``tmemc_save_get_next_page``): the handle of the page after the
        pool's cursor, then an ordinary GET into the buffer behind it (§9.4)."""
        tm, b = self.tm, self.host.behaviour
        if not pool.persistent:
            return EPERM
        if length < PAGE_SIZE + TMEM_HANDLE.size:
            return ENOMEM
        head = pool.head
        if head.next is head:
            return EPERM
        if b.bug_save_skips_first:
            # the cursor is the page last returned; a fresh one starts on the first page,
            # so the first call returns the second (§3.10), and once on the last page every
            # call returns -1 with the cursor left there, also past SAVE_END
            if pool.cursor is None:
                pool.cursor = head.next
            elif pool.cursor.next is head:
                return EPERM
            pg = pool.cursor.next
        else:
            pg = (pool.cursor or head).next
            if pg is head:
                pool.cursor = None
                return EPERM
        pool.cursor = pg
        if pg is head:
            # a pool of one page: the "page" after it is the list head, read as a handle
            # (index 1, a hypervisor pointer in oid[2], §9.1)
            oid, index = (0, 0, tm.next_pointer()), 1
        else:
            oid, index = pg.obj.oid, pg.index  # type: ignore[union-attr]
        if not self._put(dom, buf, TMEM_HANDLE.pack(pool_id, index, *oid)):
            return EFAULT
        at = buf + TMEM_HANDLE.size
        return tm.get(dom, pool, oid, index, at if dom.valid(at, PAGE_SIZE) else -1,
                      buffer=True)

    def _next_inv(self, dom: Domain, client: Client | None, buf: int, length: int) -> int:
        """SAVE_GET_NEXT_INV: the next logged invalidation; 0 when there is nothing to do (no
        client, a buffer under 32 bytes, no entry left: the next call starts over)."""
        if client is None or length < TMEM_HANDLE.size or not client.inv:
            return 0
        client.inv_at += 1
        if client.inv_at >= len(client.inv):
            client.inv_at = -1
            return 0
        slot, index, oid = client.inv[client.inv_at]
        return 1 if self._put(dom, buf, TMEM_HANDLE.pack(slot, index, *oid)) else EFAULT

    # ---- 4.8+ client / pool info ------------------------------------------------------------

    def _get_client_info(self, dom: Domain, client: Client | None, cli: int, buf: int) -> int:
        if client is None or cli == ALL:
            info = XEN_TMEM_CLIENT.pack(1, MAX_POOLS_PER_DOMAIN, 0, 0, 0)
        else:
            flags = (ClientInfoFlags.FROZEN * client.frozen
                     | ClientInfoFlags.COMPRESS * client.compress
                     | ClientInfoFlags.MIGRATING * client.migrating)
            info = XEN_TMEM_CLIENT.pack(1, MAX_POOLS_PER_DOMAIN,
                                        sum(p is not None for p in client.pools), int(flags),
                                        client.weight & 0xFFFFFFFF)
        return 0 if self._put(dom, buf, info) else EFAULT

    def _set_client_info(self, dom: Domain, client: Client | None, cli: int, buf: int) -> int:
        raw = dom.read(buf, XEN_TMEM_CLIENT.size) if buf else None
        if raw is None:
            return EFAULT
        version, maxpools, _, flags, weight = XEN_TMEM_CLIENT.unpack(raw)
        if version != 1:
            return EOPNOTSUPP
        if maxpools > MAX_POOLS_PER_DOMAIN:
            return ERANGE
        tm = self.tm
        if cli == ALL:
            targets = list(tm.clients.values())
        elif client is None:
            return ENOENT
        else:
            targets = [client]
        for c in targets:
            tm.set_weight(c, _s32(weight))
            c.compress = bool(flags & ClientInfoFlags.COMPRESS)
        return 0

    def _get_pools(self, dom: Domain, client: Client | None, cli: int, buf: int,
                   length: int) -> int:
        if cli == ALL or client is None or length % XEN_TMEM_POOL_INFO.size:
            return EINVAL
        if length // XEN_TMEM_POOL_INFO.size > MAX_POOLS_PER_DOMAIN:
            return E2BIG
        limit = length // XEN_TMEM_POOL_INFO.size
        if self.host.behaviour.bug_get_pools_min_one:
            limit = max(1, limit)  # "idx >= nr" is tested after each copy
        out = bytearray()
        for slot, pool in enumerate(client.pools):
            if pool is None:
                continue
            if len(out) // XEN_TMEM_POOL_INFO.size >= limit:
                break
            flags = (PoolInfoFlags.PERSIST * pool.persistent | PoolInfoFlags.SHARED * pool.shared
                     | 1 << 24)
            out += XEN_TMEM_POOL_INFO.pack(int(flags), slot, pool.npages, *pool.uuid)
        if out and not self._put(dom, buf, bytes(out)):
            return EFAULT
        return len(out) // XEN_TMEM_POOL_INFO.size

    def _client_for(self, cli: int) -> Client | None:
        """The client of ``cli``, created if its domain exists (4.9+ SET_POOLS / SET_AUTH)."""
        tm = self.tm
        client = tm.clients.get(cli)
        if client is None and cli != ALL:
            target = self.host.domains.get(cli)
            if target is not None:
                client = tm.create_client(target)
        return client

    def _pool_info_request(self, dom: Domain, cli: int, buf: int, length: int
                           ) -> tuple[Client, list[tuple[int, ...]]] | int:
        """SET_POOLS / SET_AUTH argument checks, in Xen's order: buffer length (-EINVAL,
        -E2BIG), then the client (created if its domain exists; else -ENOMEM), then the
        ``xen_tmem_pool_info`` entries (-EFAULT; ``n_pages`` != 0 is -EINVAL)."""
        if length % XEN_TMEM_POOL_INFO.size:
            return EINVAL
        count = length // XEN_TMEM_POOL_INFO.size
        if count > MAX_POOLS_PER_DOMAIN:
            return E2BIG
        client = self._client_for(cli)
        if client is None:
            return ENOMEM
        if not count:
            return client, []
        raw = dom.read(buf, length) if buf else None
        if raw is None:
            return EFAULT
        entries = [XEN_TMEM_POOL_INFO.unpack_from(raw, i * XEN_TMEM_POOL_INFO.size)
                   for i in range(count)]
        if any(e[2] for e in entries):
            return EINVAL
        return client, entries

    def _set_pools(self, dom: Domain, cli: int, buf: int, length: int) -> int:
        request = self._pool_info_request(dom, cli, buf, length)
        if isinstance(request, int):
            return request
        client, entries = request
        last = 0
        for flags, slot, _, lo, hi in entries:
            last = self.tm.new_pool(client, flags & ~PoolFlags.PRECOMPRESSED, (lo, hi),
                                    slot=slot)
            if last < 0:
                return last
        return last or len(entries)

    def _set_auth(self, dom: Domain, cli: int, buf: int, length: int) -> int:
        if length == 0:
            return 0
        request = self._pool_info_request(dom, cli, buf, length)
        if isinstance(request, int):
            return request
        client, entries = request
        last = 0
        for flags, _, _, lo, hi in entries:
            last = self.tm.auth(client, (lo, hi), bool(flags & PoolInfoFlags.AUTH))
            if last < 0:
                return last
        return last or len(entries)
