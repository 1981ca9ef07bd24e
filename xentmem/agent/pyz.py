"""The single-file agent for a guest: ``xentmem agent build-zipapp OUT.pyz`` (:func:`build_pyz`)
packs the agent and exactly the modules it imports into one zipapp, with pyxs (pure Python,
LGPL-3.0, unmodified) beside them. In a guest: ``python3 OUT.pyz run`` as root, or
``python3 OUT.pyz --print-unit`` for its systemd unit (:mod:`xentmem.agent.service`).

Which modules: those that importing :mod:`xentmem.agent.service` loads in a Python that sees
the standard library and the staged sources only (``python -I -S``), so nothing compiled can come
along (no cffi, numpy, libvirt, the emulator's page codec) and a new import of one fails the
build, naming it. Packages whose ``__init__`` pulls in far more than the agent uses go in trimmed
to a docstring (:data:`TRIMMED`): ``xentmem.guest`` re-exports the whole kernel model, which needs
cffi; the agent imports three of its modules, by their own names.

The oldest Python the archive runs on comes from reading what goes in (:func:`version_blockers`):
``match``, ``X | Y`` of types evaluated at run time, ``dataclass(slots=...)``, ``zip(strict=...)``
and names new in 3.10+ raise it above 3.9; the archive's ``__main__`` then refuses an older
Python with one line naming the first construct.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import xentmem
from xentmem.errors import XentmemError

__all__ = ["ENTRY", "OLDEST", "TRIMMED", "PyzInfo", "build_pyz", "version_blockers"]

ENTRY = "xentmem.agent.service"  # its main() is the archive's
OLDEST = (3, 9)  # the oldest Python a guest may bring
TRIMMED = {
    "xentmem.guest": '"""The guest kernel model, trimmed for the single-file agent: only the '
                     'modules it imports\n(kernel, sysfs, selfballoon) are here, imported by '
                     'their own names."""\n__all__ = []\n',
}
_BUNDLED = ("pyxs",)  # third-party, pure Python, shipped inside
_NOTICE = """\
xentmem guest agent {version}: the agent of xentmem (GPL-2.0-only) and the modules it imports.
Bundled unmodified: pyxs {pyxs} (LGPL-3.0-or-later), https://github.com/selectel/pyxs.
"""
_MAIN = """\
# xentmem guest agent {version}, built by `xentmem agent build-zipapp`
import sys

if sys.version_info < {oldest!r}:
    sys.exit("xentmem-agent needs Python {oldest_text} or later, not %d.%d ({why})"
             % sys.version_info[:2])

from xentmem.agent.service import main

sys.exit(main())
"""
_PROBE = """\
import json, sys
sys.path.insert(0, sys.argv[1])
import {entry}
print(json.dumps({{n: getattr(m, "__file__", None) for n, m in sorted(sys.modules.items())
                  if n.split(".")[0] in {roots!r}}}))
"""
_EPOCH = (1980, 1, 1, 0, 0, 0)  # every entry's time: the same sources give the same bytes

# What a Python before 3.10 lacks, by name (attribute, imported or called)
_NEWER = {
    "TypeAlias": (3, 10), "ParamSpec": (3, 10), "Concatenate": (3, 10), "TypeGuard": (3, 10),
    "pairwise": (3, 10), "bit_count": (3, 10), "aiter": (3, 10), "anext": (3, 10),
    "EncodingWarning": (3, 10), "Self": (3, 11), "LiteralString": (3, 11), "Never": (3, 11),
    "assert_never": (3, 11), "reveal_type": (3, 11), "TypeVarTuple": (3, 11),
    "tomllib": (3, 11), "ExceptionGroup": (3, 11), "BaseExceptionGroup": (3, 11),
    "StrEnum": (3, 11), "TaskGroup": (3, 11), "chdir": (3, 11), "override": (3, 12),
    "batched": (3, 12), "TypeAliasType": (3, 12),
}
_NEW_KEYWORDS = {("dataclass", "slots"): (3, 10), ("dataclass", "kw_only"): (3, 10),
                 ("dataclass", "match_args"): (3, 10), ("zip", "strict"): (3, 10)}
