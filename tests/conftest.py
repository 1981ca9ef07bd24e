"""Suite-wide settings.

Hypothesis runs derandomized by default: the default suite (and CI) sees the same examples every
run, so a failure is reproducible and never a coin toss. Set ``XENTMEM_HYPOTHESIS=explore`` to
draw fresh random examples (what the long ``slow`` runs are for).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("repeatable", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("XENTMEM_HYPOTHESIS", "repeatable"))


@pytest.fixture(scope="module")
def emulator_daemon() -> Iterator[Path]:
    """An emulator daemon (dom0 + guest1 + guest2, living) for a whole module: its state
    directory. About 0.2 s to start."""
    from xentmem.emulator import daemon

    with tempfile.TemporaryDirectory(prefix="xtd") as d:  # AF_UNIX paths: < 108 bytes
        directory = Path(d)
        daemon.start(directory, daemon.HostConfig(guests=2))
        try:
            yield directory
        finally:
            daemon.stop(directory, timeout=10)
