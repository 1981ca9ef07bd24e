"""RAMster's engine (see :mod:`.ramster`): zcache's pool of compressed pages whose pages may
live on other nodes, the foreign pools this node keeps for others, and the handler of its
node's messages.

A page is in one of these states (``_Remote.state``; no entry: only local, or nowhere):

=========  ===========================================================================
INFLIGHT   local copy kept, a PUT sent and not yet acknowledged
REMOTE     only on ``node``
GETTING    only on ``node``, an ASYNC_GET_AND_FREE_REQUEST on its way (``waiter``)
ONDISK     its node died; the copy on the guest's swap slot is current (durable mode)
LOST       its node died with the only copy (faithful mode): loads say so (-EIO)
=========  ===========================================================================
"""

from __future__ import annotations

import errno
import itertools
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lz4.block import LZ4BlockError

from xentmem.guest.backends import _r2net as net
from xentmem.guest.backends.zcache import (
    SWIZ_BITS,
    SWIZ_MASK,
    _Engine,
    _Handle,
    _Pool,
    compress,
    decompress,
)
from xentmem.xenstore.keys import RAMSTER_STATS

if TYPE_CHECKING:
    from xentmem.guest.backends.ramster import Ramster
    from xentmem.guest.guest import Guest

INFLIGHT, REMOTE, GETTING, ONDISK, LOST_STATE = range(5)
_DEAD = 1  # a waiter's status when its node died: look again, the entry was resolved
STATS = RAMSTER_STATS  # sys/kernel/debug/ramster/<name>, data/tmem/stats/ramster_<name>
_Key = tuple[int, _Handle]  # (local pool id, handle)


class _Lost(Exception):
    """The page's only copy died with its node (faithful mode)."""


class _Remote:
    __slots__ = ("node", "seq", "size", "state", "waiter")

    def __init__(self, node: int, state: int, seq: int, size: int) -> None:
        self.node, self.state, self.seq, self.size = node, state, seq, size
        self.waiter: _Waiter | None = None


class _Waiter:
    """A GET on its way: the caller (or the selfshrinker's reply handler) takes the page."""

    __slots__ = ("data", "event", "key", "node", "repatriate", "status")

    def __init__(self, key: _Key, node: int, repatriate: bool) -> None:
        self.key, self.node, self.repatriate = key, node, repatriate
        self.event = threading.Event()
        self.status = 0
        self.data = b""


class _SwapDisk:
    """The swap slots behind the frontswap pool: durable mode's safe copy."""

    def __init__(self, guest: Guest) -> None:
        self.guest = guest

    @staticmethod
    def slot(handle: _Handle) -> tuple[int, int]:
        return handle[0] >> SWIZ_BITS, (handle[3] << SWIZ_BITS) | (handle[0] & SWIZ_MASK)

    def lock(self, handle: _Handle) -> threading.Lock | None:
        """The slot's lock, or None once its device was swapped off."""
        type, offset = self.slot(handle)
        sis = self.guest.swap_info[type]
        return None if sis is None else sis.slot_lock(offset)

    def write(self, handle: _Handle, page: bytes) -> None:
        type, offset = self.slot(handle)
        self.guest.swap_info[type].store.write(offset, page)  # type: ignore[union-attr]

    def read(self, handle: _Handle) -> bytes:
        type, offset = self.slot(handle)
        return self.guest.swap_info[type].store.read(offset)  # type: ignore[union-attr]


_ENGINES: weakref.WeakSet[_RamsterEngine] = weakref.WeakSet()


