"""The xenstore wire protocol, declared once: ops, header, errors, paths, permissions.

Source: ``xen/include/public/io/xs_wire.h`` and ``docs/misc/xenstore.txt`` (Xen 4.17). Every
message is a 16-byte header of four native-endian ``uint32`` (``struct xsd_sockmsg``: type,
req_id, tx_id, len) followed by ``len`` payload bytes, at most ``XENSTORE_PAYLOAD_MAX`` = 4096.
Errors travel as an ``ERROR`` message whose payload is the errno *name*, NUL-terminated
(``b"ENOENT\\0"``). Our client and our server both encode and decode with this module.
"""

from __future__ import annotations

import errno as _errno
import re
import struct
from dataclasses import dataclass
from enum import IntEnum

from xentmem._compat import DATACLASS_SLOTS

HEADER = struct.Struct("=IIII")
HEADER_SIZE = HEADER.size  # 16
PAYLOAD_MAX = 4096  # XENSTORE_PAYLOAD_MAX
ABS_PATH_MAX = 3072  # XENSTORE_ABS_PATH_MAX
REL_PATH_MAX = 2048  # XENSTORE_REL_PATH_MAX
NUL = b"\0"


class Op(IntEnum):
    """``enum xsd_sockmsg_type`` (4.17).

    XS_RESTRICT was 20 until Xen removed it; 4.17 leaves 20 unassigned and numbers
    ``XS_RESET_WATCHES = XS_SET_TARGET + 2``. pyxs (and XenServer's patch queue) put RESTRICT at
    128; our server accepts both numbers for it (``RESTRICT_LEGACY``).
    """

    CONTROL = 0  # XS_DEBUG in older headers
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    RESTRICT_LEGACY = 20
    RESET_WATCHES = 21
    DIRECTORY_PARTIAL = 22
    GET_FEATURE = 23
    SET_FEATURE = 24
    GET_QUOTA = 25
    SET_QUOTA = 26
    RESTRICT = 128


# ``xsd_errors[]`` of xs_wire.h, the names a server may send. A domain over a quota gets ENOSPC
# from C xenstored (and from ours) but "EQUOTA" from oxenstored, a name that is in no errno.h
# and that libxenstore turns into EINVAL; we read it as the ENOSPC it means.
XSD_ERRORS = (
    "EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC", "EIO", "ENOTEMPTY",
    "ENOSYS", "EROFS", "EBUSY", "EAGAIN", "EISCONN", "E2BIG", "EPERM",
)  # fmt: skip
EQUOTA = "EQUOTA"


def errno_from_name(name: bytes | str) -> int:
    """Errno of an ERROR payload such as ``b"ENOENT\\0"``; EQUOTA -> ENOSPC; unknown -> EIO."""
    if isinstance(name, bytes):
        name = name.rstrip(NUL).decode("ascii", "replace")
    if name == EQUOTA:
        return _errno.ENOSPC
    return getattr(_errno, name, _errno.EIO) if name.startswith("E") else _errno.EIO


def errno_to_name(number: int) -> str:
    """The wire name for an errno number (``errno.ENOSPC`` -> ``"ENOSPC"``; unknown -> EIO)."""
    return _errno.errorcode.get(number, "EIO")


def pack(op: int, rq_id: int, tx_id: int, payload: bytes) -> bytes:
    """One encoded message (header + payload). Raises ValueError if the payload is too long."""
    if len(payload) > PAYLOAD_MAX:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {PAYLOAD_MAX}")
    return HEADER.pack(op, rq_id & 0xFFFFFFFF, tx_id & 0xFFFFFFFF, len(payload)) + payload


def split_strings(payload: bytes) -> list[bytes]:
    """``b"a\\0b\\0"`` -> ``[b"a", b"b"]``: the NUL-terminated strings of a payload."""
    if not payload:
        return []
    parts = payload.split(NUL)
    if parts[-1] == b"":
        parts.pop()
    return parts


# --- paths -------------------------------------------------------------------------------------

_PATH_CHARS = re.compile(rb"[A-Za-z0-9\-/_@]*")
SPECIAL_PATHS = (b"@introduceDomain", b"@releaseDomain")


def path_is_valid(path: bytes) -> bool:
    """Is ``path`` a legal node path per docs/misc/xenstore.txt?

    Characters ``[A-Za-z0-9-/_@]``, no ``//``, no trailing ``/`` except for ``/`` itself,
    absolute paths at most 3072 bytes, relative ones at most 2048.
    """
    if not path or not _PATH_CHARS.fullmatch(path):
        return False
    if b"//" in path or (len(path) > 1 and path.endswith(b"/")):
        return False
    return len(path) <= (ABS_PATH_MAX if path.startswith(b"/") else REL_PATH_MAX)


# --- permissions -------------------------------------------------------------------------------

PERM_CHARS = "nrwb"


@dataclass(frozen=True, **DATACLASS_SLOTS)
class Perm:
    """One permission entry: ``kind`` (``n`` none, ``r`` read, ``w`` write, ``b`` both) of a domid.

    In a node's list the first entry names the owner and the access of every domain not listed
    later; later entries grant ``kind`` to ``domid``. ``str(Perm("r", 5)) == "r5"``.
    """

    kind: str
    domid: int

    def __post_init__(self) -> None:
        if self.kind not in PERM_CHARS or len(self.kind) != 1:
            raise ValueError(f"permission kind must be one of n, r, w, b: {self.kind!r}")
        if not 0 <= self.domid <= 0xFFFF:  # domid_t is uint16_t
            raise ValueError(f"domid out of range: {self.domid}")

    def __str__(self) -> str:
        return f"{self.kind}{self.domid}"

    @property
    def can_read(self) -> bool:
        return self.kind in "rb"

    @property
    def can_write(self) -> bool:
        return self.kind in "wb"

    @classmethod
    def parse(cls, text: str | bytes) -> Perm:
        """``"r5"`` / ``b"r5"`` -> ``Perm("r", 5)``; ValueError on anything else."""
        if isinstance(text, bytes):
            text = text.decode("ascii")
        if (
            len(text) < 2
            or text[0] not in PERM_CHARS
            or not text[1:].isdigit()
            or not text.isascii()
        ):
            raise ValueError(f"not a xenstore permission: {text!r}")
        return cls(text[0], int(text[1:]))


def parse_perms(items: list[bytes]) -> list[Perm]:
    """The GET_PERMS payload strings -> ``[Perm, ...]`` (ValueError on a malformed entry)."""
    return [Perm.parse(item) for item in items]


def format_perms(perms: list[Perm]) -> bytes:
    """``[Perm("n", 0), Perm("r", 5)]`` -> ``b"n0\\0r5\\0"`` (the SET_PERMS arguments)."""
    return b"".join(str(p).encode() + NUL for p in perms)
