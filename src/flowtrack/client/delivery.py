"""The client commands of reports delivered: `flowtrack reports` (schedules,
their latest runs, downloads) and `flowtrack webhooks` (endpoints and their
deliveries). Like every client command, a failed call is one line on stderr
and a non-zero exit."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Any

import click
from google.protobuf import duration_pb2

from flowtrack.cli_options import DURATION
from flowtrack.client import render
from flowtrack.client.connection import EXIT_SERVER_ERROR, CliError, ConnectionOptions, connect, connection_options
from flowtrack.v1 import delivery_pb2, delivery_pb2_grpc, report_pb2

KINDS = {
    "messages": report_pb2.EXPORT_KIND_MESSAGES,
    "clicks": report_pb2.EXPORT_KIND_CLICKS,
    "failures": report_pb2.EXPORT_KIND_FAILURE_REASONS,
}
FORMATS = {"csv": report_pb2.EXPORT_FORMAT_CSV, "xlsx": report_pb2.EXPORT_FORMAT_XLSX}
LAYOUTS = {"flowtrack": report_pb2.EXPORT_LAYOUT_FLOWTRACK, "connectly": report_pb2.EXPORT_LAYOUT_CONNECTLY}
LAYOUT_NAMES = {v: k for k, v in LAYOUTS.items()}
KIND_NAMES = {v: k for k, v in KINDS.items()}
RUN_STATUS = {0: "-", 1: "processing", 2: "completed", 3: "failed"}
DELIVERY_STATE = {0: "-", 1: "pending", 2: "delivered", 3: "failed"}
EVENTS = ("campaign.completed", "report.completed", "campaign.failure_rate")
BODY_FORMATS = {
    "standard": delivery_pb2.WEBHOOK_FORMAT_STANDARD,
    "slack": delivery_pb2.WEBHOOK_FORMAT_SLACK,
    "email": delivery_pb2.WEBHOOK_FORMAT_EMAIL,
}
FORMAT_NAMES = {number: name for name, number in BODY_FORMATS.items()}


def _proto3_json(message: Any) -> str:
    """The canonical proto3 JSON of a message, one line: the CLI's one shape (render.json_line)."""
    return render.json_line(message)


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


# -- reports ---------------------------------------------------------------------------------
@click.group()
def reports() -> None:
    """Report schedules, their runs, and downloads.

    Example: flowtrack reports schedule --kind messages --format csv --on-complete
    """


@reports.command("schedule")
@click.option("--kind", type=click.Choice(sorted(KINDS)), default="messages", show_default=True, help="The report.")
@click.option(
    "--format", "fmt", type=click.Choice(sorted(FORMATS)), default="csv", show_default=True, help="File format."
)
@click.option("--campaign", "campaign_id", default="", help="The campaign (required with --cron; else every campaign).")
@click.option("--on-complete", is_flag=True, help="Run each time a campaign completes.")
@click.option("--cron", default="", metavar="EXPR", help="Run on a cron expression, e.g. '0 8 * * 1'.")
@click.option("--time-zone", default="", metavar="TZ", help="IANA time zone of --cron, e.g. Europe/Paris (UTC).")
@click.option("--name", default="", help="A display name.")
@click.option("--link-ttl", type=DURATION, default=None, help="How long signed links stay valid (default 1h).")
@click.option("--retention", type=DURATION, default=None, help="How long runs are kept (default 7d).")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(sorted(render.STATUS_BY_NAME), case_sensitive=False),
    help="messages: current status (repeatable).",
)
@click.option("--channel", default="", help="messages: only this channel.")
@click.option("--variant", default="", help="messages: only this A/B variant.")
@click.option("--failure-code", default="", help="messages: only this failure reason code.")
@click.option("--link", default="", help="clicks: only this uLink id.")
@click.option("--country", default="", help="clicks: only this ISO country code.")
@click.option(
    "--layout",
    type=click.Choice(sorted(LAYOUTS)),
    default=None,
    help="messages: the columns (default flowtrack); connectly = Connectly's campaign CSV, column for column.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the schedule as proto3 JSON.")
