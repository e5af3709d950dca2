"""The store as the api layer sees it: one writer, many readers.

`await store.write(job)` runs a job in the writer's group-committed
transaction (see writer.py), once the writer's bounded queue has room.
`await store.read(fn, ...)` runs `fn(conn, ...)` on a read-only connection in
a reader thread, so a slow query never blocks the event loop. Each reader
thread keeps its own connection, and each read stops after `read_time_limit`
seconds (store/timelimit.py).

`await store.read_keys(fn, ...)` is the same on a small pool of its own:
API key look-ups never queue behind long reads.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ParamSpec, TypeVar

from flowtrack.store import db, secrets
from flowtrack.store.reports import Snapshot, SnapshotSlots
from flowtrack.store.timelimit import TimeLimit
from flowtrack.store.writer import Job, Writer

T = TypeVar("T")
P = ParamSpec("P")


class Store:
    def __init__(
        self,
        path: str | Path,
        *,
        durability: str = "full",
        max_commit_rows: int = 10000,
        max_queued_rows: int = 50000,
        readers: int = 8,
        key_readers: int = 2,
        read_time_limit: float = 0.0,
        max_snapshots: int = 0,
    ) -> None:
        self.path = str(path)
        # Report streams' snapshots open at once (each a connection of its own).
        self._slots = SnapshotSlots(max_snapshots)
        conn = db.open_database(path, durability=durability)
        # Signs page and resume tokens; kept in the database so tokens outlive a restart.
        self.token_key = secrets.token_key(conn)
        self.writer = Writer(
            conn,
            max_commit_rows=max_commit_rows,
            max_queued_rows=max_queued_rows,
            reopen=lambda: db.connect(self.path, durability=durability),
        )
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.read_time_limit = read_time_limit
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="flowtrack-reader")
        self._key_readers = ThreadPoolExecutor(max_workers=key_readers, thread_name_prefix="flowtrack-key-reader")

    async def write(self, job: Job[T], rows: int = 1, *, wait: float | None = None, admitted: bool = False) -> T:
        """Run `job` in the writer (see Writer.run: waits for room in the
        queue at most `wait` seconds, None for as long as it takes)."""
        return await self.writer.run(job, rows, wait=wait, admitted=admitted)

    async def read(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._call, fn, args)

    async def read_keys(self, fn: Callable[..., T], *args: object) -> T:
        """`read` on the key look-up pool (never behind a long report read)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._key_readers, self._call, fn, args)

    def read_sync(self, fn: Callable[..., T], *args: object) -> T:
        return fn(self.reader_connection(), *args)

    def _call(self, fn: Callable[..., T], args: tuple[object, ...]) -> T:
        conn = self.reader_connection()
        with self._local.limit.limited(self.read_time_limit):
            return fn(conn, *args)

    def reader_connection(self) -> sqlite3.Connection:
        """This thread's read-only connection."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = db.connect(self.path, readonly=True)
            self._local.conn = conn
            self._local.limit = TimeLimit(conn)
            with self._lock:
                self._connections.append(conn)
        return conn

    @property
    def listening(self) -> bool:
        """Always: one process owns the file, every commit is its own."""
        return True

    def on_listening(self, callback: Callable[[bool], None]) -> None:
        """Never called: `listening` never changes."""

    def snapshot(self) -> Snapshot:
        """A report stream's own read transaction (store.reports.Snapshot);
        RESOURCE_EXHAUSTED (TOO_MANY_STREAMS) past `max_snapshots` open."""
        self._slots.take()
        try:
            return Snapshot(self.path, on_close=self._slots.give)
        except BaseException:
            self._slots.give()
            raise

    def close(self) -> None:
        self.writer.close()
        self._readers.shutdown(wait=True)
        self._key_readers.shutdown(wait=True)
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
