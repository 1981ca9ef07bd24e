"""The emulated Xen host: hypervisor-side tmem, faithful to the byte and the errno.

``EmulatedHost`` imitates one Xen release (4.1 … 4.12; default 4.12) as ``ref/xen-tmem-abi.md``
§2-§4, §7 and §9 describe it, including the defects a real release showed (§9), unless built with
``designed=True``. It eats the same bytes a real hypervisor does: the 56-byte ``struct tmem_op``,
the 136-byte ``struct xen_sysctl``, ``multicall_entry`` arrays, guest buffers and frames, all
decoded with the codecs of ``xentmem.abi``.

Host API (what transports and the daemon use)::

    host = EmulatedHost(memory_mb=2048, xen_version="4.12", tmem=True, tmem_compress=False,
                        tmem_shared_auth=False, designed=False,
                        dom0_memory_mb=None)     # default min(256, memory_mb // 4)
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

Not modelled: dedup / tze (4.0-4.7 boot options), 32-bit guests, the v0 ABI of 4.0.x, cycle
counters (``Tc`` and the ≤4.3 ``T=`` timings read 0), LZO (``lz4.block`` stands in, so ``cb``
differs from a real host's while ``cp``/``cn`` follow the same rule), persistent-pool metadata
charged to the domain (a real 4.12.4 fitted 436 pages where the model fits 448), the ≤4.3
``T=`` counts (derived from the pool counters). ``to_state`` keeps domains,
tmem clients, pools, pages and counters; guest frame contents are not kept.
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
