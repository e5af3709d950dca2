"""Reports delivered (issue 14) against a real server: campaigns that
complete by themselves, signed webhooks from the outbox to a real HTTP
receiver on loopback, report schedules whose runs download through signed
links, and tenants that cannot see each other's endpoints or runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from flowtrack.domain.times import now_us
from flowtrack.v1 import campaign_pb2, common_pb2, delivery_pb2, delivery_pb2_grpc, report_pb2
from tests.conftest import ServerThread, make_client, start_server
from tests.receivers import Receiver, wait_until
from tests.report_helpers import add_recipients, send_events, status_event

S = common_pb2.MessageStatus
FAST = {"webhook_allow_private": True, "webhook_retry_base": 0.05, "scheduler_tick": 0.2}


class Api:
    def __init__(self, address: str, key: str | None = None) -> None:
        self.client = make_client(address)
        channel = self.client.channel
        if key is not None:
            channel = grpc.intercept_channel(channel, _KeyInterceptor(key))
            self.client = make_client(address)
            self.client.campaigns.__init__(channel)  # type: ignore[misc]
            self.client.ingest.__init__(channel)  # type: ignore[misc]
            self.client.reports.__init__(channel)  # type: ignore[misc]
        self.webhooks = delivery_pb2_grpc.WebhookServiceStub(channel)
        self.schedules = delivery_pb2_grpc.ReportScheduleServiceStub(channel)


class _KeyInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.StreamUnaryClientInterceptor,
                      grpc.UnaryStreamClientInterceptor, grpc.StreamStreamClientInterceptor):  # fmt: skip
    def __init__(self, key: str) -> None:
        self.key = key

    def _details(self, details: Any) -> Any:
        metadata = [*(details.metadata or []), ("authorization", f"Bearer {self.key}")]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


@pytest.fixture
def fast(tmp_path: Path) -> Iterator[ServerThread]:
    running = start_server(tmp_path, http="127.0.0.1:0", **FAST)
    yield running
    running.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def make_campaign(api: Api, campaign_id: str, recipients: int, **fields: Any) -> None:
    api.client.campaigns.CreateCampaign(
        campaign_pb2.CreateCampaignRequest(
            campaign=campaign_pb2.Campaign(id=campaign_id, state=campaign_pb2.CAMPAIGN_STATE_RUNNING, **fields)
        )
    )
    add_recipients(api.client, campaign_id, [(f"+1555{i:07d}", "sms", "") for i in range(recipients)])


def finish_all(api: Api, campaign_id: str, recipients: int, *, failed: int = 0, prefix: str = "e") -> None:
    """Every recipient SUBMITTED then SUCCESS (the first `failed` FAILED)."""
    at = now_us() - 60_000_000
    events = []
    for i in range(recipients):
        r = f"+1555{i:07d}"
        events.append(status_event(f"{prefix}s{i}", campaign_id, r, S.MESSAGE_STATUS_SUBMITTED, at))
        if i < failed:
            final = status_event(
                f"{prefix}f{i}", campaign_id, r, S.MESSAGE_STATUS_FAILED, at + 1000, reason=("E1", "bounced")
            )
        else:
            final = status_event(f"{prefix}f{i}", campaign_id, r, S.MESSAGE_STATUS_SUCCESS, at + 1000)
        events.append(final)
    results = send_events(api.client, events)
    assert all(r.outcome == 1 for r in results), results[:3]


def add_endpoint(api: Api, url: str, *events: str, **fields: Any) -> delivery_pb2.CreateWebhookEndpointResponse:
    return api.webhooks.CreateWebhookEndpoint(
        delivery_pb2.CreateWebhookEndpointRequest(
            endpoint=delivery_pb2.WebhookEndpoint(url=url, events=list(events), **fields)
        )
    )


def get_campaign(api: Api, campaign_id: str) -> campaign_pb2.Campaign:
    return api.client.campaigns.GetCampaign(campaign_pb2.GetCampaignRequest(campaign_id=campaign_id)).campaign


# -- 1. completion ----------------------------------------------------------------------------
def test_campaign_completes_when_every_recipient_is_final_and_the_receiver_gets_one_verified_event(
    fast: ServerThread, receiver: Receiver
) -> None:
    api = Api(fast.address)
    created = add_endpoint(api, receiver.url, "campaign.completed")
    assert created.secret.startswith("whsec_")
    make_campaign(api, "spring", 20)
    finish_all(api, "spring", 20, failed=3)
    campaign = get_campaign(api, "spring")
    assert campaign.state == campaign_pb2.CAMPAIGN_STATE_COMPLETED
    assert campaign.HasField("complete_time")

    bodies = wait_until(lambda: receiver.delivered(created.secret), what="a delivery")
    assert len(bodies) == 1
    body = bodies[0]
    assert body["type"] == "campaign.completed"
    data = body["data"]
    assert data["campaign_id"] == "spring" and data["reason"] == "all_final"
    assert data["stats"]["total"] == 20 and data["stats"]["failed"] == 3 and data["stats"]["success"] == 17

    # Late events still count; completion is not emitted again.
    late = status_event("late1", "spring", "+15550000000", S.MESSAGE_STATUS_SUCCESS, now_us(), attempt=2)
    assert send_events(api.client, [late])[0].outcome == 1
    stats = api.client.reports.GetCampaignStats(report_pb2.GetCampaignStatsRequest(campaign_id="spring")).stats
    assert (stats.overall.counts.success, stats.overall.counts.failed) == (18, 2)
    assert get_campaign(api, "spring").state == campaign_pb2.CAMPAIGN_STATE_COMPLETED
    deliveries = api.webhooks.ListWebhookDeliveries(delivery_pb2.ListWebhookDeliveriesRequest()).deliveries
    assert [d.type for d in deliveries] == ["campaign.completed"]
    assert len(receiver.requests) == 1


def test_quiet_campaign_completes_after_its_quiet_period_and_a_cancelled_one_never(
    fast: ServerThread, receiver: Receiver
) -> None:
    api = Api(fast.address)
    secret = add_endpoint(api, receiver.url, "campaign.completed").secret
    quiet = duration_pb2.Duration(seconds=1)
    make_campaign(api, "quiet", 5, quiet_period=quiet)
    make_campaign(api, "stopped", 5, quiet_period=quiet)
    at = now_us() - 1_000_000
    submitted = S.MESSAGE_STATUS_SUBMITTED
    events = [
        status_event(f"{c}{i}", c, f"+1555{i:07d}", submitted, at) for c in ("quiet", "stopped") for i in range(5)
    ]
    send_events(api.client, events)
    api.client.campaigns.UpdateCampaign(
        campaign_pb2.UpdateCampaignRequest(
            campaign=campaign_pb2.Campaign(id="stopped", state=campaign_pb2.CAMPAIGN_STATE_CANCELLED),
            update_mask={"paths": ["state"]},
        )
    )
    assert get_campaign(api, "quiet").quiet_period.seconds == 1
    completed = campaign_pb2.CAMPAIGN_STATE_COMPLETED
    wait_until(lambda: get_campaign(api, "quiet").state == completed, what="quiet completion")
    bodies = wait_until(lambda: receiver.delivered(secret), what="a delivery")
    assert [b["data"]["campaign_id"] for b in bodies] == ["quiet"]
    assert bodies[0]["data"]["reason"] == "quiet_period"
    assert bodies[0]["data"]["stats"]["awaiting"] == 5
    assert get_campaign(api, "stopped").state == campaign_pb2.CAMPAIGN_STATE_CANCELLED
