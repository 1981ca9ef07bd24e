"""Fixtures: our xenstored and the real oxenstored, behind one small adapter.

``xs_server`` is parametrised over both (module-scoped: each starts once per test module).
The oxenstored runs in the fake-ring domain mode (ref ecosystem.md §2.8), so both servers offer a
dom0 socket and, per guest domain, a socket whose client *is* that guest: ours natively
(``XenStoreServer.domain_socket``), oxenstored through a ``RingProxy``. Where oxenstored cannot
run (not root, no unshare, ...) its parameter skips with the reason.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from xentmem.xenstore import XenStoreClient, XenStoreServer, layout_domain
from xentmem.xenstore.testing import Oxenstored, RawClient, unavailable_reason

GUEST_MEMORY_KIB = 524288
GUEST_MAX_KIB = 1048576


def _short_tmp(prefix: str) -> Path:
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer.
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


class ServerUnderTest:
    """What a test needs from either server."""

    name: str

    def __init__(self, name: str, dom0_path: str) -> None:
        self.name = name
        self.dom0_path = dom0_path
        self._guests: dict[int, str] = {}
        self._guest_clients: dict[int, XenStoreClient] = {}
        self._clients: list[XenStoreClient] = []
        self._domids = itertools.count(100)
        self.dom0 = self.client()

    @property
    def is_ours(self) -> bool:
        return self.name == "ours"

    # Generous timeouts: they only bound failures, and a loaded CI machine (or the polled fake
    # ring of oxenstored) can be slow; every test is bounded at 30 s anyway.
    def client(self, path: str | None = None, timeout: float = 15.0) -> XenStoreClient:
        c = XenStoreClient(path or self.dom0_path, timeout=timeout)
        self._clients.append(c)
        return c

    def raw(self, path: str | None = None) -> RawClient:
        return RawClient(path or self.dom0_path, timeout=15.0)

    def guest_path(self, domid: int) -> str:
        """Lay out /local/domain/<domid> as the toolstack does and introduce it (once)."""
        if domid not in self._guests:
            layout_domain(self.dom0, domid, f"guest{domid}", GUEST_MEMORY_KIB, GUEST_MAX_KIB)
            self._guests[domid] = self._introduce(domid)
        return self._guests[domid]

    def guest(self, domid: int) -> XenStoreClient:
        """The one client of guest ``domid`` (a ring carries one connection per domain)."""
        path = self.guest_path(domid)
        if domid not in self._guest_clients:
            self._guest_clients[domid] = self.client(path)
        return self._guest_clients[domid]

    def fresh_domid(self) -> int:
        return next(self._domids)

    def release(self, domid: int) -> None:
        self._guests.pop(domid, None)
        client = self._guest_clients.pop(domid, None)
        if client is not None:
            client.close()
        self._release(domid)

    def _introduce(self, domid: int) -> str:
        raise NotImplementedError

    def _release(self, domid: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        for c in self._clients:
            c.close()


class Ours(ServerUnderTest):
    def __init__(self, server: XenStoreServer) -> None:
        self.server = server
        super().__init__("ours", server.path)

    def _introduce(self, domid: int) -> str:
        self.dom0.introduce_domain(domid, 4096 + domid, 1)
        return self.server.domain_socket(domid)

    def _release(self, domid: int) -> None:
        self.dom0.release_domain(domid)


class Real(ServerUnderTest):
    def __init__(self, ox: Oxenstored) -> None:
        self.ox = ox
        super().__init__("oxenstored", ox.socket_path)

    def _introduce(self, domid: int) -> str:
        return self.ox.guest_socket(domid)

    def _release(self, domid: int) -> None:
        self.ox.release(domid)


@pytest.fixture(scope="module")
def ours_server() -> Iterator[XenStoreServer]:
    work = _short_tmp("xs-ours-")
    server = XenStoreServer(str(work / "socket")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def oxenstored() -> Iterator[Oxenstored]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"real oxenstored unavailable: {reason}")
    work = _short_tmp("xs-oxs-")
    ox = Oxenstored(work, ring=True).start()
    yield ox
    ox.stop()


@pytest.fixture(
    scope="module", params=["ours", pytest.param("oxenstored", marks=pytest.mark.oxenstored)]
)
def xs_server(request: pytest.FixtureRequest) -> Iterator[ServerUnderTest]:
    if request.param == "ours":
        sut: ServerUnderTest = Ours(request.getfixturevalue("ours_server"))
    else:
        sut = Real(request.getfixturevalue("oxenstored"))
    yield sut
    sut.close()


@pytest.fixture(scope="module")
def ours(ours_server: XenStoreServer) -> Iterator[Ours]:
    sut = Ours(ours_server)
    yield sut
    sut.close()


_bases = itertools.count()


@pytest.fixture
def base(request: pytest.FixtureRequest) -> str:
    """A fresh absolute path prefix for this test (the servers are shared by a module)."""
    return f"/test/t{next(_bases)}-{os.getpid()}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Nothing here should take long: bound every test of this directory at 30 s (benchmarks
    excepted) so that a hang costs 30 s of the suite, not pytest-timeout's global 120 s."""
    if os.environ.get("XENTMEM_HYPOTHESIS_EXAMPLES"):
        return  # a soak of the property tests (tests/xenstore/test_store.py) takes minutes
    here = Path(__file__).parent
    for item in items:
        if (
            item.path.is_relative_to(here)
            and item.get_closest_marker("bench") is None
            and item.get_closest_marker("timeout") is None
        ):
            item.add_marker(pytest.mark.timeout(30))
