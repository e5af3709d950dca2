"""Notifications where people read them (issue 22, item 3): email through a
real SMTP server on loopback (aiosmtpd: plain, STARTTLS with a test CA,
implicit TLS, a password, a relay that refuses, one that is not there) and
Slack-compatible incoming webhooks checked by a local receiver. Same outbox,
retries, log, redelivery and disabling as Standard Webhooks endpoints."""

from __future__ import annotations

import email
import email.policy
import json
import re
import socket
import ssl
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from html import unescape
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from click.testing import CliRunner

from flowtrack.cli import cli
from flowtrack.config import Settings, parse_smtp
from flowtrack.domain.times import now_us
from flowtrack.v1 import campaign_pb2, common_pb2, delivery_pb2, delivery_pb2_grpc, report_pb2
from tests.conftest import ServerThread, error_details, make_client, start_server
from tests.receivers import Receiver, wait_until
from tests.report_helpers import add_recipients, send_events, status_event

S = common_pb2.MessageStatus
FAST: dict[str, Any] = {"webhook_allow_private": True, "webhook_retry_base": 0.05, "scheduler_tick": 0.2}
PASSWORD = "s3cret-Pa55"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- a real SMTP server ---------------------------------------------------------------------
@dataclass
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    tls: bool
    login: bytes | None


class Mailbox:
    """An aiosmtpd handler: keeps every message; answers DATA with the
    replies of `answers` first (e.g. "451 4.3.0 try later"), then 250."""

    def __init__(self, answers: list[str] | None = None) -> None:
        self.answers = list(answers or [])
        self.mails: list[Mail] = []
        self.refused = 0
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            if self.answers:
                self.refused += 1
                return self.answers.pop(0)
            parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
            assert isinstance(parsed, EmailMessage)
            self.mails.append(
                Mail(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    parsed,
                    session.ssl is not None,
                    getattr(session.auth_data, "login", None),
                )
            )
        return "250 2.0.0 OK"

    def wait_for(self, count: int) -> list[Mail]:
        return list(wait_until(lambda: len(self.mails) >= count and self.mails, what=f"{count} mails"))


def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"ops" and auth_data.password == PASSWORD.encode()
    return AuthResult(
        success=ok, handled=False, auth_data=auth_data if ok else None
    )  # handled=False: aiosmtpd answers 535 itself


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture
def smtpd() -> Iterator[Any]:
    """start(handler, **aiosmtpd options) -> port; every server stopped after the test."""
    started: list[Controller] = []

    def start(handler: Mailbox, **options: Any) -> int:
        port = free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port, **options)
        controller.start()
        started.append(controller)
        return port

    yield start
    for controller in started:
        controller.stop()


def serve(tmp_path: Path, smtp: str | None, **overrides: Any) -> ServerThread:
    options: dict[str, Any] = {**FAST, "http": "127.0.0.1:0"}
    if smtp is not None:
        options["smtp"] = parse_smtp(
            smtp, password=overrides.pop("password", ""), ca_file=overrides.pop("ca_file", None),
            starttls=overrides.pop("starttls", "auto"), sender="flowtrack <reports@example.com>",
        )  # fmt: skip
    return start_server(tmp_path, **{**options, **overrides})


@pytest.fixture
def stopping() -> Iterator[list[ServerThread]]:
    servers: list[ServerThread] = []
    yield servers
    for server in servers:
        server.stop()


# -- helpers ---------------------------------------------------------------------------------
def webhooks(server: ServerThread) -> delivery_pb2_grpc.WebhookServiceStub:
    return delivery_pb2_grpc.WebhookServiceStub(grpc.insecure_channel(server.address))


def add(server: ServerThread, url: str, *events: str, **fields: Any) -> delivery_pb2.CreateWebhookEndpointResponse:
    endpoint = delivery_pb2.WebhookEndpoint(url=url, events=list(events), **fields)
    return webhooks(server).CreateWebhookEndpoint(delivery_pb2.CreateWebhookEndpointRequest(endpoint=endpoint))


def deliveries(server: ServerThread, endpoint_id: str = "") -> list[delivery_pb2.WebhookDelivery]:
    request = delivery_pb2.ListWebhookDeliveriesRequest(endpoint_id=endpoint_id)
    return list(webhooks(server).ListWebhookDeliveries(request).deliveries)


