"""The wire codec declared in xentmem.xenstore._wire (shared by our client and server)."""

from __future__ import annotations

import errno

import pytest

from xentmem.xenstore import Op, Perm
from xentmem.xenstore import _wire as w


def test_header_is_four_native_uint32() -> None:
    assert w.HEADER_SIZE == 16
    msg = w.pack(Op.READ, 7, 3, b"/a\0")
    assert w.HEADER.unpack(msg[:16]) == (2, 7, 3, 3)
    assert msg[16:] == b"/a\0"
    assert len(w.pack(Op.WRITE, 1, 0, b"x" * 4096)) == 16 + 4096
    with pytest.raises(ValueError):
        w.pack(Op.WRITE, 1, 0, b"x" * 4097)


def test_op_numbers_of_xs_wire_h_4_17() -> None:
    assert (Op.CONTROL, Op.DIRECTORY, Op.SET_TARGET, Op.WATCH_EVENT, Op.ERROR) == (0, 1, 19, 15, 16)
    # 4.17: "XS_RESTRICT has been removed"; RESET_WATCHES = SET_TARGET + 2, then
    # DIRECTORY_PARTIAL (libxenstore's fallback, checked against xenstore-list in
    # test_real_clients). pyxs numbers RESTRICT 128.
    assert (Op.RESTRICT_LEGACY, Op.RESET_WATCHES, Op.DIRECTORY_PARTIAL) == (20, 21, 22)
    assert Op.RESTRICT == 128


@pytest.mark.parametrize(
    ("name", "number"),
    [(b"ENOENT\0", errno.ENOENT), (b"EACCES\0", errno.EACCES), ("E2BIG", errno.E2BIG),
     (b"EQUOTA\0", errno.ENOSPC), (b"EAGAIN\0", errno.EAGAIN), (b"BOGUS\0", errno.EIO),
     (b"EBOGUS\0", errno.EIO), (b"\xff\0", errno.EIO)],
)  # fmt: skip
def test_errno_names(name, number: int) -> None:
    assert w.errno_from_name(name) == number


def test_errno_to_name_roundtrip() -> None:
    for name in w.XSD_ERRORS:
        assert w.errno_to_name(w.errno_from_name(name)) == name
    assert w.errno_to_name(errno.ENOSPC) == "ENOSPC"


@pytest.mark.parametrize(
    ("path", "valid"),
    [(b"/", True), (b"/local/domain/5", True), (b"data/x-y_z@1", True), (b"@introduceDomain", True),
     (b"", False), (b"//", False), (b"/a/", False), (b"/a//b", False), (b"/a b", False),
     (b"/a\0", False), (b"/\xc3\xa9", False), (b"/" + b"a" * 3071, True),
     (b"/" + b"a" * 3072, False), (b"a" * 2048, True), (b"a" * 2049, False)],
)  # fmt: skip
def test_path_validity(path: bytes, valid: bool) -> None:
    assert w.path_is_valid(path) is valid


def test_perm_parse_and_format() -> None:
    assert Perm.parse("r5") == Perm("r", 5)
    assert Perm.parse(b"n0") == Perm("n", 0)
    assert str(Perm("b", 65535)) == "b65535"
    assert Perm("b", 1).can_read and Perm("b", 1).can_write
    assert Perm("w", 1).can_write and not Perm("w", 1).can_read
    assert not Perm("n", 1).can_read
    for bad in ("", "r", "x5", "r-1", "r5x", "r70000", "R5", "r 5", "r\u0665"):
        with pytest.raises(ValueError):
            Perm.parse(bad)
    assert w.format_perms([Perm("n", 0), Perm("r", 5)]) == b"n0\0r5\0"
    assert w.parse_perms(w.split_strings(b"n0\0r5\0")) == [Perm("n", 0), Perm("r", 5)]


def test_split_strings() -> None:
    assert w.split_strings(b"") == []
    assert w.split_strings(b"a\0b\0") == [b"a", b"b"]
    assert w.split_strings(b"a\0b") == [b"a", b"b"]
