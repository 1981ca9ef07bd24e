"""The user-space self-balloon law (xentmem.agent.userspace) in tables of exact numbers: its
inputs parsed from a procfs + sysfs tree laid out as a Linux 6.1 guest has it, each run equal to
the kernel driver's law on the same inputs (the kernel model's own worker, and hypothesis over
the whole input space), its limits (never below the floor, never above max or dom0's target),
its schedule on an injected clock, and the balloon given back."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xentmem.agent import SysfsSink
from xentmem.agent.procfs import render_zoneinfo
from xentmem.agent.userspace import (
    CURRENT_KB,
    MEMINFO,
    TARGET_KB,
    ZONEINFO,
    Limits,
    UserSpaceSelfBalloon,
    ceiling_pages,
    floor_target,
    next_target,
    parse_inputs,
)
from xentmem.guest import Guest, SysfsView
from xentmem.guest.selfballoon import MB, MemorySnapshot, SelfBalloonKnobs, selfballoon_target

KNOBS = replace(SelfBalloonKnobs(), selfballooning=True, frontswap_selfshrinking=False)
OSRELEASE = "proc/sys/kernel/osrelease"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Tree:
    """A 6.1 guest's /proc and balloon sysfs as files (pages in, kB on disk), and a balloon
    driver that follows target_kb when told to (``follow``)."""

    def __init__(self, root: Path, *, T: int, C: int, R: int, P: int, kernel_pages: int = 1000,
                 zoneinfo: bool = True) -> None:
        self.root = root
        self.kernel_pages = kernel_pages
        self.R, self.P, self.C = R, P, C
        self.zoneinfo = zoneinfo
        self.write(T, T + kernel_pages, T + kernel_pages)
        (root / "proc/sys/kernel").mkdir(parents=True, exist_ok=True)
        (root / OSRELEASE).write_text("6.1.0-13-amd64\n")

    def write(self, T: int, current: int, target: int) -> None:
        files = {MEMINFO: f"MemTotal:       {T * 4} kB\nMemFree:        1024 kB\n"
                          f"HugePages_Total:       0\nCommitted_AS:   {self.C * 4} kB\n",
                 CURRENT_KB: f"{current * 4}\n", TARGET_KB: f"{target * 4}\n"}
        if self.zoneinfo:
            files[ZONEINFO] = render_zoneinfo(totalreserve_pages=self.R, max_pfn=self.P,
                                              managed_pages=T)
        for path, text in files.items():
            (self.root / path).parent.mkdir(parents=True, exist_ok=True)
            (self.root / path).write_text(text)

    @property
    def target(self) -> int:
        return int((self.root / TARGET_KB).read_text()) // 4

    def follow(self) -> None:
        """The balloon driver reaches the target: the reservation and totalram move."""
        target = self.target
        self.write(target - self.kernel_pages, target, target)


def law(tmp_path: Path, knobs=KNOBS, **tree) -> tuple[Tree, UserSpaceSelfBalloon, Clock]:
    t = Tree(tmp_path, **tree)
    clock = Clock()
    b = UserSpaceSelfBalloon(SysfsSink(tmp_path), clock=clock)
    b.knobs = knobs
    return t, b, clock


NO_LIMITS = Limits(None, None)


def test_inputs_from_a_6_1_tree(tmp_path: Path) -> None:
    Tree(tmp_path, T=240000, C=100000, R=4000, P=262144)
    b = UserSpaceSelfBalloon(SysfsSink(tmp_path))
    reading = b.read(NO_LIMITS)
    assert reading.snapshot == MemorySnapshot(totalram_pages=240000, committed_pages=100000,
                                              totalreserve_pages=4000, max_pfn=262144,
                                              balloon_current_pages=241000)
    assert (reading.target_pages, reading.reserve_from, reading.max_pfn_from) == (
        241000, "zoneinfo", "zoneinfo")


@pytest.mark.parametrize("meminfo, zoneinfo, current, target, static_max, expected", [
    ("MemTotal: 8 kB\nCommitted_AS: 4 kB\n", None, "16\n", "16\n", 64,
     "snapshot: T 2 C 1 R 0 P 16 B 4, reserve none, max_pfn static-max"),
    ("MemTotal: 8 kB\n", None, "16\n", "16\n", 64, "has no MemTotal or Committed_AS"),
    ("MemTotal: 8 kB\nbad line\n", None, "16\n", "16\n", 64, "unreadable or garbled"),
    (None, None, "16\n", "16\n", 64, "unreadable or garbled"),
    ("MemTotal: 8 kB\nCommitted_AS: 4 kB\n", None, None, "16\n", 64, "no Xen balloon driver"),
    ("MemTotal: 8 kB\nCommitted_AS: 4 kB\n", None, "16\n", "x", 64, "no Xen balloon driver"),
    ("MemTotal: 8 kB\nCommitted_AS: 4 kB\n", "garbage", "16\n", "16\n", None,
     "gives no max_pfn and memory/static-max is unreadable"),
])
def test_parse_inputs_table(meminfo, zoneinfo, current, target, static_max, expected) -> None:
    got = parse_inputs(meminfo, zoneinfo, current, target, static_max)
    if isinstance(got, str):
        assert expected in got
    else:
        s = got.snapshot
        assert (f"snapshot: T {s.totalram_pages} C {s.committed_pages} R "
                f"{s.totalreserve_pages} P {s.max_pfn} B {s.balloon_current_pages}, reserve "
                f"{got.reserve_from}, max_pfn {got.max_pfn_from}") == expected


@pytest.mark.parametrize("target_kib, static_max_kib, ceiling", [
    (None, None, None), (800000, None, 200000), (None, 1048576, 262144),
    (800000, 1048576, 200000), (2000000, 1048576, 262144), (1003, None, 250),
])
def test_ceiling_is_the_lower_of_dom0s_target_and_the_maximum(target_kib, static_max_kib,
                                                               ceiling) -> None:
    assert ceiling_pages(Limits(target_kib, static_max_kib)) == ceiling


def test_reference_example_step_by_step(tmp_path: Path) -> None:
    """ref §4.4: P 1 GiB, R 4000, C 100000, T 240000 (+1000 kernel pages outside totalram):
    each run moves an eighth of the way to goal 104000; the balloon follows between runs."""
    tree, b, _clock = law(tmp_path, T=240000, C=100000, R=4000, P=262144)
    written = []
    for _ in range(4):
        step = b.run(NO_LIMITS)
        written.append(tree.target)
        assert step.target_pages == step.law_pages == tree.target
        assert step.floor_pages == 36619 + 1000
        tree.follow()
    # 240000 - 136000//8 = 223000; 223000 - 119000//8 = 208125; 208125 - 104125//8 = 195110;
    # 195110 - 91110//8 = 183722 (totalram), each + 1000 kernel pages
    assert written == [224000, 209125, 196110, 184722]
    for _ in range(200):
        b.run(NO_LIMITS)
        tree.follow()
    assert tree.target == 104000 + 7 + 1000  # within downhysteresis of the goal: stays


def test_never_below_the_floor(tmp_path: Path) -> None:
    # goal 4000 + 10000 = 14000 < floor 36619: the law stops at the floor
    tree, b, _ = law(tmp_path, T=60000, C=10000, R=4000, P=262144)
    seen = []
    for _ in range(40):
        step = b.run(NO_LIMITS)
        seen.append(step.target_pages)
        tree.follow()
    assert min(seen) == seen[-1] == 36619 + 1000
    assert all(a >= b for a, b in itertools.pairwise(seen))


def test_min_usable_mb_sets_the_floor(tmp_path: Path) -> None:
    knobs = replace(KNOBS, min_usable_mb=200, downhysteresis=1)
    _tree, b, _ = law(tmp_path, knobs, T=240000, C=10000, R=4000, P=262144)
    assert b.run(NO_LIMITS).target_pages == 4000 + 200 * MB + 1000


def test_never_above_dom0s_target_nor_the_maximum(tmp_path: Path) -> None:
    # growing: goal 150000 + 4000 + 64 MiB reserved; uphysteresis 1 jumps there
    knobs = replace(KNOBS, reserved_mb=64)
    tree, b, _ = law(tmp_path, knobs, T=100000, C=150000, R=4000, P=262144)
    assert b.run(NO_LIMITS).target_pages == 150000 + 4000 + 64 * MB + 1000  # 171384
    step = b.run(Limits(memory_target_kib=160000 * 4, static_max_kib=1048576))
    assert (step.law_pages, step.ceiling_pages, step.target_pages) == (171384, 160000, 160000)
    assert tree.target == 160000
    assert b.run(Limits(None, static_max_kib=155000 * 4)).target_pages == 155000
    # dom0's target below the law's floor: dom0's word wins, as for the balloon driver
    low = b.run(Limits(memory_target_kib=20000 * 4, static_max_kib=1048576))
    assert low.target_pages == 20000 < low.floor_pages


def test_runs_on_the_injected_clock(tmp_path: Path) -> None:
    tree, b, clock = law(tmp_path, replace(KNOBS, selfballooning=False), T=240000, C=100000,
                         R=4000, P=262144)
    assert not b.due() and b.run(NO_LIMITS) is None and tree.target == 241000  # off: nothing
    b.set_knob("interval", 3)
    b.set_knob("selfballooning", 1)  # 0->1: the first run an interval later, as the kernel's
    assert b.due_at == 1003.0 and not b.due()
    clock.now = 1002.9
    assert not b.due()
    clock.now = 1003.0
    assert b.due()
    b.run(NO_LIMITS)
    assert b.due_at == 1006.0 and not b.due()
    b.set_knob("selfballooning", 1)  # already on: no reschedule
    assert b.due_at == 1006.0
    b.set_knob("selfballooning", 0)
    assert b.due_at is None and not b.due()
    assert b.applied() == {"selfballooning": 0, "interval": 3, "downhysteresis": 8,
                           "uphysteresis": 1, "min_usable_mb": 0, "reserved_mb": 0,
                           "selfshrinking": 0}


def test_release_gives_the_balloon_back_to_dom0s_target(tmp_path: Path) -> None:
    tree, b, _ = law(tmp_path, T=240000, C=100000, R=4000, P=262144)
    b.run(Limits(memory_target_kib=964000, static_max_kib=1048576))
    assert tree.target == 224000
    assert b.release(Limits(memory_target_kib=964003, static_max_kib=None)) == 964000
    assert tree.target == 241000 and not b.enabled
    b.set_knob("selfballooning", 1)
    b.run(Limits(964000, None))
    assert b.release(None) == 964000  # xenstore gone: the last target seen
    assert tree.target == 241000
    nothing = UserSpaceSelfBalloon(SysfsSink(tmp_path))
    assert nothing.release(Limits(None, None)) is None  # nothing known: left as it is


def test_where_dom0_says_nothing_the_target_before_stands_in(tmp_path: Path) -> None:
    knobs = replace(KNOBS, selfballooning=False, reserved_mb=64)
    tree, b, _ = law(tmp_path, knobs, T=100000, C=150000, R=4000, P=262144)
    b.set_knob("selfballooning", 1)  # the balloon's target now: 101000 pages
    assert b.before_kib == 101000 * 4
    step = b.run(NO_LIMITS)  # the law would grow to 171384: no higher than before
    assert (step.law_pages, step.ceiling_pages, step.target_pages) == (171384, 101000, 101000)
    tree.write(60000, 61000, 61000)  # something else moved it down meanwhile
    assert b.release(NO_LIMITS) == 101000 * 4 and tree.target == 101000


def test_unreadable_inputs_change_nothing_and_are_tried_again(tmp_path: Path) -> None:
    tree, b, clock = law(tmp_path, T=240000, C=100000, R=4000, P=262144)
    (tmp_path / MEMINFO).write_text("MemTotal: lots\n")
    assert b.run(NO_LIMITS) is None and "garbled" in b.last_error
    assert tree.target == 241000 and b.due_at == clock.now + 5
    tree.write(240000, 241000, 241000)
    assert b.run(NO_LIMITS).target_pages == 224000 and b.last_error is None


def test_without_zoneinfo_reserve_is_0_and_max_pfn_is_static_max(tmp_path: Path) -> None:
    _tree, b, _ = law(tmp_path, T=240000, C=100000, R=4000, P=262144, zoneinfo=False)
    step = b.run(Limits(None, static_max_kib=262144 * 4))
    assert (step.reading.reserve_from, step.reading.max_pfn_from) == ("none", "static-max")
    # goal 100000, R 0: 240000 - 140000//8 = 222500
    assert step.target_pages == 222500 + 1000


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(T=st.integers(4 * MB, 4 << 20), C=st.integers(0, 8 << 20), R=st.integers(0, 64 * MB),
       extra=st.integers(0, 4 << 20), K=st.integers(0, 64 * MB),
       down=st.integers(1, 10000), up=st.integers(1, 10000), min_usable=st.integers(0, 4096),
       reserved=st.integers(0, 4096), target=st.none() | st.integers(1, 1 << 30),
       static_max=st.none() | st.integers(1, 1 << 30))
def test_each_run_is_the_kernel_law_on_the_same_inputs(tmp_path, T, C, R, extra, K, down, up,
                                                       min_usable, reserved, target,
                                                       static_max) -> None:
    knobs = replace(KNOBS, downhysteresis=down, uphysteresis=up, min_usable_mb=min_usable,
                    reserved_mb=reserved)
    P = T + extra
    tree, b, _ = law(tmp_path, knobs, T=T, C=C, R=R, P=P, kernel_pages=K)
    limits = Limits(target, static_max)
    step = b.run(limits)
    snap = MemorySnapshot(totalram_pages=T, committed_pages=C, totalreserve_pages=R, max_pfn=P,
                          balloon_current_pages=T + K)
    kernel = selfballoon_target(knobs, snap)
    ceiling = ceiling_pages(limits)
    assert tree.target == step.target_pages == (kernel if ceiling is None
                                                else min(kernel, ceiling))
    assert step.target_pages == next_target(knobs, snap, ceiling)
    assert step.target_pages >= floor_target(knobs, snap) or step.target_pages == ceiling
    assert ceiling is None or step.target_pages <= ceiling


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(memory_mb=st.integers(64, 512), extra_mb=st.integers(0, 512),
       anon=st.integers(0, 8000), down=st.integers(1, 16), reserved=st.integers(0, 64))
def test_equal_to_the_kernel_models_own_worker(tmp_path, memory_mb, extra_mb, anon, down,
                                               reserved) -> None:
    """The same guest twice: the 3.10 kernel model's self-balloon worker sets a target; the
    agent, reading that guest's files (laid out by SysfsView, zoneinfo from its numbers),
    writes the very same one."""
    guest = Guest("g", memory_mb=memory_mb, max_memory_mb=memory_mb + extra_mb)
    guest.alloc_anon(anon)
    guest.selfballoon.knobs = replace(guest.selfballoon.knobs, selfballooning=True,
                                      frontswap_selfshrinking=False, downhysteresis=down,
                                      reserved_mb=reserved)
    root = SysfsView(guest).mirror(tmp_path / f"g{memory_mb}-{extra_mb}-{anon}")
    (root / ZONEINFO).write_text(render_zoneinfo(
        totalreserve_pages=guest.totalreserve_pages, max_pfn=guest.max_pfn,
        managed_pages=guest.totalram_pages))
    b = UserSpaceSelfBalloon(SysfsSink(root))
    b.knobs = replace(guest.selfballoon.knobs, frontswap_selfshrinking=False)
    step = b.run(NO_LIMITS)
    guest.selfballoon.process()
    assert step.target_pages == guest.selfballoon.last_target
