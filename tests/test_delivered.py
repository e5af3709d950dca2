"""Reports delivered (issue 14) against a real server: campaigns that
complete by themselves, signed webhooks from the outbox to a real HTTP
receiver on loopback, report schedules whose runs download through signed
links, and tenants that cannot see each other's endpoints or runs."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, json_format, timestamp_pb2

from flowtrack.delivery.setup import reports_dir
from flowtrack.domain.times import now_us
from flowtrack.store.base import is_postgres
from flowtrack.v1 import campaign_pb2, common_pb2, delivery_pb2, delivery_pb2_grpc, ingest_pb2, report_pb2
from tests.conftest import ServerThread, connect_db, database_of, error_details, make_client, start_server
from tests.receivers import RawEndpoint, Receiver, wait_until
from tests.report_helpers import add_recipients, send_events, status_event
from tests.schema_helpers import build_legacy
from tests.tenants import create_key, keyed_client

S = common_pb2.MessageStatus
FAST = {"webhook_allow_private": True, "webhook_retry_base": 0.05, "scheduler_tick": 0.2}


class Api:
    """Every stub on one channel (with an API key if given)."""

    def __init__(self, address: str, key: str | None = None) -> None:
        self.client = keyed_client(address, key) if key else make_client(address)
        channel = self.client.channel
        self.webhooks = delivery_pb2_grpc.WebhookServiceStub(channel)
        self.schedules = delivery_pb2_grpc.ReportScheduleServiceStub(channel)


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
    assert stats.state == campaign_pb2.CAMPAIGN_STATE_COMPLETED and stats.complete_time == campaign.complete_time
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


# -- 2. webhooks -------------------------------------------------------------------------------
def test_a_receiver_that_answers_500_twice_gets_the_same_webhook_id_a_third_time(fast: ServerThread) -> None:
    receiver = Receiver(answers=[500, 500])
    try:
        api = Api(fast.address)
        secret = add_endpoint(api, receiver.url, "campaign.completed").secret
        make_campaign(api, "retry", 2)
        finish_all(api, "retry", 2)
        requests = receiver.wait_for(3)
        assert [r.status for r in requests] == [500, 500, 200]
        assert len({r.headers["webhook-id"] for r in requests}) == 1
        assert len(receiver.delivered(secret)) == 1

        def delivered() -> Any:
            found = api.webhooks.ListWebhookDeliveries(delivery_pb2.ListWebhookDeliveriesRequest()).deliveries
            return found if found and found[0].state == delivery_pb2.WEBHOOK_DELIVERY_STATE_DELIVERED else None

        (delivery,) = wait_until(delivered, what="the delivery recorded as delivered")
        assert delivery.id == requests[0].headers["webhook-id"]
        assert [(a.attempt, a.status_code) for a in delivery.attempts] == [(1, 500), (2, 500), (3, 200)]
        assert delivery.attempts[0].error == "HTTP 500" and delivery.attempts[2].error == ""
        assert all(a.HasField("latency") for a in delivery.attempts)

        # By hand: the same message again, same webhook-id, a fourth attempt.
        api.webhooks.RedeliverWebhook(delivery_pb2.RedeliverWebhookRequest(delivery_id=delivery.id))
        again = receiver.wait_for(4)
        assert again[3].headers["webhook-id"] == delivery.id
    finally:
        receiver.close()


def test_an_endpoint_that_keeps_failing_is_disabled_with_a_reason(tmp_path: Path) -> None:
    running = start_server(tmp_path, **FAST, webhook_disable_after=3)
    receiver = Receiver(answers=[503] * 10)
    try:
        api = Api(running.address)
        add_endpoint(api, receiver.url, "campaign.completed")
        make_campaign(api, "dead", 1)
        finish_all(api, "dead", 1)

        def disabled() -> Any:
            (endpoint,) = api.webhooks.ListWebhookEndpoints(delivery_pb2.ListWebhookEndpointsRequest()).endpoints
            return endpoint if endpoint.HasField("disable_time") else None

        endpoint = wait_until(disabled, what="the endpoint disabled")
        assert "3 failed attempts in a row" in endpoint.disabled_reason and "HTTP 503" in endpoint.disabled_reason
        (delivery,) = api.webhooks.ListWebhookDeliveries(delivery_pb2.ListWebhookDeliveriesRequest()).deliveries
        assert delivery.state == delivery_pb2.WEBHOOK_DELIVERY_STATE_FAILED
        assert len(delivery.attempts) == 3
        assert len(receiver.requests) == 3
    finally:
        receiver.close()
        running.stop()


def test_private_targets_are_refused_unless_the_server_allows_them(server: ServerThread) -> None:
    api = Api(server.address)
    for url in (
        "http://127.0.0.1:9/hook",
        "http://10.1.2.3/hook",
        "http://[::1]:8080/",
        "http://169.254.169.254/",
        # IPv6 forms that carry a private IPv4 address: NAT64, IPv4-compatible, 6to4, SIIT.
        "http://[64:ff9b::7f00:1]/",
        "http://[::127.0.0.1]/",
        "http://[2002:7f00:1::]/",
        "http://[::ffff:0:7f00:1]/",
        "http://[64:ff9b::a9fe:a9fe]/latest/meta-data",
    ):
        with pytest.raises(grpc.RpcError) as caught:
            add_endpoint(api, url, "campaign.completed")
        details = error_details(caught.value)
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.violation_reasons == {"endpoint.url": "PRIVATE_TARGET"}, url
    with pytest.raises(grpc.RpcError) as caught:
        add_endpoint(api, "ftp://example.com/x", "campaign.finished")
    details = error_details(caught.value)
    assert set(details.violations) == {"endpoint.url", "endpoint.events[0]"}


def test_a_failure_rate_threshold_fires_once_per_campaign(fast: ServerThread, receiver: Receiver) -> None:
    api = Api(fast.address)
    secret = add_endpoint(api, receiver.url, "campaign.failure_rate", failure_rate=0.2, min_submitted=10).secret
    make_campaign(api, "bad", 12)
    at = now_us() - 60_000_000
    failed = S.MESSAGE_STATUS_FAILED
    # 5 failures among 5 submitted: above the limit, but under the minimum of submitted.
    send_events(
        api.client,
        [status_event(f"b{i}", "bad", f"+1555{i:07d}", failed, at, reason=("X", "no")) for i in range(5)],
    )
    # 5 more submitted: 10 submitted, 50% failed -> one event; more failures fire nothing more.
    submitted = S.MESSAGE_STATUS_SUBMITTED
    send_events(api.client, [status_event(f"c{i}", "bad", f"+1555{i:07d}", submitted, at) for i in range(5, 10)])
    send_events(api.client, [status_event("d10", "bad", "+15550000010", failed, at, reason=("X", "no"))])
    (body,) = wait_until(lambda: receiver.delivered(secret), what="the threshold event")
    assert body["type"] == "campaign.failure_rate"
    assert body["data"]["submitted"] == 10 and body["data"]["failure_rate"] == 0.5 and body["data"]["limit"] == 0.2
    deliveries = api.webhooks.ListWebhookDeliveries(delivery_pb2.ListWebhookDeliveriesRequest()).deliveries
    assert len(deliveries) == 1


# -- 3, 4. report schedules, runs and signed links ---------------------------------------
def export_bytes(api: Api, request: report_pb2.ExportReportRequest) -> bytes:
    return b"".join(r.chunk for r in api.client.reports.ExportReport(request, timeout=60))


def http_get(url: str) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


def latest(api: Api, **request: Any) -> delivery_pb2.ReportRun | None:
    reports = api.schedules.ListReports(delivery_pb2.ListReportsRequest(**request)).reports
    return reports[0].latest_run if reports and reports[0].HasField("latest_run") else None


def completed_run(api: Api) -> delivery_pb2.ReportRun:
    run = wait_until(
        lambda: (r := latest(api)) is not None and r.status != delivery_pb2.REPORT_RUN_STATUS_PROCESSING and r,
        what="a finished run",
    )
    assert run.status == delivery_pb2.REPORT_RUN_STATUS_COMPLETED, run.error
    return run  # type: ignore[no-any-return]


def test_an_on_complete_schedule_runs_and_its_signed_link_downloads_the_export_bytes(
    fast: ServerThread, receiver: Receiver
) -> None:
    api = Api(fast.address)
    secret = add_endpoint(api, receiver.url, "report.completed").secret
    failed_only = report_pb2.MessageFilter(statuses=[S.MESSAGE_STATUS_FAILED])
    schedule = api.schedules.CreateReportSchedule(
        delivery_pb2.CreateReportScheduleRequest(
            schedule=delivery_pb2.ReportSchedule(
                kind=report_pb2.EXPORT_KIND_MESSAGES,
                format=report_pb2.EXPORT_FORMAT_CSV,
                on_complete=True,
                message_filter=failed_only,
            )
        )
    ).schedule
    assert schedule.id.startswith("rs_") and schedule.link_ttl.seconds == 3600
    make_campaign(api, "june", 30)
    finish_all(api, "june", 30, failed=7)
    run = completed_run(api)
    assert run.campaign_id == "june" and run.schedule_id == schedule.id and run.rows == 7
    assert run.url.startswith("http://127.0.0.1:") and run.HasField("expires_at")
    assert 3500 < run.expires_at.seconds - time.time() <= 3600

    expected = export_bytes(
        api,
        report_pb2.ExportReportRequest(
            campaign_id="june", kind=report_pb2.EXPORT_KIND_MESSAGES, message_filter=failed_only
        ),
    )
    status, body, headers = http_get(run.url)  # no credential at all
    assert status == 200 and body == expected
    assert len(body.decode().strip().splitlines()) == 1 + 7
    assert run.file_name in headers["content-disposition"]

    # The webhook carries a working link too.
    (event,) = wait_until(lambda: receiver.delivered(secret), what="report.completed")
    assert event["type"] == "report.completed" and event["data"]["run_id"] == run.id
    assert http_get(event["data"]["url"])[1] == expected

    # The same bytes with a key over gRPC.
    chunks = list(api.schedules.DownloadReportRun(delivery_pb2.DownloadReportRunRequest(run_id=run.id)))
    assert b"".join(c.chunk for c in chunks) == expected and chunks[0].file_name == run.file_name

    # Filter of ListReports by kind.
    assert latest(api, kind=report_pb2.EXPORT_KIND_CLICKS) is None
    assert latest(api, kind=report_pb2.EXPORT_KIND_MESSAGES) is not None


def test_altered_expired_and_deleted_links_are_refused_with_one_line(fast: ServerThread) -> None:
    from flowtrack.domain import schedules as rules
    from tests.tenants import rows

    api = Api(fast.address)
    api.schedules.CreateReportSchedule(
        delivery_pb2.CreateReportScheduleRequest(
            schedule=delivery_pb2.ReportSchedule(format=report_pb2.EXPORT_FORMAT_XLSX, on_complete=True)
        )
    )
    make_campaign(api, "july", 3)
    finish_all(api, "july", 3)
    run = completed_run(api)
    status, body, _ = http_get(run.url)
    assert status == 200 and body.startswith(b"PK")  # an XLSX file

    def refused(url: str) -> tuple[int, str]:
        status, body, _ = http_get(url)
        lines = body.decode().splitlines()
        assert len(lines) == 1
        return status, lines[0]

    altered = run.url.replace("sig=", "sig=0") if "sig=0" not in run.url else run.url.replace("sig=0", "sig=1")
    assert refused(altered)[0] == 403
    longer = run.url.replace(f"expires={run.expires_at.seconds}", f"expires={run.expires_at.seconds + 3600}")
    assert refused(longer) == (403, "link altered: its signature does not match")
    other_run = run.url.replace(run.id, run.id[:-1] + ("a" if run.id[-1] != "a" else "b"))
    assert refused(other_run)[0] == 403

    # A genuinely signed link whose time is past.
    (key,) = rows(fast.settings.database, "SELECT value FROM server_settings WHERE key = 'link_key'")[0]
    base = run.url.split("/reports/")[0]
    past = int(time.time()) - 5
    status, line = refused(rules.link(bytes(key), base, run.id, past))
    assert (status, line.split(":")[0]) == (410, "link expired")

    # Deleting the schedule deletes the run: its link is gone.
    (report,) = api.schedules.ListReports(delivery_pb2.ListReportsRequest()).reports
    api.schedules.DeleteReportSchedule(delivery_pb2.DeleteReportScheduleRequest(schedule_id=report.schedule.id))
    assert refused(run.url) == (410, "report run deleted: this link no longer leads anywhere")


def test_deleting_a_campaign_deletes_its_run_files_and_its_links_answer_410(fast: ServerThread) -> None:
    """A link issued before DeleteCampaign served the recipients' CSV until
    the schedule or the retention removed the run: the campaign's runs and
    their files go with it, and the link answers 410 in one line."""
    api = Api(fast.address)
    api.schedules.CreateReportSchedule(
        delivery_pb2.CreateReportScheduleRequest(schedule=delivery_pb2.ReportSchedule(on_complete=True))
    )
    make_campaign(api, "gone", 3)
    finish_all(api, "gone", 3)
    run = completed_run(api)
    status, body, _ = http_get(run.url)
    assert status == 200 and b"+15550000000" in body
    files = [p for p in reports_dir(fast.settings).rglob("*") if p.is_file()]
    assert len(files) == 1
    api.client.campaigns.DeleteCampaign(campaign_pb2.DeleteCampaignRequest(campaign_id="gone"))
    status, body, _ = http_get(run.url)
    assert (status, body.decode().splitlines()) == (410, ["report run deleted: this link no longer leads anywhere"])
    assert not files[0].exists()
    assert latest(api) is None  # the schedule stays, without the deleted campaign's run
    with pytest.raises(grpc.RpcError) as raised:
        list(api.schedules.DownloadReportRun(delivery_pb2.DownloadReportRunRequest(run_id=run.id)))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_run_waits_while_report_streams_fill_the_servers_bound(tmp_path: Path) -> None:
    """--max-report-streams counts report runs too: a run that finds every
    slot taken by clients' streams stays processing and is made later, not
    failed."""
    running = start_server(tmp_path, **FAST, max_report_streams=1)
    held = running.store.snapshot()  # a client's stream holds the only slot
    try:
        assert running.running.delivery is not None
        runner = running.running.delivery.runner
        runner.claim_us = 500_000
        api = Api(running.address)
        api.schedules.CreateReportSchedule(
            delivery_pb2.CreateReportScheduleRequest(schedule=delivery_pb2.ReportSchedule(on_complete=True))
        )
        make_campaign(api, "busy", 2)
        finish_all(api, "busy", 2)
        ticks = runner.ticks
        wait_until(lambda: runner.ticks >= ticks + 10, what="ten scheduler rounds")
        run = latest(api)
        assert run is not None and run.status == delivery_pb2.REPORT_RUN_STATUS_PROCESSING, run
        held.close()
        assert completed_run(api).rows == 2
    finally:
        held.close()
        running.stop()


def test_a_run_that_fails_says_why(fast: ServerThread) -> None:
    api = Api(fast.address)
    api.schedules.CreateReportSchedule(
        delivery_pb2.CreateReportScheduleRequest(
            schedule=delivery_pb2.ReportSchedule(campaign_id="nope", cron="* * * * * */2", time_zone="Europe/Paris")
        )
    )
    run = wait_until(
        lambda: (r := latest(api)) is not None and r.status != delivery_pb2.REPORT_RUN_STATUS_PROCESSING and r,
        what="the run to end",
    )
    assert run.status == delivery_pb2.REPORT_RUN_STATUS_FAILED
    assert run.error == "campaign 'nope' not found" and not run.url


def test_bad_schedules_are_invalid_argument_naming_each_field(server: ServerThread) -> None:
    api = Api(server.address)
    with pytest.raises(grpc.RpcError) as caught:
        api.schedules.CreateReportSchedule(
            delivery_pb2.CreateReportScheduleRequest(
                schedule=delivery_pb2.ReportSchedule(
                    cron="every day",
                    time_zone="Mars/Olympus",
                    kind=report_pb2.EXPORT_KIND_CLICKS,
                    message_filter=report_pb2.MessageFilter(channel="sms"),
                    link_ttl=duration_pb2.Duration(seconds=1),
                )
            )
        )
    details = error_details(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(details.violations) == {
        "schedule.cron",
        "schedule.campaign_id",
        "schedule.time_zone",
        "schedule.message_filter",
        "schedule.link_ttl",
    }


CONNECTLY_HEADER = (
    "customer_external_id,business_id,campaign_name,sendout_id,cnt_session_id,sent_at,delivered_at,read_at,"
    "opt_out_at,error_code,error_msg,button_clicks,link_clicks,input_variables,output_variables"
)


def test_a_connectly_schedule_makes_runs_with_the_bytes_of_export_report_in_that_layout(fast: ServerThread) -> None:
    api = Api(fast.address)
    connectly = report_pb2.EXPORT_LAYOUT_CONNECTLY
    failed_only = report_pb2.MessageFilter(statuses=[S.MESSAGE_STATUS_FAILED])
    schedule = api.schedules.CreateReportSchedule(
        delivery_pb2.CreateReportScheduleRequest(
            schedule=delivery_pb2.ReportSchedule(on_complete=True, layout=connectly, message_filter=failed_only)
        )
    ).schedule
    assert schedule.layout == connectly
    got = api.schedules.GetReportSchedule(delivery_pb2.GetReportScheduleRequest(schedule_id=schedule.id)).schedule
    assert got.layout == connectly
    (listed,) = api.schedules.ListReportSchedules(delivery_pb2.ListReportSchedulesRequest()).schedules
    assert listed.layout == connectly

    make_campaign(api, "sept", 12, name="September")
    finish_all(api, "sept", 12, failed=4)
    run = completed_run(api)
    assert run.rows == 4
    expected = export_bytes(
        api,
        report_pb2.ExportReportRequest(campaign_id="sept", layout=connectly, message_filter=failed_only),
    )
    downloaded = b"".join(
        c.chunk for c in api.schedules.DownloadReportRun(delivery_pb2.DownloadReportRunRequest(run_id=run.id))
    )
    assert downloaded == expected and http_get(run.url)[1] == expected
    lines = downloaded.decode().splitlines()
    assert lines[0] == CONNECTLY_HEADER and len(lines[0].split(",")) == 15 and len(lines) == 1 + 4
    # ... and not the flowtrack layout's bytes.
    flowtrack = export_bytes(api, report_pb2.ExportReportRequest(campaign_id="sept", message_filter=failed_only))
    assert downloaded != flowtrack


@pytest.mark.parametrize("kind", [report_pb2.EXPORT_KIND_CLICKS, report_pb2.EXPORT_KIND_FAILURE_REASONS])
def test_a_layout_on_another_kind_than_messages_is_a_field_violation(server: ServerThread, kind: int) -> None:
    api = Api(server.address)
    for layout in (report_pb2.EXPORT_LAYOUT_CONNECTLY, report_pb2.EXPORT_LAYOUT_FLOWTRACK):
        with pytest.raises(grpc.RpcError) as caught:
            api.schedules.CreateReportSchedule(
                delivery_pb2.CreateReportScheduleRequest(
                    schedule=delivery_pb2.ReportSchedule(kind=kind, layout=layout, on_complete=True)  # type: ignore[arg-type]
                )
            )
        details = error_details(caught.value)
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.violations == {"schedule.layout": "only for EXPORT_KIND_MESSAGES"}
        assert details.violation_reasons == {"schedule.layout": "NOT_APPLICABLE"}
    with pytest.raises(grpc.RpcError) as caught:
        api.schedules.CreateReportSchedule(
            delivery_pb2.CreateReportScheduleRequest(schedule=delivery_pb2.ReportSchedule(layout=99, on_complete=True))  # type: ignore[arg-type]
        )
    assert error_details(caught.value).violation_reasons == {"schedule.layout": "UNKNOWN_VALUE"}
    assert not api.schedules.ListReportSchedules(delivery_pb2.ListReportSchedulesRequest()).schedules


@pytest.mark.sqlite_only("migrates a version-7 SQLite file")
def test_schedules_of_a_database_from_before_layouts_keep_the_flowtrack_layout(tmp_path: Path) -> None:
    """A version-7 database with a schedule, migrated: the schedule reads
    back with layout 0 (flowtrack's own columns)."""
    from flowtrack.store import db
    from flowtrack.store import schedules as sschedules

    path = tmp_path / "old.db"
    build_legacy(str(path), upto=7)  # the previous release's SQL migrations 1-7
    conn = db.connect(path)
    conn.execute(
        "INSERT INTO report_schedules (schedule_id, business_id, kind, format, filters, on_complete, link_ttl,"
        " retention, create_time) VALUES ('rs_old', 'b', 1, 1, x'', 1, 3600000000, 604800000000, 10)"
    )
    conn.close()

    conn = db.open_database(path)  # migrates
    try:
        old = sschedules.get(conn, "b", "rs_old")
        assert (old.kind, old.on_complete, old.layout) == (1, True, 0)
    finally:
        conn.close()


# -- tenants ------------------------------------------------------------------------------------
def test_another_business_sees_none_of_the_endpoints_deliveries_schedules_or_runs(
    tmp_path: Path, receiver: Receiver
) -> None:
    from flowtrack.domain.keys import Scope

    database = database_of(tmp_path)
    alice = create_key(database, "alice", Scope.ADMIN)
    bob = create_key(database, "bob", Scope.ADMIN)
    bob_reader = create_key(database, "bob", Scope.READ)
    running = start_server(tmp_path, http="127.0.0.1:0", **FAST)
    try:
        a, b = Api(running.address, alice), Api(running.address, bob)
        endpoint = add_endpoint(a, receiver.url, "campaign.completed").endpoint
        a.schedules.CreateReportSchedule(
            delivery_pb2.CreateReportScheduleRequest(schedule=delivery_pb2.ReportSchedule(on_complete=True))
        )
        make_campaign(a, "secret", 2)
        finish_all(a, "secret", 2)
        run = completed_run(a)
        receiver.wait_for(1)

        assert not b.webhooks.ListWebhookEndpoints(delivery_pb2.ListWebhookEndpointsRequest()).endpoints
        assert not b.webhooks.ListWebhookDeliveries(delivery_pb2.ListWebhookDeliveriesRequest()).deliveries
        assert not b.schedules.ListReports(delivery_pb2.ListReportsRequest()).reports
        assert not b.schedules.ListReportSchedules(delivery_pb2.ListReportSchedulesRequest()).schedules
        (delivery,) = a.webhooks.ListWebhookDeliveries(delivery_pb2.ListWebhookDeliveriesRequest()).deliveries
        calls: list[Callable[[], Any]] = [
            lambda: b.webhooks.DeleteWebhookEndpoint(
                delivery_pb2.DeleteWebhookEndpointRequest(endpoint_id=endpoint.id)
            ),
            lambda: b.webhooks.RedeliverWebhook(delivery_pb2.RedeliverWebhookRequest(delivery_id=delivery.id)),
            lambda: b.schedules.GetReportRun(delivery_pb2.GetReportRunRequest(run_id=run.id)),
            lambda: list(b.schedules.DownloadReportRun(delivery_pb2.DownloadReportRunRequest(run_id=run.id))),
            lambda: b.schedules.GetReportSchedule(delivery_pb2.GetReportScheduleRequest(schedule_id=run.schedule_id)),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        # A read-scoped key lists reports but may not add endpoints.
        reader = Api(running.address, bob_reader)
        assert not reader.schedules.ListReports(delivery_pb2.ListReportsRequest()).reports
        with pytest.raises(grpc.RpcError) as caught:
            add_endpoint(reader, receiver.url, "campaign.completed")
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        running.stop()


def test_an_implicit_campaign_completes_by_its_quiet_period_only(tmp_path: Path, receiver: Receiver) -> None:
    running = start_server(tmp_path, **FAST, campaign_quiet_period=1.0)
    try:
        api = Api(running.address)
        secret = add_endpoint(api, receiver.url, "campaign.completed").secret
        at = now_us() - 1_000_000
        # Every recipient it has seen is final, but an implicit campaign has no declared audience.
        send_events(
            api.client, [status_event(f"i{i}", "auto", f"+1{i}", S.MESSAGE_STATUS_SUCCESS, at) for i in range(3)]
        )
        (body,) = wait_until(lambda: receiver.delivered(secret), what="campaign.completed")
        assert body["data"]["campaign_id"] == "auto" and body["data"]["reason"] == "quiet_period"
        assert get_campaign(api, "auto").implicit
    finally:
        running.stop()


def _sql(database: str, sql: str, *args: Any) -> None:
    import sqlite3

    conn = connect_db(database) if is_postgres(database) else sqlite3.connect(database, timeout=30)
    try:
        with conn:
            conn.execute(sql, args)
    finally:
        conn.close()


def _migrated(folder: Path) -> str:
    """The database `start_server(folder)` will use, created and migrated."""
    database = database_of(folder)
    if is_postgres(database):
        from flowtrack.store.pg.store import migrate

        migrate(database)
    else:
        from flowtrack.store import db

        db.open_database(database).close()
    return database


def test_only_the_lease_holder_makes_runs(tmp_path: Path) -> None:
    database = _migrated(tmp_path)
    # Another replica holds the reports lease for the next hour.
    _sql(
        database,
        "INSERT INTO leases (name, holder, expires_at) VALUES ('reports', 'other', ?)",
        now_us() + 3600_000_000,
    )
    running = start_server(tmp_path, **FAST)
    try:
        api = Api(running.address)
        api.schedules.CreateReportSchedule(
            delivery_pb2.CreateReportScheduleRequest(schedule=delivery_pb2.ReportSchedule(on_complete=True))
        )
        make_campaign(api, "leased", 2)
        finish_all(api, "leased", 2)
        assert running.running.delivery is not None
        runner = running.running.delivery.runner
        ticks = runner.ticks
        wait_until(lambda: runner.ticks >= ticks + 5, what="five scheduler rounds")
        run = latest(api)
        assert run is not None and run.status == delivery_pb2.REPORT_RUN_STATUS_PROCESSING
        assert runner.runs_made == 0 and not runner.leased
        # The other holder's lease lapses: this server takes over and makes the run.
        _sql(database, "UPDATE leases SET expires_at = 0 WHERE name = 'reports'")
        assert completed_run(api).rows == 2
        assert runner.leased
    finally:
        running.stop()


def test_runs_past_their_retention_are_deleted_with_their_files(fast: ServerThread) -> None:
    api = Api(fast.address)
    api.schedules.CreateReportSchedule(
        delivery_pb2.CreateReportScheduleRequest(
            schedule=delivery_pb2.ReportSchedule(on_complete=True, retention=duration_pb2.Duration(seconds=60))
        )
    )
    make_campaign(api, "old", 2)
    finish_all(api, "old", 2)
    run = completed_run(api)
    files = [p for p in reports_dir(fast.settings).rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].name.startswith(f"{run.id}-")  # <run>-<maker>
    assert http_get(run.url)[0] == 200
    # Make the run older than its retention.
    _sql(fast.settings.database, "UPDATE report_runs SET create_time = create_time - 61000000 WHERE run_id = ?", run.id)
    wait_until(lambda: latest(api) is None, what="the run dropped")
    assert not files[0].exists()
    assert http_get(run.url)[0] == 410


def test_the_delivery_log_forgets_finished_deliveries_after_30_days(fast: ServerThread, receiver: Receiver) -> None:
    api = Api(fast.address)
    add_endpoint(api, receiver.url, "campaign.completed")
    make_campaign(api, "aged", 1)
    finish_all(api, "aged", 1)

    def deliveries() -> list[delivery_pb2.WebhookDelivery]:
        return list(api.webhooks.ListWebhookDeliveries(delivery_pb2.ListWebhookDeliveriesRequest()).deliveries)

    (_delivered,) = wait_until(
        lambda: [d for d in deliveries() if d.state == delivery_pb2.WEBHOOK_DELIVERY_STATE_DELIVERED], what="delivery"
    )
    month = 31 * 24 * 3600 * 1_000_000
    _sql(fast.settings.database, "UPDATE webhook_messages SET create_time = create_time - ?", month)
    wait_until(lambda: not deliveries(), what="the old delivery forgotten")
    assert tuple_count(fast.settings.database, "SELECT count(*) FROM webhook_attempts") == 0


def tuple_count(database: str, sql: str) -> int:
    from tests.tenants import rows

    return int(rows(database, sql)[0][0])


def test_a_target_that_became_private_is_refused_at_delivery_time(tmp_path: Path, receiver: Receiver) -> None:
    database = _migrated(tmp_path)
    # An endpoint stored while its name resolved to a public address (planted:
    # this server refuses loopback targets, and the receiver is on loopback).
    _sql(
        database,
        "INSERT INTO webhook_endpoints (endpoint_id, business_id, url, events, secret, create_time)"
        " VALUES ('ep_planted', 'default', ?, '[\"campaign.completed\"]', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 0)",
        receiver.url,
    )
    running = start_server(tmp_path, webhook_retry_base=0.05, scheduler_tick=0.2)
    try:
        api = Api(running.address)
        make_campaign(api, "rebound", 1)
        finish_all(api, "rebound", 1)

        def attempted() -> Any:
            found = api.webhooks.ListWebhookDeliveries(delivery_pb2.ListWebhookDeliveriesRequest()).deliveries
            return found[0].attempts if found and len(found[0].attempts) >= 2 else None

        attempts = wait_until(attempted, what="two refused attempts")
        assert all(a.status_code == 0 and "private or reserved" in a.error for a in attempts)
        assert receiver.requests == []
    finally:
        running.stop()


def test_a_campaign_completed_by_hand_emits_campaign_completed_once(fast: ServerThread, receiver: Receiver) -> None:
    api = Api(fast.address)
    secret = add_endpoint(api, receiver.url, "campaign.completed").secret
    make_campaign(api, "manual", 3)
    for _ in range(2):  # the second update stays COMPLETED: nothing more is emitted
        api.client.campaigns.UpdateCampaign(
            campaign_pb2.UpdateCampaignRequest(
                campaign=campaign_pb2.Campaign(id="manual", state=campaign_pb2.CAMPAIGN_STATE_COMPLETED),
                update_mask={"paths": ["state"]},
            )
        )
    finish_all(api, "manual", 3)  # late events count, and complete nothing again
    (body,) = wait_until(lambda: receiver.delivered(secret), what="campaign.completed")
    assert body["data"]["reason"] == "manual" and body["data"]["stats"]["pending"] == 3
    # Nothing submitted: every rate's denominator is zero, so none is there (not 0.0).
    assert [name for name in body["data"]["stats"] if name.endswith("_rate")] == []
    deliveries = api.webhooks.ListWebhookDeliveries(delivery_pb2.ListWebhookDeliveriesRequest()).deliveries
    assert len(deliveries) == 1


def test_a_slow_endpoint_does_not_hold_up_the_others(fast: ServerThread, receiver: Receiver) -> None:
    import threading

    release = threading.Event()
    slow = Receiver(hold=release)
    try:
        api = Api(fast.address)
        add_endpoint(api, slow.url, "campaign.completed")
        secret = add_endpoint(api, receiver.url, "campaign.completed").secret
        make_campaign(api, "slowpoke", 1)
        finish_all(api, "slowpoke", 1)
        wait_until(lambda: slow.arrived == 1, what="the slow endpoint called")
        assert len(wait_until(lambda: receiver.delivered(secret), what="the fast endpoint's delivery")) == 1
        assert slow.requests == []  # still held
        release.set()
        assert slow.wait_for(1)[0].status == 200
    finally:
        release.set()
        slow.close()


# -- issue 18: safe at the edges ------------------------------------------------------------------
def deliveries_of(api: Api) -> list[delivery_pb2.WebhookDelivery]:
    return list(api.webhooks.ListWebhookDeliveries(delivery_pb2.ListWebhookDeliveriesRequest()).deliveries)


def test_a_name_that_rebinds_to_loopback_after_the_check_is_never_delivered_to_loopback(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: `rebind.example` answers a public address to the first
    two look-ups (the check at registration, the check of the first attempt),
    then 127.0.0.1. The attempt connects to the address its check saw, never
    looks the name up again, so the loopback receiver gets nothing; the next
    attempt's check sees 127.0.0.1 and refuses it."""
    real = socket.getaddrinfo
    answers: list[str] = []

    def resolver(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in ("rebind.example", b"rebind.example"):  # anyio (httpx's resolver) passes bytes
            return real(host, port, *args, **kwargs)
        address = "192.88.99.1" if len(answers) < 2 else "127.0.0.1"  # a global address, then loopback
        answers.append(address)
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port or 0))]

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    running = start_server(tmp_path, webhook_retry_base=0.05, scheduler_tick=0.2, webhook_timeout=2.0)
    try:
        api = Api(running.address)
        add_endpoint(api, f"http://rebind.example:{receiver.port}/hook", "campaign.completed")
        make_campaign(api, "rebind", 1)
        finish_all(api, "rebind", 1)

        def attempted() -> Any:
            found = deliveries_of(api)
            done = found and (
                len(found[0].attempts) >= 2 or found[0].state == delivery_pb2.WEBHOOK_DELIVERY_STATE_DELIVERED
            )
            return found[0].attempts if done else None

        attempts = wait_until(attempted, what="two attempts (or a delivery)")
        assert receiver.arrived == 0 and receiver.requests == [], "delivered to the loopback receiver"
        first, second = attempts[:2]
        assert first.status_code == 0 and first.error  # sent to 192.88.99.1, which does not answer here
        assert second.status_code == 0 and "resolves to 127.0.0.1, a private or reserved address" in second.error
        assert answers[:3] == ["192.88.99.1", "192.88.99.1", "127.0.0.1"]
    finally:
        running.stop()


def test_an_endpoint_that_streams_a_huge_body_is_read_a_little_and_the_attempt_fails(tmp_path: Path) -> None:
    flood = RawEndpoint("flood")
    running = start_server(tmp_path, **{**FAST, "webhook_retry_base": 600.0})
    try:
        api = Api(running.address)
        add_endpoint(api, flood.url, "campaign.completed")
        make_campaign(api, "flooded", 1)
        finish_all(api, "flooded", 1)

        def attempted() -> Any:
            found = deliveries_of(api)
            return found[0] if found and found[0].attempts else None

        delivery = wait_until(attempted, what="the attempt recorded")
        (attempt,) = delivery.attempts
        assert attempt.status_code == 0
        assert attempt.error == "HTTP 200, but the answer's body is longer than 65536 bytes", attempt.error
        assert delivery.state == delivery_pb2.WEBHOOK_DELIVERY_STATE_PENDING  # retried later
        wait_until(lambda: flood.finished == 1, what="the endpoint's connection closed")
        # The worker stopped reading: the endpoint got out what the sockets buffer, not 100 MiB.
        assert flood.sent[0] < 16 * 1024 * 1024, flood.sent
    finally:
        flood.close()
        running.stop()


def test_an_endpoint_that_drips_its_answer_fails_the_attempt_well_before_the_claim_lapses(tmp_path: Path) -> None:
    from flowtrack.domain.webhooks import claim_seconds

    drip = RawEndpoint("drip")
    running = start_server(tmp_path, **{**FAST, "webhook_retry_base": 600.0, "webhook_timeout": 2.0})
    try:
        api = Api(running.address)
        add_endpoint(api, drip.url, "campaign.completed")
        make_campaign(api, "dripped", 1)
        finish_all(api, "dripped", 1)

        def attempted() -> Any:
            found = deliveries_of(api)
            return found[0] if found and found[0].attempts else None

        # A byte a second never trips httpx's per-read timeout; the attempt's
        # own deadline (--webhook-timeout 2s) ends it, and the claim is 34 s.
        delivery = wait_until(attempted, timeout=20, what="the attempt recorded")
        (attempt,) = delivery.attempts
        assert attempt.status_code == 0 and attempt.error == "no complete answer within 2 s", attempt.error
        assert attempt.latency.ToTimedelta().total_seconds() < claim_seconds(2.0) / 4
        assert delivery.state == delivery_pb2.WEBHOOK_DELIVERY_STATE_PENDING
        wait_until(lambda: drip.finished == 1, what="the endpoint's connection closed")
        assert drip.sent[0] < 10
    finally:
        drip.close()
        running.stop()


def test_redelivering_an_old_message_starts_a_new_retry_window(fast: ServerThread) -> None:
    receiver = Receiver(answers=[200, 503])
    try:
        api = Api(fast.address)
        add_endpoint(api, receiver.url, "campaign.completed")
        make_campaign(api, "old", 1)
        finish_all(api, "old", 1)
        (delivered,) = wait_until(
            lambda: [d for d in deliveries_of(api) if d.state == delivery_pb2.WEBHOOK_DELIVERY_STATE_DELIVERED],
            what="the delivery",
        )
        # The message is two days old: older than its retry window (a day).
        _sql(fast.settings.database, "UPDATE webhook_messages SET create_time = create_time - ?", 2 * 86400_000_000)
        api.webhooks.RedeliverWebhook(delivery_pb2.RedeliverWebhookRequest(delivery_id=delivered.id))
        # One 503 after the redelivery is retried (a new window), not the end of the message and its endpoint.
        (again,) = wait_until(
            lambda: [d for d in deliveries_of(api) if len(d.attempts) >= 2 and d.state != 1], what="the redelivery done"
        )
        (endpoint,) = api.webhooks.ListWebhookEndpoints(delivery_pb2.ListWebhookEndpointsRequest()).endpoints
        assert not endpoint.HasField("disable_time"), endpoint.disabled_reason
        assert again.state == delivery_pb2.WEBHOOK_DELIVERY_STATE_DELIVERED
        assert [a.status_code for a in again.attempts] == [200, 503, 200]
    finally:
        receiver.close()


def test_campaign_completed_carries_engagement_the_funnel_and_the_rates_of_the_stats_api(
    fast: ServerThread, receiver: Receiver
) -> None:
    api = Api(fast.address)
    secret = add_endpoint(api, receiver.url, "campaign.completed").secret
    make_campaign(api, "engaged", 4)
    K = ingest_pb2
    at = timestamp_pb2.Timestamp(seconds=int(time.time()) - 30)
    for event_id, kind, i, fields in (
        ("r0", K.ENGAGEMENT_KIND_READ, 0, {}),
        ("r1", K.ENGAGEMENT_KIND_READ, 1, {}),
        ("y0", K.ENGAGEMENT_KIND_REPLIED, 0, {"text": "yes"}),
        ("o1", K.ENGAGEMENT_KIND_OPTED_OUT, 1, {}),
        ("b2", K.ENGAGEMENT_KIND_BUTTON_CLICKED, 2, {"button_id": "more"}),
    ):
        event = K.EngagementEvent(
            event_id=event_id, campaign_id="engaged", recipient=f"+1555{i:07d}", kind=kind, occurred_at=at, **fields
        )
        api.client.ingest.RecordEngagementEvent(K.RecordEngagementEventRequest(event=event))
    finish_all(api, "engaged", 4, failed=1)
    (body,) = wait_until(lambda: receiver.delivered(secret), what="campaign.completed")
    sent = body["data"]["stats"]
    overall = api.client.reports.GetCampaignStats(
        report_pb2.GetCampaignStatsRequest(campaign_id="engaged")
    ).stats.overall
    expected = json_format.MessageToDict(
        overall, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    # The stats API's figures under its names: counts and rates flat beside the others, numbers as numbers.
    flat = {**expected.pop("counts"), **expected.pop("rates"), **expected}
    flat.pop("key")
    assert sent == {name: value if isinstance(value, float) else int(value) for name, value in flat.items()}
    assert (sent["read"], sent["replied"], sent["opted_out"], sent["button_clickers"]) == (2, 1, 1, 1)
    assert (sent["entered"], sent["in_flow"], sent["exited"], sent["goal_achieved"]) == (0, 0, 0, 0)
    assert (sent["read_rate"], sent["reply_rate"], sent["failure_rate"]) == (0.5, 0.25, 0.25)
    assert "goal_rate" not in sent  # nobody entered the flow: its denominator is zero