def complete_campaign(server: ServerThread, campaign_id: str, recipients: int, *, failed: int = 0) -> None:
    client = make_client(server.address)
    try:
        client.campaigns.CreateCampaign(
            campaign_pb2.CreateCampaignRequest(
                campaign=campaign_pb2.Campaign(
                    id=campaign_id, name=f"{campaign_id} & <friends>", state=campaign_pb2.CAMPAIGN_STATE_RUNNING
                )
            )
        )
        names = [f"+1555{i:07d}" for i in range(recipients)]
        add_recipients(client, campaign_id, [(n, "sms", "") for n in names])
        at = now_us() - 1_000_000
        events = []
        for i, n in enumerate(names):
            events.append(status_event(f"{campaign_id}-s{i}", campaign_id, n, S.MESSAGE_STATUS_SUBMITTED, at))
            final = S.MESSAGE_STATUS_FAILED if i < failed else S.MESSAGE_STATUS_SUCCESS
            reason = ("E1", "bounced") if i < failed else None
            events.append(status_event(f"{campaign_id}-f{i}", campaign_id, n, final, at + 1000, reason=reason))
        results = send_events(client, events)
        assert all(r.outcome == 1 for r in results), results[:2]
    finally:
        client.channel.close()


def export_csv(server: ServerThread, campaign_id: str) -> bytes:
    client = make_client(server.address)
    try:
        request = report_pb2.ExportReportRequest(campaign_id=campaign_id, kind=report_pb2.EXPORT_KIND_MESSAGES)
        return b"".join(r.chunk for r in client.reports.ExportReport(request))
    finally:
        client.channel.close()


def cli_run(server: ServerThread, *args: str) -> str:
    result = CliRunner().invoke(cli, list(args), env={"FLOWTRACK_ADDRESS": server.address}, catch_exceptions=False)
    assert result.exit_code == 0, f"{args}: exit {result.exit_code}\n{result.output}"
    return result.output


def parts(message: EmailMessage) -> tuple[str, str]:
    """The plain-text and HTML bodies of a multipart/alternative email."""
    assert message.get_content_type() == "multipart/alternative"
    plain, html = message.get_body(("plain",)), message.get_body(("html",))
    assert plain is not None and html is not None
    return plain.get_content().replace("\r\n", "\n"), html.get_content().replace("\r\n", "\n")


def http_url(server: ServerThread) -> str:
    assert server.running.http is not None
    return server.running.http.url


# -- email -------------------------------------------------------------------------------------
def test_report_email_has_both_parts_with_the_numbers_and_a_link_that_downloads_the_report(
    tmp_path: Path, smtpd: Any, stopping: list[ServerThread]
) -> None:
    box = Mailbox()
    port = smtpd(box)
    server = serve(tmp_path, f"smtp://127.0.0.1:{port}")
    stopping.append(server)
    # The issue's CLI form.
    added = cli_run(server, "webhooks", "add", "mailto:ops@example.com", "--event", "report.completed")
    assert "as email" in added and "not signed" in added.splitlines()[-1]
    endpoint_id = added.split()[1].rstrip(":")
    cli_run(server, "reports", "schedule", "--kind", "messages", "--format", "csv", "--on-complete")
    complete_campaign(server, "june", 5)

    (mail,) = box.wait_for(1)
    assert mail.rcpt_tos == ["ops@example.com"] and mail.mail_from == "reports@example.com"
    message = mail.message
    assert message["Subject"] == "Report ready: messages of campaign june"
    assert message["From"] == "flowtrack <reports@example.com>" and message["To"] == "ops@example.com"
    (delivery,) = wait_until(lambda: [d for d in deliveries(server) if d.state == 2], what="delivered")
    assert message["Message-ID"] == f"<{delivery.id}@example.com>"  # the webhook-id of email
    plain, html = parts(message)
    assert re.search(r"^Rows: +5$", plain, re.M), plain
    assert "<th" in html and ">5</td>" in html
    (link,) = re.findall(r"^(http://\S+)$", plain, re.M)
    assert link.startswith(http_url(server) + "/reports/runs/")
    (html_link,) = re.findall(r'<a href="([^"]+)">Download june-messages\.csv</a>', html)
    assert unescape(html_link) == link
    with urllib.request.urlopen(link, timeout=30) as answer:  # no key: the link is signed
        assert answer.read() == export_csv(server, "june")

    # The delivery log: one attempt, the relay's 250; the CLI says SMTP.
    assert [(a.attempt, a.status_code, a.error) for a in delivery.attempts] == [(1, 250, "")]
    assert delivery.endpoint_id == endpoint_id and json.loads(delivery.body)["type"] == "report.completed"
    assert re.search(r"#1 .* SMTP 250", cli_run(server, "webhooks", "deliveries"))
    listed = cli_run(server, "webhooks", "list")
    assert "mailto:ops@example.com  email  report.completed  enabled" in listed

    # Redelivery sends the same message (same Message-ID) again.
    cli_run(server, "webhooks", "redeliver", delivery.id)
    second = box.wait_for(2)[1]
    assert second.message["Message-ID"] == message["Message-ID"]
    assert parts(second.message)[0] == plain


