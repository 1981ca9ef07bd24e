"""What the toolstack (libxl) writes into xenstore when it creates and destroys a domain.

Works on any :class:`~xentmem.xenstore.XenStore` (our server in-process, our server or the real
oxenstored over a socket), always as dom0. Layout and permissions follow libxl 4.17
(``libxl__domain_make`` and ``libxl__build_post``):

=================================  ==========  =====================================
node (under /local/domain/N)       perms       written by
=================================  ==========  =====================================
``.``                              ``n0 rN``   toolstack; the guest may read
``name``, ``domid``                inherited   toolstack
``memory/static-max``, ``target``  inherited   toolstack (KiB); the balloon driver
                                               watches ``memory/target``
``memory/videoram``                inherited   toolstack
``control``, ``device``            ``n0 rN``   toolstack
``control/shutdown``, ``sysrq``    ``nN``      guest-owned: toolstack requests, guest acks
``control/platform-feature-*``     inherited   toolstack (values "1")
``data``, ``drivers``, ``feature``,``nN``      guest-owned, for the guest (agents) to write
``attr``, ``error``
=================================  ==========  =====================================
"""

from __future__ import annotations

import contextlib

from xentmem.errors import XenStoreNotFound

from ._client import XenStore, transaction
from ._wire import Perm

__all__ = ["domain_path", "layout_dom0", "layout_domain", "teardown_domain"]

GUEST_OWNED = ("data", "drivers", "feature", "attr", "error", "control/shutdown", "control/sysrq")


def domain_path(domid: int) -> str:
    return f"/local/domain/{domid}"


def layout_domain(xs: XenStore, domid: int, name: str, memory_kib: int, max_kib: int) -> None:
    """Create ``/local/domain/<domid>`` for a new domain (replacing any leftover), atomically."""
    if memory_kib < 0 or max_kib < memory_kib:
        raise ValueError(f"need 0 <= memory_kib <= max_kib, got {memory_kib}, {max_kib}")
    dom = domain_path(domid)
    ro = [Perm("n", 0), Perm("r", domid)]
    rw = [Perm("n", domid)]

    def build(tx) -> None:
        with contextlib.suppress(XenStoreNotFound):  # no /local/domain yet
            tx.rm(dom)
        tx.mkdir(dom)
        tx.set_perms(dom, ro)
        tx.write(f"{dom}/name", name)
        tx.write(f"{dom}/domid", str(domid))
        tx.write(f"{dom}/memory/static-max", str(max_kib))
        tx.write(f"{dom}/memory/target", str(memory_kib))
        tx.write(f"{dom}/memory/videoram", "0")
        for sub in ("control", "device"):
            tx.mkdir(f"{dom}/{sub}")
            tx.set_perms(f"{dom}/{sub}", ro)
        tx.write(f"{dom}/control/platform-feature-multiprocessor-suspend", "1")
        tx.write(f"{dom}/control/platform-feature-xs_reset_watches", "1")
        for sub in GUEST_OWNED:
            tx.mkdir(f"{dom}/{sub}")
            tx.set_perms(f"{dom}/{sub}", rw)

    transaction(xs, build)


def layout_dom0(xs: XenStore, memory_kib: int | None = None) -> None:
    """What xen-init-dom0 writes: ``/local/domain/0/name`` = Domain-0 and ``domid`` = 0."""
    xs.write("/local/domain/0/name", "Domain-0")
    xs.write("/local/domain/0/domid", "0")
    if memory_kib is not None:
        xs.write("/local/domain/0/memory/target", str(memory_kib))


def teardown_domain(xs: XenStore, domid: int) -> None:
    """Remove ``/local/domain/<domid>`` (what libxl does on destroy; the RELEASE is separate)."""
    xs.rm(domain_path(domid))
