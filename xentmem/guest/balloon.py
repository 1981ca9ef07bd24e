"""The Xen balloon driver (``drivers/xen/balloon.c`` + ``xen-balloon.c``; ref §4.1-§4.2) and
the self-balloon worker (``xen-selfballoon.c``; ref §4.3-§4.5) of one guest.

Time is the model's: workers run when ``tick(now)`` passes their due time, so scenarios are
deterministic. The law itself is pure (``xentmem.guest.selfballoon``); this module only reads
the guest's memory into a snapshot and applies the result.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from xentmem.abi import DOMID_SELF, XEN_MEMORY_RESERVATION, Hypercall, XenMemOp
from xentmem.errors import XentmemError
from xentmem.guest.selfballoon import (
    MemorySnapshot,
    SelfBalloonKnobs,
    SelfShrinkState,
    selfballoon_target,
    selfshrink_step,
)

if TYPE_CHECKING:
    from xentmem.guest.guest import Guest
    from xentmem.hypercalls import Frame, Hypervisor

__all__ = [
    "BATCH_PAGES",
    "Balloon",
    "BalloonStats",
    "HypervisorReservation",
    "InMemoryTargetSource",
    "Reservation",
    "SelfBalloon",
    "TargetSource",
    "parse_target_kib",
]

BATCH_PAGES = 512  # frame_list: PAGE_SIZE / sizeof(long) on 64-bit
PAGE_SHIFT = 12


def parse_target_kib(untrusted_value: str | bytes | None) -> int | None:
    """The sanitiser for ``memory/target`` (KiB, written by the toolstack): pages, or ``None``
    when absent or unparsable (the driver then ignores the event). Never raises."""
    if untrusted_value is None:
        return None
    try:
        text = (untrusted_value.decode("ascii") if isinstance(untrusted_value, bytes)
                else untrusted_value).strip()
        kib = int(text, 10)
    except (UnicodeDecodeError, ValueError):
        return None
    if kib < 0 or kib >= 1 << 62:
        return None
    return kib >> (PAGE_SHIFT - 10)


class TargetSource(Protocol):
    """Where ``memory/target`` changes come from (a xenstore watch, or the model's own)."""

    def watch(self, callback: Callable[[str | bytes | None], None]) -> None:
        """Call ``callback(untrusted_value)`` now and on every change."""


class InMemoryTargetSource:
    """A ``memory/target`` node kept in memory: ``write(kib)`` fires the watch."""

    def __init__(self, kib: int | None = None) -> None:
        self.value: str | None = None if kib is None else str(kib)
        self._callbacks: list[Callable[[str | bytes | None], None]] = []

    def watch(self, callback: Callable[[str | bytes | None], None]) -> None:
        self._callbacks.append(callback)
        callback(self.value)

    def write(self, value: int | str) -> None:
        self.value = str(value)
        for cb in self._callbacks:
            cb(self.value)


class Reservation(Protocol):
    """The hypervisor side of ballooning (XENMEM_{decrease,increase}_reservation)."""

    def decrease(self, pages: int) -> int:
        """Give ``pages`` back to the hypervisor; return how many it took."""

    def increase(self, pages: int) -> int:
        """Ask for ``pages`` back; return how many were populated (0 = failure)."""


class _CappedReservation:
    """A reservation that only enforces the domain's maximum (the default for the model)."""

    def __init__(self, current: int, max_pages: int) -> None:
        self.current = current
        self.max_pages = max_pages

    def decrease(self, pages: int) -> int:
        self.current -= pages
        return pages

    def increase(self, pages: int) -> int:
        got = max(0, min(pages, self.max_pages - self.current))
        self.current += got
        return got


class HypervisorReservation:
    """XENMEM_{decrease,increase}_reservation through a ``Hypervisor`` transport, for a domain
    of the emulated host: inflating takes frames from the domain's allocator (the kernel's
    ``alloc_page``) and gives them to Xen, so the domain's ``tot_pages`` — which bounds its
    persistent tmem pages — follows the balloon. (On privcmd this would hand back the calling
    process's own pages: do not use it there.)"""

    def __init__(self, hypervisor: Hypervisor) -> None:
        self.hv = hypervisor  # thread-safe; each call brings its own buffers

    def _memory_op(self, cmd: int, frames: list[int]) -> int:
        extents = self.hv.alloc_buffer(8 * len(frames))
        args = self.hv.alloc_buffer(XEN_MEMORY_RESERVATION.size)
        try:
            extents.write(b"".join(f.to_bytes(8, "little") for f in frames))
            args.write(XEN_MEMORY_RESERVATION.pack(extents.address, len(frames), 0, 0,
                                                   DOMID_SELF))
            done = self.hv.hypercall(Hypercall.memory_op, cmd, args.address)
            return done
        finally:
            extents.close()
            args.close()

    def decrease(self, pages: int) -> int:
        frames: list[Frame] = []
        try:
            for _ in range(pages):
                frames.append(self.hv.alloc_frame())
        except XentmemError:
            pass  # the domain has no more free frames: a short allocation
        if not frames:
            return 0
        done = self._memory_op(XenMemOp.XENMEM_decrease_reservation, [f.number for f in frames])
        for frame in frames[done:]:
            frame.close()  # not taken: back to the domain's allocator
        return done

    def increase(self, pages: int) -> int:
        # Xen picks the frames and writes their numbers into the extent list
        return self._memory_op(XenMemOp.XENMEM_increase_reservation, [0] * pages)


@dataclass
class BalloonStats:
    """``balloon_stats`` (pages, delays in seconds) with the driver's init values."""

    current_pages: int
    target_pages: int
    balloon_low: int = 0
    balloon_high: int = 0
    schedule_delay: int = 1
    max_schedule_delay: int = 32
    retry_count: int = 1
    max_retry_count: int = 0  # 0 = retry forever


class Balloon:
    """The balloon driver. ``guest`` lends free pages (``balloon_alloc``) and gets them back."""

    def __init__(self, guest: Guest, current_pages: int, max_pages: int,
                 reservation: Reservation | None = None) -> None:
        self.guest = guest
        self.stats = BalloonStats(current_pages=current_pages, target_pages=current_pages)
        self.reservation = reservation or _CappedReservation(current_pages, max_pages)
        self._mutex = threading.Lock()  # balloon_mutex
        self._due: float | None = None
        self.now = 0.0

    @property
    def ballooned_pages(self) -> int:
        return self.stats.balloon_low + self.stats.balloon_high

    def attach(self, source: TargetSource) -> None:
        """Register the ``memory/target`` watch."""
        source.watch(self.memory_target_changed)

    def memory_target_changed(self, untrusted_value: str | bytes | None) -> None:
        """The xenstore watch handler: KiB -> pages -> new target; garbage is ignored."""
        pages = parse_target_kib(untrusted_value)
        if pages is not None:
            self.set_new_target(pages)

    def set_new_target(self, pages: int) -> None:
        """``balloon_set_new_target``: store the target and run the worker now."""
        self.stats.target_pages = max(int(pages), 0)
        self.process()

    def _credit(self) -> int:
        s = self.stats
        return min(s.target_pages, s.current_pages + self.ballooned_pages) - s.current_pages

    def _increase(self, credit: int) -> bool:
        n = min(credit, BATCH_PAGES, self.stats.balloon_low)
        got = self.reservation.increase(n)
        if got <= 0:
            return False
        self.stats.balloon_low -= got
        self.stats.current_pages += got
        return True

    def _decrease(self, pages: int) -> bool:
        n = min(pages, BATCH_PAGES)
        got = self.guest.balloon_alloc(n)  # no-retry allocation: may come up short
        if got:
            taken = self.reservation.decrease(got)
            self.stats.balloon_low += taken
            self.stats.current_pages -= taken
        return got == n

    def _update_schedule(self, done: bool) -> str:
        s = self.stats
        if done:
            s.schedule_delay, s.retry_count = 1, 1
            return "done"
        s.retry_count += 1
        if s.max_retry_count and s.retry_count > s.max_retry_count:
            s.schedule_delay, s.retry_count = 1, 1
            return "cancelled"
        s.schedule_delay = min(s.schedule_delay * 2, s.max_schedule_delay)
        return "again"

    def process(self) -> None:
        """``balloon_process``: move towards the target, 512 pages per step."""
        with self._mutex:
            state = "done"
            while True:
                credit = self._credit()
                done = True
                if credit > 0:
                    done = self._increase(credit)
                elif credit < 0:
                    done = self._decrease(-credit)
                state = self._update_schedule(done)
                if not credit or state != "done":
                    break
            self._due = self.now + self.stats.schedule_delay if state == "again" else None

    def tick(self, now: float) -> None:
        """Advance the model's clock; run a pending retry when due."""
        self.now = now
        if self._due is not None and now >= self._due:
            self.process()


class SelfBalloon:
    """The self-balloon worker with its knobs (sysfs ``selfballoon/``)."""

    def __init__(self, guest: Guest, *, dom0: bool = False) -> None:
        self.guest = guest
        self.dom0 = dom0
        # flags stay 0 until xen_selfballoon_init (the tmem module) turns them on
        self.knobs = replace(SelfBalloonKnobs(), selfballooning=False,
                             frontswap_selfshrinking=False)
        self.shrink_state = SelfShrinkState()
        self._due: float | None = None
        self.now = 0.0
        self.runs = 0
        self.last_target: int | None = None

    @property
    def scheduled(self) -> bool:
        return self._due is not None

    def init(self, use_selfballooning: bool, use_selfshrinking: bool) -> bool:
        """``xen_selfballoon_init``; False where the kernel returns -ENODEV."""
        if self.dom0:
            return False  # "disabled for domain0"; the knobs stay writable
        self.knobs = replace(self.knobs, selfballooning=bool(use_selfballooning),
                             frontswap_selfshrinking=bool(use_selfshrinking))
        if not (use_selfballooning or use_selfshrinking):
            self._due = None
            return False
        self._due = self.now + self.knobs.interval
        return True

    def set_knob(self, name: str, value: int) -> None:
        """Apply a sysfs write (already parsed and validated), with its side effects."""
        before = self.knobs
        self.knobs = replace(before, **{name: value})
        arm_selfballoon = name == "selfballooning" and value and not before.selfballooning
        # 0->1 of selfshrinking arms the worker only if self-ballooning is not running it
        arm_selfshrink = (name == "frontswap_selfshrinking" and value
                          and not before.frontswap_selfshrinking and not self.knobs.selfballooning)
        if arm_selfballoon or arm_selfshrink:
            self._due = self.now + self.knobs.interval
        elif name == "frontswap_inertia":
            self.shrink_state = replace(self.shrink_state, counter=value)

    def snapshot(self) -> MemorySnapshot:
        return self.guest.memory_snapshot()

    def process(self) -> None:
        """``selfballoon_process``: one run of the worker."""
        self.runs += 1
        knobs = self.knobs
        reschedule = False
        if knobs.selfballooning:
            target = selfballoon_target(knobs, self.snapshot())
            self.last_target = target
            self.guest.balloon.set_new_target(target)
            reschedule = True
        if knobs.frontswap_selfshrinking:
            self.shrink_state, tgt = selfshrink_step(knobs, self.shrink_state,
                                                     self.guest.frontswap.curr_pages())
            if tgt is not None:
                self.guest.frontswap.shrink(tgt)
            reschedule = True
        self._due = self.now + knobs.interval if reschedule else None

    def tick(self, now: float) -> None:
        """Advance the model's clock; run the worker when due."""
        self.now = now
        while self._due is not None and now >= self._due:
            self.now = self._due
            self.process()
        self.now = now
