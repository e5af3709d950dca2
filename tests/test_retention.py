"""Retention (issue 21, item 3; docs/retention.md): a business's history
older than its retention is deleted by a sweep in small batches, while
stats and the message report stay exactly as they were; ingest refuses
events older than the horizon, so a retried event whose original was pruned
is never counted twice; completed campaigns past their retention go as
DeleteCampaign removes them; one replica sweeps at a time."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from flowtrack.delivery.retention import RetentionSweeper
from flowtrack.domain.keys import Scope
from flowtrack.store import check, pruning, reports, sql
from flowtrack.store.schema import HOUR_US
from flowtrack.v1 import campaign_pb2, ingest_pb2, report_pb2, retention_pb2, retention_pb2_grpc
from flowtrack.v1 import common_pb2 as C
from tests.conftest import Client, ServerThread, connect_db, database_of, error_details, make_client, start_server
from tests.report_helpers import add_recipients, click_event, send_events, status_event, ts
from tests.tenants import create_key, keyed_client
from tests.test_metrics import scrape, value

DAY_US = 86_400 * 1_000_000
NOW_US = int(time.time()) * 1_000_000
OLD = NOW_US - 60 * DAY_US  # past a 30-day retention
RECENT = NOW_US - 2 * DAY_US  # within it
OK, FAILED, SUBMITTED = C.MESSAGE_STATUS_SUCCESS, C.MESSAGE_STATUS_FAILED, C.MESSAGE_STATUS_SUBMITTED
RECIPIENTS = [f"+1555{i:07d}" for i in range(40)]


def retention_stub(client: Client) -> retention_pb2_grpc.RetentionServiceStub:
    return retention_pb2_grpc.RetentionServiceStub(client.channel)


def set_retention(client: Client, history: int, campaign: int = 0) -> retention_pb2.Retention:
    wanted = retention_pb2.Retention(history_days=history, campaign_days=campaign)
    reply = retention_stub(client).SetRetention(retention_pb2.SetRetentionRequest(retention=wanted), timeout=30)
    return reply.retention


def apply(client: Client) -> dict[str, int]:
    reply = retention_stub(client).ApplyRetention(retention_pb2.ApplyRetentionRequest(), timeout=120)
    return {p.table: p.rows for p in reply.pruned}


def engaged(event_id: str, campaign: str, recipient: str, kind: int, at: int, **fields: Any) -> ingest_pb2.Event:
    event = ingest_pb2.EngagementEvent(
        event_id=event_id, campaign_id=campaign, recipient=recipient, kind=kind, occurred_at=ts(at), **fields
    )
    return ingest_pb2.Event(engagement=event)


def history(campaign: str, at: int, tag: str) -> list[ingest_pb2.Event]:
    """A campaign's life at time `at`: every recipient submitted, most
    delivered (some after a failed first attempt), clicks, reads, replies,
    taps, a funnel. 40 recipients, 7-9 events each."""
    events: list[ingest_pb2.Event] = []
    for i, r in enumerate(RECIPIENTS):
        t = at + i * 1_000_000
        e = f"{tag}-{i}"
        events.append(status_event(f"{e}-sub", campaign, r, SUBMITTED, t, channel="whatsapp", variant="AB"[i % 2]))
        if i % 5 == 0:
            events.append(status_event(f"{e}-fail", campaign, r, FAILED, t + 1000, reason=("E1", "blocked")))
            events.append(status_event(f"{e}-ok2", campaign, r, OK, t + 2000, attempt=2))
        elif i % 7 != 0:
            events.append(status_event(f"{e}-ok", campaign, r, OK, t + 2000))
        events.append(click_event(f"{e}-click", campaign, r, "L1", t + 3000, ("PT", "Lisboa", "Lisboa")))
        events.append(engaged(f"{e}-read", campaign, r, ingest_pb2.ENGAGEMENT_KIND_READ, t + 2500))
        events.append(engaged(f"{e}-in", campaign, r, ingest_pb2.ENGAGEMENT_KIND_ENTERED_FLOW, t + 2600))
        if i % 3 == 0:
            events.append(engaged(f"{e}-reply", campaign, r, ingest_pb2.ENGAGEMENT_KIND_REPLIED, t + 4000, text="yes"))
            events.append(
                engaged(f"{e}-tap", campaign, r, ingest_pb2.ENGAGEMENT_KIND_BUTTON_CLICKED, t + 5000, button_id="b1")
            )
    return events


def create(client: Client, campaign: str) -> None:
    request = campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id=campaign, name=campaign))
    client.campaigns.CreateCampaign(request, timeout=30)


def observed(client: Client, campaign: str) -> dict[str, Any]:
    """What pruning must not change: the stats, and every message report row
    but for its lists of link clicks and button taps (history: they keep
    what is kept; `clicks` and `button_clicks` keep the totals)."""
    stats = client.reports.GetCampaignStats(report_pb2.GetCampaignStatsRequest(campaign_id=campaign), timeout=30)
    rows = []
    for page in client.reports.StreamMessageReport(
        report_pb2.StreamMessageReportRequest(campaign_id=campaign), timeout=60
    ):
        for row in page.rows:
            row.ClearField("link_clicks")
            row.ClearField("buttons")
            rows.append(row.SerializeToString(deterministic=True))
    failures = [
        r.SerializeToString(deterministic=True)
        for page in client.reports.StreamFailureReasons(
            report_pb2.StreamFailureReasonsRequest(campaign_id=campaign), timeout=30
        )
        for r in page.reasons
    ]
    return {"stats": stats.stats.SerializeToString(deterministic=True), "rows": rows, "failures": failures}


def table_counts(database: str) -> dict[str, int]:
    conn = connect_db(database)
    try:
        return {
            table: int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            for table in ("events", "replies", "button_clicks", "messages", "engagement", "campaigns")
        }
    finally:
        conn.close()


def problems(server: ServerThread, campaign: str) -> list[str]:
    conn = connect_db(server.settings.database)
    try:
        (cid,) = conn.execute("SELECT cid FROM campaigns WHERE campaign_id = ?", (campaign,)).fetchone()
        raw = getattr(conn, "conn", conn)  # the store's own connection (PgChecks wraps it)
        return check.problems(raw, "default", int(cid))
    finally:
        conn.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[ServerThread, Client]]:
    server = start_server(tmp_path, scheduler_tick=3600.0, http="127.0.0.1:0")
    client = make_client(server.address)
    yield server, client
    client.channel.close()
    server.stop()


def _fill(client: Client) -> list[ingest_pb2.Event]:
    create(client, "spring")
    add_recipients(client, "spring", [(r, "whatsapp", "AB"[i % 2]) for i, r in enumerate(RECIPIENTS)])
    old, recent = history("spring", OLD, "old"), history("spring", RECENT, "new")
    results = send_events(client, old + recent, batch=200)
    assert {r.outcome for r in results} == {ingest_pb2.EVENT_OUTCOME_ACCEPTED}
    return old


def test_pruning_keeps_stats_and_the_message_report(world: tuple[ServerThread, Client]) -> None:
    server, client = world
    old = _fill(client)
    assert problems(server, "spring") == []
    # One message as stored before the per-attribute keys were kept: the
    # sweep folds it once from its events before they go.
    conn = connect_db(server.settings.database)
    try:
        with conn:
            conn.execute("UPDATE messages SET attr_keys = NULL WHERE recipient = ?", (RECIPIENTS[1],))
    finally:
        conn.close()
    before, counts = observed(client, "spring"), table_counts(server.settings.database)

    assert set_retention(client, 30).history_days == 30
    pruned = apply(client)
    old_replies = sum(1 for e in old if e.engagement.kind == ingest_pb2.ENGAGEMENT_KIND_REPLIED)
    old_taps = sum(1 for e in old if e.engagement.kind == ingest_pb2.ENGAGEMENT_KIND_BUTTON_CLICKED)
    assert pruned == {"events": len(old), "replies": old_replies, "button_clicks": old_taps, "campaigns": 0}
    after = table_counts(server.settings.database)
    assert after["events"] == counts["events"] - len(old)
    assert after["replies"] == counts["replies"] - old_replies
    assert (after["messages"], after["engagement"], after["campaigns"]) == (
        counts["messages"],
        counts["engagement"],
        counts["campaigns"],
    )
    assert observed(client, "spring") == before  # stats, message report, failure reasons: identical
    assert apply(client) == dict.fromkeys(("events", "replies", "button_clicks", "campaigns"), 0)  # nothing left
    # The history streams keep what is kept.
    kept = [
        e
        for page in client.reports.StreamMessageHistory(
            report_pb2.StreamMessageHistoryRequest(campaign_id="spring", recipient=RECIPIENTS[0]), timeout=30
        )
        for e in page.events
    ]
    assert len(kept) == 8  # its recent events: submitted, failed, delivered, click, read, entered, reply, tap
    assert "history was pruned" in problems(server, "spring")[0]

    conn = connect_db(server.settings.database)
    try:
        (keys,) = conn.execute("SELECT attr_keys FROM messages WHERE recipient = ?", (RECIPIENTS[1],)).fetchone()
        assert keys is not None
    finally:
        conn.close()
    # A late event folds into the kept state: a late SUBMITTED never moves
    # a delivered message back; a newer attempt supersedes it.
    late = [
        status_event("late-1", "spring", RECIPIENTS[1], SUBMITTED, RECENT - DAY_US, channel="sms"),
        status_event("late-2", "spring", RECIPIENTS[2], FAILED, NOW_US - DAY_US, attempt=3, reason=("E9", "late")),
    ]
    assert {r.outcome for r in send_events(client, late)} == {ingest_pb2.EVENT_OUTCOME_ACCEPTED}
    stats = client.reports.GetCampaignStats(report_pb2.GetCampaignStatsRequest(campaign_id="spring"), timeout=30)
    old_stats = report_pb2.GetCampaignStatsResponse.FromString(b"").stats
    old_stats.ParseFromString(before["stats"])
    now, then = stats.stats.overall.counts, old_stats.overall.counts
    assert (now.success, now.failed) == (then.success - 1, then.failed + 1)
    rows = {r.recipient: r for r in all_rows(client, "spring")}
    assert rows[RECIPIENTS[1]].status == OK and rows[RECIPIENTS[1]].channel == "whatsapp"
    assert (rows[RECIPIENTS[2]].status, rows[RECIPIENTS[2]].attempt) == (FAILED, 3)

    # The metric counts the rows pruned, per table.
    samples = scrape(server)
    assert value(samples, "flowtrack_retention_pruned_rows_total", table="events") == len(old)
    assert value(samples, "flowtrack_retention_pruned_rows_total", table="replies") == old_replies


def test_a_retried_event_whose_original_was_pruned_is_refused(world: tuple[ServerThread, Client]) -> None:
    _server, client = world
    old = _fill(client)
    set_retention(client, 30)
    apply(client)
    before = observed(client, "spring")
    # The same old events again (an engine's retry after a lost ack): refused, not counted twice.
    results = send_events(client, old[:50])
    assert {(r.outcome, r.reason) for r in results} == {(ingest_pb2.EVENT_OUTCOME_REJECTED, "OUTSIDE_RETENTION")}
    with pytest.raises(grpc.RpcError) as raised:
        client.ingest.RecordStatusEvent(ingest_pb2.RecordStatusEventRequest(event=old[0].status), timeout=30)
    details = error_details(raised.value)
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "OUTSIDE_RETENTION")
    # Even with the retention made longer or removed: what was pruned stays refused.
    kept = set_retention(client, 0)
    assert kept.history_days == 0 and kept.HasField("pruned_before")
    results = send_events(client, old[:50])
    assert {r.outcome for r in results} == {ingest_pb2.EVENT_OUTCOME_REJECTED}
    # A retry of a kept event is the usual DUPLICATE.
    recent = history("spring", RECENT, "new")[:10]
    assert {r.outcome for r in send_events(client, recent)} == {ingest_pb2.EVENT_OUTCOME_DUPLICATE}
    assert observed(client, "spring") == before


def test_retention_is_checked_and_needs_its_scopes(world: tuple[ServerThread, Client]) -> None:
    _server, client = world
    empty = retention_stub(client).GetRetention(retention_pb2.GetRetentionRequest(), timeout=30).retention
    assert (empty.history_days, empty.campaign_days, empty.HasField("pruned_before")) == (0, 0, False)
    for history_days, campaign_days, field in ((-1, 0, "history_days"), (30, 36_501, "campaign_days")):
        wanted = retention_pb2.Retention(history_days=history_days, campaign_days=campaign_days)
        with pytest.raises(grpc.RpcError) as raised:
            retention_stub(client).SetRetention(retention_pb2.SetRetentionRequest(retention=wanted), timeout=30)
        details = error_details(raised.value)
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.violation_reasons == {f"retention.{field}": "OUT_OF_RANGE"}
    # Without a retention, a sweep deletes nothing.
    assert apply(client) == dict.fromkeys(("events", "replies", "button_clicks", "campaigns"), 0)


def test_retention_is_sealed_per_business(tmp_path: Path) -> None:
    database = database_of(tmp_path)
    keys = {b: create_key(database, b, Scope.ADMIN) for b in ("acme", "globex")}
    server = start_server(tmp_path, scheduler_tick=3600.0)
    clients = {b: keyed_client(server.address, key) for b, key in keys.items()}
    try:
        for c in clients.values():
            send_events(c, history("twin", OLD, "old") + history("twin", RECENT, "new"))
        before = {b: observed(c, "twin") for b, c in clients.items()}
        set_retention(clients["acme"], 30)
        assert apply(clients["acme"])["events"] > 0
        # globex: no retention, nothing pruned, old events still taken.
        globex = retention_stub(clients["globex"]).GetRetention(retention_pb2.GetRetentionRequest(), timeout=30)
        assert globex.retention.history_days == 0 and not globex.retention.HasField("pruned_before")
        assert apply(clients["globex"])["events"] == 0
        conn = connect_db(database)
        try:
            old = {
                b: int(n)
                for b, n in conn.execute(
                    "SELECT business_id, count(*) FROM events WHERE occurred_at < ? GROUP BY business_id",
                    (NOW_US - 30 * DAY_US,),
                ).fetchall()
            }
        finally:
            conn.close()
        assert old == {"globex": len(history("twin", OLD, "old"))}
        late = [status_event("older", "twin", "+15559999999", SUBMITTED, OLD)]
        assert send_events(clients["globex"], late)[0].outcome == ingest_pb2.EVENT_OUTCOME_ACCEPTED
        assert send_events(clients["acme"], late)[0].reason == "OUTSIDE_RETENTION"
        assert observed(clients["acme"], "twin") == before["acme"]
    finally:
        for c in clients.values():
            c.channel.close()
        server.stop()


def test_a_completed_campaign_past_its_retention_is_deleted(
    world: tuple[ServerThread, Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its events, then its messages (with their engagement and link clicks),
    replies and taps go in batches (of 3 here), then the campaign with its
    counters: no writer job deletes more than a batch of any table."""
    server, client = world
    monkeypatch.setattr(pruning, "BATCH", 3)
    batches: list[int] = []
    prune_rows = pruning.prune_campaign_rows

    def counted(business_id: str, cid: int, limit: int = 3) -> Any:
        job = prune_rows(business_id, cid, limit)

        def run(tx: Any) -> int:
            most = job(tx)
            batches.append(most)
            return most

        return run

    monkeypatch.setattr(pruning, "prune_campaign_rows", counted)
    _fill(client)
    send_events(client, history("other", RECENT, "o"))
    for campaign in ("spring", "other"):
        for state in (campaign_pb2.CAMPAIGN_STATE_RUNNING, campaign_pb2.CAMPAIGN_STATE_COMPLETED):
            client.campaigns.UpdateCampaign(
                campaign_pb2.UpdateCampaignRequest(
                    campaign=campaign_pb2.Campaign(id=campaign, state=state), update_mask={"paths": ["state"]}
                ),
                timeout=30,
            )
    # "spring" completed 100 days ago, "other" now.
    conn = connect_db(server.settings.database)
    try:
        with conn:
            long_ago = NOW_US - 100 * DAY_US
            conn.execute("UPDATE campaigns SET complete_time = ? WHERE campaign_id = 'spring'", (long_ago,))
    finally:
        conn.close()
    set_retention(client, 0, campaign=90)
    pruned = apply(client)
    assert pruned["campaigns"] == 1 and pruned["events"] == 2 * len(history("spring", OLD, "x"))
    assert len(batches) >= 3 and batches[:-1] == [3] * (len(batches) - 1) and batches[-1] < 3, batches
    with pytest.raises(grpc.RpcError) as raised:
        client.campaigns.GetCampaign(campaign_pb2.GetCampaignRequest(campaign_id="spring"), timeout=30)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    client.campaigns.GetCampaign(campaign_pb2.GetCampaignRequest(campaign_id="other"), timeout=30)
    conn = connect_db(server.settings.database)
    try:
        (cid,) = conn.execute("SELECT cid FROM campaigns WHERE campaign_id = 'other'").fetchone()
        for table in ("events", "messages", "counters", "link_clickers", "engagement", "replies", "button_clicks"):
            (left,) = conn.execute(f"SELECT count(*) FROM {table} WHERE cid <> ?", (cid,)).fetchone()
            assert left == 0, table
    finally:
        conn.close()