@connection_options
def schedule(
    kind: str,
    fmt: str,
    campaign_id: str,
    on_complete: bool,
    cron: str,
    time_zone: str,
    name: str,
    link_ttl: float | None,
    retention: float | None,
    statuses: tuple[str, ...],
    channel: str,
    variant: str,
    failure_code: str,
    link: str,
    country: str,
    layout: str | None,
    as_json: bool,
    connection: ConnectionOptions,
) -> None:
    """Create a report schedule: a report made on a cron cadence, or each time
    a campaign completes, handed out through a signed link.

    Example: flowtrack reports schedule --kind messages --format csv --on-complete

    Example: flowtrack reports schedule --campaign spring --cron '0 8 * * 1' --time-zone Europe/Paris --format xlsx

    Example: flowtrack reports schedule --kind messages --layout connectly --format csv --on-complete
    """
    if bool(cron) == on_complete:
        raise click.UsageError("give exactly one of --cron and --on-complete")
    spec = delivery_pb2.ReportSchedule(
        name=name,
        kind=KINDS[kind],  # type: ignore[arg-type]
        format=FORMATS[fmt],  # type: ignore[arg-type]
        campaign_id=campaign_id,
        cron=cron,
        time_zone=time_zone,
        on_complete=on_complete,
        layout=LAYOUTS[layout] if layout else 0,  # type: ignore[arg-type]
    )
    if link_ttl is not None:
        spec.link_ttl.CopyFrom(_duration(link_ttl))
    if retention is not None:
        spec.retention.CopyFrom(_duration(retention))
    message_filter = report_pb2.MessageFilter(
        statuses=[render.STATUS_BY_NAME[s.lower()] for s in statuses],  # type: ignore[misc]
        channel=channel,
        variant=variant,
        failure_code=failure_code,
    )
    if message_filter.ByteSize():
        spec.message_filter.CopyFrom(message_filter)
    click_filter = report_pb2.ClickFilter(link_id=link, country_code=country)
    if click_filter.ByteSize():
        spec.click_filter.CopyFrom(click_filter)
    with connect(connection) as stubs:
        api = delivery_pb2_grpc.ReportScheduleServiceStub(stubs.channel)
        created = api.CreateReportSchedule(
            delivery_pb2.CreateReportScheduleRequest(schedule=spec), timeout=stubs.timeout
        ).schedule
    if as_json:
        click.echo(_proto3_json(created))
        return
    cadence = "on complete" if created.on_complete else f"cron '{created.cron}' {created.time_zone}"
    scope = f"campaign {created.campaign_id}" if created.campaign_id else "every campaign"
    columns = f" ({LAYOUT_NAMES[created.layout]} layout)" if created.layout in LAYOUT_NAMES else ""
    click.echo(f"schedule {created.id}: {kind} as {fmt}{columns}, {cadence}, {scope}")


@reports.command("list")
@click.option("--kind", type=click.Choice(sorted(KINDS)), default=None, help="Only schedules of this report kind.")
@click.option("--json", "as_json", is_flag=True, help="The ListReports response as proto3 JSON.")
@connection_options
def list_reports(kind: str | None, as_json: bool, connection: ConnectionOptions) -> None:
    """Each schedule with its latest run: status, signed link, expiry.

    Example: flowtrack reports list --json
    """
    with connect(connection) as stubs:
        api = delivery_pb2_grpc.ReportScheduleServiceStub(stubs.channel)
        request = delivery_pb2.ListReportsRequest(kind=KINDS[kind] if kind else 0)  # type: ignore[arg-type]
        reply = api.ListReports(request, timeout=stubs.timeout)
    if as_json:
        click.echo(_proto3_json(reply))
        return
    if not reply.reports:
        click.echo("no report schedules", err=True)
        return
    for report in reply.reports:
        s, run = report.schedule, report.latest_run
        cadence = "on-complete" if s.on_complete else f"cron '{s.cron}' {s.time_zone}"
        fmt = report_pb2.ExportFormat.Name(s.format)[14:].lower()
        if s.layout == report_pb2.EXPORT_LAYOUT_CONNECTLY:
            fmt += " (connectly layout)"
        head = f"{s.id}  {KIND_NAMES.get(s.kind, '?')} {fmt}  {cadence}"
        if not report.HasField("latest_run"):
            click.echo(f"{head}  never ran")
            continue
        line = f"{head}  {run.id} {RUN_STATUS[run.status]} {run.campaign_id} {render.timestamp(run.create_time)}"
        if run.status == delivery_pb2.REPORT_RUN_STATUS_COMPLETED:
            line += f"  {run.rows:,} rows  {run.url}  (expires {render.timestamp(run.expires_at)})"
        elif run.error:
            line += f"  {run.error}"
        click.echo(line)


