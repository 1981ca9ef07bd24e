"""``memory/target`` from xenstore for an emulated guest's balloon driver.

In a real guest the kernel's xen-balloon driver watches ``memory/target`` itself (ref §4.2). An
emulated guest has no xenbus, so this :class:`~xentmem.guest.TargetSource` does it on the
guest's xenstore connection, in a thread, and hands every new value (untrusted: the balloon
driver's own parser decides) to the model: ``guest.attach_target(XenStoreTargetSource(xs))``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import TYPE_CHECKING

from xentmem.errors import XenStoreError
from xentmem.xenstore import XenStore

if TYPE_CHECKING:  # a type only: the single-file agent runs on Python 3.9 (no `X | Y` at run time)
    from collections.abc import Callable

    Callback = Callable[[str | bytes | None], None]

__all__ = ["XenStoreTargetSource"]

log = logging.getLogger("xentmem.agent")


class XenStoreTargetSource:
    """Watches ``path`` (relative to the guest's home) and calls back on every change."""

    def __init__(self, xs: XenStore, path: str = "memory/target", *,
                 max_backoff: float = 2.0) -> None:
        self.xs = xs
        self.path = path
        self.max_backoff = max_backoff
        self._callbacks: list[Callback] = []
        self._last: bytes | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._armed = threading.Event()

    def watch(self, callback: Callback) -> None:
        """Register ``callback``; it is called now (from the watch's first event) and on every
        change, from the watcher thread."""
        self._callbacks.append(callback)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="xentmem-memory-target",
                                            daemon=True)
            self._thread.start()
            # the model expects the current value before watch() returns, as the kernel reads
            # memory/target when it registers the watch
            self._armed.wait(float(getattr(self.xs, "timeout", 5.0)))
        else:
            callback(self._last)

    def _fire(self) -> None:
        value = self.xs.read(self.path, None)
        if value == self._last:
            return
        self._last = value
        for cb in list(self._callbacks):
            try:
                cb(value)
            except Exception:  # the balloon driver's problem must not end the watch
                log.exception("memory/target callback failed")

    def _run(self) -> None:
        backoff = 0.05
        watch = None
        try:
            while not self._stop.is_set():
                try:
                    if watch is None:
                        watch = self.xs.watch(self.path)
                    if watch.poll(0.2) is not None:
                        self._fire()
                        self._armed.set()
                    backoff = 0.05
                except XenStoreError as exc:
                    if self._stop.is_set():
                        break
                    log.warning("memory/target watch: %s (retrying in %.2f s)", exc, backoff)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.max_backoff)
        finally:
            self._armed.set()
            if watch is not None:
                with contextlib.suppress(XenStoreError):
                    watch.close()

    def request_stop(self) -> None:
        """Ask the watcher to end (it notices within 0.2 s, or at once if ``xs`` is closed)."""
        self._stop.set()

    def close(self, timeout: float = 5.0) -> None:
        """Stop watching."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
