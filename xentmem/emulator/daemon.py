"""The emulator daemon: one ``EmulatedHost`` served to ``SocketHypervisor`` clients over a unix
socket, with the emulator's xenstored beside it (what ``xentmem emulator up`` starts).

State directory (``--state``, default :func:`~xentmem.hypercalls.socket.default_state_dir`)::

    hypercall.sock            the hypercall socket (wire protocol: xentmem.hypercalls.socket)
    xenstore.sock[.domN]      xenstored: dom0's socket, and one per guest
    daemon.lock / daemon.pid  the lock held while running, and who holds it
    daemon.log                the daemon's messages (a host crash is reported here)
    host.state, journal       durable state: snapshot + write-ahead journal (_daemon_store)

Durability: every hypercall but ``xen_version`` is journaled before its reply is sent, and the
journal is fsync'ed once per batch of replies, so a daemon killed at any instant loses nothing
it acknowledged. ``down`` (SIGTERM) and domain creation/destruction write a snapshot; start-up
replays the journal onto the last snapshot and writes a fresh snapshot.

A crash of the imitated hypervisor (``HostCrashed``) is logged, every guest leaves xenstore,
and every later request is answered with the crash message; ``down`` + ``up`` boots a new host
with the same configuration (as a rebooted machine would come back, empty).

``python -m xentmem.emulator.daemon --state DIR [options]`` runs it (double-forking into the
background unless ``--foreground``) and prints one line, ``READY {json}`` or ``ERROR message``,
on stdout once it serves or has failed. :func:`start`, :func:`stop`, :func:`running` and
:func:`control` are the library side the CLI uses.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import select
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from xentmem.abi import MAX_POOLS_PER_DOMAIN, PAGE_SIZE, Hypercall, TmemCmd
from xentmem.emulator import EmulatedHost, ramster
from xentmem.emulator._daemon_store import Record, StateStore
from xentmem.emulator._statedir import (  # the layout and running(): light, for the CLI
    LOCK,
    PIDFILE,
    XENSTORE_SOCKET,
    bind_private,
    check_state_dir,
    open_private,
    prepare_state_dir,
    running,
    write_private,
)
from xentmem.emulator.machine import EmulatedMachine, GuestSpec, living_guest
from xentmem.errors import (
    EmulatorError,
    GuestError,
    HostCrashed,
    StoreFailing,
    TransportError,
)
from xentmem.hypercalls._wire import (
    ADDR,
    ALLOC,
    ALLOC_BODY,
    CALL,
    CALL_HEAD,
    CALL_REPLY,
    CHUNK,
    CONTROL,
    CRASHED,
    EMULATOR,
    FRAME,
    HEAD,
    HELLO,
    HELLO_BODY,
    MAX_FRAME,
    OK,
    PROTOCOL,
    REFUSED,
    SOCKET_BUFFER,
)
from xentmem.hypercalls.socket import HYPERCALL_SOCKET, SocketHypervisor, default_state_dir
from xentmem.xenstore.server import XenStoreServer
from xentmem.xenstore.toolstack import layout_dom0

__all__ = ["XENSTORE_SOCKET", "Daemon", "HostConfig", "control", "load_host", "main", "running",
           "serve", "start", "stop"]

log = logging.getLogger("xentmem.emulator.daemon")

LOGFILE, EXITFILE = "daemon.log", "daemon.exit"
JOURNAL_LIMIT = 256 << 20  # compact into a snapshot beyond this many journal bytes
# What one domain may hold of the daemon through its own socket (hypercall.sock.domN), like
# oxenstored's quotas: connections, the largest request (a 128-page batch is 512 KiB), and
# unread replies (reading stops past UNREAD_PAUSE; the client is dropped past the cap). The
# owner's socket may act as any domain and keeps the protocol's own limits.
GUEST_CONNECTIONS = 16
OWNER_CONNECTIONS = 512
GUEST_MAX_FRAME = 4 << 20
GUEST_MAX_UNREAD = 8 << 20
UNREAD_PAUSE = 1 << 20
ACCEPT_BACKOFF = 0.1  # s without accepting on a socket after running out of descriptors
RECV_BUFFER = 1 << 20
MAX_ALLOC_FRAMES = 1 << 14  # 64 MiB in one buffer is more than any hypercall reads
_UNIX_PATH_MAX = 107
_EPHEMERAL_SAFE = frozenset({TmemCmd.TMEM_PUT_PAGE, TmemCmd.TMEM_FLUSH_PAGE,
                             TmemCmd.TMEM_FLUSH_OBJECT})


@dataclass(frozen=True)
class HostConfig:
    """How to boot a new host; ``None`` fields keep the saved host's (or the default).

    ``guests`` living guests ``guest1..N`` come with a new host, each running the workload and
    kernel at its position in ``workloads`` / ``kernels`` (a shorter tuple repeats its last
    entry; empty: web, db, batch, idle in turn, on 3.10), or the guests of ``scenario`` (a
    scenario TOML file: its guests and workloads, without its events). ``bare`` makes plain
    domains instead, for those who drive the domains themselves. ``speed`` runs the guests'
    clocks that many times faster than wall time; ``checkpoint_s`` is how often the guests and
    the host are saved together while guests run (a SIGKILL rewinds guests to that point, with
    every page where they believe it is)."""

    xen_version: str | None = None
    memory_mb: int | None = None
    tmem_compress: bool | None = None
    designed: bool | None = None
    guests: int = 0
    guest_memory_mb: int = 128
    workloads: tuple[str, ...] = ()
    kernels: tuple[str, ...] = ()
    bare: bool = False
    speed: float = 1.0
    scenario: str | None = None
    checkpoint_s: float = 30.0
    tmem_dedup: bool | None = None  # boot options of 4.0-4.7 (ref §3.7)
    tmem_tze: bool | None = None

    def boot(self) -> EmulatedHost:
        return EmulatedHost(self.memory_mb or 2048, xen_version=self.xen_version or "4.12",
                            tmem_compress=bool(self.tmem_compress), designed=bool(self.designed),
                            tmem_dedup=bool(self.tmem_dedup), tmem_tze=bool(self.tmem_tze))

    def guest_specs(self) -> list[GuestSpec]:
        """The living guests a new host starts with."""
        if self.scenario is not None:
            from xentmem.emulator.scenario import load_scenario

            return [replace(g, agent=True) for g in load_scenario(self.scenario).guests]
        specs = []
        for i in range(1, self.guests + 1):
            workload = _nth(self.workloads, i) or DEFAULT_WORKLOADS[(i - 1)
                                                                    % len(DEFAULT_WORKLOADS)]
            specs.append(living_guest(f"guest{i}", workload=workload,
                                      kernel=_nth(self.kernels, i) or "3.10",
                                      memory_mb=self.guest_memory_mb, seed=i))
        return specs

    def conflicts(self, saved: dict[str, Any]) -> list[str]:
        """Options given on the command line that differ from a saved host's."""
        wanted = {"xen_version": self.xen_version, "memory_mb": self.memory_mb,
                  "tmem_compress": self.tmem_compress, "designed": self.designed,
                  "tmem_dedup": self.tmem_dedup, "tmem_tze": self.tmem_tze}
        def same(key: str, value: object) -> bool:
            have = str(saved.get(key))
            if key == "xen_version":  # "4.12" names the saved "4.12.0"
                return have == value or have.startswith(f"{value}.")
            return have == str(value)

        return [f"{k}={saved.get(k)} (not {v})" for k, v in wanted.items()
                if v is not None and not same(k, v)]

    def argv(self) -> list[str]:
        """The daemon's command-line options for this configuration."""
        argv: list[str] = []
        for flag, value in (("--xen-version", self.xen_version), ("--memory-mb", self.memory_mb),
                            ("--scenario", self.scenario)):
            if value is not None:
                argv += [flag, str(value)]
        argv += ["--guests", str(self.guests), "--guest-memory-mb", str(self.guest_memory_mb),
                 "--speed", repr(self.speed), "--checkpoint-s", repr(self.checkpoint_s)]
        argv += ["--workloads", ",".join(self.workloads)] if self.workloads else []
        argv += ["--kernels", ",".join(self.kernels)] if self.kernels else []
        argv += ["--tmem-compress"] if self.tmem_compress else []
        argv += ["--tmem-dedup"] if self.tmem_dedup else []
        argv += ["--tmem-tze"] if self.tmem_tze else []
        argv += ["--designed"] if self.designed else []
        argv += ["--bare"] if self.bare else []
        return argv


