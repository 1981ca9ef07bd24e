"""Naming a host at the edge: one ``-c/--connect URI`` (or ``$XENTMEM_CONNECT``) for every
command that talks to one, resolved here, once, into a :class:`Target`.

``xen:///system``, ``privcmd[:DEVICE]``
    this dom0: privcmd (DEVICE, default ``/dev/xen/privcmd``), the local xenstored as the C tools
    resolve it (``$XENSTORED_PATH``, ``$XENSTORED_RUNDIR/socket``, the xenbus device) and libvirt
    ``xen:///system``.
``emulator[:STATE_DIR|SOCKET][?domid=N&timeout=S]``
    the daemon of ``xentmem emulator up``: ``STATE_DIR/hypercall.sock`` and its xenstored,
    ``STATE_DIR/xenstore.sock`` (``xenstore.sock.domN`` as domain N), no libvirt. ``emulator``
    alone is the default state directory; a SOCKET path (an existing non-directory, or a name
    ending in ``.sock``) finds the xenstored beside it.
any other scheme of :data:`TRANSPORTS`
    that hypervisor transport only (tests register an in-process one).

With neither ``-c`` nor ``$XENTMEM_CONNECT`` (:func:`resolve_target` with ``connect=None``): just
the xenstored that ``--xenstored`` gives, if it does; else this dom0 when a privcmd device exists;
else the daemon in the default state directory when one runs there; else this domain when it has
a xenbus device (a guest without privcmd: the agent's case); else one line saying how to get a
host (exit 1).

``--xenstored PATH`` and ``--libvirt-uri URI`` (or ``$XENTMEM_LIBVIRT_URI``) override the parts
the URI resolved; a domain (``?domid=N`` or a command's ``--domid N``) picks that domain's socket
of the xenstored, ``<xenstored>.domN``, as our xenstored names them.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from xentmem.cli._app import UsageError
from xentmem.cli._options import Connect, LibvirtUri, XenStored  # re-exported
from xentmem.errors import TransportError
from xentmem.hypercalls._where import PRIVCMD_PATHS  # light: no cffi, no ABI
from xentmem.xenstore._client import XENBUS_PATHS  # a guest's way to its xenstore

if TYPE_CHECKING:
    from xentmem.hypercalls import Hypervisor
    from xentmem.xenstore import XenStoreClient

__all__ = [
    "CONNECT_ENV",
    "TRANSPORTS",
    "XEN_SYSTEM",
    "Connect",
    "LibvirtUri",
    "Target",
    "XenStored",
    "resolve_target",
]

CONNECT_ENV = "XENTMEM_CONNECT"
LIBVIRT_ENV = "XENTMEM_LIBVIRT_URI"
XEN_SYSTEM = "xen:///system"  # libvirt's name for the local Xen host

def _privcmd_transport(rest: str) -> Hypervisor:
    from xentmem.hypercalls import PrivcmdHypervisor

    return PrivcmdHypervisor(rest or None)


def _emulator_transport(rest: str) -> Hypervisor:
    from xentmem.hypercalls.socket import SocketHypervisor

    try:
        return SocketHypervisor.from_uri(rest)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


# hypervisor transports by scheme: ``factory(what follows "scheme:")``; a scheme that is only
# here (not in _SCHEMES) names a target with that hypervisor and nothing else
TRANSPORTS: dict[str, Callable[[str], Hypervisor]] = {
    "privcmd": _privcmd_transport,
    "emulator": _emulator_transport,
}


@dataclass(frozen=True)
class Target:
    """A host as the commands see it: where its hypervisor, xenstored and libvirt are.

    ``None`` for a part the host does not have (an emulated host has no libvirt).
    """

    uri: str | None  # what named it, normalised; None: only the parts given as options
    hypervisor_uri: str | None  # a TRANSPORTS URI
    xenstored_path: str | None
    libvirt_uri: str | None
    domid: int = 0  # the domain we act as
    state_dir: str | None = None  # the emulator daemon's

    def open_hypervisor(self) -> Hypervisor:
        """The hypervisor transport; the caller closes it."""
        if self.hypervisor_uri is None:
            raise UsageError(f"{self.uri or 'the --xenstored host'} has no hypervisor: name one "
                             "with -c")
        scheme, _, rest = self.hypervisor_uri.partition(":")
        return TRANSPORTS[scheme](rest)

    def xenstore(self, timeout: float) -> XenStoreClient:
        """A client of its xenstored (connecting lazily); the caller closes it."""
        from xentmem.xenstore import XenStoreClient

        if self.xenstored_path is None:
            raise UsageError(f"{self.uri} has no xenstored: give --xenstored PATH")
        path = self.xenstored_path
        if not os.path.exists(path):
            if self.state_dir is not None and os.path.dirname(path) == self.state_dir:
                from xentmem.emulator._statedir import running

                if running(Path(self.state_dir)) is None:
                    raise TransportError(errno.ENOENT, f"no emulator daemon in {self.state_dir}; "
                                         "start one with `xentmem emulator up --state "
                                         f"{self.state_dir}`")
            if self.domid:  # a domain's own socket: the domid was wrong
                raise UsageError(f"no socket {path}: is domain {self.domid} introduced to that "
                                 "xenstored?")
        return XenStoreClient(path, timeout=timeout)


def _merge_domid(asked: int, given: int | None) -> int:
    if given is not None and asked and given != asked:
        raise UsageError(f"--domid {given} contradicts the URI's domid={asked}")
    return asked if given is None else given


def _dom0(uri: str, device: str, domid: int | None) -> Target:
    from xentmem.xenstore import resolve_path

    return Target(uri, f"privcmd:{device}", resolve_path(), XEN_SYSTEM, domid or 0)


def _xen(rest: str, domid: int | None) -> Target:
    if rest not in ("///system", "///"):
        raise UsageError(f"xen:{rest}: only this host, {XEN_SYSTEM}, can be named (its privcmd "
                         "and xenstored are local)")
    return _dom0(XEN_SYSTEM, "", domid)


def _privcmd(rest: str, domid: int | None) -> Target:
    return _dom0(f"privcmd:{rest}" if rest else "privcmd", rest, domid)


def _emulator(rest: str, domid: int | None) -> Target:
    from xentmem.emulator._statedir import XENSTORE_SOCKET  # the daemon's layout, named once
    from xentmem.hypercalls._where import HYPERCALL_SOCKET, default_state_dir, parse_uri

    try:
        location, asked, timeout = parse_uri(rest)
    except ValueError as exc:
        raise UsageError(f"emulator:{rest}: {exc}") from None
    domid = _merge_domid(asked, domid)
    path = Path(location) if location else default_state_dir()
    # a socket names itself; anything else (also a directory not made yet) is a state directory
    is_socket = not path.is_dir() and (path.exists() or path.name.endswith(".sock"))
    directory, sock = (path.parent, path) if is_socket else (path, path / HYPERCALL_SOCKET)
    named = directory if sock.name == HYPERCALL_SOCKET else sock  # the shortest that says it
    uri = f"emulator:{named}" + (f"?domid={domid}" if domid else "")
    return Target(uri, f"emulator:{sock}?domid={domid}&timeout={timeout:g}",
                  str(directory / XENSTORE_SOCKET), None, domid, str(directory))


# target schemes: ``parse(what follows "scheme:", --domid or None) -> Target`` with the dom0
# socket of its xenstored (resolve_target picks a domain's)
_SCHEMES: dict[str, Callable[[str, int | None], Target]] = {
    "xen": _xen,
    "privcmd": _privcmd,
    "emulator": _emulator,
}


def _parse(uri: str, domid: int | None) -> Target:
    scheme, sep, rest = uri.partition(":")
    if "?" in scheme:  # emulator?domid=N: the default directory, with parameters
        scheme, _, query = scheme.partition("?")
        rest = f"?{query}{sep}{rest}"
    if scheme in _SCHEMES:
        return _SCHEMES[scheme](rest, domid)
    if scheme in TRANSPORTS:
        return Target(uri, uri, None, None, domid or 0)
    raise UsageError(f"unknown connection {uri!r}: expected {XEN_SYSTEM}, privcmd[:DEVICE] or "
                     "emulator[:STATE_DIR|SOCKET][?domid=N]")


def _detect(domid: int | None, xenstored: str | None) -> Target:
    """The host here, when nothing names one."""
    if xenstored is not None:
        # just that xenstored: pointed at one (a test's, an emulator's), the user did not ask
        # for this machine's libvirt to be bolted onto it
        return Target(None, None, xenstored, None, domid or 0)
    if any(os.path.exists(p) for p in PRIVCMD_PATHS):
        return _parse(XEN_SYSTEM, domid)
    from xentmem.emulator._statedir import running  # only off Xen
    from xentmem.hypercalls._where import ROOT_STATE_DIR, default_state_dir

    state = default_state_dir()
    if running(state) is not None:
        return _parse("emulator", domid)
    if any(os.path.exists(p) for p in XENBUS_PATHS):
        return _parse(XEN_SYSTEM, domid)  # a guest without privcmd: its xenstore still answers
    owner = _owner(ROOT_STATE_DIR) if state != ROOT_STATE_DIR else None
    if owner is not None:
        # root's daemon: its directory and sockets are root's only (0700 / 0600)
        raise TransportError(errno.EACCES, f"no emulator daemon of yours in {state}; "
                             f"{ROOT_STATE_DIR} is {owner}'s and only {owner} may use its "
                             f"daemon: run as {owner}, or start your own with `xentmem "
                             "emulator up`")
    # exit 1, not 2: the command line is well formed, this machine just has no host to talk to
    # (as `-c emulator:DIR` naming a stopped daemon fails with 1)
    raise TransportError(errno.ENOENT, f"no host here: no /dev/xen/privcmd and no emulator "
                         f"daemon in {state}; start one with `xentmem emulator up`, or name a "
                         f"host with -c emulator:DIR or -c {XEN_SYSTEM}")


def _owner(directory: Path) -> str | None:
    """Who owns ``directory`` when it is someone else (None: nobody, or us)."""
    try:
        uid = directory.stat().st_uid
    except OSError:
        return None
    if uid == os.geteuid():
        return None
    return "root" if uid == 0 else f"uid {uid}"


def resolve_target(connect: str | None = None, *, xenstored: str | None = None,
                   libvirt_uri: str | None = None, domid: int | None = None,
                   default: str | None = None) -> Target:
    """The host named by ``connect``, else ``$XENTMEM_CONNECT``, else ``default``, else the one
    found here (see the module docstring), with ``xenstored`` / ``libvirt_uri`` (else
    ``$XENTMEM_LIBVIRT_URI``) overriding its parts and ``domid`` (a command's ``--domid``)
    choosing the domain to act as.

    A malformed or unknown URI is a :class:`UsageError` (exit 2); no host at all is a
    ``TransportError`` (exit 1).
    """
    uri = connect or os.environ.get(CONNECT_ENV) or default
    target = _parse(uri, domid) if uri else _detect(domid, xenstored)
    base = xenstored or target.xenstored_path  # the xenstored's own (dom0) socket
    path = f"{base}.dom{target.domid}" if base and target.domid else base  # domain_socket(N)
    return replace(target, xenstored_path=path,
                   libvirt_uri=libvirt_uri or os.environ.get(LIBVIRT_ENV) or target.libvirt_uri)