@reports.command("delete")
@click.argument("schedule_id", metavar="SCHEDULE")
@connection_options
def delete_schedule(schedule_id: str, connection: ConnectionOptions) -> None:
    """Delete a schedule with its runs and files (their links stop working).

    Example: flowtrack reports delete rs_abc123
    """
    with connect(connection) as stubs:
        api = delivery_pb2_grpc.ReportScheduleServiceStub(stubs.channel)
        api.DeleteReportSchedule(
            delivery_pb2.DeleteReportScheduleRequest(schedule_id=schedule_id), timeout=stubs.timeout
        )
    click.echo(f"deleted schedule {schedule_id}")


@reports.command("download")
@click.argument("run_id", metavar="RUN")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="File to write (default: the run's file name, here).",
)
@connection_options
def download(run_id: str, output: str | None, connection: ConnectionOptions) -> None:
    """Download a completed run's file with your API key (over gRPC).

    Example: flowtrack reports download run_abc123 -o june-messages.csv
    """
    temp: str | None = None
    target = output
    size = 0
    try:
        with connect(connection) as stubs:
            api = delivery_pb2_grpc.ReportScheduleServiceStub(stubs.channel)
            call = api.DownloadReportRun(delivery_pb2.DownloadReportRunRequest(run_id=run_id))
            try:
                for message in call:
                    if temp is None:
                        target = output or message.file_name or run_id
                        folder = os.path.dirname(os.path.abspath(target))
                        handle, temp = tempfile.mkstemp(prefix=".flowtrack-download-", suffix=".part", dir=folder)
                        out = os.fdopen(handle, "wb")
                    out.write(message.chunk)
                    size += len(message.chunk)
            finally:
                call.cancel()
                if temp is not None:
                    out.close()
        if temp is None or target is None:
            raise CliError("the server sent no file", EXIT_SERVER_ERROR)
        os.replace(temp, target)
        temp = None
    finally:
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp)
    click.echo(f"downloaded {run_id} to {target} ({size:,} bytes)", err=True)


# -- webhooks ----------------------------------------------------------------------------------
@click.group()
def webhooks() -> None:
    """Webhook endpoints and their deliveries: Standard Webhooks (signed),
    Slack-compatible incoming webhooks (--format slack) and email (mailto:).

    Example: flowtrack webhooks add https://example.com/hooks --event campaign.completed
    """


