"""Fuzz the hypercall entry: random bytes and random field values for tmem_op, sysctl,
multicall, xen_version and memory_op, from dom0 and from a guest.

No exception may escape except ``HostCrashed`` (a documented outcome where the imitated
release crashed; the fuzzer then boots a new host), and every result must be one Xen could
return: a negative Xen errno, or a value the op can produce. The number of inputs tried is
printed (``-s`` shows it) and asserted. The default run is short; ``-m slow`` runs a long one.
"""

from __future__ import annotations

import random

import pytest

from xentmem import abi
from xentmem.abi import PAGE_SIZE, XenErrno
from xentmem.emulator import EmulatedHost
from xentmem.errors import HostCrashed

from .driver import Guest

ERRNOS = {-int(e) for e in XenErrno} | {-13}
FLAGS = [0x01000000, 0x01000001, 0x01000002, 0x01000003, 0x01000009, 0x02000001, 0x01000011,
         0x01000005, 0x01000101, 0]
CMDS = [*range(13), 100, 101, 102, 103, 200, 0xFFFFFFFF, 0x80000004]


class Fuzzer:
    def __init__(self, version: str, seed: int, designed: bool) -> None:
        self.version, self.designed = version, designed
        self.rng = random.Random(seed)
        self.tried = self.crashes = 0
        self.boot()

    def boot(self) -> None:
        r = self.rng
        self.host = EmulatedHost(32, xen_version=self.version, designed=self.designed,
                                 tmem_compress=r.random() < 0.5, dom0_memory_mb=8,
                                 tmem_dedup=r.random() < 0.3, tmem_tze=r.random() < 0.5)
        self.guests = [Guest(self.host, 0), Guest(self.host, self.host.create_domain("g", 4, 6))]
        self.iv = abi.SYSCTL_INTERFACE_VERSION.get(self.host.version, 0)

    def u32(self) -> int:
        r = self.rng
        return r.choice([0, 1, 2, 15, 16, 17, 31, 32, 4096, 4128, 0xFFFF, 0x7FF0, 0xFFFFFFFF,
                         r.getrandbits(32)])

    def address(self, g: Guest) -> int:
        r = self.rng
        return r.choice([0, 1, g.out.address, g.out.address + r.randrange(5 * PAGE_SIZE),
                         g.frame.number * PAGE_SIZE, r.getrandbits(64), 4096 * 10**9])

    def tmem_op(self, g: Guest) -> tuple[int, int]:
        r = self.rng
        if r.random() < 0.3:
            raw = r.randbytes(56)
        else:
            cmd = r.choice(CMDS)
            pool = r.choice([-1, 0, 1, 2, 15, 16, r.getrandbits(31)])
            member = abi.member_for(cmd)
            if member == "creat":
                raw = abi.TMEM_OP_CREAT.pack(cmd, pool, r.choice([0, 5, 2**64 - 1]),
                                             r.choice([0, 7, 2**64 - 1]), r.choice(FLAGS),
                                             self.u32())
            elif member == "ctrl":
                raw = abi.TMEM_OP_CTRL.pack(cmd, pool, r.randrange(40), self.u32(), self.u32(),
                                            self.u32(), r.randrange(3), 0, 0, self.address(g))
            else:
                raw = abi.TMEM_OP_GEN.pack(cmd, pool, r.randrange(3), 0, r.choice([0, 2**64 - 1]),
                                           r.randrange(4), self.u32(), self.u32(), self.u32(),
                                           r.choice([g.frame.number, 0, r.getrandbits(64),
                                                     g.frame.number + 1]))
        g.opbuf.write(raw)
        cmd = int.from_bytes(raw[:4], "little")
        addr = g.opbuf.address if r.random() < 0.95 else self.address(g)
        return cmd, self.host.hypercall(g.domid, 38, addr)

    def sysctl(self, g: Guest) -> int:
        r = self.rng
        if r.random() < 0.2:
            raw = r.randbytes(136)
        else:
            raw = abi.SYSCTL_TMEM_OP.pack(
                abi.XEN_SYSCTL_tmem_op if r.random() < 0.95 else r.randrange(64),
                self.iv if r.random() < 0.95 else r.getrandbits(32), r.randrange(40),
                r.choice([-1, 0, 1, 16]), r.choice([0, 1, 2, 0xFFFF, 0x7FF0, self.u32()]),
                self.u32(), self.u32(), 0 if r.random() < 0.9 else 1, r.randrange(3), 0, 0,
                self.address(g))
        g.opbuf.write(raw)
        return self.host.hypercall(g.domid, 35, g.opbuf.address)

    def other(self, g: Guest) -> int:
        r = self.rng
        op = r.choice([12, 13, 17, r.randrange(64)])
        args = [r.choice([0, 1, 7, self.address(g), r.getrandbits(64)])
                for _ in range(r.randrange(7))]
        if op == 13 and r.random() < 0.7:
            count = r.randrange(6)
            entries = b"".join(abi.MULTICALL_ENTRY.pack(
                r.choice([38, 17, 13, 35, r.randrange(64)]), 0,
                r.choice([g.opbuf.address, self.address(g)]),
                *(r.getrandbits(64) for _ in range(5))) for _ in range(count))
            g.out.write(entries)
            args = [g.out.address, count]
        return self.host.hypercall(g.domid, op, *args)

    def step(self) -> None:
        g = self.rng.choice(self.guests)
        kind = self.rng.random()
        self.tried += 1
        try:
            if kind < 0.6:
                cmd, rc = self.tmem_op(g)
                assert isinstance(rc, int)
                if cmd not in (0, 101, 102) and rc >= 0:
                    assert rc <= 15, (cmd, rc)
            elif kind < 0.85:
                rc = self.sysctl(g)
            else:
                rc = self.other(g)
        except HostCrashed:
            self.crashes += 1
            self.boot()
            return
        assert isinstance(rc, int)
        assert rc >= 0 or rc in ERRNOS, rc


def _fuzz(n: int, seed: int) -> int:
    total = 0
    for version in ("4.1", "4.5", "4.8", "4.12"):
        for designed in (False, True):
            fz = Fuzzer(version, seed, designed)
            for _ in range(n):
                fz.step()
            total += fz.tried
            assert fz.host.tmem.eph_count >= 0
    return total


def test_fuzz_entry_short():
    tried = _fuzz(600, seed=1)
    print(f"fuzz: {tried} inputs tried")
    assert tried == 600 * 8


@pytest.mark.slow
def test_fuzz_entry_long():
    tried = sum(_fuzz(10_000, seed) for seed in range(4))
    print(f"fuzz: {tried} inputs tried")
    assert tried == 10_000 * 8 * 4
