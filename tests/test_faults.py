"""The writer's failure contract through a real server, with faults planted
for real: another connection holding the write lock, a ROLLBACK that SQLite
refuses, a database at its size limit (PRAGMA max_page_count: SQLITE_FULL),
a connection turned read-only (PRAGMA query_only: SQLITE_READONLY). Each
time: every waiting caller is answered with a retryable status and a message
a person understands, health is NOT_SERVING while nothing can be written, the
fault is logged once (not a traceback per call), and once it clears every RPC
works again without a restart."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flowtrack.store.writer import Tx, Writer
from flowtrack.v1 import campaign_pb2, ingest_pb2, report_pb2
from tests.conftest import Client, ServerThread, checks, error_details
from tests.test_ingest import batch, click, status

pytestmark = pytest.mark.sqlite_only("plants SQLite faults (a held write lock, SQLITE_FULL, SQLITE_READONLY)")

DEADLINE = 30.0  # generous: the suite runs on busy machines


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Wait until `condition()` holds (checked often), at most DEADLINE seconds."""
    end = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def health_of(server: ServerThread) -> int:
    with grpc.insecure_channel(server.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        return int(reply.status)


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def writer_sql(server: ServerThread, sql: str) -> None:
    """Run `sql` on the writer's own connection (a PRAGMA that plants or clears a fault)."""
    server.store.writer.run_sync(lambda tx: checks(tx.conn).execute(sql))


def every_rpc_works(client: Client, tag: str) -> None:
    """The writes of each service, and a read, succeed."""
    accepted = ingest_pb2.EVENT_OUTCOME_ACCEPTED
    reply = client.ingest.RecordStatusEvent(
        ingest_pb2.RecordStatusEventRequest(event=status(f"{tag}-s", campaign=f"c-{tag}")), timeout=DEADLINE
    )
    assert reply.result.outcome == accepted
    reply2 = client.ingest.RecordClickEvent(
        ingest_pb2.RecordClickEventRequest(event=click(f"{tag}-k", campaign=f"c-{tag}")), timeout=DEADLINE
    )
    assert reply2.result.outcome == accepted
    replies = list(client.ingest.StreamEvents(iter([batch(status(f"{tag}-b", campaign=f"c-{tag}"))]), timeout=30))
    assert [r.accepted for r in replies] == [1]
    client.campaigns.CreateCampaign(
        campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id=f"new-{tag}")), timeout=DEADLINE
    )
    stats = client.reports.GetCampaignStats(report_pb2.GetCampaignStatsRequest(campaign_id=f"c-{tag}"), timeout=30)
    assert stats.stats.overall.counts.total == 1


def _fault_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "flowtrack.store.writer" and r.levelno >= logging.ERROR]


