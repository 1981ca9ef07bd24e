"""The batched data path of the entry: a multicall of tmem_ops answers exactly as its entries
issued one by one as tmem_op hypercalls would.

Two identical hosts get the same random batches (PUT/GET runs into every kind of pool, mixed
commands, bad and aliasing frames, bad pools and struct addresses, frozen clients, eviction
pressure, compression, and sequential runs: one object, consecutive frames, as a batching
client issues them and the bulk paths take them): host A as one multicall, host B entry by
entry, each result written back into B's entry as a multicall would. Results, guest memory, the
whole persisted state (every counter and peak: Pc/Pm, Oc/Om, radix nodes Nc/Nm, frames Fc/Fm,
Ec/Em, the owners' Ge/Pp/Gp, cp/cb, a failed GET's leaked descriptors, the metadata pages of
both sub-page pools and the domains' charges, the free list `Ta`, dedup's Sc/Sm/Gd/Zt/Gz on
hosts booted with tmem_dedup / tmem_tze), FREEABLE, the page arena bookkeeping and the long
``tmem-list`` must be identical.
Spies on ``Tmem.put_run`` / ``get_run`` and on the bulk paths check that they really ran.
"""

from __future__ import annotations

import random

import pytest

from xentmem import abi
from xentmem.abi import Hypercall, TmemCmd
from xentmem.emulator import EmulatedHost
from xentmem.emulator.transport import EmulatedHypervisor
from xentmem.errors import HostCrashed
from xentmem.hypercalls.tmem import Tmem

from .driver import PRIV_EPH, PRIV_PERS, SHARED_EPH, SHARED_PERS, VERSIONS, page, text_page

PUT, GET = int(TmemCmd.TMEM_PUT_PAGE), int(TmemCmd.TMEM_GET_PAGE)


class Side:
    """One host, its guest domain, the guest's buffers and frames (identical on both sides)."""

    def __init__(self, version: str, compress: bool, designed: bool, memory_mb: int,
                 guest_mb: int, max_mb: int, dedup: bool = False, tze: bool = False) -> None:
        self.host = EmulatedHost(memory_mb, xen_version=version, tmem_compress=compress,
                                 designed=designed, dom0_memory_mb=8, tmem_dedup=dedup,
                                 tmem_tze=tze)
        self.domid = self.host.create_domain("g", guest_mb, max_mb)
        hv = EmulatedHypervisor(self.host, self.domid)
        self.ops = hv.alloc_buffer(64 * 56)
        self.entries = hv.alloc_buffer(64 * 64)
        self.frames = [hv.alloc_frame() for _ in range(8)]
        self.run = hv.alloc_frames(64)  # consecutive frames, for sequential runs
        self.op_buf = hv.alloc_buffer(56)
        self.calls = {"put_run": 0, "get_run": 0, "_put_new_pages": 0, "_get_pages": 0,
                      "_evicted": 0}
        tm = self.host.tmem
        for name in self.calls:
            real = getattr(tm, name)

            def spy(*args, real=real, name=name):
                self.calls[name] += 1
                return real(*args)

            setattr(tm, name, spy)

    @property
    def counts(self) -> tuple[int, int, int]:
        """(batched runs, bulk runs, bulk runs that evicted) so far."""
        c = self.calls
        return (c["put_run"] + c["get_run"], c["_put_new_pages"] + c["_get_pages"],
                c["_evicted"])

    def call(self, op: bytes) -> int:
        self.op_buf.write(op)
        return self.host.hypercall(self.domid, Hypercall.tmem_op, self.op_buf.address)

    def memory(self) -> list[bytes]:
        """Every frame a GET can write: the page frames and the two buffers' frames."""
        return [f.read() for f in self.frames] + [self.run.read(), self.ops.read(),
                                                  self.entries.read()]


