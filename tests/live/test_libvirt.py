"""The libvirt calls the project makes (``xentmem.host.libvirt``), against Debian's libvirtd
with its libxl driver (``xen:///system``) in a real dom0.

libvirtd starts here with only the libxl driver module (``LIBVIRT_DRIVER_DIR``: the QEMU driver
would spend minutes probing QEMU binaries under TCG) and creates its own PV guest: domains made
with ``xl create`` are invisible to libvirt.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from xentmem.errors import LibvirtError
from xentmem.host.libvirt import LibvirtConnection

from ._xen import wait_until, xl_list

DRIVER = Path("/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_libxl.so")
URI = "xen:///system"
CALL_TIMEOUT = 60.0  # libvirt calls under TCG are slow, never unbounded
START_TIMEOUT = 120.0
NAME = "xq-libvirt"
NS = "https://xentmem.example/live"
GUEST_XML = f"""<domain type='xen'>
  <name>{NAME}</name>
  <memory unit='KiB'>262144</memory>
  <currentMemory unit='KiB'>131072</currentMemory>
  <vcpu>1</vcpu>
  <os>
    <type>linux</type>
    <kernel>/run/xen-qemu/guest/vmlinuz.gz</kernel>
    <initrd>/run/xen-qemu/guest/initrd.cpio</initrd>
    <cmdline>console=hvc0 rdinit=/init</cmdline>
  </os>
  <on_crash>destroy</on_crash>
  <devices><console type='pty'/></devices>
</domain>"""


def _hypervisor(conn: LibvirtConnection) -> tuple[str, str] | None:
    try:
        return conn.hypervisor()
    except LibvirtError:
        conn.close()
        return None


@pytest.fixture(scope="module")
def libvirtd(dom0: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    daemon = shutil.which("libvirtd")
    if daemon is None or not DRIVER.exists():
        pytest.skip("libvirt-daemon and libvirt-daemon-driver-xen are not installed")
    work = tmp_path_factory.mktemp("libvirtd")
    drivers = work / "drivers"
    drivers.mkdir()
    (drivers / DRIVER.name).symlink_to(DRIVER)
    conf = work / "libvirtd.conf"
    conf.write_text('log_outputs = "2:stderr"\n')
    log = work / "libvirtd.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([daemon, "-f", str(conf)], stdout=sink, stderr=subprocess.STDOUT,
                                env={**os.environ, "LIBVIRT_DRIVER_DIR": str(drivers)})
    try:
        conn = LibvirtConnection(URI, timeout=CALL_TIMEOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while _hypervisor(conn) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"libvirtd did not come up (exit {proc.poll()}): "
                            f"{log.read_text(errors='replace')[-2000:]}")
            time.sleep(1)
        conn.close()
        yield log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def lv(libvirtd: Path) -> Iterator[LibvirtConnection]:
    conn = LibvirtConnection(URI, timeout=CALL_TIMEOUT)
    conn._bounded("create guest", lambda: conn.conn.createXML(GUEST_XML, 0))
    yield conn
    try:
        conn._bounded("destroy guest", lambda: conn.conn.lookupByName(NAME).destroy())
    finally:
        conn.close()


def test_hypervisor_is_xen_417(lv: LibvirtConnection) -> None:
    kind, version = lv.hypervisor()
    assert kind == "Xen"
    assert version.startswith("4.17."), version


def test_list_domains_and_memory(lv: LibvirtConnection) -> None:
    found = {d.name: d for d in lv.domains()}
    assert found["Domain-0"].domid == 0
    guest = found[NAME]
    assert guest.state in ("running", "blocked")
    assert guest.domid == xl_list()[NAME]["id"]
    assert (guest.memory_kib, guest.max_kib) == (131072, 262144)
    assert lv.domain(NAME) == guest
    total, free = lv.node_memory()
    assert total > free > 0


def test_set_memory_balloons_the_guest(lv: LibvirtConnection) -> None:
    lv.set_memory(NAME, 96 * 1024)
    wait_until(lambda: xl_list()[NAME]["mem"] == 96, 90, "xl list to show 96 MiB")
    assert lv.domain(NAME).memory_kib == 96 * 1024


def test_metadata_roundtrip(lv: LibvirtConnection) -> None:
    assert lv.metadata(NAME, NS) is None
    lv.set_metadata(NAME, "<tmem enabled='yes'/>", "xt", NS)
    assert lv.metadata(NAME, NS) == "<tmem enabled=\"yes\"/>"
    lv.set_metadata(NAME, None, "xt", NS)
    assert lv.metadata(NAME, NS) is None
