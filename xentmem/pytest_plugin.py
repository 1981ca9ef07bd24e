"""pytest plugin (entry point ``pytest11``): an emulated Xen host and guests for other projects'
CI, no Xen needed.

Fixtures:

- ``xentmem_machine``: an :class:`~xentmem.emulator.machine.EmulatedMachine` in this process
  (Xen ``--xentmem-xen-version``, default 4.12, 2 GiB, no xenstored); add guests with
  ``machine.add_guest(GuestSpec(...))`` or ``living_guest(...)`` and advance its clock with
  ``machine.advance(seconds)``. At teardown every guest reads all its pages back, and the test
  fails if any came back lost or stale.
- ``xentmem_host``: that machine's ``EmulatedHost``;
- ``xentmem_tmem``: a ``Tmem`` client of a fresh guest domain on it;
- ``xentmem_guest``: a factory ``(name, *, memory_mb=128, max_memory_mb=2*memory_mb, swap_mb=64,
  mounts=("root",), backend="tmem" | "zcache" | None, kernel="3.10") -> Guest`` booting a
  guest model on the machine;
- ``xentmem_daemon``: a living emulator daemon (``xentmem emulator up``) in a temporary
  directory with ``--xentmem-guests`` living guests; point any ``xentmem`` command or client at
  ``daemon.connect`` (``emulator:DIR``). Stopped after the test, which fails if any guest lost
  or read back a stale page.

Example::

    def test_pages_survive_unload(xentmem_guest):
        guest = xentmem_guest("app", memory_mb=64, swap_mb=128, backend="tmem")
        pids = guest.alloc_anon(20_000)  # 78 MiB: more than fits in 64
        guest.balance()                  # kswapd: frontswap stores into tmem
        assert guest.unload_backend().drained > 0
        assert guest.verify_anon() == len(pids)
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from xentmem.emulator import EmulatedHost
    from xentmem.emulator.machine import EmulatedMachine
    from xentmem.guest import Guest
    from xentmem.hypercalls import Tmem

__all__ = ["EmulatorDaemon", "pytest_addoption", "xentmem_daemon", "xentmem_guest",
           "xentmem_host", "xentmem_machine", "xentmem_tmem"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("xentmem", "emulated Xen host (xentmem)")
    group.addoption("--xentmem-xen-version", default="4.12",
                    help="Xen release the emulated host imitates (4.1-4.12; default 4.12).")
    group.addoption("--xentmem-guests", type=int, default=2,
                    help="Living guests the xentmem_daemon fixture starts (default 2).")


def _bad_pages(rows: Sequence[dict[str, Any]]) -> list[str]:
    return [f"{r['name']}: {r['lost']} lost, {r['stale']} stale "
            f"({'; '.join(r.get('incidents') or [])[:300]})"
            for r in rows if r["lost"] or r["stale"]]


@pytest.fixture
def xentmem_machine(request: pytest.FixtureRequest) -> Iterator[EmulatedMachine]:
    """A fresh emulated machine (2 GiB host); fails the test at teardown if any page of any
    guest comes back lost or stale."""
    from xentmem.emulator.machine import EmulatedMachine

    machine = EmulatedMachine.boot(
        memory_mb=2048, xen_version=request.config.getoption("--xentmem-xen-version"))
    try:
        yield machine
        machine.stop()
        machine.verify()
        bad = _bad_pages(machine.report())
    finally:
        machine.close()
    if bad:
        pytest.fail("xentmem: pages came back wrong: " + " | ".join(bad), pytrace=False)


@pytest.fixture
def xentmem_host(xentmem_machine: EmulatedMachine) -> EmulatedHost:
    """The emulated Xen host of ``xentmem_machine``."""
    return xentmem_machine.host


@pytest.fixture
def xentmem_tmem(xentmem_machine: EmulatedMachine) -> Tmem:
    """A ``Tmem`` client of a new guest domain (256 MiB, max 512: persistent pages need
    headroom below the domain's maximum, which Xen counts them against)."""
    from xentmem.emulator.machine import GuestSpec

    return xentmem_machine.add_guest(GuestSpec("tmem-client", 256, 512)).client()


@pytest.fixture
def xentmem_guest(xentmem_machine: EmulatedMachine) -> Callable[..., Guest]:
    """A factory booting guest models on ``xentmem_machine``."""
    from xentmem.emulator.machine import GuestSpec, MountSpec, SwapSpec

    def make(name: str = "guest", *, memory_mb: int = 128, max_memory_mb: int | None = None,
             swap_mb: int = 64, mounts: Sequence[str] = ("root",),
             backend: str | None = "tmem", kernel: str = "3.10",
             **backend_params: Any) -> Guest:
        if backend not in ("tmem", "zcache", None):
            raise ValueError(f"backend must be 'tmem', 'zcache' or None, not {backend!r}")
        spec = GuestSpec(name, memory_mb, max_memory_mb, kernel,
                         swap=(SwapSpec(swap_mb),) if swap_mb else (),
                         mounts=tuple(MountSpec(m) for m in mounts), backend=backend,
                         backend_params=backend_params)
        return xentmem_machine.add_guest(spec).guest

    return make


@dataclass(frozen=True)
class EmulatorDaemon:
    """A running ``xentmem emulator up`` in ``directory``; ``connect`` is its URI."""

    directory: Path

    @property
    def connect(self) -> str:
        return f"emulator:{self.directory}"

    def status(self) -> dict[str, Any]:
        """The daemon's status (what ``xentmem emulator status --json`` prints)."""
        from xentmem.emulator.daemon import control

        return control(self.directory, "status")  # type: ignore[no-any-return]


@pytest.fixture
def xentmem_daemon(request: pytest.FixtureRequest) -> Iterator[EmulatorDaemon]:
    """A living emulator daemon in a temporary directory, stopped after the test; the test
    fails if any of its guests lost a page or read one back stale."""
    from xentmem.emulator.daemon import HostConfig, start, stop

    directory = Path(tempfile.mkdtemp(prefix="xentmem-", dir="/tmp"))  # short socket paths
    config = HostConfig(xen_version=request.config.getoption("--xentmem-xen-version"),
                        guests=request.config.getoption("--xentmem-guests"))
    try:
        start(directory, config)
        daemon = EmulatorDaemon(directory)
        yield daemon
        bad = _bad_pages(daemon.status().get("guests", []))
    finally:
        stop(directory)
        shutil.rmtree(directory, ignore_errors=True)
    if bad:
        pytest.fail("xentmem: pages came back wrong: " + " | ".join(bad), pytrace=False)