def _scenario(seed: int, sequential: float = 0.4, roomy: bool = False,
              tight: bool = False) -> tuple[int, ...]:
    """One random scenario; ``sequential`` is the share of sequential runs, ``roomy`` gives
    the host and guest room for whole runs, ``tight`` leaves Xen 1-3 MiB past dom0 and the
    guest (PUTs soon evict). Returns (batched multicalls, bulk runs, bulk runs that evicted) of the
    guest's multicalls."""
    rng = random.Random(seed)
    version = rng.choice(VERSIONS)
    sizes = [96, 128] if roomy else [16, 17] if tight else [16, 17, 24, 64]
    conf = dict(version=version, compress=rng.random() < 0.4, designed=rng.random() < 0.3,
                memory_mb=rng.choice(sizes),
                guest_mb=(g := rng.choice([12, 16] if roomy else [6, 7] if tight else [4, 6, 7])),
                max_mb=g + rng.choice([0, 1, 8] if roomy else [0, 1]))
    if version != "4.12" and rng.random() < 0.25:  # dedup / tze hosts (4.0-4.7)
        conf.update(dedup=True, tze=rng.random() < 0.5)
    keys = rng.choice([2000, 5000] if roomy else [24, 300])
    put_runs: list[tuple[int, tuple[int, int, int], int, int]] = []  # sequential PUTs, for GETs
    a, b = Side(**conf), Side(**conf)
    flags = [PRIV_PERS, PRIV_EPH, SHARED_EPH] + ([SHARED_PERS] if version == "4.12" else [])
    pools = []
    for f in rng.sample(flags, rng.randint(1, len(flags))):
        op = abi.pack_tmem_op(TmemCmd.TMEM_NEW_POOL, 0, flags=f, uuid=(7, 9))
        pools.append(a.call(op))
        assert b.call(op) == pools[-1]
    # dom0's ephemeral pages: other LRU heads to evict
    dom0_pages = rng.choice([600, 1000] if tight else [0, 50, 300])
    for side in (a, b):
        dom0 = Tmem(EmulatedHypervisor(side.host, 0), version=version)
        dom0.put_pages(dom0.new_pool(persistent=False), [(1, i, page(i))
                                                         for i in range(dom0_pages)])
    before = a.counts  # dom0's batches above do not count
    for _ in range(rng.randint(4, 40)):
        if rng.random() < 0.1:  # a control-ish op between batches: freeze, thaw, flush
            cmd = rng.choice([TmemCmd.TMEM_FLUSH_OBJECT, TmemCmd.TMEM_FLUSH_PAGE])
            op = abi.pack_tmem_op(cmd, rng.choice(pools), oid=(rng.randrange(3), 0, 0),
                                  index=rng.randrange(8))
            assert a.call(op) == b.call(op)
        if rng.random() < 0.08:
            for side in (a, b):
                cc = side.host.tmem.clients.get(side.domid)
                if cc is not None:
                    cc.frozen = not cc.frozen
        if rng.random() < 0.1:  # eviction weights (quota rules pick the victim)
            weight = rng.choice([0, 1, 5])
            for side in (a, b):
                cc = side.host.tmem.clients.get(side.domid)
                if cc is not None:
                    side.host.tmem.set_weight(cc, weight)
        count = rng.randint(2, 64)
        cmd = rng.choice([PUT, GET])
        pool = rng.choice(pools) if rng.random() < 0.95 else rng.choice([5, 16, -1])
        mixed = rng.random() < 0.1
        frames = [f.number for f in a.frames]
        special = [0, 1, 10**6, a.ops.address >> 12, a.entries.address >> 12]
        ops = b""
        if not mixed and rng.random() < sequential:
            # A sequential run: one object, mostly distinct indexes, consecutive frames
            oid = (rng.randrange(3), rng.choice([0, 0, 1]), 0)
            base = rng.randrange(keys)
            if cmd == PUT:
                put_runs.append((pool, oid, base, count))
            elif put_runs and rng.random() < 0.7:
                pool, oid, base, count = rng.choice(put_runs)  # mostly hits
            indexes = [(base + i) % keys for i in range(count)]
            if rng.random() < 0.2:
                indexes[rng.randrange(count)] = indexes[0]  # a repeat: no bulk path
            cmfns = a.run.numbers[:count]
            if rng.random() < 0.05:
                cmfns = cmfns[::-1]  # not ascending: no bulk path
            for index, cmfn in zip(indexes, cmfns, strict=True):
                ops += abi.pack_tmem_op(cmd, pool, oid=oid, index=index, cmfn=cmfn)
        for _ in range(0 if ops else count):
            c = rng.choice([PUT, GET, TmemCmd.TMEM_FLUSH_PAGE]) if mixed else cmd
            cmfn = rng.choice(frames) if rng.random() < 0.95 else rng.choice(special)
            ops += abi.pack_tmem_op(c, pool if not mixed or rng.random() < 0.8 else 0,
                                    oid=(rng.randrange(3), rng.choice([0, 0, 1]), 0),
                                    index=rng.randrange(keys), cmfn=cmfn)
        stride_ok = rng.random() < 0.95
        addrs = [a.ops.address + i * 56 if stride_ok else a.ops.address + (i * 56) % 560
                 for i in range(count)]
        if rng.random() < 0.03:
            addrs[rng.randrange(count)] = 4096 * 10**6  # a bad struct address
        entries = b"".join(abi.MULTICALL_ENTRY.pack(38, 0, ad, 0, 0, 0, 0, 0) for ad in addrs)
        make = text_page if rng.random() < 0.5 else page
        for side in (a, b):
            side.ops.write(ops)
            side.entries.write(entries)
        for i, frame in enumerate(a.frames):
            data = make(rng.randrange(1000))
            frame.write(data)
            b.frames[i].write(data)
        data = b"".join(make(rng.randrange(1000)) for _ in range(64))
        a.run.write(data)
        b.run.write(data)
        assert a.host.hypercall(a.domid, Hypercall.multicall, a.entries.address, count) == 0
        for i in range(count):  # B: Xen's do_multicall, one entry at a time, read when due
            op, _, *args = abi.MULTICALL_ENTRY.unpack(b.entries.read(64, i * 64))
            rc = -22 if op == Hypercall.multicall else b.host.hypercall(b.domid, op, *args)
            b.entries.write(rc.to_bytes(8, "little", signed=True), i * 64 + 8)
        assert a.entries.read() == b.entries.read()
        assert a.memory() == b.memory()
    assert a.host.to_state() == b.host.to_state()
    assert a.host.tmem.freeable_pages() == b.host.tmem.freeable_pages()
    ta, tb = a.host.tmem, b.host.tmem
    assert (ta.free_slots, ta.next_slot) == (tb.free_slots, tb.next_slot)
    assert a.host.tmem_list(long=True) == b.host.tmem_list(long=True)
    return tuple(now - then for now, then in zip(a.counts, before, strict=True))


