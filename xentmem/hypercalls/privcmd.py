"""``PrivcmdHypervisor``: hypercalls through Linux's ``/dev/xen/privcmd`` (ref §5.2).

``ioctl(fd, IOCTL_PRIVCMD_HYPERCALL, struct privcmd_hypercall {op, arg[5]})`` runs the hypercall
as the domain this process lives in. A negative result comes back as ``ioctl() == -1`` with
``errno = -result``; we turn it back into the hypervisor's errno (``TmemError``).

Argument memory is anonymous, page-aligned and ``mlock``'ed, because Xen reads it through the
caller's page tables. Frames for PUT/GET (one, or a run for batches): on HVM/PVH mlock'ed pages
whose PFNs ``/proc/self/pagemap`` reports; on PV, fresh MFNs from ``XENMEM_increase_reservation``
mapped with ``IOCTL_PRIVCMD_MMAPBATCH_V2`` (DOMID_SELF), given back on close.
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Callable
from pathlib import Path

import cffi

from xentmem.abi import (
    DOMID_SELF,
    IOCTL_PRIVCMD_HYPERCALL,
    IOCTL_PRIVCMD_MMAPBATCH_V2,
    PAGE_SIZE,
    Hypercall,
    XenMemOp,
    ffi,
)
from xentmem.errors import TmemError, TransportError, tmem_error
from xentmem.hypercalls._base import check_fits, page_span
from xentmem.hypercalls._where import PRIVCMD_PATHS  # re-exported

__all__ = ["PRIVCMD_PATHS", "LockedBuffer", "PrivcmdHypervisor", "guest_type"]


_libc_ffi = cffi.FFI()
_libc_ffi.cdef("""
    int ioctl(int fd, unsigned long request, void *arg);
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset);
    int munmap(void *addr, size_t length);
    int mlock(const void *addr, size_t len);
    int munlock(const void *addr, size_t len);
