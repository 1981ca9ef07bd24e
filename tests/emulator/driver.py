"""Raw-bytes drivers for the emulated hypervisor: every call packs the real struct with
``xentmem.abi`` and goes through ``EmulatedHost.hypercall``, the way a guest's privcmd call
would reach Xen. No typed client in between, so these tests pin the ABI itself."""

from __future__ import annotations

import functools
import hashlib

from xentmem import abi
from xentmem.abi import PAGE_SIZE, TmemCmd, XenVersion
from xentmem.emulator import EmulatedHost
from xentmem.emulator.transport import EmulatedHypervisor

ALL = 0xFFFF
PRIV_PERS = abi.pool_flags(persistent=True)
PRIV_EPH = abi.pool_flags(persistent=False)
SHARED_EPH = abi.pool_flags(persistent=False, shared=True)
SHARED_PERS = abi.pool_flags(persistent=True, shared=True)
VERSIONS = ("4.1", "4.5", "4.12")


@functools.lru_cache(maxsize=4096)
def page(seed: int) -> bytes:
    """A deterministic, poorly compressible 4 KiB page."""
    out = bytearray()
    block = seed.to_bytes(8, "little")
    while len(out) < PAGE_SIZE:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:PAGE_SIZE])


def text_page(seed: int) -> bytes:
    """A compressible 4 KiB page."""
    return (f"page {seed} ".encode() * 1000)[:PAGE_SIZE]


class Guest:
    """One domain issuing raw hypercalls."""

    def __init__(self, host: EmulatedHost, domid: int) -> None:
        self.host = host
        self.domid = domid
        self.hv = EmulatedHypervisor(host, domid)
        self.opbuf = self.hv.alloc_buffer(abi.SYSCTL_TMEM_OP.size)
        self.out = self.hv.alloc_buffer(5 * PAGE_SIZE)
        self.frame = self.hv.alloc_frame()
        self.version = host.version

    def raw(self, data: bytes) -> int:
        self.opbuf.write(data)
        return self.host.hypercall(self.domid, abi.Hypercall.tmem_op, self.opbuf.address)

    def op(self, cmd: int, pool_id: int = 0, **fields) -> int:
        return self.raw(abi.pack_tmem_op(cmd, pool_id, **fields))

    def new_pool(self, flags: int = PRIV_PERS, uuid: tuple[int, int] = (0, 0)) -> int:
        return self.op(TmemCmd.TMEM_NEW_POOL, 0, flags=flags, uuid=uuid)

    def destroy(self, pool: int) -> int:
        return self.op(TmemCmd.TMEM_DESTROY_POOL, pool)

    def put(self, pool: int, oid, index: int, data: bytes, cmfn: int | None = None) -> int:
        self.frame.write(data)
        oid = oid if isinstance(oid, tuple) else (oid, 0, 0)
        return self.op(TmemCmd.TMEM_PUT_PAGE, pool, oid=oid, index=index,
                       cmfn=self.frame.number if cmfn is None else cmfn)

    def get(self, pool: int, oid, index: int, cmfn: int | None = None) -> tuple[int, bytes]:
        self.frame.write(b"\xee" * PAGE_SIZE)
        oid = oid if isinstance(oid, tuple) else (oid, 0, 0)
        rc = self.op(TmemCmd.TMEM_GET_PAGE, pool, oid=oid, index=index,
                     cmfn=self.frame.number if cmfn is None else cmfn)
        return rc, self.frame.read()

    def flush(self, pool: int, oid, index: int) -> int:
        oid = oid if isinstance(oid, tuple) else (oid, 0, 0)
        return self.op(TmemCmd.TMEM_FLUSH_PAGE, pool, oid=oid, index=index)

    def flush_object(self, pool: int, oid) -> int:
        oid = oid if isinstance(oid, tuple) else (oid, 0, 0)
        return self.op(TmemCmd.TMEM_FLUSH_OBJECT, pool, oid=oid)

    # -- control plane, through whatever path the imitated release had --

    def ctl(self, name: str, cli: int = ALL, *, pool_id: int = 0, arg1: int = 0, arg2: int = 0,
            oid=(0, 0, 0), buf: int | None = None, length: int | None = None,
            arg: int | None = None, pad: int = 0) -> int:
        """A control op by name. ``arg1``/``arg2`` are the ≤4.7 names; on 4.8+ ``length`` and
        ``arg`` default to the same positions (``arg1`` -> len, ``arg2`` -> arg)."""
        code = abi.control_subop(self.version, name)
        buf = self.out.address if buf is None else buf
        if self.version.control_via_sysctl:
            data = abi.pack_sysctl_tmem_op(
                self.version, code, pool_id=pool_id, cli_id=cli,
                length=arg1 if length is None else length, arg=arg2 if arg is None else arg,
                oid=oid, buf=buf, pad=pad)
            self.opbuf.write(data)
            return self.host.hypercall(self.domid, abi.Hypercall.sysctl, self.opbuf.address)
        return self.op(TmemCmd.TMEM_CONTROL, pool_id, subop=code, cli_id=cli, arg1=arg1,
                       arg2=arg2, oid=oid, buf=buf)

    def value_arg(self, value: int) -> dict[str, int]:
        """Where FLUSH KiB / SAVE_BEGIN live / SET_* values go on this release."""
        return {"arg": value} if self.version >= XenVersion(4, 8) else {"arg1": value}

    def list(self, cli: int = ALL, *, use_long: bool = False,
             length: int = 5 * PAGE_SIZE) -> tuple[int, str]:
        self.out.write(bytes(self.out.size))
        rc = self.ctl("LIST", cli, arg1=length, arg2=int(use_long))
        raw = self.out.read()
        return rc, raw[:raw.index(b"\0")].decode() if b"\0" in raw else raw.decode()

    def auth(self, cli: int, uuid: tuple[int, int], enable: bool = True) -> int:
        """TMEM_AUTH (≤4.8) or sysctl SET_AUTH (4.9+)."""
        if self.version >= XenVersion(4, 9):
            entry = abi.XEN_TMEM_POOL_INFO.pack(4 if enable else 0, 0, 0, *uuid)
            self.out.write(entry)
            return self.ctl("SET_AUTH", cli, arg1=32)
        return self.op(TmemCmd.TMEM_AUTH, 0, uuid=uuid, flags=int(enable), arg1=cli)


def make(version: str = "4.12", *, memory_mb: int = 512, guests: int = 0,
         **options) -> tuple[EmulatedHost, list[Guest]]:
    host = EmulatedHost(memory_mb, xen_version=version, **options)
    out = [Guest(host, 0)]
    for i in range(guests):
        out.append(Guest(host, host.create_domain(f"guest{i + 1}", 64, 128)))
    return host, out