@webhooks.command("add")
@click.argument("url")
@click.option(
    "--event", "events", multiple=True, required=True, type=click.Choice(EVENTS), help="An event to send (repeatable)."
)
@click.option("--description", default="", help="Free text.")
@click.option(
    "--format",
    "body_format",
    type=click.Choice(tuple(BODY_FORMATS)),
    default=None,
    help="standard: the signed Standard Webhooks JSON (the default for a URL); slack: a message a"
    " Slack-compatible incoming webhook renders (not signed); email: for mailto: targets (their default).",
)
@click.option(
    "--failure-rate",
    type=click.FloatRange(0, 1, max_open=True),
    default=None,
    help="campaign.failure_rate: the limit, e.g. 0.2.",
)
@click.option(
    "--min-submitted",
    type=click.IntRange(min=0),
    default=0,
    help="campaign.failure_rate: judge after this many submitted.",
)
@connection_options
def add_webhook(
    url: str,
    events: tuple[str, ...],
    description: str,
    failure_rate: float | None,
    min_submitted: int,
    body_format: str | None,
    connection: ConnectionOptions,
) -> None:
    """Register an endpoint: an https:// URL, or mailto:ADDRESS for email
    (the server needs --smtp). A Standard Webhooks endpoint's signing secret
    (whsec_...) is printed once, on the last line: keep it to verify
    deliveries. Slack and email endpoints have none.

    Examples:

      flowtrack webhooks add https://example.com/hooks --event campaign.completed --event report.completed

      flowtrack webhooks add mailto:ops@example.com --event report.completed

      flowtrack webhooks add https://hooks.slack.com/services/T/B/X --format slack --event campaign.completed
    """
    endpoint = delivery_pb2.WebhookEndpoint(
        url=url,
        events=list(events),
        description=description,
        min_submitted=min_submitted,
        format=BODY_FORMATS[body_format] if body_format else delivery_pb2.WEBHOOK_FORMAT_UNSPECIFIED,
    )
    if failure_rate is not None:
        endpoint.failure_rate = failure_rate
    with connect(connection) as stubs:
        api = delivery_pb2_grpc.WebhookServiceStub(stubs.channel)
        reply = api.CreateWebhookEndpoint(
            delivery_pb2.CreateWebhookEndpointRequest(endpoint=endpoint), timeout=stubs.timeout
        )
    e = reply.endpoint
    shown = FORMAT_NAMES.get(e.format, "standard")
    click.echo(f"endpoint {e.id}: {e.url} ({', '.join(e.events)}){'' if shown == 'standard' else ' as ' + shown}")
    if reply.secret:
        click.echo("signing secret (shown once):")
        click.echo(reply.secret)
    else:
        click.echo(f"{shown} deliveries are not signed")


@webhooks.command("list")
@click.option("--json", "as_json", is_flag=True, help="One proto3 JSON endpoint per line.")
@connection_options
def list_webhooks(as_json: bool, connection: ConnectionOptions) -> None:
    """List endpoints (without their secrets).

    Example: flowtrack webhooks list
    """
    with connect(connection) as stubs:
        api = delivery_pb2_grpc.WebhookServiceStub(stubs.channel)
        found = api.ListWebhookEndpoints(delivery_pb2.ListWebhookEndpointsRequest(), timeout=stubs.timeout).endpoints
    for e in found:
        if as_json:
            click.echo(_proto3_json(e))
            continue
        state = f"DISABLED: {e.disabled_reason}" if e.HasField("disable_time") else "enabled"
        click.echo(f"{e.id}  {e.url}  {FORMAT_NAMES.get(e.format, 'standard')}  {','.join(e.events)}  {state}")
    if not found and not as_json:
        click.echo("no webhook endpoints", err=True)


