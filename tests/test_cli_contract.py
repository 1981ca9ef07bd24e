"""The CLI's contract with a script and with a person reading a CI log, over every command,
against a real emulator daemon (dom0, guest1, guest2 running their agents):

- ``--json``: one object with ``schema_version`` and ``command``, a schema per command, key
  names in snake_case with their unit (``_mib``, ``_kib``, ``_s``, ``_per_s``), errors as one
  JSON object on stderr;
- not a terminal, 80 columns: no rich box, no cut cell (``…``), no empty header or cell, every
  line within 80 columns unless it is one ``name  value`` pair whose value is longer;
- the errors a new user met, each one true line with its exit code.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer
from emulator.test_scenario_cli import SMALL  # a scenario of a few model seconds
from typer.testing import CliRunner

from xentmem.cli import _connect, app
from xentmem.cli._render import JSON_VERSION
from xentmem.host.tmemlist import FIELDS

runner = CliRunner()
UUID = "11223344-5566-7788-8877-665544332211"


@pytest.fixture(scope="module")
def state(emulator_daemon: Path) -> Path:
    return emulator_daemon


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trace and a scenario to run the tune and emulator commands on."""
    root = tmp_path_factory.mktemp("cli")
    result = runner.invoke(app, ["tune", "synth", "bursty", "-o", str(root / "t.csv"),
                                 "--duration", "1200", "--step", "10"])
    assert result.exit_code == 0, result.output
    (root / "s.toml").write_text(SMALL)
    return root


@pytest.fixture(autouse=True)
def hermetic(monkeypatch: pytest.MonkeyPatch, state: Path) -> None:
    """No Xen here; the daemon is the host every command finds by default; 80 columns."""
    monkeypatch.setattr(_connect, "PRIVCMD_PATHS", (str(state / "privcmd"),))
    monkeypatch.setattr(_connect, "XENBUS_PATHS", (str(state / "xenbus"),))
    monkeypatch.setenv("XENTMEM_STATE", str(state))
    monkeypatch.setenv("COLUMNS", "80")
    for name in ("XENTMEM_CONNECT", "XENTMEM_LIBVIRT_URI", "XENSTORED_PATH"):
        monkeypatch.delenv(name, raising=False)


def cli(*args: str, code: int = 0) -> Any:
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, (args, result.output, result.stderr)
    return result


# --- the JSON contract ------------------------------------------------------------------------

ENVELOPE = {
    "type": "object",
    "required": ["schema_version", "command"],
    "properties": {"schema_version": {"const": JSON_VERSION}, "command": {"type": "string"}},
}


def rows_of(key: str, *required: str) -> dict[str, Any]:
    return {"required": [key], "properties": {key: {"type": "array", "items": {
        "type": "object", "required": list(required)}}}}


def keys(*required: str) -> dict[str, Any]:
    return {"required": list(required)}


