"""The typed tmem client: one object per calling domain, on any ``Hypervisor`` transport.

Guest commands go out as ``tmem_op`` (hypercall 38). The control plane goes out as TMEM_CONTROL
for Xen <= 4.5 and as ``XEN_SYSCTL_tmem_op`` (hypercall 35) for 4.6-4.12, chosen from the Xen
version given or probed. Argument structs, buffers and page frames come from the transport, so
the same code runs on privcmd and on the emulator.
"""

from __future__ import annotations

import functools
import struct
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import itemgetter

from xentmem.abi import (
    MULTICALL_ENTRY,
    PAGE_SIZE,
    TMEM_CLI_ID_NULL,
    TMEM_HANDLE,
    TMEM_OP_CREAT,
    TMEM_OP_CTRL,
    TMEM_OP_GEN,
    XEN_TMEM_CLIENT,
    XEN_TMEM_POOL_INFO,
    ClientInfoFlags,
    Hypercall,
    PoolInfoFlags,
    SaveClientFlags,
    TmemCmd,
    XenVersion,
    XenVersionCmd,
    control_subop,
    pack_sysctl_tmem_op,
    pool_flags,
)
from xentmem.errors import TmemEmpty, TmemError, TmemPermissionError
from xentmem.hypercalls._base import Buffer, Frame, Frames, Hypervisor, check_page

__all__ = ["ALL_CLIENTS", "ClientImage", "PoolImage", "Tmem", "xen_version"]

ALL_CLIENTS = TMEM_CLI_ID_NULL
DEFAULT_XEN_VERSION = XenVersion(4, 12)
LIST_BUFFER_BYTES = 32768  # what libxl_tmem_list uses
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF

Oid = tuple[int, int, int]

# Plain ints for the data path: packing IntEnum members costs a conversion per call.
_TMEM_OP = int(Hypercall.tmem_op)
_MULTICALL = int(Hypercall.multicall)
_PUT, _GET = int(TmemCmd.TMEM_PUT_PAGE), int(TmemCmd.TMEM_GET_PAGE)


def xen_version(hv: Hypervisor) -> tuple[XenVersion, str]:
    """Probe ``xen_version``: the release and its extraversion (e.g. ``(4.17, ".5")``)."""
    word = hv.hypercall(Hypercall.xen_version, XenVersionCmd.XENVER_version, 0)
    buf = hv.alloc_buffer(16)
    try:
        hv.hypercall(Hypercall.xen_version, XenVersionCmd.XENVER_extraversion, buf.address)
        extra = buf.read(16).split(b"\0", 1)[0].decode("ascii", "replace")
    finally:
        buf.close()
    return XenVersion.from_word(word), extra


def _oid(oid: int | Sequence[int]) -> Oid:
    if type(oid) is int and 0 <= oid <= _U64:  # the common case (Linux's oid[0]) first
        return (oid, 0, 0)
    words = (oid, 0, 0) if isinstance(oid, int) else tuple(oid)
    if len(words) != 3:
        raise ValueError(f"oid must be an int or a 3-tuple of 64-bit words, not {oid!r}")
    for w in words:
        if not isinstance(w, int) or not 0 <= w <= _U64:
            raise ValueError(f"oid word {w!r} is not a 64-bit unsigned int")
    return words  # type: ignore[return-value]


def _index(index: int) -> int:
    if type(index) is not int or not 0 <= index <= _U32:
        raise ValueError(f"page index {index!r} out of range [0, 2**32-1]")
    return index


def _pool(pool_id: int) -> int:
    if type(pool_id) is not int or not -(1 << 31) <= pool_id < (1 << 31):
        raise ValueError(f"pool id {pool_id!r} is not a 32-bit int")
    return pool_id


def _uuid(uuid: Sequence[int]) -> tuple[int, int]:
    words = tuple(uuid)
    if len(words) != 2 or not all(isinstance(w, int) and 0 <= w <= _U64 for w in words):
        raise ValueError(f"uuid must be two 64-bit words (lo, hi), not {uuid!r}")
    return words  # type: ignore[return-value]


