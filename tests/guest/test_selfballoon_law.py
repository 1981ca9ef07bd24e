"""The self-balloon and self-shrink law of ref §4.4-§4.5 against hand-computed numbers."""

from __future__ import annotations

from dataclasses import replace

import pytest

from xentmem.guest.selfballoon import (
    MB,
    MemorySnapshot,
    SelfBalloonKnobs,
    SelfShrinkState,
    selfballoon_floor,
    selfballoon_goal,
    selfballoon_target,
    selfshrink_step,
)

DEFAULTS = SelfBalloonKnobs()


def snap(T, C, R=4000, P=262144, B=None, fs=0) -> MemorySnapshot:
    return MemorySnapshot(totalram_pages=T, committed_pages=C, totalreserve_pages=R, max_pfn=P,
                          balloon_current_pages=T + 5000 if B is None else B, frontswap_pages=fs)


def test_defaults_are_the_kernel_ones():
    assert (DEFAULTS.interval, DEFAULTS.downhysteresis, DEFAULTS.uphysteresis,
            DEFAULTS.min_usable_mb, DEFAULTS.reserved_mb, DEFAULTS.frontswap_hysteresis,
            DEFAULTS.frontswap_inertia) == (5, 8, 1, 0, 0, 20, 3)


def test_reference_example_1_gib_guest_goes_down_by_an_eighth():
    # ref §4.4: P=262144, R=4000, T=240000, C=100000 -> goal 104000, tgt 223000
    s = snap(T=240000, C=100000, B=245000)
    assert selfballoon_floor(DEFAULTS, 4000, 262144) == 36619
    assert selfballoon_goal(DEFAULTS, s) == 104000
    assert selfballoon_target(DEFAULTS, s) == 223000 + 245000 - 240000


def test_floor_reached_clamps_the_target():
    # tgt = 40000 - (40000-5000)//8 = 35625 < floor 36619
    assert selfballoon_target(DEFAULTS, snap(T=40000, C=1000, B=45000)) == 36619 + 5000


def test_up_jumps_to_goal_with_default_uphysteresis():
    assert selfballoon_target(DEFAULTS, snap(T=100000, C=150000, B=105000)) == 154000 + 5000


def test_up_with_uphysteresis_2_goes_half_way():
    knobs = replace(DEFAULTS, uphysteresis=2)
    assert selfballoon_target(knobs, snap(T=100000, C=150000, B=105000)) == 127000 + 5000


def test_equal_goal_keeps_target():
    assert selfballoon_target(DEFAULTS, snap(T=104000, C=100000, B=104000)) == 104000


def test_frontswap_pages_join_the_goal_only_when_selfshrinking():
    s = snap(T=240000, C=100000, B=240000, fs=6000)
    assert selfballoon_goal(DEFAULTS, s) == 110000
    assert selfballoon_target(DEFAULTS, s) == 240000 - 130000 // 8  # 223750
    off = replace(DEFAULTS, frontswap_selfshrinking=False)
    assert selfballoon_target(off, s) == 223000


def test_reserved_mb_is_added_to_the_goal():
    knobs = replace(DEFAULTS, reserved_mb=10)
    assert selfballoon_goal(knobs, snap(T=1, C=100000)) == 104000 + 10 * MB


@pytest.mark.parametrize(("P", "R", "floor"), [
    (2048, 32, 2048),                                      # < 16 MiB useful: do not balloon
    (16384, 256, 256 + 16 * MB + (16128 - 16 * MB) // 2),  # 10368
    (65536, 1024, 1024 + 40 * MB + (64512 - 40 * MB) // 8),  # 18048
    (262144, 4000, 36619),
])
def test_floor_piecewise_linear(P, R, floor):
    assert selfballoon_floor(DEFAULTS, R, P) == floor


def test_floor_from_min_usable_mb():
    knobs = replace(DEFAULTS, min_usable_mb=100)
    assert selfballoon_floor(knobs, 4000, 262144) == 4000 + 25600


def test_selfballoon_sequence_converges_from_above():
    """Repeated runs with a fixed C walk down by 1/8 of the gap each time."""
    T, B = 240000, 245000
    seen = []
    for _ in range(4):
        target = selfballoon_target(DEFAULTS, snap(T=T, C=100000, B=B))
        # the balloon reaches the target; totalram follows by the same delta
        T, B = T + (target - B), target
        seen.append(T)
    # 240000-136000//8; 223000-119000//8; 208125-104125//8; 195110-91110//8
    assert seen == [223000, 208125, 195110, 183722]


def test_selfshrink_starts_on_the_inertia_th_non_growing_run_then_5_percent_per_run():
    state = SelfShrinkState()
    targets = []
    for curr in (1000, 1000, 1000, 1000, 950, 903):
        state, tgt = selfshrink_step(DEFAULTS, state, curr)
        targets.append(tgt)
    assert targets == [None, None, None, 950, 903, 858]


def test_selfshrink_growth_rearms_the_countdown():
    state = SelfShrinkState(cur=950, last=1000, counter=0)
    state, tgt = selfshrink_step(DEFAULTS, state, 980)  # grew
    assert tgt is None and state.counter == 3
    for _ in range(2):
        state, tgt = selfshrink_step(DEFAULTS, state, 980)
        assert tgt is None
    state, tgt = selfshrink_step(DEFAULTS, state, 980)
    assert tgt == 980 - 49


def test_selfshrink_to_zero_at_or_below_hysteresis():
    _state, tgt = selfshrink_step(DEFAULTS, SelfShrinkState(cur=20, last=25, counter=0), 20)
    assert tgt == 0


def test_selfshrink_zero_pages_rearms():
    state, tgt = selfshrink_step(DEFAULTS, SelfShrinkState(cur=5, last=9, counter=0), 0)
    assert tgt is None and state.counter == 3


@pytest.mark.parametrize("bad", [{"interval": 0}, {"downhysteresis": 0}, {"uphysteresis": 0},
                                 {"frontswap_hysteresis": 0}, {"reserved_mb": -1}])
def test_knobs_reject_values_the_law_cannot_use(bad):
    with pytest.raises(ValueError):
        SelfBalloonKnobs(**bad)
