"""The emulated host: memory budget, domains with guest frames, and the hypercall entry."""

from __future__ import annotations

import array
import functools
import struct
import threading
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from xentmem.abi import (
    DOMID_SELF,
    MULTICALL_ENTRY,
    PAGE_SIZE,
    SYSCTL_INTERFACE_VERSION,
    SYSCTL_TMEM_OP,
    TMEM_CLI_ID_NULL,
    TMEM_OP_CREAT,
    TMEM_OP_CTRL,
    TMEM_OP_GEN,
    XEN_MEMORY_RESERVATION,
    Hypercall,
    TmemCmd,
    XEN_SYSCTL_tmem_op,
    XenErrno,
    XenMemOp,
    XenVersion,
    XenVersionCmd,
)
from xentmem.emulator import _listing, _state
from xentmem.emulator._behaviour import Behaviour
from xentmem.emulator._control import Control
from xentmem.emulator._tmem import HypervisorCrash, Tmem, anonymous_memory
from xentmem.errors import EmulatorError, HostCrashed

PAGE = PAGE_SIZE
STRUCT_SIZE = TMEM_OP_GEN.size
ENODEV = -XenErrno.ENODEV
EFAULT = -XenErrno.EFAULT
ENOSYS = -XenErrno.ENOSYS
ENOMEM = -XenErrno.ENOMEM
EINVAL = -XenErrno.EINVAL
EACCES = -XenErrno.EACCES
EPERM = -XenErrno.EPERM
EOPNOTSUPP = -XenErrno.EOPNOTSUPP
U64 = (1 << 64) - 1

# The hot path compares with these (a global lookup costs what a constant does).
TMEM_OP = int(Hypercall.tmem_op)
PUT = int(TmemCmd.TMEM_PUT_PAGE)
GET = int(TmemCmd.TMEM_GET_PAGE)
PAGE_OPS = (PUT, GET)

_unpack_gen = TMEM_OP_GEN.unpack_from
_unpack_entry = MULTICALL_ENTRY.unpack_from
_pack_result = struct.Struct("<q").pack_into
_U32 = struct.Struct("<I")


@functools.cache
def _entry_heads(count: int) -> struct.Struct:
    """``op`` and ``args[0]`` of ``count`` consecutive 64-byte ``multicall_entry``s."""
    return struct.Struct("<" + "Q8xQ40x" * count)


# The gen member of ``struct tmem_op`` (TMEM_OP_GEN) without the three words PUT and GET
# ignore (tmem_offset, pfn_offset, len): cmd, pool_id, oid[3], index, cmfn.
_GEN_KEY = "Ii3QI12xQ"
assert struct.calcsize("<" + _GEN_KEY) == TMEM_OP_GEN.size


@functools.cache
def _gen_keys(count: int) -> struct.Struct:
    """The PUT/GET fields of ``count`` consecutive gen-member ``struct tmem_op``s."""
    return struct.Struct("<" + _GEN_KEY * count)


_unpack_key = _gen_keys(1).unpack_from  # a single PUT/GET needs no more


@functools.lru_cache(maxsize=64)
def _strides(first: int, count: int) -> tuple[int, ...]:
    """The addresses of ``count`` consecutive 56-byte structs from ``first``."""
    return tuple(range(first, first + count * STRUCT_SIZE, STRUCT_SIZE))


def _frames(a: int, a_size: int, b: int, b_end: int) -> set[int]:
    """Frame numbers touched by ``a_size`` bytes at ``a`` and by ``b .. b_end``."""
    return {*range(a >> 12, ((a + a_size - 1) >> 12) + 1), *range(b >> 12, ((b_end - 1) >> 12) + 1)}


_F = TypeVar("_F", bound=Callable[..., Any])


