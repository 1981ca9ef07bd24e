"""Daemons for the tests: in a thread of this process (fast: the same ``Daemon`` and wire
protocol, only not forked), or as the real background process that ``emulator up`` starts."""

from __future__ import annotations

import contextlib
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from xentmem.emulator import daemon as daemon_mod


class ThreadDaemon:
    """``daemon.serve`` in a thread; ``restart()`` is a clean ``down`` + ``up``."""

    def __init__(self, directory: Path, config: daemon_mod.HostConfig) -> None:
        self.directory = directory
        self.config = config
        self.daemon: daemon_mod.Daemon | None = None
        self.note = ""
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self, config: daemon_mod.HostConfig | None = None, **kw: object) -> ThreadDaemon:
        ready = threading.Event()
        self.error = None

        def on_ready(d: daemon_mod.Daemon, note: str) -> None:
            self.daemon, self.note = d, note
            ready.set()

        def run() -> None:
            try:
                daemon_mod.serve(self.directory, config or self.config, on_ready=on_ready,
                                 **kw)  # type: ignore[arg-type]
            except BaseException as exc:  # surfaced by start()
                self.error = exc
                ready.set()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(30), "daemon did not become ready"
        if self.error is not None:
            raise self.error
        return self

    def stop(self) -> None:
        if self._thread is not None and self.daemon is not None:
            self.daemon.request_stop()
            self._thread.join(30)
            assert not self._thread.is_alive()
        self._thread = None
        self.daemon = None

    def restart(self, config: daemon_mod.HostConfig | None = None) -> ThreadDaemon:
        self.stop()
        return self.start(config)


@pytest.fixture
def state_dir() -> Iterator[Path]:
    # short path: unix socket names are limited to 107 bytes
    with tempfile.TemporaryDirectory(prefix="xtd") as d:
        yield Path(d)


@pytest.fixture
def make_daemon(state_dir: Path) -> Iterator[Callable[..., ThreadDaemon]]:
    started: list[ThreadDaemon] = []

    def make(**config: object) -> ThreadDaemon:
        config.setdefault("bare", True)  # these tests drive the domains themselves
        d = ThreadDaemon(state_dir, daemon_mod.HostConfig(**config))  # type: ignore[arg-type]
        started.append(d)
        return d.start()

    yield make
    for d in started:
        d.stop()


@pytest.fixture
def process_daemon(state_dir: Path) -> Iterator[Path]:
    """Teardown for tests that start real daemon processes in ``state_dir``."""
    yield state_dir
    with contextlib.suppress(Exception):
        daemon_mod.stop(state_dir, timeout=10)
