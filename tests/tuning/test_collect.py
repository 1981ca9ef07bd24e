"""The collector: guest-model workloads on the emulated host (real emulator, real guest model,
tmem backend) recorded as a trace; and the workload-spec parser."""

from __future__ import annotations

import pytest

from xentmem.errors import TraceError
from xentmem.guest.selfballoon import MB, SelfBalloonKnobs
from xentmem.tuning import CollectSpec, collect_trace, parse_workload, replay


def test_collected_trace_follows_the_workload_and_fills_frontswap():
    # 64 MiB guest: the model's base, + 24 MiB grown over 4 s, then a 40 MiB burst over
    # [6, 10) s that no longer fits: the overflow goes to frontswap (tmem on emulated 4.12).
    # A sample at t shows the work done during [t - 1, t).
    spec = CollectSpec((parse_workload("anon:mb=24,grow=4,rate=200"),
                        parse_workload("burst:start=6,duration=4,mb=40,rate=100", seed=1)),
                       duration=14, step=1, memory_mb=64, swap_mb=64, tmem_mb=64)
    tr = collect_trace(spec, name="t")
    assert tr.time_ms.tolist() == [i * 1000 for i in range(15)]
    base = int(tr.committed[0])
    assert (tr.committed - base).tolist() == [0, 0, 6 * MB, 12 * MB, 18 * MB] + [24 * MB] * 2 \
        + [64 * MB] * 4 + [24 * MB] * 4
    # max_pfn is the domain's maximum: its memory plus the tmem headroom (maxmem)
    assert (tr.max_pfn == (64 + 64) * MB).all() and (tr.totalram == tr.maxram).all()
    assert tr.frontswap[:7].tolist() == [0] * 7
    assert (tr.frontswap[7:11] > 0).all()
    # the trace replays
    assert replay(tr, SelfBalloonKnobs(interval=1)).scores.runs == 14


def test_without_tmem_headroom_nothing_reaches_frontswap():
    spec = CollectSpec((parse_workload("anon:mb=48,rate=50"),), duration=3, step=1,
                       memory_mb=64, tmem_mb=0)
    assert collect_trace(spec).frontswap.max() == 0


@pytest.mark.parametrize(("text", "message"), [
    ("heap:mb=3", "unknown workload kind 'heap'"),
    ("anon:megs=3", "bad field 'megs=3'"),
    ("anon:mb=lots", "mb = 'lots' is not a int"),
    ("anon:mb", "bad field 'mb'"),
    ("anon:write_fraction=2", "write_fraction must be within"),
])
def test_bad_workloads(text, message):
    with pytest.raises(TraceError, match=message):
        parse_workload(text)


def test_workload_fields_are_typed():
    w = parse_workload("file:files=2,file_mb=3,hot_share=0.5,fs=data,start=1.5", seed=9)
    assert (w.kind, w.files, w.file_mb, w.hot_share, w.fs, w.start, w.seed) == (
        "file", 2, 3, 0.5, "data", 1.5, 9)


def test_bad_collect_spec():
    with pytest.raises(TraceError, match="at least one workload"):
        CollectSpec(())
    with pytest.raises(TraceError, match="backend must be tmem or none"):
        CollectSpec((parse_workload("anon"),), backend="zswap")
