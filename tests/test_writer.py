"""The writer's transaction rules, on a real SQLite file: a failing job
changes nothing and stops nobody else, alone or sharing a commit; and the
multi-row statements the writer uses store exactly the rows they are given."""

from __future__ import annotations

import asyncio
import collections
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from flowtrack.domain.errors import Unavailable
from flowtrack.store import db
from flowtrack.store.writer import QueueFull, Tx, Writer
from tests.conftest import checks

pytestmark = pytest.mark.sqlite_only("the SQLite writer's transactions on a file")


class Boom(Exception):
    pass


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[Writer]:
    conn = db.open_database(tmp_path / "w.db")
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    writer = Writer(conn)
    yield writer
    writer.close()


def _insert(k: int, *, then_fail: bool = False, counter: int = 0) -> object:
    def job(tx: Tx) -> int:
        checks(tx.conn).execute("INSERT INTO t (k, v) VALUES (?, ?)", (k, f"v{k}"))
        if counter:
            tx.count("b", 1, "", "n", counter)
        if then_fail:
            raise Boom(f"job {k}")
        return k

    return job


def _rows(writer: Writer) -> list[int]:
    return [k for (k,) in writer.run_sync(lambda tx: checks(tx.conn).execute("SELECT k FROM t ORDER BY k").fetchall())]


def _counter(writer: Writer) -> int:
    row = writer.run_sync(lambda tx: checks(tx.conn).execute("SELECT value FROM counters WHERE cid = 1").fetchone())
    return 0 if row is None else int(row[0])


def test_a_failing_job_alone_is_rolled_back_and_the_writer_goes_on(writer: Writer) -> None:
    with pytest.raises(Boom):
        writer.run_sync(_insert(1, then_fail=True, counter=5))  # type: ignore[arg-type]
    assert _rows(writer) == []
    assert _counter(writer) == 0
    assert writer.run_sync(_insert(2, counter=1)) == 2  # type: ignore[arg-type]
    assert _rows(writer) == [2]
    assert _counter(writer) == 1


def test_a_failing_job_in_a_shared_commit_loses_only_its_own_changes(writer: Writer) -> None:
    gate = threading.Event()
    started = threading.Event()

    def hold(tx: Tx) -> None:
        started.set()
        gate.wait(10)

    holder = threading.Thread(target=writer.run_sync, args=(hold,))
    holder.start()
    assert started.wait(10)
    commits = writer.commits
    outcomes: dict[int, object] = {}

    def submit(k: int, fail: bool) -> None:
        try:
            outcomes[k] = writer.run_sync(_insert(k, then_fail=fail, counter=10 if fail else 1))  # type: ignore[arg-type]
        except Boom as error:
            outcomes[k] = error

    threads = [threading.Thread(target=submit, args=(k, k == 2)) for k in (1, 2, 3)]
    for thread in threads:
        thread.start()
    while writer._queue.qsize() < 3:  # all three queued behind the held job: they share the next commit
        threading.Event().wait(0.005)
    gate.set()
    for thread in (holder, *threads):
        thread.join(10)
    assert writer.commits == commits + 2  # the held job's commit, then one for the three
    assert outcomes[1] == 1 and outcomes[3] == 3 and isinstance(outcomes[2], Boom)
    assert _rows(writer) == [1, 3]
    assert _counter(writer) == 2


@pytest.mark.parametrize("count", [0, 1, 2, 63, 64, 65, 127, 1000, 1500])
def test_execute_rows_stores_exactly_the_rows_given(tmp_path: Path, count: int) -> None:
    conn = sqlite3.connect(tmp_path / "r.db", isolation_level=None)
    width = 29  # the events table's width: 1500 rows need more than one statement (parameter cap)
    conn.execute(f"CREATE TABLE r (k INTEGER PRIMARY KEY, {', '.join(f'c{i} TEXT' for i in range(1, width))})")
    table = sa.Table(
        "r",
        sa.MetaData(),
        sa.Column("k", sa.Integer, primary_key=True),
        *(sa.Column(f"c{i}", sa.Text) for i in range(1, width)),
    )
    rows = [(k, *(f"{k}-{i}" for i in range(1, width))) for k in range(count)]
    db.execute_rows(conn, db.Rows(table, [c.name for c in table.columns]), rows)
    assert conn.execute("SELECT * FROM r ORDER BY k").fetchall() == rows


