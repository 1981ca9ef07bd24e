"""Fixtures: our xenstored, an emulated host, and guests whose agents run against it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from xentmem.agent.testing import EmulatedGuest
from xentmem.emulator import EmulatedHost
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
def web(server: XenStoreServer, emulated_host: EmulatedHost) -> Iterator[EmulatedGuest]:
    """Domain "web": the agent applies to the guest model directly."""
    with EmulatedGuest(server, emulated_host, "web", 128, 256, stats_interval=0.2) as g:
        yield g


@pytest.fixture
def db(server: XenStoreServer, emulated_host: EmulatedHost, tmp_path: Path
       ) -> Iterator[EmulatedGuest]:
    """Domain "db": the agent drives a sysfs tree in a temporary directory, as on a real guest."""
    with EmulatedGuest(server, emulated_host, "db", 128, 256, sysfs_root=tmp_path / "root",
                       stats_interval=0.2) as g:
        yield g