DEFAULT_WORKLOADS = ("web", "db", "batch", "idle")


def _positions(text: str) -> tuple[str, ...]:
    """``"web,,db"`` -> one entry per guest, empty ones kept (they take the default)."""
    return tuple(text.split(",")) if text else ()


def _nth(values: tuple[str, ...], i: int) -> str | None:
    """The ``i``-th (1-based) entry, the last one past the end, ``None`` when empty."""
    return values[min(i, len(values)) - 1] if values else None


# ---- the server ----------------------------------------------------------------------------


class _Refused(Exception):
    """A malformed or out-of-order request: answered with REFUSED."""


@dataclass(eq=False)
class _Region:
    address: int
    first: int
    frames: int
    size: int
    shadow: bytes  # the content the client's mirror holds
    epoch: int = -1  # snapshot epoch whose journal knows this content (-1: not journaled)


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    inbuf: bytearray = field(default_factory=bytearray)
    out: bytearray = field(default_factory=bytearray)
    domid: int | None = None
    bound: int | None = None  # the domain whose socket it came in on (None: the owner's)
    regions: dict[int, _Region] = field(default_factory=dict)
    closing: bool = False
    waiting: bool = False  # registered for EVENT_WRITE
    paused: bool = False  # not read from while its replies pile up (back-pressure)


@dataclass(eq=False)
class _Listener:
    sock: socket.socket
    path: Path
    domid: int | None  # None: the owner's socket, which may act as any domain
    resume_at: float = 0.0  # when accepting resumes after running out of descriptors
    paused: bool = False


