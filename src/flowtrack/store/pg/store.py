"""The store on PostgreSQL: any number of stateless replicas on one database.

Same surface as the SQLite store (store/store.py; the interface is
store/base.py): `write(job)` runs a job in this replica's writer (one thread,
one connection, group commit, ack after COMMIT), `read(fn, ...)` runs
`fn(conn, ...)` on a pooled connection (psycopg_pool) in a reader thread,
`snapshot()` holds one REPEATABLE READ transaction for a report stream. The
jobs and queries are the SQLite store's own functions (SQLAlchemy Core
statements compiled for PostgreSQL), run on `PgConnection` (conn.py); the
rules stay in domain/. The jobs of the
backend are modules of their own: writer.py (the writer's backend: begin,
commit, what an error means, the business lock), notify.py (NOTIFY at
commit, the LISTEN thread), faults.py (errors in the client's words),
snapshot.py (a report stream's REPEATABLE READ transaction), timelimit.py,
migrate.py (the schema, the shared token key); this one assembles them.

How the rules of ingest (exactly once, order-independent current status,
reconciled stats, acknowledged means durable) hold with replicas writing at once:
- every job that changes a business first locks that business's row
  (`Tx.lock_business`: `INSERT ... ON CONFLICT DO UPDATE ... RETURNING
  last_sequence`) and keeps it until COMMIT. So one business's transactions
  run one after the other whichever replica runs them: the duplicate check
  reads every event committed before (READ COMMITTED: each statement sees
  what committed before it started), sequences are handed out from the row
  and the row is written back at COMMIT, so commit order is sequence order
  (a reader at N never later sees an event below N), and the message fold
  and the counters (`value = value + delta`, sorted keys) never race. The
  cost: one business's writes are serial across replicas (docs/operations.md, What scales).
- a batch holding jobs of several businesses may deadlock with another
  replica's batch (rows locked in opposite orders); deadlocks (40P01),
  serialization failures (40001) and lock timeouts are retried here (the
  whole batch, from BEGIN: jobs are re-runnable), never returned to clients.
- the committing transaction NOTIFYs `flowtrack_commits` with the sequences
  and campaigns it changed; each replica LISTENs on a connection of its own
  and calls the writer's `on_commit` listeners, so WatchCampaignStats and
  SubscribeEvents see changes made through any replica.
- the token key lives in `server_settings` (secrets.py's rule): a resume
  token issued by one replica is valid on another.
The schema (store/schema.py) is migrated at start-up with Alembic under an
advisory lock, so replicas starting at once migrate once (store/upgrade.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from flowtrack.domain.errors import Unavailable
from flowtrack.store import reports as sreports
from flowtrack.store.pg.conn import Cursor, IntNumericLoader, PgConnection
from flowtrack.store.pg.migrate import migrate, token_key
from flowtrack.store.pg.notify import Listener
from flowtrack.store.pg.snapshot import PgSnapshot
from flowtrack.store.pg.timelimit import PgTimeLimit, session_options
from flowtrack.store.pg.writer import PgWriter
from flowtrack.store.writer import Job

__all__ = ["PgSnapshot", "PgStore", "PgWriter", "migrate"]

T = TypeVar("T")


class PgStore:
    """The store on PostgreSQL (see the module)."""

    def __init__(
        self,
        url: str,
        *,
        max_commit_rows: int = 10000,
        max_queued_rows: int = 50000,
        readers: int = 8,
        key_readers: int = 2,
        read_time_limit: float = 0.0,
        max_snapshots: int = 0,
        **_ignored: Any,
    ) -> None:
        self.path = url
        self.url = url
        migrate(url)
        self.read_time_limit = read_time_limit
        options = session_options(read_time_limit)

        def configure(conn: psycopg.Connection[Any]) -> None:
            conn.adapters.register_loader("numeric", IntNumericLoader)

        kwargs: dict[str, Any] = {
            "autocommit": True,
            "cursor_factory": Cursor,
            "application_name": "flowtrack-read",
            "options": options,
        }
        self._pool: ConnectionPool[Any] = ConnectionPool(
            url, min_size=1, max_size=readers, kwargs=kwargs, configure=configure, open=True, name="flowtrack-read"
        )
        self._key_pool: ConnectionPool[Any] = ConnectionPool(
            url, min_size=1, max_size=key_readers, kwargs=kwargs, configure=configure, open=True, name="flowtrack-keys"
        )
        # Report streams' snapshots: at most max_snapshots connections (the
        # slots say so before the pool is asked; 0: no bound), kept for reuse.
        self._slots = sreports.SnapshotSlots(max_snapshots)
        self._snapshot_pool: ConnectionPool[Any] = ConnectionPool(
            url,
            min_size=0,
            max_size=max_snapshots if max_snapshots > 0 else 1_000_000,
            kwargs={**kwargs, "application_name": "flowtrack-snapshot"},
            configure=configure,
            check=ConnectionPool.check_connection,  # an idle one the server dropped is replaced
            open=True,
            name="flowtrack-snapshots",
        )
        try:
            self._pool.wait(timeout=30)
            with self._pool.connection() as raw:
                self.token_key = token_key(PgConnection(raw))
            self.writer = PgWriter(url, max_commit_rows=max_commit_rows, max_queued_rows=max_queued_rows)
        except BaseException:
            self._pool.close()
            self._key_pool.close()
            self._snapshot_pool.close()
            raise
        self.listener = Listener(url, self.writer)
        self.listener.ready.wait(timeout=30)
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="flowtrack-reader")
        self._key_readers = ThreadPoolExecutor(max_workers=key_readers, thread_name_prefix="flowtrack-key-reader")
        self._limit = PgTimeLimit()

    async def write(self, job: Job[T], rows: int = 1, *, wait: float | None = None, admitted: bool = False) -> T:
        return await self.writer.run(job, rows, wait=wait, admitted=admitted)

    async def read(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._call, self._pool, fn, args)

    async def read_keys(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._key_readers, self._call, self._key_pool, fn, args)

    def read_sync(self, fn: Callable[..., T], *args: object) -> T:
        return self._call(self._pool, fn, args)

    def _call(self, pool: ConnectionPool[Any], fn: Callable[..., T], args: tuple[object, ...]) -> T:
        """fn(conn, *args) on a pooled connection; a connection the database
        dropped is UNAVAILABLE (retryable), and the pool replaces it."""
        try:
            with pool.connection() as raw, self._limit.limited(self.read_time_limit):
                return fn(PgConnection(raw, reader=True), *args)
        except (psycopg.OperationalError, PoolTimeout) as error:
            raise Unavailable(
                f"the database cannot be reached ({str(error).strip() or type(error).__name__}); retry",
                reason="DATABASE_UNAVAILABLE",
            ) from error

    @property
    def listening(self) -> bool:
        """Whether this replica's LISTEN connection is up (commits of other
        replicas reach its watchers)."""
        return self.listener.connected

    def on_listening(self, callback: Callable[[bool], None]) -> None:
        self.listener.on_state(callback)

    def snapshot(self) -> PgSnapshot:
        """A report stream's REPEATABLE READ transaction on a pooled
        connection of its own; RESOURCE_EXHAUSTED (TOO_MANY_STREAMS) past
        `max_snapshots` open (after a wait of SNAPSHOT_WAIT)."""
        self._slots.take()
        try:
            raw = self._snapshot_pool.getconn(timeout=30)
        except (psycopg.OperationalError, PoolTimeout) as error:
            self._slots.give()
            raise Unavailable(
                f"the database cannot be reached ({str(error).strip() or type(error).__name__}); retry",
                reason="DATABASE_UNAVAILABLE",
            ) from error
        except BaseException:
            self._slots.give()
            raise

        def release(conn: psycopg.Connection[Any]) -> None:
            try:
                self._snapshot_pool.putconn(conn)  # rolled back, or dropped if broken
            finally:
                self._slots.give()

        return PgSnapshot(raw, release)

    def close(self) -> None:
        self.writer.close()
        self.listener.close()
        self._readers.shutdown(wait=True)
        self._key_readers.shutdown(wait=True)
        self._pool.close()
        self._key_pool.close()
        self._snapshot_pool.close()
