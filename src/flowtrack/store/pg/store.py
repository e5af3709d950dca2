"""The store on PostgreSQL: any number of stateless replicas on one database.

Same surface as the SQLite store (store/store.py; the interface is
store/base.py): `write(job)` runs a job in this replica's writer (one thread,
one connection, group commit, ack after COMMIT), `read(fn, ...)` runs
`fn(conn, ...)` on a pooled connection (psycopg_pool) in a reader thread,
`snapshot()` holds one REPEATABLE READ transaction for a report stream. The
jobs and queries are the SQLite store's own functions, run through
`PgConnection` (conn.py); the rules stay in domain/.

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
import contextlib
import json
import logging
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pgerrors
from psycopg_pool import ConnectionPool, PoolTimeout

from flowtrack.domain.errors import FlowtrackError, ResourceExhausted, Unavailable
from flowtrack.store import reports as sreports
from flowtrack.store.db import execute_rows
from flowtrack.store.pg.conn import SESSION_OPTIONS, Cursor, PgConnection, _IntNumericLoader, observe
from flowtrack.store.timelimit import ReadTimeLimit
from flowtrack.store.writer import Job, Tx, Writer, _Delta, _Item, _resolve

log = logging.getLogger(__name__)

T = TypeVar("T")

CHANNEL = "flowtrack_commits"
_RETRIES = 20
_RETRYABLE = (pgerrors.DeadlockDetected, pgerrors.SerializationFailure, pgerrors.LockNotAvailable)
_NOTIFY_BYTES = 7000  # under PostgreSQL's 8000-byte payload limit


# -- migrations ------------------------------------------------------------------


def migrate(url: str) -> list[str]:
    """Bring the database to flowtrack's schema (store/schema.py) with
    Alembic, in one transaction under `pg_advisory_xact_lock` (replicas
    starting at once wait for the first, then find nothing to do); a
    database of the previous release is adopted first (store/upgrade.py).
    Returns what was applied ('legacy N', then revisions)."""
    from flowtrack.store import upgrade

    return upgrade.upgrade(upgrade.postgres_engine(url))


def token_key(conn: PgConnection) -> bytes:
    """The key that signs page and resume tokens: one per database, shared by every replica."""
    conn.execute(
        "INSERT INTO server_settings (key, value) VALUES ('token_key', ?) ON CONFLICT (key) DO NOTHING",
        (secrets.token_bytes(32),),
    )
    row = conn.execute("SELECT value FROM server_settings WHERE key = 'token_key'").fetchone()
    assert row is not None
    return bytes(row[0])


# -- errors ----------------------------------------------------------------------


def storage_fault(error: BaseException) -> FlowtrackError | None:
    """The client's error when `error` means the database cannot be written
    now (unreachable, full, read-only, shutting down); None otherwise."""
    if isinstance(error, pgerrors.DiskFull | pgerrors.OutOfMemory | pgerrors.InsufficientResources):
        return ResourceExhausted(
            f"the database server is out of space or memory ({error}): nothing was stored; retry later",
            reason="STORAGE_FULL",
        )
    if isinstance(error, pgerrors.ReadOnlySqlTransaction):
        return Unavailable(
            "the database is read-only (a standby, or default_transaction_read_only): nothing was stored;"
            " retry once it accepts writes",
            reason="DATABASE_READ_ONLY",
        )
    if isinstance(error, psycopg.OperationalError | pgerrors.AdminShutdown | pgerrors.CannotConnectNow):
        return Unavailable(
            f"the database cannot be reached ({str(error).strip() or type(error).__name__}): nothing was stored;"
            " retry with backoff",
            reason="DATABASE_UNAVAILABLE",
        )
    return None


class CommitOutcomeUnknown(Exception):
    """The connection was lost while COMMIT was on its way: the transaction
    may have committed or not, and nobody here can tell which. `outcomes`
    are the batch's jobs as they ran (those that failed were undone anyway)."""

    def __init__(self, error: BaseException, outcomes: list[tuple[bool, Any]]) -> None:
        super().__init__(str(error))
        self.error = error
        self.outcomes = outcomes


