"""The storage interface the api layer talks to, and the choice of backend.

Two implementations: the SQLite store (store/store.py: one file, one
writer, group commit) and the PostgreSQL store (store/pg/store.py: any
number of stateless replicas on one database). Both run the same writer
jobs and query functions of store/*.py (PostgreSQL through a connection
that speaks the same DB-API, store/pg/conn.py), which call the same rules
of domain/. `open_store(settings)` picks one from `--database`: a
`postgresql://` URL is PostgreSQL, anything else a SQLite path.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from flowtrack.store.reports import CampaignRef
from flowtrack.store.writer import Job, Writer

T = TypeVar("T")


class Snapshot(Protocol):
    """One report stream's read transaction (store.reports.Snapshot and
    store.pg.store.PgSnapshot)."""

    expired: bool
    sequence: int

    @property
    def limit(self) -> Any: ...
    def begin(self, business_id: str, campaign_id: str) -> CampaignRef | None: ...
    def run(self, statement: Any, values: Any, make: Callable[[Any], Any] | None = None) -> None: ...
    def fetch(self, n: int) -> list[Any]: ...
    def call(self, fn: Any, *args: Any) -> Any: ...
    def interrupt(self) -> None: ...
    def expire(self) -> None: ...
    def close(self) -> None: ...


class Store(Protocol):
    """What the api layer uses of a store."""

    @property
    def path(self) -> str:
        """The SQLite file, or the PostgreSQL URL."""

    @property
    def token_key(self) -> bytes:
        """Signs page and resume tokens; kept in the database."""

    @property
    def writer(self) -> Writer:
        """The queue's bound, health and commit listeners."""

    async def write(self, job: Job[T], rows: int = 1, *, wait: float | None = None, admitted: bool = False) -> T: ...
    async def read(self, fn: Callable[..., T], *args: object) -> T: ...
    async def read_keys(self, fn: Callable[..., T], *args: object) -> T: ...
    def read_sync(self, fn: Callable[..., T], *args: object) -> T: ...
    def snapshot(self) -> Snapshot: ...
    def close(self) -> None: ...

    @property
    def listening(self) -> bool:
        """Whether commits made through other replicas reach this server's
        watchers now (PostgreSQL's LISTEN connection is up; always on SQLite)."""

    def on_listening(self, callback: Callable[[bool], None]) -> None:
        """Call `callback(listening)` (in a store thread) whenever `listening` changes."""


def is_postgres(database: str) -> bool:
    """Whether `--database` names a PostgreSQL database (else a SQLite path)."""
    return database.startswith(("postgresql://", "postgres://"))


def open_store(database: str, **options: Any) -> Store:
    """The store of `database`: PostgreSQL for a URL (`durability` does not
    apply: the database server's own settings decide), else SQLite."""
    if is_postgres(database):
        from flowtrack.store.pg.store import PgStore

        options.pop("durability", None)
        return PgStore(database, **options)
    from flowtrack.store.store import Store as SqliteStore

    return SqliteStore(database, **options)


def compile_ahead(database: str) -> threading.Thread | None:
    """For a SQLite `database`, compile the writer's multi-row statements
    (store/db.compile_rows_statements) in a daemon thread of their own, now,
    rather than inside the first writes that need them; the thread, or None
    on PostgreSQL (its bulk writes are COPY, one statement whatever the rows)."""
    if is_postgres(database):
        return None
    from flowtrack.store.db import compile_rows_statements

    thread = threading.Thread(target=compile_rows_statements, name="flowtrack-compile", daemon=True)
    thread.start()
    return thread
