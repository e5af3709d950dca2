"""API keys: their format, scopes, and how a presented key is checked.

A key looks like `ftk_<key_id>_<secret>`: `key_id` (12 hex digits) names the
stored row and is not secret; `secret` is 32 bytes from the operating
system's CSPRNG (43 url-safe base64 characters). Only the SHA-256 of the whole
key is stored.

Why no slow KDF (bcrypt, scrypt, argon2): those exist to make guessing a
*low-entropy* password from its hash expensive. A 256-bit random secret
cannot be guessed from its hash at any hashing speed (2^255 tries on
average), and identical secrets never happen, so neither salt nor stretching
adds anything; a fast hash keeps checking a key per call at microseconds.

The lookup is by `key_id`; the hash of the presented key is then compared
with the stored one with `hmac.compare_digest` (constant time), so response
timing says nothing about how much of a secret was right.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from flowtrack.domain import errors

PREFIX = "ftk"
_KEY = re.compile(r"ftk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_BUSINESS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
MAX_NAME_CHARS = 200


class Scope(enum.StrEnum):
    """What a key may do. `admin` implies every other scope."""

    INGEST = "ingest"  # IngestService
    READ = "read"  # ReportService, GetCampaign, ListCampaigns
    ADMIN = "admin"  # campaign changes, and everything else


ALL_SCOPES = frozenset(Scope)


def parse_scopes(values: Iterable[str]) -> frozenset[Scope]:
    """The scopes named in `values` (at least one, known names only)."""
    scopes = set()
    for value in values:
        for part in value.replace(",", " ").split():
            try:
                scopes.add(Scope(part.strip().lower()))
            except ValueError:
                known = ", ".join(s.value for s in Scope)
                raise errors.invalid("scope", f"unknown scope {part!r} (known: {known})") from None
    if not scopes:
        raise errors.invalid("scope", "a key needs at least one scope", "REQUIRED")
    return frozenset(scopes)


def format_scopes(scopes: Iterable[Scope]) -> str:
    """Scopes as stored and shown: sorted, comma separated."""
    return ",".join(sorted(s.value for s in scopes))


def allows(scopes: frozenset[Scope], required: Scope | None) -> bool:
    """Whether a key with `scopes` may call an RPC that needs `required`."""
    return required is None or required in scopes or Scope.ADMIN in scopes


def check_business(business_id: str) -> str:
    """A business id: 1-128 characters, letters, digits and `. _ : -`, starting with a letter or digit."""
    if not _BUSINESS.fullmatch(business_id):
        raise errors.invalid(
            "business",
            "must be 1-128 characters: letters, digits and . _ : - (starting with a letter or digit)",
        )
    return business_id


def check_name(name: str) -> str:
    if len(name) > MAX_NAME_CHARS:
        raise errors.invalid("name", f"at most {MAX_NAME_CHARS} characters", "TOO_LONG")
    return name


@dataclass(frozen=True, slots=True)
class NewKey:
    """A freshly minted key: `token` is shown once, `hash` is stored."""

    key_id: str
    token: str
    hash: bytes


def mint() -> NewKey:
    key_id = secrets.token_hex(6)
    token = f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    return NewKey(key_id, token, hash_token(token))


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def key_id_of(token: str) -> str | None:
    """The key id of a well-formed key, else None (the secret is not checked here)."""
    match = _KEY.fullmatch(token)
    return match.group(1) if match else None


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A stored key as the server checks it."""

    key_id: str
    business_id: str
    name: str
    scopes: frozenset[Scope]
    hash: bytes
    created_at: int  # µs since the epoch
    revoked_at: int | None = None
    last_used_at: int | None = None

    def matches(self, token: str) -> bool:
        """Constant-time check of a presented key against the stored hash."""
        return hmac.compare_digest(self.hash, hash_token(token))


@dataclass(frozen=True, slots=True)
class Principal:
    """Who an RPC runs as: a business and what it may do."""

    business_id: str
    scopes: frozenset[Scope]
    key_id: str | None  # None in open mode
