"""The admin facade: what a host administrator asks about, over the real or emulated host."""

from xentmem.host.doctor import Check, run_checks
from xentmem.host.guests import GuestInfo, Host, MemoryResult, TmemReport, ToggleResult
from xentmem.host.libvirt import DomainInfo, LibvirtConnection

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
