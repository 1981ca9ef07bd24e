"""The Xen tmem / sysctl / privcmd ABI, declared once.

Source: ``xen/include/public/tmem.h`` (RELEASE-4.1.0 … 4.12.0), ``public/sysctl.h`` (4.6 … 4.12),
``public/xen.h``, ``public/version.h``, ``public/memory.h`` and Linux
``include/uapi/xen/privcmd.h``; see ``ref/xen-tmem-abi.md`` §1, §2, §5.2. Every layout below is
the x86_64 one. The C declarations are one cffi ``cdef`` (ABI mode: no compiler at install time);
``struct``-module codecs for the hot path are derived from the same layout and checked against
it by the layout tests.

``struct tmem_op`` (56 bytes)::

    struct tmem_op {
        uint32_t cmd;
        int32_t pool_id;
        union {
            struct { uint64_t uuid[2]; uint32_t flags; uint32_t arg1; } creat;
            struct { uint32_t subop; uint32_t cli_id; uint32_t arg1; uint32_t arg2;
                     uint64_t oid[3]; tmem_cli_va_t buf; } ctrl;          /* <= 4.5 */
            struct { uint64_t oid[3]; uint32_t index; uint32_t tmem_offset;
                     uint32_t pfn_offset; uint32_t len; xen_pfn_t cmfn; } gen;
        } u;
    };
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from functools import total_ordering

import cffi

__all__ = [
    "CDEF",
    "DOMID_SELF",
    "EEMPTY",
    "EFROZEN",
    "IOCTL_PRIVCMD_HYPERCALL",
    "IOCTL_PRIVCMD_MMAPBATCH_V2",
    "IOCTL_PRIVCMD_RESTRICT",
    "MAX_GLOBAL_SHARED_POOLS",
    "MAX_POOLS_PER_DOMAIN",
    "MULTICALL_ENTRY",
    "PAGE_SIZE",
    "SYSCTL_INTERFACE_VERSION",
    "SYSCTL_TMEM_OP",
    "TMEM_CLI_ID_NULL",
    "TMEM_HANDLE",
    "TMEM_OP_CREAT",
    "TMEM_OP_CTRL",
    "TMEM_OP_GEN",
    "TMEM_SPEC_VERSION",
    "XEN_MEMORY_RESERVATION",
    "XEN_TMEM_CLIENT",
    "XEN_TMEM_POOL_INFO",
    "ClientInfoFlags",
    "Hypercall",
    "PoolFlags",
    "PoolInfoFlags",
    "SaveClientFlags",
    "SysctlTmemOp",
    "SysctlTmemOpFields",
    "TmemCmd",
    "TmemOpFields",
    "TmemcSubop",
    "XEN_SYSCTL_tmem_op",
    "XenErrno",
    "XenMemOp",
    "XenVersion",
    "XenVersionCmd",
    "control_subop",
    "ffi",
    "ioc",
    "member_for",
    "pack_sysctl_tmem_op",
    "pack_tmem_op",
    "pool_flags",
    "unpack_sysctl_tmem_op",
    "unpack_tmem_op",
]

CDEF = """
typedef uint64_t xen_pfn_t;
typedef uint16_t domid_t;

struct tmem_op_creat { uint64_t uuid[2]; uint32_t flags; uint32_t arg1; };
struct tmem_op_ctrl {
    uint32_t subop; uint32_t cli_id; uint32_t arg1; uint32_t arg2;
    uint64_t oid[3]; uint64_t buf;
};
struct tmem_op_gen {
    uint64_t oid[3]; uint32_t index; uint32_t tmem_offset; uint32_t pfn_offset; uint32_t len;
    xen_pfn_t cmfn;
};
struct tmem_op {
    uint32_t cmd;
    int32_t pool_id;
    union {
        struct tmem_op_creat creat;
        struct tmem_op_ctrl ctrl;
        struct tmem_op_gen gen;
    } u;
};

struct tmem_handle { uint32_t pool_id; uint32_t index; uint64_t oid[3]; };

