"""The ``/local/domain/N`` tree the real toolstack (``xl create``, libxl 4.17) writes for a PV
guest, captured live and checked against the fixture the emulator is compared with
(``test_layout_fixture.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ._layout import capture
from ._xen import GUEST

FIXTURE = Path(__file__).with_name("fixtures") / "xl-domain-layout.json"


def test_xl_create_layout_matches_fixture(xs, guest_domid: int, out_dir: Path) -> None:
    nodes = capture(xs, guest_domid, GUEST)
    # Written for inspection/refresh: copy it over the fixture when libxl's layout changes.
    (out_dir / FIXTURE.name).write_text(json.dumps(
        {"guest": {"memory_kib": 131072, "max_kib": 262144, "vcpus": 1, "type": "pv"},
         "nodes": nodes}, indent=1) + "\n")
    assert nodes[""]["perms"] == ["n0", "r<domid>"]
    assert nodes["memory/target"]["value"] == "131072"
    assert nodes["memory/static-max"]["value"] == "262144"
    if not FIXTURE.exists():
        pytest.fail(f"no {FIXTURE}: review and copy {out_dir / FIXTURE.name} there")
    expected = json.loads(FIXTURE.read_text())["nodes"]
    # Nodes the guest kernel adds while it boots (its drivers' features) may not all be there yet.
    guest_written = {k for k in expected.keys() ^ nodes.keys()
                     if k.startswith(("control/feature-", "device/", "data/", "feature"))}
    assert {k: v for k, v in nodes.items() if k not in guest_written} == {
        k: v for k, v in expected.items() if k not in guest_written}
