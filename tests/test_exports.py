"""Public API stated once: every package declares ``__all__``; every ``__all__`` (package or
module) names things that exist, once, and nothing private."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import xentmem

PUBLIC = [(name, ispkg) for _, name, ispkg in pkgutil.walk_packages(xentmem.__path__, "xentmem.")
          if not any(part.startswith("_") for part in name.split(".")[1:])]
PACKAGES = [name for name, ispkg in PUBLIC if ispkg]


@pytest.mark.parametrize("name", PACKAGES)
def test_packages_declare_all(name: str):
    assert hasattr(importlib.import_module(name), "__all__"), f"{name} has no __all__"


@pytest.mark.parametrize("name", [name for name, _ in PUBLIC])
def test_all_is_exact(name: str):
    exported = getattr(importlib.import_module(name), "__all__", ())
    module = importlib.import_module(name)
    for symbol in exported:
        assert hasattr(module, symbol), f"{name}.__all__ names missing {symbol}"
        assert not symbol.startswith("_")
    assert len(set(exported)) == len(exported)
