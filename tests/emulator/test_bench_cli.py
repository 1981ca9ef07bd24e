"""``xentmem bench tmem`` through the CLI edge (tiny run; the figures themselves are not
asserted: this is a benchmark, not a timed test)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from xentmem.cli import app


def test_bench_tmem_json_rows():
    result = CliRunner().invoke(app, ["bench", "tmem", "--pages", "200", "--rounds", "1",
                                       "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    rows = out["rows"]
    assert {(r["scenario"], r["mode"], r["op"]) for r in rows} == {
        (s, m, o) for s in ("private persistent", "private ephemeral, eviction",
                            "persistent, compression on")
        for m, o in (("single", "put"), ("single", "get"), ("single", "get-bytes"),
                     ("batched", "put"), ("batched", "get"))}
    for row in rows:
        assert row["pages_per_s"] > 0 and row["dict_pages_per_s"] > 0 and row["ratio"] > 0
        expect_all = not (row["scenario"].startswith("private ephemeral")
                          and row["op"].startswith("get"))
        assert row["hits"] == 200 if expect_all else 0 <= row["hits"] <= 200
    assert out["resident_bytes_per_page"] > 0
    assert out["resident_bytes_per_compressed_page"] >= 0  # 200 tiny pages may fit freed memory
    assert out["lzo_pages_per_s"]["compress"] > 0 and out["lzo_pages_per_s"]["decompress"] > 0


def test_bench_tmem_rejects_tiny_runs():
    result = CliRunner().invoke(app, ["bench", "tmem", "--pages", "5"])
    assert result.exit_code == 2
    assert "at least 100" in result.output
