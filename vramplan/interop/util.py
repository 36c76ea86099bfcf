"""Reading loosely typed values of other tools' YAML files."""

from __future__ import annotations

from typing import Any

from ..errors import ForeignConfigError
from ..options import read_bool, read_int


def truthy(v: Any) -> bool:
    """YAML/CLI truthiness as LLaMA-Factory and axolotl read it (``"true"``, ``"auto"``, ``"full"``, 1...)."""
    if isinstance(v, str):
        return v.strip().lower() in ("true", "yes", "on", "1", "auto", "full")
    return bool(v)


def as_int(v: Any, key: str) -> int:
    """An integer, or :class:`ForeignConfigError` naming ``key``."""
    try:
        return read_int(v)
    except ValueError as exc:
        raise ForeignConfigError(key, str(exc)) from None


def as_bool(v: Any, key: str) -> bool:
    """A boolean (``true``/``false``, also as the strings ``"true"``/``"false"``...), or
    :class:`ForeignConfigError` naming ``key``: the string ``"false"`` is false, never truthy."""
    try:
        return read_bool(v)
    except ValueError as exc:
        raise ForeignConfigError(key, str(exc)) from None
