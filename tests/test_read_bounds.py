"""Reads stay bounded under slow and hostile clients (issue 10, items 5 and 6):
pages bounded in bytes, a time limit on reads with key look-ups apart, a
snapshot held at most `snapshot_seconds` (the WAL does not grow behind an
unread stream), revoked keys ending open streams, and no read whose cost
grows with the rows of other pages or other campaigns.

Nothing here bounds wall-clock time: work is counted (SQLite's progress
handler counts virtual machine instructions), sizes compared, and conditions
waited for with a generous deadline.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner

from flowtrack.cli import cli
from flowtrack.core.paging import PAGE_BYTES
from flowtrack.domain.keys import Scope
from flowtrack.store import bots, sql
from flowtrack.store import reports as sreports
from flowtrack.store.writer import Tx
from flowtrack.v1 import campaign_pb2, ingest_pb2, report_pb2, report_pb2_grpc
from tests.conftest import (
    Client,
    ServerThread,
    checks,
    connect_db,
    database_of,
    error_details,
    make_client,
    planting,
    start_server,
)
from tests.report_helpers import seed_job
from tests.tenants import create_key, keyed_client, revoke_key

R = report_pb2
DEADLINE = 30.0
DEFAULT_CLIENT_LIMIT = 4 * 1024 * 1024  # grpc's default receive limit


def seed(server: ServerThread, campaign_id: str, n: int, business: str = "default") -> dict[str, Any]:
    result: dict[str, Any] = server.store.writer.run_sync(seed_job(business, campaign_id, n))
    return result


def fatten(server: ServerThread, campaign_id: str, size: int) -> None:
    """Give every message and event of the campaign input variables of about `size` bytes."""
    big = '{"blob":"' + "x" * size + '"}'  # JSON text, as the store keeps variables

    def job(tx: Tx) -> None:
        (cid,) = checks(tx.conn).execute("SELECT cid FROM campaigns WHERE campaign_id = ?", (campaign_id,)).fetchone()
        checks(tx.conn).execute("UPDATE messages SET input_vars = ? WHERE cid = ?", (big, cid))
        checks(tx.conn).execute("UPDATE events SET input_vars = ? WHERE cid = ? AND kind = 1", (big, cid))

    with planting():
        server.store.writer.run_sync(job)


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"still waiting after {DEADLINE:g} s: {what}"
        time.sleep(0.05)


def steps(database: Path, work: Callable[[sqlite3.Connection], Any]) -> int:
    """SQLite virtual machine instructions (in hundreds) that `work` runs."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    count = [0]

    def tick() -> int:
        count[0] += 1
        return 0

    conn.set_progress_handler(tick, 100)
    try:
        work(conn)
    finally:
        conn.close()
    return count[0]


# -- pages bounded in bytes ------------------------------------------------------------


def test_default_pages_of_big_rows_fit_a_default_client(server: ServerThread, client: Client) -> None:
    """500 rows of 10 kB variables would be a 5 MB page, over the 4 MB a
    default client takes: pages stop at PAGE_BYTES, and their tokens resume
    right after them."""
    seed(server, "big", 1200)
    fatten(server, "big", 10_000)
    pages = list(client.reports.StreamMessageReport(R.StreamMessageReportRequest(campaign_id="big"), timeout=60))
    assert len(pages) > 1 and all(p.ByteSize() <= PAGE_BYTES + 4096 for p in pages)
    recipients = [r.recipient for p in pages for r in p.rows]
    assert len(recipients) == 1200 and recipients == sorted(set(recipients))
    assert all(len(r.input_variables["blob"]) == 10_000 for p in pages for r in p.rows)
    # The token of a page cut short by bytes continues right after its last row.
    again = client.reports.StreamMessageReport(
        R.StreamMessageReportRequest(campaign_id="big", resume_token=pages[0].resume_token), timeout=60
    )
    assert next(again).rows[0].recipient == pages[1].rows[0].recipient
    again.cancel()

    history = list(client.reports.StreamMessageHistory(R.StreamMessageHistoryRequest(campaign_id="big"), timeout=60))
    assert len(history) > 1 and all(p.ByteSize() <= PAGE_BYTES + 4096 for p in history)
    sequences = [e.sequence for p in history for e in p.events]
    stored = connect_db(server.settings.database).execute("SELECT count(*) FROM events").fetchone()[0]
    assert sequences == sorted(set(sequences)) and len(sequences) == stored

    subscribed: list[int] = []
    for page in client.reports.SubscribeEvents(R.SubscribeEventsRequest(campaign_id="big"), timeout=60):
        assert page.ByteSize() <= PAGE_BYTES + 4096
        subscribed += [e.sequence for e in page.events]
        if page.caught_up:
            break
    assert subscribed == sequences

    # The CLI (a default client) prints every row.
    result = CliRunner().invoke(
        cli, ["report", "big", "--json"], env={"FLOWTRACK_ADDRESS": server.address}, catch_exceptions=False
    )
    assert result.exit_code == 0, result.output[-2000:]
    assert result.output.count('"recipient"') == 1200


