"""pytest plugin (entry point ``pytest11``): an emulated Xen host and guests for other projects'
CI, no Xen needed.

Fixtures:

- ``xentmem_host``: an ``EmulatedHost`` (Xen ``--xentmem-xen-version``, default 4.12, 2 GiB);
- ``xentmem_tmem``: a ``Tmem`` client of a fresh domain on that host;
- ``xentmem_guest``: a factory ``(name, *, memory_mb=128, max_memory_mb=2*memory_mb, swap_mb=64,
  mounts=("root",), backend="tmem" | "zcache" | None) -> Guest`` booting a guest model as a
  domain of the host. At teardown every page of every guest is read back, and the test fails if
  any was lost or stale.

Example::

    def test_pages_survive_unload(xentmem_guest):
        guest = xentmem_guest("app", memory_mb=64, swap_mb=128, backend="tmem")
        pids = guest.alloc_anon(20_000)  # 78 MiB: more than fits in 64
        guest.balance()                  # kswapd: frontswap stores into tmem
        assert guest.unload_backend().drained > 0
        assert guest.verify_anon() == len(pids)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from xentmem.emulator import EmulatedHost
    from xentmem.guest import Guest
    from xentmem.hypercalls import Tmem

__all__ = ["pytest_addoption", "xentmem_guest", "xentmem_host", "xentmem_tmem"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("xentmem", "emulated Xen host (xentmem)")
    group.addoption("--xentmem-xen-version", default="4.12",
                    help="Xen release the emulated host imitates (4.1-4.12; default 4.12).")


@pytest.fixture
def xentmem_host(request: pytest.FixtureRequest) -> EmulatedHost:
    """A fresh emulated Xen host with 2 GiB."""
    from xentmem.emulator import EmulatedHost

    return EmulatedHost(memory_mb=2048,
                        xen_version=request.config.getoption("--xentmem-xen-version"))


@pytest.fixture
def xentmem_tmem(xentmem_host: EmulatedHost) -> Iterator[Tmem]:
    """A ``Tmem`` client of a new domain (256 MiB, max 512: persistent pages need headroom
    below the domain's maximum) on ``xentmem_host``."""
    from xentmem.emulator.transport import EmulatedHypervisor
    from xentmem.hypercalls import Tmem

    domid = xentmem_host.create_domain("tmem-client", memory_mb=256, max_memory_mb=512)
    with Tmem(EmulatedHypervisor(xentmem_host, domid), version=xentmem_host.version) as tmem:
        yield tmem


@pytest.fixture
def xentmem_guest(xentmem_host: EmulatedHost) -> Iterator[Callable[..., Guest]]:
    """A factory booting guest models on ``xentmem_host``; fails the test at teardown if any
    page of any guest comes back lost or stale."""
    from xentmem.emulator.transport import EmulatedHypervisor
    from xentmem.guest import Guest, XenTmem, Zcache
    from xentmem.guest.balloon import HypervisorReservation
    from xentmem.hypercalls import Tmem

    guests: list[Guest] = []

    def make(name: str = "guest", *, memory_mb: int = 128, max_memory_mb: int | None = None,
             swap_mb: int = 64, mounts: Sequence[str] = ("root",),
             backend: str | None = "tmem", **backend_params: Any) -> Guest:
        # Xen counts persistent tmem pages against the domain's maximum: leave headroom
        max_memory_mb = max_memory_mb or 2 * memory_mb
        domid = xentmem_host.create_domain(name, memory_mb=memory_mb,
                                           max_memory_mb=max_memory_mb)
        hv = EmulatedHypervisor(xentmem_host, domid)
        guest = Guest(name, memory_mb=memory_mb, max_memory_mb=max_memory_mb,
                      reservation=HypervisorReservation(hv))
        if swap_mb:
            guest.swapon(swap_mb * 256 + 1)
        for mount in mounts:
            guest.mount(mount, "ext4")
        if backend == "tmem":
            guest.load_backend(XenTmem(Tmem(hv, version=xentmem_host.version),
                                       **backend_params))
        elif backend == "zcache":
            guest.load_backend(Zcache(**backend_params))
        elif backend is not None:
            raise ValueError(f"backend must be 'tmem', 'zcache' or None, not {backend!r}")
        guests.append(guest)
        return guest

    yield make
    bad = []
    for guest in guests:
        guest.verify_anon()
        if guest.stats.lost or guest.stats.stale:
            bad.append(f"{guest.name}: {guest.stats.lost} lost, {guest.stats.stale} stale "
                       f"({'; '.join(guest.stats.incidents[:3])})")
    if bad:
        pytest.fail("xentmem: pages came back wrong: " + " | ".join(bad), pytrace=False)
