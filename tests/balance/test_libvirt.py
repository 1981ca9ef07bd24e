"""The manager on a real host's toolstack: libvirt's real ``test:///default`` driver (no
daemon; shared by the process, so the test puts back what it changed). Settings live in the
domain's libvirt metadata, usage comes from ``memoryStats`` (no agent), targets go through
``setMemoryFlags``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from xentmem.balance import Settings
from xentmem.balance.collect import Collector, libvirt_memory
from xentmem.balance.manager import Manager
from xentmem.balance.settings import METADATA_URI, read_settings, write_settings
from xentmem.host.guests import Host
from xentmem.host.libvirt import LibvirtConnection

MEMORY_KIB = 2097152  # the test driver's domain "test": 2 GiB of 8 GiB max


@pytest.fixture
def host() -> Iterator[Host]:
    lv = LibvirtConnection("test:///default", timeout=5)
    lv.set_metadata("test", None, "balance", METADATA_URI)
    yield Host(None, lv)
    lv.set_memory("test", MEMORY_KIB)
    lv.set_metadata("test", None, "balance", METADATA_URI)
    lv.close()


def test_settings_in_libvirt_metadata(host):
    assert read_settings(host, 1, "test") == Settings()
    s = Settings(floor_kib=512 * 1024, ceiling_kib=4096 * 1024, opt_out=False, priority=30)
    write_settings(host, 1, "test", s)
    assert read_settings(host, 1, "test") == s
    assert 'floor_mib="512"' in (host.libvirt.metadata("test", METADATA_URI) or "")
    with pytest.raises(ValueError):
        write_settings(host, 1, "test", Settings(priority=0))
    assert read_settings(host, 1, "test") == s  # nothing written


def test_a_round_on_libvirt_uses_memory_stats_and_set_memory_flags(host):
    # memoryStats: available 2 GiB, unused 1 GiB, disk_caches 256 MiB: used 768 MiB; no agent,
    # no tmem: the tmem policy keeps qmemman's 1.3 -> 998.4 MiB
    manager = Manager(host, Collector(host, libvirt_memory(host.libvirt)), policy="tmem")
    r = manager.round()
    (g,) = r.guests
    assert g.source == "libvirt" and g.used_kib == 768 * 1024 and g.memory_kib == MEMORY_KIB
    (d,) = r.plan.decisions
    assert d.managed and d.target_kib == int(1.3 * 768 * 1024)
    assert host.libvirt.domain("test").memory_kib == d.target_kib  # setMemoryFlags
    assert r.events[0].startswith("test: 2048 -> 998 MiB")
    again = manager.round()  # it followed (the driver's stats scale with its memory)
    assert again.guests[0].memory_kib == d.target_kib and not manager.uncooperative
