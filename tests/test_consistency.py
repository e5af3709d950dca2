"""Rule 3 end to end: a random campaign fed through the real IngestService
(every status, retries, duplicates, out-of-order arrival, engagement events),
then stats, the message report, failure reasons, the click reports and the
history read at one sequence must agree with each other and with an
independent model of rule 2 and of SPEC §5's engagement figures."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Any

import pytest

from flowtrack.domain import stats as dstats
from flowtrack.v1 import campaign_pb2, ingest_pb2, report_pb2
from tests.conftest import Client
from tests.report_helpers import (
    BASE_US,
    add_recipients,
    all_report_rows,
    click_event,
    recipient_name,
    send_events,
    status_event,
)

CAMPAIGN = "consistency"
N = 2500
REASONS = [("INVALID_NUMBER", "number does not exist"), ("NOT_ON_CHANNEL", ""), ("131026", "rejected")]
LOCATIONS = [("BR", "SP", "São Paulo"), ("DE", "BE", "Berlin"), ("", "", "")]
BUCKET = {1: "pending", 2: "not_submitted", 3: "awaiting", 4: "delivery_not_confirmed", 5: "failed", 6: "success"}


def random_campaign(rng: random.Random) -> tuple[list[Any], dict[str, Any], list[Any]]:
    """Audience, the events to send (with duplicates, shuffled) and the
    expected current (status, attempt, reason, channel) per recipient, by the
    rule-2 ordering key computed here independently of the server."""
    audience = [(recipient_name(i), rng.choice(["whatsapp", "sms", ""]), rng.choice(["A", "B", ""])) for i in range(N)]
    events: list[ingest_pb2.Event] = []
    expected: dict[str, Any] = {}
    for i, (rec, channel, _variant) in enumerate(audience):
        path_kind = rng.random()
        if path_kind < 0.1:
            expected[rec] = (1, 0, ("", ""), channel)
            continue
        attempts = 2 if rng.random() < 0.15 else 1
        best: tuple[Any, ...] | None = None
        eff_channel = channel
        for attempt in range(1, attempts + 1):
            final = rng.choice([2, 3, 4, 5, 6])
            path = {2: [2], 3: [3], 4: [3, 4], 5: [3, 4, 5], 6: [3, 4, 6]}[final]
            for k, status in enumerate(path):
                at = BASE_US + attempt * 3_600_000_000 + i * 1000 + k * 10
                reason = rng.choice(REASONS) if status in (2, 5) else None
                ev_channel = "rcs" if (status == 6 and rng.random() < 0.2) else ""
                event_id = f"e-{i}-{attempt}-{k}"
                events.append(
                    status_event(
                        event_id, CAMPAIGN, rec, status, at, attempt=attempt, reason=reason, channel=ev_channel
                    )
                )
                key = (attempt, status, at, event_id)
                if best is None or key > best[0]:
                    best = (key, reason or ("", ""))
                if ev_channel:
                    eff_channel = ev_channel  # only SUCCESS (the greatest key) carries one
        assert best is not None
        (attempt, status, _, _), reason = best
        expected[rec] = (status, attempt, reason, eff_channel)
    clicks = []
    for i, (rec, _, _) in enumerate(audience):
        if expected[rec][0] != 1 and rng.random() < 0.2:
            for k in range(rng.randint(1, 3)):
                clicks.append(
                    click_event(
                        f"c-{i}-{k}",
                        CAMPAIGN,
                        rec,
                        rng.choice(["promo", "help"]),
                        BASE_US + 10 * 3_600_000_000 + i * 1000 + k,
                        rng.choice(LOCATIONS),
                    )
                )
    everything = events + clicks + engagement_events(rng, audience, expected)
    duplicates = rng.sample(everything, len(everything) // 10)
    everything += duplicates
    rng.shuffle(everything)
    return audience, expected, everything


ENGAGED = (
    "read",
    "replied",
    "replies",
    "opted_out",
    "button_clickers",
    "button_clicks",
    "entered",
    "exited",
    "goal_achieved",
)


def engagement_events(rng: random.Random, audience: list[Any], expected: dict[str, Any]) -> list[Any]:
    """Engagement events for the audience, a few for recipients outside it
    (they join it), some before any status event of theirs."""
    out: list[ingest_pb2.Event] = []
    names = [rec for rec, _, _ in audience] + [f"+49170{i:07d}" for i in range(40)]
    for i, rec in enumerate(names):
        if rng.random() < 0.5:
            continue
        at = BASE_US + 20 * 3_600_000_000 + i * 1000
        kinds = rng.sample(range(1, 8), rng.randint(1, 4))
        kinds += [2] * rng.randint(0, 2) + [4] * rng.randint(0, 2)  # replies and taps repeat
        for k, kind in enumerate(kinds):
            fields: dict[str, Any] = {}
            if kind == 2:
                fields["text"] = rng.choice(["YES", "STOP", "how much?", ""])
            elif kind == 4:
                fields["button_id"] = rng.choice(["more", "buy"])
            elif kind == 6:
                fields["exit_reason"] = rng.choice(["completed", "timeout"])
            elif kind == 7:
                fields["goal_id"] = "purchase"
            event = ingest_pb2.EngagementEvent(
                event_id=f"g-{i}-{k}", campaign_id=CAMPAIGN, recipient=rec, kind=kind, **fields
            )  # type: ignore[arg-type]
            event.occurred_at.FromMicroseconds(at + k * 7)
            out.append(ingest_pb2.Event(engagement=event))
        if rec not in expected:
            expected[rec] = (1, 0, ("", ""), "")  # joined the audience through its engagement: PENDING
    return out


def engagement_model(events: list[Any]) -> dict[str, Counter[str]]:
    """Per recipient, what it counts for in the engagement figures, from the
    distinct events alone (the rule of SPEC §5, independently of the server)."""
    seen: set[str] = set()
    per: dict[str, Counter[str]] = defaultdict(Counter)
    for event in events:
        if not event.HasField("engagement") or event.engagement.event_id in seen:
            continue
        e = event.engagement
        seen.add(e.event_id)
        c = per[e.recipient]
        c[
            {1: "read", 2: "replied", 3: "opted_out", 4: "button_clickers", 5: "entered", 6: "exited", 7: "goal"}[
                e.kind
            ]
        ] = 1
        c["replies"] += e.kind == 2
        c["button_clicks"] += e.kind == 4
        if e.kind in (5, 6, 7):
            c["entered"] = 1
    for c in per.values():
        c["goal_achieved"] = c.pop("goal", 0)
    return per


@pytest.mark.slow
def test_stats_reports_and_breakdowns_agree_at_one_sequence(client: Client) -> None:
    rng = random.Random(20260101)
    audience, expected, events = random_campaign(rng)
    client.campaigns.CreateCampaign(
        campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id=CAMPAIGN, name="c")), timeout=10
    )
    add_recipients(client, CAMPAIGN, audience)
    results = send_events(client, events, batch=700)
    outcomes = Counter(r.outcome for r in results)
    assert outcomes[ingest_pb2.EVENT_OUTCOME_DUPLICATE] == len(events) - len({_id(e) for e in events})
    assert set(outcomes) <= {ingest_pb2.EVENT_OUTCOME_ACCEPTED, ingest_pb2.EVENT_OUTCOME_DUPLICATE}

    stats = client.reports.GetCampaignStats(report_pb2.GetCampaignStatsRequest(campaign_id=CAMPAIGN)).stats
    rows, seqs = all_report_rows(client, CAMPAIGN, page_size=400)
    reasons_pages = list(
        client.reports.StreamFailureReasons(report_pb2.StreamFailureReasonsRequest(campaign_id=CAMPAIGN, page_size=2))
    )
    breakdown = client.reports.GetClickBreakdown(report_pb2.GetClickBreakdownRequest(campaign_id=CAMPAIGN))
    click_rows = [
        row
        for page in client.reports.StreamClickReport(report_pb2.StreamClickReportRequest(campaign_id=CAMPAIGN))
        for row in page.rows
    ]
    # Everything read at the same sequence (nothing was written in between).
    assert seqs == {stats.sequence}
    assert {p.sequence for p in reasons_pages} == {stats.sequence} == {breakdown.sequence}

    # The report matches the independent model, row for row, in recipient order.
    assert [r.recipient for r in rows] == sorted(expected)
    for row in rows:
        status, attempt, reason, channel = expected[row.recipient]
        assert (row.status, row.attempt, row.channel) == (status, attempt, channel), row.recipient
        assert (row.failure_reason.code, row.failure_reason.message) == reason

    # Stats buckets == the report's rows recounted.
    overall = stats.overall.counts
    recount = Counter(BUCKET[r.status] for r in rows)
    for name in BUCKET.values():
        assert getattr(overall, name) == recount[name], name
    assert overall.total == len(rows) == len(expected) > N  # some joined through an engagement event
    assert overall.total == overall.pending + overall.not_submitted + overall.submitted
    assert overall.submitted == overall.awaiting + overall.delivery_not_confirmed + overall.success + overall.failed

    # Per channel and per variant: recount == bucket, and they sum to the totals.
    for slices, attr in ((stats.by_channel, "channel"), (stats.by_variant, "variant")):
        per_key: dict[str, Counter[str]] = defaultdict(Counter)
        for r in rows:
            per_key[getattr(r, attr)][BUCKET[r.status]] += 1
        assert {b.key for b in slices} == set(per_key)
        for b in slices:
            for name in BUCKET.values():
                assert getattr(b.counts, name) == per_key[b.key][name], (attr, b.key, name)
        assert sum(b.counts.total for b in slices) == overall.total
        assert sum(b.clicks for b in slices) == stats.overall.clicks
        assert sum(b.unique_clickers for b in slices) == stats.overall.unique_clickers

    # Failure reasons sum to failed + not_submitted, and match the rows.
    reasons = [r for page in reasons_pages for r in page.reasons]
    assert sum(r.count for r in reasons) == overall.failed + overall.not_submitted
    assert sum(r.failed for r in reasons) == overall.failed
    assert sum(r.not_submitted for r in reasons) == overall.not_submitted
    by_reason = Counter((r.failure_reason.code, r.failure_reason.message) for r in rows if r.status in (2, 5))
    assert {(r.code, r.message): r.count for r in reasons} == dict(by_reason)
    assert [r.count for r in reasons] == sorted((r.count for r in reasons), reverse=True)
    assert abs(sum(r.share_of_failed for r in reasons) - 1.0) < 1e-9
    for r in reasons:
        wanted = sorted(
            x.recipient
            for x in rows
            if (x.failure_reason.code, x.failure_reason.message) == (r.code, r.message) and x.status in (2, 5)
        )[:3]
        assert list(r.sample_recipients) == wanted

    # Clicks: breakdown totals == click report rows == stats == report rows' clicks.
    assert breakdown.clicks == len(click_rows) == stats.overall.clicks == sum(r.clicks for r in rows)
    assert breakdown.unique_clickers == len({c.recipient for c in click_rows}) == stats.overall.unique_clickers
    humans = [c for c in click_rows if c.click_class == report_pb2.CLICK_CLASS_HUMAN]
    assert breakdown.human_clicks == len(humans) == stats.overall.human_clicks
    assert breakdown.unique_human_clickers == len({c.recipient for c in humans}) == stats.overall.unique_human_clickers
    assert breakdown.bot_clicks == stats.overall.bot_clicks == len(click_rows) - len(humans)
    assert sum(b.human_clicks for b in breakdown.by_link) == sum(b.human_clicks for b in breakdown.by_country)
    assert sum(b.clicks for b in breakdown.by_link) == breakdown.clicks
    assert sum(b.clicks for b in breakdown.by_country) == breakdown.clicks
    assert sum(b.clicks for b in breakdown.by_city) == breakdown.clicks
    per_link = Counter(c.link_id for c in click_rows)
    assert {b.link_id: b.clicks for b in breakdown.by_link} == dict(per_link)
    assert [c.sequence for c in click_rows] == sorted(c.sequence for c in click_rows)

    # Engagement: stats == the independent model, per campaign, channel and
    # variant (each recipient in its report row's channel and variant).
    model = engagement_model(events)
    row_of = {r.recipient: r for r in rows}
    for name in ENGAGED:
        assert getattr(stats.overall, name) == sum(c[name] for c in model.values()), name
        for slices, attr in ((stats.by_channel, "channel"), (stats.by_variant, "variant")):
            engaged_per_key: Counter[str] = Counter()
            for rec, c in model.items():
                engaged_per_key[getattr(row_of[rec], attr)] += c[name]
            nonzero = {key: value for key, value in engaged_per_key.items() if value}
            assert {b.key: getattr(b, name) for b in slices if getattr(b, name)} == nonzero, (attr, name)
    o = stats.overall
    assert o.in_flow == o.entered - o.exited >= 0 and o.conversations_initiated == o.replied
    assert dstats.reconcile(domain_stats(stats)) == []
    # The history holds every distinct engagement event, read at the same sequence.
    history = [
        e
        for page in client.reports.StreamMessageHistory(
            report_pb2.StreamMessageHistoryRequest(campaign_id=CAMPAIGN, page_size=1000)
        )
        for e in page.events
    ]
    assert max(e.sequence for e in history) == stats.sequence
    engaged_history = [e.event.engagement for e in history if e.event.HasField("engagement")]
    assert sum(e.kind == 2 for e in engaged_history) == o.replies
    assert len({e.recipient for e in engaged_history if e.kind == 1}) == o.read

    # Rates are the documented fractions of the same counts.
    rates = stats.overall.rates
    assert rates.success_rate == overall.success / overall.submitted
    assert rates.failure_rate == overall.failed / overall.submitted
    assert rates.click_through_rate == stats.overall.unique_clickers / overall.submitted
    assert rates.not_submitted_rate == overall.not_submitted / (overall.total - overall.pending)
    assert rates.delivery_rate == overall.success / overall.submitted
    assert rates.read_rate == o.read / overall.submitted and rates.reply_rate == o.replied / overall.submitted
    assert rates.link_click_rate == stats.overall.unique_human_clickers / overall.submitted  # people's clicks only
    assert rates.opt_out_rate == o.opted_out / overall.submitted
    assert rates.goal_rate == o.goal_achieved / o.entered


def test_reads_during_ingest_name_one_sequence_per_stream(client: Client) -> None:
    """While events keep committing, each report stream still reads one
    snapshot: its pages name one sequence and recount to a consistent state."""
    client.campaigns.CreateCampaign(
        campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id=CAMPAIGN)), timeout=10
    )
    add_recipients(client, CAMPAIGN, [(recipient_name(i), "sms", "") for i in range(1500)])
    import threading

    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set() and i < 1500:
            batch = [status_event(f"w-{j}", CAMPAIGN, recipient_name(j), 3, BASE_US + j) for j in range(i, i + 50)]
            send_events(client, batch)
            i += 50

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(5):
            rows, seqs = all_report_rows(client, CAMPAIGN, page_size=100)
            assert len(seqs) == 1
            assert len(rows) == 1500
            awaiting = sum(1 for r in rows if r.status == 3)
            # Events arrive in recipient order, 50 at a time: a snapshot sees a prefix.
            assert [r.status for r in rows] == [3] * awaiting + [1] * (1500 - awaiting)
    finally:
        stop.set()
        thread.join()


def _id(event: ingest_pb2.Event) -> str:
    kind = event.WhichOneof("kind")
    return str(getattr(event, kind or "status").event_id)


def domain_stats(s: report_pb2.CampaignStats) -> dstats.CampaignStats:
    """The domain's CampaignStats of an answer, to run dstats.reconcile on it."""

    def bucket(b: report_pb2.StatsBucket) -> dstats.Bucket:
        c = b.counts
        counts = dstats.Counts(c.pending, c.not_submitted, c.awaiting, c.delivery_not_confirmed, c.failed, c.success)
        engaged = dstats.Engaged(*(getattr(b, name) for name in ENGAGED))
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