def test_statements_compiled_ahead_leave_none_to_compile_in_a_write(tmp_path: Path) -> None:
    """What a server compiles as it starts (db.compile_rows_statements: every
    Rows on the schema's tables) is every statement execute_rows then runs,
    whatever the rows' count."""
    from flowtrack.store.store import Store
    from flowtrack.store.transaction import COUNTERS

    db.compile_rows_statements()
    assert db.compile_rows_statements() == 0
    compiled = db._multi_row.cache_info().misses
    store = Store(tmp_path / "a.db")
    try:
        start = 0
        for count in (1, 2, 3, 37, 63, 64, 65, 127, 1000):
            rows = [("b", 1, "", f"n{k}", k) for k in range(start, start + count)]
            store.writer.run_sync(lambda tx, rows=rows: db.execute_rows(tx.conn, COUNTERS, rows))  # type: ignore[misc]
            start += count
        stored = store.reader_connection().execute("SELECT count(*), sum(value) FROM counters").fetchone()
        assert tuple(stored) == (start, sum(range(start)))
    finally:
        store.close()
    assert db._multi_row.cache_info().misses == compiled


def test_execute_rows_with_an_upsert_tail(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "u.db", isolation_level=None)
    conn.execute("CREATE TABLE c (k TEXT PRIMARY KEY, n INTEGER)")
    table = sa.Table("c", sa.MetaData(), sa.Column("k", sa.Text, primary_key=True), sa.Column("n", sa.Integer))
    upsert = db.Rows(
        table,
        ("k", "n"),
        lambda insert: insert.on_conflict_do_update(index_elements=["k"], set_={"n": table.c.n + insert.excluded.n}),
    )
    db.execute_rows(conn, upsert, [("a", 1), ("b", 2)])
    db.execute_rows(conn, upsert, [("b", 3), ("c", 4)])
    assert dict(conn.execute("SELECT k, n FROM c")) == {"a": 1, "b": 5, "c": 4}


def test_a_bulk_write_names_its_columns_in_the_tables_order() -> None:
    """db.Rows binds a row's values in the table's column order (as the
    multi-row statement does): any other order is refused where it is made."""
    table = sa.Table(
        "o", sa.MetaData(), sa.Column("a", sa.Integer), sa.Column("b", sa.Integer), sa.Column("c", sa.Text)
    )
    assert db.Rows(table, ("a", "c")).columns == ("a", "c")
    with pytest.raises(ValueError, match="table's order"):
        db.Rows(table, ("c", "a"))
    with pytest.raises(ValueError, match="table's order"):
        db.Rows(table, ("a", "x"))


def test_the_writer_runs_on_any_backend_and_asks_it_what_an_error_means(tmp_path: Path) -> None:
    """One writer loop for both databases: a backend that calls an error
    RETRYABLE gets the whole batch run again from BEGIN (as PostgreSQL's does
    for a deadlock), and its after-commit notification is what tells the
    on_commit listeners."""
    from flowtrack.store.sqlite.writer import SqliteBackend
    from flowtrack.store.transaction import ErrorKind

    class Deadlock(Exception):
        pass

    class Flaky(SqliteBackend):
        retries = 3
        told: list[dict[str, int]] = []

        def classify(self, error: BaseException) -> ErrorKind:
            return ErrorKind.RETRYABLE if isinstance(error, Deadlock) else ErrorKind.PERMANENT

        def after_commit(self, changed: dict[str, int], touched: set[int], notify: Any) -> None:
            self.told.append(changed)
            notify(changed, touched)

    backend = Flaky(db.open_database(tmp_path / "b.db"))
    w = Writer(backend)
    heard: list[dict[str, int]] = []
    w.on_commit(lambda changed, _touched: heard.append(changed))
    tries = []

    def job(tx: Tx) -> int:
        tries.append(tx.next_sequence("b"))
        if len(tries) < 3:
            raise Deadlock()
        return tries[-1]

    try:
        assert w.run_sync(job) == 1  # the third try, from a fresh transaction each time
        assert tries == [1, 1, 1] and w.retries == 2
        assert backend.told == heard == [{"b": 1}]

        def always(tx: Tx) -> None:
            tx.next_sequence("b")
            raise Deadlock()

        with pytest.raises(Unavailable) as refused:  # out of tries: nothing stored, retryable
            w.run_sync(always)
        assert refused.value.reason == "CONTENTION"
        assert w.run_sync(lambda tx: tx.last_sequence("b")) == 1
    finally:
        w.close()


