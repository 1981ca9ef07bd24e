"""The emulator's ``/local/domain/N`` layout (``xentmem.xenstore.layout_domain``, what the
emulated toolstack writes) against the layout the real libxl 4.17 wrote for a PV guest of the
same size, captured live into ``fixtures/xl-domain-layout.json`` (``test_domain_layout.py``).

Runs on the machine itself (no Xen needed). Every node the emulator writes must exist in the
real layout with the same value, owner and permissions; every real node the emulator leaves out
must be listed in ``NOT_MODELLED`` with the reason.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from xentmem.xenstore import LocalXenStore, XenStoreServer, layout_domain

from ._layout import capture

FIXTURE = Path(__file__).with_name("fixtures") / "xl-domain-layout.json"
DOMID = 7
NAME = "xq-guest1"

# Real nodes the emulator deliberately does not write (prefix -> why).
NOT_MODELLED = {
    "console": "no console backend: xenconsoled's ring page, event channel and pty",
    "store": "emulated guests reach our xenstored over a socket, not a ring page + event channel",
    "cpu": "vCPU hotplug nodes (cpu/N/availability); emulated domains have no vCPUs",
    "vm": "no /vm/<uuid> tree in the emulated toolstack",
    "device/suspend": "no PV suspend event channel (written by the guest kernel at boot)",
    "control/feature-": "feature-poweroff/reboot/suspend are written by the guest kernel, "
                        "not by the toolstack",
}


@pytest.fixture(scope="module")
def real() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def emulated(real: dict) -> dict[str, dict[str, object]]:
    guest = real["guest"]
    with tempfile.TemporaryDirectory(prefix="xs-layout-") as work:
        server = XenStoreServer(str(Path(work) / "socket"))
        xs = LocalXenStore(server)
        try:
            layout_domain(xs, DOMID, NAME, guest["memory_kib"], guest["max_kib"])
            return capture(xs, DOMID, NAME)
        finally:
            xs.close()


def _covered(node: str) -> bool:
    return any(node == p or node.startswith(p if p.endswith("-") else f"{p}/")
               for p in NOT_MODELLED)


def test_every_emulated_node_is_as_libxl_writes_it(real: dict, emulated: dict) -> None:
    nodes = real["nodes"]
    assert sorted(set(emulated) - set(nodes)) == []
    assert {k: nodes[k] for k in emulated} == emulated


def test_real_nodes_missing_from_the_emulator_are_documented(real: dict, emulated: dict) -> None:
    missing = sorted(set(real["nodes"]) - set(emulated))
    assert [n for n in missing if not _covered(n)] == []
    # ...and every documented omission still names something libxl really writes.
    assert [p for p in NOT_MODELLED if not any(n == p or n.startswith(p) for n in missing)] == []