# -- no quadratic paths ----------------------------------------------------------------


def plant_failures(server: ServerThread, campaign_id: str, reasons: int) -> int:
    """A campaign whose failed messages carry `reasons` different reasons,
    reason j on (j % 5) + 1 recipients; returns the failed messages."""

    def job(tx: Tx) -> int:
        now = tx.now_us
        cur = checks(tx.conn).execute(
            "INSERT INTO campaigns (business_id, campaign_id, state, create_time, update_time)"
            " VALUES ('default', ?, 2, ?, ?)",
            (campaign_id, now, now),
        )
        cid = cur.lastrowid
        rows = [
            (cid, f"+49{j:06d}{k}", 5 if k % 2 else 2, f"E{j % 7}", f"reason {j}", now, now, "default")
            for j in range(reasons)
            for k in range(j % 5 + 1)
        ]
        checks(tx.conn).executemany(
            "INSERT INTO messages (cid, recipient, status, reason_code, reason_message, added_at, updated_at,"
            " business_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        return len(rows)

    failed: int = server.store.writer.run_sync(job)
    return failed


@pytest.mark.sqlite_only("counts SQLite virtual machine steps")
def test_failure_reasons_read_each_failed_message_once(server: ServerThread, client: Client) -> None:
    """Samples come with the reasons in one query: reading every page costs
    about the same per failed message at 1x and 4x the size (the old
    per-page rescan grew with pages x failed messages)."""
    small = plant_failures(server, "small", 500)
    large = plant_failures(server, "large", 2000)
    database = Path(server.settings.database)

    def read_all(campaign_id: str) -> Callable[[sqlite3.Connection], Any]:
        def work(conn: sqlite3.Connection) -> None:
            business_id, cid = conn.execute(
                "SELECT business_id, cid FROM campaigns WHERE campaign_id = ?", (campaign_id,)
            ).fetchone()
            cursor = sql.run(conn, *sreports.failure_reasons_sql(business_id, cid, 3))
            while cursor.fetchmany(10):  # pages of 10 reasons
                pass

        return work

    per_small = steps(database, read_all("small")) / small
    per_large = steps(database, read_all("large")) / large
    print(f"work per failed message: {per_small:.2f} at {small}, {per_large:.2f} at {large}")
    assert per_large < per_small * 1.6

    # The answer over gRPC, in pages of 7: counts, order and samples.
    pages = list(
        client.reports.StreamFailureReasons(
            R.StreamFailureReasonsRequest(campaign_id="small", page_size=7, sample_size=3), timeout=60
        )
    )
    reasons = [r for p in pages for r in p.reasons]
    assert len(reasons) == 500
    expected = {f"reason {j}": sorted(f"+49{j:06d}{k}" for k in range(j % 5 + 1))[:3] for j in range(500)}
    assert all(list(r.sample_recipients) == expected[r.message] for r in reasons)
    assert [r.count for r in reasons] == sorted((r.count for r in reasons), reverse=True)
    assert sum(r.failed for r in reasons) + sum(r.not_submitted for r in reasons) == small


@pytest.mark.sqlite_only("counts SQLite's virtual machine steps")
def test_a_delivery_reads_its_own_messages_clicks_not_the_campaigns(server: ServerThread) -> None:
    """A message delivered after its clicks were stored has them classified
    again (bot rules on the click-to-delivery time): ingest reads those
    clicks by the message, at the same cost in a campaign of 20 clicks as in
    one of 10,000."""
    database = Path(server.settings.database)
    server.store.writer.run_sync(seed_job("default", "few", 10, click_share=1.0))
    server.store.writer.run_sync(seed_job("default", "many", 5000, click_share=1.0))

    def cost(campaign_id: str) -> int:
        conn = connect_db(server.settings.database)
        (cid,) = conn.execute("SELECT cid FROM campaigns WHERE campaign_id = ?", (campaign_id,)).fetchone()
        recipients = [r for (r,) in conn.execute("SELECT recipient FROM messages WHERE cid = ? AND clicks > 0", (cid,))]
        some = sorted(recipients)[:3]
        found: list[bots.StoredClick] = []
        work = steps(database, lambda c: found.extend(bots.stored_clicks(c, "default", cid, some)))
        assert sorted({click.recipient for click in found}) == some and len(found) >= 3
        assert [click.id for click in found] == sorted(click.id for click in found)
        return work

    few, many = cost("few"), cost("many")
    print(f"work of three messages' clicks: {few} in a campaign of ~20 clicks, {many} in one of ~10,000")
    assert many <= few + 3


@pytest.mark.sqlite_only("reads SQLite's query plan and counts its steps")
def test_one_campaigns_events_do_not_scan_the_business_log(server: ServerThread) -> None:
    """History and SubscribeEvents for one campaign read the (cid, seq)
    index: a page after a campaign's last event costs the same however many
    events other campaigns of the business have after it."""
    database = Path(server.settings.database)
    seed(server, "quiet", 20)
    (cid,) = sqlite3.connect(database).execute("SELECT cid FROM campaigns WHERE campaign_id = 'quiet'").fetchone()
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        statement, values = sreports.history_sql("default", cid, "", 0)
        text, params = sql.compile_for(statement, sql.SQLITE).bind(values)
        plan = " ".join(str(r[-1]) for r in conn.execute(f"EXPLAIN QUERY PLAN {text}", params))
        assert "events_by_campaign" in plan, plan
        last = sreports.sequence(conn, "default")

    def page_after(conn: sqlite3.Connection) -> None:
        rows, _ = sreports.events_page(conn, "default", last, cid, 500)
        assert rows == []

    seed(server, "busy1", 1000)
    before = steps(database, page_after)
    seed(server, "busy2", 20_000)
    after = steps(database, page_after)
    print(f"work of an empty page: {before} with 1,000 later events, {after} with 21,000")
    assert after <= before + 2


# -- a time limit on reads, key look-ups apart ----------------------------------------


@pytest.mark.sqlite_only(
    "a 1 ms limit: SQLite checks it every 10,000 VM steps, PostgreSQL's statement_timeout is wall-clock and"
    " cuts even a key look-up on a busy machine"
)
def test_long_reads_stop_at_the_time_limit(tmp_path: Path) -> None:
    running = start_server(tmp_path, read_time_limit=0.001)
    client = make_client(running.address)
    try:
        seed(running, "slowq", 30_000)
        # A filter that matches nothing scans the whole campaign in one page.
        request = R.StreamMessageReportRequest(campaign_id="slowq", filter=R.MessageFilter(failure_code="none"))
        with pytest.raises(grpc.RpcError) as raised:
            list(client.reports.StreamMessageReport(request, timeout=60))
        details = error_details(raised.value)
        assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED and details.reason == "READ_TIME_LIMIT"
        assert "read time limit" in details.message
        with pytest.raises(grpc.RpcError) as raised:
            client.reports.GetCampaignTimeline(R.GetCampaignTimelineRequest(campaign_id="slowq"), timeout=60)
        assert error_details(raised.value).reason == "READ_TIME_LIMIT"
        # Reads of a bounded size still answer.
        stats = client.reports.GetCampaignStats(R.GetCampaignStatsRequest(campaign_id="slowq"), timeout=60)
        assert stats.stats.overall.counts.total == 30_000
    finally:
        client.channel.close()
        running.stop()


def test_key_lookups_answer_while_every_reader_is_busy(tmp_path: Path) -> None:
    database = database_of(tmp_path)
    key = create_key(database, "acme", Scope.INGEST, Scope.READ)
    running = start_server(tmp_path)
    client = keyed_client(running.address, key)
    release = threading.Event()
    busy = [0]

    def long_read(_conn: sqlite3.Connection) -> None:
        busy[0] += 1
        release.wait(DEADLINE)

    readers = running.store._readers._max_workers
    blocked = [
        asyncio.run_coroutine_threadsafe(running.store.read(long_read), running.loop) for _ in range(readers + 2)
    ]
    try:
        wait_for(lambda: busy[0] == readers, "every reader thread is busy")
        # A new key is looked up (not cached yet), and the call goes through
        # the writer only: it answers while no reader is free.
        event = ingest_pb2.StatusEvent(event_id="e1", campaign_id="c", recipient="+4915100000001", status=3, attempt=1)
        event.occurred_at.GetCurrentTime()
        reply = client.ingest.RecordStatusEvent(ingest_pb2.RecordStatusEventRequest(event=event), timeout=DEADLINE)
        assert reply.result.outcome or reply.result is not None
        wrong = keyed_client(running.address, key[:-4] + "AAAA")
        with pytest.raises(grpc.RpcError) as raised:
            wrong.campaigns.ListCampaigns(campaign_pb2.ListCampaignsRequest(), timeout=DEADLINE)
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        wrong.channel.close()
        assert busy[0] == readers  # still busy: the answers did not need them
    finally:
        release.set()
        for future in blocked:
            future.result(DEADLINE)
        client.channel.close()
        running.stop()


# -- revoked keys end their streams ----------------------------------------------------


def test_revoked_key_ends_open_streams(tmp_path: Path) -> None:
    database = database_of(tmp_path)
    key = create_key(database, "acme", Scope.INGEST, Scope.READ, Scope.ADMIN)
    running = start_server(tmp_path, key_cache_seconds=0.3)
    client = keyed_client(running.address, key)
    try:
        seed(running, "watched", 3000, business="acme")
        fatten(running, "watched", 8000)  # 24 MB of report: far more than the transport buffers
        watch = client.reports.WatchCampaignStats(R.WatchCampaignStatsRequest(campaign_id="watched"), timeout=DEADLINE)
        assert next(watch).stats.overall.counts.total == 3000
        events = client.reports.SubscribeEvents(R.SubscribeEventsRequest(campaign_id="watched"), timeout=DEADLINE)
        assert next(events).events
        report = client.reports.StreamMessageReport(
            R.StreamMessageReportRequest(campaign_id="watched", page_size=50), timeout=DEADLINE
        )
        assert len(next(report).rows) == 50

        revoke_key(database, key)
        for stream in (watch, events, report):
            with pytest.raises(grpc.RpcError) as raised:
                for _ in stream:
                    pass
            details = error_details(raised.value)
            assert details.code == grpc.StatusCode.UNAUTHENTICATED, details
            assert details.reason == "REVOKED_API_KEY"
    finally:
        client.channel.close()
        running.stop()


# -- a snapshot is held for a bounded time --------------------------------------------


def wal_size(database: Path) -> int:
    wal = database.with_name(database.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def checkpoint_completes(database: Path) -> Callable[[], bool]:
    """Whether a PASSIVE checkpoint copies the whole WAL: no reader holds an
    older snapshot any more."""

    def check() -> bool:
        with sqlite3.connect(database) as conn:
            busy, log, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return bool(busy == 0 and log == done)

    return check


@pytest.mark.sqlite_only("measures SQLite's WAL file")
def test_unread_stream_does_not_grow_the_wal(tmp_path: Path) -> None:
    """A report stream whose client stops reading lets its snapshot go after
    `snapshot_seconds`: checkpoints complete again and the WAL stays the size
    of one round of writes, instead of growing with every round; the stream
    then goes on from its last row on a new snapshot."""
    running = start_server(tmp_path, snapshot_seconds=0.2)
    database = Path(running.settings.database)
    client = make_client(running.address)
    try:
        seed(running, "held", 2000)
        fatten(running, "held", 8000)
        stream = client.reports.StreamMessageReport(
            R.StreamMessageReportRequest(campaign_id="held", page_size=50), timeout=120
        )
        first = next(stream)
        sizes = []
        for round_ in range(8):
            seed(running, f"other{round_}", 1500)
            wait_for(checkpoint_completes(database), "a checkpoint past the stream's snapshot")
            sizes.append(wal_size(database))
        print("WAL size after each round:", sizes)
        assert max(sizes[2:]) <= max(sizes[:2]) * 1.5
        # And once emptied by a checkpoint, the log file is cut back to 64 MiB.
        limit = running.store.writer.run_sync(
            lambda tx: checks(tx.conn).execute("PRAGMA journal_size_limit").fetchone()[0]
        )
        assert limit == 64 * 1024 * 1024
        rest = list(stream)
        recipients = [r.recipient for p in [first, *rest] for r in p.rows]
        assert len(recipients) == 2000 and recipients == sorted(set(recipients))
        assert rest[-1].sequence > first.sequence  # read on a newer snapshot
    finally:
        client.channel.close()
        running.stop()


@pytest.mark.sqlite_only("waits for a SQLite WAL checkpoint")
def test_failure_reasons_end_when_their_snapshot_expires(tmp_path: Path) -> None:
    """Failure reasons cannot go on from a position on another snapshot: an
    unread stream ends with SNAPSHOT_EXPIRED instead of holding one."""
    running = start_server(tmp_path, snapshot_seconds=0.5)
    database = Path(running.settings.database)
    # No BDP probing: the transport's window stays at 64 kB, far below the report.
    channel = grpc.insecure_channel(running.address, options=[("grpc.http2.bdp_probe", 0)])
    reports = report_pb2_grpc.ReportServiceStub(channel)
    try:
        plant_failures(running, "reasons", 300)
        # One recipient per reason, 4 kB messages: 1.2 MB in all.
        running.store.writer.run_sync(
            lambda tx: checks(tx.conn).execute("DELETE FROM messages WHERE substr(recipient, -1) != '0'")
        )
        running.store.writer.run_sync(
            lambda tx: checks(tx.conn).execute(
                "UPDATE messages SET reason_message = reason_message || printf('%.4000c', '.')"
            )
        )
        stream = reports.StreamFailureReasons(
            R.StreamFailureReasonsRequest(campaign_id="reasons", page_size=1), timeout=120
        )
        next(stream)
        seed(running, "later", 100)
        wait_for(checkpoint_completes(database), "a checkpoint past the stream's snapshot")
        with pytest.raises(grpc.RpcError) as raised:
            for _ in stream:
                pass
        details = error_details(raised.value)
        assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED and details.reason == "SNAPSHOT_EXPIRED"
    finally:
        channel.close()
        running.stop()


# -- per-recipient caps and stream connections (issue 18, item 16) --------------------


def _counting(cursor: Any, counter: Any) -> Any:
    for row in cursor:
        counter.rows += 1
        yield row


class _CountingSqlite(sqlite3.Connection):
    """A SQLite connection that counts the rows its statements hand back."""

    rows = 0

    def execute(self, sql: str, params: Any = ()) -> Any:  # type: ignore[override]
        return _counting(super().execute(sql, params), self)


class _CountingPg:
    """The store's PostgreSQL connection, counting the rows its statements hand back."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.rows = 0

    def execute_text(self, sql: str, params: Any) -> Any:
        return _counting(self.conn.execute_text(sql, params), self)


def test_a_pages_clicks_are_capped_per_recipient_by_the_database(tmp_path: Path) -> None:
    """link_clicks read every click of a page's recipients and kept the
    earliest `cap` of each in Python: one recipient's million clicks were a
    million rows in memory. The cap is in the SQL (a window per recipient)."""
    from flowtrack.store import engaged_reports as sengaged
    from flowtrack.store import export as sexport
    from tests.report_helpers import click_event, send_events

    server = start_server(tmp_path, scheduler_tick=3600.0)
    client = make_client(server.address)
    try:
        at = 1_700_000_000_000_000
        place = ("BR", "SP", "Campinas")
        events = [click_event(f"many-{i}", "clicky", "+15550000001", f"l{i % 3}", at + i, place) for i in range(300)]
        events += [click_event(f"few-{i}", "clicky", "+15550000002", "l9", at + i, place) for i in range(3)]
        send_events(client, events)
        conn = connect_db(server.settings.database)
        try:
            (cid,) = conn.execute("SELECT cid FROM campaigns WHERE campaign_id = 'clicky'").fetchone()
            recipients = ["+15550000001", "+15550000002"]
            for read in (sexport.link_clicks, sengaged.link_clicks):
                database = str(server.settings.database)
                counting: Any = (
                    _CountingPg(conn)
                    if database.startswith("postgresql://")
                    else sqlite3.connect(database, factory=_CountingSqlite)
                )
                found = read(counting, "default", cid, recipients, 5)  # type: ignore[operator]
                assert {r: len(c) for r, c in found.items()} == {"+15550000001": 5, "+15550000002": 3}
                assert [c[-1] for c in found["+15550000001"]] == [at + i for i in range(5)]  # the earliest
                assert counting.rows == 8, f"{read.__module__}.link_clicks read {counting.rows} rows for 8"  # type: ignore[attr-defined]
        finally:
            conn.close()
    finally:
        client.channel.close()
        server.stop()


def test_report_streams_open_at_once_are_bounded_per_server(tmp_path: Path) -> None:
    """Each report stream holds a database connection of its own (on
    PostgreSQL one of the server's max_connections, for every replica):
    past --max-report-streams a new stream gets RESOURCE_EXHAUSTED
    TOO_MANY_STREAMS (after a short wait), and works again once one ends."""
    from tests.report_helpers import send_events, status_event

    server = start_server(tmp_path, max_report_streams=2, scheduler_tick=3600.0)
    client = make_client(server.address)
    held: list[Any] = []
    try:
        send_events(client, [status_event("b-1", "bounded", "+15550000001", 3, 1_700_000_000_000_000)])
        request = R.StreamMessageReportRequest(campaign_id="bounded")
        assert len([r for page in client.reports.StreamMessageReport(request) for r in page.rows]) == 1
        held = [server.store.snapshot() for _ in range(2)]  # two streams' snapshots, held
        if server.settings.database.startswith("postgresql://"):
            conn = connect_db(server.settings.database)
            try:
                (open_now,) = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE application_name = 'flowtrack-snapshot' AND datname = current_database()"
                ).fetchone()
            finally:
                conn.close()
            assert open_now == 2
        with pytest.raises(grpc.RpcError) as raised:
            list(client.reports.StreamMessageReport(request, timeout=DEADLINE))
        details = error_details(raised.value)
        assert (details.code, details.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_STREAMS")
        assert "--max-report-streams" in details.message
        held.pop().close()
        assert len([r for page in client.reports.StreamMessageReport(request) for r in page.rows]) == 1
    finally:
        for snapshot in held:
            snapshot.close()
        client.channel.close()
        server.stop()
