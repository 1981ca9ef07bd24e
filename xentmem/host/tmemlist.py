"""Parse the ``tmem-list`` text of ref §4.2 into records (what ``xen-tmem-list-parse`` did).

One record per line: ``X=`` then comma-separated ``kk:value`` pairs. ``PT`` is two letters
(persistent/ephemeral, shared/private), ``U0``/``U1`` are hex, every other value decimal
(``ww``/``ca`` signed); ``SC`` repeats (one per sharer). The bare ``T`` line
of Xen >= 4.4 is a record with no fields. Garbled input (Xen's own defects, such as the second
``S=`` record of §9.2) never raises: unparsable pairs are kept under ``"garbled"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["FIELDS", "KINDS", "TmemListRecord", "parse_tmem_list"]

KINDS = {"G": "global", "S": "shared_pool", "C": "client", "P": "pool", "T": "timing"}
_HEX_KEYS = frozenset({"U0", "U1"})
_POOL_LONG = {"Pc": "pages", "Pm": "pages_max", "Oc": "objects", "Om": "objects_max",
              "Nc": "nodes", "Nm": "nodes_max", "ps": "puts_ok", "pt": "puts",
              "pd": "dup_puts_failed",
              "pr": "dup_puts_replaced", "px": "puts_failed", "gs": "gets_hit", "gt": "gets",
              "fs": "flushes_found", "ft": "flushes", "os": "obj_flushes_found",
              "ot": "obj_flushes"}
# every key's long name, per kind, in the order Xen writes them (ref §4.2, counters §3.11);
# tables show these, --raw and JSON keep the two-letter codes
FIELDS: dict[str, dict[str, str]] = {
    "global": {"Tt": "ops", "Te": "ops_failed", "Cf": "copies_failed",
               "Af": "subpage_allocs_failed", "Pf": "page_allocs_failed", "Ta": "free_list_pages",
               "Lm": "low_memory_events", "Et": "evicted", "Ea": "evictions_tried",
               "Rt": "relinquished", "Ra": "relinquishes_tried", "Rx": "max_evicted_at_once",
               "Fp": "pools_flushed", "Ec": "eph_pages", "Em": "eph_pages_max",
               "Oc": "objects", "Om": "objects_max", "Nc": "nodes", "Nm": "nodes_max",
               "Pc": "page_descriptors", "Pm": "page_descriptors_max", "Fc": "frames",
               "Fm": "frames_max", "Sc": "dedup_descriptors", "Sm": "dedup_descriptors_max",
               "Ep": "eph_puts", "Gd": "dedup_puts", "Zt": "tze_bytes",
               "Gz": "dedup_compressed_bytes"},
    "shared_pool": {"SI": "slot", "PT": "type", "U0": "uuid_lo", "U1": "uuid_hi",
                    "SC": "sharers", **_POOL_LONG},
    "client": {"CI": "domain", "ww": "weight", "ca": "cap", "co": "compress", "fr": "frozen",
               "Tc": "cycles", "Ge": "eph_gets", "Pp": "pers_puts",
               "Gp": "pers_gets", "Ec": "eph_pages", "Em": "eph_pages_max",
               "cp": "compressed_pages", "cb": "compressed_bytes", "cn": "compress_poor",
               "cm": "compress_no_memory"},
    "pool": {"CI": "domain", "PI": "pool", "PT": "type", "U0": "uuid_lo", "U1": "uuid_hi",
             **_POOL_LONG},
    "timing": {},
}


@dataclass
class TmemListRecord:
    """One line: ``kind`` is one of ``KINDS``' values; ``fields`` maps key to int (or list)."""

    kind: str
    fields: dict[str, int | str | list[int]] = field(default_factory=dict)
    garbled: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"kind": self.kind, **self.fields}
        if self.garbled:
            out["garbled"] = self.garbled
        return out


def _value(key: str, text: str) -> int | str:
    if key == "PT":
        if len(text) != 2 or text[0] not in "PE" or text[1] not in "SP":
            raise ValueError(text)
        return text
    return int(text, 16) if key in _HEX_KEYS else int(text, 10)


def parse_tmem_list(text: str) -> list[TmemListRecord]:
    """Records of a ``tmem-list`` text, in order."""
    records: list[TmemListRecord] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        tag, _, body = line.partition("=")
        kind = KINDS.get(tag)
        if kind is None:
            records.append(TmemListRecord("unknown", garbled=[line]))
            continue
        record = TmemListRecord(kind)
        for pair in filter(None, body.split(",")):
            key, sep, value = pair.partition(":")
            try:
                if not sep or len(key) != 2:
                    raise ValueError(pair)
                parsed = _value(key, value)
            except ValueError:
                record.garbled.append(pair)
                continue
            if key == "SC":
                record.fields.setdefault("SC", []).append(parsed)  # type: ignore[union-attr]
            else:
                record.fields[key] = parsed
        records.append(record)
    return records
