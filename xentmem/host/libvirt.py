"""A lazy, quiet libvirt connection with a timeout on connecting.

libvirt prints its errors to stderr by default and ``open`` can block on an unreachable daemon;
this wrapper silences the printing, connects on first use, bounds the connect time and turns
failures into ``LibvirtError``.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import libvirt

from xentmem.errors import LibvirtError

__all__ = ["DEFAULT_URI", "DomainInfo", "LibvirtConnection"]

DEFAULT_URI = "xen:///system"
T = TypeVar("T")
_STATES = {libvirt.VIR_DOMAIN_NOSTATE: "nostate", libvirt.VIR_DOMAIN_RUNNING: "running",
           libvirt.VIR_DOMAIN_BLOCKED: "blocked", libvirt.VIR_DOMAIN_PAUSED: "paused",
           libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown", libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
           libvirt.VIR_DOMAIN_CRASHED: "crashed", libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended"}


@dataclass(frozen=True)
class DomainInfo:
    """One libvirt domain: ``domid`` is None while it is not running; memory in KiB."""

    name: str
    uuid: str
    domid: int | None
    state: str
    memory_kib: int
    max_kib: int
    persistent: bool


def _quiet(_ctx: object, _err: object) -> None:
    """libvirt error handler that prints nothing (errors still raise libvirtError)."""


libvirt.registerErrorHandler(_quiet, None)


class LibvirtConnection:
    """Connects to ``uri`` (default ``$LIBVIRT_DEFAULT_URI`` or xen:///system) on first use."""

    def __init__(self, uri: str | None = None, *, timeout: float = 5.0,
                 read_only: bool = False) -> None:
        self.uri = uri or os.environ.get("LIBVIRT_DEFAULT_URI") or DEFAULT_URI
        self.timeout = timeout
        self.read_only = read_only
        self._conn: libvirt.virConnect | None = None

    def _bounded(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` in a daemon thread, waited for at most ``timeout`` s: libvirt's own calls
        have no timeout and block on an unreachable or wedged daemon."""
        result: dict[str, Any] = {}

        def target() -> None:
            try:
                result["value"] = fn()
            except libvirt.libvirtError as exc:
                result["error"] = exc
            except Exception as exc:  # e.g. our own LibvirtError from a nested connect
                result["raise"] = exc

        thread = threading.Thread(target=target, name="libvirt-call", daemon=True)
        thread.start()
        thread.join(self.timeout)
        if thread.is_alive():
            raise LibvirtError(f"{self.uri}: {what}: no answer within {self.timeout:g} s")
        if "raise" in result:
            raise result["raise"]
        if "error" in result:
            raise LibvirtError(f"{self.uri}: {what}: {result['error'].get_error_message()}")
        return result["value"]

    def _open(self) -> libvirt.virConnect:
        opener = libvirt.openReadOnly if self.read_only else libvirt.open
        return self._bounded("connect", lambda: opener(self.uri))

    @property
    def conn(self) -> libvirt.virConnect:
        """The live connection, (re)connecting when needed."""
        if self._conn is None or not self._alive(self._conn):
            self._conn = self._open()
        return self._conn

    @staticmethod
    def _alive(conn: libvirt.virConnect) -> bool:
        try:
            return conn.isAlive() == 1
        except libvirt.libvirtError:
            return False

    def hypervisor(self) -> tuple[str, str]:
        """The driver type and its version, e.g. ("Test", "2.0.0")."""
        try:
            kind = self.conn.getType()
            word = self.conn.getVersion()
        except libvirt.libvirtError as exc:
            raise LibvirtError(f"{self.uri}: {exc.get_error_message()}") from None
        return kind, f"{word // 1000000}.{word // 1000 % 1000}.{word % 1000}"

    # --- domains ------------------------------------------------------------------------------

    def _lookup(self, dom: str | int) -> libvirt.virDomain:
        conn = self.conn
        if isinstance(dom, int):
            return conn.lookupByID(dom)
        return conn.lookupByName(dom)

    @staticmethod
    def _info(d: libvirt.virDomain) -> DomainInfo:
        state, max_kib, mem_kib, _vcpus, _cpu = d.info()
        domid = d.ID()
        return DomainInfo(name=d.name(), uuid=d.UUIDString(),
                          domid=domid if domid >= 0 else None,
                          state=_STATES.get(state, f"state{state}"), memory_kib=mem_kib,
                          max_kib=max_kib, persistent=bool(d.isPersistent()))

    def domains(self) -> list[DomainInfo]:
        """Every domain, running ones first by id, then inactive ones by name."""
        found = self._bounded("list domains", lambda: [self._info(d) for d in
                                                       self.conn.listAllDomains()])
        return sorted(found, key=lambda i: (i.domid is None, i.domid or 0, i.name))

    def domain(self, dom: str | int) -> DomainInfo | None:
        """One domain by name or (running) id; None if there is no such domain."""
        def get() -> DomainInfo | None:
            try:
                return self._info(self._lookup(dom))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return None
                raise
        return self._bounded(f"domain {dom}", get)

    def set_memory(self, dom: str | int, kib: int, *, config: bool = False) -> None:
        """``setMemoryFlags(kib, LIVE)`` (plus CONFIG: also the persistent definition)."""
        flags = libvirt.VIR_DOMAIN_AFFECT_LIVE
        if config:
            flags |= libvirt.VIR_DOMAIN_AFFECT_CONFIG
        self._bounded(f"set memory of {dom}",
                      lambda: self._lookup(dom).setMemoryFlags(kib, flags))

    def memory_stats(self, dom: str | int) -> dict[str, int]:
        """``virDomainMemoryStats`` in KiB (``actual``, ``unused``, ``available``, ``swap_in``,
        ...): what the balloon driver reports where no agent runs; empty when it reports none."""
        return self._bounded(f"memory stats of {dom}",
                             lambda: {str(k): int(v) for k, v in
                                      self._lookup(dom).memoryStats().items()})

    def metadata(self, dom: str | int, uri: str) -> str | None:
        """The live ``<metadata>`` element in namespace ``uri``, or None if there is none."""
        def get() -> str | None:
            try:
                return self._lookup(dom).metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, uri,
                                                  libvirt.VIR_DOMAIN_AFFECT_LIVE)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
                    return None
                raise
        return self._bounded(f"metadata of {dom}", get)

    def set_metadata(self, dom: str | int, xml: str | None, key: str, uri: str) -> None:
        """Set (``None``: remove) the metadata element ``uri`` (prefix ``key``): the live
        copy, and the persistent definition too when the domain has one."""
        def put() -> None:
            d = self._lookup(dom)
            flags = libvirt.VIR_DOMAIN_AFFECT_LIVE if d.isActive() else 0
            if d.isPersistent():
                flags |= libvirt.VIR_DOMAIN_AFFECT_CONFIG
            d.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, xml, key, uri, flags)
        self._bounded(f"set metadata of {dom}", put)

    def node_memory(self) -> tuple[int, int]:
        """The host's (total, free) memory in KiB."""
        def get() -> tuple[int, int]:
            conn = self.conn
            return conn.getInfo()[1] * 1024, conn.getFreeMemory() // 1024
        return self._bounded("node memory", get)

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self._conn.close()
            self._conn = None