def test_a_lock_held_by_another_process_fails_the_job_that_never_ran_and_then_everything_works(
    served: tuple[ServerThread, Client], caplog: pytest.LogCaptureFixture
) -> None:
    """The defect: a BEGIN IMMEDIATE timing out behind a backup or the sqlite3
    shell left the business's shared unary job in place, and every later unary
    event of that business failed at once until a restart."""
    server, client = served
    writer_sql(server, "PRAGMA busy_timeout=200")  # the lock is met after 0.2 s, not 10
    other = sqlite3.connect(server.settings.database, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # e.g. the sqlite3 shell in a write transaction
    try:
        for n in range(3):
            with pytest.raises(grpc.RpcError) as caught:
                client.ingest.RecordStatusEvent(
                    ingest_pb2.RecordStatusEventRequest(event=status(f"locked-{n}")), timeout=DEADLINE
                )
            details = error_details(caught.value)
            assert details.code == grpc.StatusCode.UNAVAILABLE
            assert details.reason == "DATABASE_LOCKED"
            assert "locked by another process" in details.message
        wait_for(lambda: health_of(server) == NOT_SERVING, "health NOT_SERVING while the lock is held")
    finally:
        other.execute("ROLLBACK")
        other.close()
    wait_for(lambda: health_of(server) == SERVING, "health SERVING once the lock is gone")
    every_rpc_works(client, "after-lock")
    assert len(_fault_lines(caplog)) == 1, [r.getMessage() for r in _fault_lines(caplog)]
    assert not any(r.exc_info for r in _fault_lines(caplog)), "a traceback for a storage fault"


def _fill(tx: Tx) -> None:
    """Use up the free pages (ballast), then forbid any new one."""
    conn = tx.conn
    free, size = (conn.execute(f"PRAGMA {name}").fetchone()[0] for name in ("freelist_count", "page_size"))
    conn.execute("CREATE TABLE ballast (b BLOB)")
    conn.execute("INSERT INTO ballast VALUES (zeroblob(?))", ((free + 1) * size,))
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count={pages}")


def test_a_full_database_is_resource_exhausted_then_recovers(
    served: tuple[ServerThread, Client], caplog: pytest.LogCaptureFixture
) -> None:
    server, client = served
    every_rpc_works(client, "before")
    server.store.writer.run_sync(_fill)  # no page more: SQLITE_FULL
    big = {f"k{i}": "x" * 4000 for i in range(4)}  # 16 KB: overflow pages, never room in a page
    calls: list[Callable[[], Any]] = [
        lambda: client.ingest.RecordStatusEvent(
            ingest_pb2.RecordStatusEventRequest(event=status("full-1", input_variables=big)), timeout=DEADLINE
        ),
        lambda: list(
            client.ingest.StreamEvents(
                iter([batch(*(status(f"full-b{i}", recipient=f"r{i}", input_variables=big) for i in range(50)))]),
                timeout=DEADLINE,
            )
        ),
        lambda: client.ingest.RecordStatusEvent(
            ingest_pb2.RecordStatusEventRequest(event=status("full-2", input_variables=big)), timeout=DEADLINE
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        details = error_details(caught.value)
        assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
        assert details.reason == "STORAGE_FULL"
        assert "disk is full" in details.message
    wait_for(lambda: health_of(server) == NOT_SERVING, "health NOT_SERVING while the database is full")
    lines = _fault_lines(caplog)
    assert len(lines) == 1 and not lines[0].exc_info, [r.getMessage() for r in lines]
    writer_sql(server, "PRAGMA max_page_count=1073741823")  # space again
    wait_for(lambda: health_of(server) == SERVING, "health SERVING once there is room")
    every_rpc_works(client, "after-full")


def test_a_read_only_database_is_unavailable_then_recovers(served: tuple[ServerThread, Client]) -> None:
    """The job's own SQLite error (its INSERT meets SQLITE_READONLY): a
    retryable UNAVAILABLE with a message, never UNKNOWN."""
    server, client = served
    writer_sql(server, "PRAGMA query_only=1")
    with pytest.raises(grpc.RpcError) as caught:
        client.ingest.RecordStatusEvent(ingest_pb2.RecordStatusEventRequest(event=status("ro-1")), timeout=DEADLINE)
    details = error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "DATABASE_READ_ONLY")
    assert "read-only" in details.message
    with pytest.raises(grpc.RpcError) as caught:
        client.campaigns.CreateCampaign(
            campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id="ro")), timeout=DEADLINE
        )
    assert error_details(caught.value).code == grpc.StatusCode.UNAVAILABLE
    wait_for(lambda: health_of(server) == NOT_SERVING, "health NOT_SERVING while read-only")
    # Cleared from outside the writer's jobs: under query_only even BEGIN IMMEDIATE fails.
    conn = server.store.writer._conn
    assert conn is not None
    conn.execute("PRAGMA query_only=0")
    wait_for(lambda: health_of(server) == SERVING, "health SERVING once writable")
    every_rpc_works(client, "after-ro")


def _deny_rollback(tx: Tx) -> None:
    """A job that makes SQLite refuse every ROLLBACK on the writer's
    connection (an authorizer: SQLITE_AUTH), then fails."""

    def authorizer(action: int, arg1: str | None, *_: object) -> int:
        if action in (sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT) and arg1 == "ROLLBACK":
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    tx.conn.set_authorizer(authorizer)
    raise RuntimeError("planted failure")


