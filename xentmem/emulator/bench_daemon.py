"""What the daemon's durability and limits cost and hold: ``xentmem bench daemon``.

1. Snapshot pauses: a daemon holding ``--mib`` of persistent pages (random, so nothing
   compresses) is saved in the foreground (as ``down`` does) and in the background (a forked
   child, as periodic checkpoints do) while another client issues small hypercalls in a loop;
   the longest time that client waited for one answer is the pause it saw.
2. A hostile guest: through its own socket it opens every connection it may, half-sends the
   largest request it may on each, and floods requests on one without reading a reply; the
   daemon's resident memory before and after says what one guest can make it hold.

Numbers, not tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xentmem.abi import PAGE_SIZE
from xentmem.emulator import daemon
from xentmem.hypercalls import Tmem, xen_version
from xentmem.hypercalls._wire import FRAME, HEAD
from xentmem.hypercalls.socket import HYPERCALL_SOCKET, SocketHypervisor

__all__ = ["DaemonBench", "bench_daemon"]


@dataclass(frozen=True)
class DaemonBench:
    persistent_mib: int
    fill_s: float
    foreground_snapshot_s: float
    foreground_pause_ms: float
    background_pause_ms: float
    background_snapshot_s: float
    probe_p99_ms: float
    rss_before_hostile_mib: float
    rss_after_hostile_mib: float

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 2) if isinstance(v, float) else v for k, v in vars(self).items()}


def _rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


class _Probe(threading.Thread):
    """A client that asks the hypervisor its version in a loop, noting every wait."""

    def __init__(self, directory: Path) -> None:
        super().__init__(daemon=True)
        self.hv = SocketHypervisor(directory, 0, timeout=60)
        self.waits: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            xen_version(self.hv)
            self.waits.append(time.perf_counter() - started)

    def window(self, action: Any) -> tuple[float, Any]:
        """The longest wait while ``action()`` runs, and its result."""
        mark = len(self.waits)
        result = action()
        time.sleep(0.05)
        return max(self.waits[mark:], default=0.0), result


def _hostile(directory: Path, domid: int) -> list[socket.socket]:
    path = directory / f"{HYPERCALL_SOCKET}.dom{domid}"
    held = []
    for _ in range(daemon.GUEST_CONNECTIONS):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(path))
        held.append(s)
    for s in held[1:]:  # the largest request it may send, all but its last byte
        s.sendall(struct.pack("<I", daemon.GUEST_MAX_FRAME)
                  + b"x" * (daemon.GUEST_MAX_FRAME - 1))
    flood = HEAD.pack(3, 0, 0) + b'{"cmd": "status"}'
    held[0].setblocking(False)
    deadline = time.monotonic() + 3
    with contextlib.suppress(OSError):
        while time.monotonic() < deadline:  # requests, never reading a reply
            held[0].send((FRAME.pack(len(flood)) + flood) * 256)
    return held


def bench_daemon(mib: int = 400, *, sync: bool = True) -> DaemonBench:
    directory = Path(tempfile.mkdtemp(prefix="xtbd", dir="/var/tmp"))
    pages = mib * 256
    try:
        daemon.start(directory, daemon.HostConfig(
            memory_mb=mib + 1024, guests=1, guest_memory_mb=64, bare=True), sync=sync)
        with SocketHypervisor(directory, 0) as dom0:  # room for the pages below the maximum
            dom0.control("destroy_domain", domid=1)
            domid = dom0.control("create_domain", name="big", memory_mb=64,
                                 max_memory_mb=mib + 128, bare=True)["domid"]
        started = time.perf_counter()
        with SocketHypervisor(directory, domid) as hv:
            tm = Tmem(hv)
            pool = tm.new_pool(persistent=True)
            random = os.urandom(PAGE_SIZE * 256)
            for first in range(0, pages, 128):
                batch = [(first // 128, i, random[(first + i) % 256 * PAGE_SIZE:]
                          [:PAGE_SIZE]) for i in range(128)]
                tm.put_pages(pool, batch)
        fill_s = time.perf_counter() - started
        probe = _Probe(directory)
        probe.start()
        time.sleep(0.2)
        with SocketHypervisor(directory, 0, timeout=120) as dom0:
            fg_pause, fg = probe.window(lambda: dom0.control("checkpoint"))
            bg_pause, _ = probe.window(lambda: dom0.control("checkpoint", background=True))
            time.sleep(0.5)
            bg_total = _written(dom0)
        probe.stop.set()
        probe.join(10)
        waits = sorted(probe.waits)
        pid = daemon.running(directory)
        assert pid
        before = _rss_mib(pid)
        held = _hostile(directory, domid)
        time.sleep(0.5)
        after = _rss_mib(pid)
        for s in held:
            s.close()
        return DaemonBench(mib, fill_s, fg["last_s"], fg_pause * 1000, bg_pause * 1000,
                           bg_total, waits[int(len(waits) * 0.99)] * 1000, before, after)
    finally:
        with contextlib.suppress(Exception):
            daemon.stop(directory, timeout=60)
        shutil.rmtree(directory, ignore_errors=True)


def _written(dom0: SocketHypervisor, timeout: float = 120.0) -> float:
    """The background snapshot's total time, once the daemon took it in."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = dom0.control("status")
        if not info.get("snapshot_in_progress"):
            return float(info["checkpoint"]["last_s"])
        time.sleep(0.1)
    raise TimeoutError("the background snapshot did not finish")