def test_starttls_with_a_test_ca_and_a_password_and_the_campaign_page_link(
    tmp_path: Path, smtpd: Any, ca: trustme.CA, ca_file: str, stopping: list[ServerThread]
) -> None:
    box = Mailbox()
    port = smtpd(box, tls_context=server_tls(ca), require_starttls=True, auth_required=True,
                 authenticator=authenticator)  # fmt: skip
    # The password from FLOWTRACK_SMTP_PASSWORD's place (not the URL), TLS required.
    server = serve(tmp_path, f"smtp://ops@127.0.0.1:{port}", password=PASSWORD, ca_file=ca_file, starttls="required")
    stopping.append(server)
    created = add(server, "mailto:ops@example.com,lead@example.com", "campaign.completed")
    assert created.secret == "" and created.endpoint.format == delivery_pb2.WEBHOOK_FORMAT_EMAIL
    complete_campaign(server, "spring:1", 10, failed=2)
    (mail,) = box.wait_for(1)
    assert mail.tls and mail.login == b"ops"
    assert sorted(mail.rcpt_tos) == ["lead@example.com", "ops@example.com"]
    assert mail.message["Subject"] == "Campaign completed: spring:1 & <friends>"
    plain, html = parts(mail.message)
    assert re.search(r"^Delivered: +8 \(80\.0%\)$", plain, re.M) and re.search(r"^Failed: +2 \(20\.0%\)$", plain, re.M)
    page = f"{http_url(server)}/campaigns/spring%3A1"
    assert page in plain.splitlines() and f'href="{page}"' in html
    with urllib.request.urlopen(page, timeout=30) as answer:  # open mode on loopback: the page itself
        assert answer.status == 200


def test_implicit_tls_smtps(tmp_path: Path, ca: trustme.CA, ca_file: str, stopping: list[ServerThread]) -> None:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port, ssl_context=server_tls(ca))
    controller.start()
    try:
        server = serve(tmp_path, f"smtps://127.0.0.1:{port}", ca_file=ca_file)
        stopping.append(server)
        add(server, "mailto:ops@example.com", "campaign.completed")
        complete_campaign(server, "tls", 2)
        (mail,) = box.wait_for(1)
        assert mail.message["Subject"] == "Campaign completed: tls & <friends>"
    finally:
        controller.stop()


def test_a_wrong_password_is_logged_like_a_failed_attempt_retried_and_never_shown(
    tmp_path: Path, smtpd: Any, ca: trustme.CA, ca_file: str, stopping: list[ServerThread]
) -> None:
    box = Mailbox()
    port = smtpd(box, tls_context=server_tls(ca), auth_required=True, authenticator=authenticator)
    wrong = "wrong-Pa55word"
    server = serve(tmp_path, f"smtp://ops:{wrong}@127.0.0.1:{port}", ca_file=ca_file)
    stopping.append(server)
    add(server, "mailto:ops@example.com", "campaign.completed")
    complete_campaign(server, "pw", 2)
    (delivery,) = wait_until(lambda: [d for d in deliveries(server) if len(d.attempts) >= 2], what="two attempts")
    assert delivery.state == 1  # pending: retried
    first = delivery.attempts[0]
    assert first.status_code == 535 and "authentication failed" in first.error, first
    listed = cli_run(server, "webhooks", "deliveries") + cli_run(server, "webhooks", "deliveries", "--json")
    assert wrong not in listed and "SMTP 535" in listed
    assert not box.mails
    assert wrong not in repr(server.settings) and wrong not in server.settings.smtp.shown()  # type: ignore[union-attr]


