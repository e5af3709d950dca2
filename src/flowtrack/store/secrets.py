"""The server's token-signing key, created once and kept in the database."""

from __future__ import annotations

import secrets
import sqlite3


def token_key(conn: sqlite3.Connection) -> bytes:
    """The key that signs page and resume tokens (created on first use; writer connection)."""
    row = conn.execute("SELECT value FROM server_settings WHERE key = 'token_key'").fetchone()
    if row is not None:
        return bytes(row[0])
    key = secrets.token_bytes(32)
    conn.execute("INSERT OR IGNORE INTO server_settings (key, value) VALUES ('token_key', ?)", (key,))
    row = conn.execute("SELECT value FROM server_settings WHERE key = 'token_key'").fetchone()
    return bytes(row[0])
