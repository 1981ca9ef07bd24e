"""What a living emulated host costs: ``xentmem bench living``.

For each guest count, start ``xentmem emulator up --guests N`` (default workloads, speed 1) in a
temporary directory, let it warm up, then over a window measure the daemon's CPU share (from
``/proc/PID/stat``), the tmem hypercalls its guests make per second, how far the guests' clock
fell behind wall time, what a checkpoint of host and guests costs in the foreground (as at
``down``: how long it takes, how long the guests stand still) and in the background (periodic
checkpoints: the guests stand still for the fork only), and the wall time of
``xentmem status -c emulator:DIR --json`` run as a user runs it, beside
``virsh -c test:///default list`` (libvirt's test driver) in the same run. Numbers, not tests.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from xentmem.emulator.daemon import HostConfig, control, running, start, stop

__all__ = ["LivingBenchRow", "StartupBenchRow", "bench_living", "bench_startup"]

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class LivingBenchRow:
    guests: int
    seconds: float
    daemon_cpu_pct: float
    cpu_pct_per_guest: float
    tmem_ops_per_s: float
    clock_lag_s: float
    checkpoint_s: float
    guests_paused_s: float
    background_pause_s: float
    status_json_s: float
    virsh_list_s: float | None
    lost: int
    stale: int

    def as_dict(self) -> dict[str, object]:
        row = asdict(self)
        for key in ("daemon_cpu_pct", "cpu_pct_per_guest", "clock_lag_s"):
            row[key] = round(row[key], 1)
        for key in ("checkpoint_s", "guests_paused_s", "background_pause_s"):
            row[key] = round(row[key], 3)
        row["tmem_ops_per_s"] = round(self.tmem_ops_per_s)
        row["status_json_s"] = round(self.status_json_s, 3)
        row["virsh_list_s"] = None if self.virsh_list_s is None else round(self.virsh_list_s, 3)
        row["status_vs_virsh"] = (None if not self.virsh_list_s
                                  else round(self.status_json_s / self.virsh_list_s, 1))
        return row


@dataclass(frozen=True)
class StartupBenchRow:
    """One command's whole-process wall time (median) beside ``virsh list``'s in the same run,
    and the ratio issue 16 set as the goal."""

    command: str
    seconds: float
    virsh_list_s: float | None
    goal_ratio: float

    def as_dict(self) -> dict[str, object]:
        ratio = None if not self.virsh_list_s else round(self.seconds / self.virsh_list_s, 1)
        return {"command": self.command, "seconds": round(self.seconds, 3),
                "virsh_list_s": None if self.virsh_list_s is None else
                round(self.virsh_list_s, 3),
                "ratio": ratio, "goal_ratio": self.goal_ratio,
                "met": None if ratio is None else ratio <= self.goal_ratio}


def _wall(argv: list[str]) -> float:
    """The wall time of one run of ``argv`` (which must succeed)."""
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, timeout=120)
    return time.perf_counter() - started


def _beside_virsh(argv: list[str], runs: int) -> tuple[float, float | None]:
    """Medians of ``argv`` and of ``virsh -c test:///default list``, run in turn so that the
    machine's load falls on both alike."""
    virsh = shutil.which("virsh")
    ours, theirs = [], []
    for _ in range(runs):
        ours.append(_wall(argv))
        if virsh:
            theirs.append(_wall([virsh, "-c", "test:///default", "list"]))
    return statistics.median(ours), statistics.median(theirs) if theirs else None


def bench_startup(guests: int = 50, *, runs: int = 9) -> list[StartupBenchRow]:
    """``xentmem --help`` (before the host starts: its guests would load the machine) and
    ``xentmem status --json`` against a living host of ``guests`` (default workloads), each
    run as a user runs it, beside ``virsh -c test:///default list``; medians of ``runs``."""
    xentmem = str(Path(sys.executable).with_name("xentmem"))
    rows = [StartupBenchRow("xentmem --help", *_beside_virsh([xentmem, "--help"], runs), 5.0)]
    directory = Path(tempfile.mkdtemp(prefix="xtbs", dir="/tmp"))
    try:
        start(directory, HostConfig(guests=guests, memory_mb=512 + 300 * guests))
        status = [xentmem, "status", "-c", f"emulator:{directory}", "--json"]
        rows.append(StartupBenchRow(f"xentmem status --json ({guests} guests)",
                                    *_beside_virsh(status, runs), 10.0))
    finally:
        stop(directory)
        shutil.rmtree(directory, ignore_errors=True)
    return rows


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


def bench_living(counts: tuple[int, ...] = (3, 20), *, seconds: float = 20.0,
                 warmup: float = 10.0, runs: int = 5) -> list[LivingBenchRow]:
    """One row per guest count (see the module docstring)."""
    xentmem = str(Path(sys.executable).with_name("xentmem"))
    rows = []
    for count in counts:
        directory = Path(tempfile.mkdtemp(prefix="xtbl", dir="/tmp"))
        try:
            start(directory, HostConfig(guests=count, memory_mb=512 + 300 * count))
            pid = running(directory)
            assert pid
            time.sleep(warmup)
            cpu0, ops0, wall0 = _cpu_seconds(pid), control(directory, "status")["tmem_ops"], \
                time.monotonic()
            time.sleep(seconds)
            cpu1, info, wall1 = _cpu_seconds(pid), control(directory, "status"), time.monotonic()
            window = wall1 - wall0
            cpu_pct = 100 * (cpu1 - cpu0) / window
            # what a save of this host costs now, as at down; then as a periodic one
            saved = control(directory, "checkpoint", timeout=300)
            forked = control(directory, "checkpoint", background=True, timeout=300)
            status_s, virsh_s = _beside_virsh(
                [xentmem, "status", "-c", f"emulator:{directory}", "--json"], runs)
            rows.append(LivingBenchRow(
                count, round(window, 1), cpu_pct, cpu_pct / count,
                (info["tmem_ops"] - ops0) / window, info["clock"]["lag_s"],
                saved["last_s"], saved["guests_paused_s"], forked["guests_paused_s"], status_s,
                virsh_s,
                sum(g["lost"] for g in info["guests"]), sum(g["stale"] for g in info["guests"])))
        finally:
            stop(directory)
            shutil.rmtree(directory, ignore_errors=True)
    return rows
