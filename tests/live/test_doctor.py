"""``xentmem doctor --json`` inside a real dom0.

The command runs in this process through ``CliRunner`` (the same entry the console script
uses): a second interpreter importing the whole CLI costs about a minute under QEMU's TCG.
"""

from __future__ import annotations

import json

from typer.testing import CliRunner

from xentmem.cli import app
from xentmem.hypercalls import PrivcmdHypervisor, xen_version


def test_doctor_json_in_dom0(dom0: None) -> None:
    result = CliRunner().invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["check"]: r for r in json.loads(result.stdout)["checks"]}
    with PrivcmdHypervisor() as hv:
        version, extra = xen_version(hv)
    assert rows["privcmd"]["ok"] is True
    assert rows["privcmd"]["status"] == "usable"
    assert rows["xen"]["ok"] is True
    assert rows["xen"]["status"] == f"{version}{extra}"
    assert rows["xen"]["status"].startswith("4.17.")
    assert rows["tmem"]["ok"] is False
    assert rows["tmem"]["status"] == "absent"
    assert "removed in Xen 4.13" in rows["tmem"]["detail"]
    assert rows["xenstored"]["ok"] is True
    assert rows["xenstored"]["status"] == "reachable"
