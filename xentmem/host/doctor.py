"""``xentmem doctor``: what this machine (or a named host) offers, checked with harmless probes
(ref §5.3).

Each check answers plainly, including "not on Xen"; nothing here raises for a missing component.
The hypervisor is privcmd unless the caller hands another transport (the emulator daemon's).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass

from xentmem.abi import XenVersion
from xentmem.errors import EmulatorError, LibvirtError, TmemError, TransportError
from xentmem.host.libvirt import LibvirtConnection
from xentmem.hypercalls import Hypervisor, PrivcmdHypervisor, Tmem, xen_version

__all__ = ["Check", "run_checks", "xenstored_path"]


@dataclass(frozen=True)
class Check:
    """One row of the report: ``ok`` is None when the check could not apply."""

    check: str
    ok: bool | None
    status: str
    detail: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def xenstored_path() -> str:
    """Where a xenstore client connects, resolved as the C tools do."""
    if os.environ.get("XENSTORED_PATH"):
        return os.environ["XENSTORED_PATH"]
    rundir = os.environ.get("XENSTORED_RUNDIR", "/var/run/xenstored")
    return os.path.join(rundir, "socket")


def _tmem_meaning(exc: TmemError, version: XenVersion | None) -> tuple[str, str]:
    if exc.errno == errno.ENOSYS:
        if version is not None and not version.has_tmem:
            return "absent", f"Xen {version} has no tmem: it was removed in Xen 4.13"
        return "absent", "-ENOSYS: Xen built without tmem (CONFIG_TMEM=n) or Xen >= 4.13"
    if exc.errno == errno.ENODEV:
        return "disabled", "-ENODEV: tmem is built in but Xen was not booted with `tmem`"
    return "error", str(exc)


def _hypervisor_checks(open_hv: Callable[[], Hypervisor], name: str) -> list[Check]:
    try:
        hv = open_hv()
    except TransportError as exc:
        reason = exc.strerror or str(exc)
        if name == "privcmd":
            status, detail = "not on Xen", "no privcmd device to ask"
        else:
            status, detail = "unknown", f"no {name} to ask"
        return [Check(name, False, "missing", reason),
                Check("xen", None, status, detail),
                Check("tmem", None, status, detail)]
    where = str(getattr(hv, "path", name))
    try:
        try:
            version, extra = xen_version(hv)
        except (TmemError, TransportError, EmulatorError) as exc:
            return [Check(name, False, "refused", f"{where}: {exc}"),
                    Check("xen", None, "unknown", "xen_version refused"),
                    Check("tmem", None, "unknown", f"{name} refuses hypercalls")]
        rows = [Check(name, True, "usable", where),
                Check("xen", True, f"{version}{extra}", f"XENVER_version {version.word:#010x}")]
        tmem = Tmem(hv, version)
        try:
            pool = tmem.new_pool(persistent=False)
        except TmemError as exc:
            status, detail = _tmem_meaning(exc, version)
            rows.append(Check("tmem", False, status, detail))
        except (TransportError, EmulatorError) as exc:
            rows.append(Check("tmem", False, "error", str(exc)))
        else:
            tmem.destroy_pool(pool)
            rows.append(Check("tmem", True, "available",
                              f"probe pool {pool} created and destroyed"))
        finally:
            tmem.close()
        return rows
    finally:
        hv.close()


def _xenstored_check(path: str, timeout: float) -> Check:
    """Connect and ask for DIRECTORY of "/" (xenstore wire protocol, op 1)."""
    if not os.path.exists(path):
        return Check("xenstored", False, "missing", f"no socket at {path}")
    if stat.S_ISCHR(os.stat(path).st_mode):  # the C tools fall back to it inside a guest
        return Check("xenstored", None, "xenbus device",
                     f"{path}: a guest's link to xenstore; dom0's xenstored is not local")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(struct.pack("=4I", 1, 0x7EED, 0, 2) + b"/\0")
            header = sock.recv(16)
    except OSError as exc:
        return Check("xenstored", False, "unreachable", f"{path}: {exc.strerror or exc}")
    if len(header) != 16:
        return Check("xenstored", False, "unreachable", f"{path}: connection closed")
    op = struct.unpack("=4I", header)[0]
    return Check("xenstored", op == 1, "reachable" if op == 1 else "error reply", path)


def _libvirt_check(uri: str | None, timeout: float) -> Check:
    conn = LibvirtConnection(uri, timeout=timeout, read_only=True)
    try:
        kind, version = conn.hypervisor()
    except LibvirtError as exc:
        return Check("libvirt", False, "unreachable", str(exc))
    finally:
        conn.close()
    return Check("libvirt", True, "reachable", f"{conn.uri}: {kind} {version}")


def run_checks(*, privcmd_path: str | None = None, xenstored: str | None = None,
               libvirt_uri: str | None = None, timeout: float = 3.0,
               hypervisor: Callable[[], Hypervisor] | None = None, transport: str = "privcmd",
               libvirt: bool = True) -> list[Check]:
    """Every doctor check, in report order.

    ``hypervisor`` opens the transport to probe (default: privcmd at ``privcmd_path``), reported
    as ``transport``; ``libvirt=False`` says the host has none (an emulated host), unless
    ``libvirt_uri`` names one anyway.
    """
    open_hv = hypervisor or (lambda: PrivcmdHypervisor(privcmd_path))
    rows = [*_hypervisor_checks(open_hv, transport),
            _xenstored_check(xenstored or xenstored_path(), timeout)]
    if libvirt or libvirt_uri:
        return [*rows, _libvirt_check(libvirt_uri, timeout)]
    return [*rows, Check("libvirt", None, "not used",
                         "this host has no libvirt (--libvirt-uri checks one)")]