class _RamsterEngine(_Engine):
    """zcache's engine, its pages also on other nodes, and foreign pools for theirs; also the
    handler of its node's messages. One reentrant lock guards all of it; nothing waits for the
    network while holding it (sending only queues)."""

    def __init__(self, max_bytes: int, owner: Ramster) -> None:
        super().__init__(max_bytes)
        self.lock = threading.RLock()  # type: ignore[assignment]
        self.owner = owner
        self.remote: dict[_Key, _Remote] = {}
        self.inflight: dict[int, _Key] = {}  # PUT seq -> key
        self.waiters: dict[int, _Waiter] = {}  # request id -> waiter
        self.foreign: dict[tuple[int, int], _Pool] = {}  # (node, their pool) -> pages
        self.foreign_bytes = 0
        # durable mode: the compressed page each swap slot holds a copy of, so a page that
        # comes back unchanged (repatriated) is not written again when remotified again
        self.on_disk: dict[_Key, bytes] = {}
        self.disk: _SwapDisk | None = None
        self.counters = dict.fromkeys(STATS, 0)
        self._ids = itertools.count(1)
        _ENGINES.add(self)

    # -- checkpoints: the engine at one instant, without the network --

    def __getstate__(self) -> dict[str, Any]:
        with self.lock:
            state = self.__dict__.copy()
            state["pools"] = {i: _copy_pool(p) for i, p in self.pools.items()}
            state["foreign"] = {k: _copy_pool(p) for k, p in self.foreign.items()}
            state["counters"] = dict(self.counters)
            state["on_disk"] = dict(self.on_disk)
            remote = {}
            for key, e in self.remote.items():
                if e.state == INFLIGHT:
                    continue  # its ack is lost with the process: the local copy stays
                state_ = REMOTE if e.state == GETTING else e.state
                remote[key] = _Remote(e.node, state_, e.seq, e.size)
            state["remote"] = remote
            state["inflight"], state["waiters"] = {}, {}
            state["_ids"] = next(self._ids) + 1_000_000  # ids stay unique after a restore
            return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._ids = itertools.count(state["_ids"])
        _ENGINES.add(self)

    # -- what the owner asks --

    @property
    def node(self) -> net.Node | None:
        return self.owner.node

    def _send(self, num: int, type: int, payload: bytes, msg_id: int = 0) -> bool:
        node = self.node
        return node is not None and node.send(num, type, payload, msg_id=msg_id)

    def _persistent(self, pool_id: int) -> bool:
        pool = self.pools.get(pool_id)
        return pool is not None and not pool.ephemeral

    # -- the local pool's data path, aware of remote copies --

    def put(self, pool_id: int, handle: _Handle, page: bytes) -> bool:
        data = compress(page)
        with self.lock:
            self._forget((pool_id, handle))
            self.on_disk.pop((pool_id, handle), None)  # a new version (or the disk's own)
            return self._put_locked(pool_id, handle, data)

    def flush(self, pool_id: int, handle: _Handle) -> None:
        with self.lock:
            super().flush(pool_id, handle)
            self._forget((pool_id, handle))
            self.on_disk.pop((pool_id, handle), None)

    def flush_where(self, pool_id: int, match: Callable[[_Handle], bool]) -> None:
        """Flush matching pages; every match is a whole object, so remote nodes get FLOBJ."""
        with self.lock:
            super().flush_where(pool_id, match)
            self.on_disk = {k: v for k, v in self.on_disk.items()
                            if k[0] != pool_id or not match(k[1])}
            objects: set[tuple[int, tuple[int, int, int]]] = set()
            for key in [k for k in self.remote if k[0] == pool_id and match(k[1])]:
                e = self._drop_entry(key)
                if e.state in (INFLIGHT, REMOTE, GETTING):
                    objects.add((e.node, key[1][:3]))
            for num, oid in sorted(objects):
                self._send(num, net.FLOBJ, net.OBJ.pack(pool_id, *oid))

    def destroy_pool(self, pool_id: int) -> None:
        with self.lock:
            super().destroy_pool(pool_id)
            self.on_disk = {k: v for k, v in self.on_disk.items() if k[0] != pool_id}
            nodes = set()
            for key in [k for k in self.remote if k[0] == pool_id]:
                e = self._drop_entry(key)
                if e.state in (INFLIGHT, REMOTE, GETTING):
                    nodes.add(e.node)
            for num in sorted(nodes):
                self._send(num, net.DESTROY_POOL, net.POOL.pack(pool_id))

    def _drop_entry(self, key: _Key) -> _Remote:
        e = self.remote.pop(key)
        if e.state == INFLIGHT:
            self.inflight.pop(e.seq, None)
        return e

    def _forget(self, key: _Key) -> None:
        """The page's remote copy is no longer wanted: FLUSH it, queued behind its PUT."""
        if key in self.remote:
            e = self._drop_entry(key)
            if e.state in (INFLIGHT, REMOTE, GETTING):
                self._send(e.node, net.FLUSH, net.KEY.pack(key[0], *key[1]))

    def get(self, pool_id: int, handle: _Handle, page: bytearray, exclusive: bool) -> bool:
        """Fill ``page``; a remote page is fetched (the caller sleeps for the reply). Raises
        ``_Lost`` for a page that died with its node in faithful mode."""
        key = (pool_id, handle)
        data = None
        for _ in range(8):  # each round resolves one state; a page needs at most three
            with self.lock:
                pool = self.pools.get(pool_id)
                if pool is None:
                    return False
                data = pool.pages.get(handle)
                if data is not None:
                    if exclusive:
                        del pool.pages[handle]
                        self.bytes -= len(data)
                        self._forget(key)
                    break
                e = self.remote.get(key)
                if e is None:
                    return False
                if e.state == LOST_STATE:
                    raise _Lost
                if e.state == ONDISK:
                    if exclusive:
                        del self.remote[key]
                    self.counters["recovered_pers_pages"] += 1
                    page[:] = self.disk.read(handle)  # type: ignore[union-attr]
                    return True
                if e.state == INFLIGHT:  # an evicted ephemeral page on its way: a miss
                    self._forget(key)
                    return False
                waiter = e.waiter if e.state == GETTING else None
                num = e.node
                alive = self.node is not None and self.node.alive(num)
                if waiter is None and alive:
                    waiter = self._request(key, e, free=exclusive, repatriate=False)
            if waiter is None:
                self._wait_alive_or_resolve(num)
                continue
            if not waiter.event.wait(self.owner.get_timeout_s):
                self._declare_dead(num, "no ASYNC_GET_REPLY in time")
                continue
            if waiter.repatriate:
                continue  # the selfshrinker brought it back: look again
            with self.lock:
                if waiter.status == _DEAD:
                    continue
                if waiter.status != 0:  # the node does not have it
                    self.counters["remote_get_misses"] += 1
                    if self.remote.get(key) is e:
                        self._resolve_dead(key, e)
                    continue
                self.counters["remote_gets"] += 1
                data = waiter.data
            break
        if data is None:
            return False
        try:
            page[:] = decompress(data)
        except LZ4BlockError:
            self.counters["remote_get_misses"] += 1
            return False
        return True

    def _request(self, key: _Key, e: _Remote, *, free: bool, repatriate: bool) -> _Waiter | None:
        """Send an ASYNC_GET(_AND_FREE)_REQUEST (lock held); None if it could not be sent."""
        msg_id = next(self._ids)
        waiter = _Waiter(key, e.node, repatriate)
        msg = net.ASYNC_GET_AND_FREE_REQUEST if free else net.ASYNC_GET_REQUEST
        if not self._send(e.node, msg, net.KEY.pack(key[0], *key[1]), msg_id):
            return None
        self.waiters[msg_id] = waiter
        if free:
            e.state, e.waiter = GETTING, waiter
        return waiter

    def _wait_alive_or_resolve(self, num: int) -> None:
        """Node ``num`` is not (yet) reachable: give it ``get_timeout_s`` to come back (a node
        just restarted needs a heartbeat), then resolve its pages as dead."""
        deadline = time.monotonic() + self.owner.get_timeout_s
        while time.monotonic() < deadline:
            node = self.node
            if node is not None and node.alive(num):
                return
            time.sleep(0.01)
        self.on_peer_dead(num, "unreachable")

    def _declare_dead(self, num: int, why: str) -> None:
        node = self.node
        if node is not None:
            node.declare_dead(num, why)
        self.on_peer_dead(num, why)  # idempotent: resolves whatever is left

    # -- remotify and repatriate --

    def remotify(self, target: int, limit: int, above: int) -> int:
        """Send up to ``limit`` of the oldest local pages beyond ``above`` bytes to node
        ``target``; the pages sent."""
        node = self.node
        if node is None or target < 0 or not node.alive(target):
            return 0
        with self.lock:
            excess = self.bytes - above
            candidates = []
            for pool_id, pool in self.pools.items():
                for handle, data in pool.pages.items():
                    if excess <= 0 or len(candidates) >= limit:
                        break
                    if (pool_id, handle) not in self.remote:
                        candidates.append((pool_id, handle, data))
                        excess -= len(data)
        sent = 0
        for pool_id, handle, data in candidates:
            if self._persistent(pool_id) and self.owner.mode == "durable":
                ok = self._remotify_durable(target, pool_id, handle, data)
            else:
                with self.lock:
                    ok = self._remotify_locked(target, pool_id, handle, data)
            if not ok:
                break
            sent += 1
        return sent

    def _remotify_durable(self, target: int, pool_id: int, handle: _Handle, data: bytes) -> bool:
        """Write the page to its swap slot first (the slot's lock held, so the frontend does
        not touch it meanwhile), then send it."""
        disk = self.disk
        lock = None if disk is None else disk.lock(handle)
        if disk is None or lock is None:
            return True  # no slot to make it safe on: it stays local
        with lock:
            with self.lock:
                pool = self.pools.get(pool_id)
                if pool is None or pool.pages.get(handle) is not data:
                    return True  # changed meanwhile: skip it, go on with the others
                written = self.on_disk.get((pool_id, handle)) == data
            if not written:
                disk.write(handle, decompress(data))
            with self.lock:
                if not written:
                    self.on_disk[(pool_id, handle)] = data
                    self.counters["durable_writes"] += 1
                return self._remotify_locked(target, pool_id, handle, data)

    def _remotify_locked(self, target: int, pool_id: int, handle: _Handle, data: bytes) -> bool:
        pool = self.pools.get(pool_id)
        key = (pool_id, handle)
        if pool is None or pool.pages.get(handle) is not data or key in self.remote:
            return True
        seq = next(self._ids)
        msg = net.PUT_EPH if pool.ephemeral else net.PUT_PERS
        if not self._send(target, msg, net.KEY.pack(pool_id, *handle) + data, seq):
            return False
        self.remote[key] = _Remote(target, INFLIGHT, seq, len(data))
        self.inflight[seq] = key
        return True

    def repatriate(self, limit: int, below: int) -> int:
        """Ask for up to ``limit`` remote persistent pages back while the local pool stays
        under ``below`` bytes; the requests sent (replies land in the local pool)."""
        node = self.node
        if node is None:
            return 0
        sent = 0
        with self.lock:
            room = below - self.bytes
            for key, e in list(self.remote.items()):
                if sent >= limit or room <= 0:
                    break
                if (e.state == REMOTE and self._persistent(key[0]) and node.alive(e.node)
                        and self._request(key, e, free=True, repatriate=True) is not None):
                    sent += 1
                    room -= e.size
        return sent

    def settled(self) -> bool:
        """No PUT awaits its acknowledgement and no GET its reply."""
        with self.lock:
            return not self.inflight and not self.waiters

    # -- messages from other nodes (the node's reader threads, one connection at a time) --

    def on_message(self, conn: net.Connection, header: net.Header, payload: bytes) -> None:
        t = header.type
        if t == net.MSG_STATUS:
            self._acked(header.msg_id, header.status)
        elif t == net.ASYNC_GET_REPLY:
            self._replied(header.msg_id, header.status, payload[net.KEY.size:])
        elif t in (net.FLOBJ, net.DESTROY_POOL):
            pool_id, *oid = (net.OBJ if t == net.FLOBJ else net.POOL).unpack(payload)
            with self.lock:
                fp = self.foreign.get((header.sender, pool_id))
                if fp is None:
                    return
                for h in [h for h in fp.pages if t == net.DESTROY_POOL or list(h[:3]) == oid]:
                    self.foreign_bytes -= len(fp.pages.pop(h))
                if t == net.DESTROY_POOL:
                    del self.foreign[(header.sender, pool_id)]
        else:
            pool_id, o0, o1, o2, index = net.KEY.unpack_from(payload)
            self._foreign_op(conn, header, (header.sender, pool_id), (o0, o1, o2, index),
                             payload[net.KEY.size:])

    def _foreign_op(self, conn: net.Connection, header: net.Header, fkey: tuple[int, int],
                    handle: _Handle, data: bytes) -> None:
        t = header.type
        node = self.node
        with self.lock:
            fp = self.foreign.get(fkey)
            if t in (net.PUT_EPH, net.PUT_PERS):
                status = self._foreign_put(fkey, fp, t == net.PUT_EPH, handle, data)
                if node is not None:
                    node.reply(conn, net.MSG_STATUS, msg_id=header.msg_id, status=status)
                return
            if t == net.FLUSH:
                old = None if fp is None else fp.pages.pop(handle, None)
                self.foreign_bytes -= len(old) if old is not None else 0
                return
            free = t == net.ASYNC_GET_AND_FREE_REQUEST
            found = None if fp is None else (fp.pages.pop(handle, None) if free
                                             else fp.pages.get(handle))
            if found is not None and free:
                self.foreign_bytes -= len(found)
        if node is not None:
            node.reply(conn, net.ASYNC_GET_REPLY, net.KEY.pack(fkey[1], *handle) + (found or b""),
                       msg_id=header.msg_id, status=0 if found is not None else -errno.ENOENT)

    def _foreign_put(self, fkey: tuple[int, int], fp: _Pool | None, ephemeral: bool,
                     handle: _Handle, data: bytes) -> int:
        if fp is None:  # foreign pools are created on demand
            fp = self.foreign[fkey] = _Pool(ephemeral)
        if fp.ephemeral != ephemeral:
            return -errno.EINVAL
        old = fp.pages.pop(handle, None)
        if old is not None:
            self.foreign_bytes -= len(old)
        limit = self.owner.foreign_max_bytes
        for pool in self.foreign.values():  # make room: the oldest foreign ephemeral pages
            while pool.ephemeral and pool.pages and self.foreign_bytes + len(data) > limit:
                self.foreign_bytes -= len(pool.pages.popitem(last=False)[1])
        if self.foreign_bytes + len(data) > limit:
            return -errno.ENOMEM
        fp.pages[handle] = data
        self.foreign_bytes += len(data)
        return 0

    def _acked(self, seq: int, status: int) -> None:
        with self.lock:
            key = self.inflight.pop(seq, None)
            e = None if key is None else self.remote.get(key)
            if e is None or e.seq != seq or e.state != INFLIGHT:
                return  # flushed or replaced meanwhile: its FLUSH followed the PUT
            assert key is not None
            if status != 0:
                del self.remote[key]
                self.counters["remotify_failed"] += 1
                return
            pool = self.pools.get(key[0])
            data = None if pool is None else pool.pages.pop(key[1], None)
            if data is not None:
                self.bytes -= len(data)
            e.state = REMOTE
            self.counters["remotified_pages"] += 1

    def _replied(self, msg_id: int, status: int, data: bytes) -> None:
        with self.lock:
            waiter = self.waiters.pop(msg_id, None)
            if waiter is None:
                return  # its caller gave up, or the node was declared dead
            e = self.remote.get(waiter.key)
            mine = e is not None and e.waiter is waiter
            if mine and status == 0:
                del self.remote[waiter.key]  # the node freed it
            if waiter.repatriate:
                pool = self.pools.get(waiter.key[0])
                if mine and status == 0 and pool is not None:
                    pool.pages[waiter.key[1]] = data  # over budget if need be: never dropped
                    self.bytes += len(data)
                    self.counters["repatriated_pages"] += 1
                elif mine:
                    self._resolve_dead(waiter.key, e)  # type: ignore[arg-type]
            waiter.status, waiter.data = status, data
            waiter.event.set()

    # -- the cluster's view of other nodes --

    def on_peer_alive(self, num: int, incarnation: int, revived: bool) -> None:
        with self.lock:
            if revived:  # whatever it still holds of ours is garbage now
                pools = set(self.pools) | {k[0] for k in self.remote}
                for pool_id in sorted(pools):
                    self._send(num, net.DESTROY_POOL, net.POOL.pack(pool_id))
                for fkey in [k for k in self.foreign if k[0] == num]:
                    self.foreign_bytes -= sum(len(v) for v in self.foreign.pop(fkey).pages.values())

    def on_peer_dead(self, num: int, why: str) -> None:
        with self.lock:
            for key, e in list(self.remote.items()):
                if e.node == num and e.state in (INFLIGHT, REMOTE, GETTING):
                    self._resolve_dead(key, e)
            for msg_id, w in list(self.waiters.items()):
                if w.node == num:
                    del self.waiters[msg_id]
                    w.status = _DEAD
                    w.event.set()
            for fkey in [k for k in self.foreign if k[0] == num]:
                self.foreign_bytes -= sum(len(v) for v in self.foreign.pop(fkey).pages.values())

    def _resolve_dead(self, key: _Key, e: _Remote) -> None:
        """The page's node is gone (or does not have it): what is left of the page."""
        if e.state == INFLIGHT:
            self._drop_entry(key)  # the local copy is still here
        elif not self._persistent(key[0]):
            del self.remote[key]
            self.counters["dropped_eph_pages"] += 1
        elif self.owner.mode == "durable":
            e.state, e.waiter = ONDISK, None
        else:
            e.state, e.waiter = LOST_STATE, None
            self.counters["lost_pers_pages"] += 1

    def kill(self) -> None:
        """This node died: the foreign pages it held are gone, nobody waits any more."""
        with self.lock:
            self.foreign.clear()
            self.foreign_bytes = 0
            for w in self.waiters.values():
                w.status = _DEAD
                w.event.set()
            self.waiters.clear()
            for key in [k for k, e in self.remote.items() if e.state == INFLIGHT]:
                self._drop_entry(key)

    def stats(self) -> dict[str, int]:
        with self.lock:
            out = dict(self.counters)
            for state_name, ephemeral in (("remote_eph_pages", True),
                                          ("remote_pers_pages", False)):
                out[state_name] = sum(
                    1 for k, e in self.remote.items()
                    if e.state in (REMOTE, GETTING) and self._persistent(k[0]) != ephemeral)
            out["foreign_eph_pages"] = sum(len(p.pages) for p in self.foreign.values()
                                           if p.ephemeral)
            out["foreign_pers_pages"] = sum(len(p.pages) for p in self.foreign.values()
                                            if not p.ephemeral)
        node = self.node
        out["nodes_alive"] = 0 if node is None else sum(
            node.alive(n) for n in self.owner.nodes if n != self.owner.node_num)
        out["bad_frames"] = 0 if node is None else node.bad_frames
        return out


def _copy_pool(pool: _Pool) -> _Pool:
    copy = _Pool(pool.ephemeral)
    copy.pages.update(pool.pages)
    return copy


def _lock_engines() -> None:
    for engine in list(_ENGINES):
        engine.lock.acquire()


def _unlock_engines() -> None:
    for engine in list(_ENGINES):
        engine.lock.release()


# A daemon snapshots its guests in a forked child: no engine lock may be held by a network
# thread (which the child does not have) at that instant.
os.register_at_fork(before=_lock_engines, after_in_parent=_unlock_engines,
                    after_in_child=_unlock_engines)
