"""Striped locks: the model's page lock.

The kernel calls frontswap and cleancache with the page locked, so two operations on the same
swap slot or file page never overlap. A lock per slot would be exact but costly; a fixed set of
stripes keyed by the slot gives the same exclusion. ``barrier()`` takes every stripe once: after
it returns, every operation that was inside a stripe when it started has finished — the model's
``synchronize_rcu`` for backend unload.
"""

from __future__ import annotations

import threading
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
