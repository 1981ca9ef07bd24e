"""The sanitiser for guest-written values: exact tables, and "never raises" on anything."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xentmem.xenstore import sanitize
from xentmem.xenstore.sanitize import (
    MAX_KIB,
    escape_value,
    sanitize_bool,
    sanitize_choice,
    sanitize_domid,
    sanitize_int,
    sanitize_kib,
    sanitize_meminfo,
    sanitize_text,
)


@pytest.mark.parametrize(
    ("untrusted", "lo", "hi", "expected"),
    [
        (b"512", 0, 1024, 512),
        (b"512\n", 0, 1024, 512),
        ("512", 0, 1024, 512),
        (b" 7 ", 0, 10, 7),
        (b"+7", 0, 10, 7),
        (b"-3", -5, 5, -3),
        (b"0", 0, 0, 0),
        (b"1024", 0, 1024, 1024),
        (b"1025", 0, 1024, None),
        (b"-1", 0, 1024, None),
        (b"", 0, 10, None),
        (None, 0, 10, None),
        (b"0x10", 0, 100, None),
        (b"1e3", 0, 10000, None),
        (b"12abc", 0, 100, None),
        (b"1 2", 0, 100, None),
        (b"1\n\n", 0, 100, None),
        (b"1\x00", 0, 100, None),
        (b"\xff", 0, 100, None),
        ("١٢", 0, 100, None),  # non-ASCII digits int() would accept
        (b"9" * 21, 0, 10**30, None),  # longer than any sane number
        (b"9" * 5000, 0, 10**30, None),
        (bytearray(b"42"), 0, 100, 42),
    ],
)
def test_sanitize_int(untrusted, lo: int, hi: int, expected: int | None) -> None:
    assert sanitize_int(untrusted, lo, hi) == expected


def test_sanitize_kib_and_domid() -> None:
    assert sanitize_kib(b"1048576") == 1048576
    assert sanitize_kib(b"-1") is None
    assert sanitize_kib(str(MAX_KIB + 1)) is None
    assert sanitize_kib(b"100", lo=200) is None
    assert sanitize_kib(b"300", lo=200, hi=250) is None
    assert sanitize_domid(b"0") == 0
    assert sanitize_domid(b"32751") == 32751
    assert sanitize_domid(b"32752") is None  # DOMID_FIRST_RESERVED and up are not domains


@pytest.mark.parametrize(
    ("untrusted", "expected"),
    [
        (b"1", True), (b"0", False), (b"yes\n", True), (b"No", False), (b"TRUE", True),
        (b"off", False), (b"2", None), (b"", None), (None, None), (b"yess", None),
        (b"1\x00", None), (b"true" * 10, None),
    ],
)  # fmt: skip
def test_sanitize_bool(untrusted, expected: bool | None) -> None:
    assert sanitize_bool(untrusted) is expected


def test_sanitize_text_and_choice() -> None:
    assert sanitize_text(b"guest-5 ok\n") == "guest-5 ok"
    assert sanitize_text(b"tab\there") is None
    assert sanitize_text(b"x" * 257) is None
    assert sanitize_text(b"x" * 10, max_len=10) == "x" * 10
    assert sanitize_text("caf\u00e9") is None
    assert sanitize_text(b"\x1b[31mred") is None
    assert sanitize_choice(b"enabled\n", {"enabled", "disabled"}) == "enabled"
    assert sanitize_choice(b"enabledx", {"enabled", "disabled"}) is None
    assert sanitize_choice(b"", set()) is None


def test_sanitize_meminfo() -> None:
    report = (
        b"MemTotal:        2048000 kB\nMemFree:  1024 kB\nCommitted_AS: 77 kB\nHugePages_Total: 0\n"
    )
    assert sanitize_meminfo(report) == {
        "MemTotal": 2048000, "MemFree": 1024, "Committed_AS": 77, "HugePages_Total": 0,
    }  # fmt: skip
    assert sanitize_meminfo(b"MemTotal: 1 kB\nMemTotal: 2 kB\n") is None  # duplicate key
    assert sanitize_meminfo(b"MemTotal: -1 kB\n") is None
    assert sanitize_meminfo(b"MemTotal 1 kB\n") is None
    assert sanitize_meminfo(b"") is None
    assert sanitize_meminfo(b"A: 1\n" * 65) is None
    assert sanitize_meminfo(b"Huge: %d kB\n" % (MAX_KIB + 1)) is None


_untrusted = st.one_of(
    st.none(),
    st.binary(max_size=300),
    st.text(max_size=300),
    st.from_regex(rb"[ +\-]?[0-9]{0,25}\n?", fullmatch=True),
)


@given(_untrusted, st.integers(-(2**70), 2**70), st.integers(-(2**70), 2**70))
def test_sanitizers_never_raise(untrusted, lo: int, hi: int) -> None:
    value = sanitize_int(untrusted, lo, hi)
    assert value is None or (lo <= value <= hi and isinstance(value, int))
    assert sanitize_kib(untrusted) is None or 0 <= sanitize_kib(untrusted) <= MAX_KIB
    assert sanitize_bool(untrusted) in (True, False, None)
    text = sanitize_text(untrusted)
    assert text is None or (text.isascii() and text.isprintable())
    assert sanitize_choice(untrusted, {"a", "b"}) in ("a", "b", None)
    info = sanitize_meminfo(untrusted)
    assert info is None or all(0 <= v <= MAX_KIB for v in info.values())
    assert sanitize_domid(untrusted) is None or 0 <= sanitize_domid(untrusted) <= 0x7FEF
    shown = escape_value(untrusted)  # the display form: printable whatever came in
    assert shown.isascii() and shown.isprintable()


def test_escape_value_is_unambiguous_and_leaves_plain_text_alone() -> None:
    """Each byte has one escape (the C tools' table, checked byte by byte against xenstore-ls
    in test_xenstore_cli.py), so the display form is unambiguous."""
    assert escape_value(b'plain "text" 42') == 'plain "text" 42'
    assert escape_value(b"\x00\x07\x08\t\n\r\\\x7f\xff") == r"\000\007\x08\t\n\r\\\x7f\xff"
    assert escape_value(None) == "" and escape_value("caf\u00e9") == r"caf\xc3\xa9"
    table = [escape_value(bytes([b])) for b in range(256)]
    assert len(set(table)) == 256


def test_api_is_the_documented_one() -> None:
    assert sorted(sanitize.__all__) == [
        "MAX_KIB", "escape_value", "sanitize_bool", "sanitize_choice", "sanitize_domid",
        "sanitize_int", "sanitize_kib", "sanitize_meminfo", "sanitize_text",
    ]  # fmt: skip
