"""Hypothesis-driven schedules (single thread, every interleaving reproducible): any sequence of
page operations, swapon/swapoff, backend loads / replacements / unloads, mode switches and
partial swapoffs keeps the frontswap bookkeeping exact and never loses or corrupts a page."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from xentmem.errors import GuestError
from xentmem.guest import Guest, Zcache

BACKENDS = st.sampled_from(["zcache", "zcache-nonexclusive", "zcache-tiny"])


def _make(name: str) -> Zcache:
    return {"zcache": Zcache, "zcache-nonexclusive": lambda: Zcache(exclusive_gets=False),
            "zcache-tiny": lambda: Zcache(max_pool_mb=0)}[name]()


class GuestMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.guest = Guest("sched", memory_mb=32)
        self.guest.swapon(64)
        self.guest.mount("root", "ext4")
        self.pids: list[int] = []

    @rule(n=st.integers(1, 20))
    def alloc(self, n):
        self.pids += self.guest.alloc_anon(n)

    @precondition(lambda self: self.pids)
    @rule(i=st.integers(0, 10**6), op=st.sampled_from(["out", "read", "write", "free"]))
    def page_op(self, i, op):
        pid = self.pids[i % len(self.pids)]
        if op == "out":
            self.guest.swap_out(pid)
        elif op == "read":
            self.guest.read_anon(pid)
        elif op == "write":
            self.guest.write_anon(pid)
        else:
            self.guest.free_anon(pid)
            self.pids.remove(pid)

    @precondition(lambda self: self.pids)
    @rule()
    def swap_all_out(self):
        for pid in self.pids:
            self.guest.swap_out(pid)

    @rule(ino=st.integers(0, 3), index=st.integers(0, 15),
          op=st.sampled_from(["read", "write", "evict", "truncate"]))
    def file_op(self, ino, index, op):
        g = self.guest
        if op == "read":
            g.read_file("root", ino, index)
        elif op == "write":
            g.write_file("root", ino, index)
        elif op == "evict":
            g.evict_file_pages(8)
        else:
            g.truncate("root", ino)

    @rule(name=BACKENDS)
    def load(self, name):
        if self.guest.backend is None:
            self.guest.load_backend(_make(name))

    @rule(name=BACKENDS)
    def replace(self, name):
        self.guest.load_backend(_make(name), replace=True)

    @precondition(lambda self: self.guest.backend is not None)
    @rule()
    def unload(self):
        report = self.guest.unload_backend()
        assert report.missing == 0 or self.guest.frontswap.writethrough_enabled

    @rule(on=st.booleans())
    def writethrough(self, on):
        self.guest.frontswap.writethrough(on)

    @rule()
    def swapon(self):
        if len(self.guest.active_swap_devices()) < 4:
            self.guest.swapon(32)

    @precondition(lambda self: len(self.guest.active_swap_devices()) > 1)
    @rule(i=st.integers(0, 10))
    def swapoff(self, i):
        devices = self.guest.active_swap_devices()
        try:
            self.guest.swapoff(devices[i % len(devices)].type)
        except GuestError as exc:  # RAM cannot take the device's pages: refused, no change
            assert "ENOMEM" in str(exc)

    @rule(pages=st.integers(0, 40))
    def shrink(self, pages):
        self.guest.frontswap.shrink(pages)

    @invariant()
    def bookkeeping_is_exact(self):
        g = self.guest
        for sis in g.active_swap_devices():
            assert sis.frontswap_pages == sum(sis.frontswap_map)
            if g.frontswap.ops is None:
                assert sis.frontswap_pages == 0
        assert g.stats.lost == 0, g.stats.incidents
        assert g.stats.stale == 0, g.stats.incidents

    def teardown(self):
        if self.guest.backend is not None:
            self.guest.unload_backend()
        self.guest.verify_anon()
        assert self.guest.stats.lost == self.guest.stats.stale == 0, self.guest.stats.incidents


GuestMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=60,
                                          deadline=None,
                                          suppress_health_check=list(HealthCheck))
test_schedules = GuestMachine.TestCase