def test_a_refusing_relay_is_retried_then_delivers_and_one_that_is_down_disables_the_endpoint(
    tmp_path: Path, smtpd: Any, stopping: list[ServerThread]
) -> None:
    # 4xx (try later) and 5xx (refused) replies: both retried by the webhook rules, then accepted.
    box = Mailbox(answers=["451 4.3.0 Try again later", "554 5.7.1 Not now"])
    port = smtpd(box)
    server = serve(tmp_path, f"smtp://127.0.0.1:{port}")
    stopping.append(server)
    add(server, "mailto:ops@example.com", "campaign.completed")
    complete_campaign(server, "retry", 3)
    (mail,) = box.wait_for(1)
    (delivery,) = wait_until(lambda: [d for d in deliveries(server) if d.state == 2], what="delivered")
    assert [a.status_code for a in delivery.attempts] == [451, 554, 250]
    assert delivery.attempts[0].error == "SMTP 451: 4.3.0 Try again later"
    assert box.refused == 2 and mail.message["Message-ID"] == f"<{delivery.id}@example.com>"


def test_a_relay_that_is_not_there_fails_attempts_and_disables_the_endpoint(
    tmp_path: Path, stopping: list[ServerThread]
) -> None:
    server = serve(tmp_path, f"smtp://127.0.0.1:{free_port()}", webhook_disable_after=3)
    stopping.append(server)
    created = add(server, "mailto:ops@example.com", "campaign.completed")
    complete_campaign(server, "down", 1)

    def disabled() -> Any:
        (e,) = webhooks(server).ListWebhookEndpoints(delivery_pb2.ListWebhookEndpointsRequest()).endpoints
        return e if e.HasField("disable_time") else None

    endpoint = wait_until(disabled, what="the endpoint disabled")
    assert endpoint.id == created.endpoint.id and "3 failed attempts in a row" in endpoint.disabled_reason
    (delivery,) = deliveries(server)
    assert delivery.state == 3 and len(delivery.attempts) == 3
    assert all(a.status_code == 0 and "ConnectionRefusedError" in a.error for a in delivery.attempts)


# -- Slack -------------------------------------------------------------------------------------
SLACK_LINK = re.compile(r"<([^|>]+)\|([^>]+)>")


def check_slack_shape(body: dict[str, Any]) -> list[tuple[str, str]]:
    """A body Slack renders: `text` and `blocks` of sections with mrkdwn text
    or fields; every <url|text> link found in them."""
    assert set(body) == {"text", "blocks"} and isinstance(body["text"], str) and body["text"]
    links = SLACK_LINK.findall(body["text"])
    assert body["blocks"] and all(b["type"] == "section" for b in body["blocks"])
    for block in body["blocks"]:
        texts = [block["text"]] if "text" in block else block["fields"]
        assert 1 <= len(texts) <= 10
        for t in texts:
            assert t["type"] == "mrkdwn" and isinstance(t["text"], str)
            assert "<" not in SLACK_LINK.sub("", t["text"])  # no stray markup: < only in links
            links += SLACK_LINK.findall(t["text"])
    return links


