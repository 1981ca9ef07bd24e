"""Typer's value coercion without its cost where nothing needs coercing.

typer (0.29, pinned) coerces every option value, given or default, through a pydantic
``TypeAdapter`` it builds on first use: importing pydantic and building one adapter per option
cost `xentmem status --json` about 0.1 s, to hand back ``None``, a ``str`` it was given as a
``str`` or the default ``5.0``. :func:`light_coercion` gives each option a coercion that returns
such values as they are (as the adapter would) and hands anything else, every string to be
converted and every value out of range, to typer's own, so results and error messages stay
typer's.
"""

from __future__ import annotations

from typing import Any

__all__ = ["light_coercion"]

_PLAIN = (str, int, float)  # what typer's adapters return unchanged when already that type


class _Coercion:
    """typer's ``RuntimeParam`` interface (``coerce``) for one parameter."""

    __slots__ = ("_full",)

    def __init__(self) -> None:
        self._full: Any = None  # typer's own, built only when a value needs it

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        if value is None and not (param.multiple or param.nargs == -1):
            return None  # as typer's: a missing single value stays None
        info = param.type_descriptor.parameter_info
        kind = param.type_descriptor.annotation
        if (type(value) is kind and kind in _PLAIN and info.parser is None
                and (kind is str or ((info.min is None or value >= info.min)
                                     and (info.max is None or value <= info.max)))):
            return value
        if self._full is None:
            from typer._coercion import build_runtime_param

            self._full = build_runtime_param(param.type_descriptor)
        return self._full.coerce(value, param=param, ctx=ctx)


def light_coercion(params: list[Any]) -> None:
    """Give each of typer's ``params`` (of one command) the coercion above."""
    for param in params:
        if hasattr(param, "type_descriptor") and getattr(param, "_runtime_param", 1) is None:
            param._runtime_param = _Coercion()
