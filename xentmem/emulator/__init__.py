"""The emulated Xen host: hypervisor-side tmem, faithful to the byte and the errno.

``EmulatedHost`` imitates one Xen release (4.1 … 4.12; default 4.12) as ``ref/xen-tmem-abi.md``
§2-§4, §7 and §9 describe it, including the defects a real release showed (§9), unless built with
``designed=True``. It eats the same bytes a real hypervisor does: the 56-byte ``struct tmem_op``,
the 136-byte ``struct xen_sysctl``, ``multicall_entry`` arrays, guest buffers and frames, all
decoded with the codecs of ``xentmem.abi``.

Host API (what transports and the daemon use)::

    host = EmulatedHost(memory_mb=2048, xen_version="4.12", tmem=True, tmem_compress=False,
                        tmem_shared_auth=False, designed=False,
                        dom0_memory_mb=None,     # default min(256, memory_mb // 4)
                        tmem_dedup=False, tmem_tze=False)   # boot options of 4.0-4.7
    domid = host.create_domain("guest1", memory_mb=128, max_memory_mb=256)
    host.hypercall(domid, 38, struct_address)   # Xen's signed result, never raises for guest input
    host.tmem_op(domid, struct_address)         # the single-op tmem_op entry (same answers)
    host.lock                                   # RLock: hypercalls and the host API are thread-safe
    host.alloc_frames(domid, count, buffer=False) / host.free_frames(domid, first, count)
    host.read_memory(domid, address, size) / host.write_memory(domid, address, data)
    host.tmem_list(domid=None, long=False)      # what `xl tmem-list [-l] <dom>|-a` prints
    host.destroy_domain(domid)                  # domain death, ref §3.2
    state = host.to_state(); host2 = EmulatedHost.from_state(state)   # plain data, picklable

The host is not thread-safe: a server calls it from one thread (or under one lock).
``bench_tmem()`` is the data-path benchmark behind ``xentmem bench tmem``.

Guest addresses are ``frame * 4096 + offset`` in the calling domain's address space; frame 0 is
the null page. ``alloc_frames(buffer=True)`` hands out hypercall buffers from the top of the
domain's RAM, plain frames (``cmfn``) from the bottom.

Errors. Guest input never raises: a bad pointer, frame, field or command gives the negative
errno the imitated Xen returned. Host-API misuse (unknown domid, no memory for a new domain)
raises ``xentmem.errors.EmulatorError``. Where the imitated release crashed (§9: a stale
invalidation list at SAVE_END after a live save, freed shared pools on 4.5), the host crashes:
every domain is gone and the call — and every later call on that host — raises
``xentmem.errors.HostCrashed`` with the reason; no Python traceback reaches a guest path.

Not modelled: 32-bit guests, the v0 ABI of 4.0.x, cycle
counters (``Tc`` and the ≤4.3 ``T=`` timings read 0), the ≤4.4 compressor (pages compress as
4.5+ does, byte for byte, so ``cb`` matches 4.5-4.12; 4.0-4.4's old LZO port never cleared its
dictionary, so its sizes depended on earlier pages), the ≤4.3
``T=`` counts (derived from the pool counters). ``to_state`` keeps domains,
tmem clients, pools, pages and counters; guest frame contents are not kept.

Memory (§9.4): tmem's own structures (objects, descriptors, radix nodes, compressed data) take
pages of Xen's sub-page pools, counted by bytes of blocks (per-version struct sizes, TLSF block
rounding), not by where each block sits: a pool's pages stay until it is empty. Ephemeral
metadata is freeable, persistent metadata is charged to the domain. Xen's own share of the RAM
is one calibrated figure per release (``Behaviour.xen_own_ppm``).

Dedup / tze (``tmem_dedup``, ``tmem_tze``; 4.0-4.7, ignored later): identical ephemeral pages
share one copy (whole, compressed, or trimmed of trailing zeros), with Xen's quirks (trimmed
copies never match again, a zero page's frame is never freed, a shared page gets one second
chance at eviction). A saved dedup host restores its pages and counters and shares them
again as they are restored.
"""

from xentmem._lazy import lazy_exports

__all__ = ["Behaviour", "BenchRow", "Domain", "EmulatedHost", "TmemBench", "bench_tmem"]

# each name's module is imported on first use: importing a submodule (or this package)
# stays light
__getattr__, __dir__ = lazy_exports(__name__, {
    "._behaviour": ("Behaviour",),
    "._bench": ("BenchRow", "TmemBench", "bench_tmem"),
    "._host": ("Domain", "EmulatedHost"),
})
