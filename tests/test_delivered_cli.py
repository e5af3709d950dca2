"""Reports delivered from the command line and across a crash: the CLI
commands against a real server, a server SIGKILLed with deliveries pending
that delivers them after restart (same webhook-id), and docs/delivered.md's
walkthrough ("send me the messages CSV when each campaign completes") run as
written."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner, Result
from standardwebhooks import Webhook

from flowtrack.cli import cli
from flowtrack.domain.times import now_us
from flowtrack.v1 import campaign_pb2, common_pb2, delivery_pb2, delivery_pb2_grpc, report_pb2
from tests.conftest import ServerThread, make_client, start_server
from tests.receivers import Receiver, wait_until
from tests.report_helpers import add_recipients, send_events, status_event

# slow: servers and webhook receivers as processes (the quick loop, `pytest -m "not slow"`, leaves it out)
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
S = common_pb2.MessageStatus


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(address: str, *args: str) -> Result:
    env = {"FLOWTRACK_ADDRESS": address, "COLUMNS": "200"}
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, f"{args}: exit {result.exit_code}\n{result.output}"
    return result


def complete_campaign(address: str, campaign_id: str, recipients: int) -> None:
    client = make_client(address)
    try:
        client.campaigns.CreateCampaign(
            campaign_pb2.CreateCampaignRequest(
                campaign=campaign_pb2.Campaign(id=campaign_id, state=campaign_pb2.CAMPAIGN_STATE_RUNNING)
            )
        )
        names = [f"+1555{i:07d}" for i in range(recipients)]
        add_recipients(client, campaign_id, [(n, "sms", "") for n in names])
        at = now_us() - 1_000_000
        success = S.MESSAGE_STATUS_SUCCESS
        events = [status_event(f"{campaign_id}-{i}", campaign_id, n, success, at) for i, n in enumerate(names)]
        send_events(client, events)
    finally:
        client.channel.close()


@pytest.fixture
def fast(tmp_path: Path) -> Iterator[ServerThread]:
    running = start_server(
        tmp_path, http="127.0.0.1:0", webhook_allow_private=True, webhook_retry_base=0.05, scheduler_tick=0.2
    )
    yield running
    running.stop()


def test_the_cli_manages_webhooks_and_schedules_and_downloads_a_run(fast: ServerThread, tmp_path: Path) -> None:
    receiver = Receiver()
    try:
        address = fast.address
        added = run(
            address, "webhooks", "add", receiver.url, "--event", "campaign.completed", "--event", "report.completed"
        )
        secret = added.output.strip().splitlines()[-1]
        assert re.fullmatch(r"whsec_[A-Za-z0-9+/=]{44}", secret)
        endpoint_id = added.output.split()[1].rstrip(":")
        scheduled = run(address, "reports", "schedule", "--kind", "messages", "--format", "csv", "--on-complete")
        schedule_id = scheduled.output.split()[1].rstrip(":")
        assert schedule_id.startswith("rs_")

        complete_campaign(address, "cli", 5)
        receiver.wait_for(2)
        assert sorted(e["type"] for e in receiver.delivered(secret)) == ["campaign.completed", "report.completed"]

        listed = json.loads(run(address, "reports", "list", "--json").output)
        (report,) = listed["reports"]
        assert report["schedule"]["id"] == schedule_id and report["schedule"]["onComplete"] is True
        run_info = report["latestRun"]
        assert run_info["status"] == "REPORT_RUN_STATUS_COMPLETED" and run_info["url"] and run_info["expiresAt"]
        assert "createTime" in run_info

        target = tmp_path / "cli.csv"
        run(address, "reports", "download", run_info["id"], "-o", str(target))
        exported = tmp_path / "export.csv"
        run(address, "export", "cli", "-o", str(exported), "--quiet")
        assert target.read_bytes() == exported.read_bytes()
        assert len(target.read_text().splitlines()) == 6

        assert endpoint_id in run(address, "webhooks", "list").output
        deliveries = run(address, "webhooks", "deliveries", "--json").output.splitlines()
        assert len(deliveries) == 2
        first = json.loads(deliveries[0])
        assert first["attempts"][0]["statusCode"] == 200
        assert "#1" in run(address, "webhooks", "deliveries").output
        run(address, "webhooks", "redeliver", first["id"])
        assert receiver.wait_for(3)[2].headers["webhook-id"] == first["id"]
        run(address, "webhooks", "remove", endpoint_id)
        run(address, "reports", "delete", schedule_id)
        assert json.loads(run(address, "reports", "list", "--json").output) == {}  # proto3 JSON: empty fields left out
    finally:
        receiver.close()


def test_the_cli_schedules_the_connectly_layout_and_refuses_it_on_clicks(fast: ServerThread, tmp_path: Path) -> None:
    address = fast.address
    command = "reports schedule --kind messages --layout connectly --format csv --on-complete"
    scheduled = run(address, *command.split())
    assert "(connectly layout)" in scheduled.output
    schedule_id = scheduled.output.split()[1].rstrip(":")

    complete_campaign(address, "seedcsv", 4)

    def completed() -> Any:
        (report,) = json.loads(run(address, "reports", "list", "--json").output)["reports"]
        latest = report.get("latestRun", {})
        return report if latest.get("status") == "REPORT_RUN_STATUS_COMPLETED" else None

    report = wait_until(completed, what="a completed run")
    assert report["schedule"]["id"] == schedule_id and report["schedule"]["layout"] == "EXPORT_LAYOUT_CONNECTLY"
    assert "(connectly layout)" in run(address, "reports", "list").output
    target = tmp_path / "run.csv"
    run(address, "reports", "download", report["latestRun"]["id"], "-o", str(target))
    exported = tmp_path / "export.csv"
    run(address, "export", "seedcsv", "--layout", "connectly", "-o", str(exported), "--quiet")
    assert target.read_bytes() == exported.read_bytes()
    lines = target.read_text().splitlines()
    assert lines[0].startswith("customer_external_id,business_id,campaign_name,") and len(lines) == 1 + 4

    env = {"FLOWTRACK_ADDRESS": address, "COLUMNS": "200"}
    args = ["reports", "schedule", "--kind", "clicks", "--layout", "connectly", "--on-complete"]
    refused = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
    assert refused.exit_code != 0 and "schedule.layout" in refused.output, refused.output
    assert len(json.loads(run(address, "reports", "list", "--json").output)["reports"]) == 1


def _serve(database: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable, "-m", "flowtrack", "serve", "--listen", f"127.0.0.1:{port}", "--database", str(database),
            "--webhook-allow-private", "--webhook-retry-base", "0.2", *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _ready(address: str) -> None:
    channel = grpc.insecure_channel(address)
    grpc.channel_ready_future(channel).result(timeout=30)
    channel.close()


@pytest.mark.sqlite_only("serves a SQLite file in subprocesses")
def test_a_server_killed_with_deliveries_pending_delivers_them_after_restart(tmp_path: Path) -> None:
    database = tmp_path / "flowtrack.db"
    port, hook_port = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    server = _serve(database, port)
    try:
        _ready(address)
        channel = grpc.insecure_channel(address)
        hooks = delivery_pb2_grpc.WebhookServiceStub(channel)
        secret = hooks.CreateWebhookEndpoint(
            delivery_pb2.CreateWebhookEndpointRequest(
                endpoint=delivery_pb2.WebhookEndpoint(
                    url=f"http://127.0.0.1:{hook_port}/hook", events=["campaign.completed"]
                )
            )
        ).secret
        complete_campaign(address, "crash", 3)

        def failed_once() -> Any:
            found = hooks.ListWebhookDeliveries(delivery_pb2.ListWebhookDeliveriesRequest()).deliveries
            return found[0] if found and found[0].attempts else None

        pending = wait_until(failed_once, what="a failed attempt (nobody listens yet)")
        assert pending.state == delivery_pb2.WEBHOOK_DELIVERY_STATE_PENDING and pending.attempts[0].status_code == 0
        assert pending.attempts[0].error
        channel.close()
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)

    receiver = Receiver(port=hook_port)
    server = _serve(database, port)
    try:
        _ready(address)
        (request,) = receiver.wait_for(1)[:1]
        assert request.headers["webhook-id"] == pending.id
        body = Webhook(secret).verify(request.body, request.headers)
        assert body["type"] == "campaign.completed" and body["data"]["campaign_id"] == "crash"
        channel = grpc.insecure_channel(address)
        hooks = delivery_pb2_grpc.WebhookServiceStub(channel)

        def delivered() -> Any:
            (found,) = hooks.ListWebhookDeliveries(delivery_pb2.ListWebhookDeliveriesRequest()).deliveries
            return found if found.state == delivery_pb2.WEBHOOK_DELIVERY_STATE_DELIVERED else None

        done = wait_until(delivered, what="the delivery recorded")
        assert done.attempts[-1].status_code == 200 and len(done.attempts) >= 2
        assert len(receiver.requests) == 1
        channel.close()
    finally:
        server.terminate()
        server.communicate(timeout=30)
        receiver.close()


def _walkthrough() -> str:
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "docs" / "delivered.md").read_text(), re.S)
    # The webhook walkthrough (the email one is tests/test_notifications.py's).
    (block,) = [b for b in blocks if "flowtrack webhooks listen" in b]
    return block


@pytest.mark.sqlite_only("the docs' walkthrough serves a SQLite file")
def test_the_docs_walkthrough_runs_as_written(tmp_path: Path) -> None:
    grpc_port, http_port, hook_port = free_port(), free_port(), free_port()
    script = _walkthrough().replace("127.0.0.1:8080", f"127.0.0.1:{http_port}").replace("9000", str(hook_port))
    # `flowtrack` on PATH runs this checkout.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "flowtrack"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m flowtrack "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "FLOWTRACK_LISTEN": f"127.0.0.1:{grpc_port}",
        "FLOWTRACK_ADDRESS": f"127.0.0.1:{grpc_port}",
    }
    shell = subprocess.Popen(
        ["bash", "-euc", script + "\nkill %1\nwait\n"],
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
    events = [json.loads(line) for line in (tmp_path / "received.jsonl").read_text().splitlines()]
    assert [e["type"] for e in events] == ["campaign.completed", "report.completed"]
    assert events[0]["data"]["campaign_id"] == "june" and events[0]["data"]["stats"]["total"] == 200
    csv = (tmp_path / "june-messages.csv").read_bytes()
    # The file is ExportReport's, byte for byte.
    server = start_server(tmp_path)
    try:
        client = make_client(server.address)
        exported = b"".join(
            r.chunk
            for r in client.reports.ExportReport(
                report_pb2.ExportReportRequest(campaign_id="june", kind=report_pb2.EXPORT_KIND_MESSAGES)
            )
        )
        client.channel.close()
    finally:
        server.stop()
    assert csv == exported and len(csv.splitlines()) == 201
    listed = json.loads(out.strip().splitlines()[-1])
    assert listed["reports"][0]["latestRun"]["status"] == "REPORT_RUN_STATUS_COMPLETED"