/* 4.6-4.7: arg1/arg2; 4.8-4.12 renamed them len/arg and made buf a union. Same bytes. */
struct xen_sysctl_tmem_op_v46 {
    uint32_t cmd; int32_t pool_id; uint32_t cli_id; uint32_t arg1; uint32_t arg2; uint32_t pad;
    uint64_t oid[3]; uint64_t buf;
};
struct xen_sysctl_tmem_op {
    uint32_t cmd; int32_t pool_id; uint32_t cli_id; uint32_t len; uint32_t arg; uint32_t pad;
    uint64_t oid[3];
    union { uint64_t buf; uint64_t client; uint64_t pool; } u;
};
struct xen_sysctl {
    uint32_t cmd;
    uint32_t interface_version;
    union { struct xen_sysctl_tmem_op tmem_op; uint8_t pad[128]; } u;
};

struct xen_tmem_client {
    uint32_t version; uint32_t maxpools; uint32_t nr_pools; uint32_t flags; uint32_t weight;
};
struct xen_tmem_pool_info {
    uint32_t flags; uint32_t id; uint64_t n_pages; uint64_t uuid[2];
};

struct multicall_entry { uint64_t op; uint64_t result; uint64_t args[6]; };

struct privcmd_hypercall { uint64_t op; uint64_t arg[5]; };
struct privcmd_mmapbatch_v2 {
    unsigned int num; domid_t dom; uint64_t addr; const xen_pfn_t *arr; int *err;
};
struct xen_memory_reservation {
    uint64_t extent_start; uint64_t nr_extents; unsigned int extent_order;
    unsigned int mem_flags; domid_t domid;
};
"""

ffi = cffi.FFI()
ffi.cdef(CDEF)

PAGE_SIZE = 4096
TMEM_SPEC_VERSION = 1
MAX_POOLS_PER_DOMAIN = 16
MAX_GLOBAL_SHARED_POOLS = 16
TMEM_CLI_ID_NULL = 0xFFFF
DOMID_SELF = 0x7FF0
EFROZEN = 1000
EEMPTY = 1001


class Hypercall(enum.IntEnum):
    """Hypercall numbers (``public/xen.h``)."""

    memory_op = 12
    multicall = 13
    xen_version = 17
    sysctl = 35
    tmem_op = 38


class XenVersionCmd(enum.IntEnum):
    XENVER_version = 0
    XENVER_extraversion = 1
    XENVER_pagesize = 7


class XenMemOp(enum.IntEnum):
    XENMEM_increase_reservation = 0
    XENMEM_decrease_reservation = 1


class XenErrno(enum.IntEnum):
    """Xen errno values used by tmem (positive; results are their negation)."""

    EPERM = 1
    ENOENT = 2
    E2BIG = 7
    ENOMEM = 12
    EACCES = 13
    EFAULT = 14
    EEXIST = 17
    ENODEV = 19
    EINVAL = 22
    ENOSPC = 28
    ERANGE = 34
    ENOSYS = 38
    EOPNOTSUPP = 95
    EFROZEN = 1000
    EEMPTY = 1001


class TmemCmd(enum.IntEnum):
    """``tmem_op.cmd`` values (§2.1). 3 and 8-10 exist only up to Xen 4.3."""

    TMEM_CONTROL = 0
    TMEM_NEW_POOL = 1
    TMEM_DESTROY_POOL = 2
    TMEM_NEW_PAGE = 3
    TMEM_PUT_PAGE = 4
    TMEM_GET_PAGE = 5
    TMEM_FLUSH_PAGE = 6
    TMEM_FLUSH_OBJECT = 7
    TMEM_READ = 8
    TMEM_WRITE = 9
    TMEM_XCHG = 10
    TMEM_AUTH = 101
    TMEM_RESTORE_NEW = 102


class TmemcSubop(enum.IntEnum):
    """TMEMC_* control subops (TMEM_CONTROL up to 4.5; same numbers as sysctl ops 4.6-4.7)."""

    TMEMC_THAW = 0
    TMEMC_FREEZE = 1
    TMEMC_FLUSH = 2
    TMEMC_DESTROY = 3
    TMEMC_LIST = 4
    TMEMC_SET_WEIGHT = 5
    TMEMC_SET_CAP = 6
    TMEMC_SET_COMPRESS = 7
    TMEMC_QUERY_FREEABLE_MB = 8
    TMEMC_SAVE_BEGIN = 10
    TMEMC_SAVE_GET_VERSION = 11
    TMEMC_SAVE_GET_MAXPOOLS = 12
    TMEMC_SAVE_GET_CLIENT_WEIGHT = 13
    TMEMC_SAVE_GET_CLIENT_CAP = 14
    TMEMC_SAVE_GET_CLIENT_FLAGS = 15
    TMEMC_SAVE_GET_POOL_FLAGS = 16
    TMEMC_SAVE_GET_POOL_NPAGES = 17
    TMEMC_SAVE_GET_POOL_UUID = 18
    TMEMC_SAVE_GET_NEXT_PAGE = 19
    TMEMC_SAVE_GET_NEXT_INV = 20
    TMEMC_SAVE_END = 21
    TMEMC_RESTORE_BEGIN = 30
    TMEMC_RESTORE_PUT_PAGE = 32
    TMEMC_RESTORE_FLUSH_PAGE = 33


class SysctlTmemOp(enum.IntEnum):
    """XEN_SYSCTL_TMEM_OP_* for Xen 4.8-4.12 (SET_POOLS and SET_AUTH from 4.9)."""

    THAW = 0
    FREEZE = 1
    FLUSH = 2
    DESTROY = 3
    LIST = 4
    GET_CLIENT_INFO = 5
    SET_CLIENT_INFO = 6
    GET_POOLS = 7
    QUERY_FREEABLE_MB = 8
    SET_POOLS = 9
    SAVE_BEGIN = 10
    SET_AUTH = 11
    SAVE_GET_NEXT_PAGE = 19
    SAVE_GET_NEXT_INV = 20
    SAVE_END = 21
    RESTORE_BEGIN = 30
    RESTORE_PUT_PAGE = 32
    RESTORE_FLUSH_PAGE = 33


XEN_SYSCTL_tmem_op = 24


class PoolFlags(enum.IntFlag):
    """``creat.flags`` bits (§1.4)."""

    PERSIST = 0x1
    SHARED = 0x2
    PRECOMPRESSED = 0x4
    RESERVED_BITS = 0x00FFFF00
    PAGESIZE_MASK = 0xF0
    VERSION_MASK = 0xFF000000


POOL_PAGESIZE_SHIFT = 4
POOL_VERSION_SHIFT = 24


class ClientInfoFlags(enum.IntFlag):
    """``xen_tmem_client.flags`` (4.8+): note the order differs from the ≤4.7 save flags."""

    FROZEN = 0x1
    COMPRESS = 0x2
    MIGRATING = 0x4


class SaveClientFlags(enum.IntFlag):
    """TMEMC_SAVE_GET_CLIENT_FLAGS bits (≤4.7)."""

    COMPRESS = 0x1
    FROZEN = 0x2


class PoolInfoFlags(enum.IntFlag):
    """``xen_tmem_pool_info.flags`` (4.8+)."""

    PERSIST = 0x1
    SHARED = 0x2
    AUTH = 0x4


def pool_flags(*, persistent: bool, shared: bool = False, pagesize: int = PAGE_SIZE,
               version: int = TMEM_SPEC_VERSION) -> int:
    """The flag word Linux builds for NEW_POOL (``xen_tmem_new_pool``)."""
    if pagesize <= 0 or pagesize & (pagesize - 1):
        raise ValueError(f"page size must be a power of two, not {pagesize}")
    shift = pagesize.bit_length() - 1 - 12
    if not 0 <= shift <= 0xF:
        raise ValueError(f"page size {pagesize} not encodable")
    if not 0 <= version <= 0xFF:
        raise ValueError(f"spec version {version} not encodable")
    return ((PoolFlags.PERSIST if persistent else 0) | (PoolFlags.SHARED if shared else 0)
            | shift << POOL_PAGESIZE_SHIFT | version << POOL_VERSION_SHIFT)


@total_ordering
@dataclass(frozen=True)
class XenVersion:
    """A Xen release as ``major.minor``; compares like a tuple."""

    major: int
    minor: int

    @classmethod
    def parse(cls, text: str | XenVersion) -> XenVersion:
        if isinstance(text, XenVersion):
            return text
        parts = str(text).strip().split(".")
        try:
            major, minor = int(parts[0]), int(parts[1])
        except (IndexError, ValueError):
            raise ValueError(f"not a Xen version: {text!r} (expected e.g. 4.12)") from None
        return cls(major, minor)

    @classmethod
    def from_word(cls, word: int) -> XenVersion:
        """Decode the XENVER_version result ``(major << 16) | minor``."""
        return cls(word >> 16, word & 0xFFFF)

    @property
    def word(self) -> int:
        return self.major << 16 | self.minor

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, XenVersion):
            return NotImplemented
        return (self.major, self.minor) < (other.major, other.minor)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    @property
    def has_tmem(self) -> bool:
        """tmem exists in the hypervisor source of this release (4.0 – 4.12)."""
        return XenVersion(4, 0) <= self <= XenVersion(4, 12)

    @property
    def control_via_sysctl(self) -> bool:
        """4.6+ moved the control plane from TMEM_CONTROL to XEN_SYSCTL_tmem_op."""
        return self >= XenVersion(4, 6)


SYSCTL_INTERFACE_VERSION: dict[XenVersion, int] = {
    XenVersion(4, 6): 0x0C,
    XenVersion(4, 7): 0x0D,
    XenVersion(4, 8): 0x0E,
    XenVersion(4, 9): 0x0F,
    XenVersion(4, 10): 0x10,
    XenVersion(4, 11): 0x11,
    XenVersion(4, 12): 0x12,
}


def control_subop(version: XenVersion, name: str) -> int:
    """The control subop code for ``name`` (e.g. "LIST", "SET_AUTH") on ``version``.

    Raises ``ValueError`` when that release has no such control op.
    """
    if version >= XenVersion(4, 8):
        try:
            op = SysctlTmemOp[name]
        except KeyError:
            raise ValueError(f"Xen {version} has no tmem control op {name}") from None
        if op in (SysctlTmemOp.SET_POOLS, SysctlTmemOp.SET_AUTH) and version < XenVersion(4, 9):
            raise ValueError(f"Xen {version} has no tmem control op {name}")
        return int(op)
    try:
        return int(TmemcSubop["TMEMC_" + name])
    except KeyError:
        raise ValueError(f"Xen {version} has no tmem control op {name}") from None


def ioc(direction: int, type_char: str, nr: int, size: int) -> int:
    """Linux ``_IOC``: dir << 30 | size << 16 | type << 8 | nr."""
    return direction << 30 | size << 16 | ord(type_char) << 8 | nr


_IOC_NONE = 0
IOCTL_PRIVCMD_HYPERCALL = ioc(_IOC_NONE, "P", 0, ffi.sizeof("struct privcmd_hypercall"))
IOCTL_PRIVCMD_MMAPBATCH_V2 = ioc(_IOC_NONE, "P", 4, ffi.sizeof("struct privcmd_mmapbatch_v2"))
IOCTL_PRIVCMD_RESTRICT = ioc(_IOC_NONE, "P", 6, ffi.sizeof("domid_t"))

# Hot-path codecs, one per union member; the layout tests check them against the cdef.
TMEM_OP_GEN = struct.Struct("<Ii3QIIIIQ")
TMEM_OP_CREAT = struct.Struct("<Ii2QII24x")
TMEM_OP_CTRL = struct.Struct("<IiIIII3QQ")
TMEM_HANDLE = struct.Struct("<II3Q")
SYSCTL_TMEM_OP = struct.Struct("<IIIiIIII3QQ72x")  # xen_sysctl header + tmem_op, 136 bytes
XEN_TMEM_CLIENT = struct.Struct("<5I")
XEN_TMEM_POOL_INFO = struct.Struct("<IIQ2Q")
MULTICALL_ENTRY = struct.Struct("<8Q")  # op, result, args[6]
# extent_start, nr_extents, extent_order, mem_flags, domid (+6 bytes tail padding): 32 bytes
XEN_MEMORY_RESERVATION = struct.Struct("<QQIIH6x")

_CREAT_CMDS = frozenset({TmemCmd.TMEM_NEW_POOL, TmemCmd.TMEM_AUTH, TmemCmd.TMEM_RESTORE_NEW})


def member_for(cmd: int) -> str:
    """Which union member of ``tmem_op`` a command uses: 'creat', 'ctrl' or 'gen'."""
    if cmd in _CREAT_CMDS:
        return "creat"
    if cmd == TmemCmd.TMEM_CONTROL:
        return "ctrl"
    return "gen"


_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF


def _check(name: str, value: int, lo: int, hi: int) -> int:
    if not isinstance(value, int):
        raise ValueError(f"{name} must be an int, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{name}={value} out of range [{lo}, {hi}]")
    return value


def _words(name: str, value: object, count: int) -> tuple[int, ...]:
    try:
        words = tuple(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be a {count}-tuple of 64-bit words") from None
    if len(words) != count:
        raise ValueError(f"{name} must have {count} words, not {len(words)}")
    return tuple(_check(f"{name}[{i}]", w, 0, _U64) for i, w in enumerate(words))


_FIELDS = {
    "creat": {"uuid", "flags", "arg1"},
    "ctrl": {"subop", "cli_id", "arg1", "arg2", "oid", "buf"},
    "gen": {"oid", "index", "tmem_offset", "pfn_offset", "len", "cmfn"},
}


@dataclass(frozen=True)
class TmemOpFields:
    """A decoded ``struct tmem_op``: ``cmd``, ``pool_id`` and the fields of the member that
    ``cmd`` selects (names as in the C struct; the others stay ``None``)."""

    cmd: int
    pool_id: int
    member: str
    uuid: tuple[int, int] | None = None
    flags: int | None = None
    arg1: int | None = None
    subop: int | None = None
    cli_id: int | None = None
    arg2: int | None = None
    oid: tuple[int, int, int] | None = None
    buf: int | None = None
    index: int | None = None
    tmem_offset: int | None = None
    pfn_offset: int | None = None
    len: int | None = None
    cmfn: int | None = None
    extra: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def fields(self) -> dict[str, object]:
        """The member's fields as a dict (what ``pack_tmem_op`` takes back)."""
        return {name: getattr(self, name) for name in sorted(_FIELDS[self.member])}