# operands that make `a | b` a union of types (PEP 604, 3.10) rather than an int's bits
_TYPES = {"str", "bytes", "bytearray", "memoryview", "int", "float", "complex", "bool", "list",
          "dict", "tuple", "set", "frozenset", "type", "object", "Any", "Callable", "Path"}


@dataclass(frozen=True)
class PyzInfo:
    """What :func:`build_pyz` made: the file, the modules in it, the oldest Python it runs on
    and what keeps that above :data:`OLDEST` (``file:line: construct``)."""

    path: Path
    size: int
    modules: tuple[str, ...]
    python: tuple[int, int]
    blockers: tuple[str, ...]


class _Scan(ast.NodeVisitor):
    def __init__(self, name: str, lazy_annotations: bool) -> None:
        self.name = name
        self.lazy = lazy_annotations  # `from __future__ import annotations`: never evaluated
        self.found: list[tuple[tuple[int, int], str]] = []

    def _add(self, node: ast.AST, version: tuple[int, int], what: str) -> None:
        self.found.append((version, f"{self.name}:{getattr(node, 'lineno', 0)}: {what} "
                                    f"(Python {version[0]}.{version[1]})"))

    def _annotation(self, node: ast.AST | None) -> None:
        if node is not None and not self.lazy:
            self.visit(node)

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            for child in node.orelse:  # the body never runs
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_arg(self, node: ast.arg) -> None:
        self._annotation(node.annotation)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for child in (*node.decorator_list, node.args, *node.body):
            self.visit(child)
        self._annotation(node.returns)

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.visit(node.target)
        self._annotation(node.annotation)
        if node.value is not None:
            self.visit(node.value)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        def typelike(side: ast.expr) -> bool:
            return ((isinstance(side, ast.Name) and side.id in _TYPES)
                    or (isinstance(side, ast.Constant) and side.value is None)
                    or isinstance(side, ast.Subscript)
                    or (isinstance(side, ast.BinOp) and isinstance(side.op, ast.BitOr)
                        and (typelike(side.left) or typelike(side.right))))
        if isinstance(node.op, ast.BitOr) and (typelike(node.left) or typelike(node.right)):
            self._add(node, (3, 10), f"`{ast.unparse(node)}` (a union of types at run time)")
            return
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        called = func.id if isinstance(func, ast.Name) else (
            func.attr if isinstance(func, ast.Attribute) else "")
        for kw in node.keywords:
            version = _NEW_KEYWORDS.get((called, kw.arg or ""))
            if version is not None:
                self._add(node, version, f"{called}({kw.arg}=...)")
        if called in ("isinstance", "issubclass") and len(node.args) == 2 and isinstance(
                node.args[1], ast.BinOp) and isinstance(node.args[1].op, ast.BitOr):
            self._add(node, (3, 10), f"{called}(x, A | B)")
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in _NEWER:
            self._add(node, _NEWER[node.id], node.id)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in _NEWER:
            self._add(node, _NEWER[node.attr], f".{node.attr}")
        self.generic_visit(node)

    def _imported(self, node: ast.Import | ast.ImportFrom) -> None:
        for alias in node.names:
            for part in alias.name.split("."):
                if part in _NEWER:
                    self._add(node, _NEWER[part], f"import {alias.name}")
        if isinstance(node, ast.ImportFrom) and node.module in _NEWER:
            self._add(node, _NEWER[node.module], f"from {node.module}")

    visit_Import = _imported
    visit_ImportFrom = _imported


