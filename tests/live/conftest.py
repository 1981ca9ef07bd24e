"""Live tests: the project against a real Xen host (``/dev/xen/privcmd``, C xenstored, xl).

They run inside the dom0 of ``vm-images/xen-qemu`` (``scripts/live-test``), or on any real dom0
as root. Every test in this directory that needs Xen is marked ``live`` (the default run
deselects them); the few host-side tests here (the fixture comparison, the CI driver) are not.
Off Xen, a live test skips with the reason; with ``XENTMEM_LIVE=1`` (set by the VM runner) that
skip becomes a failure, so a broken VM can never pass as "skipped".
"""

from __future__ import annotations

import faulthandler
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ._xen import GUEST, skip_or_fail, xl_list

HERE = Path(__file__).resolve().parent
PRIVCMD = Path("/dev/xen/privcmd")
EXIT_GRACE = 60.0
_exit_status: list[int] = []
# Modules that run on the machine itself, not in dom0.
HOST_SIDE = {"test_layout_fixture.py", "test_vm_runner.py", "test_vm_suite.py"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.path))
        if path.parent == HERE and path.name not in HOST_SIDE:
            item.add_marker(pytest.mark.live)
            for table, strict in (("C_XENSTORED_DIFFERS", True), ("C_XENSTORED_FLAKY", False)):
                known = getattr(item.module, table, {})
                reason = known.get(item.name) or known.get(getattr(item, "originalname", ""))
                if reason:
                    item.add_marker(pytest.mark.xfail(reason=reason, strict=strict))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _exit_status.append(int(exitstatus))


def pytest_unconfigure(config: pytest.Config) -> None:
    """In dom0, never let a stuck thread keep the VM up after the suite: if the interpreter
    has not exited ``EXIT_GRACE`` s after pytest is done, dump every thread's stack and leave
    with the session's status."""
    if not PRIVCMD.exists() or not _exit_status:
        return

    def watchdog() -> None:
        faulthandler.dump_traceback(all_threads=True)
        os._exit(_exit_status[-1])

    timer = threading.Timer(EXIT_GRACE, watchdog)
    timer.daemon = True
    timer.start()


@pytest.fixture(scope="session")
def dom0() -> None:
    """Require a real Xen dom0 run as root (skip, or fail under ``XENTMEM_LIVE=1``)."""
    if not PRIVCMD.exists():
        skip_or_fail(f"{PRIVCMD} absent: not a Xen domain (run through scripts/live-test)")
    if os.geteuid() != 0:
        skip_or_fail("live tests need root for privcmd and xenstored")
    caps = Path("/proc/xen/capabilities")
    if not caps.exists() or "control_d" not in caps.read_text():
        skip_or_fail("not dom0 (/proc/xen/capabilities lacks control_d)")
    if shutil.which("xl") is None:
        skip_or_fail("xl not found (install xen-utils-4.17)")


@pytest.fixture(scope="session")
def guest_domid(dom0: None) -> int:
    """The domid of the PV guest the VM runner created (or fail: the runner should have)."""
    domains = xl_list()
    assert GUEST in domains, f"no {GUEST} in `xl list`: {sorted(domains)}"
    return domains[GUEST]["id"]


@pytest.fixture(scope="session")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where live tests leave artefacts: the runner's writable share, else a temp dir."""
    shared = os.environ.get("XEN_QEMU_OUT")
    return Path(shared) if shared else tmp_path_factory.mktemp("live-out")


@pytest.fixture
def xs(dom0: None) -> Iterator:
    """Our xenstore client on dom0's real C xenstored."""
    from xentmem.xenstore import XenStoreClient

    client = XenStoreClient(timeout=10.0)
    yield client
    client.close()
