"""Pages in a checkpoint: every page the model writes is one 32-byte pattern repeated (its
identity and version), so a pickled model keeps the pattern and not 4 KiB per page.

``compact(data)`` returns ``data`` itself or a small object that unpickles back to the same
bytes; the holders of pages (anonymous pages, memory swap slots, the page cache) use it in
their ``__reduce__`` / ``__getstate__``.
"""

from __future__ import annotations

from typing import Any

from xentmem.abi import PAGE_SIZE

_PERIOD = 32


def _expand(pattern: bytes) -> bytes:
    return pattern * (PAGE_SIZE // _PERIOD)


class _Pattern:
    __slots__ = ("pattern",)

    def __init__(self, pattern: bytes) -> None:
        self.pattern = pattern

    def __reduce__(self) -> tuple[Any, ...]:
        return (_expand, (self.pattern,))


def compact(data: bytes) -> bytes | _Pattern:
    """``data``, or its 32-byte pattern when the page is that pattern repeated."""
    if len(data) == PAGE_SIZE and data == data[:_PERIOD] * (PAGE_SIZE // _PERIOD):
        return _Pattern(data[:_PERIOD])
    return data
