"""The xenstore conformance suite (``tests/xenstore/test_conformance.py``) against a third
server: the real C ``xenstored`` 4.17 that dom0 runs under a real Xen. The ``xentmem xenstore``
CLI suite (``tests/xenstore/test_xenstore_cli.py``, its output against the C tools') runs
against it too.

The suite is loaded from its file and its tests are collected here with ``xs_server`` bound to
dom0's xenstored. It was written for two servers (ours and oxenstored) and branches on
``is_ours``; where the C daemon answers differently from both, the test is marked xfail below
with what C xenstored does, so a change in either direction shows up.
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SUITE_DIR = Path(__file__).resolve().parent.parent / "xenstore"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_harness = _load("xenstore_conformance_harness", SUITE_DIR / "conftest.py")
_suite = _load("xenstore_conformance_suite", SUITE_DIR / "test_conformance.py")
sys.path.insert(0, str(SUITE_DIR))  # the CLI suite imports its sibling test_real_clients
_cli_suite = _load("xenstore_cli_suite", SUITE_DIR / "test_xenstore_cli.py")

# Where the real C xenstored 4.17 fails a check written for ours/oxenstored: test name (or
# name[param]) -> what C xenstored does instead, read off the failing assertion in dom0. They
# are strict xfails (conftest.py applies them), so a server or suite change shows up.
C_XENSTORED_DIFFERS: dict[str, str] = {
    "test_directory_is_sorted_and_empty_dir_is_empty":
        "C xenstored lists children in its own order, not sorted",
    "test_directory_over_4096_bytes":
        "C xenstored does not answer DIRECTORY with a body over 4096 bytes "
        "(it has DIRECTORY_PARTIAL for that)",
    "test_initial_tree": "C xenstored keeps no @introduceDomain/@releaseDomain nodes under /",
    "test_perms_roundtrip_and_inheritance":
        "C xenstored refuses an ACL naming a domain that does not exist (ENOENT)",
    "test_set_perms_domid_out_of_range":
        "C xenstored rejects a domid outside 0..65535 (as ours does); oxenstored accepts it",
    "test_set_perms_rejects_malformed[r 5]": "C xenstored accepts 'r 5' (strtol skips the space)",
    "test_transaction_abort_and_errors":
        "an unknown transaction id: C xenstored answers as ours does, not oxenstored's EIO",
    "test_transaction_blind_writes_merge":
        "C xenstored fails the commit (EAGAIN) when a node the transaction wrote changed "
        "outside it; it does not merge",
    "test_transaction_isolation":
        "C xenstored transactions read outside writes made after they started (no snapshot); "
        "the conflict shows at commit",
    "test_transaction_phantom_read": "C xenstored answers EAGAIN here, as ours does",
    "test_transaction_read_only_commits":
        "C xenstored fails a read-only transaction (EAGAIN) when a node it read changed",
    "test_value_size_quota_e2big":
        "dom0 is privileged: C xenstored applies no value-size quota to it",
    "test_watch_rm_fires_for_watches_below":
        "C xenstored fires no watch for an absent path below a removed node",
}

# Answers that vary from run to run (non-strict xfails).
C_XENSTORED_FLAKY: dict[str, str] = {
    "test_transaction_writes_fire_on_commit_only":
        "C xenstored failed this commit with EAGAIN in 1 of 4 runs; the protocol lets it, and "
        "clients retry (xentmem.xenstore.transaction does)",
}


class CXenstored(_harness.ServerUnderTest):
    """dom0's C xenstored over its unix socket. Guest connections need a real guest's ring, so
    tests that act *as* a guest skip here (the real guest's view is covered by test_balloon)."""

    def __init__(self, socket_path: str) -> None:
        super().__init__("xenstored", socket_path)

    def guest_path(self, domid: int) -> str:
        pytest.skip("acting as a guest needs that guest's ring; not possible from dom0")


@pytest.fixture(scope="module")
def xs_server(dom0: None) -> Iterator[CXenstored]:
    from xentmem.host.doctor import xenstored_path

    sut = CXenstored(xenstored_path())
    yield sut
    sut.close()


_bases = itertools.count()


@pytest.fixture
def base() -> str:
    return f"/test/live{next(_bases)}-{os.getpid()}"


globals().update({n: getattr(_suite, n) for n in dir(_suite) if n.startswith("test_")})
globals().update({n: f for n, f in vars(_cli_suite).items()  # those that take a server
                  if n.startswith("test_") and "xs_server" in inspect.signature(f).parameters})
