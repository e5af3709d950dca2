"""The HTTP listener without a browser: access, security headers, JSON
shapes (the proto3 JSON of the gRPC responses), exports, live stats, limits,
drain and TLS."""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import json_format, timestamp_pb2

from flowtrack.domain.keys import Scope
from flowtrack.server import StartupError
from flowtrack.v1 import campaign_pb2, common_pb2, ingest_pb2, report_pb2
from flowtrack.web.access import COOKIE, Sessions
from tests.conftest import Client, database_of, make_client, start_server
from tests.tenants import create_key, keyed_client, revoke_key
from tests.test_tls import Pki, pki  # noqa: F401

CAMPAIGN = "c-1"
DEADLINE = 30.0


def now_ts(back: int = 5) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=int(time.time()) - back)


def fill(client: Client, campaign: str = CAMPAIGN) -> None:
    """A small campaign: statuses of every kind, a failure, clicks with places."""
    client.campaigns.CreateCampaign(
        campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id=campaign, name="Test", labels={"t": "x"}))
    )
    S = common_pb2
    events = []
    for i, code in enumerate([S.MESSAGE_STATUS_SUBMITTED, S.MESSAGE_STATUS_SUCCESS, S.MESSAGE_STATUS_FAILED] * 4):
        reason = (
            common_pb2.FailureReason(code="BLOCKED", message="blocked") if code == S.MESSAGE_STATUS_FAILED else None
        )
        events.append(
            ingest_pb2.Event(
                status=ingest_pb2.StatusEvent(
                    event_id=f"s{i}",
                    campaign_id=campaign,
                    recipient=f"+1555000{i:04d}",
                    status=code,
                    occurred_at=now_ts(),
                    channel="sms" if i % 2 else "whatsapp",
                    variant="AB"[i % 2],
                    failure_reason=reason,
                )
            )
        )
    for i in range(3):
        events.append(
            ingest_pb2.Event(
                click=ingest_pb2.ClickEvent(
                    event_id=f"k{i}",
                    campaign_id=campaign,
                    recipient="+15550000001",
                    link_id="L1",
                    occurred_at=now_ts(),
                    location=common_pb2.Location(country_code="BR", city="Recife", latitude=-8.05, longitude=-34.9),
                )
            )
        )
    reply = next(iter(client.ingest.StreamEvents(iter([ingest_pb2.StreamEventsRequest(events=events)]))))
    assert reply.accepted == len(events)


class Keyed:
    def __init__(self, tmp: Path, **settings: Any) -> None:
        db = database_of(tmp)
        self.admin = create_key(db, "acme", Scope.ADMIN)
        self.read = create_key(db, "acme", Scope.READ)
        self.ingest = create_key(db, "acme", Scope.INGEST)
        self.foreign = create_key(db, "globex", Scope.READ)
        self.server = start_server(tmp, http="127.0.0.1:0", **settings)
        assert self.server.running.http is not None
        self.url = self.server.running.http.url
        self.client = keyed_client(self.server.address, self.admin)
        fill(self.client)

    def http(self, key: str | None = None, **options: Any) -> httpx.Client:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=DEADLINE, **options)


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[Keyed]:
    k = Keyed(tmp_path)
    yield k
    k.client.channel.close()
    k.server.stop()


def parsed(text: str, message: Any) -> Any:
    return json_format.Parse(text, message)


# -- access ----------------------------------------------------------------------------


def test_no_key_gets_nothing_but_the_sign_in_page(keyed: Keyed) -> None:
    with keyed.http() as h:
        for path in ("/", f"/campaigns/{CAMPAIGN}"):
            r = h.get(path)
            assert r.status_code == 303
            assert r.headers["location"] == "/signin" + ("" if path == "/" else f"?next=%2Fcampaigns%2F{CAMPAIGN}")
        for path in (
            "/api/campaigns",
            f"/api/campaigns/{CAMPAIGN}/stats",
            f"/api/campaigns/{CAMPAIGN}/export",
            f"/api/campaigns/{CAMPAIGN}/live",
        ):
            r = h.get(path)
            assert r.status_code == 401, path
            assert r.headers["content-type"] == "application/problem+json"
            body = r.json()
            assert body["code"] == "UNAUTHENTICATED" and body["status"] == 401
            assert body["reason"] == "NO_CREDENTIALS"
        assert h.get("/signin").status_code == 200
        assert h.get("/static/app.css").status_code == 200  # what the sign-in page needs, no data
        # Metrics need no key (documented: no business data in them).
        assert h.get("/metrics").status_code == 200


def test_bearer_keys_and_tenancy_as_over_grpc(keyed: Keyed) -> None:
    with keyed.http(keyed.read) as h:
        r = h.get(f"/api/campaigns/{CAMPAIGN}/stats")
        assert r.status_code == 200
    with keyed.http(keyed.foreign) as h:
        r = h.get(f"/api/campaigns/{CAMPAIGN}/stats")
        assert r.status_code == 404
        assert r.json()["reason"] == "CAMPAIGN_NOT_FOUND"
        assert h.get("/api/campaigns").json()["campaigns"] == []
        assert h.get(f"/api/campaigns/{CAMPAIGN}/export").status_code == 404
    with keyed.http(keyed.ingest) as h:
        r = h.get(f"/api/campaigns/{CAMPAIGN}/stats")
        assert r.status_code == 403
        assert r.json()["reason"] == "MISSING_SCOPE"
    with keyed.http("ft_not_a_key") as h:
        assert h.get("/api/campaigns").status_code == 401


