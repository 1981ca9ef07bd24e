"""The single-file agent: built by ``xentmem agent build-zipapp``, it holds the agent and the
modules it imports and nothing compiled, runs on a Python that sees nothing but its standard
library (``-I -S``), prints its systemd unit, and serves as a guest of our xenstored through that
domain's socket: dom0 asks for self-ballooning, the agent runs the law on a Linux 6.1 tree and
gives the target back on SIGTERM. The oldest Python it claims is the oldest it runs on."""

from __future__ import annotations

import ast
import glob
import json
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xentmem.agent import DATA_MODE
from xentmem.agent.procfs import render_zoneinfo
from xentmem.agent.pyz import OLDEST, PyzInfo, build_pyz, version_blockers
from xentmem.agent.userspace import CURRENT_KB, MEMINFO, TARGET_KB, ZONEINFO, parse_inputs
from xentmem.cli import app
from xentmem.guest import Guest, SysfsView
from xentmem.guest.selfballoon import SelfBalloonKnobs
from xentmem.host.guests import Host
from xentmem.xenstore import XenStoreClient, XenStoreServer

from ._wait import eventually


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> PyzInfo:
    out = tmp_path_factory.mktemp("pyz") / "xentmem-agent.pyz"
    result = CliRunner().invoke(app, ["agent", "build-zipapp", str(out), "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    info = build_pyz(out)  # the same again, for its details
    assert shown["path"] == str(out) and shown["modules"] == len(info.modules)
    assert shown["bytes"] == info.size  # the same sources give the same bytes
    return info


def _python39() -> str | None:
    """A working Python 3.9 (a pyenv shim on PATH may be one that only says it is not)."""
    candidates = [*sorted(glob.glob(str(Path.home() / ".pyenv/versions/3.9*/bin/python3.9"))),
                  shutil.which("python3.9")]
    for python in filter(None, candidates):
        proc = subprocess.run([python, "-c", "import sys; print(sys.version_info[:2])"],
                              capture_output=True, text=True, timeout=30, check=False)
        if proc.returncode == 0 and proc.stdout.strip() == "(3, 9)":
            return python
    return None


def _run(python: str, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([python, "-I", "-S", *args], capture_output=True, text=True,
                          timeout=60, check=False, **kwargs)


def test_only_pure_python_goes_in(pyz: PyzInfo) -> None:
    names = zipfile.ZipFile(pyz.path).namelist()
    assert "__main__.py" in names and "NOTICE" in names
    assert all(n.endswith(".py") for n in names if n not in ("NOTICE",))
    assert not [n for n in names if n.split("/")[0] not in ("xentmem", "pyxs", "__main__.py",
                                                            "NOTICE")]
    for heavy in ("emulator", "hypercalls", "tuning", "cli", "host", "abi.py"):
        assert not [n for n in names if f"xentmem/{heavy}" in n], heavy
    assert {"xentmem.agent.service", "xentmem.agent.userspace", "xentmem.guest.selfballoon",
            "xentmem.xenstore._client", "pyxs.connection"} <= set(pyz.modules)
    trimmed = zipfile.ZipFile(pyz.path).read("xentmem/guest/__init__.py").decode()
    assert not [n for n in ast.walk(ast.parse(trimmed))  # the kernel model (cffi) stays out
                if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert pyz.path.read_bytes().startswith(b"#!/usr/bin/env python3\n")


def test_help_and_unit_with_the_standard_library_alone(pyz: PyzInfo) -> None:
    helped = _run(sys.executable, str(pyz.path), "--help")
    assert helped.returncode == 0, helped.stderr
    assert "--print-unit" in helped.stdout and "--xenstored" in helped.stdout
    unit = _run(sys.executable, str(pyz.path), "--print-unit", "--stats-interval", "2")
    assert unit.returncode == 0, unit.stderr
    assert f"ExecStart={sys.executable} {pyz.path} run --stats-interval 2\n" in unit.stdout
    assert "[Install]\nWantedBy=multi-user.target" in unit.stdout
    assert "ConditionPathExists=|/dev/xen/xenbus" in unit.stdout
    bad = _run(sys.executable, str(pyz.path), "--stats-interval", "0")
    assert bad.returncode == 2 and "--stats-interval" in bad.stderr
    noroot = _run(sys.executable, str(pyz.path), "run", "--sysfs-root", "/nonexistent")
    assert noroot.returncode == 2 and "is not a directory" in noroot.stderr


def test_the_typer_command_prints_its_unit_too() -> None:
    result = CliRunner().invoke(app, ["agent", "run", "--print-unit", "--domid", "4"])
    assert result.exit_code == 0, result.output
    assert f"ExecStart={sys.executable} -m xentmem.agent run --domid 4\n" in result.stdout


def test_blockers_are_found_and_none_is_the_agents(pyz: PyzInfo) -> None:
    assert pyz.python == OLDEST or pyz.blockers
    assert not [b for b in pyz.blockers if b.startswith("xentmem/agent/")]
    found = version_blockers("m.py", "from __future__ import annotations\n"
                             "import dataclasses\n"
                             "X = int | None\n"
                             "def f(a: int | None) -> str | None: ...\n"
                             "@dataclasses.dataclass(slots=True)\nclass C:\n    a: int | None\n"
                             "if isinstance(1, (int, str)): pass\n"
                             "flags = 1 | 2\n"
                             "from typing import TYPE_CHECKING\n"
                             "if TYPE_CHECKING:\n    Y = str | bytes\n"
                             "z = zip([1], [2], strict=True)\n")
    assert [w for _, w in found] == [
        "m.py:3: `int | None` (a union of types at run time) (Python 3.10)",
        "m.py:5: dataclass(slots=...) (Python 3.10)",
        "m.py:13: zip(strict=...) (Python 3.10)"]
    eager = version_blockers("n.py", "def f(a: int | None): ...\n")  # no lazy annotations
    assert [v for v, _ in eager] == [(3, 10)]
    syntax = version_blockers("s.py", "match x:\n    case 1: pass\n")
    assert syntax and syntax[0][1].startswith("s.py:") and "Pattern matching" in syntax[0][1]


def test_the_oldest_python_it_claims(pyz: PyzInfo) -> None:
    python = _python39()
    if python is None:
        pytest.skip("no Python 3.9 here (python3.9 on PATH or under ~/.pyenv)")
    if pyz.python > (3, 9):  # what keeps it from 3.9 lives outside the agent: it says so
        proc = _run(python, str(pyz.path), "--help")
        assert proc.returncode == 1
        assert f"needs Python {pyz.python[0]}.{pyz.python[1]} or later, not 3.9" in proc.stderr
        assert pyz.blockers[0].split(":")[0] in proc.stderr
    else:
        proc = _run(python, str(pyz.path), "--help")
        assert proc.returncode == 0, proc.stderr


def _pythons() -> list[str]:
    python = _python39()
    return [sys.executable, *([python] if python else [])]


@pytest.mark.parametrize("which", ["this", "3.9"])
def test_serves_a_6_1_guest_of_our_xenstored(pyz: PyzInfo, server: XenStoreServer,
                                              dom0: XenStoreClient, emulated_host, tmp_path,
                                              which: str) -> None:
    if which == "3.9":
        python = _python39()
        if python is None or pyz.python > (3, 9):
            pytest.skip("needs a Python 3.9 and an archive that runs on it "
                        f"(it needs {pyz.python[0]}.{pyz.python[1]})")
    else:
        python = sys.executable
    domid = emulated_host.create_domain("pyz", 128)
    server.introduce_domain(domid, "pyz", 131072, 262144)
    guest = Guest("pyz", memory_mb=128, max_memory_mb=256, kernel="6.1")
    root = SysfsView(guest).mirror(tmp_path / "root")
    (root / ZONEINFO).write_text(render_zoneinfo(
        totalreserve_pages=guest.totalreserve_pages, max_pfn=guest.max_pfn,
        managed_pages=guest.totalram_pages))
    target_kb = root / TARGET_KB
    assert target_kb.read_text() == "131072\n"
    proc = subprocess.Popen(
        [python, "-I", "-S", str(pyz.path), "run", "--xenstored", server.domain_socket(domid),
         "--sysfs-root", str(root), "--stats-interval", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        host = Host(dom0, ack_timeout=20)
        result = host.set_toggles("pyz", {"selfballooning": True, "interval": 1,
                                          "downhysteresis": 1, "selfshrinking": True})
        assert result.status == "refused" and list(result.refused) == ["selfshrinking"], result
        assert result.applied["selfballooning"] == 1
        assert dom0.read(f"/local/domain/{domid}/{DATA_MODE}") == b"user-space"
        # the tree has no balloon driver behind it: every run reads the same, writes the same
        reading = parse_inputs(*((root / p).read_text() for p in (MEMINFO, ZONEINFO,
                                                                  CURRENT_KB, TARGET_KB)),
                               262144)
        assert not isinstance(reading, str)
        from xentmem.agent.userspace import next_target

        knobs = SelfBalloonKnobs(selfballooning=True, downhysteresis=1,
                                 frontswap_selfshrinking=False)
        expected = next_target(knobs, reading.snapshot, 131072 // 4)
        assert expected < 131072 // 4
        assert eventually(lambda: target_kb.read_text() == f"{expected * 4}\n", within=15)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert target_kb.read_text() == "131072\n"  # given back to memory/target
        assert "balloon target back to 131072 KiB" in err
        assert dom0.read(f"/local/domain/{domid}/data/tmem/selfballooning") == b"0"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
