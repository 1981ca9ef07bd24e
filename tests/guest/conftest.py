"""Fixtures for the guest-model tests."""

from __future__ import annotations

import pytest

from xentmem.guest import Guest


@pytest.fixture
def guest() -> Guest:
    return Guest("test", memory_mb=64)


@pytest.fixture
def emulated_tmem_factory():
    """Builds ``XenTmem`` modules over a tmem client of one domain on an emulated Xen 4.12."""
    from xentmem.emulator import EmulatedHost
    from xentmem.emulator.transport import EmulatedHypervisor
    from xentmem.guest import XenTmem
    from xentmem.hypercalls import Tmem

    host = EmulatedHost(memory_mb=1024, xen_version="4.12")
    domid = host.create_domain("guest", memory_mb=128, max_memory_mb=256)
    hv = EmulatedHypervisor(host, domid)

    def make() -> XenTmem:
        return XenTmem(Tmem(hv, version="4.12"), selfballooning=False)

    return make