class Daemon:
    """Serve ``host`` on ``directory/hypercall.sock`` with xenstored beside it; state in
    ``store``. ``open()``, then ``serve()`` until ``request_stop()``, then ``close()``."""

    def __init__(self, directory: Path, host: EmulatedHost, store: StateStore, *,
                 config: HostConfig | None = None, guests: bytes | None = None,
                 new: bool = False) -> None:
        self.directory = directory
        self.host = host
        self.store = store
        self.config = config or HostConfig()
        self.epoch = 0
        self.started = time.time()
        self.socket_path = directory / HYPERCALL_SOCKET
        # xenstore is durable beside the host: requested settings, memory/target and the
        # guests' reports survive down/up and a SIGKILL
        self.xenstore = XenStoreServer(directory / XENSTORE_SOCKET, state_dir=directory,
                                       sync=store.sync, bind=bind_private)
        self.machine = EmulatedMachine(host, self.xenstore, directory=directory)
        self._saved_guests = guests  # a checkpoint's guests, brought back by open()
        self._new = new  # a newly booted host: its guests start in open()
        self._next_checkpoint = math.inf
        self.checkpoint_s = self.checkpoint_pause_s = 0.0  # the last snapshot's cost
        self.store_error: str | None = None  # why the last write of state failed, if it did
        self.saved = False  # whether close() wrote the final snapshot
        self._child: tuple[int, float] | None = None  # a background snapshot being written
        self._store_log_after = 0.0
        self._sel = selectors.DefaultSelector()
        self._listeners: dict[int | None, _Listener] = {}  # by the domain they are bound to
        self._per_domain: dict[int | None, int] = {}  # open connections per listener
        self._accept_log_after = 0.0
        self.accept_failures = 0  # accepts that failed for want of descriptors or memory
        self._conns: dict[int, _Conn] = {}
        self._replies: list[tuple[_Conn, bytes]] = []
        self._stop_r, self._stop_w = socket.socketpair()
        self._stopping = False
        # one receive buffer for every connection: recv(n) would allocate n bytes per call
        self._rbuf = bytearray(RECV_BUFFER)
        self._rview = memoryview(self._rbuf)

    # -- lifecycle --

    def open(self) -> None:
        for path in (self.socket_path, self.directory / f"{XENSTORE_SOCKET}.dom99999"):
            if len(os.fsencode(path)) > _UNIX_PATH_MAX:
                raise EmulatorError(f"state directory path too long for a unix socket: {path}")
        self.xenstore.start()
        for domid in self.xenstore.domains:  # a host booted anew: its old guests are gone
            if domid and domid not in self.host.domains:
                self.xenstore.release_domain(domid)
        if not self.xenstore.restored:
            xs = self.xenstore.connect(0)
            try:
                layout_dom0(xs, self.host.domains[0].nr_pages * 4
                            if 0 in self.host.domains else None)
            finally:
                xs.close()
        if self._saved_guests is not None:
            self.machine.restore_guests(self._saved_guests)
            self._saved_guests = None
        elif self._new:
            self._boot_guests()
        for domid, dom in sorted(self.host.domains.items()):
            if domid and not self.xenstore.is_introduced(domid):
                self.xenstore.introduce_domain(domid, dom.name, dom.nr_pages * 4,
                                               dom.max_pages * 4)
        self.try_snapshot()  # failing, the saved snapshot and journal still hold everything
        self.machine.start(speed=self.config.speed)
        self._listen(None)
        for domid in sorted(self.host.domains):
            if domid:
                self._listen(domid)
        self._stop_r.setblocking(False)
        self._stop_w.setblocking(False)
        self._sel.register(self._stop_r, selectors.EVENT_READ, None)

    def _boot_guests(self) -> None:
        """A new host's guests: living ones (or bare domains with ``bare``)."""
        config = self.config
        if config.bare:
            for i in range(1, config.guests + 1):
                self.host.create_domain(f"guest{i}", config.guest_memory_mb,
                                        2 * config.guest_memory_mb)
            return
        for spec in config.guest_specs():
            self.machine.add_guest(spec)
        ramster.link(self.machine.guests.values())  # RAMster nodes on free ports meet

    def request_stop(self) -> None:
        """Make ``serve()`` return (safe from a signal handler or another thread)."""
        self._stopping = True
        with contextlib.suppress(OSError):
            self._stop_w.send(b"x")

    def close(self) -> None:
        """Hang up every client, write the final snapshot, stop xenstored, remove sockets."""
        self.machine.stop()
        for conn in list(self._conns.values()):
            self._drop(conn)
        for domid in list(self._listeners):
            self._unlisten(domid)
        self.saved = self.try_snapshot()
        self.machine.close()
        self.store.close()
        self.xenstore.stop()
        self._sel.close()
        self._stop_r.close()
        self._stop_w.close()

    def try_snapshot(self) -> bool:
        """``snapshot()``, logging a failure (the journal still holds everything)."""
        try:
            self.snapshot()
        except StoreFailing as exc:
            self._store_failing(exc)
            self._next_checkpoint = time.monotonic() + self.config.checkpoint_s
            return False
        return True

    def snapshot_in_background(self) -> None:
        """Save the host and its living guests as they are at this instant without making
        anyone wait for the writing: a forked child writes the snapshot while this process
        goes on serving, its records going to the next journal (``StateStore.rotate``).
        Clients and guests wait only for the fork (the one instant both locks are held)."""
        if self._child is not None:
            return
        self._reap_child()
        started = time.perf_counter()
        with self.machine.model_lock, self.host.lock:
            try:
                generation = self.store.rotate()
            except StoreFailing as exc:
                self._store_failing(exc)
                self._next_checkpoint = time.monotonic() + self.config.checkpoint_s
                return
            pid = os.fork()
            if pid == 0:  # the child: a frozen copy of this instant; it writes and leaves
                code = 1
                try:
                    self.store.write_snapshot(self._state(), generation)
                    code = 0
                finally:
                    os._exit(code)
        self.checkpoint_pause_s = time.perf_counter() - started
        self._child = (pid, started)
        self.epoch += 1  # every region's content must be captured again by the new journal
        self._next_checkpoint = (time.monotonic() + self.config.checkpoint_s
                                 if self.machine.guests else math.inf)

    def _state(self) -> dict[str, Any]:
        """What a snapshot holds: the host, and its living guests captured at the same instant."""
        state, guests = self.machine.checkpoint()
        if self.machine.guests:
            state["machine"] = {"guests": guests}
        return state

    def _reap_child(self, *, wait: bool = False) -> None:
        """Take in a finished background snapshot (``wait``: wait for it)."""
        if self._child is None:
            return
        pid, started = self._child
        done, status = os.waitpid(pid, 0 if wait else os.WNOHANG)
        if not done:
            return
        self._child = None
        written = os.waitstatus_to_exitcode(status) == 0
        self.store.finish(written)
        if written:
            self.checkpoint_s = time.perf_counter() - started
        else:  # the journals still hold everything; write one the slow way
            log.error("a background snapshot failed; writing one in the foreground")
            self.try_snapshot()

    def snapshot(self) -> None:
        """Save the host and its living guests as they are at this instant
        (``StoreFailing`` if it cannot be written: the last snapshot and journal still hold
        every acknowledged call)."""
        self._reap_child(wait=True)
        started = time.perf_counter()
        state = self._state()
        self.checkpoint_pause_s = time.perf_counter() - started  # the guests stood still
        self.store.save(state)
        self.checkpoint_s = time.perf_counter() - started
        self.epoch += 1  # every region's content must be captured again by the new journal
        self._next_checkpoint = (time.monotonic() + self.config.checkpoint_s
                                 if self.machine.guests else math.inf)

    def serve(self) -> None:
        while not self._stopping:
            for key, events in self._sel.select(timeout=self._select_timeout()):
                if isinstance(key.data, _Listener):
                    self._accept(key.data)
                elif key.fileobj is self._stop_r:
                    with contextlib.suppress(OSError):
                        self._stop_r.recv(64)
                else:
                    conn = self._conns.get(key.fd)
                    if conn is None:
                        continue
                    try:
                        if events & selectors.EVENT_READ:
                            self._readable(conn)
                        if events & selectors.EVENT_WRITE and conn.sock.fileno() >= 0:
                            self._flush(conn)
                    except Exception:  # a bug must not take every other client down
                        log.exception("error serving a connection; dropping it")
                        self._drop(conn)
            self._commit_and_reply()
            self._resume_accepting()
            self._reap_child()
            if time.monotonic() >= self._next_checkpoint and not self.host.crashed:
                self.snapshot_in_background()

    # -- sockets --

    def _listen(self, domid: int | None) -> None:
        """The owner's socket (``domid`` None), or domain ``domid``'s own
        ``hypercall.sock.domN``: a client there can only be that domain, as a guest's xenbus
        is its own."""
        path = self.socket_path if domid is None else \
            self.directory / f"{HYPERCALL_SOCKET}.dom{domid}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            bind_private(sock, path)  # 0600 from the first instant
            sock.listen(64)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        listener = self._listeners[domid] = _Listener(sock, path, domid)
        self._sel.register(sock, selectors.EVENT_READ, listener)

    def _unlisten(self, domid: int | None) -> None:
        listener = self._listeners.pop(domid, None)
        if listener is None:
            return
        if not listener.paused:
            self._sel.unregister(listener.sock)
        listener.sock.close()
        with contextlib.suppress(FileNotFoundError):
            listener.path.unlink()
        for conn in [c for c in self._conns.values() if c.bound == domid and domid is not None]:
            self._drop(conn)

    def _accept(self, listener: _Listener) -> None:
        try:
            sock, _ = listener.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # out of descriptors or memory: pause, keep serving the others
            self._pause_accepting(listener, exc)
            return
        limit = OWNER_CONNECTIONS if listener.domid is None else GUEST_CONNECTIONS
        if self._per_domain.get(listener.domid, 0) >= limit:
            sock.close()  # a guest may not hold every descriptor of the host
            self._log_accept(f"refused a connection on {listener.path.name}: {limit} open")
            return
        sock.setblocking(False)
        # a batch of 64 pages is 256 KiB each way: room for it in one send
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        conn = _Conn(sock, bound=listener.domid)
        self._per_domain[listener.domid] = self._per_domain.get(listener.domid, 0) + 1
        self._conns[sock.fileno()] = conn
        self._sel.register(sock, selectors.EVENT_READ, None)

    def _pause_accepting(self, listener: _Listener, exc: OSError) -> None:
        self.accept_failures += 1
        if not listener.paused:
            self._sel.unregister(listener.sock)
            listener.paused = True
        listener.resume_at = time.monotonic() + ACCEPT_BACKOFF
        self._log_accept(f"cannot accept on {listener.path.name} ({exc.strerror or exc}); "
                         f"pausing it for {ACCEPT_BACKOFF * 1000:.0f} ms")

    def _resume_accepting(self) -> None:
        now = time.monotonic()
        for listener in self._listeners.values():
            if listener.paused and now >= listener.resume_at:
                self._sel.register(listener.sock, selectors.EVENT_READ, listener)
                listener.paused = False

    def _select_timeout(self) -> float:
        paused = [lst.resume_at for lst in self._listeners.values() if lst.paused]
        return max(0.0, min([1.0, *(t - time.monotonic() for t in paused)]))

    def _log_accept(self, message: str) -> None:
        """At most one line every 10 s: a flood must not become a flood of log."""
        now = time.monotonic()
        if now >= self._accept_log_after:
            log.warning("%s", message)
            self._accept_log_after = now + 10.0

    def _readable(self, conn: _Conn) -> None:
        try:
            got = conn.sock.recv_into(self._rbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            got = 0
        if not got:
            self._drop(conn)
            return
        conn.inbuf += self._rview[:got]
        largest = MAX_FRAME if conn.bound is None else GUEST_MAX_FRAME
        while not conn.closing and len(conn.inbuf) >= FRAME.size:
            (size,) = FRAME.unpack_from(conn.inbuf)
            if not 1 <= size <= largest:
                conn.closing = True
                self._replies.append((conn, _reply(REFUSED, f"bad message length {size}")))
                break
            if len(conn.inbuf) < FRAME.size + size:
                break
            body = bytes(conn.inbuf[FRAME.size:FRAME.size + size])
            del conn.inbuf[:FRAME.size + size]
            self._replies.append((conn, self._handle(conn, body)))

    def _commit_and_reply(self) -> None:
        if not self._replies:
            return
        # group commit: the journal is durable before any of this batch's replies leave
        replies, self._replies = self._replies, []
        try:
            self.store.commit()
        except StoreFailing as exc:  # never an ack for what may not be durable
            self._store_failing(exc)
            for conn, _ in replies:
                self._drop(conn)
            return
        self.store_error = None
        if self.store.journal_bytes > JOURNAL_LIMIT and not self.host.crashed:
            self.snapshot_in_background()
        for conn, reply in replies:
            if conn.sock.fileno() < 0:
                continue
            conn.out += reply
            if len(conn.out) > (MAX_FRAME if conn.bound is None else GUEST_MAX_UNREAD):
                # a client that sends and never reads (back-pressure did not stop it)
                self._log_accept(f"dropping a client of domain {conn.domid} with "
                                 f"{len(conn.out)} bytes of unread replies")
                self._drop(conn)
                continue
            self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out) if conn.out else 0
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._drop(conn)
            return
        del conn.out[:sent]
        if conn.closing and not conn.out:
            self._drop(conn)
            return
        # wait for writability only while output is stuck; stop reading requests from a
        # client whose replies pile up, until it reads them (its memory is ours otherwise)
        waiting, paused = bool(conn.out), len(conn.out) > UNREAD_PAUSE
        if (waiting, paused) != (conn.waiting, conn.paused):
            conn.waiting, conn.paused = waiting, paused
            self._sel.modify(conn.sock, (0 if paused else selectors.EVENT_READ)
                             | (selectors.EVENT_WRITE if waiting else 0))

    def _drop(self, conn: _Conn) -> None:
        if self._conns.pop(conn.sock.fileno(), None) is None:
            return
        self._per_domain[conn.bound] -= 1
        self._sel.unregister(conn.sock)
        conn.sock.close()
        with self.host.lock:
            if conn.domid is not None and conn.domid in self.host.domains:
                for region in conn.regions.values():
                    self.host.free_frames(conn.domid, region.first, region.frames)
        conn.regions.clear()

    # -- requests --

    def _handle(self, conn: _Conn, body: bytes) -> bytes:
        try:
            return self._request(conn, body)
        except _Refused as exc:
            if conn.domid is None:
                conn.closing = True
            return _reply(REFUSED, str(exc))
        except (struct.error, ValueError, UnicodeDecodeError, TypeError, KeyError,
                AttributeError) as exc:
            return _reply(REFUSED, f"malformed request: {exc}")
        except HostCrashed as exc:
            return _reply(CRASHED, str(exc))
        except EmulatorError as exc:
            return _reply(EMULATOR, str(exc))

    def _request(self, conn: _Conn, body: bytes) -> bytes:
        kind, nfree, nwrite = HEAD.unpack_from(body)
        pos = HEAD.size
        if (kind == HELLO) != (conn.domid is None):
            raise _Refused("HELLO must be the first request, and only the first")
        frees = list(struct.unpack_from(f"<{nfree}Q", body, pos))
        pos += 8 * nfree
        writes = []
        for _ in range(nwrite):
            address, size = CHUNK.unpack_from(body, pos)
            pos += CHUNK.size
            region = conn.regions.get(address)
            if region is None or region.size != size or address in frees:
                raise _Refused(f"write of {size} bytes at {address:#x}: not a buffer of this "
                               "connection")
            if pos + size > len(body):
                raise _Refused("truncated write")
            writes.append((region, body[pos:pos + size]))
            pos += size
        if any(a not in conn.regions for a in frees) or len(set(frees)) != nfree:
            raise _Refused("free of an address that is not a buffer of this connection")
        rest = body[pos:]
        if kind == HELLO:
            return self._hello(conn, rest)
        dom = self.host.domains.get(conn.domid)  # type: ignore[arg-type]
        if dom is None and kind == CONTROL:  # status still answers on a crashed host
            conn.regions.clear()
            return self._control(conn, rest)
        if dom is None:
            if self.host.crashed is None:
                conn.closing = True
            self._alive()  # a crash is why every domain is gone
            raise EmulatorError(f"domain {conn.domid} no longer exists")
        if kind not in (CALL, ALLOC, CONTROL):
            raise _Refused(f"unknown request kind {kind}")
        # the whole message is valid: only now touch the domain's memory, under the host's
        # lock (the living guests' clock calls the host from its own thread)
        with self.host.lock:
            for address in frees:
                region = conn.regions.pop(address)
                self.host.free_frames(conn.domid, region.first, region.frames)  # type: ignore[arg-type]
            mem = dom.mem
            for region, data in writes:
                mem[region.address:region.address + region.size] = data
                region.shadow, region.epoch = data, -1
            if kind == CALL:
                return self._call(conn, dom, rest)
            if kind == ALLOC:
                return self._alloc(conn, dom, rest)
        return self._control(conn, rest)  # may take the guests' lock: never under the host's

    def _hello(self, conn: _Conn, rest: bytes) -> bytes:
        protocol, domid = HELLO_BODY.unpack_from(rest)
        if protocol != PROTOCOL:
            raise _Refused(f"protocol {protocol} not spoken here (this daemon speaks {PROTOCOL})")
        if conn.bound is not None and domid != conn.bound:
            raise _Refused(f"this socket is domain {conn.bound}'s: it cannot act as domain "
                           f"{domid}")
        self._alive()
        if domid not in self.host.domains:
            conn.closing = True
            raise EmulatorError(f"the emulated host has no domain {domid}")
        conn.domid = domid
        return _reply(OK, json.dumps({"domid": domid, "pid": os.getpid(),
                                      "xen_version": str(self.host.version)}).encode())

    def _alloc(self, conn: _Conn, dom: Any, rest: bytes) -> bytes:
        frames, size, buffer = ALLOC_BODY.unpack_from(rest)
        if not 1 <= frames <= MAX_ALLOC_FRAMES or not 1 <= size <= frames * PAGE_SIZE:
            raise _Refused(f"cannot allocate {size} bytes in {frames} frame(s)")
        first = self.host.alloc_frames(conn.domid, frames, buffer=bool(buffer))  # type: ignore[arg-type]
        address = first * PAGE_SIZE
        zero = bytes(size)
        dom.mem[address:address + size] = zero  # the client's mirror starts zeroed
        conn.regions[address] = _Region(address, first, frames, size, zero)
        return _reply(OK, ADDR.pack(address))

    def _call(self, conn: _Conn, dom: Any, rest: bytes) -> bytes:
        op, nargs = CALL_HEAD.unpack_from(rest)
        args = struct.unpack_from(f"<{nargs}Q", rest, CALL_HEAD.size)
        journaled = op != Hypercall.xen_version  # the one hypercall that changes no state
        # what the journal must carry for a replay: regions it does not know yet, as the
        # hypervisor is about to see them
        captures = [(r, r.shadow) for r in conn.regions.values() if r.epoch != self.epoch] \
            if journaled else []
        domid: int = conn.domid  # type: ignore[assignment]
        durable = journaled and self._durable(dom, op, args)
        if journaled:  # written before the call runs: a call the journal cannot take never runs
            try:
                self.store.append(Record(domid, op, args,
                                         [(r.address, data) for r, data in captures]),
                                  durable=durable)
            except StoreFailing as exc:
                self._store_failing(exc)
                if durable or not self._harmless_read(dom, op, args):
                    # the errno a host gives when it cannot take the page: nothing changed,
                    # but for an ephemeral PUT the older copy goes, as Xen drops a failed
                    # duplicate (never journaled: an ephemeral page may vanish)
                    self._drop_ephemeral_copy(dom, op, args)
                    return _frame(bytes([OK]) + CALL_REPLY.pack(-errno.ENOMEM, 0))
                journaled = captures = False  # a persistent GET changes only counters
            else:
                for region, _ in captures:
                    region.epoch = self.epoch
        dom.dirty = set()  # the frames the hypervisor writes during this call
        try:
            result = self.host.hypercall(domid, op, *args)
        except HostCrashed as exc:
            self._crashed(str(exc))
            raise
        finally:
            dirty, dom.dirty = dom.dirty, None
        mem = dom.mem
        changed = []
        for region in conn.regions.values():
            if dirty.isdisjoint(range(region.first, region.first + region.frames)):
                continue  # untouched: the client's mirror is still right
            now = mem[region.address:region.address + region.size]
            if now != region.shadow:
                region.shadow = now
                changed.append(region)
                if not journaled:
                    region.epoch = -1
        parts = [bytes([OK]), CALL_REPLY.pack(result, len(changed))]
        for region in changed:
            parts += [CHUNK.pack(region.address, region.size), region.shadow]
        return _frame(b"".join(parts))

    def _page_op(self, dom: Any, op: int, args: tuple[int, ...]) -> tuple[int, Any] | None:
        """``(cmd, pool)`` of a single ``tmem_op`` (pool ``None`` when the domain has no such
        pool), or ``None`` for any other call."""
        if op != Hypercall.tmem_op or not args or not dom.valid(args[0], 8):
            return None
        cmd, pool_id = struct.unpack_from("<Ii", dom.mem, args[0])
        client = self.host.tmem.clients.get(dom.domid)
        pool = client.pools[pool_id] if client is not None and \
            0 <= pool_id < MAX_POOLS_PER_DOMAIN else None
        return cmd, pool

    def _harmless_read(self, dom: Any, op: int, args: tuple[int, ...]) -> bool:
        """A GET from a persistent pool: it changes nothing but counters, so it may run while
        the journal cannot be written (reads keep working). An ephemeral GET is destructive:
        unjournaled, the page would come back after a restart, maybe older than the guest's."""
        target = self._page_op(dom, op, args)
        return target is not None and target[0] == TmemCmd.TMEM_GET_PAGE and \
            target[1] is not None and bool(target[1].persistent)

    def _drop_ephemeral_copy(self, dom: Any, op: int, args: tuple[int, ...]) -> None:
        """The refused call is a PUT to an ephemeral pool: FLUSH that page (as Xen drops the
        older copy when a duplicate PUT fails), so that a guest never reads back a version
        older than the one it tried to store. Not journaled: an ephemeral page may vanish."""
        target = self._page_op(dom, op, args)
        if target is None or target[0] != TmemCmd.TMEM_PUT_PAGE or target[1] is None \
                or target[1].persistent:
            return
        head = bytes(dom.mem[args[0]:args[0] + 4])
        dom.mem[args[0]:args[0] + 4] = int(TmemCmd.TMEM_FLUSH_PAGE).to_bytes(4, "little")
        try:
            self.host.hypercall(dom.domid, op, *args)
        finally:
            dom.mem[args[0]:args[0] + 4] = head  # the guest's op struct as it wrote it

    def _store_failing(self, exc: StoreFailing) -> None:
        """Note that storage fails; say so in the log at most once every 10 s."""
        now = time.monotonic()
        self.store_error = str(exc)
        if now >= self._store_log_after:
            log.error("storage is failing (%s): refusing every call that changes state until "
                      "a write succeeds", exc)
            self._store_log_after = now + 10.0

    def _durable(self, dom: Any, op: int, args: tuple[int, ...]) -> bool:
        """Whether acknowledging this call needs an fsync: anything that may change
        persistent pages or host configuration does. A GET, or a PUT/FLUSH on an ephemeral
        pool, is journaled without one: it survives a killed daemon, and after a power cut an
        ephemeral page that comes back (or goes missing) is within tmem's contract. (Measured
        here: one fdatasync ~3 ms on ext4, against ~60 us for the whole request.)"""
        target = self._page_op(dom, op, args)
        if target is None:
            return True
        cmd, pool = target
        if cmd == TmemCmd.TMEM_GET_PAGE:
            return False
        return cmd not in _EPHEMERAL_SAFE or pool is None or bool(pool.persistent)

    def _alive(self) -> None:
        if self.host.crashed is not None:
            raise HostCrashed(f"the emulated Xen {self.host.version} host crashed: "
                              f"{self.host.crashed}; every domain is gone")

    def _crashed(self, reason: str) -> None:
        log.error("%s", reason)
        self.machine.close()
        self.machine.guests.clear()  # their domains died with the host
        for domid in self.xenstore.domains:
            if domid:
                self.xenstore.release_domain(domid)
        self.try_snapshot()

    def _control(self, conn: _Conn, rest: bytes) -> bytes:
        if conn.domid != 0:
            raise _Refused("host-API requests are for domain 0")
        request = json.loads(rest)
        cmd = request.pop("cmd")
        if cmd == "status":
            result: Any = self.status()
        elif cmd == "create_domain":
            result = self._create_domain(request)
        elif cmd == "checkpoint":  # save now (background: a forked child writes it)
            if request.get("background"):
                self.snapshot_in_background()
            else:
                self.snapshot()
            result = {"last_s": self.checkpoint_s, "guests_paused_s": self.checkpoint_pause_s}
        elif cmd == "meminfo":
            result = self._meminfo(int(request["domid"]))
        elif cmd == "destroy_domain":
            domid = int(request["domid"])
            try:
                self._destroy(domid)
            except HostCrashed as exc:
                self._crashed(str(exc))
                raise
            self.snapshot()
            result = {"domid": domid}
        else:
            raise _Refused(f"unknown host-API request {cmd!r}")
        return _reply(OK, json.dumps(result).encode())

    def _durable_domain(self, domid: int) -> None:
        """A new domain exists once a snapshot holds it (domain creation is not journaled):
        when the snapshot fails, the domain is destroyed again and the request fails."""
        try:
            self.snapshot()
        except StoreFailing as exc:
            self._store_failing(exc)
            self._destroy(domid)
            raise

    def _destroy(self, domid: int) -> None:
        """Domain death: its sockets go, a living guest shuts down, xenstore releases it."""
        self._unlisten(domid)
        if domid in self.machine.guests:
            self.machine.remove_guest(domid)
        else:
            self.host.destroy_domain(domid)
            self.xenstore.release_domain(domid)

    def _meminfo(self, domid: int) -> dict[str, Any]:
        """A living guest's memory as its kernel sees it, at the model's clock (what ``tune
        collect`` samples)."""
        machine = self.machine
        with machine.model_lock:
            mg = machine.guests.get(domid)
            if mg is None:
                raise _Refused(f"domain {domid} is not a living guest of this host")
            snap = mg.guest.memory_snapshot()
            return {"domid": domid, "name": mg.name, "model_s": machine.now,
                    "committed": snap.committed_pages, "reserve": snap.totalreserve_pages,
                    "max_pfn": snap.max_pfn, "totalram": snap.totalram_pages,
                    "frontswap": snap.frontswap_pages}

    def _create_domain(self, request: dict[str, Any]) -> dict[str, Any]:
        """A bare domain (``bare``), or a living guest running ``workload`` on ``kernel``."""
        name, mem = str(request["name"]), int(request["memory_mb"])
        if request.get("bare"):
            top = int(request.get("max_memory_mb") or mem)
            domid = self.host.create_domain(name, mem, top)
            self.xenstore.introduce_domain(domid, name, mem * 1024, top * 1024)
            self._listen(domid)
            self._durable_domain(domid)
            return {"domid": domid, "name": name, "memory_mb": mem, "max_memory_mb": top,
                    "living": False}
        try:
            spec = living_guest(name, workload=str(request.get("workload") or "web"),
                                kernel=str(request.get("kernel") or "3.10"), memory_mb=mem,
                                max_memory_mb=request.get("max_memory_mb"),
                                seed=len(self.host.domains))
            mg = self.machine.add_guest(spec)
        except GuestError as exc:
            raise _Refused(str(exc)) from None
        self._listen(mg.domid)
        self._durable_domain(mg.domid)
        return {"domid": mg.domid, "name": name, "memory_mb": mem,
                "max_memory_mb": spec.max_mb, "living": True, "workload": spec.workload,
                "kernel": spec.kernel}

    def status(self) -> dict[str, Any]:
        """The host, its domains and the tmem-list text (what ``emulator status`` shows)."""
        host = self.host
        info: dict[str, Any] = {
            "pid": os.getpid(), "state_dir": str(self.directory),
            "hypercall_socket": str(self.socket_path),
            "xenstore_socket": str(self.directory / XENSTORE_SOCKET),
            "connect": f"emulator:{self.directory}",
            "uptime_s": round(time.time() - self.started, 1),
            "xen_version": f"{host.version}{host.extraversion}", "memory_mb": host.memory_mb,
            "free_mb": host.heap_free // 256, "tmem": host.tmem_enabled,
            "tmem_compress": host.boot["tmem_compress"], "designed": host.designed,
            "crashed": host.crashed, "connections": len(self._conns),
            "accept_failures": self.accept_failures,
            "tmem_ops": host.tmem.Tt,  # every tmem hypercall since boot (Tt of tmem-list)
            "journal_bytes": self.store.journal_bytes, "domains": [], "tmem_list": None,
            "guests": self.machine.report(),
            "clock": {"model_s": round(self.machine.now, 1), "speed": self.machine.speed,
                      "lag_s": round(self.machine.lag, 1), "error": self.machine.clock_error},
            "snapshot_in_progress": self._child is not None,
            "checkpoint": {"interval_s": self.config.checkpoint_s,
                           "last_s": round(self.checkpoint_s, 3),
                           "guests_paused_s": round(self.checkpoint_pause_s, 3)},
        }
        if host.crashed:
            return info
        info["domains"] = [{"domid": d, "name": dom.name, "memory_mb": dom.nr_pages // 256,
                            "max_memory_mb": dom.max_pages // 256,
                            "tmem_persistent_pages": dom.tmem_pages}
                           for d, dom in sorted(host.domains.items())]
        if host.tmem_enabled:
            try:
                info["tmem_list"] = host.tmem_list(None)
            except HostCrashed as exc:  # 4.5 walking a freed shared pool: the LIST crashes Xen
                self._crashed(str(exc))
                info.update(crashed=host.crashed, domains=[])
        return info


