"""``compare`` on a short run: it ranks the policies, and every figure in its table is
recomputed here from the raw series it reports (its JSON), by a separate reckoning."""

from __future__ import annotations

import math

import pytest

from xentmem.balance.compare import STATIC, CompareSpec, Comparison, compare, parse_guests

GIB_S = 1024 * 1024  # KiB in a GiB


@pytest.fixture(scope="module")
def result() -> Comparison:
    return compare(CompareSpec(guests=("db", "idle"), duration_s=40, interval_s=5))


def _recompute(run: dict) -> dict[str, float]:
    """The scores of one run from its raw series, guest by guest."""
    t = run["time_s"]
    names = run["guests"]
    held_kib_s = short_kib_s = below = 0.0
    ratios = []
    for g in range(len(names)):
        served = 0.0
        for i in range(len(t) - 1):
            dt = t[i + 1] - t[i]
            mem, need = run["memory_kib"][i][g], run["need_kib"][i][g]
            held_kib_s += run["held_kib"][i][g] * dt
            gap = max(need - mem, 0)
            short_kib_s += gap * dt
            below += dt if gap else 0.0
            served += (min(mem, need) / need if need else 1.0) * dt
        ratios.append(served / (t[-1] - t[0]))
    c = run["counters"]

    def grew(name: str) -> int:
        return sum(end - start for start, end in zip(c[name][0], c[name][-1], strict=True))

    return {"held_gib_h": held_kib_s / GIB_S / 3600,
            "shortfall_gib_h": short_kib_s / GIB_S / 3600, "below_need_s": below,
            "swap_ins": grew("swapins"), "swap_ins_disk": grew("disk_reads"),
            "refaults": grew("file_reads") - grew("cleancache_hits"),
            "tmem_hits": grew("swapins_frontswap") + grew("cleancache_hits"),
            "fairness": sum(ratios) ** 2 / (len(ratios) * sum(r * r for r in ratios))}


def test_compare_ranks_the_policies(result):
    table = result.rows()
    assert [r["policy"] for r in sorted(table, key=lambda r: r["policy"])] == [
        "mom", "qmemman", STATIC, "tmem"]
    assert [r["rank"] for r in table] == [1, 2, 3, 4]
    nets = [r["net_gib_h"] for r in table]
    assert nets == sorted(nets, reverse=True)
    static = next(r for r in table if r["policy"] == STATIC)
    assert static["saved_gib_h"] == 0
    tmem = next(r for r in table if r["policy"] == "tmem")
    assert tmem["saved_gib_h"] > 0  # idle gives memory back
    runs = {r.policy: r for r in result.runs}
    assert runs[STATIC].events == [] and runs["tmem"].events
    assert all(r.round_s for p, r in runs.items() if p != STATIC)


def test_every_figure_is_recomputed_from_the_raw_series(result):
    data = result.as_dict()
    runs = {r["policy"]: r for r in data["runs"]}
    mine = {p: _recompute(r) for p, r in runs.items()}
    for m in mine.values():
        m["saved_gib_h"] = mine[STATIC]["held_gib_h"] - m["held_gib_h"]
        m["net_gib_h"] = m["saved_gib_h"] - m["shortfall_gib_h"]
    order = sorted(mine, key=lambda p: -mine[p]["net_gib_h"])
    for row in data["table"]:
        m = mine[row["policy"]]
        assert row["rank"] == order.index(row["policy"]) + 1
        for key in ("saved_gib_h", "shortfall_gib_h", "net_gib_h"):
            assert row[key] == round(m[key], 4), (row["policy"], key)
        assert row["below_need_s"] == round(m["below_need_s"], 1)
        assert row["fairness"] == round(m["fairness"], 3)
        for key in ("swap_ins", "swap_ins_disk", "refaults", "tmem_hits"):
            assert row[key] == m[key], (row["policy"], key)
        scores = runs[row["policy"]]["scores"]
        assert all(math.isclose(scores[k], m[k], rel_tol=1e-9, abs_tol=1e-12) for k in m)
    # the series are what the machine did: samples every 5 s, one value per guest
    for r in runs.values():
        assert r["time_s"] == [5.0 * i for i in range(9)]
        assert all(len(row) == 2 for row in r["target_kib"])


def test_parse_guests():
    assert parse_guests("web, 2xdb,idle") == ("web", "db", "db", "idle")
    for bad in ("", "web,3xnope", "nope", "x"):
        with pytest.raises(ValueError):
            parse_guests(bad)
