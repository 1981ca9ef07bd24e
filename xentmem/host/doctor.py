"""``xentmem doctor``: what this machine offers, checked with harmless probes (ref §5.3).

Each check answers plainly, including "not on Xen"; nothing here raises for a missing component.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import asdict, dataclass

from xentmem.abi import XenVersion
from xentmem.errors import LibvirtError, TmemError, TransportError
from xentmem.host.libvirt import LibvirtConnection
from xentmem.hypercalls import PrivcmdHypervisor, Tmem, xen_version

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


def _hypervisor_checks(privcmd_path: str | None) -> list[Check]:
    try:
        hv = PrivcmdHypervisor(privcmd_path)
    except TransportError as exc:
        reason = exc.strerror or str(exc)
        return [Check("privcmd", False, "missing", reason),
                Check("xen", None, "not on Xen", "no privcmd device to ask"),
                Check("tmem", None, "not on Xen", "no privcmd device to ask")]
    with hv:
        try:
            version, extra = xen_version(hv)
        except TmemError as exc:
            return [Check("privcmd", False, "refused", f"{hv.path}: {exc}"),
                    Check("xen", None, "unknown", "xen_version refused"),
                    Check("tmem", None, "unknown", "privcmd refuses hypercalls")]
        rows = [Check("privcmd", True, "usable", hv.path),
                Check("xen", True, f"{version}{extra}", f"XENVER_version {version.word:#010x}")]
        tmem = Tmem(hv, version)
        try:
            pool = tmem.new_pool(persistent=False)
        except TmemError as exc:
            status, detail = _tmem_meaning(exc, version)
            rows.append(Check("tmem", False, status, detail))
        else:
            tmem.destroy_pool(pool)
            rows.append(Check("tmem", True, "available",
                              f"probe pool {pool} created and destroyed"))
        finally:
            tmem.close()
        return rows


def _xenstored_check(path: str, timeout: float) -> Check:
    """Connect and ask for DIRECTORY of "/" (xenstore wire protocol, op 1)."""
    if not os.path.exists(path):
        return Check("xenstored", False, "missing", f"no socket at {path}")
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
               libvirt_uri: str | None = None, timeout: float = 3.0) -> list[Check]:
    """Every doctor check, in report order."""
    return [*_hypervisor_checks(privcmd_path),
            _xenstored_check(xenstored or xenstored_path(), timeout),
            _libvirt_check(libvirt_uri, timeout)]
