"""The admin facade: what a host administrator asks about, over the real or emulated host."""

from xentmem._lazy import lazy_exports

__all__ = [
    "Check",
    "DomainInfo",
    "GuestInfo",
    "Host",
    "LibvirtConnection",
    "MemoryResult",
    "TmemReport",
    "ToggleResult",
    "run_checks",
]

# each name's module is imported on first use: importing a submodule (or this package)
# stays light
__getattr__, __dir__ = lazy_exports(__name__, {
    ".doctor": ("Check", "run_checks"),
    ".guests": ("GuestInfo", "Host", "MemoryResult", "TmemReport", "ToggleResult"),
    ".libvirt": ("DomainInfo", "LibvirtConnection"),
})