def _cli(cli_id: int) -> int:
    if not isinstance(cli_id, int) or not 0 <= cli_id <= _U32:
        raise ValueError(f"client id {cli_id!r} out of range")
    return cli_id


@functools.cache
def _results(count: int) -> struct.Struct:
    """Decoder of the ``result`` words (signed) of ``count`` multicall entries."""
    return struct.Struct("<" + "8xq48x" * count)


@functools.cache
def _ops(count: int) -> struct.Struct:
    """Encoder of ``count`` consecutive gen-member ``struct tmem_op``s."""
    return struct.Struct("<" + TMEM_OP_GEN.format.lstrip("<") * count)


_Keys = tuple[list[int], list[int], list[int], list[int]]


def _split(rows: Iterable[Sequence], width: int) -> list[list]:
    """``width`` columns of ``rows`` (tuples of exactly ``width`` items). Column by column,
    so no object is made per row (a big batch would otherwise wake the cyclic GC)."""
    rows = rows if isinstance(rows, list) else list(rows)
    if rows and set(map(len, rows)) != {width}:
        bad = next(row for row in rows if len(row) != width)
        raise ValueError(f"expected {width}-tuples, got {bad!r}")
    return [list(map(itemgetter(i), rows)) for i in range(width)]


def _words_ok(values: Sequence, top: int) -> bool:
    """Every value a plain int in ``0 .. top`` (checked in C: the batched common case)."""
    return set(map(type, values)) == {int} and min(values) >= 0 and max(values) <= top


def _columns(oids: Sequence, indexes: Sequence) -> _Keys:
    """Validated keys as columns (oid words 0-2, index), ready to slot into a packed batch;
    ``ValueError`` for the first bad oid or index."""
    if not oids:
        return [], [], [], []
    if _words_ok(oids, _U64) and _words_ok(indexes, _U32):
        zeros = [0] * len(oids)
        return list(oids), zeros, zeros, list(indexes)
    o0s, o1s, o2s = zip(*map(_oid, oids), strict=True)
    return list(o0s), list(o1s), list(o2s), list(map(_index, indexes))


class _Batch:
    """A client's batch memory: op structs, multicall entries, and one run of page frames."""

    __slots__ = ("entries", "frames", "numbers", "ops")

    def __init__(self, ops: Buffer, entries: Buffer, frames: Frames) -> None:
        self.ops, self.entries, self.frames = ops, entries, frames
        self.numbers = frames.numbers

    def close(self) -> None:
        self.ops.close()
        self.entries.close()
        self.frames.close()


def _named(exc: TmemError, cmd: int) -> TmemError:
    try:
        name = TmemCmd(cmd).name
    except ValueError:
        name = str(cmd)
    return type(exc)(exc.errno, f"tmem_op {name}")


@dataclass
class PoolImage:
    """One saved pool: its slot, flags, uuid and (persistent) pages."""

    pool_id: int
    persistent: bool
    shared: bool
    uuid: tuple[int, int] = (0, 0)
    pages: list[tuple[Oid, int, bytes]] = field(default_factory=list)


@dataclass
class ClientImage:
    """A client's saved tmem state: what SAVE_* produced and RESTORE_* consumes."""

    weight: int = 0
    compress: bool = False
    frozen: bool = False
    pools: list[PoolImage] = field(default_factory=list)
    invalidated: list[tuple[int, Oid, int]] = field(default_factory=list)


