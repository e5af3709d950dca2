"""ReportService over real gRPC: resume tokens, cancellation and deadlines,
live stats, subscriptions, timeline buckets, and every RPC's unhappy paths."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from flowtrack.store import reports as sreports
from flowtrack.v1 import campaign_pb2, report_pb2
from tests.conftest import Client, ServerThread, checks, error_details
from tests.report_helpers import BASE_US, add_recipients, all_report_rows, seed_job, status_event, ts

R = report_pb2


def seed(server: ServerThread, campaign_id: str, n: int, business: str = "default", **kw: Any) -> dict[str, Any]:
    result: dict[str, Any] = server.store.writer.run_sync(seed_job(business, campaign_id, n, **kw))
    return result


def create(client: Client, campaign_id: str, recipients: int = 0) -> None:
    client.campaigns.CreateCampaign(
        campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id=campaign_id)), timeout=10
    )
    if recipients:
        add_recipients(client, campaign_id, [(f"r{i:05d}", "sms", "A") for i in range(recipients)])


def record(client: Client, event_id: str, campaign_id: str, recipient: str, status: int, at: int, **kw: Any) -> int:
    event = status_event(event_id, campaign_id, recipient, status, at, **kw).status
    from flowtrack.v1 import ingest_pb2

    reply = client.ingest.RecordStatusEvent(ingest_pb2.RecordStatusEventRequest(event=event), timeout=10)
    return int(reply.committed_sequence)


def expect_error(call: Callable[[], Any], code: grpc.StatusCode, reason: str | None = None) -> Any:
    with pytest.raises(grpc.RpcError) as caught:
        result = call()
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            list(result)
    if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNIMPLEMENTED):
        assert caught.value.code() == code  # type: ignore[attr-defined]
        return None
    details = error_details(caught.value)
    assert details.code == code, details
    if reason is not None:
        assert details.reason == reason or reason in details.violation_reasons.values(), details
    return details


# -- stats ---------------------------------------------------------------------------


def test_stats_of_an_audience_with_no_events_has_no_rates(client: Client) -> None:
    create(client, "fresh", recipients=7)
    stats = client.reports.GetCampaignStats(R.GetCampaignStatsRequest(campaign_id="fresh"), timeout=5).stats
    assert stats.overall.counts.total == stats.overall.counts.pending == 7
    for name in ("success_rate", "failure_rate", "delivery_not_confirmed_rate", "click_through_rate"):
        assert not stats.overall.rates.HasField(name), name  # type: ignore[arg-type]
    assert not stats.overall.rates.HasField("not_submitted_rate")
    assert not stats.HasField("first_event_time") and not stats.HasField("last_event_time")
    seq = record(client, "e1", "fresh", "r00001", 2, BASE_US, reason=("BAD", "bad"))
    stats = client.reports.GetCampaignStats(R.GetCampaignStatsRequest(campaign_id="fresh"), timeout=5).stats
    assert stats.sequence == seq
    assert stats.overall.rates.not_submitted_rate == 1.0
    assert not stats.overall.rates.HasField("success_rate")  # nothing submitted yet
    assert stats.first_event_time == ts(BASE_US) == stats.last_event_time
    assert [(b.key, b.counts.total) for b in stats.by_channel] == [("sms", 7)]


def test_stats_cost_does_not_read_messages(server: ServerThread, client: Client) -> None:
    """Stats come from counters: removing every message row leaves them as they were."""
    seed(server, "big", 3000)
    before = client.reports.GetCampaignStats(R.GetCampaignStatsRequest(campaign_id="big"), timeout=5).stats
    server.store.writer.run_sync(lambda tx: checks(tx.conn).execute("DELETE FROM messages"))
    after = client.reports.GetCampaignStats(R.GetCampaignStatsRequest(campaign_id="big"), timeout=5).stats
    assert before == after and before.overall.counts.total == 3000


# -- resume tokens -------------------------------------------------------------------


def test_message_report_resumes_after_every_page_without_gaps_or_duplicates(
    server: ServerThread, client: Client
) -> None:
    seed(server, "resume", 2300)
    filt = R.MessageFilter(statuses=[6, 5, 1])  # type: ignore[list-item]
    pages = list(
        client.reports.StreamMessageReport(
            R.StreamMessageReportRequest(campaign_id="resume", filter=filt, page_size=97)
        )
    )
    everything = [r.recipient for p in pages for r in p.rows]
    assert len(everything) == len(set(everything)) and everything == sorted(everything)
    assert all(len(p.rows) == 97 for p in pages[:-1]) and 0 < len(pages[-1].rows) <= 97
    assert {r.status for p in pages for r in p.rows} <= {6, 5, 1}
    done = 0
    for page in pages:
        done += len(page.rows)
        rest = [
            r.recipient
            for p in client.reports.StreamMessageReport(
                R.StreamMessageReportRequest(
                    campaign_id="resume", filter=filt, page_size=250, resume_token=page.resume_token
                )
            )
            for r in p.rows
        ]
        assert rest == everything[done:]
    # Statuses in another order are the same filter: the token still fits.
    same = R.MessageFilter(statuses=[1, 5, 6])  # type: ignore[list-item]
    rest = all_report_rows(client, "resume", filter=same, resume_token=pages[0].resume_token)[0]
    assert [r.recipient for r in rest] == everything[97:]


def test_click_report_and_history_resume(server: ServerThread, client: Client) -> None:
    seed(server, "clicks", 800, click_share=0.5)
    for call, req, items in (
        (client.reports.StreamClickReport, R.StreamClickReportRequest, "rows"),
        (client.reports.StreamMessageHistory, R.StreamMessageHistoryRequest, "events"),
    ):
        pages = list(call(req(campaign_id="clicks", page_size=50)))
        seqs = [x.sequence for p in pages for x in getattr(p, items)]
        assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)) > 100
        done = 0
        for page in pages[::3]:
            done = sum(len(getattr(p, items)) for p in pages[: pages.index(page) + 1])
            rest = [
                x.sequence
                for p in call(req(campaign_id="clicks", resume_token=page.resume_token))
                for x in getattr(p, items)
            ]
            assert rest == seqs[done:]


def test_bad_and_foreign_tokens_are_invalid_argument(server: ServerThread, client: Client) -> None:
    seed(server, "one", 300)
    seed(server, "two", 300)
    page = next(iter(client.reports.StreamMessageReport(R.StreamMessageReportRequest(campaign_id="one", page_size=10))))
    token = page.resume_token
    tampered = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    report = client.reports.StreamMessageReport
    for bad, reason in (
        (tampered, "BAD_TOKEN"),
        ("not a token", "BAD_TOKEN"),
        ("", None),
    ):
        if not bad:
            continue
        d = expect_error(
            lambda b=bad: report(R.StreamMessageReportRequest(campaign_id="one", resume_token=b)),
            grpc.StatusCode.INVALID_ARGUMENT,
            reason,
        )
        assert "resume_token" in d.violations
    # Another campaign, another filter, another kind of stream: TOKEN_MISMATCH.
    expect_error(
        lambda: report(R.StreamMessageReportRequest(campaign_id="two", resume_token=token)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "TOKEN_MISMATCH",
    )
    expect_error(
        lambda: report(
            R.StreamMessageReportRequest(campaign_id="one", filter=R.MessageFilter(channel="sms"), resume_token=token)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "TOKEN_MISMATCH",
    )
    expect_error(
        lambda: client.reports.StreamClickReport(R.StreamClickReportRequest(campaign_id="one", resume_token=token)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "TOKEN_MISMATCH",
    )


# -- cancellation and deadlines -------------------------------------------------------


class Probe:
    """Counts page reads and closes of report snapshots in the server. With
    `hold_after`, the read after that many waits until `release` is set
    (`held` is set meanwhile)."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        delay: float = 0.0,
        endless: bool = False,
        hold_after: int | None = None,
    ) -> None:
        self.fetches = 0
        self.closed = threading.Event()
        self.interrupted = threading.Event()
        self.held = threading.Event()
        self.release = threading.Event()
        from flowtrack.store.pg.store import PgSnapshot

        for cls in (sreports.Snapshot, PgSnapshot):  # the SQLite and the PostgreSQL snapshot
            self._patch(monkeypatch, cls, delay, endless, hold_after)

    def _patch(
        self, monkeypatch: pytest.MonkeyPatch, cls: Any, delay: float, endless: bool, hold_after: int | None
    ) -> None:
        probe = self
        fetch, close = cls.fetch, cls.close

        def slow_fetch(snapshot: Any, n: int) -> list[Any]:
            probe.fetches += 1
            if hold_after is not None and probe.fetches > hold_after:
                probe.held.set()
                probe.release.wait(60)
            if endless:  # a query that only an interrupt ends
                try:
                    snapshot.call(
                        lambda conn: conn.execute(
                            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
                        ).fetchone()
                    )
                except Exception:
                    probe.interrupted.set()
                    raise
            time.sleep(delay)
            result: list[Any] = fetch(snapshot, n)
            return result

        def spy_close(snapshot: Any) -> None:
            close(snapshot)
            probe.closed.set()

        monkeypatch.setattr(cls, "fetch", slow_fetch)
        monkeypatch.setattr(cls, "close", spy_close)


