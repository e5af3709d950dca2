"""Engagement events (SPEC §5) over real gRPC: the unary RPC and StreamEvents,
DUPLICATE / CONFLICT, field violations, joining the audience, the delivery
status left alone, history, the stats figures and rates, counts moving with
a message's channel, discarded reply texts, and tenants sealed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from flowtrack.domain import stats as dstats
from flowtrack.domain.engagement import Engagement, apply, contribution
from flowtrack.domain.model import EngagementEvent, EngagementKind
from flowtrack.store import check
from flowtrack.v1 import campaign_pb2, common_pb2, ingest_pb2, report_pb2
from tests.conftest import Client, ServerThread, connect_db, error_details
from tests.report_helpers import add_recipients, send_events, status_event
from tests.tenants import code_of, start_tenants

S = common_pb2
K = ingest_pb2
NOW = int(time.time())
CAMPAIGN = "engage"


def ts(seconds: float) -> Any:
    from google.protobuf import timestamp_pb2

    return timestamp_pb2.Timestamp(seconds=int(seconds), nanos=int((seconds % 1) * 1e9))


def engagement(
    event_id: str,
    kind: int,
    recipient: str = "+15550001",
    at: float = NOW - 30,
    campaign: str = CAMPAIGN,
    **fields: Any,
) -> ingest_pb2.EngagementEvent:
    return ingest_pb2.EngagementEvent(
        event_id=event_id, campaign_id=campaign, recipient=recipient, kind=kind, occurred_at=ts(at), **fields
    )


def wrap(*events: ingest_pb2.EngagementEvent) -> list[ingest_pb2.Event]:
    return [ingest_pb2.Event(engagement=e) for e in events]


def record(client: Client, event: ingest_pb2.EngagementEvent) -> ingest_pb2.RecordEngagementEventResponse:
    return client.ingest.RecordEngagementEvent(ingest_pb2.RecordEngagementEventRequest(event=event), timeout=10)


def stats(client: Client, campaign: str = CAMPAIGN) -> report_pb2.CampaignStats:
    return client.reports.GetCampaignStats(report_pb2.GetCampaignStatsRequest(campaign_id=campaign), timeout=10).stats


def problems(server: ServerThread, campaign: str = CAMPAIGN) -> list[str]:
    conn = connect_db(server.settings.database)
    try:
        business_id, cid = conn.execute(
            "SELECT business_id, cid FROM campaigns WHERE campaign_id = ?", (campaign,)
        ).fetchone()
        return check.problems(conn, business_id, cid)
    finally:
        conn.close()


def test_unary_accepted_duplicate_conflict_and_status_untouched(server: ServerThread, client: Client) -> None:
    client.ingest.RecordStatusEvent(
        ingest_pb2.RecordStatusEventRequest(
            event=ingest_pb2.StatusEvent(
                event_id="s1",
                campaign_id=CAMPAIGN,
                recipient="+15550001",
                status=S.MESSAGE_STATUS_SUCCESS,
                occurred_at=ts(NOW - 60),
            )
        ),
        timeout=10,
    )
    first = record(client, engagement("r1", K.ENGAGEMENT_KIND_READ))
    assert first.result.outcome == K.EVENT_OUTCOME_ACCEPTED and first.result.sequence == 2
    again = record(client, engagement("r1", K.ENGAGEMENT_KIND_READ))
    assert again.result.outcome == K.EVENT_OUTCOME_DUPLICATE and again.result.sequence == 2
    other = record(client, engagement("r1", K.ENGAGEMENT_KIND_OPTED_OUT))
    assert other.result.outcome == K.EVENT_OUTCOME_CONFLICT and other.result.reason == "EVENT_ID_REUSED"
    # The event_id space is shared with status events.
    reused = record(client, engagement("s1", K.ENGAGEMENT_KIND_READ))
    assert reused.result.outcome == K.EVENT_OUTCOME_CONFLICT
    # Opting out (and reading) never changes the delivery status (rule 2).
    record(client, engagement("o1", K.ENGAGEMENT_KIND_OPTED_OUT))
    got = stats(client)
    assert got.overall.counts.success == 1 and got.overall.counts.total == 1
    assert (got.overall.read, got.overall.opted_out) == (1, 1)
    assert got.sequence == 3
    assert problems(server) == []


def test_every_kind_on_the_stream_with_stats_rates_and_funnel(server: ServerThread, client: Client) -> None:
    client.campaigns.CreateCampaign(
        campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id=CAMPAIGN)), timeout=10
    )
    add_recipients(client, CAMPAIGN, [("+1", "whatsapp", "A"), ("+2", "sms", "B"), ("+3", "whatsapp", "B")])
    t = (NOW - 3600) * 1_000_000
    events = [
        status_event("s1", CAMPAIGN, "+1", S.MESSAGE_STATUS_SUCCESS, t),
        status_event("s2", CAMPAIGN, "+2", S.MESSAGE_STATUS_SUCCESS, t),
        status_event("s3", CAMPAIGN, "+3", S.MESSAGE_STATUS_FAILED, t, reason=("X", "")),
    ]
    events += wrap(
        engagement("g1", K.ENGAGEMENT_KIND_ENTERED_FLOW, "+1"),
        engagement("g2", K.ENGAGEMENT_KIND_READ, "+1"),
        engagement("g3", K.ENGAGEMENT_KIND_READ, "+1", at=NOW - 20),  # a second read: still one reader
        engagement("g4", K.ENGAGEMENT_KIND_REPLIED, "+1", text="YES please"),
        engagement("g5", K.ENGAGEMENT_KIND_REPLIED, "+1", text="when?"),
        engagement("g6", K.ENGAGEMENT_KIND_BUTTON_CLICKED, "+1", button_id="more", button_name="Tell me more"),
        engagement("g7", K.ENGAGEMENT_KIND_GOAL_ACHIEVED, "+1", goal_id="purchase"),
        engagement("g8", K.ENGAGEMENT_KIND_EXITED_FLOW, "+2", exit_reason="timeout"),  # entered implied
        engagement("g9", K.ENGAGEMENT_KIND_OPTED_OUT, "+2"),
        engagement("g10", K.ENGAGEMENT_KIND_ENTERED_FLOW, "+3"),
        engagement("g11", K.ENGAGEMENT_KIND_READ, "+9"),  # not in the audience: joins it
    )
    results = send_events(client, events, batch=5)
    assert {r.outcome for r in results} == {K.EVENT_OUTCOME_ACCEPTED}
    got = stats(client)
    o = got.overall
    assert o.counts.total == 4 and o.counts.pending == 1  # +9 joined, PENDING
    assert (o.read, o.replied, o.replies, o.opted_out, o.button_clickers, o.button_clicks) == (2, 1, 2, 1, 1, 1)
    assert (o.entered, o.in_flow, o.exited, o.goal_achieved, o.conversations_initiated) == (3, 2, 1, 1, 1)
    submitted = o.counts.submitted
    assert submitted == 3
    assert o.rates.read_rate == 2 / 3 and o.rates.reply_rate == 1 / 3 and o.rates.opt_out_rate == 1 / 3
    assert o.rates.delivery_rate == 2 / 3 and o.rates.button_click_rate == 1 / 3 and o.rates.goal_rate == 1 / 3
    assert not o.rates.HasField("link_click_rate") or o.rates.link_click_rate == 0
    channels = {b.key: b for b in got.by_channel}
    assert (channels["whatsapp"].read, channels["whatsapp"].entered, channels["sms"].exited) == (1, 2, 1)
    assert channels[""].read == 1  # +9 has no channel
    variants = {b.key: b for b in got.by_variant}
    assert (variants["A"].replied, variants["B"].opted_out, variants["B"].entered) == (1, 1, 2)
    assert dstats.reconcile(_domain(got)) == []
    assert problems(server) == []
    # The history shows engagement events as sent, in sequence order.
    history = [
        e
        for page in client.reports.StreamMessageHistory(
            report_pb2.StreamMessageHistoryRequest(campaign_id=CAMPAIGN, recipient="+1"), timeout=10
        )
        for e in page.events
    ]
    kinds = [e.event.WhichOneof("kind") for e in history]
    assert kinds == ["status"] + ["engagement"] * 7
    tap = next(e.event.engagement for e in history if e.event.engagement.event_id == "g6")
    assert (tap.kind, tap.button_id, tap.button_name) == (K.ENGAGEMENT_KIND_BUTTON_CLICKED, "more", "Tell me more")
    # The replies and button taps have their own rows, for the Replies tab.
    conn = connect_db(server.settings.database)
    replies = conn.execute("SELECT recipient, text FROM replies ORDER BY seq").fetchall()
    assert replies == [("+1", "YES please"), ("+1", "when?")]
    assert conn.execute("SELECT button_id, button_name FROM button_clicks").fetchall() == [("more", "Tell me more")]
    conn.close()


def _domain(s: report_pb2.CampaignStats) -> dstats.CampaignStats:
    """Domain stats from the proto, to run domain.stats.reconcile on an answer."""

    def bucket(b: report_pb2.StatsBucket) -> dstats.Bucket:
        c = b.counts
        counts = dstats.Counts(c.pending, c.not_submitted, c.awaiting, c.delivery_not_confirmed, c.failed, c.success)
        engaged = dstats.Engaged(
            b.read, b.replied, b.replies, b.opted_out, b.button_clickers, b.button_clicks, b.entered, b.exited,
            b.goal_achieved,
        )  # fmt: skip
        return dstats.Bucket(b.key, counts, b.clicks, b.unique_clickers, engaged)

    return dstats.CampaignStats(
        s.campaign_id,
        bucket(s.overall),
        tuple(bucket(b) for b in s.by_channel),
        tuple(bucket(b) for b in s.by_variant),
        None,
        None,
        s.sequence,
    )


def test_engagement_counts_move_with_the_messages_channel(server: ServerThread, client: Client) -> None:
    """Read first (no channel yet), then a status event gives the message its
    channel: the read moves from the '' channel to it, in any order."""
    t = (NOW - 3600) * 1_000_000
    send_events(client, wrap(engagement("r", K.ENGAGEMENT_KIND_READ, "+1")))
    assert {b.key: b.read for b in stats(client).by_channel} == {"": 1}
    send_events(client, [status_event("s", CAMPAIGN, "+1", S.MESSAGE_STATUS_SUCCESS, t, channel="rcs", variant="B")])
    got = stats(client)
    assert {b.key: b.read for b in got.by_channel} == {"rcs": 1}
    assert {b.key: b.read for b in got.by_variant} == {"B": 1}
    assert problems(server) == []


def test_a_discarded_reply_text_is_not_stored_anywhere(server: ServerThread, client: Client) -> None:
    secret = "my card number is 4111 1111 1111 1111"
    event = engagement("d1", K.ENGAGEMENT_KIND_REPLIED, text=secret, discard_text=True)
    assert record(client, event).result.outcome == K.EVENT_OUTCOME_ACCEPTED
    # A resend is a duplicate whatever its text (the text never reached the fingerprint).
    assert record(client, event).result.outcome == K.EVENT_OUTCOME_DUPLICATE
    assert stats(client).overall.replies == 1
    server.stop()
    if server.settings.database.startswith("postgresql://"):  # every row of every table, as text
        conn = connect_db(server.settings.database)
        tables = [t for (t,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        dump = [row for t in tables for row in conn.execute(f"SELECT {t}::text FROM {t}").fetchall()]
        conn.close()
        assert dump and secret not in repr(dump)
        return
    raw = Path(server.settings.database).read_bytes()
    for suffix in ("-wal",):
        wal = Path(server.settings.database + suffix)
        if wal.exists():
            raw += wal.read_bytes()
    assert secret.encode() not in raw


@pytest.mark.parametrize(
    ("fields", "violations"),
    [
        ({"kind": 0}, {"event.kind": "BAD_ENUM"}),
        ({"kind": 99}, {"event.kind": "BAD_ENUM"}),
        ({"kind": K.ENGAGEMENT_KIND_BUTTON_CLICKED}, {"event.button_id": "REQUIRED"}),
        ({"kind": K.ENGAGEMENT_KIND_READ, "text": "hi"}, {"event.text": "NOT_ALLOWED"}),
        ({"kind": K.ENGAGEMENT_KIND_READ, "goal_id": "g", "exit_reason": "x"},
         {"event.goal_id": "NOT_ALLOWED", "event.exit_reason": "NOT_ALLOWED"}),
        ({"kind": K.ENGAGEMENT_KIND_REPLIED, "text": "x" * 4097}, {"event.text": "TOO_LONG"}),
        ({"kind": K.ENGAGEMENT_KIND_BUTTON_CLICKED, "button_id": "b" * 129, "button_name": "n" * 257},
         {"event.button_id": "TOO_LONG", "event.button_name": "TOO_LONG"}),
        ({"kind": K.ENGAGEMENT_KIND_EXITED_FLOW, "exit_reason": "r" * 129}, {"event.exit_reason": "TOO_LONG"}),
        ({"kind": K.ENGAGEMENT_KIND_READ, "event_id": "", "recipient": ""},
         {"event.event_id": "REQUIRED", "event.recipient": "REQUIRED"}),
        ({"kind": K.ENGAGEMENT_KIND_READ, "occurred_at": None}, {"event.occurred_at": "REQUIRED"}),
    ],
)  # fmt: skip
def test_invalid_events_name_every_field(client: Client, fields: dict[str, Any], violations: dict[str, str]) -> None:
    values: dict[str, Any] = {"event_id": "v1", "recipient": "+1", **fields}
    values.pop("occurred_at", None)
    event = engagement(values.pop("event_id"), values.pop("kind"), values.pop("recipient"), **values)
    if "occurred_at" in fields:
        event.ClearField("occurred_at")
    with pytest.raises(grpc.RpcError) as caught:
        record(client, event)
    details = error_details(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.violation_reasons == violations
    # On the stream: the same violations under events[i].engagement, the rest of the batch stored.
    results = send_events(client, [*wrap(event), *wrap(engagement("ok", K.ENGAGEMENT_KIND_READ))])
    assert [r.outcome for r in results] == [K.EVENT_OUTCOME_INVALID, K.EVENT_OUTCOME_ACCEPTED]
    assert {v.field: v.reason for v in results[0].violations} == {
        "events[0].engagement." + k.removeprefix("event."): v for k, v in violations.items()
    }


def test_strict_campaigns_refuse_engagement_for_unknown_campaigns(tmp_path: Path) -> None:
    from tests.conftest import make_client, start_server

    strict = start_server(tmp_path, strict_campaigns=True)
    client = make_client(strict.address)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            record(client, engagement("x", K.ENGAGEMENT_KIND_READ, campaign="nope"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        client.channel.close()
        strict.stop()


def test_tenants_are_sealed(tmp_path: Path) -> None:
    """The same campaign and event ids in two businesses: each sees its own
    engagement only, and an ingest key of one cannot read."""
    world = start_tenants(tmp_path)
    try:
        a, b = world.client(world.a.ingest), world.client(world.b.ingest)
        assert record(a, engagement("t1", K.ENGAGEMENT_KIND_READ)).result.outcome == K.EVENT_OUTCOME_ACCEPTED
        assert record(a, engagement("t2", K.ENGAGEMENT_KIND_OPTED_OUT)).result.outcome == K.EVENT_OUTCOME_ACCEPTED
        # The same id in b is b's own first event, not a duplicate of a's.
        reply = record(b, engagement("t1", K.ENGAGEMENT_KIND_REPLIED, text="globex"))
        assert reply.result.outcome == K.EVENT_OUTCOME_ACCEPTED and reply.result.sequence == 1
        read_a, read_b = world.client(world.a.read), world.client(world.b.read)
        sa, sb = stats(read_a), stats(read_b)
        assert (sa.overall.read, sa.overall.opted_out, sa.overall.replied) == (1, 1, 0)
        assert (sb.overall.read, sb.overall.opted_out, sb.overall.replied) == (0, 0, 1)
        history_b = [
            e.event.engagement
            for page in read_b.reports.StreamMessageHistory(
                report_pb2.StreamMessageHistoryRequest(campaign_id=CAMPAIGN), timeout=10
            )
            for e in page.events
        ]
        assert [(e.event_id, e.text) for e in history_b] == [("t1", "globex")]
        # An ingest key records but does not read; no key does nothing.
        assert code_of(lambda: stats(a)) == grpc.StatusCode.PERMISSION_DENIED
        nobody = world.client(None)
        assert code_of(lambda: record(nobody, engagement("t3", K.ENGAGEMENT_KIND_READ))) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
    finally:
        world.close()


# -- the fold, alone ---------------------------------------------------------------


def test_the_fold_keeps_minima_counts_and_the_earliest_exit() -> None:
    events = [
        EngagementEvent("a", "c", "r", EngagementKind.EXITED_FLOW, 20, exit_reason="late"),
        EngagementEvent("b", "c", "r", EngagementKind.EXITED_FLOW, 10, exit_reason="early"),
        EngagementEvent("c", "c", "r", EngagementKind.GOAL_ACHIEVED, 15, goal_id="g"),
        EngagementEvent("d", "c", "r", EngagementKind.REPLIED, 30, text="x"),
        EngagementEvent("e", "c", "r", EngagementKind.REPLIED, 25),
    ]
    states = []
    for order in (events, events[::-1], events[2:] + events[:2]):
        state = Engagement()
        for event in order:
            apply(state, event)
        states.append(state)
    assert states[0] == states[1] == states[2]
    s = states[0]
    assert (s.exited_at, s.exit_reason, s.entered_at, s.goal_id, s.replied_at, s.replies) == (
        10, "early", 10, "g", 25, 2,
    )  # fmt: skip
    assert contribution(s) == {"replied": 1, "replies": 2, "entered": 1, "exited": 1, "goal_achieved": 1}


# -- a simulated campaign: the CLI's stats equal what the simulation expects ----------


def test_a_simulated_campaign_shows_the_engagement_it_expects(server: ServerThread, client: Client) -> None:
    import json

    from flowtrack.client import simulate as sim
    from tests.test_cli import END, ok

    result = ok(server, "simulate", "--campaign", "funnel", "--recipients", "400", "--seed", "5", "--quiet")
    s = sim.generate(sim.SimConfig(campaign_id="funnel", recipients=400, seed=5, end_time=END))
    e = s.expected
    assert f"{e.accepted:,} accepted, {e.duplicates:,} duplicates, 0 refused" in result.stdout
    got = stats(client, "funnel")
    figures = (*sim.ENGAGEMENT_FIGURES, "in_flow")
    assert {name: getattr(got.overall, name) for name in figures} == e.engagement
    assert {b.key: {n: getattr(b, n) for n in figures} for b in got.by_channel} == e.engagement_by_channel
    assert {b.key: {n: getattr(b, n) for n in figures} for b in got.by_variant} == e.engagement_by_variant
    assert got.overall.conversations_initiated == e.engagement["replied"]
    # Realistic: read shares differ by channel, SMS has no read receipts, the funnel drops off.
    channels = {b.key: b for b in got.by_channel}
    assert channels["sms"].read == 0 and channels["sms"].replied > 0
    assert channels["whatsapp"].rates.read_rate > channels["email"].rates.read_rate > 0
    assert 0 < got.overall.goal_achieved < got.overall.exited < got.overall.entered
    assert got.overall.opted_out > 0 and got.overall.button_clickers > 0 and got.overall.in_flow > 0
    assert dstats.reconcile(_domain(got)) == []
    # `flowtrack stats --json` prints the canonical proto3 JSON (lowerCamelCase) with every figure.
    shown = json.loads(ok(server, "stats", "funnel", "--json").stdout)
    overall = shown["overall"]
    for name in ("read", "replied", "optedOut", "buttonClickers", "entered", "inFlow", "exited", "goalAchieved"):
        assert int(overall[name]) > 0, name
    assert int(overall["goalAchieved"]) == e.engagement["goal_achieved"]
    assert overall["rates"]["readRate"] == got.overall.rates.read_rate
    table = ok(server, "stats", "funnel").stdout
    assert "read rate" in table and "goal achieved" in table and "in flow" in table
    assert problems(server, "funnel") == []


def test_grpcurl_shows_the_figures(server: ServerThread, client: Client) -> None:
    """What a grpcurl user sees: the new figures under their proto field names."""
    import json

    from tests.test_grpcurl import grpcurl, ok

    request = {
        "event": {
            "event_id": "j1",
            "campaign_id": CAMPAIGN,
            "recipient": "+1",
            "kind": "ENGAGEMENT_KIND_GOAL_ACHIEVED",
            "goal_id": "purchase",
            "occurred_at": "2026-01-01T00:00:00Z",
        }
    }
    answer = json.loads(
        ok(grpcurl(server, "-d", json.dumps(request), "flowtrack.v1.IngestService/RecordEngagementEvent"))
    )
    assert answer["result"]["outcome"] == "EVENT_OUTCOME_ACCEPTED"
    record(client, engagement("j2", K.ENGAGEMENT_KIND_OPTED_OUT, "+1"))
    record(client, engagement("j3", K.ENGAGEMENT_KIND_BUTTON_CLICKED, "+1", button_id="b"))
    shown = json.loads(
        ok(grpcurl(server, "-d", json.dumps({"campaign_id": CAMPAIGN}), "flowtrack.v1.ReportService/GetCampaignStats"))
    )
    overall = shown["stats"]["overall"]
    # grpcurl prints the proto field names; `flowtrack stats --json` the canonical lowerCamelCase ones.
    assert {k: overall[k] for k in ("entered", "in_flow", "goal_achieved", "opted_out", "button_clickers")} == {
        "entered": "1",
        "in_flow": "1",
        "goal_achieved": "1",
        "opted_out": "1",
        "button_clickers": "1",
    }
    described = ok(grpcurl(server, "describe flowtrack.v1.EngagementEvent"))
    assert "at most 4096 characters" in described and "discard_text" in described


def test_watch_sees_engagement_and_delete_takes_it_away(server: ServerThread, client: Client) -> None:
    """WatchCampaignStats sends a new snapshot when an engagement event commits;
    DeleteCampaign removes the campaign's engagement rows, replies and taps, so
    the id starts afresh."""
    record(client, engagement("w0", K.ENGAGEMENT_KIND_ENTERED_FLOW))
    watch = client.reports.WatchCampaignStats(report_pb2.WatchCampaignStatsRequest(campaign_id=CAMPAIGN), timeout=30)
    try:
        first = next(watch).stats
        assert (first.overall.entered, first.overall.replied) == (1, 0)
        record(client, engagement("w1", K.ENGAGEMENT_KIND_REPLIED, text="hello"))
        later = next(watch).stats
        while later.overall.replied == 0:  # a snapshot may have been coalesced before the reply
            later = next(watch).stats
        assert (later.overall.replied, later.overall.replies, later.overall.in_flow) == (1, 1, 1)
        assert later.sequence > first.sequence
    finally:
        watch.cancel()
    client.campaigns.DeleteCampaign(campaign_pb2.DeleteCampaignRequest(campaign_id=CAMPAIGN), timeout=10)
    conn = connect_db(server.settings.database)
    try:
        for table in ("engagement", "replies", "button_clicks", "events", "messages", "counters"):
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0, table
    finally:
        conn.close()
    record(client, engagement("w2", K.ENGAGEMENT_KIND_READ))
    again = stats(client)
    assert (again.overall.read, again.overall.entered, again.overall.replied) == (1, 0, 0)
    assert problems(server) == []


def test_reconcile_names_what_does_not_add_up() -> None:
    counts = dstats.Counts(success=3)
    good = dstats.Engaged(read=2, replied=1, replies=2, entered=3, exited=1, goal_achieved=1)
    whatsapp = dstats.Bucket("whatsapp", counts, engaged=good)
    ok = dstats.CampaignStats("c", dstats.Bucket("", counts, engaged=good), (whatsapp,), (), None, None, 1)
    assert dstats.reconcile(ok) == []
    bad = dstats.Engaged(read=4, replied=2, replies=1, entered=1, exited=2)
    broken = dstats.CampaignStats("c", dstats.Bucket("", counts, engaged=bad), (whatsapp,), (), None, None, 1)
    found = " | ".join(dstats.reconcile(broken))
    assert "per-channel engagement" in found and "read 4 > total 3" in found
    assert "exited 2 > entered 1" in found and "below its distinct recipients" in found
