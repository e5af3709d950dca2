"""API keys in SQLite: create, list, revoke, look up. The rules (format,
scopes, hashing) are in domain/keys.py; these functions take a connection so
that both the server (through the writer and the readers) and the
`flowtrack keys` commands (on their own connection) use them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, exists, select, update

from flowtrack.domain.keys import KeyRecord, NewKey, Scope, format_scopes, mint
from flowtrack.store import sql
from flowtrack.store.schema import api_keys

_COLUMNS = (
    api_keys.c.key_id,
    api_keys.c.business_id,
    api_keys.c.name,
    api_keys.c.scopes,
    api_keys.c.hash,
    api_keys.c.created_at,
    api_keys.c.revoked_at,
    api_keys.c.last_used_at,
)
# A key_id collision (48 random bits) inserts nothing: mint another.
_INSERT = sql.insert_on_both(
    lambda insert: (
        insert(api_keys)
        .values({c.name: bindparam(c.name) for c in _COLUMNS if c.name not in ("revoked_at", "last_used_at")})
        .on_conflict_do_nothing()
    )
)
_GET = select(*_COLUMNS).where(api_keys.c.key_id == bindparam("key_id"))
_ALL = select(*_COLUMNS).order_by(api_keys.c.business_id, api_keys.c.created_at, api_keys.c.key_id)
_OF_BUSINESS = (
    select(*_COLUMNS)
    .where(api_keys.c.business_id == bindparam("business_id"))
    .order_by(api_keys.c.created_at, api_keys.c.key_id)
)
_REVOKE = (
    update(api_keys)
    .where(api_keys.c.key_id == bindparam("key_id"), api_keys.c.revoked_at.is_(None))
    .values(revoked_at=bindparam("now"))
)
_ANY = select(exists().select_from(api_keys))
_TOUCH = update(api_keys).where(api_keys.c.key_id == bindparam("key_id")).values(last_used_at=bindparam("now"))


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


def create(conn: Any, business_id: str, scopes: frozenset[Scope], name: str, now_us: int) -> tuple[NewKey, KeyRecord]:
    """Store a new key; returns it (with the token, to show once) and its record."""
    while True:
        new = mint()
        values = {
            "key_id": new.key_id,
            "business_id": business_id,
            "name": name,
            "scopes": format_scopes(scopes),
            "hash": new.hash,
            "created_at": now_us,
        }
        if not sql.run(conn, _INSERT, values).rowcount:
            continue
        return new, KeyRecord(new.key_id, business_id, name, scopes, new.hash, now_us)


def get(conn: Any, key_id: str) -> KeyRecord | None:
    row = sql.one(conn, _GET, {"key_id": key_id})
    return _record(row) if row else None


def list_keys(conn: Any, business_id: str | None = None) -> list[KeyRecord]:
    rows = sql.run(conn, _ALL) if business_id is None else sql.run(conn, _OF_BUSINESS, {"business_id": business_id})
    return [_record(row) for row in rows]


def revoke(conn: Any, key_id: str, now_us: int) -> KeyRecord | None:
    """Revoke a key (keeping its first revocation time). None if there is no such key."""
    sql.run(conn, _REVOKE, {"key_id": key_id, "now": now_us})
    return get(conn, key_id)


def any_keys(conn: Any) -> bool:
    """Whether any key, valid or revoked, exists (a revoked key still ends open mode)."""
    return bool(sql.scalar(conn, _ANY))


def touch(conn: Any, key_id: str, now_us: int) -> None:
    sql.run(conn, _TOUCH, {"key_id": key_id, "now": now_us})
