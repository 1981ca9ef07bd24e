"""``/proc/vmstat`` as the agent publishes it for dom0's memory manager: only the counters
asked for, junk lines skipped, never an exception."""

from __future__ import annotations

from xentmem.agent.procfs import parse_vmstat


def test_parse_vmstat_takes_the_named_counters_and_skips_junk():
    text = "nr_free_pages 12\npswpin 7\npswpout 99999999999999999999999\npswpin 8\n\x00 x\n"
    assert parse_vmstat(text, ("pswpin", "pswpout")) == {"pswpin": 7}
    assert parse_vmstat(b"pswpout 3\n", ("pswpin", "pswpout")) == {"pswpout": 3}
    assert parse_vmstat(None, ("pswpin",)) == {}
    assert parse_vmstat("pswpin -1\npswpin\n", ("pswpin",)) == {}
