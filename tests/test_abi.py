"""The ABI declared once: golden bytes both ways, every offset of ref §1.2 / §2.4, ioctl numbers,
and bad input refused before anything is encoded."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from xentmem import abi
from xentmem.abi import (
    TmemCmd,
    XenVersion,
    ffi,
    pack_sysctl_tmem_op,
    pack_tmem_op,
    unpack_sysctl_tmem_op,
    unpack_tmem_op,
)

GOLDEN = Path(__file__).parent / "fixtures" / "golden"


def load_golden(path: Path) -> tuple[dict, bytes]:
    lines = path.read_text().splitlines()
    fields = json.loads(next(line for line in lines if line.startswith("# fields:"))[9:])
    data = bytes.fromhex("".join(line for line in lines if not line.startswith("#")))
    return fields, data


TMEM_OP_FILES = sorted(p for p in GOLDEN.glob("*.hex") if not p.name.startswith("sysctl_"))
SYSCTL_FILES = sorted(GOLDEN.glob("sysctl_*.hex"))


def test_fixture_set_covers_every_command_and_version():
    cmds = {load_golden(p)[0]["cmd"] for p in TMEM_OP_FILES}
    assert cmds == {int(c) for c in TmemCmd}
    versions = {load_golden(p)[0]["version"] for p in SYSCTL_FILES}
    assert versions == {str(v) for v in abi.SYSCTL_INTERFACE_VERSION}


@pytest.mark.parametrize("path", TMEM_OP_FILES, ids=lambda p: p.stem)
def test_tmem_op_golden_both_ways(path: Path):
    fields, data = load_golden(path)
    cmd, pool_id = fields.pop("cmd"), fields.pop("pool_id")
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    assert pack_tmem_op(cmd, pool_id, **args) == data
    decoded = unpack_tmem_op(data)
    assert (decoded.cmd, decoded.pool_id) == (cmd, pool_id)
    assert decoded.fields() == args


def test_ref_examples_are_the_literal_hex_of_ref_1_3():
    put = ("04000000 00000000 3412000000000000 0000000000000000 0000000000000000 05000000 "
           "00000000 00000000 00000000 debc0a0000000000")
    assert load_golden(GOLDEN / "ref_put_page.hex")[1] == bytes.fromhex(put.replace(" ", ""))
    new = "01000000 00000000 0000000000000000 0000000000000000 01000001 00000000" + " 00" * 24
    assert load_golden(GOLDEN / "ref_new_pool_persistent.hex")[1] == bytes.fromhex(
        new.replace(" ", ""))


@pytest.mark.parametrize("path", SYSCTL_FILES, ids=lambda p: p.stem)
def test_sysctl_golden_both_ways(path: Path):
    f, data = load_golden(path)
    version = XenVersion.parse(f["version"])
    assert abi.SYSCTL_INTERFACE_VERSION[version] == f["interface_version"]
    assert pack_sysctl_tmem_op(version, f["tmem_cmd"], pool_id=f["pool_id"], cli_id=f["cli_id"],
                               length=f["len"], arg=f["arg"], buf=f["buf"]) == data
    d = unpack_sysctl_tmem_op(data)
    assert (d.cmd, d.interface_version, d.tmem_cmd, d.pool_id, d.cli_id, d.len, d.arg, d.buf) == (
        abi.XEN_SYSCTL_tmem_op, f["interface_version"], f["tmem_cmd"], f["pool_id"],
        f["cli_id"], f["len"], f["arg"], f["buf"])


# (struct, member, offset, size) from ref §1.2, §1.2 tmem_handle, §2.4 and §5.2.
LAYOUT = [
    ("struct tmem_op", "cmd", 0, 4),
    ("struct tmem_op", "pool_id", 4, 4),
    ("struct tmem_op", "u", 8, 48),
    ("struct tmem_op_creat", "uuid", 0, 16),
    ("struct tmem_op_creat", "flags", 16, 4),
    ("struct tmem_op_creat", "arg1", 20, 4),
    ("struct tmem_op_gen", "oid", 0, 24),
    ("struct tmem_op_gen", "index", 24, 4),
    ("struct tmem_op_gen", "tmem_offset", 28, 4),
    ("struct tmem_op_gen", "pfn_offset", 32, 4),
    ("struct tmem_op_gen", "len", 36, 4),
    ("struct tmem_op_gen", "cmfn", 40, 8),
    ("struct tmem_op_ctrl", "subop", 0, 4),
    ("struct tmem_op_ctrl", "cli_id", 4, 4),
    ("struct tmem_op_ctrl", "arg1", 8, 4),
    ("struct tmem_op_ctrl", "arg2", 12, 4),
    ("struct tmem_op_ctrl", "oid", 16, 24),
    ("struct tmem_op_ctrl", "buf", 40, 8),
    ("struct tmem_handle", "pool_id", 0, 4),
    ("struct tmem_handle", "index", 4, 4),
    ("struct tmem_handle", "oid", 8, 24),
    ("struct xen_sysctl", "cmd", 0, 4),
    ("struct xen_sysctl", "interface_version", 4, 4),
    ("struct xen_sysctl", "u", 8, 128),
    ("struct xen_sysctl_tmem_op", "cmd", 0, 4),
    ("struct xen_sysctl_tmem_op", "pool_id", 4, 4),
    ("struct xen_sysctl_tmem_op", "cli_id", 8, 4),
    ("struct xen_sysctl_tmem_op", "len", 12, 4),
    ("struct xen_sysctl_tmem_op", "arg", 16, 4),
    ("struct xen_sysctl_tmem_op", "pad", 20, 4),
    ("struct xen_sysctl_tmem_op", "oid", 24, 24),
    ("struct xen_sysctl_tmem_op", "u", 48, 8),
    ("struct xen_sysctl_tmem_op_v46", "arg1", 12, 4),
    ("struct xen_sysctl_tmem_op_v46", "arg2", 16, 4),
    ("struct xen_sysctl_tmem_op_v46", "buf", 48, 8),
    ("struct xen_tmem_client", "version", 0, 4),
    ("struct xen_tmem_client", "maxpools", 4, 4),
    ("struct xen_tmem_client", "nr_pools", 8, 4),
    ("struct xen_tmem_client", "flags", 12, 4),
    ("struct xen_tmem_client", "weight", 16, 4),
    ("struct xen_tmem_pool_info", "flags", 0, 4),
    ("struct xen_tmem_pool_info", "id", 4, 4),
    ("struct xen_tmem_pool_info", "n_pages", 8, 8),
    ("struct xen_tmem_pool_info", "uuid", 16, 16),
    ("struct privcmd_hypercall", "op", 0, 8),
    ("struct privcmd_hypercall", "arg", 8, 40),
    ("struct privcmd_mmapbatch_v2", "num", 0, 4),
    ("struct privcmd_mmapbatch_v2", "dom", 4, 2),
    ("struct privcmd_mmapbatch_v2", "addr", 8, 8),
    ("struct privcmd_mmapbatch_v2", "arr", 16, 8),
    ("struct privcmd_mmapbatch_v2", "err", 24, 8),
    ("struct multicall_entry", "result", 8, 8),
    ("struct multicall_entry", "args", 16, 48),
]


@pytest.mark.parametrize(("ctype", "member", "offset", "size"), LAYOUT,
                         ids=[f"{c.split()[1]}.{m}" for c, m, _, _ in LAYOUT])
def test_layout(ctype: str, member: str, offset: int, size: int):
    field = dict(ffi.typeof(ctype).fields)[member]
    assert (field.offset, ffi.sizeof(field.type)) == (offset, size)
    assert ffi.offsetof(ctype, member) == offset


@pytest.mark.parametrize(("ctype", "size"), [
    ("struct tmem_op", 56), ("struct tmem_handle", 32), ("struct xen_sysctl", 136),
    ("struct xen_sysctl_tmem_op", 56), ("struct xen_sysctl_tmem_op_v46", 56),
    ("struct xen_tmem_client", 20), ("struct xen_tmem_pool_info", 32),
    ("struct privcmd_hypercall", 48), ("struct privcmd_mmapbatch_v2", 32),
    ("struct multicall_entry", 64), ("struct xen_memory_reservation", 32),
])
def test_sizes(ctype: str, size: int):
    assert ffi.sizeof(ctype) == size


def test_struct_codecs_match_the_cdef():
    assert abi.TMEM_OP_GEN.size == abi.TMEM_OP_CREAT.size == abi.TMEM_OP_CTRL.size == 56
    assert abi.SYSCTL_TMEM_OP.size == ffi.sizeof("struct xen_sysctl")
    assert abi.TMEM_HANDLE.size == ffi.sizeof("struct tmem_handle")
    assert abi.XEN_TMEM_CLIENT.size == ffi.sizeof("struct xen_tmem_client")
    assert abi.XEN_TMEM_POOL_INFO.size == ffi.sizeof("struct xen_tmem_pool_info")
    assert abi.MULTICALL_ENTRY.size == ffi.sizeof("struct multicall_entry")
    # Same bytes through cffi and through the struct codec.
    op = ffi.new("struct tmem_op *")
    op.cmd, op.pool_id = 5, -2
    op.u.gen.oid = [1, 2, 3]
    op.u.gen.index, op.u.gen.cmfn = 9, 0xABC
    assert bytes(ffi.buffer(op)) == pack_tmem_op(5, -2, oid=(1, 2, 3), index=9, cmfn=0xABC)


def test_ioctl_numbers_from_the_ioc_formula():
    assert abi.IOCTL_PRIVCMD_HYPERCALL == 0x00305000
    assert abi.IOCTL_PRIVCMD_MMAPBATCH_V2 == 0x00205004
    assert abi.ioc(0, "P", 6, 2) == abi.IOCTL_PRIVCMD_RESTRICT


@pytest.mark.parametrize(("kwargs", "persistent", "shared", "word"), [
    ({}, False, False, 0x01000000),
    ({}, True, False, 0x01000001),
    ({}, False, True, 0x01000002),
    ({}, True, True, 0x01000003),
    ({"pagesize": 8192}, False, False, 0x01000010),
])
def test_pool_flag_words(kwargs, persistent, shared, word):
    assert abi.pool_flags(persistent=persistent, shared=shared, **kwargs) == word


@pytest.mark.parametrize(("cmd", "fields", "message"), [
    (4, {"index": -1}, "index"),
    (4, {"index": 2**32}, "index"),
    (4, {"oid": (2**64, 0, 0)}, "oid"),
    (4, {"oid": (1, 2)}, "3 words"),
    (4, {"oid": (-1, 0, 0)}, "oid"),
    (1, {"uuid": (1, 2, 3)}, "2 words"),
    (1, {"uuid": (1,)}, "2 words"),
    (1, {"flags": 2**32}, "flags"),
    (4, {"cmfn": -5}, "cmfn"),
    (4, {"uuid": (0, 0)}, "no field"),
    (1, {"index": 3}, "no field"),
])
def test_bad_fields_raise_value_error(cmd, fields, message):
    with pytest.raises(ValueError, match=message):
        pack_tmem_op(cmd, 0, **fields)


def test_bad_pool_id_and_length():
    with pytest.raises(ValueError, match="pool_id"):
        pack_tmem_op(4, 2**31)
    with pytest.raises(ValueError, match="56 bytes"):
        unpack_tmem_op(b"\0" * 55)
    with pytest.raises(ValueError, match=r"4\.6-4\.12"):
        pack_sysctl_tmem_op(XenVersion(4, 5), 4)


def test_control_subop_per_version():
    assert abi.control_subop(XenVersion(4, 5), "SET_WEIGHT") == 5
    assert abi.control_subop(XenVersion(4, 12), "GET_CLIENT_INFO") == 5
    assert abi.control_subop(XenVersion(4, 9), "SET_AUTH") == 11
    with pytest.raises(ValueError):
        abi.control_subop(XenVersion(4, 8), "SET_AUTH")
    with pytest.raises(ValueError):
        abi.control_subop(XenVersion(4, 12), "SET_WEIGHT")


def test_version_parsing_and_order():
    assert XenVersion.parse("4.12") == XenVersion(4, 12) > XenVersion.parse("4.5")
    assert XenVersion.from_word(0x0004000C) == XenVersion(4, 12)
    assert not XenVersion(4, 17).has_tmem and XenVersion(4, 1).has_tmem
    with pytest.raises(ValueError):
        XenVersion.parse("four")


def test_errno_constants():
    assert abi.EFROZEN == abi.XenErrno.EFROZEN == 1000
    assert abi.EEMPTY == abi.XenErrno.EEMPTY == 1001
    assert struct.calcsize("<Ii3QIIIIQ") == 56