class Tmem:
    """tmem as the calling domain of ``hypervisor`` sees it.

    ``version`` selects the control-plane encoding; ``None`` probes ``xen_version`` and falls
    back to 4.12 when the probe fails.
    """

    def __init__(self, hypervisor: Hypervisor, version: XenVersion | str | None = None) -> None:
        self.hv = hypervisor
        # The op buffer, frame and batch below are shared by every call: a caller with several
        # threads holds this around each call (the transport itself is thread-safe).
        self.lock = threading.Lock()
        if version is None:
            try:
                version = xen_version(hypervisor)[0]
            except TmemError:
                version = DEFAULT_XEN_VERSION
        self.version = XenVersion.parse(version)
        self._op: Buffer = hypervisor.alloc_buffer(TMEM_OP_GEN.size)
        self._op_address = self._op.address
        self._pack_op = self._op.packer(TMEM_OP_GEN)
        self._hypercall = hypervisor.hypercall
        self._frame: Frame | None = None
        self._sysctl: Buffer | None = None
        self._batch: _Batch | None = None

    # -- plumbing ------------------------------------------------------------------------------

    def close(self) -> None:
        """Give back every buffer and frame this client holds (not the transport)."""
        for mem in (self._op, self._frame, self._sysctl):
            if mem is not None:
                mem.close()
        if self._batch is not None:
            self._batch.close()
        self._frame = self._sysctl = self._batch = None

    def __enter__(self) -> Tmem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def frame(self) -> Frame:
        if self._frame is None:
            self._frame = self.hv.alloc_frame()
        return self._frame

    def issue(self, op_bytes: bytes) -> int:
        """Issue one raw 56-byte ``tmem_op``; return the result or raise ``TmemError``
        (its ``op`` names the command, e.g. ``tmem_op TMEM_PUT_PAGE``)."""
        self._op.write(op_bytes)
        try:
            return self.hv.hypercall(Hypercall.tmem_op, self._op_address)
        except TmemError as exc:
            raise _named(exc, int.from_bytes(op_bytes[:4], "little")) from None

    def _gen(self, cmd: int, pool_id: int, oid: Oid, index: int = 0, cmfn: int = 0) -> int:
        o0, o1, o2 = oid
        self._pack_op(cmd, pool_id, o0, o1, o2, index, 0, 0, 0, cmfn)
        try:
            return self._hypercall(_TMEM_OP, self._op_address)
        except TmemError as exc:
            raise _named(exc, cmd) from None

    # -- guest commands --------------------------------------------------------------------------

    def new_pool(self, *, persistent: bool, shared: bool = False,
                 uuid: Sequence[int] = (0, 0)) -> int:
        """Create (or join, when shared) a pool; return its local id 0..15."""
        flags = pool_flags(persistent=persistent, shared=shared)
        return self.issue(TMEM_OP_CREAT.pack(TmemCmd.TMEM_NEW_POOL, 0, *_uuid(uuid), flags, 0))

    def destroy_pool(self, pool_id: int) -> bool:
        """Release a pool slot; False when the slot was already empty."""
        return self._gen(TmemCmd.TMEM_DESTROY_POOL, _pool(pool_id), (0, 0, 0)) == 1

    def put_page(self, pool_id: int, oid: int | Sequence[int], index: int, data: bytes) -> None:
        """Store one page; raises ``TmemError`` (e.g. ``TmemNoMemory``, ``TmemFrozen``)."""
        if len(data) != PAGE_SIZE:
            check_page(data)  # raises with the reason
        frame = self._frame or self.frame
        frame.write(data)
        self._page_op(_PUT, pool_id, oid, index, frame.number)

    def get_page(self, pool_id: int, oid: int | Sequence[int], index: int) -> bytes | None:
        """Fetch one page; ``None`` on a miss (including -EEMPTY, as Linux treats it)."""
        frame = self._frame or self.frame
        return frame.read() if self.get_page_to(pool_id, oid, index, frame) else None

    def put_page_from(self, pool_id: int, oid: int | Sequence[int], index: int,
                      frame: Frame) -> None:
        """Store the page held in ``frame``, a frame of this client's transport
        (``hv.alloc_frame()``), as Linux's shim PUTs a guest page: nothing is copied first."""
        self._page_op(_PUT, pool_id, oid, index, frame.number)

    def get_page_to(self, pool_id: int, oid: int | Sequence[int], index: int,
                    frame: Frame) -> bool:
        """Fetch one page straight into ``frame`` (as ``put_page_from``): the hypervisor's copy
        is the only one. False on a miss (including -EEMPTY), the frame left as it was."""
        try:
            return self._page_op(_GET, pool_id, oid, index, frame.number) == 1
        except TmemEmpty:
            return False

    def _page_op(self, cmd: int, pool_id: int, oid: int | Sequence[int], index: int,
                 cmfn: int) -> int:
        """``_gen`` for PUT/GET with the checks of ``_pool``/``_index``/``_oid`` inlined for the
        common case (an int oid): the single-op hot path makes one call, not five. A shift is
        the range check (``x >> 32`` is 0 exactly for 0 <= x < 2**32)."""
        if type(index) is not int or index >> 32:
            _index(index)  # raises
        if type(pool_id) is not int or (pool_id + 0x80000000) >> 32:
            _pool(pool_id)  # raises
        if type(oid) is int and not oid >> 64:
            self._pack_op(cmd, pool_id, oid, 0, 0, index, 0, 0, 0, cmfn)
        else:
            o0, o1, o2 = _oid(oid)
            self._pack_op(cmd, pool_id, o0, o1, o2, index, 0, 0, 0, cmfn)
        try:
            return self._hypercall(_TMEM_OP, self._op_address)
        except TmemError as exc:
            raise _named(exc, cmd) from None

    def flush_page(self, pool_id: int, oid: int | Sequence[int], index: int) -> None:
        self._gen(TmemCmd.TMEM_FLUSH_PAGE, _pool(pool_id), _oid(oid), _index(index))

    def flush_object(self, pool_id: int, oid: int | Sequence[int]) -> None:
        self._gen(TmemCmd.TMEM_FLUSH_OBJECT, _pool(pool_id), _oid(oid))

    # -- batched data path: one multicall of many tmem_ops -----------------------------------

    BATCH = 128

    def _batch_memory(self) -> _Batch:
        if self._batch is None:
            ops = self.hv.alloc_buffer(TMEM_OP_GEN.size * self.BATCH)
            entries = self.hv.alloc_buffer(MULTICALL_ENTRY.size * self.BATCH)
            # Entry i always calls tmem_op on op slot i: written once, only results change. The
            # structs are consecutive, which lets the hypervisor side decode a run in one go.
            entries.write(b"".join(
                MULTICALL_ENTRY.pack(_TMEM_OP, 0, ops.address + i * TMEM_OP_GEN.size, 0, 0, 0,
                                     0, 0) for i in range(self.BATCH)))
            self._batch = _Batch(ops, entries, self.hv.alloc_frames(self.BATCH))
        return self._batch

    def _multicall(self, cmd: int, pool_id: int, keys: _Keys, start: int, stop: int,
                   pages: Sequence[bytes] | None) -> tuple[int, ...]:
        """One multicall of gen ops ``start .. stop-1`` of ``keys`` (at most ``BATCH``), op
        ``i`` naming batch frame ``i``; the raw results."""
        batch = self._batch_memory()
        count = stop - start
        if pages is not None:  # one copy into the run of frames
            batch.frames.write(pages[start] if count == 1 else b"".join(pages[start:stop]))
        # All structs in one pack: a template with the fixed words, the key columns slotted in.
        args = [cmd, pool_id, 0, 0, 0, 0, 0, 0, 0, 0] * count
        o0s, o1s, o2s, indexes = keys
        args[2::10] = o0s[start:stop]
        args[3::10] = o1s[start:stop]
        args[4::10] = o2s[start:stop]
        args[5::10] = indexes[start:stop]
        args[9::10] = batch.numbers[:count]
        batch.ops.write(_ops(count).pack(*args))
        self._hypercall(_MULTICALL, batch.entries.address, count)
        return _results(count).unpack(batch.entries.read(MULTICALL_ENTRY.size * count))

    def put_pages(self, pool_id: int, items: Iterable[tuple[int | Sequence[int], int, bytes]]
                  ) -> list[int]:
        """Store many pages, ``BATCH`` per multicall; return each op's raw result (1, or a
        negative errno) without raising."""
        pool_id = _pool(pool_id)
        oids, indexes, pages = _split(items, 3)
        if set(map(len, pages)) - {PAGE_SIZE}:
            for data in pages:
                check_page(data)  # raises with the reason
        keys = _columns(oids, indexes)
        results: list[int] = []
        for start in range(0, len(pages), self.BATCH):
            results += self._multicall(_PUT, pool_id, keys, start,
                                       min(start + self.BATCH, len(pages)), pages)
        return results

    def _get_batches(self, pool_id: int, keys: Sequence[tuple[int | Sequence[int], int]]
                     ) -> Iterator[tuple[int, tuple[int, ...]]]:
        """Run the GETs ``BATCH`` per multicall, yielding ``(first key, raw results)`` while
        the batch frames hold that batch's pages. Bad keys raise before anything is issued."""
        pool_id = _pool(pool_id)
        oids, indexes = _split(keys, 2)
        columns = _columns(oids, indexes)
        for start in range(0, len(oids), self.BATCH):
            yield start, self._multicall(_GET, pool_id, columns, start,
                                         min(start + self.BATCH, len(oids)), None)

    def get_pages(self, pool_id: int, keys: Iterable[tuple[int | Sequence[int], int]]
                  ) -> list[bytes | None]:
        """Fetch many pages, ``BATCH`` per multicall; ``None`` for each miss or error."""
        keys = keys if isinstance(keys, list) else list(keys)
        frames = self._batch_memory().frames
        out: list[bytes | None] = []
        for _, results in self._get_batches(pool_id, keys):
            raw = frames.read(0, len(results))
            out += [raw[i * PAGE_SIZE:(i + 1) * PAGE_SIZE] if r == 1 else None
                    for i, r in enumerate(results)]
        return out

    def get_pages_into(self, pool_id: int, keys: Iterable[tuple[int | Sequence[int], int]],
                       out: bytearray | memoryview) -> list[int]:
        """Fetch many pages straight into ``out`` (writable, at least ``4096 * len(keys)``
        bytes): page ``i`` lands at ``out[4096*i:]`` when op ``i`` hits, and that slot is left
        as it was on a miss. No page object is made, so this is the fast batched GET. Returns
        each op's raw result (1 hit, 0 miss, or a negative errno) without raising."""
        keys = keys if isinstance(keys, list) else list(keys)
        with memoryview(out) as view, view.cast("B") as dst:
            if dst.readonly:
                raise ValueError("get_pages_into needs a writable buffer")
            if dst.nbytes < len(keys) * PAGE_SIZE:
                raise ValueError(f"{len(keys)} pages need {len(keys) * PAGE_SIZE} bytes, the "
                                 f"buffer has {dst.nbytes}")
            frames = self._batch_memory().frames
            status: list[int] = []
            for start, results in self._get_batches(pool_id, keys):
                count = len(results)
                if results.count(1) == count:  # all hits: the whole run in one copy
                    frames.read_into(dst[start * PAGE_SIZE:(start + count) * PAGE_SIZE])
                else:
                    for i, r in enumerate(results, start):
                        if r == 1:
                            frames.read_into(dst[i * PAGE_SIZE:(i + 1) * PAGE_SIZE], i - start)
                status += results
        return status

    # -- control plane ---------------------------------------------------------------------------

    def control(self, name: str, *, cli_id: int = ALL_CLIENTS, pool_id: int = 0, arg1: int = 0,
                arg2: int = 0, oid: Sequence[int] = (0, 0, 0), buf: int = 0) -> int:
        """Issue one control op by name (e.g. ``"FREEZE"``), encoded for this Xen version.

        ``arg1``/``arg2`` are the first and second argument words: ``ctrl.arg1/arg2`` up to 4.5,
        ``arg1/arg2`` of the 4.6-4.7 sysctl, ``len/arg`` from 4.8.
        """
        subop = control_subop(self.version, name)
        oid = _oid(oid)
        if not self.version.control_via_sysctl:
            return self.issue(TMEM_OP_CTRL.pack(TmemCmd.TMEM_CONTROL, _pool(pool_id), subop,
                                                _cli(cli_id), arg1, arg2, *oid, buf))
        if self._sysctl is None:
            self._sysctl = self.hv.alloc_buffer(136)
        self._sysctl.write(pack_sysctl_tmem_op(self.version, subop, pool_id=_pool(pool_id),
                                               cli_id=_cli(cli_id), length=arg1, arg=arg2,
                                               oid=oid, buf=buf))
        return self.hv.hypercall(Hypercall.sysctl, self._sysctl.address)

    @property
    def _new_info(self) -> bool:  # 4.8 replaced SET_WEIGHT/CAP/COMPRESS by client info structs
        return self.version >= XenVersion(4, 8)

    def _arg(self, value: int) -> dict[str, int]:
        # FLUSH and SAVE_BEGIN moved their argument from the first word to ``arg`` in 4.8.
        return {"arg2": value} if self._new_info else {"arg1": value}

    def freeze(self, cli_id: int = ALL_CLIENTS) -> None:
        self.control("FREEZE", cli_id=cli_id)

    def thaw(self, cli_id: int = ALL_CLIENTS) -> None:
        self.control("THAW", cli_id=cli_id)

    def flush_kib(self, kib: int) -> int:
        """TMEMC_FLUSH: evict ephemeral pages until ``kib`` is free; return KiB released."""
        return self.control("FLUSH", cli_id=ALL_CLIENTS, **self._arg(kib))

    def freeable_mb(self) -> int:
        return self.control("QUERY_FREEABLE_MB", cli_id=ALL_CLIENTS)

    def list(self, cli_id: int = ALL_CLIENTS, *, long: bool = False,
             buffer_size: int = LIST_BUFFER_BYTES) -> str:
        """The ``tmem-list`` text for one client or all (``xl tmem-list [-l]``)."""
        buf = self.hv.alloc_buffer(buffer_size)
        try:
            buf.write(b"\0" * buffer_size)
            self.control("LIST", cli_id=cli_id, arg1=buffer_size, arg2=int(long),
                         buf=buf.address)
            return buf.read(buffer_size).split(b"\0", 1)[0].decode("ascii", "replace")
        finally:
            buf.close()

    def client_info(self, cli_id: int) -> dict[str, int | bool]:
        """Weight, compress and frozen state of a client (GET_CLIENT_INFO on 4.8+, the SAVE_GET_*
        queries before)."""
        if self._new_info:
            buf = self.hv.alloc_buffer(XEN_TMEM_CLIENT.size)
            try:
                self.control("GET_CLIENT_INFO", cli_id=cli_id, buf=buf.address)
                version, maxpools, nr_pools, flags, weight = XEN_TMEM_CLIENT.unpack(buf.read())
            finally:
                buf.close()
            return {"version": version, "maxpools": maxpools, "nr_pools": nr_pools,
                    "weight": weight, "compress": bool(flags & ClientInfoFlags.COMPRESS),
                    "frozen": bool(flags & ClientInfoFlags.FROZEN)}
        flags = self.control("SAVE_GET_CLIENT_FLAGS", cli_id=cli_id)
        return {"weight": self.control("SAVE_GET_CLIENT_WEIGHT", cli_id=cli_id),
                "compress": bool(flags & SaveClientFlags.COMPRESS),
                "frozen": bool(flags & SaveClientFlags.FROZEN)}

    def set_client(self, cli_id: int, *, weight: int | None = None, compress: bool | None = None,
                   cap: int | None = None) -> None:
        """``xl tmem-set``: weight / compress (and cap, which only Xen <= 4.7 stores)."""
        if cap is not None and self._new_info:
            raise ValueError(f"Xen {self.version} retired cap: valid sets are weight|compress")
        if not self._new_info:
            for name, value in (("SET_WEIGHT", weight), ("SET_CAP", cap),
                                ("SET_COMPRESS", None if compress is None else int(compress))):
                if value is not None:
                    self.control(name, cli_id=cli_id, arg1=value & _U32)
            return
        if weight is None and compress is None:
            return
        buf = self.hv.alloc_buffer(XEN_TMEM_CLIENT.size)
        try:
            self.control("GET_CLIENT_INFO", cli_id=cli_id, buf=buf.address)
            version, maxpools, nr_pools, flags, old_weight = XEN_TMEM_CLIENT.unpack(buf.read())
            if compress is not None:
                flags = (flags | ClientInfoFlags.COMPRESS if compress
                         else flags & ~ClientInfoFlags.COMPRESS)
            buf.write(XEN_TMEM_CLIENT.pack(version, maxpools, nr_pools, flags,
                                           old_weight if weight is None else weight & _U32))
            self.control("SET_CLIENT_INFO", cli_id=cli_id, buf=buf.address)
        finally:
            buf.close()

    def shared_auth(self, cli_id: int, uuid: Sequence[int], authorise: bool = True) -> int:
        """``xl tmem-shared-auth``: allow (or revoke) ``cli_id`` joining shared pool ``uuid``."""
        lo, hi = _uuid(uuid)
        if self.version < XenVersion(4, 9):
            return self.issue(TMEM_OP_CREAT.pack(TmemCmd.TMEM_AUTH, 0, lo, hi, int(authorise),
                                                 _cli(cli_id)))
        buf = self.hv.alloc_buffer(XEN_TMEM_POOL_INFO.size)
        try:
            buf.write(XEN_TMEM_POOL_INFO.pack(PoolInfoFlags.AUTH if authorise else 0, 0, 0,
                                              lo, hi))
            return self.control("SET_AUTH", cli_id=cli_id, arg1=XEN_TMEM_POOL_INFO.size,
                                buf=buf.address)
        finally:
            buf.close()

    # -- save / restore (the libxc xc_tmem_save / xc_tmem_restore sequences) ----------------

    def pools(self, cli_id: int) -> list[PoolImage]:
        """The client's pools (GET_POOLS on 4.8+, SAVE_GET_POOL_* before), without pages."""
        pools: list[PoolImage] = []
        if self._new_info:
            size = XEN_TMEM_POOL_INFO.size * 16
            buf = self.hv.alloc_buffer(size)
            try:
                count = self.control("GET_POOLS", cli_id=cli_id, arg1=size, buf=buf.address)
                raw = buf.read(size)
            finally:
                buf.close()
            for i in range(count):
                flags, pool_id, _, lo, hi = XEN_TMEM_POOL_INFO.unpack_from(raw, i * 32)
                pools.append(PoolImage(pool_id, bool(flags & PoolInfoFlags.PERSIST),
                                       bool(flags & PoolInfoFlags.SHARED), (lo, hi)))
            return pools
        buf = self.hv.alloc_buffer(16)
        try:
            for pool_id in range(16):
                try:
                    flags = self.control("SAVE_GET_POOL_FLAGS", cli_id=cli_id, pool_id=pool_id)
                except TmemPermissionError:  # -1: empty slot
                    continue
                self.control("SAVE_GET_POOL_UUID", cli_id=cli_id, pool_id=pool_id,
                             arg1=16, buf=buf.address)
                lo, hi = struct.unpack("<2Q", buf.read(16))
                pools.append(PoolImage(pool_id, bool(flags & 1), bool(flags & 2), (lo, hi)))
        finally:
            buf.close()
        return pools

    def save(self, cli_id: int, *, live: bool = False) -> ClientImage | None:
        """Save a client's persistent pages; ``None`` when it has nothing to save.

        Raises ``TmemError`` where the hypervisor refuses (a real 4.12.4 refuses every page
        stored uncompressed with -EINVAL).
        """
        try:
            begun = self.control("SAVE_BEGIN", cli_id=cli_id, **self._arg(int(live)))
        except TmemError as exc:
            if exc.errno == 2:  # 4.8+: -ENOENT, no client or no pools
                return None
            raise
        if not self._new_info and begun == 0:
            return None
        try:
            info = self.client_info(cli_id)
            image = ClientImage(weight=int(info["weight"]), compress=bool(info["compress"]),
                                frozen=bool(info["frozen"]), pools=self.pools(cli_id))
            size = TMEM_HANDLE.size + PAGE_SIZE
            buf = self.hv.alloc_buffer(size)
            try:
                for pool in image.pools:
                    if pool.persistent:
                        pool.pages = self._saved_pages(cli_id, pool.pool_id, buf, size)
                image.invalidated = self._saved_invalidations(cli_id, buf)
            finally:
                buf.close()
        finally:
            self.control("SAVE_END", cli_id=cli_id)
        return image

    def _saved_pages(self, cli_id: int, pool_id: int, buf: Buffer, size: int
                     ) -> list[tuple[Oid, int, bytes]]:
        pages = []
        while True:
            try:
                got = self.control("SAVE_GET_NEXT_PAGE", cli_id=cli_id, pool_id=pool_id,
                                   arg1=size, buf=buf.address)
            except TmemPermissionError:  # -1: end of the pool's list
                break
            if got != 1:
                break
            raw = buf.read(size)
            _, index, o0, o1, o2 = TMEM_HANDLE.unpack_from(raw)
            pages.append(((o0, o1, o2), index, raw[TMEM_HANDLE.size:]))
        return pages

    def _saved_invalidations(self, cli_id: int, buf: Buffer) -> list[tuple[int, Oid, int]]:
        out = []
        while self.control("SAVE_GET_NEXT_INV", cli_id=cli_id, arg1=TMEM_HANDLE.size,
                           buf=buf.address) == 1:
            pool_id, index, o0, o1, o2 = TMEM_HANDLE.unpack_from(buf.read(TMEM_HANDLE.size))
            out.append((pool_id, (o0, o1, o2), index))
        return out

    def restore(self, cli_id: int, image: ClientImage) -> None:
        """Recreate a saved client on this host under ``cli_id`` (RESTORE_* sequence)."""
        self.control("RESTORE_BEGIN", cli_id=cli_id)
        self.set_client(cli_id, weight=image.weight, compress=image.compress)
        for pool in image.pools:
            flags = pool_flags(persistent=pool.persistent, shared=pool.shared)
            if self.version < XenVersion(4, 9):
                self.issue(TMEM_OP_CREAT.pack(TmemCmd.TMEM_RESTORE_NEW, pool.pool_id, *pool.uuid,
                                              flags, cli_id))
            else:
                buf = self.hv.alloc_buffer(XEN_TMEM_POOL_INFO.size)
                try:
                    buf.write(XEN_TMEM_POOL_INFO.pack(flags, pool.pool_id, 0, *pool.uuid))
                    self.control("SET_POOLS", cli_id=cli_id, arg1=XEN_TMEM_POOL_INFO.size,
                                 buf=buf.address)
                finally:
                    buf.close()
        page = self.hv.alloc_buffer(PAGE_SIZE)
        try:
            for pool in image.pools:
                for oid, index, data in pool.pages:
                    page.write(check_page(data))
                    self.control("RESTORE_PUT_PAGE", cli_id=cli_id, pool_id=pool.pool_id,
                                 oid=oid, arg1=PAGE_SIZE, arg2=index, buf=page.address)
            for pool_id, oid, index in image.invalidated:
                self.control("RESTORE_FLUSH_PAGE", cli_id=cli_id, pool_id=pool_id, oid=oid,
                             arg2=index)
        finally:
            page.close()
        if image.frozen:
            self.freeze(cli_id)

