"""``/proc/zoneinfo`` and ``/proc/meminfo`` as the user-space self-balloon law reads them.

- R = totalreserve_pages, recomputed from zoneinfo exactly as the kernel's
  ``calculate_totalreserve_pages`` (mm/page_alloc.c) does: per zone, the largest ``protection``
  (lowmem_reserve) entry from the zone's own index on, plus its ``high`` watermark, capped at
  ``managed``; summed over every zone of every node;
- P = max_pfn, the end (``start_pfn + spanned``) of the highest populated zone;
- meminfo through the xenstore sanitiser (:func:`xentmem.xenstore.sanitize_meminfo`), in kB.

The same parsing as :mod:`xentmem.tuning.procfs` (held equal to it by
``tests/agent/test_procfs.py``), in a module the single-file agent can carry: the tuning package
imports numpy. The parsers take ``untrusted_*`` text and never raise: a garbled or truncated file
gives ``None``. :func:`render_zoneinfo` writes the one-zone file the emulated guest's kernel model
would show (its ``totalreserve_pages`` and ``max_pfn``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from xentmem.xenstore import sanitize_int, sanitize_meminfo

__all__ = ["MEMINFO_MAX_LINES", "parse_meminfo", "parse_vmstat", "render_zoneinfo",
           "totalreserve_pages", "zoneinfo_max_pfn"]

MEMINFO_MAX_LINES = 128  # Linux 6.x prints about 55
_U64 = (1 << 64) - 1
_ZONE = re.compile(r"^Node\s+(\d+),\s+zone\s+(\S+)\s*$")
# watermarks are "        high     31"; the per-cpu pagesets' "high:  0" has a colon and is not
_FIELD = re.compile(r"^\s+(high|managed|spanned|start_pfn:)\s+(\d+)\s*$")
_PROTECTION = re.compile(r"^\s+protection:\s+\(([\d,\s]*)\)\s*$")


def parse_meminfo(untrusted_text: str | bytes | None) -> dict[str, int] | None:
    """``/proc/meminfo`` as {field: kB}, or None if any line is not ``Name: <digits> [kB]``."""
    return sanitize_meminfo(untrusted_text, MEMINFO_MAX_LINES)


def parse_vmstat(untrusted_text: str | bytes | None, names: tuple[str, ...]) -> dict[str, int]:
    """The counters ``names`` of ``/proc/vmstat`` (``name value`` lines); a counter whose line is
    missing or garbled is left out."""
    if isinstance(untrusted_text, bytes):
        untrusted_text = untrusted_text.decode("ascii", "replace")
    out: dict[str, int] = {}
    for line in (untrusted_text or "").splitlines():
        name, _, untrusted_value = line.partition(" ")
        if name in names and name not in out:
            value = sanitize_int(untrusted_value, 0, _U64)
            if value is not None:
                out[name] = value
    return out


@dataclass(frozen=True)
class _Zone:
    index: int  # position within its node: lowmem_reserve is indexed by it
    high: int | None = None
    managed: int | None = None
    spanned: int | None = None
    start_pfn: int | None = None
    protection: tuple[int, ...] | None = None


def _zones(untrusted_text: str) -> list[_Zone]:
    zones: list[dict] = []
    per_node: dict[int, int] = {}
    for line in untrusted_text.splitlines():
        m = _ZONE.match(line)
        if m:
            node = int(m.group(1))
            zones.append({"index": per_node.get(node, 0)})
            per_node[node] = per_node.get(node, 0) + 1
            continue
        if not zones:
            continue
        zone = zones[-1]
        m = _FIELD.match(line)
        if m:
            zone.setdefault(m.group(1).rstrip(":"), int(m.group(2)))  # the first "high" only
            continue
        m = _PROTECTION.match(line)
        if m:
            items = [p.strip() for p in m.group(1).split(",") if p.strip()]
            if all(p.isascii() and p.isdigit() for p in items):
                zone["protection"] = tuple(int(p) for p in items)
    return [_Zone(**z) for z in zones]


def totalreserve_pages(untrusted_zoneinfo: str | None) -> int | None:
    """``calculate_totalreserve_pages`` from ``/proc/zoneinfo``, or None if there is no zone or a
    zone lacks a field it needs."""
    zones = _zones(untrusted_zoneinfo or "")
    if not zones:
        return None
    total = 0
    for z in zones:
        if z.high is None or z.managed is None or z.protection is None:
            return None
        total += min(max(z.protection[z.index:], default=0) + z.high, z.managed)
    return total


def zoneinfo_max_pfn(untrusted_zoneinfo: str | None) -> int | None:
    """The end of the highest populated zone (max_pfn), or None."""
    ends = [z.start_pfn + z.spanned for z in _zones(untrusted_zoneinfo or "")
            if z.start_pfn is not None and z.spanned]
    return max(ends) if ends else None


def render_zoneinfo(*, totalreserve_pages: int, max_pfn: int, managed_pages: int) -> str:
    """One zone laid out as Linux 6.1 prints it, giving back exactly ``totalreserve_pages``
    (as its ``high`` watermark, no lowmem_reserve) and ``max_pfn``."""
    return ("Node 0, zone   Normal\n"
            f"  pages free     0\n"
            f"        boost    0\n"
            f"        min      0\n"
            f"        low      0\n"
            f"        high     {totalreserve_pages}\n"
            f"        spanned  {max_pfn}\n"
            f"        present  {max_pfn}\n"
            f"        managed  {max(managed_pages, totalreserve_pages)}\n"
            f"        cma      0\n"
            f"        protection: (0, 0, 0, 0)\n"
            f"  start_pfn:           0\n")