def sign_in(keyed: Keyed, key: str, **headers: str) -> httpx.Response:
    with keyed.http() as h:
        return h.post("/signin", data={"key": key}, headers=headers)


def test_session_cookie(keyed: Keyed) -> None:
    r = sign_in(keyed, keyed.read, origin=keyed.url)
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "samesite", "max-age", "path"} <= attributes
    assert "samesite=strict" in cookie.lower()
    assert "secure" not in attributes  # plain HTTP here; see test_tls_http
    assert keyed.read not in cookie  # the key itself never goes into the cookie
    value = r.cookies[COOKIE]
    with keyed.http(cookies={COOKIE: value}) as h:
        assert h.get(f"/api/campaigns/{CAMPAIGN}/stats").status_code == 200
        assert h.get("/").status_code == 200
    # Altered: refused.
    # One character of the signature changed (it was the same one in 1 of 64
    # runs when this chose the replacement by looking at the wrong character).
    altered = value[:-2] + ("A" if value[-2] != "A" else "B") + value[-1]
    assert altered != value
    with keyed.http(cookies={COOKIE: altered}) as h:
        assert h.get("/api/campaigns").status_code == 401
    # Expired: refused.
    sessions = Sessions.for_store(keyed.server.store, 60)
    key_id = keyed.read.split("_")[1] if keyed.read.count("_") >= 2 else None
    from flowtrack.domain.keys import key_id_of

    key_id = key_id_of(keyed.read)
    assert key_id is not None
    with keyed.http(cookies={COOKIE: sessions.issue(key_id, now=time.time() - 120)}) as h:
        assert h.get("/api/campaigns").status_code == 401
    # Well signed, but no session of that id was recorded at sign-in: refused.
    with keyed.http(cookies={COOKIE: sessions.issue(key_id)}) as h:
        assert h.get("/api/campaigns").status_code == 401
    with keyed.http(cookies={COOKIE: value}) as h:
        assert h.get("/api/campaigns").status_code == 200
        # Revoked key: its sessions end at once.
        revoke_key(keyed.server.settings.database, keyed.read)
        r = h.get("/api/campaigns")
        assert r.status_code == 401
        assert r.json()["reason"] == "SESSION_EXPIRED"


def test_sign_in_refusals(keyed: Keyed) -> None:
    for key, reason in ((keyed.ingest, "MISSING_SCOPE"), ("ft_nope_nope", "INVALID_API_KEY"), ("", "NO_CREDENTIALS")):
        r = sign_in(keyed, key, origin=keyed.url)
        assert r.status_code == 303
        assert r.headers["location"] == f"/signin?error={reason}"
        assert "set-cookie" not in r.headers
    r = sign_in(keyed, keyed.read, origin="http://evil.example")
    assert r.status_code == 403 and "set-cookie" not in r.headers


def test_sign_out_ends_the_session_on_the_server(keyed: Keyed, tmp_path: Path) -> None:
    """A copy of the cookie taken before sign-out no longer works after it
    (on every replica of a shared database); sign-out from another origin
    is refused; the key's other sessions go on."""
    cookie = sign_in(keyed, keyed.read, origin=keyed.url).cookies[COOKIE]
    other = sign_in(keyed, keyed.read, origin=keyed.url).cookies[COOKIE]
    replica = None
    if keyed.server.settings.database.startswith("postgresql://"):
        replica = start_server(tmp_path / "replica", database=keyed.server.settings.database, http="127.0.0.1:0")
    try:
        urls = [keyed.url] + ([replica.running.http.url] if replica and replica.running.http else [])
        for url in urls:
            with httpx.Client(base_url=url, cookies={COOKIE: cookie}, timeout=DEADLINE) as h:
                assert h.get("/api/campaigns").status_code == 200
        with keyed.http(cookies={COOKIE: cookie}) as h:
            r = h.post("/signout", headers={"origin": "http://evil.example"})
            assert r.status_code == 403 and r.text == "cross-site sign-out refused\n"
            assert h.get("/api/campaigns").status_code == 200  # still on
            r = h.post("/signout", headers={"origin": keyed.url})
            assert r.status_code == 303 and r.headers["location"] == "/signin"
            assert f'{COOKIE}=""' in r.headers["set-cookie"] and "max-age=0" in r.headers["set-cookie"].lower()
        for url in urls:  # the captured copy: refused everywhere
            with httpx.Client(base_url=url, cookies={COOKIE: cookie}, timeout=DEADLINE) as h:
                r = h.get("/api/campaigns")
                assert r.status_code == 401, url
                assert r.json()["reason"] == "SESSION_EXPIRED"
                r = h.get("/")
                assert r.status_code == 303 and r.headers["location"] == "/signin"
                assert h.get(f"/api/campaigns/{CAMPAIGN}/live").status_code == 401
        with keyed.http(cookies={COOKIE: other}) as h:  # the key's other session is untouched
            assert h.get("/api/campaigns").status_code == 200
        with keyed.http() as h:  # without a cookie: nothing to end, back to the sign-in page
            r = h.post("/signout", headers={"origin": keyed.url})
            assert r.status_code == 303 and r.headers["location"] == "/signin"
    finally:
        if replica is not None:
            replica.stop()