def test_slack_endpoints_get_text_and_blocks_with_the_numbers_and_links_unsigned(
    tmp_path: Path, stopping: list[ServerThread]
) -> None:
    receiver = Receiver(answers=[500])
    try:
        server = serve(tmp_path, None)
        stopping.append(server)
        # The issue's CLI form.
        added = cli_run(server, "webhooks", "add", receiver.url, "--format", "slack", "--event", "campaign.completed")
        assert "as slack" in added and "whsec_" not in added
        add(server, receiver.url, "report.completed", format=delivery_pb2.WEBHOOK_FORMAT_SLACK)
        cli_run(server, "reports", "schedule", "--kind", "messages", "--format", "csv", "--on-complete")
        complete_campaign(server, "slack:1", 4, failed=1)
        requests = receiver.wait_for(3)  # the first answered 500: retried
        by_type: dict[str, dict[str, Any]] = {}
        for r in requests:
            assert r.headers["content-type"] == "application/json" and "webhook-signature" not in r.headers
            body = json.loads(r.body)
            by_type["report" if "Report ready" in body["text"] else "campaign"] = body
        completed, report = by_type["campaign"], by_type["report"]

        links = check_slack_shape(completed)
        page = f"{http_url(server)}/campaigns/slack%3A1"
        assert (page, "Open the campaign page") in links
        assert completed["text"].startswith("Campaign completed: slack:1 &amp; &lt;friends&gt;: <")
        fields = {f["text"].split("\n")[0]: f["text"].split("\n")[1] for f in completed["blocks"][1]["fields"]}
        assert fields["*Delivered*"] == "3 (75.0%)" and fields["*Failed*"] == "1 (25.0%)"

        links = check_slack_shape(report)
        (url,) = {u for u, text in links if text.startswith("Download ")}
        download = unescape(url)  # Slack writes & as &amp; in a link, and reads it back
        assert download.startswith(http_url(server) + "/reports/runs/") and "&sig=" in download
        with urllib.request.urlopen(download, timeout=30) as answer:
            assert answer.read() == export_csv(server, "slack:1")
        states = {d.state for d in deliveries(server)}
        assert states == {2}
    finally:
        receiver.close()


def test_slack_and_email_targets_are_checked_like_webhooks(tmp_path: Path, stopping: list[ServerThread]) -> None:
    server = start_server(tmp_path)  # no --webhook-allow-private, no --smtp
    stopping.append(server)
    with pytest.raises(grpc.RpcError) as refused:
        add(server, "http://127.0.0.1:9/hook", "campaign.completed", format=delivery_pb2.WEBHOOK_FORMAT_SLACK)
    assert error_details(refused.value).violation_reasons == {"endpoint.url": "PRIVATE_TARGET"}
    with pytest.raises(grpc.RpcError) as no_smtp:
        add(server, "mailto:ops@example.com", "campaign.completed")
    assert no_smtp.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_details(no_smtp.value).reason == "SMTP_NOT_CONFIGURED"
    bad = {
        "mailto:ops@example.com?subject=hi": "endpoint.url",
        "mailto:ops@example.com%0d%0aBcc:x@example.com": "endpoint.url",
        "mailto:Ops <ops@example.com>": "endpoint.url",
        "mailto:": "endpoint.url",
    }
    for url, field in bad.items():
        with pytest.raises(grpc.RpcError) as invalid:
            add(server, url, "campaign.completed")
        assert (
            invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            and field in error_details(invalid.value).violations
        )
    with pytest.raises(grpc.RpcError) as mixed:
        add(server, "mailto:ops@example.com", "campaign.completed", format=delivery_pb2.WEBHOOK_FORMAT_SLACK)
    assert error_details(mixed.value).violation_reasons == {"endpoint.format": "BAD_FORMAT"}
    with pytest.raises(grpc.RpcError) as not_mail:
        add(server, "https://example.com/x", "campaign.completed", format=delivery_pb2.WEBHOOK_FORMAT_EMAIL)
    assert error_details(not_mail.value).violation_reasons == {"endpoint.url": "BAD_URL"}


# -- the server's options ------------------------------------------------------------------------
@pytest.mark.sqlite_only("the options are parsed before any database is opened")
def test_smtp_options_never_show_the_password() -> None:
    relay = parse_smtp("smtp://ops%40example.com:p%40ss-word@mail.example.com:587")
    assert (relay.user, relay.password, relay.port, relay.sender) == (
        "ops@example.com",
        "p@ss-word",
        587,
        "ops@example.com",
    )
    settings = Settings(smtp=relay)
    assert "p@ss-word" not in repr(settings) and "p%40ss" not in repr(settings)
    assert relay.shown() == "smtp://ops@example.com:***@mail.example.com:587"
    assert parse_smtp("smtps://mail.example.com").port == 465 and parse_smtp("smtp://mail.example.com").port == 25
    result = CliRunner().invoke(cli, ["serve", "--smtp", "smtp://ops:Hunter2-secret@mail.example.com:99999"])
    assert result.exit_code == 2 and "--smtp must be" in result.output and "Hunter2" not in result.output
    result = CliRunner().invoke(
        cli, ["serve", "--smtp", "smtp://mail.example.com:25"], env={"FLOWTRACK_SMTP_PASSWORD": "Hunter2-secret"}
    )
    assert result.exit_code == 2 and "needs a user" in result.output and "Hunter2" not in result.output


