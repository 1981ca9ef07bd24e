"""``xentmem tmem ...`` through CliRunner with the in-process emulator injected as a transport
(an extra scheme in the connection table, exactly as the daemon's ``emulator:`` one is)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from xentmem.cli import _connect, app
from xentmem.cli.tmem import parse_xl_uuid
from xentmem.emulator import EmulatedHost
from xentmem.emulator.transport import EmulatedHypervisor
from xentmem.hypercalls import Tmem

runner = CliRunner()


@pytest.fixture(params=["4.5", "4.12"])
def host(request, monkeypatch):
    host = EmulatedHost(512, xen_version=request.param)
    monkeypatch.setitem(_connect.TRANSPORTS, "inproc",
                        lambda rest: EmulatedHypervisor(host, int(rest or 0)))
    return host


def tmem_cli(*args: str):
    return runner.invoke(app, ["tmem", *args, "-c", "inproc"])


def guest_with_pages(host: EmulatedHost, pages: int) -> int:
    domid = host.create_domain("guest", 64, 128)
    with Tmem(EmulatedHypervisor(host, domid), host.version) as tmem:
        pool = tmem.new_pool(persistent=False)
        for i in range(pages):
            tmem.put_page(pool, 7, i, bytes([i % 256]) * 4096)
    return domid


def test_list_all_parses_the_hypervisors_text(host):
    domid = guest_with_pages(host, 3)
    result = tmem_cli("list", "--all", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["records"]
    client = next(r for r in rows if r["kind"] == "client" and r["CI"] == domid)
    pool = next(r for r in rows if r["kind"] == "pool" and r["CI"] == domid)
    assert pool["PT"] == "EP" and client["fr"] == 0
    raw = tmem_cli("list", str(domid), "--raw")
    assert raw.stdout.startswith(f"C=CI:{domid},")


def test_freeze_then_thaw_shows_in_the_list(host):
    domid = guest_with_pages(host, 1)
    assert tmem_cli("freeze", str(domid)).exit_code == 0
    rows = json.loads(tmem_cli("list", str(domid), "--json").stdout)["records"]
    assert rows[0]["fr"] == 1
    assert tmem_cli("thaw", "--all").exit_code == 0
    assert json.loads(tmem_cli("list", str(domid), "--json").stdout)["records"][0]["fr"] == 0


def test_set_weight_and_compress(host):
    domid = guest_with_pages(host, 1)
    assert tmem_cli("set", str(domid), "--weight", "3", "--compress").exit_code == 0
    row = json.loads(tmem_cli("list", str(domid), "--json").stdout)["records"][0]
    assert (row["ww"], row["co"]) == (3, 1)


def test_freeable_and_flush(host):
    guest_with_pages(host, 300)
    freeable = json.loads(tmem_cli("freeable", "--json").stdout)["freeable_mib"]
    assert freeable == 300 >> 8
    released = json.loads(tmem_cli("flush", "64", "--json").stdout)["released_kib"]
    assert released >= 64


def test_list_of_unknown_domain_fails_with_one_line(host):
    """A transport alone cannot tell a domain with no tmem client from no domain: says both."""
    result = tmem_cli("list", "42")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: domain 42 has no tmem client: it does not exist, or has not created a tmem "
        "pool yet"]


@pytest.mark.parametrize("args", [
    ["list"], ["list", "3", "--all"], ["set", "1"], ["freeze", "-5"],
    ["shared-auth", "1", "-u", "not-a-uuid"], ["list", "-a", "--xen-version", "x"],
])
def test_bad_input_exits_2_and_changes_nothing(host, args):
    before = host.tmem_list(long=True)
    result = tmem_cli(*args)
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert host.tmem_list(long=True) == before


def test_xl_uuid_parsing_is_hi_then_lo():
    assert parse_xl_uuid("11223344-5566-7788-8877-665544332211") == (
        0x8877665544332211, 0x1122334455667788)
