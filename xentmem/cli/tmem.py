"""``xentmem tmem ...``: the tmem control plane (what ``xl tmem-*`` did), on any transport."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from xentmem.abi import XenVersion
from xentmem.cli._app import UsageError, sub_app
from xentmem.cli._connect import Connect, resolve_target
from xentmem.cli._render import render
from xentmem.host.tmemlist import parse_tmem_list
from xentmem.hypercalls import ALL_CLIENTS, Tmem

tmem_app = sub_app("tmem")

XenVer = Annotated[str | None, typer.Option(
    "--xen-version", help="Xen version to encode for (default: probe xen_version).")]
Domain = Annotated[int | None, typer.Argument(min=0, max=0x7FEF, help="Domain id.",
                                              show_default=False)]
All = Annotated[bool, typer.Option("--all", "-a", help="All clients.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@contextmanager
def _tmem(connect: str | None, xen_version: str | None) -> Iterator[Tmem]:
    version = None
    if xen_version is not None:
        try:
            version = XenVersion.parse(xen_version)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    hv = resolve_target(connect).open_hypervisor()
    try:
        with Tmem(hv, version) as tmem:
            yield tmem
    finally:
        hv.close()


def _target(domain: int | None, all_clients: bool) -> int:
    if (domain is None) == (not all_clients):
        raise UsageError("specify either --all or one domain id")
    return ALL_CLIENTS if all_clients else domain  # type: ignore[return-value]


@tmem_app.command("list")
def list_(domain: Domain = None, all_clients: All = False,
          long: Annotated[bool, typer.Option("--long", "-l", help="Long statistics.")] = False,
          raw: Annotated[bool, typer.Option("--raw", help="Print Xen's text as is.")] = False,
          as_json: Json = False, connect: Connect = None, xen_version: XenVer = None) -> None:
    """tmem state of one domain or all (``xl tmem-list``)."""
    target = _target(domain, all_clients)
    with _tmem(connect, xen_version) as tmem:
        text = tmem.list(target, long=long)
    if raw:
        typer.echo(text)
        return
    rows = [r.as_dict() for r in parse_tmem_list(text)]
    render(rows, as_json=as_json, title="tmem-list",
           columns=sorted({k for row in rows for k in row}, key=lambda k: (k != "kind", k)))


@tmem_app.command()
def freeze(domain: Domain = None, all_clients: All = False, connect: Connect = None,
           xen_version: XenVer = None) -> None:
    """Refuse new pages from a client (``xl tmem-freeze``)."""
    target = _target(domain, all_clients)
    with _tmem(connect, xen_version) as tmem:
        tmem.freeze(target)


@tmem_app.command()
def thaw(domain: Domain = None, all_clients: All = False, connect: Connect = None,
         xen_version: XenVer = None) -> None:
    """Accept new pages from a client again (``xl tmem-thaw``)."""
    target = _target(domain, all_clients)
    with _tmem(connect, xen_version) as tmem:
        tmem.thaw(target)


@tmem_app.command("set")
def set_(domain: Domain = None, all_clients: All = False,
         weight: Annotated[int | None, typer.Option("--weight", "-w", min=0)] = None,
         compress: Annotated[bool | None, typer.Option("--compress/--no-compress")] = None,
         cap: Annotated[int | None, typer.Option("--cap", min=0,
                                                 help="Xen <= 4.7 only; never enforced.")] = None,
         connect: Connect = None, xen_version: XenVer = None) -> None:
    """Set a client's eviction weight and compression (``xl tmem-set``)."""
    target = _target(domain, all_clients)
    if weight is None and compress is None and cap is None:
        raise UsageError("nothing to set: give --weight, --compress/--no-compress or --cap")
    with _tmem(connect, xen_version) as tmem:
        try:
            tmem.set_client(target, weight=weight, compress=compress, cap=cap)
        except ValueError as exc:
            raise UsageError(str(exc)) from None


_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                   r"[0-9a-fA-F]{12}$")


def parse_xl_uuid(text: str) -> tuple[int, int]:
    """``xc_tmem_uuid_parse``: groups 1-3 become uuid[1] (hi), groups 4-5 uuid[0] (lo)."""
    if not _UUID.match(text):
        raise UsageError(f"not a uuid: {text!r} (expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
    digits = text.replace("-", "")
    return int(digits[16:], 16), int(digits[:16], 16)


@tmem_app.command("shared-auth")
def shared_auth(uuid: Annotated[str, typer.Option("--uuid", "-u", help="Pool uuid.")],
                domain: Domain = None, all_clients: All = False,
                revoke: Annotated[bool, typer.Option("--revoke", help="De-authorise.")] = False,
                connect: Connect = None, xen_version: XenVer = None) -> None:
    """Allow (or revoke) a domain joining the shared pool ``uuid`` (``xl tmem-shared-auth``)."""
    target = _target(domain, all_clients)
    words = parse_xl_uuid(uuid)
    with _tmem(connect, xen_version) as tmem:
        tmem.shared_auth(target, words, authorise=not revoke)


@tmem_app.command()
def freeable(as_json: Json = False, connect: Connect = None, xen_version: XenVer = None) -> None:
    """MiB that tmem could give back to Xen now (``xl tmem-freeable``)."""
    with _tmem(connect, xen_version) as tmem:
        mib = tmem.freeable_mb()
    render({"freeable_mib": mib}, as_json=as_json, title="tmem")


@tmem_app.command()
def flush(kib: Annotated[int, typer.Argument(min=0, max=0xFFFFFFFF, help="KiB to free.")],
          as_json: Json = False, connect: Connect = None, xen_version: XenVer = None) -> None:
    """Evict ephemeral pages until KIB KiB are free and give them back to Xen."""
    with _tmem(connect, xen_version) as tmem:
        released = tmem.flush_kib(kib)
    render({"released_kib": released}, as_json=as_json, title="tmem")
