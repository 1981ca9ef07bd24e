"""A lazy, quiet libvirt connection with a timeout on connecting.

libvirt prints its errors to stderr by default and ``open`` can block on an unreachable daemon;
this wrapper silences the printing, connects on first use, bounds the connect time and turns
failures into ``LibvirtError``.
"""

from __future__ import annotations

import contextlib
import os
import threading

import libvirt

from xentmem.errors import LibvirtError

__all__ = ["DEFAULT_URI", "LibvirtConnection"]

DEFAULT_URI = "xen:///system"


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

    def _open(self) -> libvirt.virConnect:
        result: dict[str, object] = {}

        def target() -> None:
            try:
                opener = libvirt.openReadOnly if self.read_only else libvirt.open
                result["conn"] = opener(self.uri)
            except libvirt.libvirtError as exc:
                result["error"] = exc

        # libvirt's open has no timeout of its own; a daemon thread bounds it.
        thread = threading.Thread(target=target, name="libvirt-open", daemon=True)
        thread.start()
        thread.join(self.timeout)
        if thread.is_alive():
            raise LibvirtError(f"{self.uri}: no answer within {self.timeout:g} s")
        if "error" in result:
            message = result["error"].get_error_message()  # type: ignore[union-attr]
            raise LibvirtError(f"{self.uri}: {message}")
        return result["conn"]  # type: ignore[return-value]

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

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self._conn.close()
            self._conn = None
