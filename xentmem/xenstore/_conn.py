"""What the server's parts share: domains, connections, their limits, and a throttled log.

:class:`ConnectionLimits` bounds what one domain's socket connections may make the server hold
(:class:`~xentmem.xenstore.Quota` bounds what it may *store*); the defaults and why are in
:mod:`xentmem.xenstore.server`'s docstring.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from xentmem._compat import DATACLASS_SLOTS

from . import _wire
from ._store import Caller, Transaction

__all__ = ["DOM0_LIMITS", "Connection", "ConnectionLimits", "Domain", "LocalConnection", "Throttle"]


@dataclass(frozen=True, **DATACLASS_SLOTS)
class ConnectionLimits:
    """Per-domain limits on connections and on what the server buffers for them.

    The defaults are a guest's; :data:`DOM0_LIMITS` holds dom0's (generous: dom0 is the
    toolstack). Every byte count is of one connection unless its name says ``domain``.
    """

    connections: int = 32  # open socket connections; the excess is accepted and closed at once
    pause_at: int = 64 << 10  # unsent reply bytes at which its requests are no longer read...
    # ...until fewer than half of them are left (back-pressure)
    max_unread: int = 1 << 20  # unsent bytes (replies and watch events): the connection is dropped
    domain_unread: int = 4 << 20  # unsent bytes of all its connections: the one past it is dropped
    watch_events: int = 1024  # unsent watch events: dropped (oxenstored's quota-maxwatchevents)

    def __post_init__(self) -> None:
        if min(self.connections, self.pause_at, self.watch_events) < 1:
            raise ValueError(f"limits must be positive: {self}")
        if not self.pause_at <= self.max_unread <= self.domain_unread:
            raise ValueError(f"need pause_at <= max_unread <= domain_unread: {self}")

    def with_max_unread(self, max_unread: int) -> ConnectionLimits:
        """These limits with ``max_unread`` replaced (``pause_at`` and ``domain_unread`` follow
        it where they must)."""
        return dataclasses.replace(
            self,
            max_unread=max_unread,
            pause_at=max(1, min(self.pause_at, max_unread // 2)),
            domain_unread=max(self.domain_unread, max_unread),
        )


#: dom0's limits: its socket is the toolstack's, so only a runaway client is stopped.
DOM0_LIMITS = ConnectionLimits(
    connections=1024,
    pause_at=1 << 20,
    max_unread=8 << 20,  # what every connection was allowed before there were per-domain limits
    domain_unread=256 << 20,
    watch_events=65536,
)


class Domain:
    """One introduced domain (dom0 included)."""

    __slots__ = (
        "accept_at", "conns", "domid", "limits", "listener", "socket_path", "sockets", "target",
        "transactions", "watches",
    )  # fmt: skip

    def __init__(self, domid: int, limits: ConnectionLimits) -> None:
        self.domid = domid
        self.limits = limits
        self.target: int | None = None  # SET_TARGET: it acts with that domain's rights too
        self.listener: socket.socket | None = None  # its socket, while the server listens
        self.socket_path: str | None = None
        self.accept_at = 0.0  # monotonic time its listener accepts again after EMFILE & co
        self.conns: set[Connection] = set()  # every open connection acting as it
        self.sockets = 0  # how many of ``conns`` are sockets: what limits.connections counts
        self.watches = 0  # its watches, for Quota.max_watches
        self.transactions = 0  # its open transactions, for Quota.max_transactions


class Connection:
    """One client connection on a socket (and the base of the in-process one)."""

    __slots__ = (
        "caller", "closed", "domain", "event_ends", "inbuf", "mask", "out", "paused", "sent",
        "sock", "transactions", "watches",
    )  # fmt: skip

    def __init__(self, sock: socket.socket | None, domain: Domain) -> None:
        self.sock = sock
        self.domain = domain
        self.caller = Caller(domain.domid, domain.target)
        # Received, not yet dispatched: a partial request (< 16 + 4096 bytes, a longer one is
        # refused), or while paused the rest of one recv() (64 KiB).
        self.inbuf = bytearray()
        self.out = bytearray()  # replies and watch events not yet sent
        self.sent = 0  # bytes sent so far: the stream offset at which ``out`` starts
        self.event_ends: deque[int] = deque()  # stream offset of the end of each unsent event
        self.transactions: dict[int, Transaction] = {}
        self.watches: list = []  # its _watches.Watch objects
        self.closed = False
        self.paused = False  # its requests are not read until its replies drain
        self.mask = 0  # the epoll events its socket is registered for

    def deliver(self, data: bytes) -> None:
        self.out += data

    def deliver_event(self, data: bytes) -> None:
        out = self.out
        out += data
        self.event_ends.append(self.sent + len(out))


class LocalConnection(Connection):
    """An in-process connection: replies are handed back, events go to ``on_event``."""

    __slots__ = ("on_close", "on_event")

    def __init__(self, domain: Domain, on_event: Callable[[bytes, bytes], None],
                 on_close: Callable[[], None]) -> None:  # fmt: skip
        super().__init__(None, domain)
        self.on_event = on_event
        self.on_close = on_close

    def deliver_event(self, data: bytes) -> None:
        path, token = ([*_wire.split_strings(data[_wire.HEADER_SIZE :]), b"", b""])[:2]
        self.on_event(path, token)


class Throttle:
    """A log that says one thing at most once per ``interval`` seconds per key (a listener, a
    domain), counting what it held back: a guest can make it neither spin nor fill a disk."""

    def __init__(self, log: logging.Logger, interval: float = 10.0) -> None:
        self.log = log
        self.interval = interval
        self._last: dict[object, tuple[float, int]] = {}  # key -> (time said, held back since)

    def __call__(self, level: int, key: object, msg: str, *args: object,
                 exc_info: bool = False) -> bool:  # fmt: skip
        """Log ``msg % args`` unless ``key`` spoke less than ``interval`` ago; True if logged."""
        now = time.monotonic()
        said, held = self._last.get(key, (-self.interval, 0))
        if now - said < self.interval:
            self._last[key] = (said, held + 1)
            return False
        if held:
            msg += " (%d more like it held back)"
            args = (*args, held)
        self._last[key] = (now, 0)
        self.log.log(level, msg, *args, exc_info=exc_info)
        return True
