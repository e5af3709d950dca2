"""The one JSON encoding of variables (and the other small JSON values the
store keeps: channel lists, labels).

Compact, keys sorted, non-ASCII characters as themselves (UTF-8, not \\u
escapes), so equal values always give equal text. Decoding accepts any
JSON (rows written before this encoding used \\u escapes)."""

from __future__ import annotations

import json
from collections.abc import Mapping

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode
_decode = json.JSONDecoder().decode


def dumps(value: object) -> str:
    """`value` (dicts, lists, strings, numbers) as canonical JSON text."""
    return _encode(value)


def dumps_vars(values: Mapping[str, str]) -> str | None:
    """A map of variables as canonical JSON text, or None (SQL NULL) when empty."""
    return (_encode(values if type(values) is dict else dict(values))) if values else None


def loads(text: str) -> object:
    """Any JSON text, decoded."""
    return _decode(text)


def loads_vars(text: object) -> dict[str, str]:
    """Variables stored by `dumps_vars`; {} for NULL."""
    if not isinstance(text, str) or not text:
        return {}
    values: dict[str, str] = _decode(text)
    return values
