"""Host-side checks of ``vm-images/xen-qemu/xenqemu.py`` that need no VM: the ELF and module
readers on real files of this machine, and bad input changing nothing."""

from __future__ import annotations

import importlib.util
import shlex
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "vm-images/xen-qemu/xenqemu.py"


@pytest.fixture(scope="module")
def xq():
    spec = importlib.util.spec_from_file_location("xenqemu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["xenqemu"] = module  # dataclass/annotation lookups need it registered
    spec.loader.exec_module(module)
    return module


def test_elf_needed_reads_dt_needed(xq) -> None:
    assert "libc.so.6" in xq.elf_needed(Path(sys.executable).resolve())


def test_elf_reader_rejects_non_elf(xq, tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"#!/bin/sh\n" * 10)
    with pytest.raises(xq.BuildError, match="ELF64"):
        xq.elf_needed(junk)


def test_vmlinux_extraction_needs_an_xz_elf(xq) -> None:
    with pytest.raises(xq.BuildError, match="no xz-compressed ELF"):
        xq.vmlinux_from_bzimage(b"MZ" + b"\0" * 4096 + b"\xfd7zXZ\x00garbage")


def test_refuses_to_clear_a_foreign_output_dir(xq, tmp_path: Path) -> None:
    keep = tmp_path / "precious.txt"
    keep.write_text("mine")
    with pytest.raises(SystemExit, match="refusing to clear"):
        xq._prepare_out(tmp_path)
    assert keep.read_text() == "mine"


def test_reuses_its_own_output_dir(xq, tmp_path: Path) -> None:
    (tmp_path / xq.CTL).mkdir()
    (tmp_path / "old.log").write_text("stale")
    xq._prepare_out(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [xq.CTL]


def test_command_script_quotes_arguments_and_sets_live_env(xq) -> None:
    script = xq._command_script(["echo", "a b", "$HOME;rm -rf /"], {"K": "v w"}, Path("/w d"))
    assert "cd '/w d' || exit 125" in script
    exec_line = script.splitlines()[1]
    words = shlex.split(exec_line)
    assert words[-3:] == ["echo", "a b", "$HOME;rm -rf /"]
    assert "XENTMEM_LIVE=1" in words and "K=v w" in words


def test_run_rejects_bad_env_option(xq, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        xq.main(["run", "--env", "novalue", "--", "true"])
    assert exc.value.code == 2
    assert "--env wants K=V" in capsys.readouterr().err