def test_the_sweep_runs_under_ingest_load(world: tuple[ServerThread, Client]) -> None:
    """Ingest goes on while a sweep deletes 5 batches: every event is
    answered and counted, and the stats add up."""
    server, client = world
    create(client, "load")
    add_recipients(client, "load", [(f"+1666{i:07d}", "sms", "") for i in range(1000)])
    old = [
        status_event(f"old-{i}", "load", f"+1666{i % 1000:07d}", SUBMITTED, OLD + i) for i in range(5 * pruning.BATCH)
    ]
    assert {r.outcome for r in send_events(client, old, batch=500)} == {ingest_pb2.EVENT_OUTCOME_ACCEPTED}
    set_retention(client, 30)
    stop = threading.Event()
    answered: list[ingest_pb2.EventResult] = []

    def load() -> None:
        loader = make_client(server.address)
        try:
            n = 0
            while not stop.is_set() or n == 0:
                batch = [
                    status_event(f"new-{n}-{i}", "load", f"+1666{i:07d}", OK, RECENT + n * 1000 + i)
                    for i in range(n % 10 * 100, n % 10 * 100 + 100)
                ]
                answered.extend(send_events(loader, batch))
                n += 1
        finally:
            loader.channel.close()

    thread = threading.Thread(target=load)
    thread.start()
    try:
        pruned = apply(client)
    finally:
        stop.set()
        thread.join(timeout=120)
    assert pruned["events"] == len(old)
    assert answered and {r.outcome for r in answered} == {ingest_pb2.EVENT_OUTCOME_ACCEPTED}
    stats = client.reports.GetCampaignStats(report_pb2.GetCampaignStatsRequest(campaign_id="load"), timeout=30).stats
    delivered = {r.recipient for r in all_rows(client, "load") if r.status == OK}
    assert stats.overall.counts.total == 1000 and stats.overall.counts.success == len(delivered)
    assert stats.overall.counts.submitted + stats.overall.counts.pending == 1000


