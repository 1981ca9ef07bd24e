"""What `xentmem status --json` costs, held where a test can hold it (times are measured by
`xentmem bench cli`, never asserted): the modules it imports, the xenstore round trips for a
host, and typer's coercion left unbuilt for values that need none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer

from xentmem.cli._params import light_coercion
from xentmem.cli.status import status_app
from xentmem.host.guests import _REPORT_NODES, Host
from xentmem.xenstore import XenStoreClient, XenStoreServer
from xentmem.xenstore import _client as client_module
from xentmem.xenstore.keys import DATA_REFUSED, DATA_STATE, KEYS, key

# what status --json has no use for: typer's pydantic coercion, rich (tables only), the XML of
# libvirt's metadata (xml.sax alone pulls in urllib, http and email), the heavy subsystems
NOT_FOR_STATUS = ("pydantic", "pydantic_core", "rich", "xml", "urllib.request", "http",
                  "email", "numpy", "libvirt", "cffi")


def test_status_json_imports_nothing_it_does_not_use(emulator_daemon: Path):
    code = textwrap.dedent(f"""
        import json, sys
        from xentmem.cli._app import run
        code = run(["status", "-c", "emulator:{emulator_daemon}", "--json"])
        print(json.dumps([code, sorted(sys.modules)]))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    code, loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert code == 0
    assert '"domains": 3' in proc.stdout  # it did read the host
    assert [m for m in loaded if m.startswith(tuple(f"{n}." for n in NOT_FOR_STATUS))
            or m in NOT_FOR_STATUS] == []


@pytest.fixture
def host_socket() -> Iterator[tuple[XenStoreServer, str]]:
    """Our xenstored with three guests, still (no agent writing: no transaction conflicts)."""
    with tempfile.TemporaryDirectory(prefix="xts") as d:
        server = XenStoreServer(Path(d) / "socket").start()
        try:
            for domid in (1, 2, 3):
                server.introduce_domain(domid, f"guest{domid}", memory_kib=131072,
                                        max_kib=262144)
            yield server, str(Path(d) / "socket")
        finally:
            server.stop()


def test_status_reads_a_host_in_four_round_trips(host_socket, monkeypatch):
    """The listing of /local/domain, then for all guests at once, each in its own transaction:
    the starts, one batch of every node, the commits. The refused reasons are read only for
    the guests whose agent says it refused something: three more round trips, for them."""
    trips: list[int] = []  # the requests of each write (each waited for before the next)
    real = client_module._Router.send_many

    def counted(self, packets):
        trips.append(len(packets))
        return real(self, packets)

    monkeypatch.setattr(client_module._Router, "send_many", counted)
    _, path = host_socket
    with XenStoreClient(path, timeout=5) as xs:
        frontswap = key("frontswap")
        xs.write(f"/local/domain/1/{DATA_STATE}", "applied")
        xs.write(f"/local/domain/2/{frontswap.control}", "0")
        xs.write(f"/local/domain/2/{DATA_REFUSED}/frontswap", "busy")
        xs.write(f"/local/domain/2/{DATA_REFUSED}/bogus", "junk is not a key")
        xs.write(f"/local/domain/3/{DATA_REFUSED}/{KEYS[-1].name}", b"\xff\x00")
        trips.clear()
        summary = Host(xs).summary()
        assert summary["domains"] == 3
        assert trips == [1, 3, 3 * (len(_REPORT_NODES) + 3), 3]  # no agent says it refused
        assert {g.domid: g.tmem.refused for g in Host(xs).guests() if g.tmem} == {
            1: {}, 2: {}, 3: {}}
        xs.write(f"/local/domain/2/{DATA_STATE}", "refused")
        xs.write(f"/local/domain/3/{DATA_STATE}", b"\xfe junk")  # looked at: shows what is there
        trips.clear()
        guests = {g.domid: g for g in Host(xs).guests()}
    assert trips == [1, 3, 3 * (len(_REPORT_NODES) + 3), 3, 2, 2 * len(KEYS), 2]
    assert guests[1].tmem is not None and guests[1].tmem.refused == {}
    assert guests[2].tmem is not None and guests[2].tmem.refused == {"frontswap": "busy"}
    assert guests[2].tmem.requested == {"frontswap": 0}
    assert guests[3].tmem is not None
    assert guests[3].tmem.refused == {KEYS[-1].name: "(unreadable reason)"}


def status_options() -> dict[str, typer.core.TyperOption]:
    command = typer.main.get_command(status_app)
    light_coercion(command.params)
    return {p.name: p for p in command.params}


def test_values_needing_no_coercion_never_build_typers():
    """None, a str given for a str, a default in range: returned as they are, typer's
    pydantic adapter never built."""
    options = status_options()
    ctx = typer.main.get_command(status_app).make_context("status", [])
    for name, value in (("connect", None), ("connect", "emulator:/x"), ("timeout", 5.0),
                        ("timeout", 600.0)):
        coercion = options[name]._runtime_param
        assert coercion.coerce(value, param=options[name], ctx=ctx) == value
        assert coercion._full is None, name


def test_anything_else_gets_typers_coercion_and_messages():
    options = status_options()
    ctx = typer.main.get_command(status_app).make_context("status", [])
    timeout = options["timeout"]
    assert timeout._runtime_param.coerce("3", param=timeout, ctx=ctx) == 3.0
    assert timeout._runtime_param._full is not None
    for bad, message in (("abc", "valid number"), (0.01, "greater than or equal to 0.1"),
                         ("601", "less than or equal to 600")):
        with pytest.raises(typer.BadParameter, match=message):
            timeout._runtime_param.coerce(bad, param=timeout, ctx=ctx)