def version_blockers(name: str, source: str,
                     oldest: tuple[int, int] = OLDEST) -> list[tuple[tuple[int, int], str]]:
    """What in ``source`` (file ``name``) needs a Python newer than ``oldest``: ``(version,
    "name:line: construct (Python X.Y)")``, in the order found. Syntax is checked by the
    parser's own ``feature_version``; names and calls by a walk of the tree."""
    try:
        ast.parse(source, name, feature_version=oldest)
    except SyntaxError as exc:
        newer = (oldest[0], oldest[1] + 1)
        return [(newer, f"{name}:{exc.lineno}: {exc.msg}")]
    tree = ast.parse(source, name)
    lazy = any(isinstance(node, ast.ImportFrom) and node.module == "__future__"
               and any(a.name == "annotations" for a in node.names) for node in tree.body)
    scan = _Scan(name, lazy)
    scan.visit(tree)
    return [f for f in scan.found if f[0] > oldest]


def _stage(stage: Path) -> None:
    """Every source of xentmem and the bundled packages under ``stage``, trimmed packages
    trimmed."""
    package = Path(xentmem.__file__).parent
    shutil.copytree(package, stage / "xentmem", ignore=shutil.ignore_patterns(
        "__pycache__", "*.so", "*.pyc", "*.c", "*.h"))
    for name in _BUNDLED:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise XentmemError(f"cannot bundle {name}: it is not installed here")
        shutil.copytree(next(iter(spec.submodule_search_locations)), stage / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for dotted, text in TRIMMED.items():
        (stage / dotted.replace(".", "/") / "__init__.py").write_text(text)


def _closure(stage: Path, python: str) -> dict[str, Path]:
    """module name -> staged file, as importing :data:`ENTRY` with nothing but the standard
    library and ``stage`` loads them."""
    probe = _PROBE.format(entry=ENTRY, roots=("xentmem", *_BUNDLED))
    proc = subprocess.run([python, "-I", "-S", "-c", probe, str(stage)], capture_output=True,
                          text=True, timeout=120, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise XentmemError(f"the agent does not import from the standard library alone: {last}")
    found = json.loads(proc.stdout)
    out: dict[str, Path] = {}
    for name, file in found.items():
        if file is None or not Path(file).resolve().is_relative_to(stage.resolve()):
            raise XentmemError(f"the agent imports {name} from outside its sources ({file})")
        out[name] = Path(file)
    return out


def build_pyz(out: str | os.PathLike[str], *, interpreter: str = "/usr/bin/env python3",
              python: str = sys.executable) -> PyzInfo:
    """Build the single-file agent at ``out`` (``python`` probes what it imports); ``#!``
    line ``interpreter``."""
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="xentmem-pyz-") as tmp:
        stage = Path(tmp)
        _stage(stage)
        modules = _closure(stage, python)
        files = sorted({path.relative_to(stage.resolve()).as_posix(): path
                        for path in (p.resolve() for p in modules.values())}.items())
        found: list[tuple[tuple[int, int], str]] = []
        for arcname, path in files:
            found += version_blockers(arcname, path.read_text())
        found.sort(key=lambda f: f[0], reverse=True)
        oldest = max([OLDEST, *(v for v, _ in found)])
        pyxs_version = _dist_version("pyxs")
        main = _MAIN.format(version=xentmem.__version__, oldest=oldest,
                            oldest_text=f"{oldest[0]}.{oldest[1]}",
                            why=found[0][1].replace('"', "'") if found else "")
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".part")
        with open(partial, "wb") as f:
            f.write(f"#!{interpreter}\n".encode())
            with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
                def put(arcname: str, data: bytes) -> None:
                    info = zipfile.ZipInfo(arcname, _EPOCH)
                    info.compress_type = zipfile.ZIP_DEFLATED
                    info.external_attr = 0o644 << 16
                    z.writestr(info, data)
                put("__main__.py", main.encode())
                put("NOTICE", _NOTICE.format(version=xentmem.__version__,
                                             pyxs=pyxs_version).encode())
                for arcname, path in files:
                    put(arcname, path.read_bytes())
        partial.chmod(0o755)
        partial.replace(out)
    return PyzInfo(out, out.stat().st_size, tuple(sorted(modules)), oldest,
                   tuple(why for _, why in found))


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "(unknown version)"
