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
  commit. A SQLite error of a job is the client's UNAVAILABLE (or
  RESOURCE_EXHAUSTED for a full disk), never an unknown error (faults.py).
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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from flowtrack.domain.errors import FlowtrackError, ResourceExhausted, Unavailable
from flowtrack.store import db
from flowtrack.store.db import execute_rows
from flowtrack.store.faults import is_storage_fault, storage_error

log = logging.getLogger(__name__)

T = TypeVar("T")

CounterKey = tuple[int, str, str]  # (cid, scope, name)


@dataclass
class _Delta:
    """What one job changed beyond its SQL: merged into the Tx on success."""

    counters: defaultdict[CounterKey, int] = field(default_factory=lambda: defaultdict(int))
    sequences: dict[str, int] = field(default_factory=dict)
    campaigns: dict[int, tuple[int | None, int | None, int]] = field(default_factory=dict)
    forgotten: set[int] = field(default_factory=set)  # campaigns deleted by the job


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

    def lock_business(self, business_id: str) -> None:
        """Called by a job before it reads what it will change of a business.
        The single SQLite writer needs no lock; the PostgreSQL Tx
        (store/pg/store.py) locks the business's row here, so that replicas
        serialise their writes of one business."""

    def next_sequence(self, business_id: str) -> int:
        seq = self.last_sequence(business_id) + 1
        self._job.sequences[business_id] = seq
        return seq

    # -- counters ----------------------------------------------------------
    def count(self, cid: int, scope: str, name: str, delta: int) -> None:
        self._job.counters[(cid, scope, name)] += delta

    def forget_campaign(self, cid: int) -> None:
        """The job deleted campaign `cid`: drop every counter change of it that
        this transaction holds, so that nothing of it is written at COMMIT."""
        self._job.forgotten.add(cid)
        for key in [key for key in self._job.counters if key[0] == cid]:
            del self._job.counters[key]

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
        for cid in self._job.forgotten:
            for key in [key for key in self._tx.counters if key[0] == cid]:
                del self._tx.counters[key]
            self._tx.campaigns.pop(cid, None)
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


# The probe of an unhealthy writer: a small real write (64 KiB, so that a
# database at its size limit fails it too), committed, then removed.
_PROBE = (
    "INSERT INTO server_settings (key, value) VALUES ('flowtrack.writer_probe', zeroblob(65536))"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
_UNPROBE = "DELETE FROM server_settings WHERE key = 'flowtrack.writer_probe'"


class Writer:
    """Runs jobs on the write connection in group-committed transactions."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        max_commit_rows: int = 10000,
        max_queued_rows: int = 50000,
        probe_interval: float = 1.0,
        reopen: Callable[[], sqlite3.Connection] | None = None,
    ) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._reopen = reopen or _reopener(conn)
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
        self._thread.start()

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
        if is_storage_fault(error):
            failure = storage_error(error)
            self._set_fault(failure)
            return failure
        if isinstance(error, FlowtrackError):
            return error
        if isinstance(error, sqlite3.Error):
            log.error("writer transaction failed and was rolled back: %s", error)
        else:
            log.exception("writer transaction failed and was rolled back")
        return Unavailable(f"the write failed and was rolled back ({error}); retry", reason="WRITE_FAILED")

    # -- the thread --------------------------------------------------------
    def _new_tx(self) -> Tx:
        """The transaction object the thread's jobs see."""
        return Tx(self._conn, self._sequences)  # type: ignore[arg-type]

    def _run(self) -> None:
        tx = self._new_tx()
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

    def _connection(self, tx: Tx) -> sqlite3.Connection:
        """The write connection, reopened if a failed rollback closed it."""
        if self._conn is None:
            self._conn = self._reopen()
            log.warning("database connection reopened")
        tx.conn = self._conn
        return self._conn

    def _abandon(self, tx: Tx) -> None:
        """Roll back whatever is open; if ROLLBACK itself fails, close the
        connection (closing rolls back) so that the next batch reopens it."""
        tx._tx = _Delta()
        tx._job = _Delta()
        tx._committed_sequences.clear()
        conn = self._conn
        if conn is None or not conn.in_transaction:
            return
        try:
            conn.execute("ROLLBACK")
            return
        except sqlite3.Error as error:
            log.error("ROLLBACK failed (%s): closing the database connection, the next write reopens it", error)
        self._conn = None
        try:
            conn.close()
        except sqlite3.Error as error:  # pragma: no cover - nothing more to do with it
            log.error("closing the database connection failed: %s", error)

    def _probe(self, tx: Tx) -> None:
        """Try a small real write while unhealthy; healthy again if it commits."""
        self.probes += 1
        try:
            conn = self._connection(tx)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(_PROBE)
            conn.execute(_UNPROBE)
            conn.execute("COMMIT")
        except sqlite3.Error as error:
            self._abandon(tx)
            self._set_fault(storage_error(error) if is_storage_fault(error) else self.fault)
            return
        self._set_fault(None)

    def _commit(self, tx: Tx, batch: list[_Item[Any]]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        touched: set[int] = set()
        job_fault: BaseException | None = None
        began = time.perf_counter()
        try:
            conn = self._connection(tx)
            if conn.in_transaction:  # pragma: no cover - left open by a failure; never carry it on
                conn.execute("ROLLBACK")
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
                    tx._drop_job()
                    if not conn.in_transaction:
                        # SQLite rolled the whole transaction back by itself
                        # (a full disk, an I/O error): nothing of the batch stays.
                        raise
                    if alone:
                        conn.execute("ROLLBACK")
                    else:
                        conn.execute("ROLLBACK TO job")
                        conn.execute("RELEASE job")
                    if is_storage_fault(error):
                        job_fault = error
                    # A job's own SQLite error is a retryable storage error, not an unknown one.
                    outcomes.append((False, storage_error(error) if isinstance(error, sqlite3.Error) else error))
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
            failure = self._failure(error)
            self._abandon(tx)
            # Nothing of the batch was stored: a retryable error, never UNKNOWN.
            _resolve(batch, [(False, failure)] * len(batch))
            return
        changed = tx._committed()
        if job_fault is not None:
            self._set_fault(storage_error(job_fault))
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
            for listener in self._listeners:
                try:
                    listener(changed, touched)
                except Exception:  # pragma: no cover - a listener must not stop the writer
                    log.exception("commit listener failed")


def _reopener(conn: sqlite3.Connection) -> Callable[[], sqlite3.Connection]:
    """How to open another write connection like `conn` (same file, same durability)."""
    path = conn.execute("PRAGMA database_list").fetchone()[2]
    synchronous = conn.execute("PRAGMA synchronous").fetchone()[0]
    durability = "full" if synchronous >= 2 else "normal"
    return lambda: db.connect(path, durability=durability)


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
