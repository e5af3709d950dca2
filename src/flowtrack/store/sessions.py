"""Sign-in sessions of the HTTP listener (web/access.py), kept in the
database so that a sign-out on one replica ends the session on every one.

A row exists from sign-in until sign-out (deleted) or expiry (rows past
their expiry are deleted at the next sign-in). The cookie carries the
session's id, signed; only the row says the session is still on."""

from __future__ import annotations

from typing import Any


def create(conn: Any, session_id: str, key_id: str, now_us: int, expires_us: int) -> None:
    """Record a new session, and forget the ones past their expiry."""
    conn.execute("DELETE FROM http_sessions WHERE expires_at <= ?", (now_us,))
    conn.execute(
        "INSERT INTO http_sessions (session_id, key_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
        (session_id, key_id, now_us, expires_us),
    )


def key_of(conn: Any, session_id: str, now_us: int) -> str | None:
    """The key id of a session that is still on (not signed out, not expired)."""
    row = conn.execute(
        "SELECT key_id FROM http_sessions WHERE session_id = ? AND expires_at > ?", (session_id, now_us)
    ).fetchone()
    return str(row[0]) if row else None


def end(conn: Any, session_id: str) -> bool:
    """Sign out: the session ends on every server at once. Whether it was on."""
    return bool(conn.execute("DELETE FROM http_sessions WHERE session_id = ?", (session_id,)).rowcount)
