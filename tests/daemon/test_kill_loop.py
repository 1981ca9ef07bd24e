"""The long random kill loop (``scripts/test -m slow``): a writer stores persistent pages while
the daemon is SIGKILLed at random moments (while serving, while a forked child writes a
snapshot, while it boots), at least 100 times, on a small disk that fills and drains; after
every restart every acknowledged page must come back as it was acknowledged.

The seed is the test's parameter, so a failing run is reproduced by its test name.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from xentmem.emulator import daemon
from xentmem.errors import EmulatorError, TmemNoMemory, TransportError
from xentmem.hypercalls import Tmem
from xentmem.hypercalls.socket import SocketHypervisor

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

KEYS = 1500
CONFIG = daemon.HostConfig(guests=1, bare=True, memory_mb=512)


def content(key: int, version: int) -> bytes:
    return (key.to_bytes(4, "little") + version.to_bytes(4, "little")) * 512


def _kill(state: Path) -> None:
    pid = daemon.running(state)
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while daemon.running(state) is not None and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.mark.parametrize("seed", [20261206])
def test_random_kills_on_a_filling_disk_lose_no_acknowledged_page(seed: int) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    rng = random.Random(seed)
    mount = Path(tempfile.mkdtemp(prefix="xtk", dir="/tmp"))
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs",
                       str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    state = mount / "state"
    acked: dict[int, int] = {}  # key -> the version last acknowledged
    maybe: dict[int, set[int]] = {}  # versions whose reply was lost: stored or not
    version = kills = refused = checked = 0
    try:
        daemon.start(state, CONFIG)
        pool = None
        while kills < 100:
            filler = mount / "filler"
            if kills % 10 == 5 and not filler.exists():  # the disk fills ...
                st = os.statvfs(mount)
                with contextlib.suppress(OSError), open(filler, "wb") as f:
                    f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - (2 << 20)))
            elif kills % 10 == 8 and filler.exists():  # ... and drains
                filler.unlink()
            deadline = time.monotonic() + rng.uniform(0.02, 0.3)
            try:
                with SocketHypervisor(state, 1, timeout=10) as hv:
                    tm = Tmem(hv)
                    if pool is None:
                        pool = tm.new_pool(persistent=True)
                    while time.monotonic() < deadline:
                        key = rng.randrange(KEYS)
                        version += 1
                        maybe.setdefault(key, set()).add(version)
                        try:
                            tm.put_page(pool, 1, key, content(key, version))
                        except TmemNoMemory:
                            # the disk is full: refused before it ran, so not acknowledged,
                            # and the page acknowledged before stays
                            refused += 1
                            maybe[key].discard(version)
                            continue
                        acked[key] = version
                        maybe[key].clear()
                    if kills % 3 == 1:  # die while a forked child writes a snapshot
                        with contextlib.suppress(EmulatorError, TransportError):
                            daemon.control(state, "checkpoint", background=True)
            except TransportError:
                pass
            _kill(state)
            kills += 1
            if kills % 7 == 3:  # die while booting: loading, replaying, first snapshot
                boot = subprocess.Popen([sys.executable, "-m", "xentmem.emulator.daemon",
                                         "--state", str(state), "--foreground", "--bare",
                                         "--guests", "1", "--memory-mb", "512"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(rng.uniform(0.0, 0.4))
                boot.kill()
                boot.wait(10)
                kills += 1
            with contextlib.suppress(OSError):
                (mount / "filler").unlink()  # restart with room: a full disk is tested above
            daemon.start(state, CONFIG)
            with SocketHypervisor(state, 1, timeout=30) as hv:
                tm = Tmem(hv)
                for key in range(KEYS):
                    got = tm.get_page(pool, 1, key) if pool is not None else None
                    allowed = {content(key, v) for v in maybe.get(key, ())}
                    if key in acked:
                        allowed.add(content(key, acked[key]))
                    else:
                        allowed.add(None)  # type: ignore[arg-type]
                    assert got in allowed, (kills, key, acked.get(key))
                    checked += 1
                    if got is not None and got != content(key, acked.get(key, -1)):
                        # a lost reply whose PUT was stored: it is the acknowledged one now
                        acked[key] = int.from_bytes(got[4:8], "little")
                    maybe[key] = set()
        assert refused > 0, "the disk never filled"
        print(f"\n{kills} kills, {len(acked)} pages held, {checked} reads checked, "
              f"{refused} writes refused while the disk was full, 0 lost")
    finally:
        with contextlib.suppress(EmulatorError, OSError):
            daemon.stop(state, timeout=10)
        subprocess.run(["umount", "-l", str(mount)], check=False)
        shutil.rmtree(mount, ignore_errors=True)
