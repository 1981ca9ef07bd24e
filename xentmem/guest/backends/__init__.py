"""Backends: kernel modules that register frontswap and cleancache ops, and (beyond any kernel)
can be unloaded again.

- ``XenTmem``: the Xen tmem shim (``drivers/xen/tmem.c``; ref §3) over a ``Tmem`` client;
- ``Zcache``: a compressed in-guest backend in the spirit of zcache (ref §6), lz4;
- ``Ramster``: zcache whose pages move to other nodes' RAM over TCP (ref §6).
"""

from xentmem._lazy import lazy_exports

__all__ = ["BackendModule", "Ramster", "UnloadReport", "XenTmem", "Zcache"]

# each name's module is imported on first use: importing a submodule (or this package)
# stays light
__getattr__, __dir__ = lazy_exports(__name__, {
    "._module": ("BackendModule", "Ramster", "UnloadReport"),
    ".ramster": ("Ramster",),
    ".tmem": ("XenTmem",),
    ".zcache": ("Zcache",),
})
