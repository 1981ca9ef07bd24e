"""``xentmem doctor``: is this machine (or the host ``-c`` names) a usable Xen/tmem host?"""

from __future__ import annotations

from typing import Annotated

import typer

from xentmem.cli._app import UsageError, sub_app
from xentmem.cli._connect import XEN_SYSTEM, resolve_target
from xentmem.cli._options import Connect, Json, LibvirtUri, XenStored
from xentmem.cli._render import render
from xentmem.host.doctor import run_checks

__all__ = ["doctor_app"]

doctor_app = sub_app()


@doctor_app.command()
def doctor(
    as_json: Json = False,
    connect: Connect = None,
    privcmd: Annotated[str | None, typer.Option(
        help="privcmd device to use (the same as -c privcmd:DEVICE).")] = None,
    xenstored: XenStored = None,
    libvirt_uri: LibvirtUri = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds per network check.")] = 3.0,
) -> None:
    """Check privcmd, the Xen version, tmem, xenstored and libvirt. Always exits 0."""
    if privcmd is not None and connect:
        raise UsageError("--privcmd and -c both name the hypervisor: give one")
    # Unnamed, the doctor examines this machine as a Xen host (never the emulator, never the
    # "no host here" error): its question is whether this machine is one.
    target = resolve_target(connect or (f"privcmd:{privcmd}" if privcmd else None),
                            xenstored=xenstored, libvirt_uri=libvirt_uri, default=XEN_SYSTEM)
    scheme = (target.hypervisor_uri or "").partition(":")[0]
    checks = run_checks(
        xenstored=target.xenstored_path, libvirt_uri=target.libvirt_uri, timeout=timeout,
        hypervisor=target.open_hypervisor if target.hypervisor_uri else None,
        transport=scheme or "privcmd", libvirt=target.libvirt_uri is not None)
    render([c.as_dict() for c in checks], as_json=as_json, title="xentmem doctor",
           columns=["check", "ok", "status", "detail"], key="checks")
