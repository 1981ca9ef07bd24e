"""The one exception hierarchy a user of xentmem may see.

::

    XentmemError
     ├── TmemError (.errno, .op)            a hypercall returned a negative Xen errno
     │    ├── TmemPermissionError  (+PermissionError)   -EPERM / -EACCES / -EOPNOTSUPP
     │    ├── TmemNoPoolError      (+KeyError)          -ENODEV (no tmem, or no such pool)
     │    ├── TmemNotAvailable     (+OSError)           -ENOSYS: hypercall absent
     │    ├── TmemNoMemory         (+MemoryError)       -ENOMEM / -ENOSPC
     │    ├── TmemFrozen                                -EFROZEN (-1000)
     │    ├── TmemEmpty                                 -EEMPTY (-1001)
     │    └── TmemFault                                 -EFAULT
     ├── TransportError (+OSError)          the transport itself failed (no device, socket gone)
     ├── EmulatorError                      the emulated host refused a host-API call
     │    ├── HostCrashed                   the imitated hypervisor crashed (ref §9): host gone
     │    ├── StateDamaged                  the daemon's saved state is damaged: nothing booted
     │    └── StoreFailing (+OSError)       the daemon cannot write its state (disk full, EIO)
     ├── XenStoreError (.errno, .path)      a xenstore request failed
     │    ├── XenStoreNotFound (+KeyError)  ENOENT
     │    ├── XenStorePermission (+PermissionError)  EACCES / EPERM
     │    ├── XenStoreUnavailable (+ConnectionError) no server / connection lost
     │    └── XenStoreTimeout (+TimeoutError)        no answer within the timeout
     ├── LibvirtError                       a libvirt call failed
     ├── GuestError                         the guest model refused an operation
     └── TraceError (+ValueError)           a memory trace or tuning input is malformed

Return codes map to classes in one table (``TMEM_ERRORS``) at the transport boundary.
"""

from __future__ import annotations

import errno as _errno

__all__ = [
    "EEMPTY",
    "EFROZEN",
    "TMEM_ERRORS",
    "EmulatorError",
    "GuestError",
    "HostCrashed",
    "LibvirtError",
    "StateDamaged",
    "StoreFailing",
    "TmemEmpty",
    "TmemError",
    "TmemFault",
    "TmemFrozen",
    "TmemNoMemory",
    "TmemNoPoolError",
    "TmemNotAvailable",
    "TmemPermissionError",
    "TraceError",
    "TransportError",
    "XenStoreError",
    "XenStoreNotFound",
    "XenStorePermission",
    "XenStoreTimeout",
    "XenStoreUnavailable",
    "XentmemError",
    "errno_name",
    "tmem_error",
]

EFROZEN = 1000
EEMPTY = 1001

_ERRNO_NAMES = {EFROZEN: "EFROZEN", EEMPTY: "EEMPTY"}


def errno_name(value: int) -> str:
    """Symbolic name of a (positive) Xen errno, e.g. 19 -> 'ENODEV', 1000 -> 'EFROZEN'."""
    return _ERRNO_NAMES.get(value) or _errno.errorcode.get(value, f"E{value}")


class XentmemError(Exception):
    """Base of every error xentmem raises on purpose."""


class TmemError(XentmemError):
    """A hypercall returned a negative Xen errno. ``errno`` is positive, ``op`` names the call."""

    def __init__(self, errno: int, op: str, message: str | None = None) -> None:
        detail = message or _DEFAULT_MESSAGES.get(errno, "")
        text = f"{op}: -{errno_name(errno)} ({-errno})"
        if detail:
            text += f": {detail}"
        super().__init__(text)
        # Set after __init__: OSError-derived subclasses reset errno there.
        self.errno = errno
        self.op = op

    def __reduce__(self):  # keep pickling (multiprocessing, pytest-xdist) working
        return (type(self), (self.errno, self.op, None))


class TmemPermissionError(TmemError, PermissionError):
    pass