def unknown_outcome(error: BaseException) -> Unavailable:
    """The client's error for a write whose COMMIT lost its connection."""
    return Unavailable(
        f"the database connection was lost during COMMIT ({str(error).strip() or type(error).__name__}): the write"
        " may or may not have been stored. Retrying is safe for events (their event_id) and for calls that name"
        " what they create (CreateCampaign with an id answers ALREADY_EXISTS if it was stored); look before"
        " repeating a call that does not (CreateCampaign without an id: ListCampaigns)",
        reason="COMMIT_OUTCOME_UNKNOWN",
    )


def write_error(error: BaseException) -> FlowtrackError:
    """The client's error for a write that failed with `error` (nothing stored)."""
    if isinstance(error, FlowtrackError):
        return error
    fault = storage_fault(error)
    if fault is not None:
        return fault
    return Unavailable(f"the write failed in the database ({error}) and was rolled back; retry", reason="WRITE_FAILED")


# -- the writer ------------------------------------------------------------------


class PgTx(Tx):
    """The writer's transaction on PostgreSQL: sequences come from the locked
    business row of this transaction, never from a cache (another replica
    may have moved them)."""

    def __init__(self, conn: Any) -> None:
        super().__init__(conn, {})
        self._locked: dict[str, int] = {}  # business -> last_sequence as locked
        self._job_locked: set[str] = set()  # locked by the running job (a savepoint undoes it)

    def lock_business(self, business_id: str) -> None:
        if business_id in self._locked:
            return
        row = self.conn.execute(
            "INSERT INTO businesses AS b (business_id, last_sequence) VALUES (?, 0)"
            " ON CONFLICT (business_id) DO UPDATE SET last_sequence = b.last_sequence RETURNING last_sequence",
            (business_id,),
        ).fetchone()
        assert row is not None
        self._locked[business_id] = int(row[0])
        self._job_locked.add(business_id)

    def last_sequence(self, business_id: str) -> int:
        for delta in (self._job, self._tx):
            if business_id in delta.sequences:
                return delta.sequences[business_id]
        self.lock_business(business_id)
        return self._locked[business_id]

    def _keep_job(self) -> None:
        super()._keep_job()
        self._job_locked = set()

    def _drop_job(self) -> None:
        super()._drop_job()
        for business_id in self._job_locked:  # ROLLBACK TO released its lock
            self._locked.pop(business_id, None)
        self._job_locked = set()

    def _reset(self) -> None:
        self._tx = _Delta()
        self._job = _Delta()
        self._locked.clear()
        self._job_locked = set()

    def _flush(self) -> None:
        conn = self.conn
        counters = sorted((cid, scope, name, value) for (cid, scope, name), value in self._tx.counters.items() if value)
        execute_rows(
            conn,
            "INSERT INTO counters AS k (cid, scope, name, value)",
            counters,
            "ON CONFLICT (cid, scope, name) DO UPDATE SET value = k.value + excluded.value",
        )
        conn.executemany(
            "UPDATE campaigns SET first_event_at = least(first_event_at, ?::bigint),"
            " last_event_at = greatest(last_event_at, ?::bigint), last_sequence = greatest(last_sequence, ?::bigint)"
            " WHERE cid = ?",
            [(first, last, seq, cid) for cid, (first, last, seq) in sorted(self._tx.campaigns.items())],
        )
        conn.executemany(
            "UPDATE businesses SET last_sequence = ? WHERE business_id = ?",
            [(seq, business_id) for business_id, seq in sorted(self._tx.sequences.items())],
        )

    def _notify(self, touched: set[int]) -> None:
        """NOTIFY every replica (this one included) of what this transaction
        changes; delivered at COMMIT, never for a rollback."""
        sequences = dict(self._tx.sequences)
        cids = sorted(touched | set(self._tx.campaigns))
        if not sequences and not cids:
            return
        payloads = []
        chunk: list[int] = []
        for cid in cids:
            chunk.append(cid)
            if len(chunk) >= 400:
                payloads.append(chunk)
                chunk = []
        payloads.append(chunk)
        for i, some in enumerate(payloads):
            payload = json.dumps({"s": sequences if i == 0 else {}, "c": some}, separators=(",", ":"))
            if len(payload) > _NOTIFY_BYTES:  # many businesses in one commit: one notice each
                for business_id, seq in sequences.items():
                    self.conn.execute("SELECT pg_notify(?, ?)", (CHANNEL, json.dumps({"s": {business_id: seq}})))
                payload = json.dumps({"s": {}, "c": some})
            self.conn.execute("SELECT pg_notify(?, ?)", (CHANNEL, payload))

    def _committed(self) -> dict[str, int]:
        changed = dict(self._tx.sequences)
        self._reset()
        return changed