def test_execute_rows_stays_under_the_connections_parameter_limit(tmp_path: Path) -> None:
    """SQLite before 3.32 allows 999 parameters per statement."""
    conn = sqlite3.connect(tmp_path / "l.db", isolation_level=None)
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    conn.execute("CREATE TABLE r (a INTEGER PRIMARY KEY, b, c, d, e, f, g, h, i, j)")
    table = sa.Table(
        "r", sa.MetaData(), *(sa.Column(name, sa.Integer, primary_key=name == "a") for name in "abcdefghij")
    )
    rows = [(k, *range(9)) for k in range(500)]  # 5000 parameters
    db.execute_rows(conn, db.Rows(table, tuple("abcdefghij")), rows)
    assert conn.execute("SELECT count(*), sum(a) FROM r").fetchone() == (500, sum(range(500)))


def test_a_batch_over_many_campaigns_under_the_oldest_parameter_limit(tmp_path: Path) -> None:
    """600 events over 600 campaigns, first as new messages, then as updates
    of them, with SQLite's pre-3.32 limit of 999 parameters per statement."""
    from flowtrack.domain.ingest import Options, Outcome
    from flowtrack.domain.model import Status, StatusEvent
    from flowtrack.store import campaigns, check
    from flowtrack.store.ingest import record_events

    conn = db.open_database(tmp_path / "m.db")
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    writer = Writer(conn)
    t0 = 1_700_000_000_000_000

    def batch(status: Status, prefix: str) -> list[StatusEvent]:
        return [StatusEvent(f"{prefix}{i}", f"c{i}", f"+1555{i:07d}", status, t0 + i) for i in range(600)]

    try:
        for status, prefix in ((Status.SUBMITTED, "s"), (Status.SUCCESS, "d")):
            events = batch(status, prefix)
            results, _ = writer.run_sync(lambda tx, e=events: record_events(tx, "b", e, Options()))  # type: ignore[misc]
            assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 600

        def state(tx: Tx) -> tuple[list[int], list[object]]:
            statuses = [row[0] for row in checks(tx.conn).execute("SELECT status FROM messages")]
            cids = [campaigns.lookup(tx.conn, "b", f"c{k}") for k in range(600)]
            return statuses, [problem for cid in cids if cid for problem in check.problems(tx.conn, "b", cid)]

        statuses, problems = writer.run_sync(state)
        assert statuses == [int(Status.SUCCESS)] * 600
        assert problems == []
    finally:
        writer.close()


def _queued_behind_a_held_job(writer: Writer, jobs: list[Any]) -> dict[int, object]:
    """Run `jobs` in one shared commit (queued behind a held job); each one's
    result or exception by position."""
    gate, started = threading.Event(), threading.Event()

    def hold(tx: Tx) -> None:
        started.set()
        gate.wait(30)

    holder = threading.Thread(target=writer.run_sync, args=(hold,))
    holder.start()
    assert started.wait(30)
    outcomes: dict[int, object] = {}

    def submit(n: int) -> None:
        try:
            outcomes[n] = writer.run_sync(jobs[n])
        except Exception as error:
            outcomes[n] = error

    threads = []
    for n in range(len(jobs)):
        threads.append(threading.Thread(target=submit, args=(n,)))
        threads[-1].start()
        deadline = time.monotonic() + 30
        while writer._queue.qsize() < n + 1 and time.monotonic() < deadline:  # queued in this order
            threading.Event().wait(0.005)
    gate.set()
    for thread in (holder, *threads):
        thread.join(30)
    return outcomes


def test_a_jobs_own_sqlite_error_is_a_retryable_unavailable_and_the_others_commit(writer: Writer) -> None:
    def bad(tx: Tx) -> None:
        checks(tx.conn).execute("INSERT INTO no_such_table VALUES (1)")

    outcomes = _queued_behind_a_held_job(writer, [_insert(1), bad, _insert(3)])
    assert outcomes[0] == 1 and outcomes[2] == 3
    assert isinstance(outcomes[1], Unavailable) and not isinstance(outcomes[1], sqlite3.Error)
    assert outcomes[1].reason == "WRITE_FAILED"
    assert _rows(writer) == [1, 3]
    assert writer.healthy  # one job's mistake is not a storage fault