# -- the docs' walkthrough ---------------------------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent


def _walkthrough() -> str:
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "docs" / "delivered.md").read_text(), re.S)
    (block,) = [b for b in blocks if "flowtrack webhooks add mailto:ops@example.com" in b]
    return block


@pytest.mark.sqlite_only("the docs' walkthrough serves a SQLite file")
def test_the_email_walkthrough_runs_as_written(tmp_path: Path) -> None:
    import os
    import signal
    import stat
    import subprocess
    import sys

    grpc_port, http_port, smtp_port = free_port(), free_port(), free_port()
    script = (
        _walkthrough()
        .replace("127.0.0.1:8080", f"127.0.0.1:{http_port}")
        .replace("127.0.0.1:2525", f"127.0.0.1:{smtp_port}")
    )
    bin_dir = tmp_path / "bin"  # `flowtrack` on PATH runs this checkout
    bin_dir.mkdir()
    shim = bin_dir / "flowtrack"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m flowtrack "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "FLOWTRACK_LISTEN": f"127.0.0.1:{grpc_port}",
        "FLOWTRACK_ADDRESS": f"127.0.0.1:{grpc_port}",
    }
    shell = subprocess.Popen(
        ["bash", "-euc", script + "\nkill %1 %2\nwait\n"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = shell.communicate(timeout=240)
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.communicate()
    assert shell.returncode == 0, f"walkthrough failed:\n{out}\n{err}"
    (mail_file,) = (tmp_path / "mail" / "new").iterdir()
    message = email.message_from_bytes(mail_file.read_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert message["Subject"] == "Report ready: messages of campaign june" and message["To"] == "ops@example.com"
    plain, html = parts(message)
    assert re.search(r"^Rows: +200$", plain, re.M) and "june-messages.csv" in html
    csv = (tmp_path / "june-messages.csv").read_bytes()
    assert len(csv.splitlines()) == 201
    assert re.search(r"#1 .* SMTP 250", out), out
    # The file is ExportReport's, byte for byte.
    server = start_server(tmp_path)
    try:
        assert csv == export_csv(server, "june")
    finally:
        server.stop()


@pytest.mark.sqlite_only("no database: the SMTP client and the message alone")
def test_a_password_is_never_sent_without_tls_and_starttls_required_is_kept(smtpd: Any) -> None:
    from datetime import UTC, datetime

    from flowtrack.delivery.mail import Opened, send_blocking
    from flowtrack.domain import notifications
    from flowtrack.domain import webhooks as rules

    box = Mailbox()
    # A relay without TLS that would take AUTH in clear.
    port = smtpd(box, auth_require_tls=False, authenticator=authenticator)
    data = {"campaign_id": "c1", "failure_rate": 0.25, "limit": 0.2, "submitted": 40, "failed": 10}
    notice = notifications.notice(rules.body(rules.CAMPAIGN_FAILURE_RATE, 0, data), "http://127.0.0.1:8080")
    message = notifications.email_message(
        notice, message_id="msg_x", sender="a@example.com", recipients=("ops@example.com",), date=datetime.now(UTC)
    )

    def attempt(url: str, **options: Any) -> tuple[int, str]:
        return send_blocking(parse_smtp(url, **options), message, ("ops@example.com",), 10, Opened())

    status, error = attempt(f"smtp://ops:{PASSWORD}@127.0.0.1:{port}")
    assert (status, error) == (0, "the SMTP server does not offer STARTTLS: the password is not sent without TLS")
    status, error = attempt(f"smtp://127.0.0.1:{port}", starttls="required")
    assert (status, error) == (0, "the SMTP server does not offer STARTTLS (--smtp-starttls required)")
    assert not box.mails
    assert attempt(f"smtp://127.0.0.1:{port}") == (250, "")  # no password, no TLS offered: auto sends
    (mail,) = box.mails
    assert mail.message["Subject"] == "Failure rate above 20.0%: campaign c1"
    plain, _ = parts(mail.message)
    assert re.search(r"^Failure rate: +25\.0%$", plain, re.M) and "http://127.0.0.1:8080/campaigns/c1" in plain