def pack_tmem_op(cmd: int, pool_id: int = 0, **fields: object) -> bytes:
    """Encode a 56-byte ``struct tmem_op``; the member is chosen by ``cmd``.

    Fields not given are zero. Out-of-range values raise ``ValueError`` before anything is
    encoded (``oid`` a 3-tuple and ``uuid`` a 2-tuple of 64-bit words, the rest 32-bit).
    """
    _check("cmd", cmd, 0, _U32)
    _check("pool_id", pool_id, -(1 << 31), (1 << 31) - 1)
    member = member_for(cmd)
    unknown = set(fields) - _FIELDS[member]
    if unknown:
        raise ValueError(f"{member} member of tmem_op has no field(s) {sorted(unknown)}")

    def u32(name: str) -> int:
        return _check(name, fields.get(name, 0), 0, _U32)  # type: ignore[arg-type]

    if member == "creat":
        uuid = _words("uuid", fields.get("uuid", (0, 0)), 2)
        return TMEM_OP_CREAT.pack(cmd, pool_id, *uuid, u32("flags"), u32("arg1"))
    oid = _words("oid", fields.get("oid", (0, 0, 0)), 3)
    if member == "ctrl":
        buf = _check("buf", fields.get("buf", 0), 0, _U64)  # type: ignore[arg-type]
        return TMEM_OP_CTRL.pack(cmd, pool_id, u32("subop"), u32("cli_id"), u32("arg1"),
                                 u32("arg2"), *oid, buf)
    cmfn = _check("cmfn", fields.get("cmfn", 0), 0, _U64)  # type: ignore[arg-type]
    return TMEM_OP_GEN.pack(cmd, pool_id, *oid, u32("index"), u32("tmem_offset"),
                            u32("pfn_offset"), u32("len"), cmfn)