def _frame(body: bytes) -> bytes:
    return FRAME.pack(len(body)) + body


def _reply(status: int, payload: bytes | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else payload
    return _frame(bytes([status]) + data)


# ---- boot: load, replay, serve ---------------------------------------------------------------


class Loaded(NamedTuple):
    """What start-up found: the host, a note for the log, the saved guests of its last
    checkpoint (``None`` if none) and whether the configured guests start (a host booted for
    the first time; one rebooted after a crash comes back empty)."""

    host: EmulatedHost
    note: str
    guests: bytes | None = None
    new: bool = False


def load_host(store: StateStore, config: HostConfig) -> Loaded:
    """The host to serve: the saved one with its journal replayed, or a new one."""
    state, records = store.load()
    if state is None:
        return Loaded(config.boot(), "booted a new host", new=True)
    machine = state.pop("machine", None) or {}
    guests = machine.get("guests")
    conflicts = config.conflicts(state["config"])
    if conflicts:
        raise EmulatorError(f"{store.directory} holds a saved host with "
                            + ", ".join(conflicts) + "; drop those options or use --fresh")
    if state.get("crashed"):
        saved = state["config"]
        return Loaded(HostConfig(saved["xen_version"], saved["memory_mb"],
                                 saved["tmem_compress"], saved["designed"],
                                 tmem_dedup=saved.get("tmem_dedup"),
                                 tmem_tze=saved.get("tmem_tze")).boot(),
                      f"the saved host had crashed ({state['crashed']}); booted a new one")
    host = EmulatedHost.from_state(state)
    orphans = 0
    for rec in records:
        dom = host.domains.get(rec.domid)
        if dom is None:  # its domain died in a crash the journal saw first
            orphans += 1
            continue
        for address, data in rec.captures:
            dom.mem[address:address + len(data)] = data
        try:
            host.hypercall(rec.domid, rec.op, *rec.args)
        except HostCrashed:
            break
    note = f"restored the saved host and replayed {len(records)} journaled hypercall(s)"
    if guests:
        note += "; its living guests continue from the last checkpoint"
    if config.guests:
        note += " (--guests applies to a new host only)"
    if orphans:
        note += f" ({orphans} for domains that no longer exist)"
        log.warning("%d journal record(s) name domains that no longer exist", orphans)
    if host.crashed:
        return Loaded(host, note + f"; the host crashed again: {host.crashed}")
    # a clean copy: replay left its scratch data in guest frames that nobody owns any more
    return Loaded(EmulatedHost.from_state(host.to_state()), note, guests)


def _lock(directory: Path) -> int:
    fd = open_private(directory / LOCK, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        pid = running(directory)
        raise EmulatorError(f"an emulator daemon is already running in {directory}"
                            + (f" (pid {pid})" if pid else "")) from None
    return fd


def serve(directory: Path, config: HostConfig, *, fresh: bool = False, sync: bool = True,
          recover: bool = False, on_ready: Any = None) -> None:
    """Run a daemon in this process until SIGTERM/SIGINT (or ``on_ready``'s daemon is told to
    stop); ``on_ready(daemon, note)`` is called once it serves. Damaged saved state stops it
    (``StateDamaged``) unless ``recover``. How it stopped is left in ``daemon.exit`` for
    :func:`stop` (whether the final snapshot was written)."""
    directory = prepare_state_dir(directory, parents=True)
    lock = _lock(directory)
    try:
        store = StateStore(directory, sync=sync)
        if fresh:
            store.discard()
        recovered = store.recover() if recover else {}
        with contextlib.suppress(FileNotFoundError):
            (directory / EXITFILE).unlink()
        host, note, guests, new = load_host(store, config)
        if recovered.get("kept"):
            note = (f"recovered: kept the damaged files in {recovered['kept']}, "
                    + (f"set aside {' and '.join(recovered['set_aside'])}"
                       if recovered["set_aside"] else
                       f"dropped {recovered['dropped_bytes']} journal byte(s) after record "
                       f"{recovered['records']}") + "; " + note)
        daemon = Daemon(directory, host, store, config=config, guests=guests, new=new)
        daemon.open()
        previous = {}
        try:
            if threading.current_thread() is threading.main_thread():
                previous = {s: signal.signal(s, lambda *_: daemon.request_stop())
                            for s in (signal.SIGTERM, signal.SIGINT)}
            write_private(directory / PIDFILE, f"{os.getpid()}\n")
            log.info("serving on %s: %s", daemon.socket_path, note)
            if host.crashed:
                log.error("the emulated host crashed: %s; every domain is gone", host.crashed)
            if on_ready is not None:
                on_ready(daemon, note)
            daemon.serve()
        finally:
            daemon.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            _write_exit(directory, daemon)
            if daemon.saved:
                log.info("stopped; state saved in %s", directory)
            else:
                log.error("stopped; the final snapshot failed (%s); the journal in %s still "
                          "holds every acknowledged call", daemon.store_error, directory)
    finally:
        with contextlib.suppress(FileNotFoundError):
            (directory / PIDFILE).unlink()
        os.close(lock)


# ---- the library side of the CLI ------------------------------------------------------------


def control(directory: Path, cmd: str, *, timeout: float = 10.0, **args: Any) -> Any:
    """One host-API request to the daemon in ``directory`` (as dom0)."""
    check_state_dir(directory)
    with SocketHypervisor(directory / HYPERCALL_SOCKET, 0, timeout=timeout) as hv:
        return hv.control(cmd, **args)


def start(directory: Path, config: HostConfig, *, fresh: bool = False, sync: bool = True,
          recover: bool = False, timeout: float = 60.0) -> dict[str, Any]:
    """Start a daemon in the background and wait (at most ``timeout`` s) until it serves.

    Returns its status plus ``already_running`` (nothing was started) and ``note``.
    """
    if running(directory) is not None:
        status = control(directory, "status")
        conflicts = config.conflicts(status)
        if conflicts or fresh:
            raise EmulatorError(f"an emulator daemon is already running in {directory} with "
                                + (", ".join(conflicts) or "its host")
                                + "; stop it first (`xentmem emulator down`)")
        return {**status, "already_running": True, "note": "already running"}
    directory = prepare_state_dir(directory, parents=True)
    argv = [sys.executable, "-m", "xentmem.emulator.daemon", "--state", str(directory),
            *config.argv()]
    argv += ["--fresh"] if fresh else []
    argv += ["--recover"] if recover else []
    argv += [] if sync else ["--no-sync"]
    with os.fdopen(open_private(directory / LOGFILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND),
                   "ab") as logfile:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=logfile, start_new_session=True)
    assert proc.stdout is not None
    try:
        line, eof = _read_line(proc.stdout.fileno(), time.monotonic() + timeout)
        proc.wait(5)  # the first child exits right after forking the daemon
    finally:
        proc.stdout.close()
    if line.startswith("READY "):
        return {**json.loads(line[6:]), "already_running": False}
    if line.startswith("ERROR "):
        raise EmulatorError(line[6:])
    try:
        tail = (directory / LOGFILE).read_text(errors="replace").strip().splitlines()[-1:]
    except OSError:
        tail = []
    what = "exited before serving" if eof else f"did not serve within {timeout:g} s"
    raise TransportError(f"the emulator daemon {what} (see {directory / LOGFILE}"
                         + (f": {tail[0]}" if tail else "") + ")")


def _read_line(fd: int, deadline: float) -> tuple[str, bool]:
    """The first line written to ``fd`` before ``deadline``, and whether the writer hung up."""
    data = b""
    eof = False
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            eof = True
            break
        data += chunk
    return data.split(b"\n", 1)[0].decode("utf-8", "replace"), eof


def stop(directory: Path, *, timeout: float = 30.0) -> dict[str, Any] | None:
    """SIGTERM the daemon in ``directory`` and wait for it to save its state and exit;
    SIGKILL it after ``timeout`` s (the journal still holds every acknowledged call).
    ``None`` when no daemon was running."""
    pid = running(directory)
    if pid is None:
        return None
    if not pid:
        raise EmulatorError(f"a daemon holds {directory / LOCK} but wrote no pid file")
    os.kill(pid, signal.SIGTERM)
    killed = not _wait_gone(directory, timeout)
    if killed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not _wait_gone(directory, 5.0):
            raise EmulatorError(f"emulator daemon pid {pid} survived SIGKILL")
    exit_info: dict[str, Any] = {}
    if not killed:
        with contextlib.suppress(OSError, ValueError):
            exit_info = json.loads((directory / EXITFILE).read_text())
    return {"pid": pid, "killed": killed, "state_dir": str(directory),
            "saved": bool(exit_info.get("saved")) and not killed,
            "error": exit_info.get("error")}


def _write_exit(directory: Path, daemon: Daemon) -> None:
    """Tell :func:`stop` how this daemon ended (best effort: the disk may be full)."""
    with contextlib.suppress(OSError):
        (directory / EXITFILE).write_text(json.dumps({"saved": daemon.saved,
                                                      "error": daemon.store_error}))


def _wait_gone(directory: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while running(directory) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# ---- python -m xentmem.emulator.daemon ---------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xentmem.emulator.daemon",
                                     description="Serve an emulated Xen host (see the module "
                                     "docstring).")
    parser.add_argument("--state", type=Path, default=None)
    parser.add_argument("--xen-version")
    parser.add_argument("--memory-mb", type=int)
    parser.add_argument("--guests", type=int, default=0)
    parser.add_argument("--guest-memory-mb", type=int, default=128)
    parser.add_argument("--tmem-compress", action="store_true", default=None)
    parser.add_argument("--tmem-dedup", action="store_true", default=None)
    parser.add_argument("--tmem-tze", action="store_true", default=None)
    parser.add_argument("--designed", action="store_true", default=None)
    parser.add_argument("--workloads", default="")
    parser.add_argument("--kernels", default="")
    parser.add_argument("--bare", action="store_true")
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--scenario")
    parser.add_argument("--checkpoint-s", type=float, default=30.0)
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--recover", action="store_true")
    parser.add_argument("--no-sync", dest="sync", action="store_false")
    parser.add_argument("--foreground", action="store_true")
    args = parser.parse_args(argv)
    directory = (args.state or default_state_dir()).absolute()
    config = HostConfig(args.xen_version, args.memory_mb, args.tmem_compress, args.designed,
                        args.guests, args.guest_memory_mb,
                        _positions(args.workloads), _positions(args.kernels), args.bare,
                        args.speed,
                        args.scenario, args.checkpoint_s, args.tmem_dedup, args.tmem_tze)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not args.foreground and os.fork():
        os._exit(0)  # second fork: the daemon is no child of whoever ran `up`

    def ready(daemon: Daemon, note: str) -> None:
        print("READY " + json.dumps({**daemon.status(), "note": note}), flush=True)
        if not args.foreground:  # detach from the pipe `up` reads
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.close(null)

    try:
        serve(directory, config, fresh=args.fresh, sync=args.sync, recover=args.recover,
              on_ready=ready)
    except (EmulatorError, OSError, ValueError) as exc:
        print(f"ERROR {exc}", flush=True)
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