def test_a_job_that_never_ran_behind_another_connections_lock(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    w = Writer(db.open_database(path), probe_interval=0.05)
    try:
        w.run_sync(lambda tx: checks(tx.conn).execute("PRAGMA busy_timeout=100"))
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        ran: list[bool] = []
        with pytest.raises(Unavailable) as caught:
            w.run_sync(lambda tx: ran.append(True))
        assert caught.value.reason == "DATABASE_LOCKED" and ran == []
        assert not w.healthy
        other.execute("ROLLBACK")
        other.close()
        deadline = time.monotonic() + 30
        while not w.healthy and time.monotonic() < deadline:  # the probe finds the lock gone
            threading.Event().wait(0.01)
        assert w.healthy and w.probes >= 1
        assert w.run_sync(lambda tx: 7) == 7
    finally:
        w.close()


def test_a_rollback_that_fails_reopens_the_connection(writer: Writer) -> None:
    first = writer.connection

    def poison(tx: Tx) -> None:
        tx.conn.set_authorizer(
            lambda action, arg, *_: (
                sqlite3.SQLITE_DENY
                if action in (sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT) and arg == "ROLLBACK"
                else sqlite3.SQLITE_OK
            )
        )
        checks(tx.conn).execute("INSERT INTO t (k, v) VALUES (9, 'never')")
        raise Boom("after denying ROLLBACK")

    outcomes = _queued_behind_a_held_job(writer, [_insert(1), poison, _insert(3)])
    assert all(isinstance(o, Unavailable) for o in outcomes.values()), outcomes  # one transaction: none stored
    assert writer._thread.is_alive()
    assert writer.run_sync(_insert(4)) == 4  # type: ignore[arg-type]
    assert writer.connection is not first
    assert _rows(writer) == [4]


def test_queue_bound_admits_in_order_and_times_out(writer: Writer) -> None:
    async def scenario() -> None:
        bounded = Writer.__new__(Writer)  # only the admission machinery, no thread
        bounded._lock = threading.Lock()
        bounded._max_queued = 10
        bounded._queued = 0
        bounded._waiters = collections.deque()
        bounded._waiting = 0
        bounded._closed = False
        bounded.peak_queued_rows = bounded.peak_waiting_rows = 0
        await bounded.admit(6)
        await bounded.admit(4)
        with pytest.raises(QueueFull):
            await bounded.admit(1, wait=0.01)
        late = asyncio.ensure_future(bounded.admit(5))
        await asyncio.sleep(0)
        assert not late.done() and len(bounded._waiters) == 1
        bounded.release(6)
        await asyncio.wait_for(late, 30)
        assert bounded.queued_rows == 9 and bounded.peak_queued_rows == 10
        bounded.release(9)
        await bounded.admit(50)  # larger than the bound: admitted alone, into an empty queue
        assert bounded.queued_rows == 50

    asyncio.run(scenario())


def test_when_the_connection_cannot_be_reopened_jobs_are_refused_until_it_can(tmp_path: Path) -> None:
    """A failed ROLLBACK closes the connection; if opening a new one fails
    too (here: its folder is gone), every job is answered UNAVAILABLE and the
    writer is unhealthy; its probe reopens the connection once it can."""
    path = tmp_path / "r.db"
    conn = db.open_database(path)
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    where = {"path": tmp_path / "gone" / "r.db"}
    w = Writer(conn, reopen=lambda: db.connect(where["path"]), probe_interval=0.05)
    try:

        def poison(tx: Tx) -> None:
            tx.conn.set_authorizer(
                lambda action, arg, *_: (
                    sqlite3.SQLITE_DENY
                    if action == sqlite3.SQLITE_TRANSACTION and arg == "ROLLBACK"
                    else sqlite3.SQLITE_OK
                )
            )
            raise Boom("after denying ROLLBACK")

        with pytest.raises(Unavailable):
            w.run_sync(poison)
        with pytest.raises(Unavailable) as caught:
            w.run_sync(_insert(1))  # type: ignore[arg-type]
        assert caught.value.reason == "STORAGE_IO_ERROR" and not w.healthy
        where["path"] = path  # the folder is back
        deadline = time.monotonic() + 30
        while not w.healthy and time.monotonic() < deadline:
            threading.Event().wait(0.01)
        assert w.healthy
        assert w.run_sync(_insert(2)) == 2  # type: ignore[arg-type]
        assert _rows(w) == [2]
    finally:
        w.close()
