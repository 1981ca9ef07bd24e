"""The kernel release decides what the guest model has (xentmem.guest.kernel)."""

from __future__ import annotations

import pytest

from xentmem.errors import GuestError
from xentmem.guest import Guest, Kernel, SysfsView, Zcache
from xentmem.guest.sysfs import SELFBALLOON_DIR


@pytest.mark.parametrize(("text", "tmem", "cleancache", "frontswap"), [
    ("3.10", True, True, True), ("5.2.21", True, True, True), ("5.3", False, True, True),
    ("5.17", False, False, True), ("6.1", False, False, True), ("6.6", False, False, False),
])
def test_features_by_release(text: str, tmem: bool, cleancache: bool, frontswap: bool) -> None:
    k = Kernel.parse(text)
    assert (k.has_tmem, k.has_selfballoon, k.has_cleancache, k.has_frontswap) == (
        tmem, tmem, cleancache, frontswap)


@pytest.mark.parametrize("bad", ["", "6", "2.6.32", "3.9", "six.one", "6.1-rc1x"])
def test_bad_versions_are_refused(bad: str) -> None:
    with pytest.raises(GuestError):
        Kernel.parse(bad)


def test_from_release_reads_uname() -> None:
    assert Kernel.from_release("6.1.0-13-amd64\n") == Kernel(6, 1)
    assert Kernel.from_release("garbage") is None
    assert Kernel.from_release("2.6.32") is None


def test_modern_guest_has_no_tmem_and_no_selfballoon_knobs() -> None:
    guest = Guest("g", memory_mb=64, kernel="6.1")

    class Tmemish(Zcache):
        name = "tmem"

    with pytest.raises(GuestError, match=r"Linux 6\.1 has no tmem"):
        guest.load_backend(Tmemish())
    assert guest.backend is None
    paths = SysfsView(guest).paths()
    assert not any(p.startswith(SELFBALLOON_DIR) for p in paths)
    assert "sys/devices/system/xen_memory/xen_memory0/target_kb" in paths
    assert SysfsView(guest).read("proc/sys/kernel/osrelease") == "6.1.0-xentmem\n"


def test_tmem_era_guest_keeps_everything() -> None:
    paths = SysfsView(Guest("g", memory_mb=64, kernel="4.19")).paths()
    assert f"{SELFBALLOON_DIR}/selfballooning" in paths
    assert "sys/kernel/debug/frontswap/succ_stores" in paths
