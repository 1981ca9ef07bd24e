"""Trace files: the documented format parses, every malformed line is refused with a message
naming the file and line, round trips are exact; synthetic traces are reproducible."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from xentmem.errors import TraceError
from xentmem.tuning import (
    SynthSpec,
    Trace,
    dumps_trace,
    load_trace,
    parse_trace,
    save_trace,
    synthesize,
)

GOOD = """\
# a comment
time,committed,reserve,max_pfn,totalram

0,100000,4000,262144,240000
5.5,101200,4000,262144,240000
11,99000,4000,262144,239000
"""


def test_csv_in_pages_with_defaults():
    tr = parse_trace(GOOD)
    assert tr.time_ms.tolist() == [0, 5500, 11000]
    assert tr.committed.tolist() == [100000, 101200, 99000]
    assert tr.maxram.tolist() == [240000] * 3  # the first row's totalram
    assert tr.frontswap.tolist() == [0, 0, 0]
    assert tr.demand.tolist() == [104000, 105200, 103000]
    assert tr.duration_ms == 11000


def test_kib_columns_and_json_lines_give_the_same_trace():
    kib = ("time,committed_kb,reserve,max_pfn_kb,totalram,maxram,frontswap_kb\n"
           "0,400000,4000,1048576,240000,250000,40\n1,404800,4000,1048576,240000,250000,0\n")
    jsonl = ('{"time": 0, "committed": 100000, "reserve": 4000, "max_pfn": 262144, '
             '"totalram": 240000, "maxram": 250000, "frontswap": 10}\n'
             '{"time": 1, "committed": 101200, "reserve": 4000, "max_pfn": 262144, '
             '"totalram": 240000, "maxram": 250000, "frontswap": 0}\n')
    a, b = parse_trace(kib), parse_trace(jsonl)
    for col in ("time_ms", "committed", "reserve", "max_pfn", "totalram", "maxram", "frontswap"):
        assert getattr(a, col).tolist() == getattr(b, col).tolist(), col
    assert a.frontswap.tolist() == [10, 0]


@pytest.mark.parametrize(("text", "message"), [
    ("", "t: empty trace"),
    ("time,committed,reserve,max_pfn\n0,1,1,100\n", "t:1: missing column(s) totalram"),
    ("time,comitted,reserve,max_pfn,totalram\n", "t:1: unknown column 'comitted'"),
    ("time,committed,reserve,max_pfn,totalram,committed_kb\n", "t:1: column 'committed' given "
                                                              "twice"),
    ("time,time,committed,reserve,max_pfn,totalram\n", "t:1: a column is named twice"),
    (GOOD.replace("5.5,101200", "5.5,-3"), "t:5: committed must be a non-negative whole"),
    (GOOD.replace("5.5,101200", "5.5,1.5"), "t:5: committed must be a non-negative whole"),
    (GOOD.replace("5.5,101200", "5.5,"), "t:5: missing value for committed"),
    (GOOD.replace("11,99000", "5.5,99000"), "t:6: time does not increase"),
    (GOOD.replace("5.5,", "0.0001,"), "t:5: time '0.0001' is finer than a millisecond"),
    (GOOD.replace("5.5,", "soon,"), "t:5: time must be a number of seconds"),
    (GOOD.replace("11,99000,4000", "11,99000"), "t:6: 4 values for 5 columns (header on line 2)"),
    (GOOD.replace("11,99000,4000,", "11,99000,300000,"), "t:6: reserve exceeds max_pfn"),
    (GOOD.replace("11,99000,4000,262144,239000", "11,99000,4000,262144,300000"),
     "t:6: totalram exceeds max_pfn"),
    ("time,committed,reserve,max_pfn,totalram\n0,1,1,100,50\n", "at least 2 samples, not 1"),
    ("time,committed_kb,reserve,max_pfn,totalram\n0,6,1,100,50\n1,8,1,100,50\n",
     "t:2: committed_kb = 6 is not a whole number of 4 KiB pages"),
    ('{"time": 0, "committed": 1, "reserve": 1, "max_pfn": 100, "totalram": 50}\n{"time": 1,\n',
     "t:2: not a JSON object"),
    ('{"time": 0, "committed": 1, "reserve": 1, "max_pfn": 100, "totalram": 50}\n'
     '{"time": 1, "committed": 1, "reserve": 1, "max_pfn": 100}\n',
     "t:2: keys differ from the first record's"),
    ('{"time": 0, "committed": 1.0, "reserve": 1, "max_pfn": 100, "totalram": 50}\n',
     "t:1: committed must be a whole number"),
    ('{"time": true, "committed": 1, "reserve": 1, "max_pfn": 100, "totalram": 50}\n',
     "t:1: time must be a number of seconds"),
])
def test_malformed_traces_name_the_line(text, message):
    with pytest.raises(TraceError) as err:
        parse_trace(text, "t")
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)


def test_load_names_the_file(tmp_path: Path):
    with pytest.raises(TraceError, match=r"nope\.csv: cannot read trace"):
        load_trace(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text(GOOD.replace("11,99000", "11,x"))
    with pytest.raises(TraceError, match=rf"{bad}:6: committed"):
        load_trace(bad)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_round_trip(tmp_path: Path, suffix: str):
    tr = synthesize(SynthSpec("diurnal", duration=600, step=7, memory_mb=256, seed=3))
    back = load_trace(save_trace(tr, tmp_path / f"t{suffix}"))
    assert back.name == f"t{suffix}"
    for col in ("time_ms", "committed", "reserve", "max_pfn", "totalram", "maxram", "frontswap"):
        assert np.array_equal(getattr(tr, col), getattr(back, col)), col
    assert dumps_trace(back) == dumps_trace(tr)


def test_trace_arrays_are_read_only():
    tr = parse_trace(GOOD)
    with pytest.raises(ValueError):
        tr.committed[0] = 1


@pytest.mark.parametrize("kind", ["steady", "ramp", "bursty", "diurnal"])
def test_synthetic_traces_are_seeded(kind):
    a = synthesize(SynthSpec(kind, duration=900, step=5, memory_mb=512, seed=7))
    b = synthesize(SynthSpec(kind, duration=900, step=5, memory_mb=512, seed=7))
    c = synthesize(SynthSpec(kind, duration=900, step=5, memory_mb=512, seed=8))
    assert a.committed.tolist() == b.committed.tolist() != c.committed.tolist()
    assert len(a) == 181 and a.max_pfn[0] == 512 * 256
    # guest-model constants: 1% kernel, reserve max_pfn/64
    assert (a.totalram[0], a.reserve[0]) == (131072 - 1310, 2048)


def test_synthetic_shapes():
    ramp = synthesize(SynthSpec("ramp", duration=1000, step=10, noise=0.0))
    assert ramp.committed[0] < ramp.committed[50] < ramp.committed[-1]
    assert ramp.committed[-1] == round(0.8 * int(ramp.totalram[0]))
    steady = synthesize(SynthSpec("steady", duration=100, step=10, noise=0.0))
    assert set(steady.committed.tolist()) == {round(0.3 * int(steady.totalram[0]))}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"kind": "spiky"}, "unknown trace kind 'spiky'"),
    ({"kind": "ramp", "step": 0}, "need step >= 1"),
    ({"kind": "ramp", "memory_mb": 8}, "memory_mb must be within"),
])
def test_bad_synth_specs(kwargs, message):
    with pytest.raises(TraceError, match=message):
        SynthSpec(**kwargs)


def test_build_refuses_fractional_columns():
    with pytest.raises(TraceError, match="column committed must hold whole numbers"):
        Trace.build([0, 1], [1.5, 2.0], [0, 0], [100, 100], [50, 50])


def test_unicode_digits_are_not_page_counts():
    with pytest.raises(TraceError, match="t:2: committed must be a non-negative whole"):
        parse_trace("time,committed,reserve,max_pfn,totalram\n0,²,1,100,50\n1,1,1,100,50\n",
                    "t")


def test_parquet_round_trip_is_exact_and_matches_csv(tmp_path: Path):
    tr = parse_trace(GOOD.replace("11,99000,4000,262144,239000",
                                  "11.25,99000,4000,262144,239000"), "x")
    for name in ("t.parquet", "t.csv", "t.jsonl"):
        back = load_trace(save_trace(tr, tmp_path / name))
        for col in ("time_ms", "committed", "reserve", "max_pfn", "totalram", "maxram",
                    "frontswap"):
            assert getattr(back, col).tolist() == getattr(tr, col).tolist(), (name, col)
    week = synthesize(SynthSpec("bursty", duration=7 * 86400, step=60))
    assert load_trace(save_trace(week, tmp_path / "w.parquet")).committed.tolist() \
        == week.committed.tolist()


def _parquet(path: Path, **columns) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


PQ = {"time": [0, 5, 10], "committed": [100, 120, 90], "reserve": [10, 10, 10],
      "max_pfn": [1000, 1000, 1000], "totalram": [900, 900, 900]}


@pytest.mark.parametrize(("change", "message"), [
    ({"committed": [100, -1, 90]}, "row 2: committed must be a non-negative whole number"),
    ({"committed": [100.0, 1.5, 90.0]}, "column committed must hold whole numbers, not double"),
    ({"committed": [100, None, 90]}, "row 2: missing value for committed"),
    ({"time": [0, 0.0001, 10]}, "row 2: time 0.0001 is finer than a millisecond"),
    ({"time": [0, 10, 5]}, "row 3: time does not increase"),
    ({"comitted": [1, 2, 3]}, "unknown column 'comitted'"),
    ({"reserve_kb": [40, 41, 40]}, "row 2: reserve_kb = 41 is not a whole number of 4 KiB"),
])
def test_parquet_is_held_to_the_same_rules(tmp_path: Path, change, message):
    cols = {**PQ, **change}
    if "reserve_kb" in change:
        del cols["reserve"]
    path = _parquet(tmp_path / "bad.parquet", **cols)
    with pytest.raises(TraceError, match=re.escape(message)):
        load_trace(path)


def test_parquet_kib_columns_and_fractional_seconds(tmp_path: Path):
    cols = {**PQ, "time": [0, 0.5, 1.25], "committed_kb": [400, 480, 360]}
    del cols["committed"]
    tr = load_trace(_parquet(tmp_path / "k.parquet", **cols))
    assert tr.time_ms.tolist() == [0, 500, 1250] and tr.committed.tolist() == [100, 120, 90]
    with pytest.raises(TraceError, match="cannot read Parquet trace"):
        load_trace(tmp_path / "k.csv.parquet")
