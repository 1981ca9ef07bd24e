"""Small helpers shared by the live tests (commands in dom0, bounded polling)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable

import pytest

GUEST = "xq-guest1"  # the PV guest vm-images/xen-qemu creates before running the suite
COMMAND_TIMEOUT = 60.0


def run(*argv: str, timeout: float = COMMAND_TIMEOUT) -> str:
    """Run a command in dom0 and return its stdout; a failure shows its stderr."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}: {proc.stderr.strip()}"
    return proc.stdout


def xl_list() -> dict[str, dict[str, int]]:
    """``xl list`` as name -> {"id", "mem"} (MiB)."""
    rows = {}
    for line in run("xl", "list").splitlines()[1:]:
        fields = line.split()
        rows[fields[0]] = {"id": int(fields[1]), "mem": int(fields[2])}
    return rows


def wait_until(check: Callable[[], object], timeout: float, what: str,
               interval: float = 0.5) -> object:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")




def skip_or_fail(reason: str) -> None:
    """Skip for ``reason``, or fail under ``XENTMEM_LIVE=1`` (where a skip would hide a bug)."""
    if os.environ.get("XENTMEM_LIVE") == "1":
        pytest.fail(f"XENTMEM_LIVE=1 but {reason}")
    pytest.skip(reason)