class TmemNoPoolError(TmemError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return Exception.__str__(self)


class TmemNotAvailable(TmemError, OSError):
    def __str__(self) -> str:
        return Exception.__str__(self)


class TmemNoMemory(TmemError, MemoryError):
    pass


class TmemFrozen(TmemError):
    pass


class TmemEmpty(TmemError):
    pass


class TmemFault(TmemError):
    pass


_DEFAULT_MESSAGES = {
    _errno.EPERM: "refused (bad flags, no free slot, or not privileged)",
    _errno.ENOENT: "no such client or pool",
    _errno.E2BIG: "too many entries for the buffer",
    _errno.ENOMEM: "out of memory (or persistent pages reached the domain's max)",
    _errno.EFAULT: "bad guest address or frame",
    _errno.EEXIST: "already exists",
    _errno.ENODEV: "tmem not enabled at boot, domain dying, or no such pool",
    _errno.EINVAL: "invalid argument",
    _errno.ENOSPC: "duplicate put failed; the old copy was discarded",
    _errno.ERANGE: "value out of range",
    _errno.ENOSYS: "tmem absent from this hypervisor (not built in, or Xen >= 4.13 removed it)",
    _errno.EACCES: "interface version mismatch or access denied",
    _errno.EOPNOTSUPP: "operation not supported by this Xen version",
    EFROZEN: "client is frozen",
    EEMPTY: "pool holds no pages",
}

TMEM_ERRORS: dict[int, type[TmemError]] = {
    _errno.EPERM: TmemPermissionError,
    _errno.EACCES: TmemPermissionError,
    _errno.EOPNOTSUPP: TmemPermissionError,
    _errno.ENODEV: TmemNoPoolError,
    _errno.ENOSYS: TmemNotAvailable,
    _errno.ENOMEM: TmemNoMemory,
    _errno.ENOSPC: TmemNoMemory,
    _errno.EFAULT: TmemFault,
    EFROZEN: TmemFrozen,
    EEMPTY: TmemEmpty,
}


def tmem_error(result: int, op: str, message: str | None = None) -> TmemError:
    """The exception for a negative hypercall ``result`` (e.g. -19) issued as ``op``."""
    code = -result
    return TMEM_ERRORS.get(code, TmemError)(code, op, message)


class TransportError(XentmemError, OSError):
    """The transport itself failed: device missing, socket closed, daemon not running."""

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno N]" prefix
        return self.strerror or super().__str__()


class EmulatorError(XentmemError):
    """The emulated host refused a host-API call (unknown domain, no memory left, ...)."""


class StateDamaged(EmulatorError):
    """The emulator daemon's saved state cannot be read as written; ``up`` refuses to boot over
    it (``up --recover`` keeps a copy and truncates at the last good record)."""


class StoreFailing(EmulatorError, OSError):
    """The emulator daemon cannot make its state durable (disk full, I/O error): the write
    that needed it was refused, nothing half-written is left."""


class HostCrashed(EmulatorError):
    """The imitated hypervisor crashed, as the real release did on that path; every domain is
    gone and every further call on that host raises this again."""


class XenStoreError(XentmemError):
    """A xenstore request failed. ``errno`` is positive (0 if none); ``path`` may be None."""

    def __init__(self, message: str, errno: int = 0, path: str | None = None) -> None:
        super().__init__(message)
        self.errno = errno  # after __init__, which OSError-derived subclasses use to reset it
        self.path = path


class XenStoreNotFound(XenStoreError, KeyError):
    def __str__(self) -> str:
        return Exception.__str__(self)


class XenStorePermission(XenStoreError, PermissionError):
    pass


class XenStoreUnavailable(XenStoreError, ConnectionError):
    pass


class XenStoreTimeout(XenStoreError, TimeoutError):
    pass


class LibvirtError(XentmemError):
    """A libvirt call failed (connection, unknown domain, unsupported operation)."""


class GuestError(XentmemError):
    """The guest model refused an operation (bad device, backend state)."""


class TraceError(XentmemError, ValueError):
    """A memory trace or a tuning input is malformed (the message names the line or knob)."""