def cases(state: Path, files: Path) -> dict[str, tuple[list[str], dict[str, Any]]]:
    """command -> (arguments, its schema beyond the envelope); every --json command."""
    trace, scenario = str(files / "t.csv"), str(files / "s.toml")
    empty = tempfile.mkdtemp(prefix="xtd")
    return {
        "status": (["status"], keys("host", "domains", "assigned_mib", "agents", "guests")),
        "guest list": (["guest", "list"], rows_of("guests", "domid", "name", "memory_mib")),
        "guest show": (["guest", "show", "guest1"], keys("guest", "settings", "stats",
                                                         "balloon")),
        "guest set": (["guest", "set", "guest1", "--interval", "6", "--wait", "10"],
                      keys("domid", "request", "status", "settings")),
        "guest memory": (["guest", "memory", "guest2", "--target", "100", "--wait", "0"],
                         keys("target_mib", "previous_mib", "status")),
        "tmem list": (["tmem", "list", "-a", "-l"], rows_of("records", "kind")),
        "tmem freeze": (["tmem", "freeze", "guest1"], keys("domid", "all", "action")),
        "tmem thaw": (["tmem", "thaw", "--all"], keys("domid", "all", "action")),
        "tmem set": (["tmem", "set", "guest1", "-w", "2"], keys("domid", "action", "weight")),
        "tmem shared-auth": (["tmem", "shared-auth", "1", "-u", UUID],
                             keys("domid", "action", "uuid")),
        "tmem freeable": (["tmem", "freeable"], keys("freeable_mib")),
        "tmem flush": (["tmem", "flush", "0"], keys("released_kib")),
        "xenstore ls": (["xenstore", "ls", "/local/domain/1/memory"],
                        rows_of("nodes", "path", "value")),
        "xenstore read": (["xenstore", "read", "/local/domain/1/name"], keys("values")),
        "xenstore list": (["xenstore", "list", "/local/domain"], keys("path", "children")),
        "xenstore write": (["xenstore", "write", "/tool/xt", "1"], rows_of("written", "path")),
        "xenstore rm": (["xenstore", "rm", "/tool/xt"], keys("removed")),
        "xenstore watch": (["xenstore", "watch", "/local/domain/1/name", "-n", "1"],
                           keys("event")),
        "doctor": (["doctor", "-c", f"emulator:{state}"], rows_of("checks", "check", "ok")),
        "emulator status": (["emulator", "status"], keys("pid", "memory_mib", "domains", "tmem")),
        "emulator up": (["emulator", "up"], keys("pid", "already_running", "memory_mib")),
        "emulator create-domain": (["emulator", "create-domain", "extra", "--bare"],
                                   keys("domid")),
        "emulator destroy-domain": (["emulator", "destroy-domain", "3"], keys()),
        "emulator down": (["emulator", "down", "--state", empty], keys("stopped", "state_dir")),
        "emulator run": (["emulator", "run", scenario], keys("summary", "guests", "events")),
        "agent run": (["agent", "run", "--once", "-c", f"emulator:{state}?domid=1",
                       "--sysfs-root", str(sysfs_root(files))], keys("state")),
        "agent build-zipapp": (["agent", "build-zipapp", str(files / "agent.pyz")],
                               keys("path", "bytes", "modules")),
        "tune synth": (["tune", "synth", "steady", "-o", str(files / "u.csv"),
                        "--duration", "600"], keys("samples", "duration_s", "file")),
        "tune show": (["tune", "show", trace], keys("samples", "duration_s")),
        "tune replay": (["tune", "replay", trace], keys("knobs", "trace", "exact")),
        "tune sweep": (["tune", "sweep", trace, "-g", "downhysteresis=1,8"], keys()),
        "tune bench": (["tune", "bench", trace, "-g", "downhysteresis=1,8", "--repeat", "1"],
                       keys()),
        "tune collect": (["tune", "collect", "-o", str(files / "c.csv"), "-w", "anon:mb=32",
                          "--duration", "4", "--memory-mb", "64"], keys("samples", "file")),
        "tune record": (["tune", "record", "-o", str(files / "r.csv"), "--duration", "0.002",
                         "--step", "0.001"], keys("samples", "file", "interrupted")),
        "bench tmem": (["bench", "tmem", "--pages", "100", "--rounds", "1"],
                       rows_of("rows", "pages_per_s")),
        "bench guest": (["bench", "guest", "-n", "100", "--rounds", "1"],
                        rows_of("rows", "case", "pages_per_s")),
        "bench ramster": (["bench", "ramster", "--pages", "100", "--seconds", "1"],
                          rows_of("rows", "case", "value", "unit", "baseline")),
        "balance plan": (["balance", "plan"], keys("policy", "budget_mib", "guests", "tmem")),
        "balance explain": (["balance", "explain", "guest1"], keys("now", "logged")),
        "balance set": (["balance", "set", "guest2", "--priority", "3"],
                        keys("domid", "name", "floor_mib", "priority")),
        "balance compare": (["balance", "compare", "--guests", "idle", "--for", "10", "-p",
                             "tmem"], keys("guests", "memory_mib", "host_mib", "table")),
        "tune apply": (["tune", "apply", str(sweep_report(files)), "guest2", "--wait", "10"],
                       keys("domid", "request", "status", "settings")),
    }


