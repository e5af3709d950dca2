"""The one JSON encoding of variables (and the other small JSON values the
store keeps: channel lists, labels).

Compact, keys sorted, non-ASCII characters as themselves (UTF-8, not \\u
escapes), so equal values always give equal text. Decoding accepts any
JSON (rows written before this encoding used \\u escapes)."""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Mapping

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True)
# JSONEncoder.encode builds its C encoder again at every call (two Python
# calls and the encoder's construction: 60% of its time for a small dict, and
# the writer encodes a few per message). The same C encoder built once gives
# the same text; it skips the circular-reference check (flowtrack's values
# are never circular).
_make_encoder = getattr(json.encoder, "c_make_encoder", None)  # not in the stubs
_chunks = (
    _make_encoder(None, _encoder.default, json.encoder.encode_basestring, None, ":", ",", True, False, True)
    if _make_encoder is not None
    else None
)


def _encode(value: object) -> str:
    if _chunks is None:  # pragma: no cover - a Python without the json C accelerator
        return _encoder.encode(value)
    return "".join(_chunks(value, 0))


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
