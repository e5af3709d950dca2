"""The one writer: a thread that owns the write connection and group-commits.

Every change to the database is a job: a function run inside the writer's
transaction. The thread takes the first waiting job, then every job already
queued behind it (up to `max_commit_rows` rows), runs them in one
`BEGIN IMMEDIATE` transaction, each under its own SAVEPOINT so that one
failing job does not undo the others, commits, and only then resolves the
jobs' futures. An acknowledgement therefore always follows the commit
(rule 4), and under load thousands of rows share one fsync.

Jobs also keep per-transaction state (counter deltas, sequences) in the
`Tx` object, which is flushed just before COMMIT and dropped for a job that
failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from flowtrack.domain.errors import FlowtrackError, Unavailable
from flowtrack.store.db import execute_rows

log = logging.getLogger(__name__)

T = TypeVar("T")

CounterKey = tuple[int, str, str]  # (cid, scope, name)


@dataclass
class _Delta:
    """What one job changed beyond its SQL: merged into the Tx on success."""

    counters: defaultdict[CounterKey, int] = field(default_factory=lambda: defaultdict(int))
    sequences: dict[str, int] = field(default_factory=dict)
    campaigns: dict[int, tuple[int | None, int | None, int]] = field(default_factory=dict)


class Tx:
    """The writer's open transaction, as a job sees it."""

    def __init__(self, conn: sqlite3.Connection, sequences: dict[str, int]) -> None:
        self.conn = conn
        self._committed_sequences = sequences
        self._tx = _Delta()
        self._job = _Delta()
        self.now_us = 0  # the transaction's clock, set by the writer

    # -- sequences ---------------------------------------------------------
    def last_sequence(self, business_id: str) -> int:
        for delta in (self._job, self._tx):
            if business_id in delta.sequences:
                return delta.sequences[business_id]
        if business_id not in self._committed_sequences:
            row = self.conn.execute(
                "SELECT last_sequence FROM businesses WHERE business_id = ?", (business_id,)
            ).fetchone()
            self._committed_sequences[business_id] = row[0] if row else 0
        return self._committed_sequences[business_id]

    def next_sequence(self, business_id: str) -> int:
        seq = self.last_sequence(business_id) + 1
        self._job.sequences[business_id] = seq
        return seq

    # -- counters ----------------------------------------------------------
    def count(self, cid: int, scope: str, name: str, delta: int) -> None:
        self._job.counters[(cid, scope, name)] += delta

    def touch_campaign(self, cid: int, occurred_at: int | None, sequence: int) -> None:
        """Record that an event at `occurred_at` with `sequence` touched `cid`."""
        first, last, _ = self._job.campaigns.get(cid) or self._tx.campaigns.get(cid) or (None, None, 0)
        if occurred_at is not None:
            first = occurred_at if first is None else min(first, occurred_at)
            last = occurred_at if last is None else max(last, occurred_at)
        self._job.campaigns[cid] = (first, last, sequence)

    def touched(self) -> dict[int, bool]:
        """The campaigns this transaction's kept jobs touched, each with
        whether an event (not only a campaign change) touched it."""
        return {cid: first is not None for cid, (first, _, _) in self._tx.campaigns.items()}

    # -- job boundaries (writer only) --------------------------------------
    def _keep_job(self) -> None:
        for key, value in self._job.counters.items():
            self._tx.counters[key] += value
        self._tx.sequences.update(self._job.sequences)
        self._tx.campaigns.update(self._job.campaigns)
        self._job = _Delta()

    def _drop_job(self) -> None:
        self._job = _Delta()

    def _flush(self) -> None:
        conn = self.conn
        counters = [(cid, scope, name, value) for (cid, scope, name), value in self._tx.counters.items() if value]
        execute_rows(
            conn,
            "INSERT INTO counters (cid, scope, name, value)",
            counters,
            "ON CONFLICT (cid, scope, name) DO UPDATE SET value = value + excluded.value",
        )
        if self._tx.campaigns:  # a few rows: UPDATE ... FROM (VALUES ...) would need SQLite 3.33
            conn.executemany(
                "UPDATE campaigns SET first_event_at = min(coalesce(first_event_at, ?1), coalesce(?1, first_event_at)),"
                " last_event_at = max(coalesce(last_event_at, ?2), coalesce(?2, last_event_at)),"
                " last_sequence = max(last_sequence, ?3) WHERE cid = ?4",
                [(first, last, seq, cid) for cid, (first, last, seq) in self._tx.campaigns.items()],
            )
        if self._tx.sequences:
            conn.executemany(
                "INSERT INTO businesses (business_id, last_sequence) VALUES (?, ?) "
                "ON CONFLICT (business_id) DO UPDATE SET last_sequence = excluded.last_sequence",
                list(self._tx.sequences.items()),
            )

    def _committed(self) -> dict[str, int]:
        self._committed_sequences.update(self._tx.sequences)
        changed = dict(self._tx.sequences)
        self._tx = _Delta()
        return changed


Job = Callable[[Tx], T]


@dataclass
class _Item(Generic[T]):
    job: Job[T]
    rows: int
    loop: asyncio.AbstractEventLoop | None
    future: Any  # asyncio.Future[T] or concurrent.futures.Future[T]


class WriterClosed(Unavailable):
    """The writer no longer takes jobs: the server is stopping (UNAVAILABLE: retry elsewhere or later)."""