def test_cancelled_stream_stops_reading_pages(
    server: ServerThread, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(server, "cancel", 3000)
    probe = Probe(monkeypatch, delay=0.02)
    stream = client.reports.StreamMessageReport(R.StreamMessageReportRequest(campaign_id="cancel", page_size=10))
    assert len(next(stream).rows) == 10
    next(stream)
    stream.cancel()
    assert probe.closed.wait(30), "the snapshot was not closed after the cancel"
    assert probe.fetches < 10  # 300 pages were there to read; a closed snapshot reads none


def test_expired_deadline_interrupts_the_query_in_progress(
    server: ServerThread, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(server, "deadline", 100)
    probe = Probe(monkeypatch, endless=True)
    expect_error(
        lambda: client.reports.StreamMessageReport(R.StreamMessageReportRequest(campaign_id="deadline"), timeout=0.5),
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )
    # Only an interrupt ends that query: its end is the proof.
    assert probe.interrupted.wait(30), "the endless query was not interrupted"
    assert probe.closed.wait(30)


def settled(count: Callable[[], int]) -> int:
    """The value of `count` once it stops moving: the same over 20 looks
    0.05 s apart (within 30 s). Only a stall proves nothing is read ahead."""
    deadline = time.monotonic() + 30
    last, same = count(), 0
    while same < 20:
        assert time.monotonic() < deadline, "the count never settled"
        time.sleep(0.05)
        now = count()
        same = same + 1 if now == last else 0
        last = now
    return last


def test_slow_reader_holds_back_the_server(
    server: ServerThread, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that stops reading stops the server's reads (flow control):
    pages are not read ahead without bound."""
    seed(server, "slow", 4000)
    big = '{"k":"' + "x" * 8000 + '"}'  # 8 kB rows: 32 MB in all, far beyond the transport's buffers
    server.store.writer.run_sync(lambda tx: checks(tx.conn).execute("UPDATE messages SET input_vars = ?", (big,)))
    probe = Probe(monkeypatch)
    stream = client.reports.StreamMessageReport(R.StreamMessageReportRequest(campaign_id="slow", page_size=50))
    next(stream)
    held = settled(lambda: probe.fetches)
    print("pages read while the client waited:", held)
    assert held < 40  # of 80 pages: the server waits for the reader
    rows = sum(len(p.rows) for p in stream)
    assert rows == 3950 and probe.fetches >= 80


# -- watch --------------------------------------------------------------------------------


def test_watch_snapshot_then_coalesced_updates_then_ends_on_delete(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    create(client, "live", recipients=50)
    reads = {"n": 0}
    real = sreports.read_stats_by_cid

    def counting(*args: Any) -> Any:
        reads["n"] += 1
        return real(*args)

    monkeypatch.setattr(sreports, "read_stats_by_cid", counting)
    watchers = [
        client.reports.WatchCampaignStats(R.WatchCampaignStatsRequest(campaign_id="live"), timeout=60) for _ in range(3)
    ]
    got: list[list[tuple[float, Any]]] = [[] for _ in watchers]

    def collect(i: int) -> None:
        for message in watchers[i]:
            got[i].append((time.monotonic(), message.stats))

    threads = [threading.Thread(target=collect, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while not all(got) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all(g[0][1].overall.counts.pending == 50 for g in got)  # the snapshot at once
    reads_before = reads["n"]
    started = time.monotonic()
    last_seq = 0
    for i in range(40):  # 40 changes in about a second
        last_seq = record(client, f"w{i}", "live", f"r{i:05d}", 3, BASE_US + i)
        time.sleep(0.025)
    elapsed = time.monotonic() - started
    deadline = time.monotonic() + 30
    while not all(g[-1][1].sequence == last_seq for g in got) and time.monotonic() < deadline:
        time.sleep(0.01)
    for g in got:
        final = g[-1][1]
        assert final.sequence == last_seq and final.overall.counts.awaiting == 40 and final.overall.counts.pending == 10
        updates = [s for _, s in g[1:]]
        assert 1 <= len(updates) <= elapsed / 0.25 + 3  # coalesced: at most ~4 per second
        assert [s.sequence for s in updates] == sorted(s.sequence for s in updates)
    # One computation per change, shared by the three watchers.
    assert reads["n"] - reads_before <= elapsed / 0.25 + 6
    client.campaigns.DeleteCampaign(campaign_pb2.DeleteCampaignRequest(campaign_id="live"), timeout=5)
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive(), "the watch did not end after the campaign was deleted"
    for w in watchers:
        assert w.code() == grpc.StatusCode.OK


def test_watch_cancel_and_unknown_campaign(client: Client) -> None:
    create(client, "w")
    stream = client.reports.WatchCampaignStats(R.WatchCampaignStatsRequest(campaign_id="w"))
    assert next(stream).stats.campaign_id == "w"
    stream.cancel()
    assert stream.code() == grpc.StatusCode.CANCELLED
    expect_error(
        lambda: client.reports.WatchCampaignStats(R.WatchCampaignStatsRequest(campaign_id="nope")),
        grpc.StatusCode.NOT_FOUND,
    )


# -- subscribe ------------------------------------------------------------------------------


def test_subscribe_catches_up_in_pages_then_goes_live(server: ServerThread, client: Client) -> None:
    seed(server, "sub", 400)
    seed(server, "other", 50)
    stream = client.reports.SubscribeEvents(
        R.SubscribeEventsRequest(after_sequence=10, campaign_id="sub", page_size=64), timeout=20
    )
    seqs: list[int] = []
    for page in stream:
        assert len(page.events) <= 64
        seqs.extend(e.sequence for e in page.events)
        assert all(e.event.status.campaign_id == "sub" or e.event.click.campaign_id == "sub" for e in page.events)
        if page.caught_up:
            break
    assert seqs == sorted(seqs) and seqs[0] > 10 and len(seqs) == len(set(seqs))
    live = record(client, "live-1", "sub", "+551100000001", 6, BASE_US + 99)
    record(client, "live-2", "other", "x", 6, BASE_US + 99)  # another campaign: filtered out
    page = next(stream)
    assert [e.sequence for e in page.events] == [live] and page.caught_up
    assert page.events[0].event.status.event_id == "live-1"
    stream.cancel()


# -- timeline -----------------------------------------------------------------------------------


def test_timeline_buckets_are_utc_aligned(client: Client) -> None:
    create(client, "tl", recipients=4)
    day = BASE_US  # a UTC midnight
    record(client, "a", "tl", "r00000", 3, day + 5 * 3_600_000_000 + 59_000_000)
    record(client, "b", "tl", "r00000", 6, day + 5 * 3_600_000_000 + 61_000_000)
    record(client, "c", "tl", "r00001", 5, day + 30 * 3_600_000_000, reason=("X", ""))
    hours = client.reports.GetCampaignTimeline(R.GetCampaignTimelineRequest(campaign_id="tl"), timeout=5)
    assert [(b.start_time.seconds * 1_000_000 - day) // 3_600_000_000 for b in hours.buckets] == [5, 30]
    assert (hours.buckets[0].submitted, hours.buckets[0].success, hours.buckets[1].failed) == (1, 1, 1)
    minutes = client.reports.GetCampaignTimeline(R.GetCampaignTimelineRequest(campaign_id="tl", width=1), timeout=5)
    assert [b.start_time.seconds % 60 for b in minutes.buckets] == [0, 0, 0] and len(minutes.buckets) == 3
    days = client.reports.GetCampaignTimeline(R.GetCampaignTimelineRequest(campaign_id="tl", width=3), timeout=5)
    assert [b.start_time.seconds * 1_000_000 for b in days.buckets] == [day, day + 86_400_000_000]
    window = client.reports.GetCampaignTimeline(
        R.GetCampaignTimelineRequest(campaign_id="tl", start_time=ts(day + 6 * 3_600_000_000)), timeout=5
    )
    assert len(window.buckets) == 1 and window.buckets[0].failed == 1
    assert window.sequence == hours.sequence


# -- unhappy paths ------------------------------------------------------------------------------


def test_every_rpc_answers_not_found_for_unknown_and_foreign_campaigns(server: ServerThread, client: Client) -> None:
    seed(server, "theirs", 20, business="another-business")
    rp = client.reports
    for campaign in ("missing", "theirs"):
        calls: list[Callable[[], Any]] = [
            lambda c=campaign: rp.GetCampaignStats(R.GetCampaignStatsRequest(campaign_id=c)),
            lambda c=campaign: rp.WatchCampaignStats(R.WatchCampaignStatsRequest(campaign_id=c)),
            lambda c=campaign: rp.StreamMessageReport(R.StreamMessageReportRequest(campaign_id=c)),
            lambda c=campaign: rp.StreamMessageHistory(R.StreamMessageHistoryRequest(campaign_id=c)),
            lambda c=campaign: rp.StreamFailureReasons(R.StreamFailureReasonsRequest(campaign_id=c)),
            lambda c=campaign: rp.StreamClickReport(R.StreamClickReportRequest(campaign_id=c)),
            lambda c=campaign: rp.GetClickBreakdown(R.GetClickBreakdownRequest(campaign_id=c)),
            lambda c=campaign: rp.GetCampaignTimeline(R.GetCampaignTimelineRequest(campaign_id=c)),
            lambda c=campaign: rp.SubscribeEvents(R.SubscribeEventsRequest(campaign_id=c)),
        ]
        for call in calls:
            expect_error(call, grpc.StatusCode.NOT_FOUND, "CAMPAIGN_NOT_FOUND")


def test_bad_requests_are_invalid_argument(server: ServerThread, client: Client) -> None:
    seed(server, "c", 10)
    rp = client.reports
    ia = grpc.StatusCode.INVALID_ARGUMENT
    cases: list[tuple[Callable[[], Any], str]] = [
        (lambda: rp.GetCampaignStats(R.GetCampaignStatsRequest()), "campaign_id"),
        (lambda: rp.WatchCampaignStats(R.WatchCampaignStatsRequest()), "campaign_id"),
        (lambda: rp.StreamMessageReport(R.StreamMessageReportRequest(campaign_id="c", page_size=-1)), "page_size"),
        (lambda: rp.StreamMessageHistory(R.StreamMessageHistoryRequest(campaign_id="c", page_size=-5)), "page_size"),
        (lambda: rp.StreamClickReport(R.StreamClickReportRequest(campaign_id="c", page_size=-1)), "page_size"),
        (lambda: rp.StreamFailureReasons(R.StreamFailureReasonsRequest(campaign_id="c", page_size=-1)), "page_size"),
        (
            lambda: rp.StreamFailureReasons(R.StreamFailureReasonsRequest(campaign_id="c", sample_size=-1)),
            "sample_size",
        ),
        (lambda: rp.SubscribeEvents(R.SubscribeEventsRequest(page_size=-1)), "page_size"),
        (lambda: rp.SubscribeEvents(R.SubscribeEventsRequest(after_sequence=-1)), "after_sequence"),
        (
            lambda: rp.StreamMessageReport(
                R.StreamMessageReportRequest(campaign_id="c", filter=R.MessageFilter(statuses=[99]))  # type: ignore[list-item]
            ),  # type: ignore[list-item]
            "filter.statuses[0]",
        ),
        (
            lambda: rp.StreamMessageReport(
                R.StreamMessageReportRequest(campaign_id="c", filter=R.MessageFilter(channel="x" * 33))
            ),
            "filter.channel",
        ),
        (
            lambda: rp.StreamMessageReport(
                R.StreamMessageReportRequest(
                    campaign_id="c", filter=R.MessageFilter(updated_after=ts(BASE_US), updated_before=ts(BASE_US))
                )
            ),
            "filter.updated_before",
        ),
        (
            lambda: rp.StreamClickReport(
                R.StreamClickReportRequest(campaign_id="c", filter=R.ClickFilter(country_code="Brazil"))
            ),
            "filter.country_code",
        ),
        (lambda: rp.GetCampaignTimeline(R.GetCampaignTimelineRequest(campaign_id="c", width=9)), "width"),  # type: ignore[arg-type]
        (
            lambda: rp.GetCampaignTimeline(
                R.GetCampaignTimelineRequest(campaign_id="c", start_time=ts(BASE_US), end_time=ts(BASE_US))
            ),
            "end_time",
        ),
    ]
    for call, field in cases:
        details = expect_error(call, ia)
        assert field in details.violations, (field, details)
    details = expect_error(lambda: rp.ExportReport(R.ExportReportRequest(campaign_id="c", format=9)), ia)  # type: ignore[arg-type]
    assert "format" in details.violations, details


def test_timeline_refuses_too_many_buckets(client: Client) -> None:
    create(client, "long", recipients=2)
    record(client, "old", "long", "r00000", 3, BASE_US - 365 * 86_400_000_000)
    record(client, "new", "long", "r00001", 3, BASE_US)
    expect_error(
        lambda: client.reports.GetCampaignTimeline(R.GetCampaignTimelineRequest(campaign_id="long", width=1)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "TOO_MANY_BUCKETS",
    )
    days = client.reports.GetCampaignTimeline(R.GetCampaignTimelineRequest(campaign_id="long", width=3))
    assert len(days.buckets) == 2


def test_page_size_default_and_cap(server: ServerThread, client: Client) -> None:
    seed(server, "sizes", 2600)
    sizes = [len(p.rows) for p in client.reports.StreamMessageReport(R.StreamMessageReportRequest(campaign_id="sizes"))]
    assert sizes == [500] * 5 + [100]
    sizes = [
        len(p.rows)
        for p in client.reports.StreamMessageReport(R.StreamMessageReportRequest(campaign_id="sizes", page_size=5000))
    ]
    assert sizes == [1000, 1000, 600]
    empty = list(
        client.reports.StreamMessageReport(
            R.StreamMessageReportRequest(campaign_id="sizes", filter=R.MessageFilter(recipient="nobody"))
        )
    )
    assert len(empty) == 1 and not empty[0].rows and empty[0].sequence > 0
