"""``Buffer.packer`` (the data path's argument struct written in one step) on every transport
that can run here: the in-process emulator, the daemon over its socket, and privcmd's locked
process memory (no hypercall needed to check where the bytes land)."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

import pytest

from xentmem.abi import TMEM_OP_GEN, Hypercall
from xentmem.emulator import EmulatedHost
from xentmem.emulator.transport import EmulatedHypervisor
from xentmem.hypercalls import Buffer
from xentmem.hypercalls.privcmd import LockedBuffer
from xentmem.hypercalls.socket import SocketHypervisor

# Each kind: the buffer, and what the hypervisor side sees in it.
Kind = tuple[Buffer, Callable[[], bytes]]


@pytest.fixture(params=["emulated", "socket", "locked"])
def kind(request: pytest.FixtureRequest) -> Iterator[Kind]:
    size = TMEM_OP_GEN.size
    if request.param == "emulated":
        host = EmulatedHost(64)
        buf = EmulatedHypervisor(host, 0).alloc_buffer(size)
        yield buf, lambda: host.read_memory(0, buf.address, size)
    elif request.param == "socket":
        d = request.getfixturevalue("make_daemon")(memory_mb=64)
        with SocketHypervisor(d.directory, 0) as remote:
            buf = remote.alloc_buffer(size)

            def peek() -> bytes:
                remote.hypercall(Hypercall.xen_version, 0, 0)  # written buffers ride along
                return d.daemon.host.read_memory(0, buf.address, size)

            yield buf, peek
    else:
        buf = LockedBuffer(size)
        yield buf, lambda: buf.read()
    buf.close()


def test_packer_writes_the_struct_where_the_hypervisor_reads_it(kind: Kind) -> None:
    buf, peek = kind
    pack = buf.packer(TMEM_OP_GEN)
    for values in [(5, 3, 1, 2, 3, 7, 0, 0, 0, 99), (4, 0, 2**64 - 1, 0, 9, 2**32 - 1, 0, 0, 0, 1)]:
        pack(*values)
        assert buf.read() == peek() == TMEM_OP_GEN.pack(*values)


def test_packer_refuses_a_struct_that_does_not_fit(kind: Kind) -> None:
    buf, peek = kind
    buf.write(b"\x07" * buf.size)
    with pytest.raises(ValueError, match="overflows"):
        buf.packer(struct.Struct(f"<{buf.size + 1}s"))
    assert buf.read() == peek() == b"\x07" * buf.size
    with pytest.raises(struct.error):  # values are the caller's to check (Tmem does, first)
        buf.packer(TMEM_OP_GEN)(5, 3, -1, 0, 0, 0, 0, 0, 0, 0)