class Writer:
    """Runs jobs on the write connection in group-committed transactions."""

    def __init__(self, conn: sqlite3.Connection, *, max_commit_rows: int = 10000) -> None:
        self._conn = conn
        self._max_rows = max_commit_rows
        self._queue: queue.SimpleQueue[_Item[Any] | None] = queue.SimpleQueue()
        self._sequences: dict[str, int] = {}
        self._listeners: list[Callable[[dict[str, int], set[int]], None]] = []
        self._before_commit: list[Callable[[Tx], None]] = []
        self._closed = False
        # Guards _closed with the queue: no job can be queued after the stop
        # sentinel, where the thread would never see it and its caller would wait forever.
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="flowtrack-writer", daemon=True)
        self.commits = 0
        self.jobs = 0
        self.rows_committed = 0
        self._thread.start()

    def on_commit(self, listener: Callable[[dict[str, int], set[int]], None]) -> None:
        """Call `listener(changed_sequences, touched_cids)` in the writer thread
        after each commit that changed something."""
        self._listeners.append(listener)

    def before_commit(self, hook: Callable[[Tx], None]) -> None:
        """Call `hook(tx)` in the writer thread after each transaction's jobs
        and counter flush, just before COMMIT, under its own SAVEPOINT: what
        it writes commits with the jobs; if it raises, its writes are undone
        (logged) and the jobs still commit."""
        self._before_commit.append(hook)

    async def run(self, job: Job[T], rows: int = 1) -> T:
        """Run `job` in the writer's next transaction; return its result after
        the commit. A job's exception is raised here, its changes undone."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._submit(_Item(job, rows, loop, future))
        return await future

    def run_sync(self, job: Job[T], rows: int = 1) -> T:
        """`run` for threads without an event loop (CLI commands, tests)."""
        import concurrent.futures

        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._submit(_Item(job, rows, None, future))
        return future.result()

    def _submit(self, item: _Item[Any]) -> None:
        with self._lock:
            if self._closed:
                raise WriterClosed("the server is shutting down")
            self._queue.put(item)

    def close(self) -> None:
        """Commit what is queued, stop the thread, close the connection."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join()
        self._conn.close()

    # -- the thread --------------------------------------------------------
    def _run(self) -> None:
        tx = Tx(self._conn, self._sequences)
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            rows = first.rows
            while rows < self._max_rows:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
                rows += item.rows
            self._commit(tx, batch)

    def _commit(self, tx: Tx, batch: list[_Item[Any]]) -> None:
        import time

        conn = self._conn
        outcomes: list[tuple[bool, Any]] = []
        touched: set[int] = set()
        try:
            conn.execute("BEGIN IMMEDIATE")
            tx.now_us = time.time_ns() // 1000
            # A job alone needs no savepoint: if it fails, the whole
            # transaction is rolled back instead (two statements fewer per
            # commit, which counts for small commits under load).
            alone = len(batch) == 1
            for item in batch:
                if not alone:
                    conn.execute("SAVEPOINT job")
                try:
                    result = item.job(tx)
                except BaseException as error:
                    if alone:
                        conn.execute("ROLLBACK")
                    else:
                        conn.execute("ROLLBACK TO job")
                        conn.execute("RELEASE job")
                    tx._drop_job()
                    outcomes.append((False, error))
                    continue
                if not alone:
                    conn.execute("RELEASE job")
                touched.update(tx._job.campaigns)
                tx._keep_job()
                outcomes.append((True, result))
            if conn.in_transaction:
                tx._flush()
                for hook in self._before_commit:
                    conn.execute("SAVEPOINT hook")
                    try:
                        hook(tx)
                    except Exception:
                        log.exception("pre-commit hook failed; its writes are undone")
                        conn.execute("ROLLBACK TO hook")
                    conn.execute("RELEASE hook")
                conn.execute("COMMIT")
        except BaseException as error:
            log.exception("writer transaction failed; %d jobs refused", len(batch))
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            tx._tx = _Delta()
            tx._committed_sequences.clear()
            # Nothing of the batch was stored: a retryable UNAVAILABLE, not UNKNOWN.
            failure = error if isinstance(error, FlowtrackError) else Unavailable(f"the write was rolled back: {error}")
            _resolve(batch, [(False, failure)] * len(batch))
            return
        changed = tx._committed()
        self.commits += 1
        self.jobs += len(batch)
        self.rows_committed += sum(item.rows for item in batch)
        _resolve(batch, outcomes)
        if changed or touched:
            for listener in self._listeners:
                try:
                    listener(changed, touched)
                except Exception:  # pragma: no cover - a listener must not stop the writer
                    log.exception("commit listener failed")


def _resolve(batch: list[_Item[Any]], outcomes: list[tuple[bool, Any]]) -> None:
    """Hand each job its result: at once for threads, and with one wake-up
    per event loop (not one per job) for asyncio callers."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, bool, Any]]] = {}
    for item, (ok, value) in zip(batch, outcomes, strict=True):
        if item.loop is None:
            _settle(item.future, ok, value)
        else:
            by_loop.setdefault(item.loop, []).append((item.future, ok, value))
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(_settle_all, settled)


def _settle_all(settled: list[tuple[Any, bool, Any]]) -> None:
    for future, ok, value in settled:
        _settle(future, ok, value)


def _settle(future: Any, ok: bool, value: Any) -> None:
    if future.cancelled():  # an asyncio caller that went away
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
