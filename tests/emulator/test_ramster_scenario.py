"""Scenarios with RAMster clusters: guests on several machines of one process, a node killed
mid-run, and the TOML keys checked like every other."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest

from xentmem.emulator.scenario import load_scenario, parse_scenario, run_scenario
from xentmem.errors import GuestError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ramster-cluster.toml"


def _small(mode: str) -> dict[str, Any]:
    data = tomllib.loads(EXAMPLE.read_text())
    data["ramster"]["mode"] = mode
    data["duration"], data["events"][0]["at"] = 8, 6
    data["guests"][1]["workloads"][0].update(mb=96, grow=3)
    return data


@pytest.mark.parametrize("mode", ["durable", "faithful"])
def test_a_memory_server_killed_mid_run(mode: str) -> None:
    result = run_scenario(parse_scenario(_small(mode)))
    assert [r["guest"] for r in result.rows] == ["client"]  # the server is gone
    kill = result.events[0]["event"]
    held = int(kill.split("held ")[1].split()[0])
    assert held > 0
    assert result.stale == 0
    assert result.lost == (held if mode == "faithful" else 0)  # counted exactly, or none


def test_the_example_parses_into_two_machines_and_a_cluster() -> None:
    s = load_scenario(EXAMPLE)
    server, client = s.guests
    assert s.machines == {"memserver": "server-box", "client": "client-box"}
    assert server.backend == client.backend == "ramster"
    assert client.backend_params["target"] == 0 and server.backend_params["target"] == -1
    assert client.backend_params["nodes"].split() == ["0=127.0.0.1:0", "1=127.0.0.1:0"]
    assert client.backend_params["mode"] == "durable"


@pytest.mark.parametrize("edit, why", [
    (lambda d: d["ramster"].update(node=3), "set per guest"),
    (lambda d: d["ramster"].update(mode="fast"), "mode"),
    (lambda d: d["ramster"].update(speed=3), "bad parameter|unexpected keyword"),
    (lambda d: d["guests"][1]["ramster"].update(target=5), "not another node"),
    (lambda d: d["guests"][1]["ramster"].update(colour=1), "unknown key"),
    (lambda d: d["guests"][1].update(ramster=3), "must be a table"),
    (lambda d: d["guests"][1].update(machine=2), "'machine' must be str"),
    (lambda d: d["events"][0].update(action="explode"), "unknown action"),
])
def test_bad_ramster_keys_are_refused(edit, why: str) -> None:
    data = copy.deepcopy(_small("durable"))
    edit(data)
    with pytest.raises(GuestError, match=why):
        parse_scenario(data)


def test_the_two_daemon_examples_name_each_other() -> None:
    server = load_scenario(EXAMPLE.parent / "ramster-daemons" / "memserver.toml").guests[0]
    client = load_scenario(EXAMPLE.parent / "ramster-daemons" / "client.toml").guests[0]
    expected = ["0=127.0.0.1:17800", "1=127.0.0.1:17801"]
    assert sorted(server.backend_params["nodes"].split()) == expected
    assert sorted(client.backend_params["nodes"].split()) == expected
    assert (server.backend_params["target"], client.backend_params["target"]) == (-1, 0)
