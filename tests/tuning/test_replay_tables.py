"""The closed-loop replay against hand-computed numbers (ref §4.4-§4.5 and the model in
``xentmem.tuning.replay``). Every figure below was worked out by hand; the comment next to each
table shows the arithmetic."""

from __future__ import annotations

from dataclasses import replace

import pytest

from xentmem.guest.selfballoon import MB, SelfBalloonKnobs
from xentmem.tuning import Scores, Trace, follow, replay, replay_many

DEFAULTS = SelfBalloonKnobs()
P, R = 262144, 4000  # ref §4.4: a 1 GiB guest, totalreserve 4000 -> floor 36619


def trace(times_s, committed, *, T0=240000, maxram=None, frontswap=0) -> Trace:
    n = len(times_s)
    return Trace.build([t * 1000 for t in times_s], committed, [R] * n, [P] * n, [T0] * n,
                       maxram if maxram is None else [maxram] * n, [frontswap] * n)


def both(tr: Trace, knobs: SelfBalloonKnobs, rate: int = 0):
    """The scalar reference, checked against the vectorised engine on the way."""
    ref = replay(tr, knobs, balloon_rate=rate)
    many = replay_many(tr, [knobs], balloon_rate=rate, record=True)
    assert many.scores_at(0) == ref.scores
    assert {k: v.tolist() for k, v in many.series[0].items()} == ref.series
    return ref


def test_reference_example_three_runs_down_by_an_eighth():
    # ref §4.4: T=240000, C=100000 -> goal 104000; runs at 5, 10, 15 s:
    # 240000 - 136000//8 = 223000; 223000 - 119000//8 = 208125; 208125 - 104125//8 = 195110
    r = both(trace([0, 5, 10, 15], [100000] * 4), DEFAULTS)
    s = r.series
    assert s["time_ms"] == [5000, 10000, 15000]
    assert s["totalram"] == [240000, 223000, 208125]
    assert s["goal"] == [104000] * 3
    assert s["floor"] == [36619] * 3
    assert s["target"] == [223000, 208125, 195110]
    assert r.totalram_after == [223000, 208125, 195110]
    # held: (240000 + 223000 + 208125) pages x 5000 ms; the last run's value holds for 0 s
    assert r.scores == Scores(duration_ms=15000, runs=3, held_page_ms=3_355_625_000,
                              baseline_page_ms=3_600_000_000, peak_held=240000,
                              shortfall_page_ms=0, peak_shortfall=0, frontswap_page_ms=0,
                              target_changes=3, shrinks=0, repatriated=0)
    assert r.scores.mean_held_mib == pytest.approx(671125 / 3 / MB)


def test_jump_shortfall_frontswap_and_selfshrink():
    # interval 1, downhysteresis 1; committed 100000 until t=2, then 150000; end at t=6.
    # run@1 reads t=0: goal 104000 -> target 104000 (T 240000 -> 104000)
    # run@2 reads t=0 (a sample at the run's instant is seen by the next run): T == goal
    # run@3: demand 154000 over [2,3) with T 104000 -> shortfall 50000 -> F 50000;
    #        goal 150000 + 4000 + F 50000 = 204000, up 1 -> jump; selfshrink: growth, counter 3
    # run@4, @5: no growth, counter 3 -> 2 -> 1; run@6: 1 -> 0, shrink to 50000 - 2500
    r = both(trace([0, 2, 6], [100000, 150000, 150000]), replace(DEFAULTS, interval=1,
                                                               downhysteresis=1))
    s = r.series
    assert s["committed"] == [100000, 100000, 150000, 150000, 150000, 150000]
    assert s["totalram"] == [240000, 104000, 104000, 204000, 204000, 204000]
    assert s["shortfall"] == [0, 0, 50000, 0, 0, 0]
    assert s["frontswap"] == [0, 0, 50000, 50000, 50000, 50000]
    assert s["goal"] == [104000, 104000, 204000, 204000, 204000, 204000]
    assert s["target"] == [104000, 104000, 204000, 204000, 204000, 204000]
    assert s["shrink_to"] == [-1, -1, -1, -1, -1, 47500]
    # held 240000+104000+104000 (1 s each) + 204000 x 3 s; shortfall 50000 x 1 s;
    # frontswap 50000 over [3, 6)
    assert r.scores == Scores(duration_ms=6000, runs=6, held_page_ms=1_060_000_000,
                              baseline_page_ms=1_440_000_000, peak_held=240000,
                              shortfall_page_ms=50_000_000, peak_shortfall=50000,
                              frontswap_page_ms=150_000_000, target_changes=2, shrinks=1,
                              repatriated=2500)


