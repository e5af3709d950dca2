"""Bringing a PostgreSQL database to flowtrack's schema, and its shared settings."""

from __future__ import annotations

import secrets

from sqlalchemy import bindparam, literal, select

from flowtrack.store import sql
from flowtrack.store.pg.conn import PgConnection
from flowtrack.store.schema import server_settings


def migrate(url: str) -> list[str]:
    """Bring the database to flowtrack's schema (store/schema.py) with
    Alembic, in one transaction under `pg_advisory_xact_lock` (replicas
    starting at once wait for the first, then find nothing to do); a
    database of the previous release is adopted first (store/upgrade.py).
    Returns what was applied ('legacy N', then revisions)."""
    from flowtrack.store import upgrade

    return upgrade.upgrade(upgrade.postgres_engine(url))


_TOKEN_KEY = "token_key"
_NEW_TOKEN_KEY = sql.insert_on_both(
    lambda insert: (
        insert(server_settings)
        .values(key=literal(_TOKEN_KEY), value=bindparam("value"))
        .on_conflict_do_nothing(index_elements=[server_settings.c.key])
    )
)
_TOKEN_KEY_VALUE = select(server_settings.c.value).where(server_settings.c.key == literal(_TOKEN_KEY))


def token_key(conn: PgConnection) -> bytes:
    """The key that signs page and resume tokens: one per database, shared by every replica."""
    sql.run(conn, _NEW_TOKEN_KEY, {"value": secrets.token_bytes(32)})
    value = sql.scalar(conn, _TOKEN_KEY_VALUE)
    assert value is not None
    return bytes(value)
