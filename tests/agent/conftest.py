"""Fixtures: our xenstored, an emulated host, and guests whose agents run against it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from xentmem.emulator import EmulatedHost
from xentmem.emulator.machine import EmulatedMachine, GuestSpec, MachineGuest
from xentmem.host.guests import Host
from xentmem.xenstore import XenStoreClient, XenStoreServer


@pytest.fixture
def server() -> Iterator[XenStoreServer]:
    work = Path(tempfile.mkdtemp(prefix="xtag", dir="/tmp"))  # AF_UNIX paths: <108 bytes
    srv = XenStoreServer(work / "xs").start()
    yield srv
    srv.stop()
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def emulated_host() -> EmulatedHost:
    return EmulatedHost(memory_mb=1024)


@pytest.fixture
def dom0(server: XenStoreServer) -> Iterator[XenStoreClient]:
    xs = XenStoreClient(server.path, timeout=5)
    yield xs
    xs.close()


@pytest.fixture
def host(dom0: XenStoreClient) -> Host:
    return Host(dom0, ack_timeout=5)


@pytest.fixture
def machine(server: XenStoreServer, emulated_host: EmulatedHost) -> Iterator[EmulatedMachine]:
    """The emulated host and our xenstored as one machine (agents publish every 0.2 s)."""
    with EmulatedMachine(emulated_host, server, stats_interval=0.2) as m:
        yield m


@pytest.fixture
def web(machine: EmulatedMachine) -> MachineGuest:
    """Domain "web": the agent applies to the guest model directly."""
    return machine.add_guest(GuestSpec("web", 128, 256, backend="tmem"))


@pytest.fixture
def db(machine: EmulatedMachine, tmp_path: Path) -> MachineGuest:
    """Domain "db": the agent drives a sysfs tree in a temporary directory, as on a real guest."""
    return machine.add_guest(GuestSpec("db", 128, 256, backend="tmem"),
                             sysfs_root=tmp_path / "root")
