"""The one parser for values a guest can write into xenstore.

A guest owns nodes such as ``/local/domain/N/data/...`` and ``memory/meminfo`` and may put any
bytes there: huge numbers, signs, NULs, 2 KiB of garbage. Callers keep such values in variables
named ``untrusted_*`` until one of these functions turns them into a typed value. Every function
accepts ``bytes``, ``str`` or ``None`` (a missing node: ``xs.read(path, None)``), never raises on
any input, and returns the typed value or ``None`` when the input is not exactly what it should
be. Limits are checked before any conversion, so a hostile value costs O(its length) at most.

>>> sanitize_int(b"512\\n", 0, 1024)
512
>>> sanitize_int(b"-1", 0, 1024) is None
True
>>> sanitize_kib(b"1048576")
1048576
>>> sanitize_bool(b"1"), sanitize_bool(b"yes"), sanitize_bool(b"2")
(True, True, None)
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Union

__all__ = [
    "MAX_KIB",
    "escape_value",
    "sanitize_bool",
    "sanitize_choice",
    "sanitize_domid",
    "sanitize_int",
    "sanitize_kib",
    "sanitize_meminfo",
    "sanitize_text",
]

Untrusted = Union[bytes, bytearray, str, None]  # noqa: UP007  (run time on a guest's 3.9)

MAX_KIB = 1 << 42  # 4 PiB, far beyond any Xen host; anything larger is garbage
_MAX_NUMBER_LEN = 24  # sign + 20 digits + whitespace slack
_INT = re.compile(rb"[ \t]*([+-]?[0-9]{1,20})[ \t]*\n?")
_TRUE = {b"1", b"y", b"yes", b"true", b"on"}
_FALSE = {b"0", b"n", b"no", b"false", b"off"}
_TEXT_OK = re.compile(rb"[\x20-\x7e]*")
# Display form of every byte, as xenstore-ls / xenstore-read print values: printable ASCII as is,
# \t \n \r \\ by name, 0-7 in octal, every other byte in hex (checked against the C tools).
_ESCAPED = [
    chr(b) if 0x20 <= b <= 0x7E and b != 0x5C
    else {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r", 0x5C: "\\\\"}.get(b)
    or (f"\\{b:03o}" if b < 8 else f"\\x{b:02x}")
    for b in range(256)
]
_MEMINFO_LINE = re.compile(rb"([A-Za-z0-9_()]{1,32}):[ \t]*([0-9]{1,20})(?:[ \t]+kB)?[ \t]*")


def _raw(untrusted: object, limit: int) -> bytes | None:
    if untrusted is None:
        return None
    if isinstance(untrusted, str):
        if len(untrusted) > limit:
            return None
        try:
            return untrusted.encode("ascii")
        except UnicodeEncodeError:
            return None
    if isinstance(untrusted, (bytes, bytearray, memoryview)):
        if len(untrusted) > limit:
            return None
        return bytes(untrusted)
    return None


def sanitize_int(untrusted: Untrusted, lo: int, hi: int) -> int | None:
    """A decimal integer in ``[lo, hi]``: optional sign, surrounding blanks and one trailing
    newline allowed; anything else (hex, exponents, embedded NULs, overflow) -> None."""
    raw = _raw(untrusted, _MAX_NUMBER_LEN)
    if raw is None:
        return None
    m = _INT.fullmatch(raw)
    if m is None:
        return None
    value = int(m.group(1))
    return value if lo <= value <= hi else None


def sanitize_kib(untrusted: Untrusted, lo: int = 0, hi: int = MAX_KIB) -> int | None:
    """A memory amount in KiB (xenstore's ``memory/*`` unit) within ``[lo, hi]``."""
    return sanitize_int(untrusted, max(lo, 0), min(hi, MAX_KIB))


def sanitize_domid(untrusted: Untrusted) -> int | None:
    """A domain id of a real domain: 0..32751 (DOMID_FIRST_RESERVED - 1)."""
    return sanitize_int(untrusted, 0, 0x7FEF)


def sanitize_bool(untrusted: Untrusted) -> bool | None:
    """``1/0``, ``y/n``, ``yes/no``, ``true/false``, ``on/off`` (any case, one trailing newline)."""
    raw = _raw(untrusted, 8)
    if raw is None:
        return None
    word = raw.strip(b" \t").removesuffix(b"\n").strip(b" \t").lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    return None


def sanitize_text(untrusted: Untrusted, max_len: int = 256) -> str | None:
    """Printable ASCII of at most ``max_len`` characters (one trailing newline dropped)."""
    raw = _raw(untrusted, max_len + 1)
    if raw is None:
        return None
    raw = raw.removesuffix(b"\n")
    if len(raw) > max_len or not _TEXT_OK.fullmatch(raw):
        return None
    return raw.decode("ascii")


def sanitize_choice(untrusted: Untrusted, choices: Collection[str]) -> str | None:
    """One of ``choices`` exactly (after dropping one trailing newline)."""
    longest = max((len(c) for c in choices), default=0)
    text = sanitize_text(untrusted, longest)
    return text if text is not None and text in choices else None


def sanitize_meminfo(untrusted: Untrusted, max_lines: int = 64) -> dict[str, int] | None:
    """A ``/proc/meminfo``-style report (``"MemTotal:  2048 kB\\n..."``, as xenballoond writes to
    ``memory/meminfo``) -> ``{"MemTotal": 2048, ...}`` in KiB. Any malformed line, a duplicate
    key, a value above MAX_KIB or more than ``max_lines`` lines -> None."""
    raw = _raw(untrusted, max_lines * 64)
    if raw is None:
        return None
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if not lines or len(lines) > max_lines:
        return None
    out: dict[str, int] = {}
    for line in lines:
        m = _MEMINFO_LINE.fullmatch(line)
        if m is None:
            return None
        key = m.group(1).decode("ascii")
        value = int(m.group(2))
        if key in out or value > MAX_KIB:
            return None
        out[key] = value
    return out


def escape_value(untrusted: Untrusted) -> str:
    """Any value as printable ASCII, escaped as Xen's C tools print it (``xenstore-ls``,
    ``xenstore-read``): safe on a terminal whatever a guest wrote. ``None`` gives ``""``."""
    if untrusted is None:
        return ""
    raw = untrusted.encode("utf-8", "surrogateescape") if isinstance(untrusted, str) \
        else bytes(untrusted)
    return "".join(map(_ESCAPED.__getitem__, raw))
