"""The coordinator's golden ABI byte files (``tests/fixtures/golden``), fed to the emulator as
the very bytes a guest would hand Xen. Each file goes to a fresh host whose dom0 holds one empty
private persistent pool (slot 0); the expected results follow ref §2 and §9 per release. The
addresses inside the files (``cmfn`` 703710, ``buf`` 0x7f00...) are not RAM of the emulated
dom0 (128 MiB, max 512 MiB), so the ops that need them answer as Xen does for bad pointers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xentmem.abi import SYSCTL_INTERFACE_VERSION, XenVersion

from .driver import Guest, make

GOLDEN = Path(__file__).parent.parent / "fixtures" / "golden"

# file stem -> result on (4.1, 4.5, 4.12)
EXPECTED = {
    "auth": (-22, -22, -95),  # TMEM_AUTH for domain 5, which has no client
    "control_freeze": (-1, -1, -95),  # FREEZE of client 3: unknown
    "control_list": (0, 0, -95),  # LIST into an address that is not RAM: nothing written, 0
    "destroy_pool": (0, 0, 0),  # slot 3 empty
    "flush_object": (1, 1, 1),  # absent object: still 1
    "flush_page": (1, 1, 1),
    "get_page": (-19, -19, -19),  # pool 2 does not exist
    "new_page": (-19, -19, -19),  # pool 1 does not exist (checked before the command)
    "new_pool_shared": (1, 1, 1),  # 4.12: unauthorised, silently private; slot 1 either way
    "read": (-1001, -38, -38),  # 4.1 TMEM_READ on an empty pool; removed from 4.4
    "ref_new_pool_persistent": (1, 1, 1),
    "ref_put_page": (-14, -14, -14),  # cmfn 0xabcde is not a frame of dom0
    "restore_new": (-1, -1, -95),  # client 7 does not exist
    "write": (1, -38, -38),  # 4.1 TMEM_WRITE of 0 bytes creates a zero page
    "xchg": (0, -38, -38),
}


def load(path: Path) -> tuple[dict, bytes]:
    lines = path.read_text().splitlines()
    fields = json.loads(next(line for line in lines if line.startswith("# fields:"))[9:])
    return fields, bytes.fromhex("".join(ln for ln in lines if not ln.startswith("#")))


def test_every_tmem_op_file_has_an_expectation():
    files = {p.stem for p in GOLDEN.glob("*.hex") if not p.stem.startswith("sysctl_")}
    assert files == set(EXPECTED)


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_golden_tmem_op(stem, version):
    _, data = load(GOLDEN / f"{stem}.hex")
    _, (d0,) = make(version)
    assert d0.new_pool() == 0
    assert d0.raw(data) == EXPECTED[stem][("4.1", "4.5", "4.12").index(version)]


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("sysctl_*.hex")), ids=lambda p: p.stem)
def test_golden_sysctl(path):
    fields, data = load(path)
    own = XenVersion.parse(fields["version"])
    for host_version in (own, XenVersion(4, 12)):
        host, _ = make(str(host_version))
        d0 = Guest(host, 0)
        d0.opbuf.write(data)
        rc = host.hypercall(0, 35, d0.opbuf.address)
        same = SYSCTL_INTERFACE_VERSION[host_version] == fields["interface_version"]
        assert rc == (0 if same else -13)
