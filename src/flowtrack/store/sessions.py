"""Sign-in sessions of the HTTP listener (web/access.py), kept in the
database so that a sign-out on one replica ends the session on every one.

A row exists from sign-in until sign-out (deleted) or expiry (rows past
their expiry are deleted at the next sign-in). The cookie carries the
session's id, signed; only the row says the session is still on.

Sessions belong to an API key, not to a business: a session is looked up by
its id before the business is known (as a key is), so on Citus the table is
a reference table (docs/citus.md)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, delete, insert, select

from flowtrack.store import sql
from flowtrack.store.schema import http_sessions

S = http_sessions.c
_EXPIRED = delete(http_sessions).where(S.expires_at <= bindparam("now"))
_CREATE = insert(http_sessions).values(
    session_id=bindparam("session_id"),
    key_id=bindparam("key_id"),
    created_at=bindparam("now"),
    expires_at=bindparam("expires"),
)
_KEY_OF = select(S.key_id).where(S.session_id == bindparam("session_id"), S.expires_at > bindparam("now"))
_END = delete(http_sessions).where(S.session_id == bindparam("session_id"))


def create(conn: Any, session_id: str, key_id: str, now_us: int, expires_us: int) -> None:
    """Record a new session, and forget the ones past their expiry."""
    sql.run(conn, _EXPIRED, {"now": now_us})
    sql.run(conn, _CREATE, {"session_id": session_id, "key_id": key_id, "now": now_us, "expires": expires_us})


def key_of(conn: Any, session_id: str, now_us: int) -> str | None:
    """The key id of a session that is still on (not signed out, not expired)."""
    found = sql.scalar(conn, _KEY_OF, {"session_id": session_id, "now": now_us})
    return None if found is None else str(found)


def end(conn: Any, session_id: str) -> bool:
    """Sign out: the session ends on every server at once. Whether it was on."""
    return bool(sql.run(conn, _END, {"session_id": session_id}).rowcount)