def unpack_tmem_op(data: bytes) -> TmemOpFields:
    """Decode a ``struct tmem_op``; ``data`` must be exactly 56 bytes."""
    if len(data) != TMEM_OP_GEN.size:
        raise ValueError(f"struct tmem_op is {TMEM_OP_GEN.size} bytes, got {len(data)}")
    cmd, pool_id = struct.unpack_from("<Ii", data)
    member = member_for(cmd)
    if member == "creat":
        _, _, lo, hi, flags, arg1 = TMEM_OP_CREAT.unpack(data)
        return TmemOpFields(cmd, pool_id, member, uuid=(lo, hi), flags=flags, arg1=arg1)
    if member == "ctrl":
        _, _, subop, cli_id, arg1, arg2, o0, o1, o2, buf = TMEM_OP_CTRL.unpack(data)
        return TmemOpFields(cmd, pool_id, member, subop=subop, cli_id=cli_id, arg1=arg1,
                            arg2=arg2, oid=(o0, o1, o2), buf=buf)
    _, _, o0, o1, o2, index, tmem_offset, pfn_offset, length, cmfn = TMEM_OP_GEN.unpack(data)
    return TmemOpFields(cmd, pool_id, member, oid=(o0, o1, o2), index=index,
                        tmem_offset=tmem_offset, pfn_offset=pfn_offset, len=length, cmfn=cmfn)