@webhooks.command("deliveries")
@click.option("--endpoint", "endpoint_id", default="", help="Only this endpoint's deliveries.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="One proto3 JSON delivery per line.")
@connection_options
def deliveries(endpoint_id: str, limit: int, as_json: bool, connection: ConnectionOptions) -> None:
    """List deliveries, newest first, with every attempt.

    Example: flowtrack webhooks deliveries --endpoint ep_abc123
    """
    with connect(connection) as stubs:
        api = delivery_pb2_grpc.WebhookServiceStub(stubs.channel)
        request = delivery_pb2.ListWebhookDeliveriesRequest(endpoint_id=endpoint_id, page_size=min(limit, 500))
        found = list(api.ListWebhookDeliveries(request, timeout=stubs.timeout).deliveries)[:limit]
        email = set()
        if found and not as_json:  # an email endpoint's status codes are SMTP's
            listed = api.ListWebhookEndpoints(delivery_pb2.ListWebhookEndpointsRequest(), timeout=stubs.timeout)
            email = {e.id for e in listed.endpoints if e.format == delivery_pb2.WEBHOOK_FORMAT_EMAIL}
    for d in found:
        if as_json:
            click.echo(_proto3_json(d))
            continue
        click.echo(f"{d.id}  {d.type}  {DELIVERY_STATE[d.state]}  {render.timestamp(d.create_time)}  → {d.endpoint_id}")
        for a in d.attempts:
            latency = a.latency.ToMilliseconds()
            protocol = "SMTP" if d.endpoint_id in email else "HTTP"
            result = f"{protocol} {a.status_code}" if a.status_code else "no answer"
            click.echo(f"    #{a.attempt} {render.timestamp(a.time)}  {result}  {latency} ms  {a.error}".rstrip())
    if not found and not as_json:
        click.echo("no deliveries", err=True)


@webhooks.command("redeliver")
@click.argument("delivery_id", metavar="DELIVERY")
@connection_options
def redeliver(delivery_id: str, connection: ConnectionOptions) -> None:
    """Send a delivery again now (same webhook-id and body).

    Example: flowtrack webhooks redeliver msg_abc123
    """
    with connect(connection) as stubs:
        api = delivery_pb2_grpc.WebhookServiceStub(stubs.channel)
        api.RedeliverWebhook(delivery_pb2.RedeliverWebhookRequest(delivery_id=delivery_id), timeout=stubs.timeout)
    click.echo(f"redelivering {delivery_id}")


@webhooks.command("remove")
@click.argument("endpoint_id", metavar="ENDPOINT")
@connection_options
def remove(endpoint_id: str, connection: ConnectionOptions) -> None:
    """Delete an endpoint and its delivery log.

    Example: flowtrack webhooks remove ep_abc123
    """
    with connect(connection) as stubs:
        api = delivery_pb2_grpc.WebhookServiceStub(stubs.channel)
        api.DeleteWebhookEndpoint(
            delivery_pb2.DeleteWebhookEndpointRequest(endpoint_id=endpoint_id), timeout=stubs.timeout
        )
    click.echo(f"removed endpoint {endpoint_id}")


@webhooks.command("listen")
@click.option("--port", type=click.IntRange(0, 65535), default=9000, show_default=True, help="Port to listen on.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--secret", required=True, envvar="FLOWTRACK_WEBHOOK_SECRET", help="The endpoint's whsec_ secret.")
@click.option(
    "--until", "until", default=None, metavar="TYPE", help="Exit after the first verified event of this type."
)
def listen(port: int, host: str, secret: str, until: str | None) -> None:
    """A receiver for trying webhooks out: verifies each delivery's signature
    (Standard Webhooks), answers 204, and prints the verified body as one JSON
    line; a bad signature is answered 401 and reported on stderr.

    Example: flowtrack webhooks listen --port 9000 --secret whsec_... --until report.completed
    """
    import json
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from standardwebhooks import Webhook, WebhookVerificationError

    try:
        verifier = Webhook(secret)
    except Exception as error:
        raise click.BadParameter(f"not a signing secret: {error}", param_hint="--secret") from None
    done: list[bool] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            try:
                event = verifier.verify(body, {k.lower(): v for k, v in self.headers.items()})
            except WebhookVerificationError as error:
                click.echo(f"flowtrack: refused a delivery: {error}", err=True)
                self.send_response(401)
                self.end_headers()
                return
            self.send_response(204)
            self.end_headers()
            click.echo(json.dumps(event, separators=(",", ":")))
            if until is not None and event.get("type") == until:
                done.append(True)

        def log_message(self, *args: Any) -> None:
            pass

    with HTTPServer((host, port), Handler) as server:
        click.echo(f"listening on http://{host}:{server.server_address[1]}/", err=True)
        while not done:
            server.handle_request()


COMMANDS: list[click.Command] = [reports, webhooks]
