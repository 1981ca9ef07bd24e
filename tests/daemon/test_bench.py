"""PUT/GET pages/s through the typed client over ``SocketHypervisor`` (a real daemon process)
against the in-process ``EmulatedHypervisor``; a benchmark, not a timed test.

Run: ``.venv/bin/python -m pytest tests/daemon/test_bench.py -m bench -s``
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from xentmem.emulator import EmulatedHost, daemon
from xentmem.emulator.transport import EmulatedHypervisor
from xentmem.hypercalls import Hypervisor, Tmem
from xentmem.hypercalls.socket import SocketHypervisor

pytestmark = pytest.mark.bench

N = 4000
PAGES = [bytes([i % 256]) * 4096 for i in range(N)]


def _rate(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return N / (time.perf_counter() - start)


def _measure(hv: Hypervisor, persistent: bool) -> dict[str, float]:
    tm = Tmem(hv)
    pool = tm.new_pool(persistent=persistent)
    out = {
        "put/s": _rate(lambda: [tm.put_page(pool, 1, i, PAGES[i]) for i in range(N)]),
        "get/s": _rate(lambda: [tm.get_page(pool, 1, i) for i in range(N)]),
        "batched put/s": _rate(lambda: tm.put_pages(pool, [(2, i, PAGES[i]) for i in range(N)])),
        "batched get/s": _rate(lambda: tm.get_pages(pool, [(2, i) for i in range(N)])),
    }
    if persistent:  # the pages came back intact
        assert tm.get_pages(pool, [(2, i) for i in range(0, N, 97)]) == PAGES[::97]
    tm.close()
    return out


@pytest.mark.parametrize("persistent", [True, False], ids=["persistent", "ephemeral"])
def test_socket_vs_in_process(persistent: bool):
    rows: dict[str, dict[str, float]] = {}
    host = EmulatedHost(2048)
    host.create_domain("guest1", 256, 512)
    rows["in-process"] = _measure(EmulatedHypervisor(host, 1), persistent)
    for label, base, sync in (("socket, fsync, /tmp (disk)", "/tmp", True),
                              ("socket, fsync, /dev/shm", "/dev/shm", True),
                              ("socket, no fsync, /tmp", "/tmp", False)):
        with tempfile.TemporaryDirectory(prefix="xtb", dir=base) as d:
            directory = Path(d)
            config = daemon.HostConfig(guests=1, guest_memory_mb=256, bare=True)
            daemon.start(directory, config, sync=sync)
            try:
                with SocketHypervisor(directory, 1) as hv:
                    rows[label] = _measure(hv, persistent)
            finally:
                daemon.stop(directory)
    kind = "persistent" if persistent else "ephemeral"
    print(f"\n{kind} pool, {N} pages of 4 KiB, Tmem client")
    cols = list(rows["in-process"])
    print(f"{'transport':30}" + "".join(f"{c:>15}" for c in cols))
    for label, row in rows.items():
        print(f"{label:30}" + "".join(f"{row[c]:>15,.0f}" for c in cols))
    base = rows["in-process"]
    for label, row in rows.items():
        if label != "in-process":
            print(f"{label:30}" + "".join(f"{row[c] / base[c]:>14.2f}x" for c in cols))
