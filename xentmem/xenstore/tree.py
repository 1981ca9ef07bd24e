"""Walking a xenstore subtree, and printing it the way Debian's ``xenstore-ls`` does.

``walk`` visits every node below a path, depth first in directory order (as ``xenstore-ls``);
``ls_lines`` renders the visit as ``xenstore-ls`` (a tree with values cut to the terminal width)
or ``xenstore-ls -f`` (full paths, whole values). Values are escaped by the one sanitiser
(:func:`~xentmem.xenstore.sanitize.escape_value`), so whatever a guest wrote prints safely.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from xentmem.errors import XenStoreError, XenStoreNotFound

from ._client import XenStore
from .sanitize import escape_value

__all__ = ["TreeNode", "child_path", "ls_lines", "walk"]

# xenstore-ls keeps `name = "value"` within the width: room for ` = "`, `\..."` and one more.
_LS_SLACK = 8


@dataclass(frozen=True)
class TreeNode:
    """One node of a walk: ``value`` is None when it could not be read (``error`` says why,
    and its children were not visited)."""

    path: str
    name: str
    depth: int
    value: bytes | None
    error: XenStoreError | None = None


def child_path(parent: str, name: str) -> str:
    return f"/{name}" if parent == "/" else f"{parent.rstrip('/')}/{name}"


def walk(xs: XenStore, path: str) -> Iterator[TreeNode]:
    """Every node below ``path`` (not ``path`` itself). Listing ``path`` itself raises (e.g.
    ``XenStoreNotFound``); a node below it that vanishes meanwhile is skipped, and one that
    cannot be read or listed is yielded with its error."""
    stack: list[tuple[str, int, list[str]]] = [(path, 0, list(reversed(xs.list(path))))]
    while stack:
        parent, depth, names = stack[-1]
        if not names:
            stack.pop()
            continue
        name = names.pop()
        node = child_path(parent, name)
        try:
            value = xs.read(node)
            children = xs.list(node)
        except XenStoreNotFound:
            continue  # removed while we walked
        except XenStoreError as exc:
            yield TreeNode(node, name, depth, None, exc)
            continue
        yield TreeNode(node, name, depth, value)
        if children:
            stack.append((node, depth + 1, list(reversed(children))))


def ls_lines(nodes: Iterable[TreeNode], *, full_paths: bool = False,
             width: int = 80) -> Iterator[str]:
    """``xenstore-ls`` output (``-f`` with ``full_paths``), line by line. In the tree form a
    value that does not fit ``width`` is cut to it and ends in ``\\...``, as the C tool does:
    the cut counts raw bytes against the width and keeps escaped characters."""
    for n in nodes:
        head = n.path if full_paths else " " * n.depth + n.name
        if n.value is None:
            yield f"{head}:"
            continue
        shown = escape_value(n.value)
        if full_paths or len(head) + len(n.value) <= width - _LS_SLACK:
            yield f'{head} = "{shown}"'
            continue
        keep = width - _LS_SLACK - len(head)  # negative: C's printf("%.*s") prints it all
        yield f'{head} = "{shown if keep < 0 else shown[:keep]}\\..."'
