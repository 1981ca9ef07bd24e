"""``EmulatedHypervisor``: the in-process transport to an ``EmulatedHost`` (DESIGN §3).

Pointers stay pointers: buffers and frames live in the calling domain's emulated guest memory,
their addresses are guest addresses (``frame * 4096 + offset``), and the host's entry resolves
them exactly as Xen resolves a guest's, answering -EFAULT for bad ones.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable

from xentmem.abi import PAGE_SIZE, Hypercall
from xentmem.emulator._host import EmulatedHost
from xentmem.errors import TransportError, tmem_error
from xentmem.hypercalls._base import check_fits, page_span

__all__ = ["EmulatedBuffer", "EmulatedFrames", "EmulatedHypervisor"]

_OP_NAMES = {int(h): h.name for h in Hypercall}


class EmulatedBuffer:
    """Hypercall argument memory inside the domain (whole frames, from the top of its RAM)."""

    def __init__(self, host: EmulatedHost, domid: int, size: int) -> None:
        if size < 1:
            raise ValueError(f"buffer size must be positive, not {size}")
        self._host, self._domid, self.size = host, domid, size
        self._count = (size + PAGE_SIZE - 1) // PAGE_SIZE
        self._first = host.alloc_frames(domid, self._count, buffer=True)
        self.address = self._first * PAGE_SIZE
        self._mem = host.domains[domid].mem

    def write(self, data: bytes, offset: int = 0) -> None:
        end = offset + len(data)
        if offset < 0 or end > self.size:
            raise ValueError(f"{len(data)} bytes at offset {offset} overflow a "
                             f"{self.size}-byte buffer")
        address = self.address
        self._mem[address + offset:address + end] = data

    def read(self, size: int | None = None, offset: int = 0) -> bytes:
        size = self.size - offset if size is None else size
        if offset < 0 or size < 0 or offset + size > self.size:
            raise ValueError(f"{size} bytes at offset {offset} overflow a {self.size}-byte buffer")
        start = self.address + offset
        return self._mem[start:start + size]

    def packer(self, layout: struct.Struct) -> Callable[..., None]:
        check_fits(layout, self.size)
        return functools.partial(layout.pack_into, self._mem, self.address)  # no Python frame

    def close(self) -> None:
        if self._first:
            self._host.free_frames(self._domid, self._first, self._count)
            self._first = 0


class EmulatedFrames:
    """``count`` contiguous RAM frames of the domain, from ``number``; with ``count`` 1 it is
    the single ``Frame`` of ``alloc_frame``. No view of the domain's memory is kept between
    calls, so destroying the domain can always unmap it."""

    def __init__(self, host: EmulatedHost, domid: int, count: int = 1) -> None:
        if count < 1:
            raise ValueError(f"frame count must be positive, not {count}")
        self._host, self._domid = host, domid
        self.number = host.alloc_frames(domid, count)
        self.numbers = list(range(self.number, self.number + count))
        self._mem = host.domains[domid].mem
        self._off = self.number * PAGE_SIZE
        self._size = count * PAGE_SIZE

    def write(self, data: bytes, first: int = 0) -> None:
        off = self._off
        if len(data) == self._size and not first:  # the whole run (and single-frame) case
            self._mem[off:off + self._size] = data
            return
        start, end = page_span(len(data), first, len(self.numbers))
        self._mem[off + start:off + end] = data

    def read(self, first: int = 0, count: int | None = None) -> bytes:
        off = self._off
        if not first and count is None:
            return self._mem[off:off + self._size]
        start, end = page_span((len(self.numbers) - first if count is None else count)
                               * PAGE_SIZE, first, len(self.numbers))
        return self._mem[off + start:off + end]

    def read_into(self, out: bytearray | memoryview, first: int = 0) -> None:
        with memoryview(out) as dst, memoryview(self._mem) as mem:
            start, end = page_span(dst.nbytes, first, len(self.numbers))
            dst[:] = mem[self._off + start:self._off + end]

    def close(self) -> None:
        if self.number:
            self._host.free_frames(self._domid, self.number, len(self.numbers))
            self.number = 0


class EmulatedHypervisor:
    """Issue hypercalls as domain ``domid`` of an in-process ``EmulatedHost``."""

    def __init__(self, host: EmulatedHost, domid: int = 0) -> None:
        if domid not in host.domains:
            raise TransportError(f"emulated host has no domain {domid}")
        self.host = host
        self.domid = domid
        entry, tmem_op = host.hypercall, host.tmem_op

        # The data path: a closure over the entries and the domid (no partial, no lookups),
        # shadowing the method below on this instance.
        def hypercall(op: int, *args: int) -> int:
            result = tmem_op(domid, args[0]) if op == 38 and args else entry(domid, op, *args)
            if result < 0:
                raise tmem_error(result, _OP_NAMES.get(op, f"hypercall {op}"))
            return result

        self.hypercall = hypercall  # type: ignore[method-assign]

    def hypercall(self, op: int, *args: int) -> int:
        """Xen's result; a negative one raises the matching ``TmemError``.

        ``HostCrashed`` propagates when the call crashed the imitated hypervisor.
        """
        result = self.host.hypercall(self.domid, op, *args)
        if result < 0:
            raise tmem_error(result, _OP_NAMES.get(op, f"hypercall {op}"))
        return result

    def alloc_buffer(self, size: int) -> EmulatedBuffer:
        return EmulatedBuffer(self.host, self.domid, size)

    def alloc_frame(self) -> EmulatedFrames:
        return EmulatedFrames(self.host, self.domid)

    def alloc_frames(self, count: int) -> EmulatedFrames:
        return EmulatedFrames(self.host, self.domid, count)

    def close(self) -> None:
        """Nothing to release: the host owns the domain's memory."""