class PgWriter(Writer):
    """The SQLite writer's queue, bound, failure contract and health, with a
    PostgreSQL transaction: READ COMMITTED, a SAVEPOINT per job, retried
    whole on deadlock or serialization failure. Commit listeners are called
    by the replica's LISTEN thread (`notified`), for every replica's commits."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self._url = url
        self.retries = 0  # batches run again after a deadlock or serialization failure
        super().__init__(self._open(), reopen=self._open, **kwargs)  # type: ignore[arg-type]

    def _open(self) -> Any:
        return PgConnection.connect(self._url, application_name="flowtrack-writer")

    def _new_tx(self) -> Tx:
        return PgTx(self._conn)

    def notified(self, changed: dict[str, int], touched: set[int]) -> None:
        for listener in self._listeners:
            try:
                listener(changed, touched)
            except Exception:  # pragma: no cover - a listener must not stop the LISTEN thread
                log.exception("commit listener failed")

    def _failure(self, error: BaseException) -> FlowtrackError:
        fault = storage_fault(error)
        if fault is not None:
            self._set_fault(fault)
            return fault
        if isinstance(error, FlowtrackError):
            return error
        log.error("writer transaction failed and was rolled back: %s", error)
        return Unavailable(f"the write failed and was rolled back ({error}); retry", reason="WRITE_FAILED")

    def _connection(self, tx: Tx) -> Any:
        if self._conn is None or self._conn.closed:  # type: ignore[attr-defined]
            self._conn = self._reopen()
            log.warning("database connection reopened")
        tx.conn = self._conn
        return self._conn

    def _abandon(self, tx: Tx) -> None:
        assert isinstance(tx, PgTx)
        tx._reset()
        conn: Any = self._conn
        if conn is None or conn.closed or not conn.in_transaction:
            return
        try:
            conn.execute("ROLLBACK")
            return
        except psycopg.Error as error:
            log.error("ROLLBACK failed (%s): closing the database connection, the next write reopens it", error)
        self._conn = None
        with contextlib.suppress(psycopg.Error):
            conn.close()

    def _probe(self, tx: Tx) -> None:
        self.probes += 1
        try:
            conn = self._connection(tx)
            conn.execute("BEGIN")
            conn.execute(
                "INSERT INTO server_settings (key, value) VALUES ('flowtrack.writer_probe', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (bytes(65536),),
            )
            conn.execute("DELETE FROM server_settings WHERE key = 'flowtrack.writer_probe'")
            conn.execute("COMMIT")
        except psycopg.Error as error:
            self._abandon(tx)
            self._set_fault(storage_fault(error) or self.fault)
            return
        self._set_fault(None)

    def _attempt(self, tx: PgTx, batch: list[_Item[Any]]) -> tuple[list[tuple[bool, Any]], BaseException | None]:
        """One try at the batch: every job under its savepoint, then COMMIT.
        A deadlock or serialization failure anywhere propagates (the batch is
        tried again); any other error of a job undoes that job only."""
        outcomes: list[tuple[bool, Any]] = []
        job_fault: BaseException | None = None
        touched: set[int] = set()
        conn = self._connection(tx)
        if conn.in_transaction:  # pragma: no cover - left open by a failure; never carry it on
            conn.execute("ROLLBACK")
        conn.execute("BEGIN")
        tx.now_us = time.time_ns() // 1000
        # A job alone needs no savepoint: if it fails, the whole transaction
        # is rolled back instead (two round trips fewer per commit).
        alone = len(batch) == 1
        for item in batch:
            if not alone:
                conn.execute("SAVEPOINT job")
            try:
                result = item.job(tx)
            except _RETRYABLE:
                raise
            except BaseException as error:
                tx._drop_job()
                if isinstance(error, psycopg.OperationalError) or conn.closed:
                    raise  # the connection is gone: nothing of the batch stays
                if alone:
                    conn.execute("ROLLBACK")
                else:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                if storage_fault(error) is not None:
                    job_fault = error
                outcomes.append((False, write_error(error) if isinstance(error, psycopg.Error) else error))
                continue
            if not alone:
                conn.execute("RELEASE job")
            touched.update(tx._job.campaigns)
            tx._keep_job()
            outcomes.append((True, result))
        if conn.in_transaction:
            tx._flush()
            for hook in self._before_commit:  # as the SQLite writer: under a savepoint of its own
                conn.execute("SAVEPOINT hook")
                try:
                    hook(tx)
                except _RETRYABLE:
                    raise
                except Exception:
                    if conn.closed:
                        raise
                    log.exception("pre-commit hook failed; its writes are undone")
                    conn.execute("ROLLBACK TO hook")
                conn.execute("RELEASE hook")
            tx._notify(touched)
            try:
                conn.execute("COMMIT")
            except _RETRYABLE:
                raise  # refused by the server: rolled back
            except psycopg.OperationalError as error:
                if conn.closed:  # no answer came: committed or not, nobody can say
                    raise CommitOutcomeUnknown(error, outcomes) from error
                raise
        return outcomes, job_fault

    def _commit(self, tx: Tx, batch: list[_Item[Any]]) -> None:
        assert isinstance(tx, PgTx)
        began = time.perf_counter()
        for attempt in range(_RETRIES):
            try:
                outcomes, job_fault = self._attempt(tx, batch)
                break
            except _RETRYABLE as error:
                self._abandon(tx)
                self.retries += 1
                log.info("writer batch retried after %s", type(error).__name__)
                time.sleep(random.uniform(0, min(0.2, 0.005 * 2**attempt)))
            except CommitOutcomeUnknown as lost:
                self._failure(lost.error)  # health: the database is away
                self._abandon(tx)
                unknown = unknown_outcome(lost.error)
                log.error("the connection was lost during COMMIT: %d jobs of unknown outcome", len(batch))
                _resolve(batch, [(False, unknown) if ok else (ok, value) for ok, value in lost.outcomes])
                return
            except BaseException as error:
                failure = self._failure(error)
                self._abandon(tx)
                _resolve(batch, [(False, failure)] * len(batch))
                return
        else:
            self._abandon(tx)
            failure = Unavailable(
                "the write kept meeting concurrent writes and was rolled back; retry", reason="CONTENTION"
            )
            _resolve(batch, [(False, failure)] * len(batch))
            return
        tx._committed()
        if job_fault is not None:
            self._set_fault(write_error(job_fault))
        elif any(ok for ok, _ in outcomes):
            self._set_fault(None)
        rows = sum(item.rows for item in batch)
        self.commits += 1
        self.jobs += len(batch)
        self.rows_committed += rows
        if self.observe_commit is not None:
            self.observe_commit(time.perf_counter() - began, rows)
        _resolve(batch, outcomes)


class Listener:
    """One LISTEN connection per replica: every commit of every replica
    reaches the writer's on_commit listeners.

    A payload that is not flowtrack's (a stray `NOTIFY flowtrack_commits,
    'x'`) is logged and skipped. A lost connection (the server restarted,
    pg_terminate_backend, a network cut) is opened again with backoff (0.1 s
    doubling to BACKOFF_MAX, with jitter); once listening again, the commits
    made meanwhile are found from the businesses' sequences and passed on
    like notifications, so watchers miss nothing but the latency. While it
    is not listening, `connected` is False and the `on_state` callbacks are
    told (health turns the report service NOT_SERVING: its watchers would
    not see other replicas' commits)."""

    BACKOFF_MAX = 5.0

    def __init__(self, url: str, writer: PgWriter) -> None:
        self.url = url
        self._writer = writer
        self._stop = threading.Event()
        self.ready = threading.Event()
        self.connected = False
        self.reconnects = 0  # connections opened after a loss
        self.bad_payloads = 0
        self._callbacks: list[Callable[[bool], None]] = []
        self._seen: dict[str, int] = {}  # business -> last sequence passed on
        self._primed = False
        self._thread = threading.Thread(target=self._run, name="flowtrack-listen", daemon=True)
        self._thread.start()

    def on_state(self, callback: Callable[[bool], None]) -> None:
        """Call `callback(connected)` (in the LISTEN thread) whenever it connects or loses its connection."""
        self._callbacks.append(callback)

    def _set(self, connected: bool) -> None:
        if connected == self.connected:
            return
        self.connected = connected
        for callback in self._callbacks:
            try:
                callback(connected)
            except Exception:  # pragma: no cover - a callback must not stop the LISTEN thread
                log.exception("LISTEN state callback failed")

    def _run(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self.url, autocommit=True, application_name="flowtrack-listen", connect_timeout=10
                ) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._catch_up(conn)
                    if self.ready.is_set():
                        self.reconnects += 1
                        log.warning("LISTEN connection open again: watchers see other replicas' commits")
                    self._set(True)
                    self.ready.set()
                    delay = 0.1
                    while not self._stop.is_set():
                        for notice in conn.notifies(timeout=0.2):
                            self._deliver(notice.payload)
            except Exception as error:  # psycopg.Error, OSError: the connection is gone
                self._set(False)
                if self._stop.is_set():
                    return
                log.warning("LISTEN connection lost or refused (%s); trying again in %.1f s", str(error).strip(), delay)
                self._stop.wait(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, self.BACKOFF_MAX)
        self._set(False)

    def _deliver(self, payload: str) -> None:
        """Pass one notification on; one that is not flowtrack's is skipped."""
        try:
            data = json.loads(payload)
            changed = {str(b): int(s) for b, s in dict(data.get("s", {})).items()}
            touched = {int(c) for c in data.get("c", [])}
        except (ValueError, TypeError, AttributeError):
            self.bad_payloads += 1
            log.warning("skipped a notification on %s that is not flowtrack's: %.80r", CHANNEL, payload)
            return
        for business_id, seq in changed.items():
            if seq > self._seen.get(business_id, 0):
                self._seen[business_id] = seq
        self._writer.notified(changed, touched)

    def _catch_up(self, conn: psycopg.Connection[Any]) -> None:
        """After (re)connecting, LISTEN already on: the businesses whose
        sequence moved since the last notification seen, and their
        campaigns that changed, as if notified (nothing at the first connect)."""
        every = "SELECT business_id, last_sequence FROM businesses"
        observe(every)
        rows = {str(b): int(s) for b, s in conn.execute(every)}
        before, primed = dict(self._seen), self._primed
        self._seen.update(rows)
        self._primed = True
        if not primed:
            return
        changed = {b: s for b, s in rows.items() if s > before.get(b, 0)}
        if not changed:
            return
        touched: set[int] = set()
        since = "SELECT cid FROM campaigns WHERE business_id = %s AND last_sequence > %s"
        observe(since)
        for business_id in changed:
            touched.update(int(cid) for (cid,) in conn.execute(since, [business_id, before.get(business_id, 0)]))
        self._writer.notified(changed, touched)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# -- reads -----------------------------------------------------------------------


class PgTimeLimit:
    """The read time limit on PostgreSQL: the connection's statement_timeout
    (set when it is opened) stops a statement; this names the error."""

    def __init__(self) -> None:
        self.at: float | None = None

    @contextlib.contextmanager
    def limited(self, seconds: float) -> Iterator[None]:
        if seconds <= 0:
            yield
            return
        try:
            yield
        except pgerrors.QueryCanceled as error:
            if "statement timeout" in str(error):
                raise ReadTimeLimit(
                    f"the read ran longer than the read time limit ({seconds:g} s, --read-time-limit): "
                    "narrow it with a filter or a smaller page_size"
                ) from error
            raise


def _session_options(read_time_limit: float) -> str:
    timeout = f" -c statement_timeout={int(read_time_limit * 1000)}" if read_time_limit > 0 else ""
    return SESSION_OPTIONS + timeout


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
            with contextlib.suppress(psycopg.Error):
                self._release(self._conn.raw)


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
        options = _session_options(read_time_limit)

        def configure(conn: psycopg.Connection[Any]) -> None:
            conn.adapters.register_loader("numeric", _IntNumericLoader)

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
