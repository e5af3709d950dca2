"""The server's token-signing key, created once and kept in the database."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import bindparam, select

from flowtrack.store import sql
from flowtrack.store.schema import server_settings

_GET = select(server_settings.c.value).where(server_settings.c.key == "token_key")
_CREATE = sql.insert_on_both(
    lambda insert: insert(server_settings).values(key="token_key", value=bindparam("value")).on_conflict_do_nothing()
)


def token_key(conn: Any) -> bytes:
    """The key that signs page and resume tokens (created on first use; writer connection)."""
    found = sql.scalar(conn, _GET)
    if found is not None:
        return bytes(found)
    sql.run(conn, _CREATE, {"value": secrets.token_bytes(32)})  # another server may have made it meanwhile
    return bytes(sql.scalar(conn, _GET))
