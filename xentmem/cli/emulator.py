"""``xentmem emulator ...``: the emulated host (``run`` a scenario; ``up``/``down`` the daemon)."""

from __future__ import annotations

from xentmem.cli._app import sub_app

__all__ = ["emulator_app"]

emulator_app = sub_app("emulator")
