"""The guest kernel model: swap devices, filesystems and page cache, frontswap and cleancache
with lazy backend registration (the seed) and backend unload, the tmem and compressed backends,
the balloon and self-balloon drivers, and their sysfs/debugfs view.
"""

from xentmem._lazy import lazy_exports

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

# each name's module is imported on first use: importing a submodule (or this package)
# stays light
__getattr__, __dir__ = lazy_exports(__name__, {
    ".backends": ("BackendModule", "Ramster", "UnloadReport", "XenTmem", "Zcache"),
    ".balloon": (
        "Balloon", "HypervisorReservation", "InMemoryTargetSource", "SelfBalloon",
        "TargetSource",
    ),
    ".cleancache": ("Cleancache", "CleancacheOps"),
    ".frontswap": ("DrainReport", "Frontswap", "FrontswapOps"),
    ".fs": ("Filesystem", "FsDisk"),
    ".guest": ("Guest", "GuestStats", "anon_content"),
    ".kernel": ("Kernel",),
    ".selfballoon": ("MemorySnapshot", "SelfBalloonKnobs"),
    ".swap": ("FileSlotStore", "MemorySlotStore", "SlotStore", "SwapDevice"),
    ".sysfs": ("SysfsView",),
    ".workload": ("Workload", "WorkloadSpec"),
})
