"""Per-guest balancing settings: floor, ceiling, opt-out and priority.

On a real host they live with the domain, in libvirt metadata (namespace :data:`METADATA_URI`,
``<balance floor_mib=".." ceiling_mib=".." opt_out="0|1" priority=".."/>``), so they survive
a migration or a dom0 reboot. On an emulated host (xenstore only) they live beside the
toolstack's memory keys of the guest, named as XenServer's squeezed names its dynamic range:

=================================  ==========================================
``memory/dynamic-min``             floor, KiB
``memory/dynamic-max``             ceiling, KiB
``memory/balance-opt-out``         1: the manager never touches this guest
``memory/balance-priority``        1..100 (default 10): its weight in shares
``memory/uncooperative``           set by the manager (as squeezed does) while
                                   the guest does not follow its target
=================================  ==========================================

Whatever is stored is parsed by the one sanitiser: junk reads as "not set", never as an error.
"""

from __future__ import annotations

import contextlib
from xml.etree import ElementTree

from xentmem.balance.model import DEFAULT_PRIORITY, MAX_PRIORITY, MIB, Settings
from xentmem.errors import XenStoreNotFound
from xentmem.host.guests import Host
from xentmem.xenstore import sanitize_bool, sanitize_int, sanitize_kib, transaction
from xentmem.xenstore.keys import MAX_MB
from xentmem.xenstore.toolstack import domain_path

__all__ = ["METADATA_URI", "UNCOOPERATIVE_KEY", "XENSTORE_KEYS", "read_settings",
           "validate_settings", "write_settings"]

METADATA_URI = "https://xentmem.invalid/libvirt/balance/1"
UNCOOPERATIVE_KEY = "memory/uncooperative"  # in xenstore on both kinds of host
XENSTORE_KEYS = {"floor_kib": "memory/dynamic-min", "ceiling_kib": "memory/dynamic-max",
                 "opt_out": "memory/balance-opt-out", "priority": "memory/balance-priority"}


def _parse(untrusted: dict[str, object]) -> Settings:
    """Settings from untrusted values keyed like :data:`XENSTORE_KEYS` (floor/ceiling in KiB)."""
    floor = sanitize_kib(untrusted.get("floor_kib"))  # type: ignore[arg-type]
    ceiling = sanitize_kib(untrusted.get("ceiling_kib"))  # type: ignore[arg-type]
    priority = sanitize_int(untrusted.get("priority"), 1, MAX_PRIORITY)  # type: ignore[arg-type]
    return Settings(floor_kib=floor or None, ceiling_kib=ceiling or None,
                    opt_out=bool(sanitize_bool(untrusted.get("opt_out"))),  # type: ignore[arg-type]
                    priority=DEFAULT_PRIORITY if priority is None else priority)


def _from_xml(xml: str | None) -> Settings:
    if not xml:
        return Settings()
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return Settings()

    def kib(name: str) -> str | None:
        mib = sanitize_int(root.get(name), 1, MAX_MB)
        return None if mib is None else str(mib * MIB)

    return _parse({"floor_kib": kib("floor_mib"), "ceiling_kib": kib("ceiling_mib"),
                   "opt_out": root.get("opt_out"), "priority": root.get("priority")})


def read_settings(host: Host, domid: int, name: str) -> Settings:
    """The settings of one guest (libvirt metadata on a real host, xenstore otherwise)."""
    if host.libvirt is not None:
        return _from_xml(host.libvirt.metadata(name, METADATA_URI))
    assert host.xs is not None
    base = domain_path(domid)
    return transaction(host.xs, lambda tx: _parse(
        {field: tx.read(f"{base}/{path}", None) for field, path in XENSTORE_KEYS.items()}))


def validate_settings(s: Settings) -> None:
    """``ValueError`` naming what is wrong with settings an admin asked for."""
    if s.floor_kib is not None and not 0 < s.floor_kib <= MAX_MB * MIB:
        raise ValueError(f"the floor must be 1..{MAX_MB} MiB")
    if s.ceiling_kib is not None and not 0 < s.ceiling_kib <= MAX_MB * MIB:
        raise ValueError(f"the ceiling must be 1..{MAX_MB} MiB")
    if s.floor_kib and s.ceiling_kib and s.floor_kib > s.ceiling_kib:
        raise ValueError(f"the floor ({s.floor_kib // MIB} MiB) is above the ceiling "
                         f"({s.ceiling_kib // MIB} MiB)")
    if not 1 <= s.priority <= MAX_PRIORITY:
        raise ValueError(f"the priority must be 1..{MAX_PRIORITY}, not {s.priority}")


def write_settings(host: Host, domid: int, name: str, s: Settings) -> None:
    """Store settings for one guest (checked first: nothing is written when they are bad)."""
    validate_settings(s)
    if host.libvirt is not None:
        attrs = {"floor_mib": s.floor_kib and s.floor_kib // MIB,
                 "ceiling_mib": s.ceiling_kib and s.ceiling_kib // MIB,
                 "opt_out": int(s.opt_out), "priority": s.priority}
        body = " ".join(f'{k}="{v}"' for k, v in attrs.items() if v is not None)
        host.libvirt.set_metadata(name, f"<balance {body}/>", "balance", METADATA_URI)
        return
    assert host.xs is not None
    base = domain_path(domid)
    values = {"floor_kib": s.floor_kib, "ceiling_kib": s.ceiling_kib,
              "opt_out": int(s.opt_out), "priority": s.priority}

    def write(tx) -> None:
        for field, path in XENSTORE_KEYS.items():
            value = values[field]
            if value is None:
                with contextlib.suppress(XenStoreNotFound):
                    tx.rm(f"{base}/{path}")
            else:
                tx.write(f"{base}/{path}", str(value))

    transaction(host.xs, write)