def test_open_mode_only_where_grpc_has_it(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    server = start_server(tmp_path / "a", http="127.0.0.1:0")
    try:
        assert server.running.http is not None
        client = make_client(server.address)
        fill(client)
        client.channel.close()
        r = httpx.get(server.running.http.url + f"/api/campaigns/{CAMPAIGN}/stats", timeout=DEADLINE)
        assert r.status_code == 200
        assert httpx.get(server.running.http.url + "/", timeout=DEADLINE).status_code == 200
    finally:
        server.stop()
    # The HTTP listener on every address: no open mode, even with gRPC on loopback.
    server = start_server(tmp_path / "b", http="0.0.0.0:0")
    try:
        assert server.running.http is not None
        r = httpx.get(f"http://127.0.0.1:{server.running.http.port}/api/campaigns", timeout=DEADLINE)
        assert r.status_code == 401
    finally:
        server.stop()


# -- headers and limits ----------------------------------------------------------------


def test_security_headers_on_every_response(keyed: Keyed) -> None:
    with keyed.http(keyed.read) as h:
        for path in (
            "/",
            "/signin",
            "/metrics",
            "/static/campaign.js",
            "/api/campaigns",
            f"/api/campaigns/{CAMPAIGN}/stats",
            "/api/campaigns/nope/stats",
            "/no/such/page",
            f"/api/campaigns/{CAMPAIGN}/export",
        ):
            r = h.get(path)
            csp = r.headers.get("content-security-policy", "")
            assert "default-src 'self'" in csp, path
            assert "frame-ancestors 'none'" in csp, path
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp, path
            assert r.headers.get("x-content-type-options") == "nosniff", path
            assert r.headers.get("x-frame-options") == "DENY", path


@pytest.mark.sqlite_only("reads the static files: no database")
def test_pages_have_no_inline_script_or_external_origin() -> None:
    static = Path(__file__).resolve().parent.parent / "src" / "flowtrack" / "web" / "static"
    for page in static.glob("*.html"):
        text = page.read_text()
        assert "<script>" not in text and " style=" not in text and " on" + "click=" not in text, page
        assert "http://" not in text and "https://" not in text, page
    for script in static.glob("*.js"):
        text = script.read_text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", ""), script
        assert "https://" not in text, script


def test_request_body_cap(keyed: Keyed) -> None:
    with keyed.http() as h:
        r = h.post(
            "/signin", content=b"key=" + b"x" * 100_000, headers={"content-type": "application/x-www-form-urlencoded"}
        )
        assert r.status_code == 413
        assert r.text.startswith("request body too large") and r.text.count("\n") == 1
        r = h.post("/api/campaigns", content=b"x" * 100_000)
        assert_problem(r, 413, "RESOURCE_EXHAUSTED")


# -- shapes: the proto3 JSON of the gRPC responses ---------------------------------------


def test_json_is_the_grpc_response(keyed: Keyed) -> None:
    r = keyed.client.reports
    c = keyed.client.campaigns
    cases = [
        (
            f"/api/campaigns/{CAMPAIGN}/stats",
            report_pb2.GetCampaignStatsResponse(),
            r.GetCampaignStats(report_pb2.GetCampaignStatsRequest(campaign_id=CAMPAIGN)),
        ),
        (
            f"/api/campaigns/{CAMPAIGN}/clicks",
            report_pb2.GetClickBreakdownResponse(),
            r.GetClickBreakdown(report_pb2.GetClickBreakdownRequest(campaign_id=CAMPAIGN)),
        ),
        (
            f"/api/campaigns/{CAMPAIGN}/timeline?width=minute",
            report_pb2.GetCampaignTimelineResponse(),
            r.GetCampaignTimeline(
                report_pb2.GetCampaignTimelineRequest(
                    campaign_id=CAMPAIGN, width=report_pb2.TIMELINE_BUCKET_WIDTH_MINUTE
                )
            ),
        ),
        (
            f"/api/campaigns/{CAMPAIGN}/failures",
            report_pb2.StreamFailureReasonsResponse(),
            next(iter(r.StreamFailureReasons(report_pb2.StreamFailureReasonsRequest(campaign_id=CAMPAIGN)))),
        ),
        (
            f"/api/campaigns/{CAMPAIGN}",
            campaign_pb2.GetCampaignResponse(),
            c.GetCampaign(campaign_pb2.GetCampaignRequest(campaign_id=CAMPAIGN)),
        ),
        (
            "/api/campaigns?filter=labels.t%3Dx",
            campaign_pb2.ListCampaignsResponse(),
            c.ListCampaigns(campaign_pb2.ListCampaignsRequest(filter="labels.t=x")),
        ),
    ]
    with keyed.http(keyed.read) as h:
        for path, empty, expected in cases:
            response = h.get(path)
            assert response.status_code == 200, (path, response.text)
            assert response.headers["content-type"].startswith("application/json")
            assert parsed(response.text, empty) == expected, path
        # Every field is present (zeros too), named as the proto3 JSON mapping names it.
        stats = h.get(f"/api/campaigns/{CAMPAIGN}/stats").json()["stats"]
        assert set(stats["overall"]["counts"]) >= {"total", "pending", "notSubmitted", "deliveryNotConfirmed"}


def test_message_report_is_paged_by_the_server(keyed: Keyed) -> None:
    request = report_pb2.StreamMessageReportRequest(
        campaign_id=CAMPAIGN,
        page_size=5,
        filter=report_pb2.MessageFilter(statuses=[common_pb2.MESSAGE_STATUS_SUCCESS, common_pb2.MESSAGE_STATUS_FAILED]),
    )
    grpc_rows = [row for page in keyed.client.reports.StreamMessageReport(request) for row in page.rows]
    assert len(grpc_rows) == 8
    rows: list[Any] = []
    token = ""
    pages = 0
    with keyed.http(keyed.read) as h:
        while True:
            params = {"status": ["SUCCESS", "failed"], "page_size": "5", "resume_token": token}
            response = h.get(f"/api/campaigns/{CAMPAIGN}/messages", params=params)
            assert response.status_code == 200, response.text
            page = parsed(response.text, report_pb2.StreamMessageReportResponse())
            rows.extend(page.rows)
            pages += 1
            if len(page.rows) < 5:
                break
            token = page.resume_token
        bad = h.get(f"/api/campaigns/{CAMPAIGN}/messages", params={"status": "DELIVERED"})
        assert bad.status_code == 400
        assert bad.json()["violations"] == [
            {"field": "status", "description": "unknown status 'DELIVERED'", "reason": "UNKNOWN_VALUE"}
        ]
    assert pages == 2
    assert rows == grpc_rows


def engaged(client: Client, recipient: str, kind: int, event_id: str, text: str = "") -> None:
    event = ingest_pb2.EngagementEvent(
        event_id=event_id, campaign_id=CAMPAIGN, recipient=recipient, kind=kind, occurred_at=now_ts(), text=text
    )
    reply = next(
        iter(
            client.ingest.StreamEvents(
                iter([ingest_pb2.StreamEventsRequest(events=[ingest_pb2.Event(engagement=event)])])
            )
        )
    )
    assert reply.accepted == 1, reply


def test_engagement_filters_of_the_message_report(keyed: Keyed) -> None:
    """read=, replied=, clicked_link=... are the MessageFilter's tri-state
    engaged segments: the page's rows are StreamMessageReport's."""
    K = ingest_pb2
    engaged(keyed.client, "+15550000001", K.ENGAGEMENT_KIND_READ, "e-read-1")
    engaged(keyed.client, "+15550000002", K.ENGAGEMENT_KIND_READ, "e-read-2")
    engaged(keyed.client, "+15550000002", K.ENGAGEMENT_KIND_REPLIED, "e-reply-2", "yes please")
    cases = [
        ({"read": "true"}, report_pb2.MessageFilter(read=True)),
        ({"read": "true", "replied": "false"}, report_pb2.MessageFilter(read=True, replied=False)),
        ({"clicked_link": "true"}, report_pb2.MessageFilter(clicked_link=True)),
        (
            {"clicked_link": "false", "status": "FAILED"},
            report_pb2.MessageFilter(clicked_link=False, statuses=[common_pb2.MESSAGE_STATUS_FAILED]),
        ),
        (
            {"opted_out": "", "reached_goal": "false", "clicked_button": "false"},
            report_pb2.MessageFilter(reached_goal=False, clicked_button=False),
        ),
    ]
    with keyed.http(keyed.read) as h:
        for params, flt in cases:
            request = report_pb2.StreamMessageReportRequest(campaign_id=CAMPAIGN, filter=flt, page_size=100)
            expected = [
                row.recipient for page in keyed.client.reports.StreamMessageReport(request) for row in page.rows
            ]
            response = h.get(f"/api/campaigns/{CAMPAIGN}/messages", params={**params, "page_size": "100"})
            assert response.status_code == 200, response.text
            got = [row.recipient for row in parsed(response.text, report_pb2.StreamMessageReportResponse()).rows]
            assert got == expected, params
        assert [
            len(h.get(f"/api/campaigns/{CAMPAIGN}/messages", params={"read": v}).json()["rows"])
            for v in ("true", "false")
        ] == [2, 10]
        bad = h.get(f"/api/campaigns/{CAMPAIGN}/messages", params={"replied": "maybe"})
        assert bad.status_code == 400
        assert bad.json()["violations"] == [
            {"field": "replied", "description": "must be true or false", "reason": "NOT_A_BOOLEAN"}
        ]
        # The export takes the same filters.
        export = h.get(f"/api/campaigns/{CAMPAIGN}/export", params={"kind": "messages", "read": "true"})
        assert export.status_code == 200
        assert len(export.text.strip().splitlines()) == 1 + 2


def test_replies_are_stream_replies_pages(keyed: Keyed) -> None:
    K = ingest_pb2
    for i in range(5):
        engaged(keyed.client, f"+1555000{i:04d}", K.ENGAGEMENT_KIND_REPLIED, f"reply-{i}", f"answer {i}")
    request = report_pb2.StreamRepliesRequest(campaign_id=CAMPAIGN, page_size=2)
    expected = [row for page in keyed.client.reports.StreamReplies(request) for row in page.rows]
    assert [r.text for r in expected] == [f"answer {i}" for i in range(5)]
    rows: list[Any] = []
    token = ""
    with keyed.http(keyed.read) as h:
        while True:
            response = h.get(f"/api/campaigns/{CAMPAIGN}/replies", params={"page_size": "2", "resume_token": token})
            assert response.status_code == 200, response.text
            page = parsed(response.text, report_pb2.StreamRepliesResponse())
            rows.extend(page.rows)
            if not page.resume_token or len(page.rows) < 2:
                break
            token = page.resume_token
        assert rows == expected
        one = h.get(f"/api/campaigns/{CAMPAIGN}/replies", params={"recipient": "+15550000003"}).json()
        assert [(r["recipient"], r["text"]) for r in one["rows"]] == [("+15550000003", "answer 3")]
        assert h.get("/api/campaigns/nope/replies").status_code == 404
        assert h.get(f"/api/campaigns/{CAMPAIGN}/replies", params={"page_size": "-1"}).status_code == 400
    with keyed.http(keyed.ingest) as h:  # the read scope, as StreamReplies
        assert h.get(f"/api/campaigns/{CAMPAIGN}/replies").status_code == 403


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_export_streams_the_export_report_bytes(keyed: Keyed, fmt: str) -> None:
    request = report_pb2.ExportReportRequest(
        campaign_id=CAMPAIGN,
        kind=report_pb2.EXPORT_KIND_CLICKS,
        format=report_pb2.EXPORT_FORMAT_XLSX if fmt == "xlsx" else report_pb2.EXPORT_FORMAT_CSV,
    )
    chunks = list(keyed.client.reports.ExportReport(request))
    with keyed.http(keyed.read) as h:
        r = h.get(f"/api/campaigns/{CAMPAIGN}/export", params={"kind": "clicks", "format": fmt})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(chunks[0].content_type.split(";")[0])
    assert r.headers["content-disposition"] == f'attachment; filename="{chunks[0].file_name}"'
    if fmt == "csv":
        assert r.content == b"".join(c.chunk for c in chunks)
        assert r.content.decode("utf-8-sig").count("\n") == 1 + 3
    else:
        assert r.content[:2] == b"PK"  # a workbook (its zip timestamps differ between two runs)


@pytest.mark.parametrize("layout", ["connectly", "audience"])
def test_export_takes_the_layout(keyed: Keyed, layout: str) -> None:
    """?layout= is ExportReport's layout: the same bytes; with a filter, the
    failed recipients as an audience file to retry; an unknown layout, or a
    layout of another kind, is a 400 problem naming the field."""
    number = {"connectly": report_pb2.EXPORT_LAYOUT_CONNECTLY, "audience": report_pb2.EXPORT_LAYOUT_AUDIENCE}[layout]
    request = report_pb2.ExportReportRequest(campaign_id=CAMPAIGN, layout=number)
    expected = b"".join(c.chunk for c in keyed.client.reports.ExportReport(request))
    with keyed.http(keyed.read) as h:
        r = h.get(f"/api/campaigns/{CAMPAIGN}/export", params={"layout": layout.upper()})
        assert r.status_code == 200
        assert r.content == expected
        if layout == "audience":
            assert r.content.decode("utf-8-sig").splitlines()[0] == "recipient,channel,variant,input_variables"
            failed = h.get(f"/api/campaigns/{CAMPAIGN}/export", params={"layout": layout, "status": "failed"})
            request.message_filter.statuses.append(common_pb2.MESSAGE_STATUS_FAILED)
            assert failed.content == b"".join(c.chunk for c in keyed.client.reports.ExportReport(request))
        bad = h.get(f"/api/campaigns/{CAMPAIGN}/export", params={"layout": "nope"})
        assert bad.status_code == 400
        assert bad.headers["content-type"] == "application/problem+json"
        assert [v["field"] for v in bad.json()["violations"]] == ["layout"]
        other = h.get(f"/api/campaigns/{CAMPAIGN}/export", params={"layout": layout, "kind": "clicks"})
        assert other.status_code == 400, other.text


# -- live --------------------------------------------------------------------------------


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    name, data = "message", ""
    for line in lines:
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data = line[5:].strip()
        elif line == "" and data:
            yield name, data
            name, data = "message", ""


def test_live_stats_follow_commits_and_end_on_drain(keyed: Keyed) -> None:
    received: list[tuple[str, str]] = []
    first = threading.Event()
    moved = threading.Event()

    def listen() -> None:
        with keyed.http(keyed.read) as h, h.stream("GET", f"/api/campaigns/{CAMPAIGN}/live") as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            for event in sse_events(r.iter_lines()):
                received.append(event)
                first.set()
                if event[0] == "stats" and '"success": "5"' in event[1].replace('"success":"5"', '"success": "5"'):
                    moved.set()

    reader = threading.Thread(target=listen, daemon=True)
    reader.start()
    assert first.wait(DEADLINE)
    name, data = received[0]
    assert name == "stats"
    expected = keyed.client.reports.GetCampaignStats(report_pb2.GetCampaignStatsRequest(campaign_id=CAMPAIGN))
    assert parsed(data, report_pb2.WatchCampaignStatsResponse()).stats == expected.stats
    keyed.client.ingest.RecordStatusEvent(
        ingest_pb2.RecordStatusEventRequest(
            event=ingest_pb2.StatusEvent(
                event_id="late",
                campaign_id=CAMPAIGN,
                recipient="+19990000",
                status=common_pb2.MESSAGE_STATUS_SUCCESS,
                occurred_at=now_ts(),
            )
        )
    )
    assert moved.wait(DEADLINE), received
    keyed.server.stop()  # the drain ends the live stream with "bye"; stop() returns once it is closed
    reader.join(DEADLINE)
    assert not reader.is_alive()
    assert received[-1][0] == "bye"


def test_live_unknown_campaign_is_not_found(keyed: Keyed) -> None:
    with keyed.http(keyed.read) as h:
        r = h.get("/api/campaigns/nope/live")
    assert r.status_code == 404


# -- start-up and TLS ----------------------------------------------------------------------


def test_http_port_in_use_is_a_startup_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StartupError, match=f"cannot listen on 127.0.0.1:{port} \\(HTTP\\)"):
            start_server(tmp_path, http=f"127.0.0.1:{port}")
    with pytest.raises(StartupError, match="HOST:PORT"):
        start_server(tmp_path, http="nonsense")


