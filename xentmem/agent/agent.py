"""The agent loop: watch ``control/``, apply through a :class:`~xentmem.agent.sinks.Sink`,
publish under ``data/tmem/`` (layout: :mod:`xentmem.xenstore.keys`).

Reconciling is level-triggered: every watch event re-reads *all* requested settings (in one
transaction, so a request written by dom0 in one transaction is seen whole), compares each with
what the guest reports, writes only what differs, reads it back, and publishes the result with
the request's sequence number last. Missing events therefore never lose a request, and a
restarted agent or a reconnected watch converges on the same state.

Who runs the self-balloon law (``data/tmem/mode``): the kernel's driver where its
``selfballoon/`` files exist (``kernel``); where they do not but the balloon driver is there and
the kernel is one that cannot have the driver (Linux 5.3+, or a release the agent cannot tell),
the agent itself (``user-space``, :mod:`xentmem.agent.userspace`): ``selfballooning`` and its
knobs are then kept by the agent, which runs the law every ``interval`` s between watch events,
and ``selfshrinking`` with its knobs is refused (no tmem, nothing to shrink). A 3.10-5.2 kernel
without the files was built without the driver: refused, as before (the kernel is the place to
fix that).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from xentmem.errors import XenStoreError, XenStoreNotFound, XenStoreUnavailable, XentmemError
from xentmem.guest.kernel import Kernel
from xentmem.guest.sysfs import BALLOON_DIR
from xentmem.xenstore import (
    Watch,
    XenStore,
    sanitize_bool,
    sanitize_int,
    sanitize_kib,
    sanitize_text,
    transaction,
)
from xentmem.xenstore.keys import (
    CONTROL_SEQ,
    DATA,
    DATA_HEARTBEAT,
    DATA_HEARTBEAT_INTERVAL,
    DATA_MODE,
    DATA_REASON,
    DATA_REFUSED,
    DATA_SEQ,
    DATA_SINK,
    DATA_STATE,
    KEYS,
    MAX_SEQ,
    MEMINFO_KEYS,
    RAMSTER_STATS_KEYS,
    STATS_KEYS,
    VMSTAT_KEYS,
    Key,
    balloon_key,
    meminfo_key,
    stats_key,
    vmstat_key,
)

from .procfs import parse_meminfo, parse_vmstat
from .sinks import Sink, module_param_path
from .userspace import LAW_KNOBS, TARGET_KB, Limits, UserSpaceSelfBalloon

__all__ = ["SYSFS_PATHS", "Agent", "Report"]

log = logging.getLogger("xentmem.agent")

_SB = f"{BALLOON_DIR}/selfballoon"
SYSFS_PATHS: dict[str, str] = {  # key name -> sysfs file (ref §3.1, §4.3)
    "frontswap": module_param_path("frontswap"),
    "cleancache": module_param_path("cleancache"),
    "selfballooning": f"{_SB}/selfballooning",
    "selfshrinking": f"{_SB}/frontswap_selfshrinking",
    "interval": f"{_SB}/selfballoon_interval",
    "downhysteresis": f"{_SB}/selfballoon_downhysteresis",
    "uphysteresis": f"{_SB}/selfballoon_uphysteresis",
    "min_usable_mb": f"{_SB}/selfballoon_min_usable_mb",
    "reserved_mb": f"{_SB}/selfballoon_reserved_mb",
    "frontswap_hysteresis": f"{_SB}/frontswap_hysteresis",
    "frontswap_inertia": f"{_SB}/frontswap_inertia",
}
_STATS_PATHS = {name: "sys/kernel/debug/{}/{}".format(*name.split("_", 1))
                for name in (*STATS_KEYS, *RAMSTER_STATS_KEYS)}
_BALLOON_PATHS = {"current_kib": f"{BALLOON_DIR}/info/current_kb",
                  "target_kib": f"{BALLOON_DIR}/target_kb"}
# Module parameters first (a reload resets the flags), the numeric knobs before the flags
# (0->1 of selfballooning schedules the worker after `interval`).
OSRELEASE = "proc/sys/kernel/osrelease"  # uname -r: which kernel refuses, and why
_MODULE_KEYS = ("frontswap", "cleancache")  # tmem module parameters, not sysfs knobs
_APPLY_ORDER = sorted(KEYS, key=lambda k: (k.name not in _MODULE_KEYS, k.boolean))
_U64 = (1 << 64) - 1
_REASON_MAX = 200  # data/tmem/reason is one line the host shows as is
_TARGET_SETTLE = 0.1  # s after a memory/target change before the balloon is republished
_HEARTBEAT = (DATA_HEARTBEAT, DATA_HEARTBEAT_INTERVAL)
# Who runs the self-balloon law; belongs with the other nodes in xentmem.xenstore.keys
_SHRINK_KEYS = frozenset({"selfshrinking", "frontswap_hysteresis", "frontswap_inertia"})
_LAW_KEYS = frozenset({*LAW_KNOBS, *_SHRINK_KEYS})  # what user-space mode keeps itself


@dataclass(frozen=True)
class Report:
    """The outcome of one reconcile: what the agent publishes under ``data/tmem``."""

    seq: int | None
    state: str  # "applied" | "refused"
    refused: dict[str, str] = field(default_factory=dict)  # key -> why
    applied: dict[str, int] = field(default_factory=dict)  # key -> value the guest reports

    @property
    def reason(self) -> str:
        text = "; ".join(f"{k}: {why}" for k, why in self.refused.items())
        return text if len(text) <= _REASON_MAX else text[: _REASON_MAX - 3] + "..."


def _parse_current(k: Key, text: str | None) -> int | None:
    if k.boolean:
        value = sanitize_bool(text)  # sysfs prints 0/1; module parameters print Y/N
        return None if value is None else int(value)
    return sanitize_int(text, -(1 << 31), 1 << 32)


def _shown(untrusted: bytes) -> str:
    return sanitize_text(untrusted[:32], 32) or f"<{len(untrusted)} unprintable bytes>"


class Agent:
    """Applies ``control/`` of one guest to ``sink`` and publishes ``data/tmem``.

    ``xs`` is a connection *as the guest* (xenbus inside a guest, or our xenstored's
    ``domain_socket(domid)``); all paths are relative to the guest's home. Counters, and the
    heartbeat (``clock()`` in whole seconds), are republished every ``stats_interval`` seconds.
    A one-shot agent (``heartbeat=False``, ``agent run --once``) publishes no heartbeat and takes
    down one that a running agent left, so dom0 never calls it silent between runs; nor can it
    run the self-balloon law in user space (it refuses ``selfballooning``). ``monotonic`` is the
    clock of the user-space law's runs (:attr:`selfballoon`).
    """

    def __init__(self, xs: XenStore, sink: Sink, *, stats_interval: float = 5.0,
                 max_backoff: float = 2.0, clock: Callable[[], float] = time.time,
                 heartbeat: bool = True,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if stats_interval <= 0:
            raise ValueError(f"stats_interval must be positive, not {stats_interval}")
        self.xs = xs
        self.sink = sink
        self.stats_interval = stats_interval
        self.max_backoff = max_backoff
        self.clock = clock
        self.heartbeat = heartbeat
        self.selfballoon = UserSpaceSelfBalloon(sink, clock=monotonic)
        self.report = Report(None, "applied")
        # what this agent last wrote under data/; a node listed here and not published again is
        # removed at the next publish (so a one-shot agent lists the heartbeat from the start)
        self._published: dict[str, str] = {} if heartbeat else dict.fromkeys(_HEARTBEAT, "")
        self._stop = threading.Event()
        self._reported = threading.Event()  # set once the first report is published
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one reconcile/publish at a time

    # --- one step ---------------------------------------------------------------------------

    def _read_control(self) -> tuple[int | None, dict[Key, bytes]]:
        def read(tx) -> tuple[int | None, dict[Key, bytes]]:
            seq = sanitize_int(tx.read(CONTROL_SEQ, None), 0, MAX_SEQ)
            values = {k: v for k in KEYS if (v := tx.read(k.control, None)) is not None}
            return seq, values

        return transaction(self.xs, read)

    def _kernel(self) -> Kernel | None:
        return Kernel.from_release(self.sink.read(OSRELEASE) or "")

    def mode(self) -> str | None:
        """Who runs the self-balloon law here: ``kernel``, ``user-space`` (this agent), or None
        (neither can)."""
        if self.sink.read(SYSFS_PATHS["selfballooning"]) is not None:
            return "kernel"
        if self.sink.read(TARGET_KB) is None:
            return None  # no balloon driver: nothing to move
        kernel = self._kernel()
        if kernel is not None and kernel.has_selfballoon:
            return None  # built without CONFIG_XEN_SELFBALLOONING
        return "user-space"

    def limits(self) -> Limits:
        """dom0's ``memory/target`` and ``memory/static-max`` for this domain, sanitised."""
        return Limits(sanitize_kib(self.xs.read("memory/target", None)),
                      sanitize_kib(self.xs.read("memory/static-max", None)))

    def _missing(self, k: Key, path: str) -> str:
        """Why ``k``'s file is absent: the running kernel's reason when it names one."""
        kernel = self._kernel()
        feature = "tmem" if k.name in _MODULE_KEYS else "selfballoon"
        if kernel is not None and not kernel.has_tmem:
            return kernel.missing(feature)
        if k.name in _MODULE_KEYS:
            return "the tmem module is not loaded"
        return f"/{path} is missing (kernel without self-ballooning?)"

    def _apply(self, k: Key, untrusted: bytes, mode: str | None) -> str | None:
        """Bring ``k`` to the requested value; None if done, else why not."""
        if k.boolean:
            flag = sanitize_bool(untrusted)
            wanted = None if flag is None else int(flag)
        else:
            wanted = sanitize_int(untrusted, k.lo, k.hi)
        if wanted is None:
            return f"{_shown(untrusted)!r} is not {k.describe_range()}"
        if mode == "user-space" and k.name in _LAW_KEYS:
            return self._apply_userspace(k.name, wanted)
        path = SYSFS_PATHS[k.name]
        current = _parse_current(k, self.sink.read(path))
        if current is None:
            return self._missing(k, path)
        if current == wanted:
            return None
        try:
            if k.name in _MODULE_KEYS:
                self.sink.set_module_param(k.name, bool(wanted))
            elif wanted == 0 and not k.boolean:
                # ref §4.3: numeric knobs reject 0, so a value once set cannot return to 0
                return f"the kernel rejects 0 (-EINVAL); it stays at {current}"
            else:
                self.sink.write(path, f"{wanted}\n")
        except XentmemError as exc:  # GuestError, or a hypercall failing during a reload
            return str(exc)
        after = _parse_current(k, self.sink.read(path))
        if after != wanted:
            return f"wrote {wanted}, the guest reports {after}"
        return None

    def _apply_userspace(self, name: str, wanted: int) -> str | None:
        """Keep a self-balloon setting in this agent (user-space mode)."""
        law = self.selfballoon
        if name in _SHRINK_KEYS:
            if name == "selfshrinking" and not wanted:
                return None
            kernel = self._kernel()
            why = kernel.missing("tmem") if kernel is not None else "this kernel has no tmem"
            return f"frontswap self-shrinking has nothing to act on without tmem: {why}"
        if law.applied()[name] == wanted:
            return None
        if not self.heartbeat:  # what it set would end with it
            return ("the kernel has no self-balloon driver and a one-shot agent (--once) cannot "
                    "run the law itself: run the agent as a service")
        if name != "selfballooning":
            law.set_knob(name, wanted)  # 0 is fine here: the law reads it as "the default"
            return None
        if not wanted:
            law.release(self.limits())
            return None
        reading = law.read(self.limits())
        if isinstance(reading, str):
            return f"cannot run the self-balloon law: {reading}"
        law.set_knob(name, wanted)
        return None

    def reconcile(self) -> Report:
        """Apply every requested setting and publish the outcome (thread-safe)."""
        with self._lock:
            seq, wanted = self._read_control()
            mode = self.mode()
            refused: dict[str, str] = {}
            for k in _APPLY_ORDER:
                if k in wanted:
                    why = self._apply(k, wanted[k], mode)
                    if why is not None:
                        refused[k.name] = why
            refused = {k.name: refused[k.name] for k in KEYS if k.name in refused}
            self.report = Report(seq, "refused" if refused else "applied", refused,
                                 self._applied(mode))
            if refused:
                log.warning("refused: %s", self.report.reason)
            self._publish(mode)
            return self.report

    def publish(self) -> None:
        """Republish applied values and counters (nothing is re-applied)."""
        with self._lock:
            self._republish()

    def _republish(self) -> None:
        mode = self.mode()
        r = self.report
        self.report = Report(r.seq, r.state, r.refused, self._applied(mode))
        self._publish(mode)

    def step_selfballoon(self) -> bool:
        """Run the user-space law if a run is due, and republish; whether it ran."""
        with self._lock:
            if not self.selfballoon.due():
                return False
            self.selfballoon.run(self.limits())
            self._republish()
            return True

    def release_selfballoon(self) -> None:
        """Give the balloon back to dom0's ``memory/target`` if this agent runs the law (the
        last target seen, when xenstore is gone), and say so under ``data/tmem`` if it can."""
        with self._lock:
            if not self.selfballoon.enabled:
                return
            try:
                limits: Limits | None = self.limits()
            except XenStoreError:
                limits = None
            kib = self.selfballoon.release(limits)
            log.info("user-space self-balloon off: balloon target back to %s KiB", kib)
            with contextlib.suppress(XenStoreError):
                self._republish()

    def _applied(self, mode: str | None) -> dict[str, int]:
        """What the guest has now, read back from the sink (and this agent, in user-space
        mode)."""
        applied = {k.name: v for k in KEYS
                   if (v := _parse_current(k, self.sink.read(SYSFS_PATHS[k.name]))) is not None}
        if mode == "user-space":
            applied.update(self.selfballoon.applied())
        return applied

    def _nodes(self, mode: str | None) -> dict[str, str]:
        r = self.report
        nodes = {DATA_SINK: self.sink.kind, DATA_STATE: r.state, DATA_REASON: r.reason}
        if mode is not None:
            nodes[DATA_MODE] = mode
        if self.heartbeat:
            nodes[DATA_HEARTBEAT] = str(int(self.clock()))
            nodes[DATA_HEARTBEAT_INTERVAL] = str(math.ceil(self.stats_interval))
        if r.seq is not None:
            nodes[DATA_SEQ] = str(r.seq)
        for k in KEYS:
            if k.name in r.applied:
                nodes[k.data] = str(r.applied[k.name])
        for name, why in r.refused.items():
            nodes[f"{DATA_REFUSED}/{name}"] = why[:_REASON_MAX]
        for where, paths in ((stats_key, _STATS_PATHS), (balloon_key, _BALLOON_PATHS)):
            for name, path in paths.items():
                value = sanitize_int(self.sink.read(path), 0, _U64)
                if value is not None:
                    nodes[where(name)] = str(value)
        # what the guest uses and how hard it swaps, for dom0's memory manager (xentmem balance)
        meminfo = parse_meminfo(self.sink.read("proc/meminfo")) or {}
        for name in MEMINFO_KEYS:
            if name in meminfo:
                nodes[meminfo_key(name)] = str(meminfo[name])
        for name, value in parse_vmstat(self.sink.read("proc/vmstat"), VMSTAT_KEYS).items():
            nodes[vmstat_key(name)] = str(value)
        return nodes

    def _publish(self, mode: str | None) -> None:
        nodes = self._nodes(mode)
        old = self._published
        changed = {p: v for p, v in nodes.items() if old.get(p) != v}
        gone = [p for p in old if p not in nodes]
        if not changed and not gone:
            return

        def write(tx) -> None:
            for path in gone:
                with contextlib.suppress(XenStoreNotFound):
                    tx.rm(path)
            for path, value in changed.items():
                tx.write(path, value)

        transaction(self.xs, write)
        self._published = nodes

    # --- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until :meth:`stop`: reconcile on every ``control/`` change, republish the
        balloon soon after ``memory/target`` changes and the counters every
        ``stats_interval`` s, run the user-space self-balloon law when due, reconnect with
        backoff when xenstore goes away. On the way out the balloon is given back to dom0's
        ``memory/target`` if this agent was self-ballooning."""
        backoff = 0.05
        watches: tuple[Watch, Watch] | None = None
        dirty = False  # control/ changed and has not been applied yet
        next_stats = time.monotonic() + self.stats_interval
        try:
            while not self._stop.is_set():
                try:
                    if watches is None:
                        with contextlib.suppress(XenStoreNotFound):
                            self.xs.rm(DATA)  # a fresh report, nothing stale from before
                        self._published = {}
                        # the first events fire at once
                        watches = (self.xs.watch("control"), self.xs.watch("memory/target"))
                    control, target = watches
                    slice_ = 0.0 if dirty else min(0.2, self.stats_interval)
                    if control.poll(slice_) is not None:
                        while control.poll(0) is not None:  # one reconcile per burst
                            pass
                        dirty = True
                    if target.poll(0) is not None:
                        while target.poll(0) is not None:
                            pass
                        # the balloon driver handles the same event; give it a moment
                        next_stats = min(next_stats, time.monotonic() + _TARGET_SETTLE)
                    if dirty:  # until a reconcile succeeds: a failed one is retried
                        self.reconcile()
                        dirty = False
                        self._reported.set()
                    if time.monotonic() >= next_stats:
                        next_stats = time.monotonic() + self.stats_interval
                        self.publish()
                    self.step_selfballoon()
                    backoff = 0.05
                except XenStoreError as exc:
                    if self._stop.is_set():
                        break  # closing the connection is how stop() wakes the watch
                    if isinstance(exc, XenStoreUnavailable):
                        self._published = {}  # the store may have lost our nodes
                    log.warning("xenstore: %s (retrying in %.2f s)", exc, backoff)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.max_backoff)
                except Exception:  # a bug must not end the agent: log it, keep serving
                    log.exception("agent step failed (retrying in %.2f s)", backoff)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.max_backoff)
        finally:
            try:
                self.release_selfballoon()  # stopping the agent stops its self-ballooning
            finally:
                for w in watches or ():
                    w.close()

    def start(self, *, wait: float = 0.0) -> Agent:
        """Run :meth:`run` in a daemon thread; with ``wait``, return once the first report is
        published (or ``wait`` s have passed)."""
        if self._thread is not None:
            raise RuntimeError("agent already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="xentmem-agent", daemon=True)
        self._thread.start()
        if wait > 0:
            self._reported.wait(wait)
        return self

    @property
    def running(self) -> bool:
        """Whether the loop started by :meth:`start` is still serving."""
        return self._thread is not None and self._thread.is_alive()

    def request_stop(self) -> None:
        """Ask the loop to end (it notices within 0.2 s, or at once if ``xs`` is closed)."""
        self._stop.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the loop to end and wait (at most ``timeout`` s) for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> Agent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
