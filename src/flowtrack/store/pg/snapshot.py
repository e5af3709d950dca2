"""A report stream's snapshot on PostgreSQL."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg

from flowtrack.store import reports as sreports
from flowtrack.store.pg.conn import PgConnection, observe
from flowtrack.store.pg.timelimit import PgTimeLimit


class PgSnapshot:
    """A report stream's REPEATABLE READ transaction on a connection of its
    own, read a page at a time through a server-side cursor (memory bounded
    by the page). Same surface as store.reports.Snapshot."""

    def __init__(self, raw: psycopg.Connection[Any], release: Callable[[psycopg.Connection[Any]], None]) -> None:
        self._release = release  # gives the connection back (to the pool), once, at close
        self._owned = threading.Lock()  # `interrupt` against `close`: never cancel a returned connection
        self._conn = PgConnection(raw, reader=True)
        self.limit = PgTimeLimit()
        self._lock = threading.Lock()
        self._cursor: psycopg.ServerCursor[Any] | None = None
        self._make: Callable[[Any], Any] | None = None
        self._closed = False
        self._cursors = 0
        self.expired = False
        self.sequence = 0

    def begin(self, business_id: str, campaign_id: str) -> sreports.CampaignRef | None:
        with self._lock:
            self._check()
            sreports.begin_read(self._conn)
            self.sequence = sreports.sequence(self._conn, business_id)  # type: ignore[arg-type]
            return sreports.campaign(self._conn, business_id, campaign_id)  # type: ignore[arg-type]

    def run(self, statement: Any, values: Any, make: Callable[[Any], Any] | None = None) -> None:
        """Start the stream's query (a statement of store/sql.py and its
        values) on a server-side cursor."""
        from flowtrack.store import sql

        with self._lock, self._expiring():
            if self._cursor is not None:
                self._cursor.close()
            text, values = sql.compile_for(statement, sql.POSTGRESQL).bind(values)
            observe(text)
            self._cursors += 1
            cursor = self._conn.raw.cursor(name=f"ft_stream_{self._cursors}")
            cursor.execute(text, values)
            self._cursor = cursor
            self._make = make

    def fetch(self, n: int) -> list[Any]:
        with self._lock, self._expiring():
            if self._cursor is None or self._closed:
                return []
            rows = self._cursor.fetchmany(n)
            return rows if self._make is None else [self._make(r) for r in rows]

    def call(self, fn: Any, *args: Any) -> Any:
        with self._lock, self._expiring():
            return fn(self._conn, *args)

    def _check(self) -> None:
        if self.expired:
            raise sreports.SnapshotExpired("the stream's snapshot was released")

    @contextlib.contextmanager
    def _expiring(self) -> Iterator[None]:
        self._check()
        try:
            yield
        except psycopg.Error:
            self._check()
            raise

    def interrupt(self) -> None:
        # Under _owned: once closed, the connection may serve another stream.
        with self._owned:
            if not self._closed:
                with contextlib.suppress(Exception):
                    self._conn.interrupt()

    def expire(self) -> None:
        self.expired = True
        self.interrupt()
        self.close()

    def close(self) -> None:
        with self._lock:
            with self._owned:
                if self._closed:
                    return
                self._closed = True
            # Its transaction ended here: given back in one (INTRANS), the
            # pool would roll it back itself and log a warning per stream.
            with contextlib.suppress(psycopg.Error):
                if self._cursor is not None:
                    self._cursor.close()
                self._conn.raw.rollback()
            with contextlib.suppress(psycopg.Error):
                self._release(self._conn.raw)
