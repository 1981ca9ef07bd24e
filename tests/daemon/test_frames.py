"""The ``Frames`` contract (runs of page frames for batched PUT/GET) on every transport that can
run here: the in-process emulator, the daemon over its socket, and privcmd's pagemap frames
(real locked pages of this process and the PFNs /proc/self/pagemap reports; root only). The
PV kind, frames from XENMEM_increase_reservation, runs in tests/live on a real Xen."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from xentmem.abi import PAGE_SIZE, Hypercall, XenVersionCmd
from xentmem.emulator import EmulatedHost
from xentmem.emulator.transport import EmulatedHypervisor
from xentmem.hypercalls import Frames, Hypervisor
from xentmem.hypercalls.privcmd import _PagemapFrames
from xentmem.hypercalls.socket import SocketHypervisor

COUNT = 5


def page(i: int) -> bytes:
    return bytes([i]) * (PAGE_SIZE - 4) + i.to_bytes(4, "little")


# Each kind: (frames, what the hypervisor sees at a frame number, or None when it cannot be
# looked at from here, and the transport, to let the hypervisor write into a frame).
Kind = tuple[Frames, Callable[[int], bytes] | None, Hypervisor | None]


@pytest.fixture(params=["emulated", "socket", "pagemap"])
def kind(request: pytest.FixtureRequest) -> Iterator[Kind]:
    if request.param == "emulated":
        host = EmulatedHost(64)
        mem = host.domains[0].mem
        hv = EmulatedHypervisor(host, 0)
        frames = hv.alloc_frames(COUNT)
        yield frames, lambda n: mem[n * PAGE_SIZE:(n + 1) * PAGE_SIZE], hv
    elif request.param == "socket":
        d = request.getfixturevalue("make_daemon")(memory_mb=128)
        mem = d.daemon.host.domains[0].mem
        with SocketHypervisor(d.directory, 0) as remote:
            frames = remote.alloc_frames(COUNT)

            def peek(number: int) -> bytes:
                remote.hypercall(Hypercall.xen_version, 0, 0)  # dirty pages ride along
                return mem[number * PAGE_SIZE:(number + 1) * PAGE_SIZE]

            yield frames, peek, remote
    else:
        if os.geteuid() != 0:
            pytest.skip("pagemap reports PFNs to root only")
        # what PrivcmdHypervisor.alloc_frames makes on HVM/PVH (no privcmd device here)
        frames = _PagemapFrames(COUNT)
        yield frames, None, None
    frames.close()


def test_frames_move_whole_pages_by_index(kind: Kind) -> None:
    frames, peek, hv = kind
    numbers = frames.numbers
    assert len(numbers) == len(set(numbers)) == COUNT and 0 not in numbers
    frames.write(b"".join(page(i) for i in range(COUNT)))
    frames.write(page(42), 3)
    expected = [page(i) for i in range(COUNT)]
    expected[3] = page(42)
    assert frames.read() == b"".join(expected)
    assert frames.read(1, 2) == expected[1] + expected[2]
    out = bytearray(2 * PAGE_SIZE)
    frames.read_into(out, 3)
    assert out == expected[3] + expected[4]
    if peek is not None:
        assert [peek(n) for n in numbers] == expected  # what the hypervisor reads
    if hv is not None:  # the hypervisor writes into a frame: what the guest reads changes
        hv.hypercall(Hypercall.xen_version, XenVersionCmd.XENVER_extraversion,
                     numbers[4] * PAGE_SIZE + 8)
        written = frames.read(4)
        assert written[:8] == expected[4][:8] and written[24:] == expected[4][24:]
        assert written[8:24] != expected[4][8:24] and written[8:9] == b"."


@pytest.mark.parametrize(("call", "args"), [
    ("write", (b"x" * 100,)),
    ("write", (b"",)),
    ("write", (page(1), COUNT)),
    ("write", (page(1) * 2, COUNT - 1)),
    ("write", (page(1), -1)),
    ("read", (COUNT,)),
    ("read", (0, COUNT + 1)),
    ("read_into", (bytearray(PAGE_SIZE + 1),)),
    ("read_into", (bytearray((COUNT + 1) * PAGE_SIZE),)),
])
def test_frames_refuse_what_is_not_whole_pages_inside_the_run(kind: Kind, call: str,
                                                             args: tuple) -> None:
    frames, _, _ = kind
    frames.write(page(7) * COUNT)
    with pytest.raises(ValueError):
        getattr(frames, call)(*args)
    assert frames.read() == page(7) * COUNT  # nothing changed