def test_tls_http(tmp_path: Path, pki: Pki) -> None:  # noqa: F811
    create_key(database_of(tmp_path), "acme", Scope.READ)
    server = start_server(tmp_path, http="127.0.0.1:0", tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))
    try:
        assert server.running.http is not None
        url = server.running.http.url
        assert url.startswith("https://")
        with pytest.raises((httpx.ConnectError, httpx.RemoteProtocolError)):
            httpx.get(url.replace("https://", "http://") + "/metrics", timeout=DEADLINE)
        with httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=str(pki.ca)), timeout=DEADLINE) as h:
            assert h.get("/metrics").status_code == 200
            key = create_key(database_of(tmp_path), "acme", Scope.READ)
            r = h.post("/signin", data={"key": key})
            assert r.status_code == 303
            assert "secure" in {p.strip().lower() for p in r.headers["set-cookie"].split(";")}
            assert r.headers["strict-transport-security"].startswith("max-age=")
    finally:
        server.stop()


@pytest.mark.sqlite_only("no database: --help only")
def test_serve_help_mentions_http() -> None:
    from click.testing import CliRunner

    from flowtrack.cli import cli

    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0
    assert "--http" in result.output and "/metrics" in result.output


def test_json_errors_carry_the_violations(keyed: Keyed) -> None:
    with keyed.http(keyed.read) as h:
        r = h.get(f"/api/campaigns/{CAMPAIGN}/timeline", params={"width": "week"})
        assert r.status_code == 400
        error = r.json()
        assert error["code"] == "INVALID_ARGUMENT" and error["type"] == "urn:flowtrack:problem:INVALID_ARGUMENT"
        assert error["title"] == "Invalid argument" and error["status"] == 400
        assert error["violations"][0]["field"] == "width"
        assert error["detail"] and "\n" not in error["detail"]
        assert json.loads(r.text) == r.json()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.sqlite_only("serves a SQLite file in a subprocess")
