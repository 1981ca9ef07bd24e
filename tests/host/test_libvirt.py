"""The real-host side of the facade against libvirt's real ``test:///default`` driver (no daemon):
domains, memory get/set through setMemoryFlags, our metadata element; and the whole host with
libvirt for domains plus our xenstored (an agent as domain 1 = libvirt's "test") for toggles.

``test:///default`` is shared by every connection in this process, so each test puts back what
it changed."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xentmem.cli import app
from xentmem.emulator import EmulatedHost
from xentmem.emulator.machine import EmulatedMachine, GuestSpec
from xentmem.errors import LibvirtError
from xentmem.host.guests import METADATA_URI, Host
from xentmem.host.libvirt import DomainInfo, LibvirtConnection
from xentmem.xenstore import XenStoreClient, XenStoreServer

URI = "test:///default"
MEMORY_KIB = 2097152  # the test driver's domain "test": 2 GiB of 8 GiB max


@pytest.fixture
def lv() -> Iterator[LibvirtConnection]:
    conn = LibvirtConnection(URI, timeout=5)
    conn.set_metadata("test", None, "tmem", METADATA_URI)
    yield conn
    conn.set_memory("test", MEMORY_KIB)
    conn.set_metadata("test", None, "tmem", METADATA_URI)
    conn.close()


@pytest.fixture
def xenstored() -> Iterator[XenStoreServer]:
    work = Path(tempfile.mkdtemp(prefix="xthost", dir="/tmp"))
    srv = XenStoreServer(work / "xs").start()
    yield srv
    srv.stop()
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def real_host(lv: LibvirtConnection, xenstored: XenStoreServer) -> Iterator[Host]:
    """libvirt knows domain 1 as "test"; our xenstored has domain 1 with an agent running."""
    with EmulatedMachine(EmulatedHost(1024), xenstored, stats_interval=0.2) as machine:
        guest = machine.add_guest(GuestSpec("test", 128, 256, backend="tmem"))
        assert guest.domid == 1
        xs = XenStoreClient(xenstored.path, timeout=5)
        yield Host(xs, lv, ack_timeout=5)
        xs.close()


def test_domains_and_lookup(lv: LibvirtConnection):
    expected = DomainInfo(name="test", uuid="6695eb01-f6a4-8304-79aa-97f2502e193f", domid=1,
                          state="running", memory_kib=MEMORY_KIB, max_kib=8388608,
                          persistent=True)
    assert lv.domains() == [expected]
    assert lv.domain("test") == lv.domain(1) == expected
    assert lv.domain("nosuch") is None and lv.domain(99) is None
    unreachable = LibvirtConnection("qemu+unix:///system?socket=/nonexistent", timeout=5)
    with pytest.raises(LibvirtError, match="nonexistent"):
        unreachable.domain("test")
    total, _free = lv.node_memory()
    assert total == 3072 * 1024


def test_memory_set_and_get(lv: LibvirtConnection):
    lv.set_memory("test", 1048576)
    assert lv.domain("test").memory_kib == 1048576
    with pytest.raises(LibvirtError):
        lv.set_memory("test", 8388608 + 1024)  # above maxMemory: VIR_ERR_INVALID_ARG
    assert lv.domain("test").memory_kib == 1048576


def test_metadata_round_trip(lv: LibvirtConnection):
    assert lv.metadata("test", METADATA_URI) is None  # VIR_ERR_NO_DOMAIN_METADATA -> None
    lv.set_metadata("test", "<tmem><interval>7</interval></tmem>", "tmem", METADATA_URI)
    assert "<interval>7</interval>" in lv.metadata(1, METADATA_URI)
    with pytest.raises(LibvirtError):
        lv.set_metadata("test", "<tmem><unclosed></tmem>", "tmem", METADATA_URI)
    lv.set_metadata("test", None, "tmem", METADATA_URI)
    assert lv.metadata("test", METADATA_URI) is None


def test_calls_are_bounded():
    """A wedged libvirt call (stood in for by a sleep: no daemon here can be made to hang)
    fails after the timeout instead of blocking."""
    conn = LibvirtConnection(URI, timeout=0.1)
    with pytest.raises(LibvirtError, match=r"no answer within 0\.1 s"):
        conn._bounded("stuck call", lambda: time.sleep(2))


def test_real_host_lists_toggles_and_sets_memory(real_host: Host, lv: LibvirtConnection):
    (info,) = real_host.guests()
    assert (info.name, info.domid, info.state, info.memory_kib) == ("test", 1, "running",
                                                                   MEMORY_KIB)
    assert info.tmem is not None and info.tmem.status == "applied"
    result = real_host.set_toggles("test", {"interval": 6, "selfballooning": False})
    assert result.status == "applied", result
    metadata = lv.metadata("test", METADATA_URI)
    assert "<interval>6</interval>" in metadata and "<selfballooning>0" in metadata
    real_host.set_toggles("test", {"uphysteresis": 2})  # merged into the element
    assert "<interval>6</interval>" in real_host.guest("test").metadata
    memory = real_host.set_memory_target("test", 1536 * 1024)
    assert (memory.via, memory.previous_kib, memory.status) == ("libvirt", MEMORY_KIB,
                                                                "requested")
    assert lv.domain("test").memory_kib == 1536 * 1024
    with pytest.raises(ValueError, match="above the maximum"):
        real_host.set_memory_target("test", 9 * 1024 * 1024)
    summary = real_host.summary()
    assert summary["host"]["kind"] == "libvirt" and summary["host"]["memory_mib"] == 3072


def test_cli_against_libvirt(real_host: Host, xenstored: XenStoreServer):
    runner = CliRunner()
    common = ["--xenstored", xenstored.path, "--libvirt-uri", URI]
    status = runner.invoke(app, ["status", "--json", *common])
    assert status.exit_code == 0, status.output
    data = json.loads(status.stdout)
    assert data["host"]["hypervisor"].split()[0].upper() == "TEST"
    assert [g["name"] for g in data["guests"]] == ["test"]
    memory = runner.invoke(app, ["guest", "memory", "test", "--target", "1024", "--json",
                                 "--wait", "0", *common])
    assert memory.exit_code == 0, memory.output
    assert json.loads(memory.stdout)["via"] == "libvirt"
    shown = json.loads(runner.invoke(app, ["guest", "show", "1", "--json", *common]).stdout)
    assert shown["guest"]["memory_mib"] == 1024 and shown["guest"]["agent"] == "applied"
    missing = runner.invoke(app, ["guest", "show", "nosuch", *common])
    assert missing.exit_code == 2 and "no domain 'nosuch'" in missing.stderr
