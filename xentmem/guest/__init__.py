"""The guest kernel model: swap devices, filesystems and page cache, frontswap and cleancache
with lazy backend registration (the seed) and backend unload, the tmem and compressed backends,
the balloon and self-balloon drivers, and their sysfs/debugfs view.
"""

from xentmem.guest.backends import BackendModule, Ramster, UnloadReport, XenTmem, Zcache
from xentmem.guest.balloon import (
    Balloon,
    HypervisorReservation,
    InMemoryTargetSource,
    SelfBalloon,
    TargetSource,
)
from xentmem.guest.cleancache import Cleancache, CleancacheOps
from xentmem.guest.frontswap import DrainReport, Frontswap, FrontswapOps
from xentmem.guest.fs import Filesystem, FsDisk
from xentmem.guest.guest import Guest, GuestStats, anon_content
from xentmem.guest.kernel import Kernel
from xentmem.guest.selfballoon import MemorySnapshot, SelfBalloonKnobs
from xentmem.guest.swap import FileSlotStore, MemorySlotStore, SlotStore, SwapDevice
from xentmem.guest.sysfs import SysfsView
from xentmem.guest.workload import Workload, WorkloadSpec

__all__ = [
    "BackendModule",
    "Balloon",
    "Cleancache",
    "CleancacheOps",
    "DrainReport",
    "FileSlotStore",
    "Filesystem",
    "Frontswap",
    "FrontswapOps",
    "FsDisk",
    "Guest",
    "GuestStats",
    "HypervisorReservation",
    "InMemoryTargetSource",
    "Kernel",
    "MemorySlotStore",
    "MemorySnapshot",
    "Ramster",
    "SelfBalloon",
    "SelfBalloonKnobs",
    "SlotStore",
    "SwapDevice",
    "SysfsView",
    "TargetSource",
    "UnloadReport",
    "Workload",
    "WorkloadSpec",
    "XenTmem",
    "Zcache",
    "anon_content",
]