# a minute or more each (their JSON goes through the same renderer), and demo: seconds, and
# its JSON is emulator run's (run_and_report)
SLOW = {"bench living", "bench daemon", "bench cli", "demo"}


def sweep_report(files: Path) -> Path:
    """A sweep's JSON report, for ``tune apply``."""
    path = files / "sweep.json"
    if not path.exists():
        path.write_text(cli("tune", "sweep", str(files / "t.csv"), "-g", "downhysteresis=1,8",
                            "--json").stdout)
    return path


def sysfs_root(files: Path) -> Path:
    from xentmem.guest import Guest, SysfsView

    root = files / "root"
    if not root.exists():
        SysfsView(Guest("cli", memory_mb=64)).mirror(root)
    return root


def json_commands() -> set[str]:
    """Every command that has --json, by walking the app."""
    found = set()

    def walk(command: Any, path: tuple[str, ...]) -> None:
        for name in command.list_commands(None):
            sub = command.get_command(None, name)
            if hasattr(sub, "commands"):
                walk(sub, (*path, name))
            elif any("--json" in p.opts for p in sub.params):
                found.add(" ".join((*path, name)))

    walk(typer.main.get_command(app), ())
    return found


def test_every_json_command_is_checked(state: Path, files: Path):
    assert json_commands() == set(cases(state, files)) | SLOW


# keys that are data, not names: tmem's two-letter codes, xenstore paths, metadata
_DATA_KEYS = ("records", "values", "libvirt_metadata", "tmem", "exact", "stats")
_UNIT_SUFFIXES = re.compile(r"(_mb|_kb|_ms|_sec|_secs|pages_s)$")
_KERNEL_NAMES = {"min_usable_mb", "reserved_mb"}  # the guest's knobs, as the kernel names them


def key_problems(value: Any, where: str = "") -> list[str]:
    problems = []
    if isinstance(value, dict):
        for k, v in value.items():
            if not re.fullmatch(r"[a-z][a-z0-9_]*", k):
                problems.append(f"{where}.{k}: not snake_case")
            elif _UNIT_SUFFIXES.search(k) and not k.endswith(tuple(_KERNEL_NAMES)):
                problems.append(f"{where}.{k}: unit not spelled out (_mib, _kib, _s, _per_s)")
            if k not in _DATA_KEYS:
                problems += key_problems(v, f"{where}.{k}")
    elif isinstance(value, list):
        for item in value:
            problems += key_problems(item, f"{where}[]")
    return problems


def test_every_json_command_prints_one_object_of_its_schema(state: Path, files: Path):
    for command, (args, schema) in cases(state, files).items():
        result = cli(*args, "--json")
        lines = result.stdout.strip().splitlines()
        data = json.loads(lines[0] if command == "xenstore watch" else result.stdout)
        jsonschema.validate(data, {**ENVELOPE, **schema,
                                   "required": ENVELOPE["required"] + schema.get("required",
                                                                                 [])})
        assert data["command"] == command
        assert key_problems(data) == [], (command, key_problems(data))
        assert "" not in [v for v in data.values() if isinstance(v, str)], command


@pytest.mark.parametrize("args, code", [
    (["tmem", "list", "99"], 2),
    (["tmem", "list", "-a", "-c", "bogus:x"], 2),
    (["xenstore", "read", "/no/such/node"], 1),
    (["guest", "show", "nobody"], 2),
])
def test_errors_are_one_json_object_on_stderr(args: list[str], code: int):
    result = cli(*args, "--json", code=code)
    assert result.stdout == ""
    error = json.loads(result.stderr)
    assert error["schema_version"] == JSON_VERSION and error["error"]["exit_code"] == code
    assert error["error"]["message"] and "\n" not in error["error"]["message"]


# --- 80 columns, not a terminal ---------------------------------------------------------------

