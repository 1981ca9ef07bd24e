"""The typed client's frame ops (``Tmem.put_page_from`` / ``get_page_to``), the shape of Linux's
shim: the guest's page is a frame of the transport and the hypervisor's copy is the only one.
On a real in-process emulated host, with and without compression (the socket transport runs
the same ops in tests/daemon/test_transport.py)."""

from __future__ import annotations

import pytest

from xentmem.abi import PAGE_SIZE
from xentmem.emulator import EmulatedHost
from xentmem.emulator.transport import EmulatedHypervisor
from xentmem.errors import HostCrashed, TmemFault, TmemNoPoolError
from xentmem.hypercalls.tmem import Tmem


def _page(i: int) -> bytes:
    return (f"page {i:06d} of a text file; " * 160).encode()[:PAGE_SIZE]


@pytest.fixture(params=[False, True], ids=["raw", "compressed"])
def guest(request):
    host = EmulatedHost(128, tmem_compress=request.param)
    hv = EmulatedHypervisor(host, 0)
    tmem = Tmem(hv, version="4.12")
    frame = hv.alloc_frame()
    yield host, tmem, frame
    frame.close()
    tmem.close()


def test_a_page_goes_out_of_and_back_into_the_guest_frame(guest):
    host, tmem, frame = guest
    pool = tmem.new_pool(persistent=True)
    frame.write(_page(1))
    tmem.put_page_from(pool, 7, 1, frame)
    frame.write(bytes(PAGE_SIZE))
    assert tmem.get_page_to(pool, 7, 1, frame) is True
    assert frame.read() == _page(1)
    assert tmem.get_page(pool, 7, 1) == _page(1)  # the same page through the bytes API
    compressed = host.tmem_list(0, long=True).split("cp:")[1].split(",")[0]
    assert compressed == ("1" if host.boot["tmem_compress"] else "0")


def test_a_miss_leaves_the_frame_as_it_was(guest):
    _, tmem, frame = guest
    pool = tmem.new_pool(persistent=False)
    frame.write(b"\xab" * PAGE_SIZE)
    assert tmem.get_page_to(pool, 1, 0, frame) is False  # empty pool: -EEMPTY is a miss
    tmem.put_page(pool, 1, 0, _page(0))
    assert tmem.get_page_to(pool, 1, 5, frame) is False  # plain miss
    assert frame.read() == b"\xab" * PAGE_SIZE
    assert tmem.get_page_to(pool, 1, 0, frame) is True
    assert tmem.get_page_to(pool, 1, 0, frame) is False  # private ephemeral GET is destructive
    assert frame.read() == _page(0)


def test_errors_raise_and_bad_keys_issue_nothing(guest):
    host, tmem, frame = guest
    with pytest.raises(TmemNoPoolError):
        tmem.get_page_to(3, 1, 0, frame)
    pool = tmem.new_pool(persistent=True)
    before = host.tmem.Tt
    with pytest.raises(ValueError):
        tmem.put_page_from(pool, 1, -1, frame)
    with pytest.raises(ValueError):
        tmem.get_page_to(pool, (1, 2), 0, frame)
    assert host.tmem.Tt == before
    tmem.put_page(pool, 1, 0, _page(0))
    frame.close()  # its number is now 0: no RAM frame of the guest
    with pytest.raises(TmemFault):
        tmem.get_page_to(pool, 1, 0, frame)


def test_a_compressed_page_that_does_not_decode_crashes_the_host():
    """Xen ASSERTs that a stored page decompresses to a whole page; the emulator crashes the
    host there (every domain gone, a clear message), and nothing else escapes the entry."""
    host = EmulatedHost(64, tmem_compress=True)
    hv = EmulatedHypervisor(host, 0)
    tmem = Tmem(hv, version="4.12")
    pool = tmem.new_pool(persistent=True)
    tmem.put_page(pool, 1, 0, _page(0))
    stored = host.tmem.clients[0].pools[pool].objs[(1, 0, 0)].pages[0]
    assert stored.csize
    stored.data = stored.data[:-8]  # truncated: decodes to less than a page
    with pytest.raises(HostCrashed, match="decompress"):
        tmem.get_page(pool, 1, 0)
    assert host.domains == {}
