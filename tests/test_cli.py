"""The CLI edge and ``xentmem doctor`` through typer's own CliRunner."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading

from typer.testing import CliRunner

from xentmem.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_doctor_without_xen_reports_every_row_and_exits_0(tmp_path):
    result = invoke("doctor", "--json", "--privcmd", str(tmp_path / "privcmd"),
                    "--xenstored", str(tmp_path / "sock"), "--libvirt-uri", "test:///default")
    assert result.exit_code == 0, result.output
    rows = {row["check"]: row for row in json.loads(result.stdout)["checks"]}
    assert list(rows) == ["privcmd", "xen", "tmem", "xenstored", "libvirt"]
    assert rows["privcmd"]["ok"] is False and "not running on Xen" in rows["privcmd"]["detail"]
    assert rows["xen"]["ok"] is None and rows["tmem"]["ok"] is None
    assert rows["xenstored"]["status"] == "missing"
    assert rows["libvirt"] == {"check": "libvirt", "ok": True, "status": "reachable",
                               "detail": "test:///default: TEST 0.0.2"}


def test_doctor_reaches_a_xenstored_socket(tmp_path):
    """A minimal listener that answers one DIRECTORY: checks the doctor's wire request."""
    path = str(tmp_path / "xs")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    seen = []

    def answer():
        conn, _ = server.accept()
        with conn:
            seen.append(conn.recv(18))
            conn.sendall(seen[0][:12] + (6).to_bytes(4, "little") + b"local\0")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    result = invoke("doctor", "--json", "--xenstored", path, "--libvirt-uri", "test:///default")
    thread.join(5)
    server.close()
    rows = {row["check"]: row for row in json.loads(result.stdout)["checks"]}
    assert rows["xenstored"]["ok"] is True
    assert seen[0][16:] == b"/\0" and seen[0][:4] == (1).to_bytes(4, "little")


def test_unreachable_libvirt_is_a_row_not_a_crash():
    result = invoke("doctor", "--json", "--libvirt-uri", "qemu+unix:///system?socket=/nonexistent")
    assert result.exit_code == 0
    rows = {row["check"]: row for row in json.loads(result.stdout)["checks"]}
    assert rows["libvirt"]["ok"] is False and "nonexistent" in rows["libvirt"]["detail"]


def test_doctor_table_output():
    result = invoke("doctor", "--libvirt-uri", "test:///default")
    assert result.exit_code == 0
    assert "privcmd" in result.stdout and "libvirt" in result.stdout


def test_bad_option_exits_2_with_one_line():
    result = invoke("doctor", "--timeout", "abc")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--timeout" in lines[0]
    assert "Traceback" not in result.output


def test_unknown_command_exits_2():
    result = invoke("no-such-command")
    assert result.exit_code == 2 and "No such command" in result.stderr


def test_console_script_edge_matches():
    proc = subprocess.run([sys.executable, "-c", "from xentmem.cli import main; main()",
                           "doctor", "--timeout", "-1"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