TABLES = {
    "status": ["status"], "guest list": ["guest", "list"], "guest show": ["guest", "show", "1"],
    "guest set": ["guest", "set", "guest1", "--interval", "7", "--wait", "10"],
    "guest memory": ["guest", "memory", "guest2", "--target", "100", "--wait", "0"],
    "tmem list": ["tmem", "list", "-a"], "tmem list -l": ["tmem", "list", "-a", "-l"],
    "tmem freeable": ["tmem", "freeable"], "tmem flush": ["tmem", "flush", "0"],
    "doctor": ["doctor"], "emulator status": ["emulator", "status"],
    "emulator up": ["emulator", "up"], "emulator run": ["emulator", "run", "{files}/s.toml"],
    "tune show": ["tune", "show", "{files}/t.csv"], "tune replay": ["tune", "replay",
                                                                   "{files}/t.csv"],
    "tune sweep": ["tune", "sweep", "{files}/t.csv", "-g", "downhysteresis=1,8", "--all"],
    "bench tmem": ["bench", "tmem", "--pages", "100", "--rounds", "1"],
    "agent build-zipapp": ["agent", "build-zipapp", "{files}/a.pyz"],
    "balance plan": ["balance", "plan"], "balance explain": ["balance", "explain", "guest1"],
    "balance compare": ["balance", "compare", "--guests", "idle,web", "--for", "10"],
}


def layout_problems(text: str) -> list[str]:
    problems = []
    if re.search(r"[─│┏┃━┡╇└┘┌┐├┤┬┴┼]", text):
        problems.append("a rich table off a terminal")
    if "…" in text:
        problems.append("a cut cell")
    for line in text.splitlines():
        if len(line) > 80 and not re.fullmatch(r"\S+ {2,}\S.*", line):
            problems.append(f"wider than 80 columns: {line!r}")
        if re.search(r"\S {2,}$", line):
            problems.append(f"trailing blanks: {line!r}")
    return problems


@pytest.mark.parametrize("name", list(TABLES))
def test_tables_read_at_80_columns_off_a_terminal(name: str, files: Path):
    text = cli(*(a.format(files=files) for a in TABLES[name])).stdout
    assert layout_problems(text) == []
    assert "-  -  -" not in text  # a row of empty cells


def test_status_names_every_guest_in_a_table_at_80_columns():
    text = cli("status").stdout
    data = json.loads(cli("status", "--json").stdout)
    header = next(line for line in text.splitlines() if line.startswith("domid"))
    assert header.split() == ["domid", "name", "state", "MiB", "tmem", "selfballoon", "agent"]
    for guest in data["guests"]:
        row = next(line for line in text.splitlines() if line.split()[:2] ==
                   [str(guest["domid"]), guest["name"]])
        assert len(re.split(r" {2,}", row)) == 7, row


def test_tmem_list_shows_long_names_in_xens_order_and_a_legend():
    text = cli("tmem", "list", "-a").stdout
    client = FIELDS["client"]
    order = [client[c] for c in ("CI", "ww", "co", "fr", "Tc", "Ge", "Pp", "Gp")]
    lines = text.splitlines()
    assert lines[lines.index("clients") + 1].split() == order  # a table: it fits 80 columns
    assert "eph_gets=Ge" in text and "pers_puts=Pp" in text
    raw = cli("tmem", "list", "-a", "--raw").stdout
    assert re.search(r"^C=CI:1,ww:", raw, re.M)  # --raw keeps Xen's text


def test_wide_forces_the_table():
    text = cli("guest", "list", "--wide").stdout
    assert "┃" in text or "│" in text


