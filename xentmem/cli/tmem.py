"""``xentmem tmem ...``: the tmem control plane (what ``xl tmem-*`` did), on any transport."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from xentmem.abi import XenVersion
from xentmem.cli._app import UsageError, sub_app
from xentmem.cli._connect import Target, resolve_target
from xentmem.cli._options import Connect, Json, Timeout
from xentmem.cli._render import emit_json, render
from xentmem.errors import TmemPermissionError, XenStoreError, XentmemError
from xentmem.host.tmemlist import FIELDS, parse_tmem_list
from xentmem.hypercalls import ALL_CLIENTS, Tmem

tmem_app = sub_app("tmem")

XenVer = Annotated[str | None, typer.Option(
    "--xen-version", help="Xen version to encode for (default: probe xen_version).")]
Domain = Annotated[str | None, typer.Argument(
    help="Domain id, or name (read from xenstore, as the guest commands do).",
    show_default=False)]
All = Annotated[bool, typer.Option("--all", "-a", help="All clients.")]
_MAX_DOMID = 0x7FEF  # DOMID_FIRST_RESERVED - 1


class _Client:
    """The tmem client a command names: ``cli_id`` (a domid or ALL_CLIENTS) and, for one
    domain, how to say which (``label``) and whether its host knows it."""

    def __init__(self, target: Target, domain: str | None, all_clients: bool,
                 timeout: float) -> None:
        self.target, self.timeout = target, timeout
        self.cli_id, self.label = ALL_CLIENTS, "all clients"
        if domain is None:
            return
        if domain.isdigit():
            self.cli_id = int(domain)
            if self.cli_id > _MAX_DOMID:
                raise UsageError(f"domain {domain}: ids go from 0 to {_MAX_DOMID}")
            self.label = f"domain {domain}"
            return
        if target.xenstored_path is None:
            raise UsageError(f"domain {domain!r}: a name needs the host's xenstore; give the "
                             "domain id, or name the host with -c emulator:DIR or -c "
                             "xen:///system")
        self.cli_id = self._lookup(domain)
        self.label = f"domain {self.cli_id} ({domain})"

    def _lookup(self, name: str) -> int:
        from xentmem.cli.guest import open_host

        with open_host(_xenstore_only(self.target), self.timeout) as host:
            return host.guest(name).domid  # LookupError -> exit 2 with its line

    def exists(self) -> bool | None:
        """Whether the host knows this domain (None: it has no xenstore to ask)."""
        if self.target.xenstored_path is None:
            return None
        try:
            with self.target.xenstore(self.timeout) as xs:
                return xs.exists(f"/local/domain/{self.cli_id}")
        except XenStoreError:
            return None

    def no_client(self) -> Exception:
        """Why LIST of one domain failed: it does not exist (bad input), or it has not made
        a tmem client yet (Xen answers -EPERM for both)."""
        known = self.exists()
        if known is False:
            return UsageError(f"no {self.label} on this host")
        if known:
            return XentmemError(f"{self.label} has no tmem client yet: it has not created a "
                                "tmem pool (no frontswap/cleancache in use there)")
        return XentmemError(f"{self.label} has no tmem client: it does not exist, or has not "
                            "created a tmem pool yet")


def _xenstore_only(target: Target) -> Target:
    """``target`` without libvirt: names are looked up in xenstore, as Xen's tools do."""
    from dataclasses import replace

    return replace(target, libvirt_uri=None)


@contextmanager
def _tmem(connect: str | None, xen_version: str | None, domain: str | None = None,
          all_clients: bool = False, timeout: float = 5.0, *, clients: bool = True
          ) -> Iterator[tuple[Tmem, _Client]]:
    """The host's Tmem client, and (``clients``) the client the command names."""
    version = None
    if xen_version is not None:
        try:
            version = XenVersion.parse(xen_version)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if clients and (domain is None) == (not all_clients):  # before reaching for a host
        raise UsageError("specify either --all or one domain (id or name)")
    target = resolve_target(connect)
    client = _Client(target, domain, all_clients, timeout) if clients else None
    hv = target.open_hypervisor()
    try:
        with Tmem(hv, version) as tmem:
            yield tmem, client  # type: ignore[misc]
    finally:
        hv.close()


def _done(as_json: bool, action: str, client: _Client, **extra: object) -> None:
    if as_json:
        emit_json({"domid": None if client.cli_id == ALL_CLIENTS else client.cli_id,
                   "all": client.cli_id == ALL_CLIENTS, "action": action, **extra})


@tmem_app.command("list")
def list_(domain: Domain = None, all_clients: All = False,
          long: Annotated[bool, typer.Option("--long", "-l", help="Long statistics.")] = False,
          raw: Annotated[bool, typer.Option("--raw", help="Print Xen's text as is.")] = False,
          as_json: Json = False, connect: Connect = None, xen_version: XenVer = None,
          timeout: Timeout = 5.0) -> None:
    """tmem state of one domain or all (``xl tmem-list``): a table per kind of record with
    the counters' long names in Xen's order, and a legend of their two-letter codes."""
    if raw and as_json:
        raise UsageError("--raw and --json both choose the output: give one")
    with _tmem(connect, xen_version, domain, all_clients, timeout) as (tmem, client):
        try:
            text = tmem.list(client.cli_id, long=long)
        except TmemPermissionError:
            if client.cli_id == ALL_CLIENTS:
                raise
            raise client.no_client() from None
    if raw:
        typer.echo(text)
        return
    records = [r.as_dict() for r in parse_tmem_list(text)]
    if as_json:
        emit_json({"records": records})
        return
    render_tmem_records(records)


