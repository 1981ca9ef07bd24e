"""``PrivcmdHypervisor`` on a real Xen 4.17: version probes answer, tmem is gone (ENOSYS), and
dom0 (a PV domain) gets runs of page frames from its own reservation."""

from __future__ import annotations

import errno
import re

import pytest

from xentmem.abi import PAGE_SIZE, XenVersion
from xentmem.errors import TmemError, TmemNotAvailable
from xentmem.hypercalls import PrivcmdHypervisor, Tmem, xen_version

from ._xen import run, wait_until, xl_list


@pytest.fixture
def hv(dom0: None):
    with PrivcmdHypervisor() as hv:
        yield hv


def _xl_info() -> dict[str, str]:
    info = {}
    for line in run("xl", "info").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


def test_xen_version_is_417_with_extraversion(hv: PrivcmdHypervisor) -> None:
    version, extra = xen_version(hv)
    assert version == XenVersion(4, 17)
    assert re.fullmatch(r"\.\d+.*", extra), extra
    info = _xl_info()  # what the real toolstack reads through libxc, for comparison
    assert (info["xen_major"], info["xen_minor"]) == ("4", "17")
    assert info["xen_extra"] == extra


def test_tmem_new_pool_is_enosys_and_says_tmem_is_gone(hv: PrivcmdHypervisor) -> None:
    tmem = Tmem(hv)
    try:
        assert tmem.version == XenVersion(4, 17)  # probed through the same privcmd fd
        with pytest.raises(TmemError) as caught:
            tmem.new_pool(persistent=False)
    finally:
        tmem.close()
    exc = caught.value
    assert isinstance(exc, TmemNotAvailable)
    assert exc.errno == errno.ENOSYS
    text = str(exc)
    assert "NEW_POOL" in text and "ENOSYS" in text, text
    assert "absent" in text and "4.13" in text, text


def test_unknown_hypercall_slot_is_enosys(hv: PrivcmdHypervisor) -> None:
    # Slot 38 (tmem_op) and an unused slot both reach Xen's dispatcher and come back -ENOSYS.
    with pytest.raises(TmemError) as caught:
        hv.hypercall(60)
    assert caught.value.errno == errno.ENOSYS


def test_pv_frames_come_from_our_own_reservation(hv: PrivcmdHypervisor) -> None:
    # dom0 runs at its max (dom0_mem=512M,max:512M): `xl mem-set` balloons it down 8 MiB and
    # sets its max 1 MiB above that, which leaves XENMEM_increase_reservation room for the run.
    mem = xl_list()["Domain-0"]["mem"]
    try:
        run("xl", "mem-set", "0", f"{mem - 8}m")
        wait_until(lambda: xl_list()["Domain-0"]["mem"] <= mem - 8, 60.0,
                   "dom0 to balloon down 8 MiB")
        frames = hv.alloc_frames(4)
        try:
            numbers = frames.numbers
            assert len(set(numbers)) == 4 and 0 not in numbers
            frames.write(b"".join(bytes([i + 1]) * PAGE_SIZE for i in range(4)))
            frames.write(b"\x77" * PAGE_SIZE, 2)
            assert frames.read(1, 2) == b"\x02" * PAGE_SIZE + b"\x77" * PAGE_SIZE
            out = bytearray(PAGE_SIZE)
            frames.read_into(out, 3)
            assert out == b"\x04" * PAGE_SIZE
        finally:
            frames.close()  # the frames go back to Xen
    finally:
        run("xl", "mem-set", "0", f"{mem}m")
        run("xl", "mem-max", "0", f"{mem}m")
