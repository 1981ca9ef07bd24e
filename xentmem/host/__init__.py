"""The admin facade: what a host administrator asks about, over the real or emulated host."""

from xentmem.host.doctor import Check, run_checks
from xentmem.host.libvirt import LibvirtConnection

__all__ = ["Check", "LibvirtConnection", "run_checks"]