def all_rows(client: Client, campaign: str) -> list[report_pb2.MessageRow]:
    return [
        r
        for page in client.reports.StreamMessageReport(
            report_pb2.StreamMessageReportRequest(campaign_id=campaign), timeout=60
        )
        for r in page.rows
    ]


def sweeper_of(server: ServerThread) -> RetentionSweeper:
    delivery = server.running.delivery
    assert delivery is not None and delivery.sweeper is not None
    return delivery.sweeper


def test_the_background_sweep_prunes_by_itself(tmp_path: Path) -> None:
    server = start_server(tmp_path, scheduler_tick=3600.0, retention_interval=0.2)
    client = make_client(server.address)
    try:
        _fill(client)
        set_retention(client, 30)
        sweeper = sweeper_of(server)
        deadline = time.monotonic() + 60
        while table_counts(server.settings.database)["events"] != len(history("spring", RECENT, "x")):
            assert time.monotonic() < deadline, "the background sweep did not prune"
            time.sleep(0.1)
        while sweeper.rounds < 1:  # its round is counted once it ends, after the commits of its batches
            assert time.monotonic() < deadline, "the sweep's round never ended"
            time.sleep(0.05)
    finally:
        client.channel.close()
        server.stop()


@pytest.mark.own_backend("PostgreSQL only: two replicas on one database")
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_only_one_replica_sweeps_at_a_time(tmp_path: Path) -> None:
    first = start_server(tmp_path, scheduler_tick=3600.0, retention_interval=0.1)
    second = start_server(tmp_path, scheduler_tick=3600.0, retention_interval=0.1)
    client = make_client(first.address)
    try:
        _fill(client)
        set_retention(client, 30)
        sweepers = [sweeper_of(s) for s in (first, second)]
        deadline = time.monotonic() + 60
        while table_counts(first.settings.database)["events"] != len(history("spring", RECENT, "x")):
            assert time.monotonic() < deadline, "no replica swept"
            time.sleep(0.05)
        rounds = max(s.rounds for s in sweepers)
        while max(s.rounds for s in sweepers) < rounds + 5:  # a few more rounds: still the same replica
            assert time.monotonic() < deadline, "the sweeps stopped"
            time.sleep(0.05)
        assert sorted(s.rounds > 0 for s in sweepers) == [False, True], [s.rounds for s in sweepers]
    finally:
        client.channel.close()
        second.stop()
        first.stop()


