"""A multi-threaded stress harness: worker threads store, load and invalidate pages (anonymous
and file) while a controller thread loads, replaces and unloads backends."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from xentmem.errors import GuestError
from xentmem.guest import BackendModule, Guest


@dataclass
class StressResult:
    ops: int = 0
    loads: int = 0
    unloads: int = 0
    remounts: int = 0
    drained: int = 0
    errors: list[BaseException] = field(default_factory=list)


def worker(guest: Guest, seed: int, ops: int, shared: list[int], result: StressResult,
           lock: threading.Lock, fs_name: str | None) -> None:
    rng = random.Random(seed)
    mine = guest.alloc_anon(64)
    done = 0
    try:
        while done < ops:
            r = rng.random()
            pool = shared if r < 0.3 and shared else mine
            pid = pool[rng.randrange(len(pool))]
            op = rng.random()
            if op < 0.30:
                guest.swap_out(pid)
            elif op < 0.50:
                guest.read_anon(pid)
            elif op < 0.65:
                guest.write_anon(pid)
            elif op < 0.72 and pool is mine:  # invalidate: free and replace
                guest.free_anon(pid)
                mine[mine.index(pid)] = guest.alloc_anon(1)[0]
            elif fs_name is not None and op < 0.90:
                try:
                    if op < 0.85:
                        guest.read_file(fs_name, rng.randrange(4), rng.randrange(64))
                    else:
                        guest.write_file(fs_name, rng.randrange(4), rng.randrange(64))
                except GuestError as exc:  # the controller is remounting it
                    if "not mounted" not in str(exc):
                        raise
            elif fs_name is not None and op < 0.97:
                guest.evict_file_pages(4)
            else:
                guest.swap_out(pid)
            done += 1
    except BaseException as exc:  # reported by the test, not swallowed
        result.errors.append(exc)
    with lock:
        result.ops += done


def controller(guest: Guest, factories: list[Callable[[], BackendModule]], stop: threading.Event,
               result: StressResult, seed: int, pause: float, remount: str | None) -> None:
    rng = random.Random(seed)
    try:
        while not stop.is_set():
            action = rng.random()
            if remount and action < 0.05:  # a new volume at the same mount point
                guest.umount(remount)
                guest.mount(remount, "ext4")
                result.remounts += 1
            if guest.backend is None:
                guest.load_backend(rng.choice(factories)())
                result.loads += 1
            elif action < 0.5:
                report = guest.unload_backend()
                result.unloads += 1
                result.drained += report.drained
                continue  # load the next one right away
            else:  # re-register: drain the old backend, load another
                report = guest.load_backend(rng.choice(factories)(), replace=True)
                result.loads += 1
                result.unloads += 1
                result.drained += report.drained
            stop.wait(pause * rng.random())  # let pages flow into the loaded backend
    except BaseException as exc:
        result.errors.append(exc)


def run_stress(guest: Guest, factories: list[Callable[[], BackendModule]], *, threads: int,
               ops_per_thread: int, seed: int, fs_name: str | None = "data",
               pause: float = 0.01) -> StressResult:
    """Run workers and one controller; at the end unload, read every page back."""
    result = StressResult()
    shared = guest.alloc_anon(32)
    lock = threading.Lock()
    stop = threading.Event()
    ctl = threading.Thread(target=controller,
                           args=(guest, factories, stop, result, seed, pause, fs_name))
    workers = [threading.Thread(target=worker, args=(guest, seed * 100 + i, ops_per_thread,
                                                     shared, result, lock, fs_name))
               for i in range(threads)]
    ctl.start()
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=600)
    stop.set()
    ctl.join(timeout=60)
    if guest.backend is not None:
        result.drained += guest.unload_backend().drained
        result.unloads += 1
    guest.verify_anon()
    return result