def _hold(writer: Writer) -> tuple[threading.Event, threading.Thread]:
    """Keep the writer busy in a job until the returned event is set."""
    gate, started = threading.Event(), threading.Event()

    def hold(tx: Tx) -> None:
        started.set()
        gate.wait(DEADLINE)

    holder = threading.Thread(target=writer.run_sync, args=(hold,))
    holder.start()
    assert started.wait(DEADLINE)
    return gate, holder


def test_a_rollback_that_fails_answers_every_caller_and_the_writer_goes_on(
    served: tuple[ServerThread, Client], caplog: pytest.LogCaptureFixture
) -> None:
    server, client = served
    writer = server.store.writer
    gate, holder = _hold(writer)
    answers: dict[str, Any] = {}

    def call(name: str, fn: Callable[[], Any]) -> threading.Thread:
        def run() -> None:
            try:
                answers[name] = fn()
            except grpc.RpcError as error:
                answers[name] = error
            except Exception as error:
                answers[name] = error

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    queued = writer._queue.qsize()
    threads = [call("poison", lambda: writer.run_sync(_deny_rollback))]
    wait_for(lambda: writer._queue.qsize() == queued + 1, "the poison job queued")
    threads.append(
        call(
            "unary",
            lambda: client.ingest.RecordStatusEvent(
                ingest_pb2.RecordStatusEventRequest(event=status("rb-1")), timeout=DEADLINE
            ),
        )
    )
    threads.append(
        call(
            "stream",
            lambda: list(client.ingest.StreamEvents(iter([batch(status("rb-2", recipient="r2"))]), timeout=DEADLINE)),
        )
    )
    wait_for(lambda: writer._queue.qsize() == queued + 3, "three jobs queued behind the held one")
    gate.set()
    holder.join(DEADLINE)
    for thread in threads:
        thread.join(DEADLINE)
        assert not thread.is_alive(), "a caller was left waiting"
    assert isinstance(answers["poison"], Exception)
    for name in ("unary", "stream"):  # in the same transaction: refused, retryable
        assert isinstance(answers[name], grpc.RpcError), answers[name]
        assert answers[name].code() == grpc.StatusCode.UNAVAILABLE
    assert writer._thread.is_alive()
    assert any("ROLLBACK failed" in r.getMessage() for r in caplog.records), "the planted fault did not happen"
    every_rpc_works(client, "after-rollback")
    # The refused events were not stored: resending them is accepted.
    again = client.ingest.RecordStatusEvent(ingest_pb2.RecordStatusEventRequest(event=status("rb-1")), timeout=30)
    assert again.result.outcome == ingest_pb2.EVENT_OUTCOME_ACCEPTED


def _sqlite_error(code: int, text: str) -> sqlite3.OperationalError:
    error = sqlite3.OperationalError(text)
    error.sqlite_errorcode = code  # type: ignore[attr-defined]
    return error


def test_each_storage_fault_has_its_code_and_reason() -> None:
    """Extended result codes count by their primary code (the low byte): an
    I/O error while reading (SQLITE_IOERR_READ, 266) is an I/O error."""
    from flowtrack.domain.errors import ResourceExhausted, Unavailable
    from flowtrack.store.faults import is_storage_fault, storage_error

    cases = [
        (13, ResourceExhausted, "STORAGE_FULL"),
        (5, Unavailable, "DATABASE_LOCKED"),
        (517, Unavailable, "DATABASE_LOCKED"),  # SQLITE_BUSY_SNAPSHOT
        (8, Unavailable, "DATABASE_READ_ONLY"),
        (10, Unavailable, "STORAGE_IO_ERROR"),
        (266, Unavailable, "STORAGE_IO_ERROR"),
        (11, Unavailable, "STORAGE_IO_ERROR"),
        (1, Unavailable, "WRITE_FAILED"),
    ]
    for code, kind, reason in cases:
        error = storage_error(_sqlite_error(code, "x"))
        assert type(error) is kind and error.reason == reason, (code, error)
        assert is_storage_fault(_sqlite_error(code, "x")) == (reason != "WRITE_FAILED")
    assert storage_error(RuntimeError("a bug")).reason == "WRITE_FAILED"