@dataclass(frozen=True)
class SysctlTmemOpFields:
    """A decoded ``struct xen_sysctl`` carrying ``xen_sysctl_tmem_op`` (4.8+ names;
    ``len``/``arg`` are ``arg1``/``arg2`` in 4.6-4.7)."""

    cmd: int
    interface_version: int
    tmem_cmd: int
    pool_id: int
    cli_id: int
    len: int
    arg: int
    pad: int
    oid: tuple[int, int, int]
    buf: int


def pack_sysctl_tmem_op(version: XenVersion, tmem_cmd: int, *, pool_id: int = 0,
                        cli_id: int = 0, length: int = 0, arg: int = 0,
                        oid: tuple[int, int, int] = (0, 0, 0), buf: int = 0, pad: int = 0,
                        interface_version: int | None = None) -> bytes:
    """Encode the 136-byte ``struct xen_sysctl`` for ``XEN_SYSCTL_tmem_op`` on ``version``."""
    if interface_version is None:
        try:
            interface_version = SYSCTL_INTERFACE_VERSION[version]
        except KeyError:
            raise ValueError(f"Xen {version} has no tmem sysctl (4.6-4.12 only)") from None
    words = _words("oid", oid, 3)
    return SYSCTL_TMEM_OP.pack(
        XEN_SYSCTL_tmem_op, _check("interface_version", interface_version, 0, _U32),
        _check("cmd", tmem_cmd, 0, _U32), _check("pool_id", pool_id, -(1 << 31), (1 << 31) - 1),
        _check("cli_id", cli_id, 0, _U32), _check("len", length, 0, _U32),
        _check("arg", arg, 0, _U32), _check("pad", pad, 0, _U32), *words,
        _check("buf", buf, 0, _U64))


def unpack_sysctl_tmem_op(data: bytes) -> SysctlTmemOpFields:
    """Decode a 136-byte ``struct xen_sysctl`` holding a tmem op."""
    if len(data) != SYSCTL_TMEM_OP.size:
        raise ValueError(f"struct xen_sysctl is {SYSCTL_TMEM_OP.size} bytes, got {len(data)}")
    (cmd, iv, tcmd, pool_id, cli_id, length, arg, pad, o0, o1, o2,
     buf) = SYSCTL_TMEM_OP.unpack(data)
    return SysctlTmemOpFields(cmd, iv, tcmd, pool_id, cli_id, length, arg, pad, (o0, o1, o2), buf)
