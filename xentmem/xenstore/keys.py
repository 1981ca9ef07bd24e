"""The xenstore keys dom0 and the guest agent talk through, stated once for both sides (the
contract of DESIGN §3a, owned by neither: ``host/`` and ``agent/`` both import it from here).

Paths are relative to the guest's home ``/local/domain/<domid>`` (the agent uses them as they
are; the host prefixes :func:`domain_path`). ``control/`` is writable by dom0 only and readable
by the guest; ``data/`` belongs to the guest (toolstack layout, ``xentmem.xenstore.toolstack``),
so everything the host reads from ``data/`` is untrusted until sanitised.

A setting has one name everywhere: the key's ``name`` here, the ``xentmem guest set`` option
``--name`` with ``_`` written ``-`` (``reserved_mb`` is ``--reserved-mb``; flags
``--name/--no-name``), and the knob name ``xentmem tune`` sweeps and recommends.

Each :class:`Key` carries its limits. Both the CLI (exit 2 on bad input) and the agent (state
``refused``) check them, so a value that reaches the guest through another route (an admin's
``xenstore-write``) is held to the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BALLOON_KEYS",
    "CONTROL_SEQ",
    "DATA",
    "DATA_HEARTBEAT",
    "DATA_HEARTBEAT_INTERVAL",
    "DATA_MODE",
    "DATA_REASON",
    "DATA_REFUSED",
    "DATA_SEQ",
    "DATA_SINK",
    "DATA_STATE",
    "KEYS",
    "KNOBS",
    "MAX_SEQ",
    "MEMINFO_KEYS",
    "MODES",
    "RAMSTER_STATS",
    "RAMSTER_STATS_KEYS",
    "STATES",
    "STATS_KEYS",
    "TOGGLES",
    "VMSTAT_KEYS",
    "Key",
    "balloon_key",
    "key",
    "meminfo_key",
    "stats_key",
    "vmstat_key",
]

MAX_SEQ = 0x7FFFFFFF  # the request counter wraps here (kept within a signed 32-bit int)
MAX_MB = 1 << 20  # 1 TiB: beyond any guest of a tmem-era host


@dataclass(frozen=True)
class Key:
    """One setting: its name, where dom0 requests it and the agent reports it, its limits."""

    name: str
    control: str  # dom0 writes the requested value here
    data: str  # the agent publishes the applied value here
    lo: int
    hi: int
    boolean: bool
    help: str

    def describe_range(self) -> str:
        return "0 or 1" if self.boolean else f"an integer in [{self.lo}, {self.hi}]"


def _toggle(name: str, help: str) -> Key:
    return Key(name, f"control/tmem/{name}", f"data/tmem/{name}", 0, 1, True, help)


def _knob(name: str, lo: int, hi: int, help: str) -> Key:
    return Key(name, f"control/selfballoon/{name}", f"data/tmem/selfballoon/{name}", lo, hi,
               False, help)


TOGGLES: tuple[Key, ...] = (
    _toggle("frontswap", "tmem frontswap (swap pages to Xen)"),
    _toggle("cleancache", "tmem cleancache (clean page cache to Xen)"),
    _toggle("selfballooning", "self-ballooning"),
    _toggle("selfshrinking", "frontswap self-shrinking"),
)
# Limits: the kernel rejects 0 for every numeric knob (ref §4.3), so min_usable_mb/reserved_mb
# admit 0 only as "leave it at the default 0"; the agent refuses to write a 0.
KNOBS: tuple[Key, ...] = (
    _knob("interval", 1, 3600, "seconds between self-balloon runs"),
    _knob("downhysteresis", 1, 10000, "divisor applied when shrinking"),
    _knob("uphysteresis", 1, 10000, "divisor applied when growing"),
    _knob("min_usable_mb", 0, MAX_MB, "MiB never ballooned away (0 = kernel formula)"),
    _knob("reserved_mb", 0, MAX_MB, "MiB added to the self-balloon goal"),
    _knob("frontswap_hysteresis", 1, 10000,
          "frontswap self-shrink: bring back 1/N of the frontswap pages per run"),
    _knob("frontswap_inertia", 1, 10000,
          "frontswap self-shrink: runs without frontswap growth before shrinking"),
)
KEYS: tuple[Key, ...] = TOGGLES + KNOBS
_BY_NAME = {k.name: k for k in KEYS}

CONTROL_SEQ = "control/tmem/seq"  # dom0 bumps it with every request (same transaction)
DATA = "data/tmem"
DATA_SEQ = "data/tmem/seq"  # the control seq the agent's report answers; written last
DATA_STATE = "data/tmem/state"  # one of STATES
DATA_REASON = "data/tmem/reason"  # one line; empty when applied
DATA_REFUSED = "data/tmem/refused"  # one node per refused key: why
DATA_SINK = "data/tmem/sink"  # "sysfs" or "model": what the agent drives
# who runs the self-balloon law: the kernel's driver, or (5.3+ kernels) the agent itself
DATA_MODE = "data/tmem/mode"
MODES = ("kernel", "user-space")
# Liveness: the agent's clock (whole seconds since the epoch) at every publish, and the seconds
# between publishes; dom0 calls an agent silent when the heartbeat falls well behind.
DATA_HEARTBEAT = "data/tmem/heartbeat"
DATA_HEARTBEAT_INTERVAL = "data/tmem/heartbeat_interval"
STATES = ("applied", "refused")
STATS_KEYS = (  # data/tmem/stats/<name>: the debugfs counters (ref §1.7, §2.3)
    "frontswap_succ_stores", "frontswap_failed_stores", "frontswap_loads",
    "frontswap_invalidates", "cleancache_succ_gets", "cleancache_failed_gets",
    "cleancache_puts", "cleancache_invalidates",
)
# RAMster's debugfs counters (sys/kernel/debug/ramster/<name>), published only by guests that
# run it, as data/tmem/stats/ramster_<name>
RAMSTER_STATS = (
    "remote_eph_pages", "remote_pers_pages", "foreign_eph_pages", "foreign_pers_pages",
    "remotified_pages", "remotify_failed", "repatriated_pages", "remote_gets",
    "remote_get_misses", "lost_pers_pages", "dropped_eph_pages", "recovered_pers_pages",
    "durable_writes", "nodes_alive", "bad_frames",
)
RAMSTER_STATS_KEYS = tuple(f"ramster_{name}" for name in RAMSTER_STATS)
BALLOON_KEYS = ("current_kib", "target_kib")  # data/tmem/balloon/<name>
# data/tmem/meminfo/<name>: /proc/meminfo lines in kB, what a host memory manager weighs
MEMINFO_KEYS = ("MemTotal", "MemFree", "Cached", "SwapTotal", "SwapFree", "Committed_AS")
VMSTAT_KEYS = ("pswpin", "pswpout")  # data/tmem/vmstat/<name>: pages swapped since boot


def stats_key(name: str) -> str:
    """Where the agent publishes debugfs counter ``name`` (one of :data:`STATS_KEYS`)."""
    return f"{DATA}/stats/{name}"


def balloon_key(name: str) -> str:
    """Where the agent publishes balloon value ``name`` (one of :data:`BALLOON_KEYS`)."""
    return f"{DATA}/balloon/{name}"


def meminfo_key(name: str) -> str:
    """Where the agent publishes ``/proc/meminfo`` field ``name`` (one of :data:`MEMINFO_KEYS`)."""
    return f"{DATA}/meminfo/{name}"


def vmstat_key(name: str) -> str:
    """Where the agent publishes ``/proc/vmstat`` counter ``name`` (one of :data:`VMSTAT_KEYS`)."""
    return f"{DATA}/vmstat/{name}"


def key(name: str) -> Key:
    """The key called ``name`` (``KeyError`` if there is none)."""
    return _BY_NAME[name]
