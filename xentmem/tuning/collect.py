"""A collector at the rim: run guest-model workloads on an emulated host and record the guest's
memory as a trace.

The guest boots unballooned with a swap device and (by default) the ``tmem`` backend on an
emulated Xen 4.12, **with self-ballooning and self-shrinking off**, so the trace records the
workload's demand, not some policy's reaction to it; the replay then applies the policy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from xentmem.errors import GuestError, TraceError
from xentmem.guest.workload import WorkloadSpec
from xentmem.tuning.trace import Trace

if TYPE_CHECKING:
    from xentmem.emulator.machine import EmulatedMachine
    from xentmem.guest import Guest

__all__ = ["CollectSpec", "collect_trace", "parse_workload", "record_living"]

_CASTS: dict[str, Callable[[str], object]] = {"int": int, "float": float, "str": str}
_FIELD_TYPES = {f.name: str(f.type) for f in fields(WorkloadSpec)}


def parse_workload(text: str, seed: int = 0) -> WorkloadSpec:
    """``kind[:field=value,...]`` (fields of ``WorkloadSpec``) -> a spec; e.g.
    ``anon:mb=96,grow=20,shrink=10`` or ``burst:start=30,duration=10,mb=64``."""
    kind, _, rest = text.partition(":")
    values: dict[str, object] = {"kind": kind.strip(), "seed": seed}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or name not in _FIELD_TYPES or name == "kind":
            raise TraceError(f"workload {text!r}: bad field {item!r} "
                             f"(fields: {', '.join(n for n in _FIELD_TYPES if n != 'kind')})")
        cast = _CASTS.get(_FIELD_TYPES[name], str)
        try:
            values[name] = cast(raw.strip())
        except ValueError:
            raise TraceError(f"workload {text!r}: {name} = {raw!r} is not a "
                             f"{_FIELD_TYPES[name]}") from None
    try:
        return WorkloadSpec(**values)  # type: ignore[arg-type]
    except GuestError as exc:
        raise TraceError(f"workload {text!r}: {exc}") from None


@dataclass(frozen=True)
class CollectSpec:
    """The guest and how long to watch it: ``step`` seconds between samples (and model
    ticks), ``backend`` ``"tmem"`` or ``"none"`` (swap to the device only). ``tmem_mb`` is the
    domain's maximum above its memory: Xen counts persistent (frontswap) pages against that
    maximum, so without headroom every frontswap store fails and pages go to disk."""

    workloads: tuple[WorkloadSpec, ...]
    duration: float = 60.0
    step: float = 1.0
    memory_mb: int = 256
    swap_mb: int = 256
    tmem_mb: int = 128
    backend: str = "tmem"
    host_memory_mb: int = 2048

    def __post_init__(self) -> None:
        if not self.workloads:
            raise TraceError("collect: at least one workload is needed")
        if not (self.step > 0 and self.duration >= 2 * self.step):
            raise TraceError("collect: need step > 0 and duration >= 2 steps")
        if round(self.step * 1000) != self.step * 1000:
            raise TraceError("collect: step must be a whole number of milliseconds")
        if self.backend not in ("tmem", "none"):
            raise TraceError(f"collect: backend must be tmem or none, not {self.backend!r}")
        if self.memory_mb < 16 or self.swap_mb < 1 or self.tmem_mb < 0:
            raise TraceError("collect: need memory_mb >= 16, swap_mb >= 1, tmem_mb >= 0")


def collect_trace(spec: CollectSpec, *, name: str = "collected",
                  on_tick: Callable[[float], None] | None = None) -> Trace:
    """Boot the guest, run the workloads for ``spec.duration`` model seconds and return the
    trace (one sample per step, the first before any work)."""
    from xentmem.emulator.machine import EmulatedMachine, GuestSpec, MountSpec, SwapSpec

    fss = sorted({w.fs for w in spec.workloads if w.kind == "file"})
    guest_spec = GuestSpec(
        name, spec.memory_mb, spec.memory_mb + spec.tmem_mb, swap=(SwapSpec(spec.swap_mb),),
        mounts=tuple(MountSpec(fs) for fs in fss), workloads=spec.workloads,
        backend="tmem" if spec.backend == "tmem" else None,
        backend_params={"selfballooning": False, "selfshrinking": False}, agent=False)
    machine = EmulatedMachine.boot(memory_mb=spec.host_memory_mb, xen_version="4.12")
    with machine:
        return _record(machine, machine.add_guest(guest_spec).guest, spec, name, on_tick)


def _record(machine: EmulatedMachine, guest: Guest, spec: CollectSpec, name: str,
            on_tick: Callable[[float], None] | None) -> Trace:
    cols: dict[str, list[int]] = {k: [] for k in ("time_ms", "committed", "reserve", "max_pfn",
                                                   "totalram", "frontswap")}

    def sample(now: float) -> None:
        snap = guest.memory_snapshot()
        for key, value in (("time_ms", round(now * 1000)), ("committed", snap.committed_pages),
                           ("reserve", snap.totalreserve_pages), ("max_pfn", snap.max_pfn),
                           ("totalram", snap.totalram_pages),
                           ("frontswap", snap.frontswap_pages)):
            cols[key].append(value)

    sample(0.0)
    ticks = math.floor(spec.duration / spec.step + 1e-9)
    for n in range(ticks):
        now = n * spec.step
        machine.now = now
        machine.advance(spec.step, tick=spec.step)
        sample(now + spec.step)
        if on_tick is not None:
            on_tick(now + spec.step)
    return Trace.build(cols["time_ms"], cols["committed"], cols["reserve"], cols["max_pfn"],
                       cols["totalram"], None, cols["frontswap"], name=name)


def record_living(sample: Callable[[], Mapping[str, float]], duration: float, step: float, *,
                  speed: float = 1.0, name: str = "living",
                  sleep: Callable[[float], None] = time.sleep,
                  on_tick: Callable[[float], None] | None = None) -> Trace:
    """A trace of a guest that runs on its own (a living guest of the emulator daemon):
    ``sample()`` returns its memory (``model_s``, ``committed``, ``reserve``, ``max_pfn``,
    ``totalram``, ``frontswap``), taken every ``step`` model seconds (``step / speed`` wall
    seconds) for ``duration`` model seconds; times are model seconds from the first sample."""
    if not (step > 0 and duration >= 2 * step and speed > 0):
        raise TraceError("collect: need step > 0, duration >= 2 steps and speed > 0")
    cols: dict[str, list[int]] = {k: [] for k in _LIVING}
    start: float | None = None
    last = -1
    for n in range(math.floor(duration / step + 1e-9) + 1):
        if n:
            sleep(step / speed)
        got = sample()
        start = got["model_s"] if start is None else start
        time_ms = round((got["model_s"] - start) * 1000)
        if time_ms <= last:  # the guest's clock stood still (paused, or a checkpoint)
            continue
        last = time_ms
        cols["time_ms"].append(time_ms)
        for key in _LIVING[1:]:
            cols[key].append(int(got[key]))
        if on_tick is not None:
            on_tick(n * step)
    if len(cols["time_ms"]) < 2:
        raise TraceError("collect: the guest's clock did not move; is the daemon running?")
    return Trace.build(cols["time_ms"], cols["committed"], cols["reserve"], cols["max_pfn"],
                       cols["totalram"], None, cols["frontswap"], name=name)


_LIVING = ("time_ms", "committed", "reserve", "max_pfn", "totalram", "frontswap")
