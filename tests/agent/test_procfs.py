"""The zoneinfo/meminfo readers of xentmem.agent.procfs (the tuning collector reads zoneinfo
with them too): two kernels' real files, any text, the one-zone file the emulated guest shows
read back as its numbers; a real /proc parses, as the collector's meminfo reader reads it; and
the sysfs sink reads a long procfs file whole, or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xentmem.agent import SysfsSink
from xentmem.agent.procfs import (
    parse_meminfo,
    render_zoneinfo,
    totalreserve_pages,
    zoneinfo_max_pfn,
)
from xentmem.tuning import procfs as tuning

FIXTURES = Path(__file__).resolve().parents[1] / "tuning" / "fixtures"


@pytest.mark.parametrize("name, reserve, max_pfn", [
    ("zoneinfo-6.18.txt", 3840 + 14710 + 14931, 1048576 + 5505024),
    ("zoneinfo-3.10.txt", 984 + 2089, 4096 + 258048),
])
def test_real_zoneinfo(name: str, reserve: int, max_pfn: int) -> None:
    text = (FIXTURES / name).read_text()
    assert totalreserve_pages(text) == reserve
    assert zoneinfo_max_pfn(text) == max_pfn


_LINES = st.sampled_from([
    "Node 0, zone      DMA", "Node 1, zone   Normal", "Node 0, zone  Movable",
    "        high     31", "        high     x", "              high:  0", "        managed  3840",
    "        spanned  4095", "  start_pfn:           1", "        protection: (0, 2945, 7881)",
    "        protection: (0, x)", "        protection: ()", "  pages free     3840", "",
    "garbage", "        managed  0", "        high     99999",
])


@settings(max_examples=300, deadline=None)
@given(st.lists(_LINES, max_size=40))
def test_any_text_reads_as_a_number_or_nothing(lines: list[str]) -> None:
    """The one zoneinfo reader (the tuning collector uses it too) never raises on garbage."""
    text = "\n".join(lines)
    for value in (totalreserve_pages(text), zoneinfo_max_pfn(text)):
        assert value is None or (isinstance(value, int) and value >= 0)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 1 << 30), st.integers(1, 1 << 30), st.integers(0, 1 << 30))
def test_rendered_zoneinfo_reads_back(reserve: int, max_pfn: int, managed: int) -> None:
    text = render_zoneinfo(totalreserve_pages=reserve, max_pfn=max_pfn, managed_pages=managed)
    assert totalreserve_pages(text) == reserve and zoneinfo_max_pfn(text) == max_pfn


def test_meminfo_of_this_machine() -> None:
    text = Path("/proc/meminfo").read_text()
    ours = parse_meminfo(text)
    assert ours is not None and ours["MemTotal"] > 0 and "Committed_AS" in ours
    theirs = tuning.parse_meminfo(text)  # the kB fields only
    assert theirs and all(ours[k] == v for k, v in theirs.items())
    assert parse_meminfo("MemTotal: 1 kB\nnot a line\n") is None
    assert parse_meminfo(None) is None


def test_sysfs_sink_reads_procfs_whole_or_not_at_all(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    long = "Node 0, zone   Normal\n" + "              high:  0\n" * 40000  # ~1 MiB of pagesets
    (tmp_path / "proc/zoneinfo").write_text(long)
    sink = SysfsSink(tmp_path)
    assert sink.read("proc/zoneinfo") == long
    (tmp_path / "proc/zoneinfo").write_text(long * 5)  # beyond 4 MiB: absent, never cut short
    assert sink.read("proc/zoneinfo") is None
    (tmp_path / "attr").write_text("x" * 1000)
    assert sink.read("attr") == "x" * 256  # a sysfs attribute: one short line