""")
_libc = _libc_ffi.dlopen(None)
_PROT_RW = 0x1 | 0x2
_MAP_SHARED, _MAP_PRIVATE, _MAP_ANONYMOUS = 0x01, 0x02, 0x20
_MAP_FAILED = 2**64 - 1

# (fd, request, pointer) -> (return value, errno); the seam the ioctl-path unit tests replace.
IoctlFn = Callable[[int, int, object], tuple[int, int]]


def _libc_ioctl(fd: int, request: int, pointer: object) -> tuple[int, int]:
    rc = _libc.ioctl(fd, request, _libc_ffi.cast("void *", pointer))
    return rc, (_libc_ffi.errno if rc < 0 else 0)


def _address(pointer: object) -> int:
    return int(_libc_ffi.cast("uintptr_t", pointer))


def guest_type() -> str | None:
    """"PV", "HVM" or "PVH" for the domain we run in, or None off Xen."""
    try:
        return Path("/sys/hypervisor/guest_type").read_text().strip() or None
    except OSError:
        return None


class LockedBuffer:
    """Anonymous, page-aligned, mlock'ed process memory at a real address."""

    def __init__(self, size: int, *, fd: int = -1, shared: bool = False) -> None:
        self.size = size
        self._length = max(PAGE_SIZE, -(-size // PAGE_SIZE) * PAGE_SIZE)
        flags = (_MAP_SHARED if shared else _MAP_PRIVATE) | (_MAP_ANONYMOUS if fd < 0 else 0)
        ptr = _libc.mmap(_libc_ffi.NULL, self._length, _PROT_RW, flags, fd, 0)
        if _address(ptr) == _MAP_FAILED:
            raise TransportError(_libc_ffi.errno, f"mmap failed: {os.strerror(_libc_ffi.errno)}")
        self._ptr = ptr
        self.address = _address(ptr)
        # mlock may be refused (RLIMIT_MEMLOCK); the page is still usable, just not pinned.
        self.locked = _libc.mlock(ptr, self._length) == 0
        self._view = _libc_ffi.buffer(_libc_ffi.cast("char *", ptr), self._length)

    def write(self, data: bytes, offset: int = 0) -> None:
        if offset < 0 or offset + len(data) > self.size:
            raise ValueError(f"write of {len(data)} bytes at {offset} outside {self.size}")
        self._view[offset:offset + len(data)] = data

    def read(self, size: int | None = None, offset: int = 0) -> bytes:
        size = self.size - offset if size is None else size
        if offset < 0 or size < 0 or offset + size > self.size:
            raise ValueError(f"read of {size} bytes at {offset} outside {self.size}")
        return self._view[offset:offset + size]

    def packer(self, layout: struct.Struct) -> Callable[..., None]:
        check_fits(layout, self.size)
        return functools.partial(layout.pack_into, self._view, 0)

    def close(self) -> None:
        if self._ptr is not None:
            if self.locked:
                _libc.munlock(self._ptr, self._length)
            _libc.munmap(self._ptr, self._length)
            self._ptr = None


class _LockedFrames(LockedBuffer):
    """Frames mapped at a locked address of ours: page-indexed access for both kinds."""

    numbers: list[int]

    def write(self, data: bytes, first: int = 0) -> None:  # type: ignore[override]
        start, end = page_span(len(data), first, len(self.numbers))
        self._view[start:end] = data

    def read(self, first: int = 0, count: int | None = None) -> bytes:  # type: ignore[override]
        start, end = page_span((len(self.numbers) - first if count is None else count)
                               * PAGE_SIZE, first, len(self.numbers))
        return self._view[start:end]

    def read_into(self, out: bytearray | memoryview, first: int = 0) -> None:
        with memoryview(out) as dst, memoryview(self._view) as mine:
            start, end = page_span(dst.nbytes, first, len(self.numbers))
            dst[:] = mine[start:end]


class _PagemapFrames(_LockedFrames):
    """HVM/PVH: locked pages of ours; their GFNs are the PFNs that pagemap reports."""

    def __init__(self, count: int) -> None:
        super().__init__(count * PAGE_SIZE)
        for at in range(0, count * PAGE_SIZE, PAGE_SIZE):
            self._view[at:at + 1] = b"\0"  # fault each page in before asking for its frame
        with open("/proc/self/pagemap", "rb") as pagemap:
            pagemap.seek(self.address // PAGE_SIZE * 8)
            entries = struct.unpack(f"<{count}Q", pagemap.read(8 * count))
        self.numbers = [entry & ((1 << 55) - 1) for entry in entries]
        if not all(entry >> 63 for entry in entries) or 0 in self.numbers:
            self.close()
            raise TmemError(1, "frame", "cannot learn our pages' frame numbers from "
                            "/proc/self/pagemap (needs CAP_SYS_ADMIN and present pages)")
        self.number = self.numbers[0]


class _ReservationFrames(_LockedFrames):
    """PV: fresh MFNs from XENMEM_increase_reservation, mapped through privcmd."""

    def __init__(self, hv: PrivcmdHypervisor, count: int) -> None:
        self._hv = hv
        self.numbers = hv._reservation(XenMemOp.XENMEM_increase_reservation, [0] * count)
        self.number = self.numbers[0]
        try:
            super().__init__(count * PAGE_SIZE, fd=hv.fd, shared=True)
            arr = ffi.new("xen_pfn_t[]", self.numbers)
            err = ffi.new("int[]", count)
            batch = ffi.new("struct privcmd_mmapbatch_v2 *",
                            {"num": count, "dom": DOMID_SELF, "addr": self.address,
                             "arr": arr, "err": err})
            rc, errno = hv._ioctl(hv.fd, IOCTL_PRIVCMD_MMAPBATCH_V2, batch)
            failed = next((-e for e in err if e), 0)
            if rc < 0 or failed:
                raise tmem_error(-(errno or failed), "privcmd mmapbatch")
        except Exception:
            if hasattr(self, "_ptr"):  # mapped before it failed
                LockedBuffer.close(self)
            hv._reservation(XenMemOp.XENMEM_decrease_reservation, self.numbers)
            raise

    def close(self) -> None:
        if self._ptr is not None:
            super().close()
            self._hv._reservation(XenMemOp.XENMEM_decrease_reservation, self.numbers)


class PrivcmdHypervisor:
    """Hypercalls as the domain this process runs in, through privcmd."""

    def __init__(self, path: str | None = None, *, ioctl: IoctlFn | None = None,
                 guest: str | None = None) -> None:
        candidates = (path,) if path else PRIVCMD_PATHS
        self.fd = -1
        for candidate in candidates:
            try:
                self.fd = os.open(candidate, os.O_RDWR | os.O_CLOEXEC)
                self.path = candidate
                break
            except FileNotFoundError:
                continue
            except PermissionError as exc:
                raise TransportError(exc.errno, f"{candidate}: permission denied "
                                     "(privcmd is normally root-only)") from None
        if self.fd < 0:
            raise TransportError(2, f"no {' or '.join(candidates)}: not running on Xen, or the "
                                 "xen-privcmd module is not loaded")
        self._ioctl = ioctl or _libc_ioctl
        self._guest = guest
        self._call = ffi.new("struct privcmd_hypercall *")

    def hypercall(self, op: int, *args: int) -> int:
        if len(args) > 5:
            raise ValueError("a hypercall takes at most 5 arguments")
        call = self._call
        call.op = op
        for i in range(5):
            call.arg[i] = args[i] if i < len(args) else 0
        rc, errno = self._ioctl(self.fd, IOCTL_PRIVCMD_HYPERCALL, call)
        if rc < 0:
            raise tmem_error(-errno, _op_name(op))
        return rc

    def alloc_buffer(self, size: int) -> LockedBuffer:
        return LockedBuffer(size)

    def alloc_frame(self) -> _LockedFrames:
        return self.alloc_frames(1)

    def alloc_frames(self, count: int) -> _LockedFrames:
        if count < 1:
            raise ValueError(f"frame count must be positive, not {count}")
        kind = self._guest or guest_type()
        if kind == "PV":
            return _ReservationFrames(self, count)
        if kind in ("HVM", "PVH"):
            return _PagemapFrames(count)
        raise TmemError(19, "frame", f"cannot get a frame of this domain (guest type {kind!r}: "
                        "expected PV, HVM or PVH from /sys/hypervisor/guest_type)")

    def _reservation(self, cmd: int, frames: list[int]) -> list[int]:
        """Grow (frames all 0: Xen picks them) or shrink our own reservation by
        ``len(frames)`` pages; return the frame numbers."""
        arr = ffi.new("xen_pfn_t[]", frames)
        res = ffi.new("struct xen_memory_reservation *",
                      {"extent_start": _address(arr), "nr_extents": len(frames),
                       "extent_order": 0, "mem_flags": 0, "domid": DOMID_SELF})
        done = self.hypercall(Hypercall.memory_op, cmd, _address(res))
        if done != len(frames):
            if cmd == XenMemOp.XENMEM_increase_reservation and done > 0:
                self._reservation(XenMemOp.XENMEM_decrease_reservation, list(arr)[:done])
            raise TmemError(12, "memory_op", f"the domain could not change its reservation by "
                            f"{len(frames)} page(s), only {done} (max memory reached?)")
        return [int(pfn) for pfn in arr]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> PrivcmdHypervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _op_name(op: int) -> str:
    try:
        return Hypercall(op).name
    except ValueError:
        return f"hypercall {op}"