def test_serve_and_simulate_as_the_readme_shows(tmp_path: Path) -> None:
    """`flowtrack serve` with FLOWTRACK_HTTP, `flowtrack simulate` into it: the
    page lists the campaign, /metrics moved, SIGTERM stops both listeners."""
    grpc_port, http_port = _free_port(), _free_port()
    env = {**os.environ, "FLOWTRACK_GRACE": "1", "FLOWTRACK_HTTP": f"127.0.0.1:{http_port}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowtrack", "serve", "--listen", f"127.0.0.1:{grpc_port}",
         "--database", str(tmp_path / "s.db")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                if httpx.get(url + "/metrics", timeout=DEADLINE).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        done = subprocess.run(
            [sys.executable, "-m", "flowtrack", "simulate", "--address", f"127.0.0.1:{grpc_port}",
             "--campaign", "demo", "--recipients", "50", "--quiet"],
            capture_output=True, text=True, env=os.environ, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        page = httpx.get(url + "/api/campaigns", timeout=DEADLINE).json()
        assert [c["id"] for c in page["campaigns"]] == ["demo"]
        metrics = httpx.get(url + "/metrics", timeout=DEADLINE).text
        accepted = re.search(r'^flowtrack_events_total\{kind="status",result="accepted"\} (\S+)$', metrics, re.M)
        assert accepted and float(accepted.group(1)) > 50
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"HTTP listener on {url}" in err


def test_live_stream_ends_when_the_session_key_is_revoked(keyed: Keyed) -> None:
    r = sign_in(keyed, keyed.read, origin=keyed.url)
    cookie = r.cookies[COOKIE]
    received: list[tuple[str, str]] = []
    first = threading.Event()

    def listen() -> None:
        with keyed.http(cookies={COOKIE: cookie}) as h, h.stream("GET", f"/api/campaigns/{CAMPAIGN}/live") as live:
            assert live.status_code == 200
            for event in sse_events(live.iter_lines()):
                received.append(event)
                first.set()

    reader = threading.Thread(target=listen, daemon=True)
    reader.start()
    assert first.wait(DEADLINE)
    revoke_key(keyed.server.settings.database, keyed.read)
    reader.join(DEADLINE)  # the stream ends by itself: credentials are checked again every few seconds
    assert not reader.is_alive()
    name, data = received[-1]
    assert name == "signed-out"
    assert json.loads(data)["reason"] == "SESSION_EXPIRED"


def test_other_modules_mount_their_routes(tmp_path: Path) -> None:
    """create_server(http_routes=...) puts another module's routes on the
    listener (before flowtrack's own), behind the same security headers."""
    import asyncio

    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from flowtrack.config import Settings
    from flowtrack.server import create_server

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"hello from {request.app.state.web.settings.http}")

    async def run() -> None:
        settings = Settings(listen="127.0.0.1:0", database=str(tmp_path / "f.db"), http="127.0.0.1:0", grace=0.5)
        running = await create_server(settings, http_routes=[Route("/reporting/hello", hello)])
        try:
            assert running.http is not None
            async with httpx.AsyncClient(base_url=running.http.url, timeout=DEADLINE) as h:
                r = await h.get("/reporting/hello")
            assert r.status_code == 200 and r.text == "hello from 127.0.0.1:0"
            assert r.headers["x-content-type-options"] == "nosniff"
        finally:
            await running.stop()

    asyncio.run(run())


# -- safe at the edges (issue 18: 10, 13) -------------------------------------------------------

PAGED = [
    ("/api/campaigns", "page_size"),
    (f"/api/campaigns/{CAMPAIGN}/failures", "page_size"),
    (f"/api/campaigns/{CAMPAIGN}/failures", "sample_size"),
    (f"/api/campaigns/{CAMPAIGN}/click-report", "page_size"),
    (f"/api/campaigns/{CAMPAIGN}/messages", "page_size"),
]


def assert_problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, (r.request.url, r.text)
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["code"] == code and body["type"] == f"urn:flowtrack:problem:{code}"
    assert body["title"] and body["detail"] and "\n" not in body["detail"]
    return body


def test_out_of_range_integers_are_a_400_naming_the_parameter(keyed: Keyed) -> None:
    with keyed.http(keyed.read) as h:
        for path, name in PAGED:
            for value in ("2147483648", str(2**63), "-1", "1e3", "²", "x" * 30):
                body = assert_problem(h.get(path, params={name: value}), 400, "INVALID_ARGUMENT")
                assert [v["field"] for v in body["violations"]] == [name], (path, value)
                assert body["violations"][0]["reason"] in ("OUT_OF_RANGE", "NOT_A_NUMBER")
            # The largest int32 is served (capped to the route's own maximum).
            assert h.get(path, params={name: "2147483647"}).status_code == 200, path


def test_a_signed_link_with_non_ascii_expires_or_sig_is_altered(keyed: Keyed) -> None:
    with keyed.http() as h:
        for query in ("expires=%C2%B2&sig=00", "expires=2000000000&sig=%C3%A9", "expires=%EF%BC%91&sig=%00"):
            r = h.get(f"/reports/runs/run_x?{query}")
            assert r.status_code == 403, query
            assert r.text == "link altered: its signature does not match\n"


def test_a_non_ascii_session_cookie_is_refused_not_a_500(keyed: Keyed) -> None:
    for value in ("\u00e9".encode(), "\u00e9.\u00e9".encode(), b"eyJ9.\xff"):
        with keyed.http() as h:
            cookie = f"{COOKIE}=".encode() + value
            r = h.get("/api/campaigns", headers={"cookie": cookie})  # type: ignore[dict-item]
            assert_problem(r, 401, "UNAUTHENTICATED")
            r = h.get(f"/campaigns/{CAMPAIGN}", headers={"cookie": cookie})  # type: ignore[dict-item]
            assert r.status_code == 303 and r.headers["location"].startswith("/signin")


def test_unknown_routes_and_methods_under_api_are_problems(keyed: Keyed) -> None:
    with keyed.http(keyed.read) as h:
        assert_problem(h.get("/api/nothing-here"), 404, "NOT_FOUND")
        assert_problem(h.post("/api/campaigns"), 405, "UNIMPLEMENTED")
        assert h.get("/nothing-here").headers["content-type"].startswith("text/plain")


def implicit_campaign(client: Client, campaign_id: str) -> None:
    """A campaign made by an event naming it (any printable ASCII id, '/' included)."""
    event = ingest_pb2.Event(
        status=ingest_pb2.StatusEvent(
            event_id=f"e-{campaign_id}",
            campaign_id=campaign_id,
            recipient="+15550001111",
            status=common_pb2.MESSAGE_STATUS_SUCCESS,
            occurred_at=now_ts(),
            channel="sms",
        )
    )
    reply = next(iter(client.ingest.StreamEvents(iter([ingest_pb2.StreamEventsRequest(events=[event])]))))
    assert reply.accepted == 1, reply


ODD_IDS = ["a/stats", "b/c/live", "%2F", "q?x=1#f", "sp%20ace", "back\\slash", "../up", "a/"]


def test_campaign_ids_with_slashes_and_other_characters_are_addressable(keyed: Keyed) -> None:
    from urllib.parse import quote

    for campaign_id in ODD_IDS:
        implicit_campaign(keyed.client, campaign_id)
    implicit_campaign(keyed.client, "a")  # "a/stats" must not be read as the stats of "a"
    with keyed.http(keyed.read) as h:
        for campaign_id in ODD_IDS:
            path = "/api/campaigns/" + quote(campaign_id, safe="")
            r = h.get(path)
            assert r.status_code == 200, (campaign_id, r.text)
            assert parsed(r.text, campaign_pb2.GetCampaignResponse()).campaign.id == campaign_id
            for suffix in ("/stats", "/failures", "/clicks", "/click-report", "/timeline", "/messages"):
                assert h.get(path + suffix).status_code == 200, (campaign_id, suffix)
            stats = parsed(h.get(path + "/stats").text, report_pb2.GetCampaignStatsResponse())
            assert stats.stats.overall.counts.success == 1
            export = h.get(path + "/export")
            assert export.status_code == 200 and export.text.count("\n") == 2  # header and one row
            with h.stream("GET", path + "/live") as live:
                assert live.status_code == 200
                assert next(sse_events(live.iter_lines()))[0] == "stats"
            page = h.get("/campaigns/" + quote(campaign_id, safe=""))
            assert page.status_code == 200 and "campaign.js" in page.text
        # The literal slash still separates the route's suffix: the stats of "a".
        assert "stats" in h.get("/api/campaigns/a/stats").json()
        assert h.get("/api/campaigns/a%2Fstats").json()["campaign"]["id"] == "a/stats"
        assert_problem(h.get("/api/campaigns/nope%2Fstats"), 404, "NOT_FOUND")
        # Characters no id may hold (a NUL, bad UTF-8, non-ASCII): not found, on either backend.
        for odd in ("a%00b", "%FF%FE", "caf%C3%A9", "%"):
            assert h.get(f"/api/campaigns/{odd}/stats").status_code in (400, 404), odd
            assert h.get(f"/campaigns/{odd}").status_code == 404, odd


def test_an_unknown_campaign_page_is_a_404(keyed: Keyed) -> None:
    with keyed.http(keyed.read) as h:
        for path in ("/campaigns/nope", "/campaigns/nope%2Fstats", "/campaigns/" + "x" * 200):
            r = h.get(path)
            assert r.status_code == 404, path
            assert "Campaign not found" in r.text
        with keyed.http(keyed.foreign) as foreign:
            assert foreign.get(f"/campaigns/{CAMPAIGN}").status_code == 404  # another business's campaign
        assert h.get(f"/campaigns/{CAMPAIGN}").status_code == 200


def test_sign_in_goes_back_to_the_page_that_asked_only_if_it_is_local(keyed: Keyed) -> None:
    with keyed.http() as h:
        r = h.get(f"/campaigns/{CAMPAIGN}", params={"x": "1"})
        assert r.headers["location"] == f"/signin?next=%2Fcampaigns%2F{CAMPAIGN}%3Fx%3D1"
    good = f"/campaigns/{CAMPAIGN}?x=1"
    with keyed.http() as h:
        r = h.post("/signin", data={"key": keyed.read, "next": good}, headers={"origin": keyed.url})
        assert r.status_code == 303 and r.headers["location"] == good
        r = h.post("/signin", data={"key": "ft_nope_nope", "next": good}, headers={"origin": keyed.url})
        assert r.headers["location"] == "/signin?error=INVALID_API_KEY&next=%2Fcampaigns%2Fc-1%3Fx%3D1"
        for bad in (
            "//evil.example/x",
            "/\\evil.example",
            "https://evil.example/",
            "javascript:alert(1)",
            "evil.example",
            "/\t/evil.example",
            "/\r\nSet-Cookie: x=1",
            "/caf\u00e9",
            "/" + "a" * 3000,
        ):
            r = h.post("/signin", data={"key": keyed.read, "next": bad}, headers={"origin": keyed.url})
            assert r.status_code == 303 and r.headers["location"] == "/", bad


def test_a_nul_in_a_report_filter_is_invalid_argument_over_grpc_and_http(keyed: Keyed) -> None:
    """PostgreSQL text cannot hold U+0000: a filter carrying one is refused
    (INVALID_ARGUMENT naming the field, reason NUL_CHARACTER) before any
    database is asked, the same on both backends and through both doors."""
    import grpc

    from tests.conftest import error_details

    nul = "a\x00b"
    grpc_calls: list[tuple[str, Any]] = [
        ("filter.recipient", lambda: report_pb2.MessageFilter(recipient=nul)),
        ("filter.channel", lambda: report_pb2.MessageFilter(channel=nul)),
        ("filter.failure_code", lambda: report_pb2.MessageFilter(failure_code=nul)),
    ]
    for field, make in grpc_calls:
        request = report_pb2.StreamMessageReportRequest(campaign_id=CAMPAIGN, filter=make())
        with pytest.raises(grpc.RpcError) as raised:
            list(keyed.client.reports.StreamMessageReport(request))
        details = error_details(raised.value)
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert details.violation_reasons == {field: "NUL_CHARACTER"}
    with pytest.raises(grpc.RpcError) as raised:
        list(
            keyed.client.reports.StreamClickReport(
                report_pb2.StreamClickReportRequest(campaign_id=CAMPAIGN, filter=report_pb2.ClickFilter(link_id=nul))
            )
        )
    assert error_details(raised.value).violation_reasons == {"filter.link_id": "NUL_CHARACTER"}
    with pytest.raises(grpc.RpcError) as raised:
        list(
            keyed.client.reports.StreamMessageHistory(
                report_pb2.StreamMessageHistoryRequest(campaign_id=CAMPAIGN, recipient=nul)
            )
        )
    assert error_details(raised.value).violation_reasons == {"recipient": "NUL_CHARACTER"}
    with keyed.http(keyed.read) as h:
        for path, name in [
            ("messages", "recipient"),
            ("messages", "channel"),
            ("messages", "failure_code"),
            ("click-report", "link_id"),
        ]:
            r = h.get(f"/api/campaigns/{CAMPAIGN}/{path}", params={name: nul})
            error = assert_problem(r, 400, "INVALID_ARGUMENT")
            assert [v["reason"] for v in error["violations"]] == ["NUL_CHARACTER"], r.text
            assert error["violations"][0]["field"].endswith(name)