_TITLES = {"global": "global", "shared_pool": "shared pools", "client": "clients",
           "pool": "pools"}


def render_tmem_records(records: list[dict[str, object]]) -> None:
    """tmem-list records for a person: one table per kind, long names, a legend."""
    for kind, title in _TITLES.items():
        rows = [r for r in records if r["kind"] == kind]
        if not rows:
            continue
        names = FIELDS[kind]
        seen = {k for r in rows for k in r if k != "kind"}
        codes = [c for c in names if c in seen] + sorted(seen - set(names))
        if kind == "global":
            render({names.get(c, c): rows[0].get(c) for c in codes}, as_json=False, title=title)
        else:
            render(rows, as_json=False, title=title, columns=codes,
                   headers={c: names.get(c, c) for c in codes})
        legend = ", ".join(f"{names[c]}={c}" for c in codes if c in names)
        typer.echo(textwrap.fill(f"({legend})", 78, initial_indent="  ",
                                 subsequent_indent="   "))


@tmem_app.command()
def freeze(domain: Domain = None, all_clients: All = False, as_json: Json = False,
           connect: Connect = None, xen_version: XenVer = None, timeout: Timeout = 5.0) -> None:
    """Refuse new pages from a client (``xl tmem-freeze``)."""
    with _tmem(connect, xen_version, domain, all_clients, timeout) as (tmem, client):
        tmem.freeze(client.cli_id)
    _done(as_json, "freeze", client)


@tmem_app.command()
def thaw(domain: Domain = None, all_clients: All = False, as_json: Json = False,
         connect: Connect = None, xen_version: XenVer = None, timeout: Timeout = 5.0) -> None:
    """Accept new pages from a client again (``xl tmem-thaw``)."""
    with _tmem(connect, xen_version, domain, all_clients, timeout) as (tmem, client):
        tmem.thaw(client.cli_id)
    _done(as_json, "thaw", client)


@tmem_app.command("set")
def set_(domain: Domain = None, all_clients: All = False,
         weight: Annotated[int | None, typer.Option(
             "--weight", "-w", min=0, help="Eviction weight: a client with a higher weight "
             "keeps more of its ephemeral pages when Xen evicts.", show_default=False)] = None,
         compress: Annotated[bool | None, typer.Option(
             "--compress/--no-compress", help="Compress this client's pages.",
             show_default=False)] = None,
         cap: Annotated[int | None, typer.Option("--cap", min=0,
                                                 help="Xen <= 4.7 only; never enforced.")] = None,
         as_json: Json = False, connect: Connect = None, xen_version: XenVer = None,
         timeout: Timeout = 5.0) -> None:
    """Set a client's eviction weight and compression (``xl tmem-set``)."""
    if weight is None and compress is None and cap is None:
        raise UsageError("nothing to set: give --weight, --compress/--no-compress or --cap")
    with _tmem(connect, xen_version, domain, all_clients, timeout) as (tmem, client):
        try:
            tmem.set_client(client.cli_id, weight=weight, compress=compress, cap=cap)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    _done(as_json, "set", client, weight=weight, compress=compress, cap=cap)


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
                as_json: Json = False, connect: Connect = None, xen_version: XenVer = None,
                timeout: Timeout = 5.0) -> None:
    """Allow (or revoke) a domain joining the shared pool UUID (``xl tmem-shared-auth``)."""
    words = parse_xl_uuid(uuid)
    with _tmem(connect, xen_version, domain, all_clients, timeout) as (tmem, client):
        if client.cli_id == ALL_CLIENTS and tmem.version >= _NO_GLOBAL_AUTH:
            # 4.9+ SET_AUTH first makes a client for "all" and fails with -ENOMEM (ref §3.9)
            raise UsageError(f"--all does not work on Xen {tmem.version} (4.9 and later fail "
                             "it with -ENOMEM): authorise each domain by id or name")
        tmem.shared_auth(client.cli_id, words, authorise=not revoke)
    _done(as_json, "revoke" if revoke else "authorise", client, uuid=uuid.lower())


_NO_GLOBAL_AUTH = XenVersion(4, 9)


@tmem_app.command()
def freeable(as_json: Json = False, connect: Connect = None, xen_version: XenVer = None) -> None:
    """MiB that tmem could give back to Xen now (``xl tmem-freeable``)."""
    with _tmem(connect, xen_version, clients=False) as (tmem, _):
        mib = tmem.freeable_mb()
    render({"freeable_mib": mib}, as_json=as_json, title="tmem")


@tmem_app.command()
def flush(kib: Annotated[int, typer.Argument(min=0, max=0xFFFFFFFF, help="KiB to free.")],
          as_json: Json = False, connect: Connect = None, xen_version: XenVer = None) -> None:
    """Evict ephemeral pages until KIB KiB are free and give them back to Xen."""
    with _tmem(connect, xen_version, clients=False) as (tmem, _):
        released = tmem.flush_kib(kib)
    render({"released_kib": released}, as_json=as_json, title="tmem")
