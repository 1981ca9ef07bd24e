"""Where the agent applies settings: a sysfs tree (a real guest's ``/sys``, or a directory laid
out by :meth:`xentmem.guest.SysfsView.mirror`) or an emulated guest model directly.

Both speak the kernel's file names and text (ref linux-tmem-frontends.md §3.1, §4.2-§4.3): the
agent reads and writes the same relative paths either way. A sink raises ``GuestError`` with the
reason when the guest refuses a write; that reason ends up in ``data/tmem/refused/<key>``.

The guest model is imported only when a :class:`ModelSink` is made: a real guest's agent (and
the single-file agent, :mod:`xentmem.agent.pyz`) never loads it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from xentmem.errors import GuestError, errno_name

from .procfs import render_zoneinfo

if TYPE_CHECKING:
    from xentmem.guest import Guest

__all__ = ["MODULE_PARAMS", "ModelSink", "Sink", "SysfsSink", "module_param_path"]

MODULE = "tmem"  # drivers/xen/tmem.c builds module "tmem"
MODULE_PARAMS = ("frontswap", "cleancache", "selfballooning", "selfshrinking")
_READ_LIMIT = 256  # a sysfs attribute is one short line; never read more
# procfs files the self-balloon law reads: zoneinfo lists every CPU's pageset per zone. A file
# longer than its limit reads as absent rather than cut short (a truncated zoneinfo would give a
# smaller totalreserve_pages).
_PROC_LIMITS = {"proc/meminfo": 64 << 10, "proc/zoneinfo": 4 << 20, "proc/vmstat": 64 << 10}
_ZONEINFO = "proc/zoneinfo"


def module_param_path(name: str) -> str:
    return f"sys/module/{MODULE}/parameters/{name}"


@runtime_checkable
class Sink(Protocol):
    """The guest's knobs as sysfs-relative paths (``sys/devices/system/xen_memory/...``)."""

    kind: str  # published as data/tmem/sink

    def read(self, path: str) -> str | None:
        """The file's text, or None if the file does not exist (feature absent)."""
        ...

    def write(self, path: str, text: str) -> None:
        """Write like ``echo TEXT > /path``; ``GuestError`` if the kernel refuses."""
        ...

    def set_module_param(self, name: str, value: bool) -> None:
        """Change a ``tmem`` module parameter (``GuestError`` where that is impossible)."""
        ...


class SysfsSink:
    """Files under ``root``: ``/`` inside a real guest, a temporary directory in tests."""

    kind = "sysfs"

    def __init__(self, root: str | os.PathLike[str] = "/") -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"SysfsSink({str(self.root)!r})"

    def read(self, path: str) -> str | None:
        limit = _PROC_LIMITS.get(path)
        try:
            with open(self.root / path, "rb") as f:
                raw = f.read(_READ_LIMIT if limit is None else limit + 1)
        except OSError:
            return None
        if limit is not None and len(raw) > limit:
            return None
        return raw.decode("ascii", "replace")

    def write(self, path: str, text: str) -> None:
        # O_WRONLY without O_CREAT: a missing attribute must not be created in a test tree
        try:
            fd = os.open(self.root / path, os.O_WRONLY | os.O_TRUNC)
        except OSError as exc:
            raise GuestError(f"/{path}: {_why(exc)}") from None
        try:
            os.write(fd, text.encode("ascii"))
        except OSError as exc:  # the kernel's -EINVAL/-EPERM arrive here
            raise GuestError(f"/{path}: {_why(exc)}") from None
        finally:
            os.close(fd)

    def set_module_param(self, name: str, value: bool) -> None:
        # tmem's parameters are read-only after load (mode 0444), and the module has no exit
        raise GuestError(f"tmem.{name} is read-only once the tmem module is loaded; boot the "
                         f"guest with tmem.{name}={int(value)}")


def _why(exc: OSError) -> str:
    code = exc.errno or errno.EIO
    return f"{exc.strerror or os.strerror(code)} (-{errno_name(code)})"


class ModelSink:
    """An emulated guest (:class:`xentmem.guest.Guest`), through its :class:`SysfsView`, so
    writes follow the kernel's parsing rules. Unlike a real kernel, the model can unload and
    reload its ``tmem`` backend, so frontswap and cleancache can be toggled at run time: the
    reload drains frontswap pages back to swap first (the seed's "next goal")."""

    kind = "model"

    def __init__(self, guest: Guest) -> None:
        from xentmem.guest import SysfsView

        self.guest = guest
        self.view = SysfsView(guest)

    def __repr__(self) -> str:
        return f"ModelSink({self.guest.name!r})"

    def read(self, path: str) -> str | None:
        try:
            return self.view.read(path)
        except GuestError:
            if path == _ZONEINFO:  # the view has no zoneinfo: the model's numbers, one zone
                g = self.guest
                return render_zoneinfo(totalreserve_pages=g.totalreserve_pages,
                                       max_pfn=g.max_pfn, managed_pages=g.totalram_pages)
            return None

    def write(self, path: str, text: str) -> None:
        self.view.write(path, text)

    def set_module_param(self, name: str, value: bool) -> None:
        from xentmem.guest import XenTmem

        if name not in MODULE_PARAMS:
            raise GuestError(f"tmem has no parameter {name!r}")
        if not self.guest.kernel.has_tmem:
            raise GuestError(self.guest.kernel.missing("tmem"))
        old = self.guest.backend
        if not isinstance(old, XenTmem):
            raise GuestError("the tmem module is not loaded")
        knobs = self.guest.selfballoon.knobs
        # keep the run-time self-balloon flags; module_init forces them off without frontswap
        params = {**old.params, "selfballooning": knobs.selfballooning,
                  "selfshrinking": knobs.frontswap_selfshrinking, name: bool(value)}
        self.guest.load_backend(XenTmem(old.tmem, **params), replace=True)
