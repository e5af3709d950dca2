"""The writer's backend on SQLite (store/transaction.py's Backend).

One write connection, one process: `BEGIN IMMEDIATE` takes the database's
write lock (waiting busy_timeout for another process holding it), the
sequences are cached in the writer (nobody else writes), nothing is ever
retried (a lock that is not granted is a storage fault), and the commit is
told to the watchers in-process, by the writer's thread, after COMMIT.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from sqlalchemy import bindparam, delete, literal

from flowtrack.domain.errors import FlowtrackError
from flowtrack.store import db, sql
from flowtrack.store.faults import is_storage_fault, storage_error
from flowtrack.store.schema import server_settings
from flowtrack.store.transaction import ErrorKind, Tx

PROBE_KEY = "flowtrack.writer_probe"
# The probe of an unhealthy writer: a small real write (64 KiB, so that a
# database at its size limit fails it too), committed, then removed.
PROBE = sql.insert_on_both(
    lambda insert: (
        ins := insert(server_settings).values(key=literal(PROBE_KEY), value=bindparam("value"))
    ).on_conflict_do_update(index_elements=[server_settings.c.key], set_={"value": ins.excluded.value})
)
UNPROBE = delete(server_settings).where(server_settings.c.key == literal(PROBE_KEY))
PROBE_BYTES = bytes(65536)


def reopener(conn: sqlite3.Connection) -> Callable[[], sqlite3.Connection]:
    """How to open another write connection like `conn` (same file, same durability)."""
    path = conn.execute("PRAGMA database_list").fetchone()[2]
    synchronous = conn.execute("PRAGMA synchronous").fetchone()[0]
    durability = "full" if synchronous >= 2 else "normal"
    return lambda: db.connect(path, durability=durability)


class SqliteBackend:
    """The writer's SQLite side; `conn` is the first write connection."""

    retries = 1
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)

    def __init__(self, conn: sqlite3.Connection, reopen: Callable[[], sqlite3.Connection] | None = None) -> None:
        self.first: sqlite3.Connection | None = conn
        self._reopen = reopen or reopener(conn)

    def open(self) -> sqlite3.Connection:
        first, self.first = self.first, None
        return first if first is not None else self._reopen()

    def closed(self, conn: Any) -> bool:
        return False  # a failed ROLLBACK closes it, and the writer forgets it

    def new_tx(self, conn: Any, sequences: dict[str, int]) -> Tx:
        return Tx(conn, sequences)

    def in_transaction(self, conn: Any) -> bool:
        return bool(conn.in_transaction)

    def control(self, conn: Any, statement: str) -> None:
        conn.execute(statement)

    def begin(self, conn: Any) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def commit(self, conn: Any) -> None:
        conn.execute("COMMIT")

    def classify(self, error: BaseException) -> ErrorKind:
        return ErrorKind.PERMANENT

    def fault(self, error: BaseException) -> FlowtrackError | None:
        return storage_error(error) if is_storage_fault(error) else None

    def job_error(self, error: BaseException) -> BaseException:
        return storage_error(error) if isinstance(error, sqlite3.Error) else error

    def transaction_lost(self, conn: Any, error: BaseException) -> bool:
        # SQLite rolled the whole transaction back by itself (a full disk, an I/O error).
        return not conn.in_transaction

    def before_commit(self, tx: Tx, touched: set[int]) -> None:
        pass

    def after_commit(self, changed: dict[str, int], touched: set[int], notify: Callable[..., None]) -> None:
        notify(changed, touched)

    def probe(self, conn: Any) -> None:
        conn.execute("BEGIN IMMEDIATE")
        sql.run(conn, PROBE, {"value": PROBE_BYTES})
        sql.run(conn, UNPROBE)
        conn.execute("COMMIT")
