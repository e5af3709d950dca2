"""Leaving no byte of erased data in a SQLite database's files.

SQLite does not overwrite what a change frees unless told: a row updated or
deleted stays in its page's free space, a page freed by a deleted row stays
on the free list with its content, and earlier versions of changed pages
stay in the WAL until a checkpoint writes them back. Three things together
leave nothing of an erasure's old values behind:

- the write connection always runs with `secure_delete=FAST` (store/db.py):
  a freed cell is zeroed in its page (no extra I/O), so the space that
  updates free never keeps an old copy of a row;
- an erasure's jobs run with `secure_delete=ON` (`secure_delete`): pages
  they free are zeroed too;
- afterwards the free list is scrubbed (`fill_free_pages`,
  `empty_free_pages`: the free pages are taken by zero-filled blobs and
  freed again under `secure_delete=ON`, at most SCRUB_PAGES a writer job),
  then the WAL is checkpointed and truncated (`checkpoint`).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import bindparam, delete, func, literal, select

from flowtrack.store import sql
from flowtrack.store.schema import server_settings
from flowtrack.store.transaction import Tx

Job = Callable[[Tx], int]  # a writer job (store/writer.py imports this package: not from there)

SCRUB_PAGES = 1024  # free pages a job takes (4 MiB with 4 KiB pages)
_MODES = {0: "OFF", 1: "ON", 2: "FAST"}
_PREFIX = "flowtrack.scrub."
_FILL = server_settings.insert().values(key=bindparam("key"), value=func.zeroblob(bindparam("bytes")))
_FILLED = select(server_settings.c.key).where(
    server_settings.c.key >= literal(_PREFIX), server_settings.c.key < literal(_PREFIX[:-1] + "/")
)
_EMPTY = delete(server_settings).where(server_settings.c.key == bindparam("key"))


@contextlib.contextmanager
def secure_delete(conn: Any) -> Iterator[None]:
    """Run the block with `secure_delete=ON` on a SQLite connection (nothing on PostgreSQL)."""
    if not isinstance(conn, sqlite3.Connection):
        yield
        return
    before = int(conn.execute("PRAGMA secure_delete").fetchone()[0])
    conn.execute("PRAGMA secure_delete=ON")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA secure_delete={_MODES.get(before, 'FAST')}")


def fill_free_pages(number: int) -> Job:
    """Writer job: a zero-filled blob over up to SCRUB_PAGES pages of the
    free list (which it empties of their old content). Returns the pages
    still free before it, 0 when nothing was left."""

    def job(tx: Tx) -> int:
        conn = tx.conn
        free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        if free == 0:
            return 0
        usable = int(conn.execute("PRAGMA page_size").fetchone()[0]) - 4  # an overflow page's payload
        pages = min(free, SCRUB_PAGES)
        sql.run(conn, _FILL, {"key": f"{_PREFIX}{number:09d}", "bytes": pages * usable})
        return free

    return job


def empty_free_pages() -> Job:
    """Writer job: free one of `fill_free_pages`' blobs under
    `secure_delete=ON` (its pages are zeroed). Returns how many were left."""

    def job(tx: Tx) -> int:
        conn = tx.conn
        keys = [str(k) for (k,) in sql.run(conn, _FILLED)]
        if keys:
            with secure_delete(conn):
                sql.run(conn, _EMPTY, {"key": keys[0]})
        return len(keys)

    return job


def checkpoint(path: str, *, wait: float = 30.0, hold: float = 0.2) -> bool:
    """Copy the WAL into the database and truncate it to zero bytes, on a
    connection of its own. It needs every reader to have left older
    snapshots: each try holds the database's write lock for at most `hold`
    seconds (ingest waits that long at most), and tries go on for `wait`
    seconds. Whether it succeeded."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout={int(hold * 1000)}")
        deadline = time.monotonic() + wait
        while True:
            try:
                busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            except sqlite3.OperationalError:
                busy = 1
            if not busy:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
    finally:
        conn.close()
