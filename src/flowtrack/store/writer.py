"""The one writer: a thread that owns the write connection and group-commits.

Every change to the database is a job: a function run inside the writer's
transaction. The thread takes the first waiting job, then every job already
queued behind it (up to `max_commit_rows` rows), runs them in one
`BEGIN IMMEDIATE` transaction, each under its own SAVEPOINT so that one
failing job does not undo the others, commits, and only then resolves the
jobs' futures. An acknowledgement therefore always follows the commit
(acknowledged means durable), and under load thousands of rows share one fsync.

Jobs also keep per-transaction state (counter deltas, sequences) in the
`Tx` object, which is flushed just before COMMIT and dropped for a job that
failed.

The failure contract: every job submitted gets an answer, whatever happens.
- A job that raises loses its own changes only; the others of its commit
  commit. A database error of a job is the client's UNAVAILABLE (or
  RESOURCE_EXHAUSTED for a full disk), never an unknown error (faults.py,
  pg/faults.py).
- A transaction that fails as a whole (BEGIN IMMEDIATE timing out behind
  another process's lock, COMMIT on a full disk, SQLite rolling back by
  itself) answers every job of the batch with that error; nothing of the
  batch is stored.
- A ROLLBACK that fails closes the connection (which rolls back) and opens
  a new one; if that fails too, jobs are answered UNAVAILABLE and the next
  batch tries again.
- Whatever else goes wrong in the thread, the batch is answered and the
  thread goes on.
Storage faults (full, locked, read-only, I/O) turn the writer unhealthy
(`on_health` listeners, one log line per change, not per job); while
unhealthy it probes once per `probe_interval` seconds with a small real
write, and the first write that succeeds makes it healthy again.

The queue is bounded (back-pressure): `run` first waits until the rows
queued or being committed leave room for its own (`admit`), or gives up with
RESOURCE_EXHAUSTED after its `wait`.

One writer for both databases: what differs is the `Backend`
(store/transaction.py) it is given. SQLite's (store/sqlite/writer.py): `BEGIN
IMMEDIATE`, never a retry, the commit told to the `on_commit` listeners
in-process. PostgreSQL's (store/pg/writer.py): the job's Tx locks its
business's row, a deadlock or serialization failure (RETRYABLE) runs the
whole batch again from BEGIN, a connection lost during COMMIT answers the
jobs that succeeded COMMIT_OUTCOME_UNKNOWN (OUTCOME_UNKNOWN: stored or not,
nobody can tell), and the commit is told by NOTIFY to every replica, whose
LISTEN thread calls `notify` (store/pg/notify.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import random
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from flowtrack.domain.errors import FlowtrackError, ResourceExhausted, Unavailable
from flowtrack.store.sqlite.writer import SqliteBackend
from flowtrack.store.transaction import Backend, CommitOutcomeUnknown, ErrorKind, Tx

__all__ = ["Backend", "Job", "QueueFull", "Tx", "Writer", "WriterClosed", "unknown_outcome"]

log = logging.getLogger(__name__)

T = TypeVar("T")


Job = Callable[[Tx], T]


@dataclass
class _Item(Generic[T]):
    job: Job[T]
    rows: int
    loop: asyncio.AbstractEventLoop | None
    future: Any  # asyncio.Future[T] or concurrent.futures.Future[T]
    counted: int = 0  # rows it holds in the queue's bound, given back once answered


@dataclass
class _Waiter:
    """A caller waiting for room in the queue."""

    rows: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]
    granted: bool = False


class WriterClosed(Unavailable):
    """The writer no longer takes jobs: the server is stopping (UNAVAILABLE: retry elsewhere or later)."""


class QueueFull(ResourceExhausted):
    """The writer's queue stayed full for as long as the caller could wait."""

    reason = "WRITE_QUEUE_FULL"


