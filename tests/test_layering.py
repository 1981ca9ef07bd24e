"""The dependency rules of DESIGN §3a, held by reading the source: dependencies point down only.

- ``guest/``, ``hypercalls/``, ``host/`` never import ``xentmem.emulator`` or ``xentmem.agent``
  (the dom0-guest key layout they share lives in ``xentmem.xenstore.keys``);
- ``agent/`` never imports ``xentmem.emulator``;
- nothing outside ``cli/`` imports ``xentmem.cli``, but ``__main__`` modules: they are entry
  points (``python -m xentmem.agent`` runs ``xentmem agent``), the edge and not the library.

Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "xentmem"
RULES = {
    "guest": ("xentmem.emulator", "xentmem.agent"),
    "hypercalls": ("xentmem.emulator", "xentmem.agent"),
    "host": ("xentmem.emulator", "xentmem.agent"),
    "agent": ("xentmem.emulator",),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


def _offending(files: list[Path], banned: tuple[str, ...]) -> list[str]:
    return [f"{f.name}:{line}: {name}"
            for f in files for line, name in _imports(f)
            if any(name == b or name.startswith(b + ".") for b in banned)]


@pytest.mark.parametrize("package", sorted(RULES))
def test_lower_layers_do_not_import_upper_ones(package: str) -> None:
    files = sorted((PACKAGE / package).rglob("*.py"))
    assert files, package
    assert _offending(files, RULES[package]) == []


def test_only_the_cli_imports_the_cli() -> None:
    files = [f for f in sorted(PACKAGE.rglob("*.py"))
             if "cli" not in f.relative_to(PACKAGE).parts and f.name != "__main__.py"]
    assert _offending(files, ("xentmem.cli",)) == []


def test_the_rules_catch_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from xentmem.emulator.machine import EmulatedMachine\n")
    assert _offending([bad], RULES["guest"]) == ["bad.py:2: xentmem.emulator.machine"]
    assert _offending([bad], ("xentmem.emu",)) == []  # a prefix of a name is not the package