@pytest.mark.parametrize("block", range(4))
def test_multicall_equals_the_entries_one_by_one(block):
    counts = [_scenario(seed) for seed in range(block * 60, block * 60 + 60)]
    fast, bulk, _ = map(sum, zip(*counts, strict=True))
    assert fast > 100  # the batched path ran, not only the one-by-one fallback
    assert bulk > 20  # and so did the bulk paths


@pytest.mark.parametrize("block", range(2))
def test_sequential_runs_equal_the_entries_one_by_one(block):
    """Mostly sequential runs on hosts with room for them: the bulk paths, and their
    fallbacks (repeated index, page already there, a miss, frames not ascending)."""
    counts = [_scenario(seed, sequential=0.9, roomy=True)
              for seed in range(1000 + block * 40, 1000 + block * 40 + 40)]
    assert sum(bulk for _, bulk, _ in counts) > 80


@pytest.mark.parametrize("batched", [False, True])
def test_put_into_a_freed_shared_pool_crashes_the_host_cleanly(batched):
    """Xen 4.5: a PUT into a shared pool its creator freed crashes the hypervisor; the emulated
    host crashes (``HostCrashed``) even though the PUT held a view of the guest's frame."""
    host = EmulatedHost(64, xen_version="4.5", dom0_memory_mb=8)
    d0, d1 = (Tmem(EmulatedHypervisor(host, d), version="4.5")
              for d in (0, host.create_domain("g", 8)))
    s0 = d0.new_pool(persistent=False, shared=True, uuid=(7, 9))
    s1 = d1.new_pool(persistent=False, shared=True, uuid=(7, 9))
    d0.put_page(s0, 1, 0, page(1))
    d0.destroy_pool(s0)
    with pytest.raises(HostCrashed, match="freed"):
        if batched:
            d1.put_pages(s1, [(1, i, page(i)) for i in range(3)])
        else:
            d1.put_page(s1, 1, 0, page(2))
    assert host.crashed and host.domains == {}


def test_sequential_runs_under_eviction_equal_the_entries_one_by_one():
    """Sequential runs on hosts with 1-3 MiB left: the bulk path that evicts as it stores."""
    counts = [_scenario(seed, sequential=0.9, tight=True) for seed in range(3000, 3060)]
    assert sum(evicting for _, _, evicting in counts) > 5
