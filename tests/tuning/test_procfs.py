"""The /proc collector: zoneinfo and meminfo parsed into the law's inputs (tables of exact
numbers from two kernels' formats), the balloon's sysfs, the sampler's clock, and one real
recording of this machine's /proc."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from xentmem.errors import TraceError
from xentmem.tuning.procfs import (
    parse_meminfo,
    read_sample,
    record_procfs,
    totalreserve_pages,
    zoneinfo_max_pfn,
)

FIXTURES = Path(__file__).parent / "fixtures"
MEMINFO = "MemTotal:        1000000 kB\nMemFree:  10 kB\nCommitted_AS:     400004 kB\n" \
          "HugePages_Total:       0\nBogus: 12x kB\n"


def test_zoneinfo_6_18():
    text = (FIXTURES / "zoneinfo-6.18.txt").read_text()
    # DMA (index 0): max(0, 3019, 7371, ...) + high 50 = 7421, capped at managed 3840;
    # DMA32 (index 1): max(3019.. from index 1 = 4352) + 10358 = 14710; Normal: 0 + 14931;
    # Movable, Device: managed 0
    assert totalreserve_pages(text) == 3840 + 14710 + 14931
    assert zoneinfo_max_pfn(text) == 1048576 + 5505024  # Normal: start_pfn + spanned


def test_zoneinfo_3_10_format():
    text = (FIXTURES / "zoneinfo-3.10.txt").read_text()
    # DMA: 977 + 7 = 984 (managed 3976); DMA32 (index 1): 0 + 2089; the pcp "high:" ignored
    assert totalreserve_pages(text) == 984 + 2089
    assert zoneinfo_max_pfn(text) == 4096 + 258048


@pytest.mark.parametrize("text", ["", "garbage\n", "Node 0, zone DMA\n        high 5\n",
                                  "Node 0, zone DMA\n  protection: (0, x)\n        high 5\n"
                                  "        managed 9\n"])
def test_garbled_zoneinfo_gives_none(text):
    assert totalreserve_pages(text) is None


def test_meminfo():
    assert parse_meminfo(MEMINFO) == {"MemTotal": 1000000, "MemFree": 10,
                                      "Committed_AS": 400004}


def _root(tmp_path: Path, balloon: tuple[str, str] | None = None) -> Path:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/meminfo").write_text(MEMINFO)
    (tmp_path / "proc/zoneinfo").write_text((FIXTURES / "zoneinfo-3.10.txt").read_text())
    if balloon is not None:
        info = tmp_path / "sys/devices/system/xen_memory/xen_memory0/info"
        info.mkdir(parents=True)
        (info / "low_kb").write_text(balloon[0] + "\n")
        (info / "high_kb").write_text(balloon[1] + "\n")
    return tmp_path


def test_sample_with_a_xen_balloon(tmp_path: Path):
    s = read_sample(_root(tmp_path, ("40000", "4")))
    # 1000000 kB = 250000 pages; the balloon holds 10000 + 1 pages; max_pfn 262144
    assert (s.committed, s.totalram, s.reserve, s.max_pfn, s.maxram) == (
        100001, 250000, 3073, 262144, 260001)


def test_sample_refuses_garbage(tmp_path: Path):
    root = _root(tmp_path, ("lots", "0"))
    with pytest.raises(TraceError, match="low_kb: not a number of kB"):
        read_sample(root)
    (root / "proc/meminfo").write_text("MemTotal: 5 kB\n")
    with pytest.raises(TraceError, match="no Committed_AS"):
        read_sample(root)
    with pytest.raises(TraceError, match="cannot read"):
        read_sample(tmp_path / "nowhere")


def test_sampler_clock_and_trace(tmp_path: Path):
    """A fake clock (documented: keeps the test instant and exact)."""
    now = [100.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    tr = record_procfs(10, 5, root=_root(tmp_path), clock=lambda: now[0], sleep=sleep)
    assert tr.time_ms.tolist() == [0, 5000, 10000]
    assert slept == [5.0, 5.0]
    assert tr.committed.tolist() == [100001] * 3 and tr.maxram.tolist() == [250000] * 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux /proc")
def test_records_this_machine():
    tr = record_procfs(0.1, 0.05)
    assert len(tr) == 3
    assert (tr.totalram <= tr.max_pfn).all() and (tr.reserve < tr.totalram).all()
    assert (tr.committed > 0).all()