class Writer:
    """Runs jobs on the write connection in group-committed transactions.

    `backend` is the database's side (store/transaction.py's Backend): a
    sqlite3 connection stands for SQLite's (store/sqlite/writer.py) over it,
    reopened with `reopen` (by default: the same file, the same durability)."""

    def __init__(
        self,
        backend: Backend | sqlite3.Connection,
        *,
        max_commit_rows: int = 10000,
        max_queued_rows: int = 50000,
        probe_interval: float = 1.0,
        reopen: Callable[[], sqlite3.Connection] | None = None,
    ) -> None:
        if isinstance(backend, sqlite3.Connection):
            backend = SqliteBackend(backend, reopen)
        self.backend: Backend = backend
        self._conn: Any = backend.open()
        self._max_rows = max_commit_rows
        self._max_queued = max_queued_rows
        self._probe_interval = probe_interval
        self._queue: queue.SimpleQueue[_Item[Any] | None] = queue.SimpleQueue()
        self._sequences: dict[str, int] = {}
        self._listeners: list[Callable[[dict[str, int], set[int]], None]] = []
        self._before_commit: list[Callable[[Tx], None]] = []
        self._health_listeners: list[Callable[[bool, str], None]] = []
        # Told (seconds from BEGIN to COMMIT, rows) after each commit: the metrics hook.
        self.observe_commit: Callable[[float, int], None] | None = None
        self._closed = False
        # Guards _closed with the queue: no job can be queued after the stop
        # sentinel, where the thread would never see it and its caller would
        # wait forever. Also guards the queue's bound (_queued, _waiters).
        self._lock = threading.Lock()
        self._queued = 0  # rows admitted and not yet answered
        self._waiters: deque[_Waiter] = deque()
        self._waiting = 0  # rows of the waiters
        self.peak_queued_rows = 0  # the most rows ever admitted at once, for tests
        self.peak_waiting_rows = 0  # the most rows ever waiting for room at once, for tests
        # The storage fault that stops every write, or None while writes work.
        self.fault: FlowtrackError | None = None
        self._thread = threading.Thread(target=self._run, name="flowtrack-writer", daemon=True)
        self.commits = 0
        self.jobs = 0
        self.rows_committed = 0
        self.probes = 0
        self.retries = 0  # batches run again after a RETRYABLE error (a deadlock on PostgreSQL)
        self._thread.start()

    @property
    def connection(self) -> Any:
        """The write connection (None after one was closed, until the next batch reopens it)."""
        return self._conn

    @property
    def healthy(self) -> bool:
        """Whether writes work (no storage fault since the last write that succeeded)."""
        return self.fault is None

    @property
    def queued_rows(self) -> int:
        """Rows admitted to the queue and not answered yet."""
        return self._queued

    def on_commit(self, listener: Callable[[dict[str, int], set[int]], None]) -> None:
        """Call `listener(changed_sequences, touched_cids)` in the writer thread
        after each commit that changed something."""
        self._listeners.append(listener)

    def notify(self, changed: dict[str, int], touched: set[int]) -> None:
        """Call the `on_commit` listeners (the backend's after-commit
        notification: the writer thread on SQLite, the LISTEN thread on
        PostgreSQL, for every replica's commits)."""
        for listener in self._listeners:
            try:
                listener(changed, touched)
            except Exception:  # pragma: no cover - a listener must not stop its thread
                log.exception("commit listener failed")

    def before_commit(self, hook: Callable[[Tx], None]) -> None:
        """Call `hook(tx)` in the writer thread after each transaction's jobs
        and counter flush, just before COMMIT, under its own SAVEPOINT: what
        it writes commits with the jobs; if it raises, its writes are undone
        (logged) and the jobs still commit."""
        self._before_commit.append(hook)

    def on_health(self, listener: Callable[[bool, str], None]) -> None:
        """Call `listener(healthy, message)` in the writer thread whenever the
        writer turns unhealthy (a storage fault) or healthy again."""
        self._health_listeners.append(listener)

    async def run(self, job: Job[T], rows: int = 1, *, wait: float | None = None, admitted: bool = False) -> T:
        """Run `job` in the writer's next transaction; return its result after
        the commit. A job's exception is raised here, its changes undone.

        First waits for room for `rows` in the queue's bound, at most `wait`
        seconds (None: as long as it takes), else QueueFull. With `admitted`,
        the caller already holds its room (see `admit`) and gives it back
        itself (`release`)."""
        if not admitted:
            await self.admit(rows, wait)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        try:
            self._submit(_Item(job, rows, loop, future, 0 if admitted else rows))
        except BaseException:
            if not admitted:
                self.release(rows)
            raise
        return await future

    def run_sync(self, job: Job[T], rows: int = 1) -> T:
        """`run` for threads without an event loop (CLI commands, tests); not
        held back by the queue's bound."""
        import concurrent.futures

        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._submit(_Item(job, rows, None, future))
        return future.result()

    def _submit(self, item: _Item[Any]) -> None:
        with self._lock:
            if self._closed:
                raise WriterClosed("the server is shutting down")
            self._queue.put(item)

    # -- the queue's bound -------------------------------------------------
    def _fits(self, rows: int) -> bool:
        return not self._max_queued or self._queued == 0 or self._queued + rows <= self._max_queued

    def _take(self, rows: int) -> None:
        self._queued += rows
        self.peak_queued_rows = max(self.peak_queued_rows, self._queued)

    async def admit(self, rows: int, wait: float | None = None) -> None:
        """Hold room for `rows` in the queue: at once if there is room (and
        nobody waits before us), else wait in line, at most `wait` seconds
        (None: as long as it takes), then QueueFull."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._closed:
                raise WriterClosed("the server is shutting down")
            if not self._waiters and self._fits(rows):
                self._take(rows)
                return
            waiter = _Waiter(rows, loop, loop.create_future())
            self._waiters.append(waiter)
            self._waiting += rows
            self.peak_waiting_rows = max(self.peak_waiting_rows, self._waiting)
        try:
            await asyncio.wait({waiter.future}, timeout=wait)
        except BaseException:  # cancelled: give back what may have been granted meanwhile
            self._abandon_wait(waiter)
            raise
        if waiter.future.done():
            waiter.future.result()  # WriterClosed
            return
        if self._abandon_wait(waiter):  # granted while the timeout fired
            self.release(rows)
        raise QueueFull(
            f"the server has {self._queued} events waiting to be written (the disk is slower than the senders);"
            " retry with backoff"
        )

    def _abandon_wait(self, waiter: _Waiter) -> bool:
        """Take `waiter` out of the line; True if it had been granted room."""
        with self._lock:
            if waiter.granted:
                return True
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
                self._waiting -= waiter.rows
            return False

    def release(self, rows: int) -> None:
        """Give back room held by `admit`, and let waiters in, in order."""
        if not rows:
            return
        woken: list[_Waiter] = []
        with self._lock:
            self._queued -= rows
            while self._waiters and self._fits(self._waiters[0].rows):
                waiter = self._waiters.popleft()
                self._waiting -= waiter.rows
                waiter.granted = True
                self._take(waiter.rows)
                woken.append(waiter)
        for waiter in woken:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits any more
                waiter.loop.call_soon_threadsafe(_settle, waiter.future, True, None)

    def close(self) -> None:
        """Commit what is queued, stop the thread, close the connection."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
            waiters, self._waiters = list(self._waiters), deque()
        for waiter in waiters:
            with contextlib.suppress(RuntimeError):
                waiter.loop.call_soon_threadsafe(
                    _settle, waiter.future, False, WriterClosed("the server is shutting down")
                )
        self._thread.join()
        if self._conn is not None:
            with contextlib.suppress(*self.backend.errors):
                self._conn.close()

    # -- health ------------------------------------------------------------
    def _set_fault(self, fault: FlowtrackError | None) -> None:
        """Record the storage state; log and tell listeners only on a change."""
        before = self.fault
        self.fault = fault
        if before is None and fault is None:
            return
        if before is not None and fault is not None and before.reason == fault.reason:
            return
        if fault is None:
            log.warning("storage is writable again: serving writes")
        else:
            log.error("storage fault, writes refused until it clears: %s (%s)", fault.message, fault.reason)
        for listener in self._health_listeners:
            try:
                listener(fault is None, "" if fault is None else fault.message)
            except Exception:  # pragma: no cover - a listener must not stop the writer
                log.exception("health listener failed")

    def _failure(self, error: BaseException) -> FlowtrackError:
        """The error every job of a failed transaction gets, logged once."""
        fault = self.backend.fault(error)
        if fault is not None:
            self._set_fault(fault)
            return fault
        if isinstance(error, FlowtrackError):
            return error
        if isinstance(error, self.backend.errors):
            log.error("writer transaction failed and was rolled back: %s", error)
        else:
            log.exception("writer transaction failed and was rolled back")
        return Unavailable(f"the write failed and was rolled back ({error}); retry", reason="WRITE_FAILED")

    # -- the thread --------------------------------------------------------
    def _run(self) -> None:
        tx = self.backend.new_tx(self._conn, self._sequences)
        stopping = False
        while not stopping:
            try:
                first = self._queue.get(timeout=None if self.fault is None else self._probe_interval)
            except queue.Empty:
                self._guarded(self._probe, tx)
                continue
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
            try:
                self._commit(tx, batch)
            except BaseException as error:  # the last guard: the thread must never die with jobs waiting
                log.exception("writer failed outside a transaction; %d jobs refused", len(batch))
                failure = Unavailable(f"the write failed ({error}); retry", reason="WRITE_FAILED")
                _resolve(batch, [(False, failure)] * len(batch))
                self._guarded(self._abandon, tx)
            finally:
                self.release(sum(item.counted for item in batch))

    def _guarded(self, step: Callable[[Tx], None], tx: Tx) -> None:
        try:
            step(tx)
        except BaseException:  # pragma: no cover - logged; the thread goes on
            log.exception("writer recovery step failed")

    def _connection(self, tx: Tx) -> Any:
        """The write connection, reopened if it was lost or a failed rollback closed it."""
        if self._conn is None or self.backend.closed(self._conn):
            self._conn = self.backend.open()
            log.warning("database connection reopened")
        tx.conn = self._conn
        return self._conn

    def _abandon(self, tx: Tx) -> None:
        """Roll back whatever is open; if ROLLBACK itself fails, close the
        connection (closing rolls back) so that the next batch reopens it."""
        tx.reset()
        conn, backend = self._conn, self.backend
        if conn is None or backend.closed(conn) or not backend.in_transaction(conn):
            return
        try:
            backend.control(conn, "ROLLBACK")
            return
        except backend.errors as error:
            log.error("ROLLBACK failed (%s): closing the database connection, the next write reopens it", error)
        self._conn = None
        try:
            conn.close()
        except backend.errors as error:  # pragma: no cover - nothing more to do with it
            log.error("closing the database connection failed: %s", error)

    def _probe(self, tx: Tx) -> None:
        """Try a small real write while unhealthy; healthy again if it commits."""
        self.probes += 1
        try:
            self.backend.probe(self._connection(tx))
        except self.backend.errors as error:
            self._abandon(tx)
            self._set_fault(self.backend.fault(error) or self.fault)
            return
        self._set_fault(None)

    def _commit(self, tx: Tx, batch: list[_Item[Any]]) -> None:
        """Run the batch in one transaction (again, from BEGIN, after a
        RETRYABLE error, up to the backend's `retries`), then answer its jobs."""
        began = time.perf_counter()
        backend = self.backend
        for attempt in range(backend.retries):
            outcomes: list[tuple[bool, Any]] = []
            touched: set[int] = set()
            try:
                job_fault = self._attempt(tx, batch, outcomes, touched)
                break
            except BaseException as error:
                kind = backend.classify(error)
                if kind is ErrorKind.RETRYABLE and attempt + 1 < backend.retries:
                    self._abandon(tx)
                    self.retries += 1
                    log.info("writer batch retried after %s", type(error).__name__)
                    time.sleep(random.uniform(0, min(0.2, 0.005 * 2**attempt)))
                    continue
                if kind is ErrorKind.OUTCOME_UNKNOWN:
                    lost = error.error if isinstance(error, CommitOutcomeUnknown) else error
                    self._failure(lost)  # health: the database is away
                    self._abandon(tx)
                    unknown = unknown_outcome(lost)
                    log.error("the connection was lost during COMMIT: %d jobs of unknown outcome", len(batch))
                    _resolve(batch, [(False, unknown) if ok else (ok, value) for ok, value in outcomes])
                    return
                if kind is ErrorKind.RETRYABLE:
                    failure: FlowtrackError = Unavailable(
                        "the write kept meeting concurrent writes and was rolled back; retry", reason="CONTENTION"
                    )
                else:
                    failure = self._failure(error)
                self._abandon(tx)
                # Nothing of the batch was stored: a retryable error, never UNKNOWN.
                _resolve(batch, [(False, failure)] * len(batch))
                return
        changed = tx.committed()
        if job_fault is not None:
            self._set_fault(job_fault)
        elif any(ok for ok, _ in outcomes):
            self._set_fault(None)
        rows = sum(item.rows for item in batch)
        self.commits += 1
        self.jobs += len(batch)
        self.rows_committed += rows
        if self.observe_commit is not None:
            self.observe_commit(time.perf_counter() - began, rows)
        _resolve(batch, outcomes)
        if changed or touched:
            backend.after_commit(changed, touched, self.notify)

    def _attempt(
        self, tx: Tx, batch: list[_Item[Any]], outcomes: list[tuple[bool, Any]], touched: set[int]
    ) -> FlowtrackError | None:
        """One try at the batch: every job under its savepoint, then COMMIT.
        A job's error undoes that job only, unless the backend says it is
        RETRYABLE or the transaction is gone (then it propagates: the batch
        is tried again, or fails as a whole). Fills `outcomes` (a result or
        an error per job) and `touched`; returns the storage fault a job met."""
        backend = self.backend
        job_fault: FlowtrackError | None = None
        conn = self._connection(tx)
        if backend.in_transaction(conn):  # pragma: no cover - left open by a failure; never carry it on
            backend.control(conn, "ROLLBACK")
        backend.begin(conn)
        tx.now_us = time.time_ns() // 1000
        # A job alone needs no savepoint: if it fails, the whole transaction
        # is rolled back instead (two statements fewer per commit, which
        # counts for small commits under load).
        alone = len(batch) == 1
        for item in batch:
            if not alone:
                backend.control(conn, "SAVEPOINT job")
            try:
                result = item.job(tx)
            except BaseException as error:
                tx.drop_job()
                if backend.classify(error) is ErrorKind.RETRYABLE or backend.transaction_lost(conn, error):
                    raise  # nothing of the batch stays
                if alone:
                    backend.control(conn, "ROLLBACK")
                else:
                    backend.control(conn, "ROLLBACK TO job")
                    backend.control(conn, "RELEASE job")
                job_fault = backend.fault(error) or job_fault
                outcomes.append((False, backend.job_error(error)))
                continue
            if not alone:
                backend.control(conn, "RELEASE job")
            touched.update(tx.keep_job())
            outcomes.append((True, result))
        if backend.in_transaction(conn):
            tx.flush()
            for hook in self._before_commit:
                backend.control(conn, "SAVEPOINT hook")
                try:
                    hook(tx)
                except Exception as error:
                    if backend.classify(error) is ErrorKind.RETRYABLE or backend.transaction_lost(conn, error):
                        raise
                    log.exception("pre-commit hook failed; its writes are undone")
                    backend.control(conn, "ROLLBACK TO hook")
                backend.control(conn, "RELEASE hook")
            backend.before_commit(tx, touched)
            backend.commit(conn)
        return job_fault


def unknown_outcome(error: BaseException) -> Unavailable:
    """The client's error for a write whose COMMIT lost its connection."""
    return Unavailable(
        f"the database connection was lost during COMMIT ({str(error).strip() or type(error).__name__}): the write"
        " may or may not have been stored. Retrying is safe for events (their event_id) and for calls that name"
        " what they create (CreateCampaign with an id answers ALREADY_EXISTS if it was stored); look before"
        " repeating a call that does not (CreateCampaign without an id: ListCampaigns)",
        reason="COMMIT_OUTCOME_UNKNOWN",
    )


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
