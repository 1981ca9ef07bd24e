"""Two ``xentmem emulator up`` daemons, one RAMster cluster: the memory server's guest in one,
the client's in the other, each from a scenario file naming the other's node by its fixed port
(``peers``). The client's pages flow to the server, each side reports its RAMster counters in
its guest's ``data/tmem/stats/``, and a checkpoint with remote pages restores."""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_living_host import eventually, run, run_json

pytestmark = pytest.mark.slow  # two daemons, ~30 s and more: run with -m slow

SCENARIO = """
[ramster]
mode = "durable"
remotify_above = 10
repatriate_below = 5
max_pool_mb = 1
heartbeat_s = 0.1
dead_s = 2.0
peers = "{peer}=127.0.0.1:{peer_port}"
[[guests]]
name = "{name}"
memory_mb = {memory_mb}
swap = [{{ mb = 192 }}]
ramster = {{ node = {node}, target = {target}, port = {port} }}
"""
WORKLOAD = """[[guests.workloads]]
kind = "anon"
mb = 96
grow = 4
rate = 1500
"""


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def daemons() -> Iterator[tuple[Path, Path]]:
    root = Path(tempfile.mkdtemp(prefix="xtr", dir="/tmp"))  # short socket paths
    server_port, client_port = _free_ports(2)
    dirs = []
    for name, node, target, port, peer, peer_port, mb, extra in (
            ("memserver", 0, -1, server_port, 1, client_port, 128, ""),
            ("client", 1, 0, client_port, 0, server_port, 32, WORKLOAD)):
        toml = root / f"{name}.toml"
        toml.write_text(SCENARIO.format(name=name, node=node, target=target, port=port,
                                        peer=peer, peer_port=peer_port, memory_mb=mb) + extra)
        state = root / name
        run("emulator", "up", "--state", str(state), "--workload", str(toml), "--speed", "4",
            "--checkpoint-interval", "2")
        dirs.append(state)
    yield dirs[0], dirs[1]
    for d in dirs:
        run("emulator", "down", "--state", str(d), check=False)
    shutil.rmtree(root, ignore_errors=True)


def _stats(state: Path, guest: str) -> dict[str, int | None]:
    return run_json("guest", "show", guest, "-c", f"emulator:{state}")["stats"]


def test_guests_of_two_daemons_share_ram_and_report_it(daemons) -> None:
    server, client = daemons
    assert eventually(lambda: (_stats(client, "client").get("ramster_remotified_pages")
                               or 0) > 0, within=60)
    assert eventually(lambda: (_stats(server, "memserver").get("ramster_foreign_pers_pages")
                               or 0) > 0)
    assert _stats(client, "client")["ramster_nodes_alive"] == 1
    rows = {g["name"]: g for s in (server, client)
            for g in run_json("emulator", "status", "--state", str(s))["guests"]}
    assert rows["client"]["backend"] == rows["memserver"]["backend"] == "ramster"
    assert all(r["lost"] == 0 and r["stale"] == 0 for r in rows.values())


def test_the_client_daemon_restarts_from_its_checkpoint_and_loses_nothing(daemons) -> None:
    _, client = daemons
    run("emulator", "down", "--state", str(client))
    run("emulator", "up", "--state", str(client), "--speed", "4", "--checkpoint-interval", "2")
    assert eventually(lambda: _stats(client, "client").get("ramster_nodes_alive") == 1,
                      within=60)
    row = run_json("emulator", "status", "--state", str(client))["guests"]
    assert [(g["name"], g["lost"], g["stale"]) for g in row] == [("client", 0, 0)]
