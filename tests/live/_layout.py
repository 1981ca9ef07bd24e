"""Capture a domain's ``/local/domain/N`` subtree (values, owners, permissions) in a form that
compares across hosts: the domid, uuid, name, event-channel ports, ring frames and pty numbers
are replaced by placeholders, everything else is kept verbatim."""

from __future__ import annotations

import re

from xentmem.xenstore import XenStoreOps

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Leaf names whose values are allocated per boot (ports, frames, ptys).
_VOLATILE = re.compile(r"(^|/)(port|ring-ref|event-channel|tty)$")


def _value(rel: str, raw: bytes, domid: int, name: str) -> str:
    text = raw.decode("utf-8", "replace")
    if _VOLATILE.search(rel) and text:
        return "<volatile>"
    if rel == "domid" and text == str(domid):
        return "<domid>"
    if text == name:
        return "<name>"
    if text.startswith("/"):  # a path naming this domain, e.g. its console backend
        text = re.sub(rf"/{domid}(?=/|$)", "/<domid>", text)
    return _UUID.sub("<uuid>", text)


def _perm(perm: object, domid: int) -> str:
    text = str(perm)
    return f"{text[0]}<domid>" if text[1:] == str(domid) else text


def capture(xs: XenStoreOps, domid: int, name: str) -> dict[str, dict[str, object]]:
    """``{relative path: {"value": ..., "perms": [...]}}`` for the whole subtree, "" = the root."""
    root = f"/local/domain/{domid}"
    nodes: dict[str, dict[str, object]] = {}
    todo = [""]
    while todo:
        rel = todo.pop()
        path = f"{root}/{rel}" if rel else root
        nodes[rel] = {
            "value": _value(rel, xs.read(path), domid, name),
            "perms": [_perm(p, domid) for p in xs.get_perms(path)],
        }
        todo.extend(f"{rel}/{child}" if rel else child for child in xs.list(path))
    return dict(sorted(nodes.items()))
