"""Bounded waiting for something another thread does (a bound, never a timing assertion)."""

from __future__ import annotations

import time
from collections.abc import Callable


def eventually(check: Callable[[], bool], within: float = 10.0) -> bool:
    """Poll ``check`` until it holds or ``within`` s pass; its last answer."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()
