"""API keys in SQLite: create, list, revoke, look up. The rules (format,
scopes, hashing) are in domain/keys.py; these functions take a connection so
that both the server (through the writer and the readers) and the
`flowtrack keys` commands (on their own connection) use them."""

from __future__ import annotations

import sqlite3
from typing import Any

from flowtrack.domain.keys import KeyRecord, NewKey, Scope, format_scopes, mint

_COLUMNS = "key_id, business_id, name, scopes, hash, created_at, revoked_at, last_used_at"


def _record(row: Any) -> KeyRecord:
    key_id, business_id, name, scopes, digest, created_at, revoked_at, last_used_at = row
    return KeyRecord(
        key_id=key_id,
        business_id=business_id,
        name=name,
        scopes=frozenset(Scope(s) for s in scopes.split(",") if s),
        hash=bytes(digest),
        created_at=created_at,
        revoked_at=revoked_at,
        last_used_at=last_used_at,
    )


def create(
    conn: sqlite3.Connection, business_id: str, scopes: frozenset[Scope], name: str, now_us: int
) -> tuple[NewKey, KeyRecord]:
    """Store a new key; returns it (with the token, to show once) and its record."""
    while True:
        new = mint()
        try:
            conn.execute(
                f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL, NULL)",
                (new.key_id, business_id, name, format_scopes(scopes), new.hash, now_us),
            )
        except sqlite3.IntegrityError:  # a key_id collision (48 random bits): mint another
            continue
        return new, KeyRecord(new.key_id, business_id, name, scopes, new.hash, now_us)


def get(conn: sqlite3.Connection, key_id: str) -> KeyRecord | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
    return _record(row) if row else None


def list_keys(conn: sqlite3.Connection, business_id: str | None = None) -> list[KeyRecord]:
    if business_id is None:
        rows = conn.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY business_id, created_at, key_id")
    else:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM api_keys WHERE business_id = ? ORDER BY created_at, key_id", (business_id,)
        )
    return [_record(row) for row in rows]


def revoke(conn: sqlite3.Connection, key_id: str, now_us: int) -> KeyRecord | None:
    """Revoke a key (keeping its first revocation time). None if there is no such key."""
    conn.execute("UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL", (now_us, key_id))
    return get(conn, key_id)


def any_keys(conn: sqlite3.Connection) -> bool:
    """Whether any key, valid or revoked, exists (a revoked key still ends open mode)."""
    return conn.execute("SELECT 1 FROM api_keys LIMIT 1").fetchone() is not None


def touch(conn: sqlite3.Connection, key_id: str, now_us: int) -> None:
    conn.execute("UPDATE api_keys SET last_used_at = ? WHERE key_id = ?", (now_us, key_id))
