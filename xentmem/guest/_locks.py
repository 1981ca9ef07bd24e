"""Striped locks: the model's page lock.

The kernel calls frontswap and cleancache with the page locked, so two operations on the same
swap slot or file page never overlap. A lock per slot would be exact but costly; a fixed set of
stripes keyed by the slot gives the same exclusion. ``barrier()`` takes every stripe once: after
it returns, every operation that was inside a stripe when it started has finished — the model's
``synchronize_rcu`` for backend unload.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

STRIPES = 64


class StripedLock:
    """``STRIPES`` locks; ``for_key(k)`` is the lock guarding key ``k``."""

    __slots__ = ("_locks",)

    def __init__(self, stripes: int = STRIPES) -> None:
        self._locks = tuple(threading.Lock() for _ in range(stripes))

    def for_key(self, key: int) -> threading.Lock:
        return self._locks[hash(key) % len(self._locks)]

    def barrier(self) -> None:
        """Wait until no operation that entered a stripe before this call is still inside it."""
        for lock in self._locks:
            with lock:
                pass

    @contextmanager
    def all(self) -> Iterator[None]:
        """Hold every stripe (always in the same order, so two holders cannot deadlock)."""
        for lock in self._locks:
            lock.acquire()
        try:
            yield
        finally:
            for lock in reversed(self._locks):
                lock.release()


_HYPERVISOR_LOCKS: weakref.WeakKeyDictionary[object, threading.Lock] = weakref.WeakKeyDictionary()
_HYPERVISOR_LOCKS_GUARD = threading.Lock()


def hypervisor_lock(hv: object) -> threading.Lock:
    """The lock serialising the guest model's hypercalls to one hypervisor.

    Backends and the balloon of every guest call the hypervisor from whatever thread runs them
    (workload threads, an agent's watch thread). Xen takes concurrent hypercalls from many
    vCPUs; the in-process emulated host does not, so all callers of one host share one lock —
    keyed by the host behind an ``EmulatedHypervisor`` (its ``host``), else the transport.
    """
    key = getattr(hv, "host", hv)
    with _HYPERVISOR_LOCKS_GUARD:
        lock = _HYPERVISOR_LOCKS.get(key)
        if lock is None:
            lock = _HYPERVISOR_LOCKS[key] = threading.Lock()
        return lock
