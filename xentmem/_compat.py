"""What lets the guest-side agent (a zipapp of a few pure modules) run on a guest's stock Python
3.9 while the rest of xentmem targets 3.11: only what those modules evaluate at run time."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["DATACLASS_SLOTS"]

# dataclass(slots=True) came in 3.10; without it the classes work the same, only larger
DATACLASS_SLOTS: dict[str, Any] = {"slots": True} if sys.version_info >= (3, 10) else {}
