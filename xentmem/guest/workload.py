"""Workload generators: anonymous memory that grows and shrinks, file reads over a working set,
and bursts. Each is driven by the model's clock (``step(now, dt)``) and performs ``rate``
operations per model second on one guest, drawing from its own seeded RNG, so a scenario is
reproducible.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

from xentmem.errors import GuestError
from xentmem.guest.guest import Guest
from xentmem.guest.selfballoon import MB

__all__ = ["Workload", "WorkloadSpec"]

Kind = Literal["anon", "file", "burst"]
KINDS = ("anon", "file", "burst")
BALANCE_EVERY = 128  # operations between kswapd passes


@dataclass(frozen=True)
class WorkloadSpec:
    """One workload on one guest.

    - ``anon``: grow to ``mb`` of anonymous memory over ``grow`` seconds, touch it (reads and
      ``write_fraction`` writes), then free it over the last ``shrink`` seconds.
    - ``file``: read ``files`` files of ``file_mb`` each on filesystem ``fs``; ``hot_share`` of
      the reads go to the first ``working_set`` fraction; ``write_fraction`` are writes.
    - ``burst``: allocate and write ``mb`` at ``start``, touch it for ``duration``, free it.

    With ``period`` the workload repeats: every ``period`` seconds from ``start`` it runs one
    cycle of ``active`` seconds (default the whole period; ``grow``/``shrink`` apply within the
    cycle) and rests for the rest, until ``duration`` ends.
    """

    kind: Kind
    start: float = 0.0
    duration: float = math.inf
    rate: int = 2000
    mb: int = 64
    grow: float = 0.0
    shrink: float = 0.0
    write_fraction: float = 0.3
    fs: str = "root"
    files: int = 4
    file_mb: int = 4
    working_set: float = 0.25
    hot_share: float = 0.8
    seed: int = 0
    period: float = 0.0
    active: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise GuestError(f"unknown workload kind {self.kind!r} (one of {', '.join(KINDS)})")
        if self.rate < 0 or self.mb < 0 or self.files < 1 or self.file_mb < 1:
            raise GuestError("workload rate, mb, files and file_mb must be positive")
        for name in ("write_fraction", "working_set", "hot_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise GuestError(f"workload {name} must be within [0, 1]")
        if self.duration <= 0 or self.grow < 0 or self.shrink < 0:
            raise GuestError("workload duration must be positive, grow/shrink not negative")
        if self.period < 0 or self.active < 0 or (self.period and self.active > self.period):
            raise GuestError("workload period and active must not be negative, active <= "
                             "period")
        if self.active and not self.period:
            raise GuestError("workload active needs a period")

    @property
    def end(self) -> float:
        return self.start + self.duration


class Workload:
    """A running ``WorkloadSpec`` on ``guest``."""

    def __init__(self, spec: WorkloadSpec, guest: Guest) -> None:
        self.spec = spec
        self.guest = guest
        self.rng = random.Random(spec.seed)
        self.pids: list[int] = []
        self.ops = 0
        self.finished = False

    def _cycle(self, now: float) -> tuple[float, float]:
        """``(t, end)``: time since the current cycle began, and when that cycle's work ends
        (a workload without a period has one cycle, ``[start, end)``)."""
        s = self.spec
        if not s.period:
            return now - s.start, s.duration
        return (now - s.start) % s.period, min(s.active or s.period,
                                                s.end - now + (now - s.start) % s.period)

    def _target_pages(self, now: float) -> int:
        s = self.spec
        full = s.mb * MB
        t, end = self._cycle(now)
        if t >= end or now >= s.end:
            return 0
        if s.kind == "burst":
            return full
        if s.shrink and t >= end - s.shrink:
            return int(full * max(end - t, 0.0) / s.shrink)
        if s.grow and t < s.grow:
            return int(full * t / s.grow)
        return full

    def _resize(self, now: float) -> None:
        want = self._target_pages(now)
        while len(self.pids) < want:
            self.pids += self.guest.alloc_anon(min(BALANCE_EVERY, want - len(self.pids)))
            self.guest.balance()
        while len(self.pids) > want:
            self.guest.free_anon(self.pids.pop(self.rng.randrange(len(self.pids))))

    def step(self, now: float, dt: float) -> int:
        """Run the operations due in ``[now, now + dt)``; return how many ran."""
        s = self.spec
        if self.finished or now + dt <= s.start:
            return 0
        if now >= s.end:
            if s.kind != "file":
                self._resize(now)
            self.finished = True
            return 0
        count = int(s.rate * min(dt, s.end - max(now, s.start)))
        if s.period:
            t, end = self._cycle(max(now, s.start))
            count = int(s.rate * max(0.0, min(dt, end - t)))  # the rest of a cycle rests
        if s.kind == "file":
            self._file_ops(count)
        else:
            self._resize(now)
            self._anon_ops(count)
        self.ops += count
        return count

    def _anon_ops(self, count: int) -> None:
        if not self.pids:
            return
        g, rng, pids = self.guest, self.rng, self.pids
        for n in range(count):
            pid = pids[rng.randrange(len(pids))]
            if rng.random() < self.spec.write_fraction:
                g.write_anon(pid)
            else:
                g.read_anon(pid)
            if n % BALANCE_EVERY == 0:
                g.balance()

    def _file_ops(self, count: int) -> None:
        s, g, rng = self.spec, self.guest, self.rng
        per_file = s.file_mb * MB
        total = s.files * per_file
        hot = max(1, int(total * s.working_set))
        for n in range(count):
            page = rng.randrange(hot) if rng.random() < s.hot_share else rng.randrange(total)
            ino, index = 100 + page // per_file, page % per_file
            if rng.random() < s.write_fraction:
                g.write_file(s.fs, ino, index)
            else:
                g.read_file(s.fs, ino, index)
            if n % BALANCE_EVERY == 0:
                g.balance()