def test_a_narrow_terminal_gets_one_block_per_record(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("COLUMNS", "40")
    text = cli("guest", "list").stdout
    assert re.search(r"^name +guest1$", text, re.M) and layout_problems(text) == []


# --- errors that misled -------------------------------------------------------------------------

def one_line(result: Any) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_tmem_list_tells_no_pool_from_no_domain(state: Path):
    cli("emulator", "create-domain", "quiet", "--bare")
    domid = json.loads(cli("guest", "show", "quiet", "--json").stdout)["guest"]["domid"]
    assert one_line(cli("tmem", "list", str(domid), code=1)) == (
        f"error: domain {domid} has no tmem client yet: it has not created a tmem pool (no "
        "frontswap/cleancache in use there)")
    assert one_line(cli("tmem", "list", "quiet", code=1)).startswith(
        f"error: domain {domid} (quiet) has no tmem client yet")
    assert one_line(cli("tmem", "list", "99", code=2)) == "error: no domain 99 on this host"
    cli("emulator", "destroy-domain", str(domid))


def test_tmem_commands_take_domain_names():
    cli("tmem", "freeze", "guest2")
    records = json.loads(cli("tmem", "list", "guest2", "--json").stdout)["records"]
    assert next(r for r in records if r["kind"] == "client")["fr"] == 1
    cli("tmem", "thaw", "guest2")
    assert "no domain 'nobody'" in one_line(cli("tmem", "freeze", "nobody", code=2))


def test_shared_auth_all_is_refused_before_the_call_on_4_9_and_later():
    line = one_line(cli("tmem", "shared-auth", "-a", "-u", UUID, code=2))
    assert line == ("error: --all does not work on Xen 4.12 (4.9 and later fail it with "
                    "-ENOMEM): authorise each domain by id or name")


def test_a_user_without_a_daemon_is_told_roots_is_roots(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path):
    """As a non-root user (euid 1000) with no daemon of their own, while root runs one."""
    from xentmem.hypercalls import _where

    roots = tmp_path / "root-state"
    roots.mkdir(mode=0o700)  # made by root: we are root here
    own = tmp_path / "own"
    monkeypatch.setattr(_where, "ROOT_STATE_DIR", roots)
    monkeypatch.setenv("XENTMEM_STATE", str(own))
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    line = one_line(cli("status", code=1))
    assert line == (f"error: no emulator daemon of yours in {own}; {roots} is root's and only "
                    "root may use its daemon: run as root, or start your own with `xentmem "
                    "emulator up`")


def test_state_naming_a_file_exits_2(tmp_path: Path):
    path = tmp_path / "file"
    path.write_text("")
    assert one_line(cli("emulator", "status", "--state", str(path), code=2)) == (
        f"error: --state {path} is not a directory")


def test_html_into_a_missing_directory_fails_before_the_sweep(files: Path,
                                                             monkeypatch: pytest.MonkeyPatch):
    import xentmem.tuning

    def no_sweep(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the sweep ran")

    monkeypatch.setattr(xentmem.tuning, "sweep", no_sweep)
    missing = files / "nowhere" / "r.html"
    line = one_line(cli("tune", "sweep", str(files / "t.csv"), "-g", "downhysteresis=1,2",
                        "--html", str(missing), code=2))
    assert line == f"error: --html {missing}: no directory {missing.parent}"


def test_tune_record_keeps_what_it_recorded_on_ctrl_c(files: Path,
                                                      monkeypatch: pytest.MonkeyPatch):
    from xentmem.tuning import procfs

    real, taken = procfs.read_sample, []

    def interrupted_after_three(root: Path) -> Any:
        if len(taken) == 4:  # the check before recording, then three samples
            raise KeyboardInterrupt
        taken.append(root)
        return real(root)

    monkeypatch.setattr(procfs, "read_sample", interrupted_after_three)
    out = files / "partial.csv"
    result = cli("tune", "record", "-o", str(out), "--duration", "10", "--step", "0.001",
                 "--json", code=130)
    assert json.loads(result.stdout)["interrupted"] is True
    assert one_line(result) == f"interrupted: wrote the 3 samples taken to {out}"
    assert len(json.loads(cli("tune", "show", str(out), "--json").stdout)) and \
        json.loads(cli("tune", "show", str(out), "--json").stdout)["samples"] == 3


def test_xenstore_watch_ends_with_one_true_line(state: Path, monkeypatch: pytest.MonkeyPatch):
    from xentmem.xenstore import _client

    def gone(self: Any, timeout: Any = None) -> Any:
        raise _client.XenStoreUnavailable("connection lost", 0, self.path)

    monkeypatch.setattr(_client.Watch, "get", gone)
    line = one_line(cli("xenstore", "watch", "/local/domain/1/name", code=1))
    assert line == (f"error: the xenstored at {state / 'xenstore.sock'} went away while "
                    "watching /local/domain/1/name (after 0 event(s))")
