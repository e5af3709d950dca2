"""Limits: message size, concurrent RPCs (health never starved), keepalive
enforcement, and the flags and variables that set them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flowtrack.cli import cli
from flowtrack.config import Settings
from flowtrack.server import grpc_concurrency_cap, server_options
from flowtrack.v1 import campaign_pb2, ingest_pb2
from tests.conftest import error_details, make_client, start_server
from tests.test_ingest import batch, status


def _serving(channel: grpc.Channel) -> bool:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def test_oversize_message_is_resource_exhausted_and_the_server_carries_on(tmp_path: Path) -> None:
    running = start_server(tmp_path, max_receive_message_bytes=64 * 1024)
    client = make_client(running.address)
    try:
        big = status("big", input_variables={"blob": "x" * 100_000})
        with pytest.raises(grpc.RpcError) as raised:
            client.ingest.RecordStatusEvent(ingest_pb2.RecordStatusEventRequest(event=big), timeout=10)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        # In a stream, the stream ends RESOURCE_EXHAUSTED (batches before it may or may not be answered first).
        replies = client.ingest.StreamEvents(iter([batch(status("s1")), batch(big)]), timeout=10)
        with pytest.raises(grpc.RpcError) as raised:
            for _ in replies:
                pass
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        # The server is fine: the same channel works.
        reply = client.ingest.RecordStatusEvent(ingest_pb2.RecordStatusEventRequest(event=status("ok")), timeout=10)
        assert reply.result.outcome == ingest_pb2.EVENT_OUTCOME_ACCEPTED
        assert _serving(client.channel)
    finally:
        client.channel.close()
        running.stop()


class _Held:
    """`count` StreamEvents streams held open (each has had a batch answered)."""

    def __init__(self, client: Any, count: int) -> None:
        self.release = threading.Event()
        self.streams = []
        for n in range(count):
            replies = client.ingest.StreamEvents(self._requests(n), timeout=60)
            assert next(replies).accepted == 1
            self.streams.append(replies)

    def _requests(self, n: int) -> Iterator[ingest_pb2.StreamEventsRequest]:
        yield batch(status(f"held-{n}"))
        self.release.wait(60)

    def finish(self) -> None:
        self.release.set()
        for replies in self.streams:
            assert list(replies) == []


def test_concurrency_cap_refuses_extras_quickly_and_health_stays_serving(tmp_path: Path) -> None:
    running = start_server(tmp_path, max_concurrent_rpcs=3)
    client = make_client(running.address)
    try:
        held = _Held(client, 3)
        # Refused, not queued: the three slots stay taken until held.finish(),
        # so a call waiting for one would end DEADLINE_EXCEEDED, never this.
        with pytest.raises(grpc.RpcError) as raised:
            client.ingest.RecordStatusEvent(ingest_pb2.RecordStatusEventRequest(event=status("extra")), timeout=30)
        assert not held.release.is_set()
        details = error_details(raised.value)
        assert (details.code, details.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_CONCURRENT_RPCS")
        with pytest.raises(grpc.RpcError):
            client.campaigns.ListCampaigns(campaign_pb2.ListCampaignsRequest(), timeout=10)
        # Health is counted apart: still answered, and still SERVING.
        for _ in range(20):
            assert _serving(client.channel)
        held.finish()
        deadline = time.monotonic() + 30
        while True:  # the slots come back as the streams end
            try:
                client.campaigns.ListCampaigns(campaign_pb2.ListCampaignsRequest(), timeout=10)
                break
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        client.channel.close()
        running.stop()


def test_health_has_its_own_cap(tmp_path: Path) -> None:
    running = start_server(tmp_path, max_concurrent_health_rpcs=2)
    channel = grpc.insecure_channel(running.address)
    client = make_client(running.address)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(2)]
        for watch in watches:
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as raised:
            health.Check(health_pb2.HealthCheckRequest(), timeout=30)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        # flowtrack's own pool is untouched.
        client.campaigns.ListCampaigns(campaign_pb2.ListCampaignsRequest(), timeout=10)
        for watch in watches:
            watch.cancel()
        deadline = time.monotonic() + 30
        while True:
            try:
                assert _serving(channel)
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        channel.close()
        client.channel.close()
        running.stop()


def test_keepalive_enforcement_sends_too_many_pings_goaway(tmp_path: Path) -> None:
    running = start_server(tmp_path, min_ping_interval=5.0)
    pesky = grpc.insecure_channel(
        running.address,
        options=[
            ("grpc.keepalive_time_ms", 100),
            ("grpc.keepalive_timeout_ms", 20_000),  # only the server may end this connection
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ],
    )
    try:
        watch = health_pb2_grpc.HealthStub(pesky).Watch(health_pb2.HealthCheckRequest(), timeout=30)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as raised:
            next(watch)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        assert "ping" in (raised.value.details() or "").lower()  # type: ignore[attr-defined]
        # Well-behaved clients are unaffected.
        with grpc.insecure_channel(running.address) as polite:
            assert _serving(polite)
    finally:
        pesky.close()
        running.stop()


def test_server_options_follow_the_settings() -> None:
    options = dict(server_options(Settings(min_ping_interval=7, max_connection_idle=0, max_connection_age=60, grace=3)))
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 7000
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert "grpc.max_connection_idle_ms" not in options
    assert (options["grpc.max_connection_age_ms"], options["grpc.max_connection_age_grace_ms"]) == (60000, 3000)
    # grpc's own cap sits above both pools; no cap at all when flowtrack's is off.
    assert grpc_concurrency_cap(Settings(max_concurrent_rpcs=10, max_concurrent_health_rpcs=5)) == 115
    assert grpc_concurrency_cap(Settings(max_concurrent_rpcs=0)) is None


def test_limits_and_tls_from_flags_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Settings] = []

    async def fake_serve(settings: Settings) -> None:
        seen.append(settings)

    monkeypatch.setattr("flowtrack.server.serve", fake_serve)
    cert = tmp_path / "cert.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    result = CliRunner().invoke(
        cli,
        ["serve", "--max-concurrent-rpcs", "7", "--tls-cert", str(cert), "--keepalive-time", "30"],
        env={
            "FLOWTRACK_MAX_RECEIVE_MESSAGE_BYTES": "1024",
            "FLOWTRACK_KEY_CACHE_SECONDS": "1.5",
            "FLOWTRACK_TLS_KEY": str(cert),
        },
    )
    assert result.exit_code == 0, result.output
    [settings] = seen
    assert settings.max_concurrent_rpcs == 7
    assert settings.max_receive_message_bytes == 1024
    assert settings.key_cache_seconds == 1.5
    assert settings.keepalive_time == 30
    assert settings.tls_cert == settings.tls_key == str(cert)
    assert settings.tls_client_ca is None


def test_one_key_cannot_take_every_stream(tmp_path: Path) -> None:
    """--max-streams-per-key: a key holding its cap of open server streams
    (gRPC and the page's live stats together) gets RESOURCE_EXHAUSTED with a
    QuotaFailure naming the cap (429 over HTTP); another key still streams,
    and a stream closed gives its slot back."""
    import httpx
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    from flowtrack.domain.keys import Scope, key_id_of
    from flowtrack.v1 import report_pb2
    from tests.conftest import database_of
    from tests.tenants import create_key, keyed_client

    db = database_of(tmp_path)
    admin = create_key(db, "acme", Scope.ADMIN)
    greedy = create_key(db, "acme", Scope.READ)
    other = create_key(db, "acme", Scope.READ)
    running = start_server(tmp_path, max_streams_per_key=3, http="127.0.0.1:0")
    assert running.running.http is not None
    url = running.running.http.url
    clients = [keyed_client(running.address, key) for key in (admin, greedy, other)]
    setup, mine, theirs = clients
    try:
        setup.campaigns.CreateCampaign(
            campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id="c-1", name="c"))
        )
        watch = report_pb2.WatchCampaignStatsRequest(campaign_id="c-1")
        held = [mine.reports.WatchCampaignStats(watch, timeout=60) for _ in range(2)]
        for stream in held:
            next(stream)
        # The third slot: the page's live stats, with the same key.
        with (
            httpx.Client(base_url=url, headers={"authorization": f"Bearer {greedy}"}, timeout=30) as h,
            h.stream("GET", "/api/campaigns/c-1/live") as live,
        ):
            assert live.status_code == 200
            lines = live.iter_lines()
            assert next(lines) == "retry: 2000"
            # Every kind of server stream is refused now, over gRPC ...
            calls: list[Callable[[], Any]] = [
                lambda: next(mine.reports.WatchCampaignStats(watch, timeout=30)),
                lambda: next(
                    mine.reports.StreamMessageReport(report_pb2.StreamMessageReportRequest(campaign_id="c-1"))
                ),
            ]
            for call in calls:
                with pytest.raises(grpc.RpcError) as raised:
                    call()
                details = error_details(raised.value)
                assert (details.code, details.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_STREAMS")
                assert "3 open streams" in details.message and "--max-streams-per-key" in details.message
                status = rpc_status.from_call(raised.value)  # type: ignore[arg-type]
                assert status is not None
                quota = error_details_pb2.QuotaFailure()
                assert any(d.Unpack(quota) for d in status.details if d.Is(quota.DESCRIPTOR))
                assert quota.violations[0].subject == f"api_key:{key_id_of(greedy)}"
                assert quota.violations[0].description == "open streams per API key: at most 3"
            # ... and over HTTP.
            r = h.get("/api/campaigns/c-1/live")
            assert r.status_code == 429
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["reason"] == "TOO_MANY_STREAMS"
            assert "--max-streams-per-key" in r.json()["detail"]
            assert r.json()["quota"] == [
                {"subject": f"api_key:{key_id_of(greedy)}", "description": "open streams per API key: at most 3"}
            ]
            # Unary calls are not streams: still answered.
            mine.campaigns.ListCampaigns(campaign_pb2.ListCampaignsRequest(), timeout=30)
            # Another key is not affected, on either door.
            assert next(theirs.reports.WatchCampaignStats(watch, timeout=30)).stats.campaign_id == "c-1"
            with (
                httpx.Client(base_url=url, headers={"authorization": f"Bearer {other}"}, timeout=30) as o,
                o.stream("GET", "/api/campaigns/c-1/live") as second,
            ):
                assert second.status_code == 200
        # The live stream closed and one gRPC watch cancelled: two slots back.
        held.pop().cancel()
        deadline = time.monotonic() + 30
        while True:
            try:
                for _ in range(2):
                    held.append(mine.reports.WatchCampaignStats(watch, timeout=60))
                    next(held[-1])
                break
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
                held.pop()
                assert time.monotonic() < deadline
                time.sleep(0.05)
        for stream in held:
            stream.cancel()
    finally:
        for client in clients:
            client.channel.close()
        running.stop()