def _serialised(method: _F) -> _F:
    """Run a host method under the host's lock (hypercalls take it inline)."""
    @functools.wraps(method)
    def locked(self: EmulatedHost, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            return method(self, *args, **kwargs)
    return locked  # type: ignore[return-value]


class Domain:
    """One domain: its guest-physical address space of 4 KiB frames.

    Frames ``0 .. max_pages-1`` are addressable; ``populated[f]`` says whether frame ``f`` is RAM
    of the domain (``nr_pages`` of them). Frame 0 is never handed out and never accepted as a
    buffer or ``cmfn`` (the null page). Guest addresses are ``frame * 4096 + offset``. Memory is
    an anonymous mapping, so untouched frames cost nothing.
    """

    __slots__ = ("avail", "client", "dirty", "domid", "dying", "max_pages", "mem", "mv", "name",
                 "nr_pages", "op_ok", "populated", "privileged", "size", "tmem_pages")

    def __init__(self, domid: int, name: str, nr_pages: int, max_pages: int) -> None:
        self.domid = domid
        self.name = name
        self.max_pages = max_pages
        self.size = max_pages * PAGE
        self.mem = anonymous_memory(self.size)
        self.mv = memoryview(self.mem)
        self.populated = bytearray(max_pages)
        self.populated[:nr_pages] = b"\x01" * nr_pages
        self.nr_pages = nr_pages
        self.avail = bytearray(self.populated)  # RAM frames not yet handed out
        self.avail[0] = 0
        self.privileged = domid == 0
        self.dying = False
        self.tmem_pages = 0  # persistent tmem pages charged to this domain
        self.client: Any = None  # its tmem client, once it has one
        self.op_ok = -1  # the last tmem_op address found valid (reset when RAM shrinks)
        # Frames the hypervisor wrote, while someone tracks them (the daemon, to send back
        # only what changed); None when nobody does. Like log-dirty mode, for Xen's writes.
        self.dirty: set[int] | None = None

    @property
    def tot_pages(self) -> int:
        return self.nr_pages + self.tmem_pages

    def valid(self, address: int, size: int) -> bool:
        """``size`` bytes at guest ``address`` lie in populated frames (never frame 0)."""
        if address < PAGE or size < 0 or address + size > self.size:
            return False
        if size == 0:
            return True
        first, last = address >> 12, (address + size - 1) >> 12
        if first == last:
            return bool(self.populated[first])
        return 0 not in self.populated[first:last + 1]

    def frame_offset(self, cmfn: int) -> int:
        """Byte offset of frame ``cmfn`` if it is a RAM page of this domain, else -1."""
        if 0 < cmfn < self.max_pages and self.populated[cmfn]:
            return cmfn << 12
        return -1

    def read(self, address: int, size: int) -> bytes | None:
        if not self.valid(address, size):
            return None
        return self.mem[address:address + size]

    def write(self, address: int, data: bytes) -> bool:
        if not self.valid(address, len(data)):
            return False
        self.mem[address:address + len(data)] = data
        if self.dirty is not None:
            self.touched(address, len(data))
        return True

    def touched(self, address: int, size: int) -> None:
        """Note a hypervisor write of ``size`` bytes at ``address`` (when tracking)."""
        if self.dirty is not None and size > 0:
            self.dirty.update(range(address >> 12, ((address + size - 1) >> 12) + 1))

    def alloc(self, count: int, *, top: bool) -> int:
        """``count`` contiguous free RAM frames (from the top for buffers); -1 if none."""
        run = b"\x01" * count
        first = self.avail.rfind(run) if top else self.avail.find(run)
        if first > 0:
            self.avail[first:first + count] = bytes(count)
        return first if first > 0 else -1

    def free(self, first: int, count: int) -> None:
        self.mem[first * PAGE:(first + count) * PAGE] = bytes(count * PAGE)
        self.avail[first:first + count] = self.populated[first:first + count]

    def close(self) -> None:
        self.mv.release()
        self.mem.close()


def _parse_version(xen_version: str | XenVersion) -> tuple[XenVersion, str]:
    version = XenVersion.parse(xen_version)
    parts = str(xen_version).strip().split(".")
    extra = "." + parts[2] if len(parts) > 2 and parts[2] else ".0"
    if not XenVersion(4, 1) <= version:
        raise ValueError(f"Xen {version} is not emulated (4.1 and later)")
    return version, extra


class EmulatedHost:
    """A Xen host imitating one release; see the package docstring for the API."""

    def __init__(self, memory_mb: int = 2048, *, xen_version: str | XenVersion = "4.12",
                 tmem: bool = True, tmem_compress: bool = False,
                 tmem_shared_auth: bool = False, designed: bool = False,
                 dom0_memory_mb: int | None = None,
                 dom0_max_memory_mb: int | None = None,
                 tmem_dedup: bool = False, tmem_tze: bool = False) -> None:
        if memory_mb < 16:
            raise ValueError(f"host memory must be at least 16 MiB, not {memory_mb}")
        if dom0_memory_mb is None:
            dom0_memory_mb = min(256, memory_mb // 4)
        if not 1 <= dom0_memory_mb < memory_mb:
            raise ValueError(f"dom0 memory {dom0_memory_mb} MiB does not fit the host "
                             f"({memory_mb} MiB)")
        self.version, self.extraversion = _parse_version(xen_version)
        self.memory_mb = memory_mb
        self.boot = {"tmem": tmem, "tmem_compress": tmem_compress,
                     "tmem_shared_auth": tmem_shared_auth, "tmem_dedup": tmem_dedup,
                     "tmem_tze": tmem_tze}
        self.designed = designed
        self.behaviour = Behaviour.for_version(self.version, designed=designed)
        self.has_tmem = self.version.has_tmem
        self.tmem_enabled = tmem and self.has_tmem
        # One lock for the whole host: hypercalls from several threads (domains) run one at a
        # time, as if Xen held a global lock; a multicall takes it once, not per entry.
        self.lock = threading.RLock()
        self._acquire, self._release = self.lock.acquire, self.lock.release
        # Xen keeps part of the RAM for itself (frame table, M2P, its image and heap, §9.4);
        # the rest is its heap, whose mid-size reserve is seeded before dom0 is built.
        ram = memory_mb * 256
        self.heap_free = ram - ram * self.behaviour.xen_own_ppm // 1_000_000
        # tmem_dedup / tmem_tze exist up to 4.7; later releases ignore them as unknown
        dedup = self.behaviour.dedup_options
        self.tmem = Tmem(self, self.behaviour, compress=tmem_compress,
                         shared_auth=tmem_shared_auth, dedup=tmem_dedup and dedup,
                         tze=tmem_tze and dedup)
        self.control = Control(self)
        self.domains: dict[int, Domain] = {}
        self.leaked_pools: list[Any] = []
        self.dangling_shared = False
        self.crashed: str | None = None
        self._next_domid = 1
        dom0_max = dom0_max_memory_mb if dom0_max_memory_mb is not None else memory_mb
        self.tmem.note_heap()  # seed the mid-size reserve from the boot-time free memory
        self._add_domain(0, "Domain-0", dom0_memory_mb, dom0_max)
        self._command_tables()
        self._handlers = {
            int(Hypercall.tmem_op): self._hc_tmem_op,
            int(Hypercall.sysctl): self._hc_sysctl,
            int(Hypercall.xen_version): self._hc_xen_version,
            int(Hypercall.multicall): self._hc_multicall,
            int(Hypercall.memory_op): self._hc_memory_op,
        }

    # ---- domains ----------------------------------------------------------------------------

    def _alive(self) -> None:
        if self.crashed is not None:
            raise HostCrashed(f"the emulated Xen {self.version} host crashed: {self.crashed}; "
                              "every domain is gone")

    def _no_domain(self, domid: int) -> NoReturn:
        """Why a call names no domain: the host crashed (a crash empties ``domains``), or
        there is no such domain. Kept off the entries' hot path."""
        self._alive()
        raise EmulatorError(f"no domain {domid}")

    def _add_domain(self, domid: int, name: str, memory_mb: int, max_memory_mb: int) -> int:
        pages = memory_mb * 256
        if pages > self.heap_free:
            got = self.tmem.relinquish(pages - self.heap_free)
            self.heap_free += got
            if pages > self.heap_free:
                raise EmulatorError(f"not enough free host memory for {memory_mb} MiB "
                                    f"({self.heap_free // 256} MiB free)")
        self.heap_free -= pages
        self.domains[domid] = Domain(domid, name, pages, max_memory_mb * 256)
        return domid

    @_serialised
    def create_domain(self, name: str, memory_mb: int, max_memory_mb: int | None = None) -> int:
        """Create a guest with ``memory_mb`` MiB of frames (up to ``max_memory_mb``); its domid."""
        self._alive()
        max_memory_mb = memory_mb if max_memory_mb is None else max_memory_mb
        if not name or any(d.name == name for d in self.domains.values()):
            raise EmulatorError(f"domain name {name!r} is empty or already used")
        if not 1 <= memory_mb <= max_memory_mb:
            raise EmulatorError(f"need 1 <= memory ({memory_mb}) <= max memory "
                                f"({max_memory_mb}) MiB")
        domid = self._next_domid
        if domid >= DOMID_SELF:
            raise EmulatorError("out of domain ids")
        self._add_domain(domid, name, memory_mb, max_memory_mb)
        self._next_domid += 1
        return domid

    @_serialised
    def destroy_domain(self, domid: int) -> None:
        """Kill a domain: tmem teardown (ref §3.2), then its memory goes back to Xen."""
        self._alive()
        dom = self._domain(domid)
        if domid == 0:
            raise EmulatorError("domain 0 cannot be destroyed")
        dom.dying = True
        client = self.tmem.clients.get(domid)
        if client is not None:
            try:
                self.tmem.destroy_client(client)
            except HypervisorCrash as crash:
                self._crash(str(crash))
        del self.domains[domid]
        self.heap_free += dom.nr_pages
        self.tmem.note_heap()
        dom.close()

    def _domain(self, domid: int) -> Domain:
        try:
            return self.domains[domid]
        except KeyError:
            raise EmulatorError(f"no domain {domid}") from None

    @_serialised
    def domain_info(self, domid: int) -> dict[str, Any]:
        """Name, memory and tmem charge of one domain."""
        self._alive()
        dom = self._domain(domid)
        return {"domid": domid, "name": dom.name, "nr_pages": dom.nr_pages,
                "max_pages": dom.max_pages, "tot_pages": dom.tot_pages,
                "tmem_pages": dom.tmem_pages}

    @_serialised
    def tmem_list(self, domid: int | None = None, *, long: bool = False) -> str:
        """What ``xl tmem-list [-l] <domid>|-a`` prints (the LIST text of ref §4.2 plus the
        newline xl adds), read through a 32 KiB buffer as libxl does."""
        self._alive()
        cli = TMEM_CLI_ID_NULL if domid is None else domid
        if cli == TMEM_CLI_ID_NULL and self.tmem.list_crashes():
            self._crash("LIST walked a shared pool that Xen 4.5 had freed")
        recs = _listing.records(self.tmem, self.behaviour, cli, long)
        if recs is None:
            raise EmulatorError(f"domain {domid} is not a tmem client")
        text = _listing.render(recs, 32768, self.behaviour)
        return text.split(b"\0")[0].decode() + "\n"

    @_serialised
    def to_state(self) -> dict[str, Any]:
        """Everything persistent (config, domains, tmem clients/pools/pages, counters) as plain,
        picklable data; guest frame contents are not kept."""
        return _state.to_state(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EmulatedHost:
        """A host rebuilt from ``to_state()`` output."""
        return _state.from_state(cls, state)

    def _crash(self, reason: str) -> NoReturn:
        self.crashed = reason
        for dom in self.domains.values():
            dom.close()
        self.domains.clear()
        self.tmem.close()
        self.tmem = Tmem(self, self.behaviour, compress=False, shared_auth=False)
        raise HostCrashed(f"the emulated Xen {self.version} host crashed: {reason}; every "
                          "domain is gone")

    # ---- guest memory (what transports use for buffers and frames) ---------------------------

    @_serialised
    def alloc_frames(self, domid: int, count: int = 1, *, buffer: bool = False) -> int:
        """Reserve ``count`` contiguous RAM frames of ``domid``; the first frame number.

        Hypercall buffers (``buffer=True``) come from the top of the domain's memory, page
        frames for PUT/GET from the bottom.
        """
        self._alive()
        if count < 1:
            raise ValueError(f"frame count must be positive, not {count}")
        first = self._domain(domid).alloc(count, top=buffer)
        if first < 0:
            raise EmulatorError(f"domain {domid} has no {count} free contiguous frame(s)")
        return first

    @_serialised
    def free_frames(self, domid: int, first: int, count: int = 1) -> None:
        """Give back frames from ``alloc_frames`` (zeroed)."""
        dom = self.domains.get(domid)
        if dom is not None:
            dom.free(first, count)

    @_serialised
    def read_memory(self, domid: int, address: int, size: int) -> bytes:
        """Bytes of guest memory; ``EmulatorError`` outside the domain's RAM."""
        self._alive()
        data = self._domain(domid).read(address, size)
        if data is None:
            raise EmulatorError(f"domain {domid}: no RAM at {address:#x}+{size}")
        return data

    @_serialised
    def write_memory(self, domid: int, address: int, data: bytes) -> None:
        """Write guest memory; ``EmulatorError`` outside the domain's RAM."""
        self._alive()
        if not self._domain(domid).write(address, bytes(data)):
            raise EmulatorError(f"domain {domid}: no RAM at {address:#x}+{len(data)}")

    # ---- the hypercall entry ----------------------------------------------------------------

    def hypercall(self, domid: int, op: int, *args: int) -> int:
        """Issue hypercall ``op`` as domain ``domid``; returns Xen's (signed) result.

        Never raises for anything the guest passed: bad pointers, frames, fields and commands
        give the negative errno Xen would. Raises ``HostCrashed`` when this call crashed the
        imitated hypervisor (or it had crashed before) and ``EmulatorError`` for an unknown
        ``domid`` (a caller bug, not guest input). Safe to call from several threads: the
        host's lock is held for the whole call (once for a whole multicall).
        """
        if op == TMEM_OP and args:  # the data path: skip the generic argument shuffle
            return self.tmem_op(domid, args[0])
        self._acquire()
        try:
            try:
                dom = self.domains.get(domid)
                if dom is None:
                    self._no_domain(domid)
                handler = self._handlers.get(op)
                if handler is None:
                    return ENOSYS
                a = [x & U64 for x in args[:6]]
                a += [0] * (6 - len(a))
                return handler(dom, *a)
            except HypervisorCrash as crash:
                reason = str(crash)
            # Crash outside the handler: its traceback kept the crashing frames, and with them
            # views of guest memory that would stop the domains' memory from being unmapped.
            self._crash(reason)
        finally:
            self._release()

    def tmem_op(self, domid: int, addr: int) -> int:
        """``hypercall(domid, Hypercall.tmem_op, addr)``: the single-op data path, with
        nothing of the generic argument handling."""
        self._acquire()  # cheaper than ``with``
        try:
            try:
                dom = self.domains.get(domid)
                if dom is None:
                    self._no_domain(domid)
                return self._hc_tmem_op(dom, addr & U64)
            except HypervisorCrash as crash:
                reason = str(crash)
            self._crash(reason)  # outside the handler, as in ``hypercall``
        finally:
            self._release()

    def _hc_tmem_op(self, dom: Domain, addr: int, *_: int) -> int:
        """``do_tmem_op`` in the dispatch order of ref §2.1."""
        if not self.tmem_enabled:
            return ENODEV if self.has_tmem else ENOSYS
        tm = self.tmem
        tm.Tt += 1
        cc = dom.client
        if cc is not None and dom.dying:
            tm.Te += 1
            return ENODEV
        pop = dom.populated
        if addr != dom.op_ok:  # clients reuse one op buffer: skip re-validating it
            if addr < PAGE or addr + STRUCT_SIZE > dom.size or not pop[addr >> 12] \
                    or not pop[(addr + STRUCT_SIZE - 1) >> 12]:
                tm.Te += 1
                return EFAULT
            dom.op_ok = addr
        mem = dom.mem
        t = _unpack_key(mem, addr)  # cmd, pool_id, oid[3], index, cmfn
        cmd = t[0]
        if cmd in PAGE_OPS:  # the hot path
            if cc is None:
                cc = tm.create_client(dom)
            pool_id = t[1]
            if pool_id >> 4 or (pool := cc.pools[pool_id]) is None:  # outside 0..15, or empty
                tm.Te += 1
                return ENODEV
            cmfn = t[6]  # unsigned: 0 (the null frame) is never RAM we accept
            off = cmfn << 12 if cmfn and cmfn < dom.max_pages and pop[cmfn] else -1
            if cmd == PUT:
                if tm.free_list + self.heap_free - tm.reserve < 256 and not tm.ensure_free(cc):
                    tm.Te += 1
                    return ENOMEM
                rc = tm.put(cc, pool, t[2:5], t[5], dom.mv[off:off + PAGE] if off > 0 else None)
            else:
                rc = tm.get(dom, pool, t[2:5], t[5], off)
            if rc < 0:
                tm.Te += 1
            return rc
        pool_id = t[1]
        rc = self._tmem_other(dom, cc, cmd, pool_id, addr)
        if rc < 0:
            tm.Te += 1
        return rc

    def _tmem_other(self, dom: Domain, cc: Any, cmd: int, pool_id: int, addr: int) -> int:
        """Every command but PUT and GET, through the handlers named after them, in Xen's
        order: the control commands before the client exists, NEW_POOL and DESTROY_POOL
        before the pool id is checked, the rest on a pool; unknown ones -ENOSYS (4.4+) or 0."""
        handler = self._early_cmds.get(cmd)
        if handler is not None:
            return handler(dom, pool_id, addr)
        if cc is None:
            cc = self.tmem.create_client(dom)
        handler = self._client_cmds.get(cmd)
        if handler is not None:
            return handler(dom, cc, pool_id, addr)
        if not 0 <= pool_id < 16 or (pool := cc.pools[pool_id]) is None:
            return ENODEV
        handler = self._pool_cmds.get(cmd)
        if handler is None:
            return ENOSYS if self.behaviour.unknown_cmd_enosys else 0
        return handler(dom, cc, pool, _unpack_gen(dom.mem, addr))

    def _command_tables(self) -> None:
        """The handlers of ``_tmem_other``, by stage, for the commands this release has."""
        b = self.behaviour
        early = [TmemCmd.TMEM_CONTROL, TmemCmd.TMEM_AUTH, TmemCmd.TMEM_RESTORE_NEW]
        client = [TmemCmd.TMEM_NEW_POOL, TmemCmd.TMEM_DESTROY_POOL]
        pool = [TmemCmd.TMEM_FLUSH_PAGE, TmemCmd.TMEM_FLUSH_OBJECT]
        if b.old_page_ops:
            pool += [TmemCmd.TMEM_NEW_PAGE, TmemCmd.TMEM_READ, TmemCmd.TMEM_WRITE,
                     TmemCmd.TMEM_XCHG]

        def table(cmds: list[TmemCmd]) -> dict[int, Callable[..., int]]:
            return {int(c): getattr(self, "_" + c.name.lower()) for c in cmds}

        self._early_cmds = table(early)
        self._client_cmds = table(client)
        self._pool_cmds = table(pool)

    def _tmem_control(self, dom: Domain, pool_id: int, addr: int) -> int:
        b = self.behaviour
        if not b.control_hypercall:
            return EOPNOTSUPP
        if b.control_privileged and not dom.privileged:
            return EPERM
        return self.control.tmem_control(dom, TMEM_OP_CTRL.unpack_from(dom.mem, addr))

    def _tmem_auth(self, dom: Domain, pool_id: int, addr: int) -> int:
        if not self.behaviour.auth_restore_hypercall:
            return EOPNOTSUPP
        _, _, lo, hi, flags, arg1 = TMEM_OP_CREAT.unpack_from(dom.mem, addr)
        return self.control.tmem_auth(dom, arg1, flags, (lo, hi))

    def _tmem_restore_new(self, dom: Domain, pool_id: int, addr: int) -> int:
        if not self.behaviour.auth_restore_hypercall:
            return EOPNOTSUPP
        _, _, lo, hi, flags, arg1 = TMEM_OP_CREAT.unpack_from(dom.mem, addr)
        return self.control.restore_new(dom, pool_id, arg1, flags, (lo, hi))

    def _tmem_new_pool(self, dom: Domain, cc: Any, pool_id: int, addr: int) -> int:
        _, _, lo, hi, flags, _ = TMEM_OP_CREAT.unpack_from(dom.mem, addr)
        return self.tmem.new_pool(cc, flags, (lo, hi))

    def _tmem_destroy_pool(self, dom: Domain, cc: Any, pool_id: int, addr: int) -> int:
        return self.tmem.destroy_pool(cc, pool_id)

    def _tmem_flush_page(self, dom: Domain, cc: Any, pool: Any, t: tuple[int, ...]) -> int:
        return self.tmem.flush_page(cc, pool, t[2:5], t[5])

    def _tmem_flush_object(self, dom: Domain, cc: Any, pool: Any, t: tuple[int, ...]) -> int:
        return self.tmem.flush_object(cc, pool, t[2:5])

    def _tmem_new_page(self, dom: Domain, cc: Any, pool: Any, t: tuple[int, ...]) -> int:
        if not self.tmem.ensure_free(cc):
            return ENOMEM
        return self.tmem.put(cc, pool, t[2:5], t[5], bytes(PAGE))

    def _tmem_read(self, dom: Domain, cc: Any, pool: Any, t: tuple[int, ...]) -> int:
        off = dom.frame_offset(t[9])
        if off >= 0:
            dom.touched(off, PAGE)  # it may copy into the frame
        return self.tmem.partial(cc, pool, t[2:5], t[5], dom.mem, off, t[6], t[7], t[8],
                                 False)

    def _tmem_write(self, dom: Domain, cc: Any, pool: Any, t: tuple[int, ...]) -> int:
        return self.tmem.partial(cc, pool, t[2:5], t[5], dom.mem, dom.frame_offset(t[9]),
                                 t[6], t[7], t[8], True)

    def _tmem_xchg(self, dom: Domain, cc: Any, pool: Any, t: tuple[int, ...]) -> int:
        return 0  # never implemented: 0 like any unknown command before 4.4

    def _hc_sysctl(self, dom: Domain, addr: int, *_: int) -> int:
        """``do_sysctl``: copy-in, interface version, privilege, then the tmem op only."""
        raw = dom.read(addr, SYSCTL_TMEM_OP.size)
        if raw is None:
            return EFAULT
        fields = SYSCTL_TMEM_OP.unpack(raw)
        expected = SYSCTL_INTERFACE_VERSION.get(self.version)
        if expected is not None and fields[1] != expected:
            return EACCES
        if not dom.privileged:
            return EPERM
        if fields[0] != XEN_SYSCTL_tmem_op or not self.behaviour.sysctl or not self.has_tmem:
            return ENOSYS
        return self.control.sysctl(dom, fields)

    def _hc_xen_version(self, dom: Domain, cmd: int, arg: int, *_: int) -> int:
        if cmd == XenVersionCmd.XENVER_version:
            return self.version.word
        if cmd == XenVersionCmd.XENVER_extraversion:
            text = self.extraversion.encode()[:15].ljust(16, b"\0")
            return 0 if dom.write(arg, text) else EFAULT
        if cmd == XenVersionCmd.XENVER_pagesize:
            return PAGE
        return ENOSYS

    def _hc_multicall(self, dom: Domain, addr: int, count: int, *_: int) -> int:
        """Run ``count`` 64-byte ``multicall_entry``s, writing each result back in place."""
        size = MULTICALL_ENTRY.size
        if count > 0x10000 or not dom.valid(addr, count * size):
            return EFAULT
        if count > 1 and self._tmem_run(dom, addr, count):
            return 0
        mem = dom.mem
        handlers = self._handlers
        tmem_op = self._hc_tmem_op
        for pos in range(addr, addr + count * size, size):
            op, _, a0, a1, a2, a3, a4, a5 = _unpack_entry(mem, pos)
            if op == TMEM_OP:
                rc = tmem_op(dom, a0)
            elif op == Hypercall.multicall:
                rc = EINVAL  # Xen refuses multicall reentry
            else:
                handler = handlers.get(op)
                rc = handler(dom, a0, a1, a2, a3, a4, a5) if handler is not None else ENOSYS
            _pack_result(mem, pos + 8, rc)
        dom.touched(addr, count * size)
        return 0

    def _tmem_run(self, dom: Domain, addr: int, count: int) -> bool:
        """The batched data path: a multicall whose entries all call tmem_op on consecutive
        56-byte structs, all PUT or all GET into one pool, decoded with one unpack each and run
        by ``Tmem.put_run``/``get_run``. The results are exactly those of the entries run one
        by one; False (nothing done) when the multicall is anything else, or when running it
        in one go could differ: structs not all valid, or a page frame that overlaps the
        entries or the structs (a GET writing there, or a PUT reading a result, would change
        what a later op reads)."""
        mem = dom.mem
        heads = _entry_heads(count).unpack_from(mem, addr)  # (op, args[0]) of each entry
        first = heads[1]
        end = first + count * STRUCT_SIZE
        if heads[0::2].count(TMEM_OP) != count or heads[1::2] != _strides(first, count) \
                or not self.tmem_enabled or (dom.client is not None and dom.dying) \
                or not dom.valid(first, end - first) or (first < addr + count * 64 and addr < end):
            return False
        fields = _gen_keys(count).unpack_from(mem, first)
        cmd, pool_id = fields[0], fields[1]
        cmfns = fields[6::7]
        if cmd not in PAGE_OPS or fields[0::7].count(cmd) != count \
                or fields[1::7].count(pool_id) != count \
                or not _frames(addr, count * 64, first, end).isdisjoint(cmfns):
            return False
        tm = self.tmem
        tm.Tt += count
        dom.op_ok = end - STRUCT_SIZE
        cc = dom.client or tm.create_client(dom)
        if not 0 <= pool_id < 16 or (pool := cc.pools[pool_id]) is None:
            results = [ENODEV] * count
        else:
            columns = (fields[2::7], fields[3::7], fields[4::7], fields[5::7], cmfns)
            results = tm.put_run(cc, pool, dom, *columns) if cmd == PUT else \
                tm.get_run(pool, dom, *columns)
        failed = count - results.count(1) - results.count(0)
        if failed:
            tm.Te += failed
        # Each entry's ``result`` word (the second of eight), written in one strided store.
        with dom.mv[addr:addr + count * 64] as raw, raw.cast("q") as words:
            words[1::8] = array.array("q", results)
        if dom.dirty is not None:
            dom.touched(addr, count * 64)
            if cmd == GET:  # GETs wrote into their frames
                dom.dirty.update(cmfns)
        return True

    def _hc_memory_op(self, dom: Domain, cmd: int, addr: int, *_: int) -> int:
        """XENMEM_increase/decrease_reservation for DOMID_SELF (how a PV domain gets frames)."""
        if cmd not in (XenMemOp.XENMEM_increase_reservation,
                       XenMemOp.XENMEM_decrease_reservation):
            return ENOSYS
        raw = dom.read(addr, XEN_MEMORY_RESERVATION.size)
        if raw is None:
            return EFAULT
        extents, nr, order, _flags, domid = XEN_MEMORY_RESERVATION.unpack(raw)
        if domid not in (DOMID_SELF, dom.domid):
            return EPERM if not dom.privileged else ENOSYS
        if order != 0 or nr > 1 << 20:
            return EINVAL
        if not dom.valid(extents, nr * 8):
            return EFAULT
        done = 0
        if cmd == XenMemOp.XENMEM_increase_reservation:
            for _ in range(nr):
                frame = dom.populated.find(0, 1)
                if dom.tot_pages >= dom.max_pages or frame < 0:
                    break
                if self.heap_free <= 0:
                    self.heap_free += self.tmem.relinquish(1)
                    if self.heap_free <= 0:
                        break
                dom.write(extents + done * 8, frame.to_bytes(8, "little"))
                dom.populated[frame] = 1
                dom.avail[frame] = 1
                dom.nr_pages += 1
                self.heap_free -= 1
                done += 1
            return done
        for i in range(nr):
            frame = int.from_bytes(dom.mem[extents + i * 8:extents + i * 8 + 8], "little")
            if not 0 < frame < dom.max_pages or not dom.populated[frame]:
                break
            dom.populated[frame] = 0
            dom.avail[frame] = 0
            dom.op_ok = -1
            dom.mem[frame * PAGE:(frame + 1) * PAGE] = bytes(PAGE)
            dom.touched(frame * PAGE, PAGE)
            dom.nr_pages -= 1
            self.heap_free += 1
            done += 1
        return done