def test_without_selfshrinking_frontswap_stays_out_of_the_goal_and_is_not_shrunk():
    knobs = replace(DEFAULTS, interval=1, downhysteresis=1, frontswap_selfshrinking=False)
    r = both(trace([0, 2, 6], [100000, 150000, 150000]), knobs)
    # run@3: goal 154000 (no F), T jumps to it; F stays 50000 to the end
    assert r.series["goal"] == [104000, 104000, 154000, 154000, 154000, 154000]
    assert r.series["frontswap"] == [0, 0, 50000, 50000, 50000, 50000]
    assert r.series["shrink_to"] == [-1] * 6
    assert (r.scores.shrinks, r.scores.frontswap_page_ms) == (0, 150_000_000)


@pytest.mark.parametrize(("T", "target", "ceiling", "step", "expected"), [
    (240000, 104000, 240000, 0, 104000),      # immediate
    (240000, 104000, 240000, 50000, 190000),  # rate-limited down
    (100000, 180000, 240000, 50000, 150000),  # rate-limited up
    (100000, 120000, 240000, 50000, 120000),  # within one step
    (100000, 300000, 240000, 0, 240000),      # the balloon cannot deflate past maxram
    (230000, 300000, 240000, 50000, 240000),  # nor with a rate limit
])
def test_follow(T, target, ceiling, step, expected):
    assert follow(T, target, ceiling, step) == expected


def test_rate_limited_balloon():
    # downhysteresis 1 wants 104000 at once; 10000 pages/s x 5 s = 50000 pages per run
    r = both(trace([0, 5, 10, 15], [100000] * 4), replace(DEFAULTS, downhysteresis=1),
             rate=10000)
    assert r.series["target"] == [104000, 104000, 104000]
    assert r.totalram_after == [190000, 140000, 104000]
    assert r.scores.target_changes == 1


def test_maxram_caps_growth_and_the_shortfall_remains():
    # T0 = maxram = 200000; demand 254000 exceeds it from the start: by run@5 the shortfall
    # 54000 is in frontswap, so goal = 254000 + 54000 = 308000, but the balloon is empty
    r = both(trace([0, 5, 10], [250000] * 3, T0=200000), DEFAULTS)
    assert r.series["shortfall"] == [54000, 54000]
    assert r.series["target"] == [308000, 308000]
    assert r.totalram_after == [200000, 200000]
    assert r.series["frontswap"] == [54000, 54000]
    assert r.scores.shortfall_page_ms == 54000 * 10000
    assert r.scores.target_changes == 1


def test_min_usable_mb_floor_and_reserved_mb_goal():
    # min_usable 500 MiB: floor 4000 + 128000; reserved 16 MiB: goal 104000 + 4096
    knobs = replace(DEFAULTS, downhysteresis=1, min_usable_mb=500, reserved_mb=16)
    r = both(trace([0, 5], [100000, 100000]), knobs)
    assert (r.series["floor"], r.series["goal"], r.series["target"]) == (
        [132000], [108096], [132000])


def test_selfballooning_off_holds_totalram():
    knobs = replace(DEFAULTS, selfballooning=False)
    r = both(trace([0, 5, 10], [100000] * 3), knobs)
    assert r.series["target"] == [240000, 240000]
    assert r.scores.held_page_ms == r.scores.baseline_page_ms
    assert (r.scores.target_changes, r.scores.saved_pct) == (0, 0.0)


def test_a_trace_shorter_than_the_interval_has_no_run():
    r = both(trace([0, 3], [100000, 100000]), DEFAULTS)
    assert r.scores.runs == 0
    assert r.scores.held_page_ms == 240000 * 3000


def test_coarse_trace_runs_between_samples():
    # samples every 10 s, interval 5: runs at 5 and 10 both read the t=0 sample;
    # the t=10 demand (154000) starts after run@10 and lasts [10, 20), run@15 and @20 see it
    r = both(trace([0, 10, 20], [100000, 150000, 150000]), replace(DEFAULTS, downhysteresis=1))
    assert r.series["committed"] == [100000, 100000, 150000, 150000]
    assert r.series["totalram"] == [240000, 104000, 104000, 204000]
    assert r.series["shortfall"] == [0, 0, 50000, 0]
    assert r.scores.shortfall_page_ms == 50000 * 5000
