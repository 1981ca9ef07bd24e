"""Parse the ``tmem-list`` text of ref §4.2 into records (what ``xen-tmem-list-parse`` did).

One record per line: ``X=`` then comma-separated ``kk:value`` pairs. ``PT`` is two letters
(persistent/ephemeral, shared/private), ``U0``/``U1`` are hex, every other value decimal
(``ww``/``ca`` signed); ``SC`` repeats (one per sharer). The bare ``T`` line
of Xen >= 4.4 is a record with no fields. Garbled input (Xen's own defects, such as the second
``S=`` record of §9.2) never raises: unparsable pairs are kept under ``"garbled"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["KINDS", "TmemListRecord", "parse_tmem_list"]

KINDS = {"G": "global", "S": "shared_pool", "C": "client", "P": "pool", "T": "timing"}
_HEX_KEYS = frozenset({"U0", "U1"})


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