@pytest.mark.sqlite_only("reads SQLite's query plans")
def test_only_the_sweep_reads_the_time_index(world: tuple[ServerThread, Client]) -> None:
    """The sweep finds a business's oldest events through events_by_hour (a
    range of it: the hours up to the horizon's);
    no other query can use that index (it is partial on a predicate only
    the sweep states), so SQLite, without statistics, never reads a
    campaign's events through it instead of the campaign's own indexes."""
    server, client = world
    _fill(client)
    conn = sqlite3.connect(f"file:{server.settings.database}?mode=ro", uri=True)
    try:

        def plan(statement: Any, values: dict[str, Any]) -> str:
            text, params = sql.compile_for(statement, sql.SQLITE).bind(values)
            return " ".join(str(r[-1]) for r in conn.execute(f"EXPLAIN QUERY PLAN {text}", params))

        values = {"business_id": "default", "horizon": OLD, "hour": OLD // HOUR_US, "limit": 500}
        sweep = plan(pruning._OLDEST, values)
        assert "SEARCH events USING INDEX events_by_hour (business_id=? AND <expr><?)" in sweep, sweep
        for statement in (check._CLICKS, reports._BY_CITY):
            used = plan(statement, {"business_id": "default", "cid": 1})
            assert "events_by_hour" not in used and "events_clicks" in used, used
        used = plan(pruning._CAMPAIGN_EVENTS, {"business_id": "default", "cid": 1, "limit": 500})
        assert "events_by_campaign" in used, used
    finally:
        conn.close()
