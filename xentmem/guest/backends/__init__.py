"""Backends: kernel modules that register frontswap and cleancache ops, and (beyond any kernel)
can be unloaded again.

- ``XenTmem``: the Xen tmem shim (``drivers/xen/tmem.c``; ref §3) over a ``Tmem`` client;
- ``Zcache``: a compressed in-guest backend in the spirit of zcache (ref §6), lz4;
- ``Ramster``: zcache whose pages move to other nodes' RAM over TCP (ref §6).
"""

from xentmem.guest.backends._module import BackendModule, UnloadReport
from xentmem.guest.backends.ramster import Ramster
from xentmem.guest.backends.tmem import XenTmem
from xentmem.guest.backends.zcache import Zcache

__all__ = ["BackendModule", "Ramster", "UnloadReport", "XenTmem", "Zcache"]
