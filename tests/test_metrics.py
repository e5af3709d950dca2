"""/metrics: scraped after real traffic, parsed with prometheus_client's own parser."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import timestamp_pb2
from prometheus_client.parser import text_string_to_metric_families

from flowtrack.domain.keys import Scope
from flowtrack.v1 import campaign_pb2, common_pb2, ingest_pb2, report_pb2
from tests.conftest import ServerThread, database_of, make_client, start_server
from tests.tenants import create_key, keyed_client

DEADLINE = 30.0
# Every label a flowtrack metric may carry: none names a business or a campaign.
ALLOWED_LABELS = {"grpc_type", "grpc_service", "grpc_method", "grpc_code", "kind", "result", "file", "le", "table"}


def scrape(server: ServerThread) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """sample name and sorted labels -> value."""
    assert server.running.http is not None
    response = httpx.get(server.running.http.url + "/metrics", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            assert set(sample.labels) <= ALLOWED_LABELS, sample
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def status(
    event_id: str, recipient: str, campaign: str = "m1", code: int = common_pb2.MESSAGE_STATUS_SUBMITTED, **extra: Any
) -> ingest_pb2.StatusEvent:
    now = timestamp_pb2.Timestamp(seconds=int(time.time()) - 5)
    return ingest_pb2.StatusEvent(
        event_id=event_id, campaign_id=campaign, recipient=recipient, status=code, occurred_at=now, **extra
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    running = start_server(tmp_path, http="127.0.0.1:0", strict_campaigns=True)
    yield running
    running.stop()


GRPC = {"grpc_service": "flowtrack.v1.IngestService"}


def test_ingest_moves_the_counters(server: ServerThread) -> None:
    client = make_client(server.address)
    client.campaigns.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id="m1")))
    before = scrape(server)
    now = timestamp_pb2.Timestamp(seconds=int(time.time()) - 5)
    batch = [
        ingest_pb2.Event(status=status("a1", "+1")),
        ingest_pb2.Event(status=status("a2", "+2")),
        ingest_pb2.Event(status=status("a1", "+1")),  # duplicate
        ingest_pb2.Event(status=status("a2", "+3")),  # conflict: same id, other payload
        ingest_pb2.Event(status=status("bad", "")),  # invalid: no recipient
        ingest_pb2.Event(status=status("nowhere", "+4", campaign="unknown")),  # rejected: strict campaigns
        ingest_pb2.Event(
            click=ingest_pb2.ClickEvent(event_id="k1", campaign_id="m1", recipient="+1", link_id="L", occurred_at=now)
        ),
    ]
    replies = list(client.ingest.StreamEvents(iter([ingest_pb2.StreamEventsRequest(events=batch)] * 2)))
    assert [r.accepted for r in replies] == [3, 0]
    client.ingest.RecordStatusEvent(ingest_pb2.RecordStatusEventRequest(event=status("u1", "+9")))
    with pytest.raises(grpc.RpcError) as bad:
        client.ingest.RecordStatusEvent(ingest_pb2.RecordStatusEventRequest(event=status("u2", "")))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as missing:
        client.reports.GetCampaignStats(report_pb2.GetCampaignStatsRequest(campaign_id="nope"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    after = scrape(server)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    events = "flowtrack_events_total"
    assert moved(events, kind="status", result="accepted") == 3  # a1, a2 (first batch), u1
    # Batch 1: a1 twice (1 duplicate). Batch 2 repeats it: a1, a2, a1 are duplicates (a2' stays a conflict).
    assert moved(events, kind="status", result="duplicate") == 1 + 3
    assert moved(events, kind="status", result="conflict") == 2
    assert moved(events, kind="status", result="invalid") == 2 + 1
    assert moved(events, kind="status", result="rejected") == 2
    assert moved(events, kind="click", result="accepted") == 1
    assert moved(events, kind="click", result="duplicate") == 1

    bidi = {**GRPC, "grpc_method": "StreamEvents", "grpc_type": "bidi_stream"}
    assert moved("grpc_server_started_total", **bidi) == 1
    assert moved("grpc_server_handled_total", **bidi, grpc_code="OK") == 1
    assert moved("grpc_server_msg_received_total", **bidi) == 2
    assert moved("grpc_server_msg_sent_total", **bidi) == 2
    unary = {**GRPC, "grpc_method": "RecordStatusEvent", "grpc_type": "unary"}
    assert moved("grpc_server_started_total", **unary) == 2
    assert moved("grpc_server_handled_total", **unary, grpc_code="OK") == 1
    assert moved("grpc_server_handled_total", **unary, grpc_code="INVALID_ARGUMENT") == 1
    assert moved("grpc_server_handling_seconds_count", **unary) == 2
    stats = {"grpc_service": "flowtrack.v1.ReportService", "grpc_method": "GetCampaignStats", "grpc_type": "unary"}
    assert moved("grpc_server_handled_total", **stats, grpc_code="NOT_FOUND") == 1

    assert moved("flowtrack_commit_seconds_count") >= 1
    assert moved("flowtrack_commit_rows_sum") >= 4
    if not server.settings.database.startswith("postgresql://"):  # file sizes: SQLite's files only
        assert value(after, "flowtrack_database_bytes", file="main") > 0
    assert ("flowtrack_writer_queued_rows", ()) in after
    client.channel.close()


def test_a_duplicate_within_one_batch(server: ServerThread) -> None:
    client = make_client(server.address)
    client.campaigns.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id="m1")))
    batch = [ingest_pb2.Event(status=status("a1", "+1")), ingest_pb2.Event(status=status("a1", "+1"))]
    replies = list(client.ingest.StreamEvents(iter([ingest_pb2.StreamEventsRequest(events=batch)])))
    outcomes = [r.outcome for r in replies[0].results]
    assert outcomes == [ingest_pb2.EVENT_OUTCOME_ACCEPTED, ingest_pb2.EVENT_OUTCOME_DUPLICATE]
    samples = scrape(server)
    assert value(samples, "flowtrack_events_total", kind="status", result="duplicate") == 1
    client.channel.close()


def test_streams_open_by_rpc(server: ServerThread) -> None:
    client = make_client(server.address)
    client.campaigns.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id="m1")))
    labels = {"grpc_service": "flowtrack.v1.ReportService", "grpc_method": "WatchCampaignStats"}
    watch = client.reports.WatchCampaignStats(report_pb2.WatchCampaignStatsRequest(campaign_id="m1"))
    first = threading.Event()

    def read() -> None:
        try:
            for _ in watch:
                first.set()
        except grpc.RpcError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert first.wait(DEADLINE)
    assert value(scrape(server), "flowtrack_streams_open", **labels) == 1
    watch.cancel()
    reader.join(DEADLINE)
    wait_for(lambda: value(scrape(server), "flowtrack_streams_open", **labels) == 0, "the stream to close")
    samples = scrape(server)
    handled = {**labels, "grpc_type": "server_stream", "grpc_code": "CANCELLED"}
    wait_for(lambda: value(scrape(server), "grpc_server_handled_total", **handled) == 1, "the cancel to be counted")
    assert value(samples, "grpc_server_msg_sent_total", **labels, grpc_type="server_stream") >= 1
    client.channel.close()


def test_refused_calls_are_counted_with_their_code(tmp_path: Path) -> None:
    create_key(database_of(tmp_path), "acme", Scope.READ)
    server = start_server(tmp_path, http="127.0.0.1:0")
    try:
        client = keyed_client(server.address, None)
        with pytest.raises(grpc.RpcError) as refused:
            client.campaigns.ListCampaigns(campaign_pb2.ListCampaignsRequest())
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        samples = scrape(server)
        labels = {"grpc_service": "flowtrack.v1.CampaignService", "grpc_method": "ListCampaigns", "grpc_type": "unary"}
        assert value(samples, "grpc_server_started_total", **labels) == 1
        assert value(samples, "grpc_server_handled_total", **labels, grpc_code="UNAUTHENTICATED") == 1
        client.channel.close()
    finally:
        server.stop()


def test_each_server_has_its_own_registry(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = start_server(tmp_path / "one", http="127.0.0.1:0")
    two = start_server(tmp_path / "two", http="127.0.0.1:0")
    try:
        client = make_client(one.address)
        client.campaigns.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id="x")))
        client.channel.close()
        labels = {"grpc_service": "flowtrack.v1.CampaignService", "grpc_method": "CreateCampaign", "grpc_type": "unary"}
        assert value(scrape(one), "grpc_server_started_total", **labels) == 1
        assert value(scrape(two), "grpc_server_started_total", **labels) == 0
    finally:
        one.stop()
        two.stop()


def test_engagement_events_are_counted_as_their_own_kind(server: ServerThread) -> None:
    client = make_client(server.address)
    client.campaigns.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id="m1")))
    now = timestamp_pb2.Timestamp(seconds=int(time.time()) - 5)
    read = ingest_pb2.EngagementEvent(
        event_id="r1", campaign_id="m1", recipient="+1", kind=ingest_pb2.ENGAGEMENT_KIND_READ, occurred_at=now
    )
    client.ingest.RecordEngagementEvent(ingest_pb2.RecordEngagementEventRequest(event=read))
    batch = [ingest_pb2.Event(engagement=read), ingest_pb2.Event(engagement=ingest_pb2.EngagementEvent(event_id="x"))]
    list(client.ingest.StreamEvents(iter([ingest_pb2.StreamEventsRequest(events=batch)])))
    samples = scrape(server)
    assert value(samples, "flowtrack_events_total", kind="engagement", result="accepted") == 1
    assert value(samples, "flowtrack_events_total", kind="engagement", result="duplicate") == 1
    assert value(samples, "flowtrack_events_total", kind="engagement", result="invalid") == 1
    client.channel.close()
