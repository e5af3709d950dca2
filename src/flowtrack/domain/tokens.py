"""Opaque, signed page and resume tokens.

A token is base64url(JSON payload + HMAC-SHA256 tag). The payload names the
token's kind and a digest of what it is bound to (business, campaign,
filter), so a token that was tampered with, made up, or used with another
campaign or filter is refused as INVALID_ARGUMENT, never interpolated into
SQL.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from typing import Any

from flowtrack.domain.errors import invalid

_TAG = 16  # bytes of HMAC kept


def bind(*parts: object) -> str:
    """A short digest of what a token is only valid with."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def encode(secret: bytes, kind: str, bound_to: str, position: dict[str, Any]) -> str:
    body = json.dumps({"k": kind, "b": bound_to, "p": position}, separators=(",", ":"), sort_keys=True).encode()
    tag = hmac.new(secret, body, hashlib.sha256).digest()[:_TAG]
    return base64.urlsafe_b64encode(body + tag).decode().rstrip("=")


def decode(secret: bytes, kind: str, bound_to: str, token: str, *, field: str) -> dict[str, Any]:
    """The position stored in `token`; InvalidArgument on `field` if it is not
    a genuine token of this kind bound to the same things."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise invalid(field, "not a token returned by this server", "BAD_TOKEN") from None
    body, tag = raw[:-_TAG], raw[-_TAG:]
    if len(raw) <= _TAG or not hmac.compare_digest(hmac.new(secret, body, hashlib.sha256).digest()[:_TAG], tag):
        raise invalid(field, "not a token returned by this server", "BAD_TOKEN")
    data = json.loads(body)
    if data.get("k") != kind or data.get("b") != bound_to:
        raise invalid(
            field, "the token belongs to another request: repeat the same campaign and filter", "TOKEN_MISMATCH"
        )
    position = data.get("p")
    if not isinstance(position, dict):
        raise invalid(field, "not a token returned by this server", "BAD_TOKEN")
    return position
