"""The client commands of `flowtrack`: campaigns, stats, report, failures,
clicks, replies, export, tail and simulate. Each one opens a channel with `connect()`, so a
failed call ends as one line on stderr and a non-zero exit (see connection.py).
"""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import os
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from google.protobuf import field_mask_pb2, timestamp_pb2
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from flowtrack.client import audience, drive, render
from flowtrack.client import variants as variants_view
from flowtrack.client.connection import (
    EXIT_SERVER_ERROR,
    EXIT_USAGE,
    CliError,
    ConnectionOptions,
    connect,
    connection_options,
)
from flowtrack.client.simulate import SimConfig, generate
from flowtrack.domain.segments import SEGMENTS
from flowtrack.v1 import campaign_pb2, common_pb2, ingest_pb2, report_pb2

# -- shared option types ------------------------------------------------------------


def _timestamp(value: str, name: str) -> timestamp_pb2.Timestamp:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 time, e.g. 2026-05-01T09:00:00Z", param_hint=name
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(moment.astimezone(UTC))
    return ts


def _labels(values: tuple[str, ...]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", param_hint="--label")
        labels[key] = val
    return labels


STATUS_CHOICE = click.Choice(sorted(render.STATUS_BY_NAME), case_sensitive=False)
STATE_CHOICE = click.Choice(sorted(render.STATE_BY_NAME), case_sensitive=False)
SEGMENT_CHOICE = click.Choice(list(SEGMENTS))


def _echo_json(message: Any) -> None:
    click.echo(render.json_line(message))


def _print_pages(call: Any, table: render.PagedTable, limit: int | None, as_json: bool) -> tuple[int, int]:
    """Print the rows of a paged report stream (at most `limit`), a table
    page or a JSON line per row; (rows shown, sequence of the last page)."""
    shown = 0
    sequence = 0
    try:
        for page in call:
            sequence = page.sequence
            rows = list(page.rows)[: None if limit is None else limit - shown]
            shown += len(rows)
            if as_json:
                for row in rows:
                    _echo_json(row)
            else:
                table.page(rows)
            if limit is not None and shown >= limit:
                break
    finally:
        call.cancel()
    return shown, sequence


# -- campaigns ----------------------------------------------------------------------


@click.group()
def campaigns() -> None:
    """Create, list, show, change and delete campaigns.

    Example: flowtrack campaigns list --filter state=RUNNING
    """


@campaigns.command("list")
@click.option(
    "--filter", "filter_", default="", metavar="TERMS", help="e.g. 'state=RUNNING name:spring labels.team=growth'."
)
@click.option("--page-size", type=click.IntRange(min=1), default=100, show_default=True, help="Campaigns per request.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@connection_options
def list_campaigns(filter_: str, page_size: int, as_json: bool, connection: ConnectionOptions) -> None:
    """List campaigns, newest first.

    Example: flowtrack campaigns list --filter 'state=RUNNING labels.team=growth'
    """
    out = render.console()
    table = render.PagedTable(out, render.CAMPAIGN_COLUMNS, render.campaign_cells)
    with connect(connection) as stubs:
        token = ""
        while True:
            reply = stubs.campaigns.ListCampaigns(
                campaign_pb2.ListCampaignsRequest(page_size=page_size, page_token=token, filter=filter_),
                timeout=stubs.timeout,
            )
            if as_json:
                for campaign in reply.campaigns:
                    _echo_json(campaign)
            else:
                table.page(reply.campaigns)
            token = reply.next_page_token
            if not token:
                break
    if not as_json and table.rows == 0:
        click.echo("no campaigns", err=True)


def _campaign_fields(
    name: str | None,
    flow_id: str | None,
    channels: tuple[str, ...],
    labels: tuple[str, ...],
    clear_labels: bool,
    schedule: str | None,
    state: str | None,
) -> tuple[campaign_pb2.Campaign, list[str]]:
    """The campaign fields given on the command line, and their mask paths."""
    campaign = campaign_pb2.Campaign()
    paths: list[str] = []
    if name is not None:
        campaign.name = name
        paths.append("name")
    if flow_id is not None:
        campaign.flow_id = flow_id
        paths.append("flow_id")
    if channels:
        campaign.channels.extend(channels)
        paths.append("channels")
    if labels or clear_labels:
        campaign.labels.update(_labels(labels))
        paths.append("labels")
    if schedule is not None:
        campaign.schedule_time.CopyFrom(_timestamp(schedule, "--schedule"))
        paths.append("schedule_time")
    if state is not None:
        campaign.state = campaign_pb2.CampaignState.Value(f"CAMPAIGN_STATE_{state.upper()}")
        paths.append("state")
    return campaign, paths


def _campaign_options(command: Any) -> Any:
    options = [
        click.option("--name", default=None, help="Display name."),
        click.option("--flow-id", default=None, help="Id of the flow the campaign runs."),
        click.option("--channel", "channels", multiple=True, help="A channel, e.g. whatsapp (repeatable)."),
        click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="A label (repeatable)."),
        click.option("--schedule", default=None, metavar="TIME", help="Planned start, ISO 8601 (UTC if no zone)."),
        click.option("--state", default=None, type=STATE_CHOICE, help="Lifecycle state."),
        click.option("--json", "as_json", is_flag=True, help="Print the campaign as JSON."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _show_campaign(campaign: campaign_pb2.Campaign, as_json: bool) -> None:
    if as_json:
        _echo_json(campaign)
    else:
        render.console().print(render.campaign_detail(campaign))


@campaigns.command("create")
@click.argument("campaign_id", required=False, default="")
@_campaign_options
@click.option("--from", "source", default=None, metavar="CAMPAIGN", help="Audience: a segment of this campaign.")
@click.option("--segment", default=None, type=SEGMENT_CHOICE, help="With --from: which recipients to copy.")
@connection_options
def create_campaign(
    campaign_id: str,
    name: str | None,
    flow_id: str | None,
    channels: tuple[str, ...],
    labels: tuple[str, ...],
    schedule: str | None,
    state: str | None,
    as_json: bool,
    source: str | None,
    segment: str | None,
    connection: ConnectionOptions,
) -> None:
    """Create a campaign (the server picks an id when CAMPAIGN_ID is left out).
    With --from and --segment its audience is a segment of another campaign
    (e.g. the failed recipients, to retry them), copied with each recipient's
    channel, variant and input variables; the campaign records its source.

    Example: flowtrack campaigns create spring-2026 --name "Spring offer" --channel whatsapp --channel sms
    --label team=growth

    Example: flowtrack campaigns create retry-1 --from june --segment failed
    """
    if (source is None) != (segment is None):
        raise click.UsageError("--from and --segment go together")
    campaign, _ = _campaign_fields(name, flow_id, channels, labels, False, schedule, state)
    campaign.id = campaign_id
    if source is not None and segment is not None:
        campaign.source.campaign_id = source
        campaign.source.segment = segment
    with connect(connection) as stubs:
        reply = stubs.campaigns.CreateCampaign(
            campaign_pb2.CreateCampaignRequest(campaign=campaign), timeout=stubs.timeout
        )
    _show_campaign(reply.campaign, as_json)


@campaigns.command("add-recipients")
@click.argument("campaign_id")
@click.argument("audience_file", type=click.File("r", encoding="utf-8-sig"))
@click.option("--json", "as_json", is_flag=True, help="Print the AddRecipientsResponse as JSON.")
@connection_options
def add_recipients(campaign_id: str, audience_file: Any, as_json: bool, connection: ConnectionOptions) -> None:
    """Add the recipients of an audience file (CSV, `-` for stdin) to a
    campaign: a header row naming `recipient` and any of `channel`,
    `variant`, `input_variables` (a JSON object). `flowtrack export CAMPAIGN
    --layout audience` writes such a file; recipients already in the
    audience are counted and left unchanged.

    Example: flowtrack campaigns add-recipients retry-2 failed.csv
    """
    name = getattr(audience_file, "name", "-")
    with audience.rereadable(audience_file) as handle:
        try:  # the whole file is checked before anything is sent: a bad line adds nobody
            for _ in audience.recipients(handle):
                pass
        except audience.AudienceError as error:
            raise CliError(f"{name}: {error}", EXIT_USAGE) from None
        except (csv.Error, UnicodeDecodeError) as error:
            raise CliError(f"{name}: not a CSV audience file: {error}", EXIT_USAGE) from None
        handle.seek(0)
        with connect(connection) as stubs:  # then read again as it is sent, a batch at a time
            reply = stubs.campaigns.AddRecipients(
                audience.requests(campaign_id, audience.recipients(handle)), timeout=stubs.timeout
            )
    if as_json:
        _echo_json(reply)
        return
    click.echo(
        f"added {reply.added:,}, already present {reply.already_present:,}, invalid {reply.invalid:,};"
        f" audience {reply.total:,}"
    )
    for violation in reply.violations:
        click.echo(f"  {violation.field}: {violation.description}", err=True)


@campaigns.command("show")
@click.argument("campaign_id")
@click.option("--json", "as_json", is_flag=True, help="Print the campaign as JSON.")
@connection_options
def show_campaign(campaign_id: str, as_json: bool, connection: ConnectionOptions) -> None:
    """Show one campaign.

    Example: flowtrack campaigns show spring-2026
    """
    with connect(connection) as stubs:
        reply = stubs.campaigns.GetCampaign(
            campaign_pb2.GetCampaignRequest(campaign_id=campaign_id), timeout=stubs.timeout
        )
    _show_campaign(reply.campaign, as_json)


@campaigns.command("update")
@click.argument("campaign_id")
@_campaign_options
@click.option("--clear-labels", is_flag=True, help="Remove every label (with --label: replace them).")
@connection_options
def update_campaign(
    campaign_id: str,
    name: str | None,
    flow_id: str | None,
    channels: tuple[str, ...],
    labels: tuple[str, ...],
    clear_labels: bool,
    schedule: str | None,
    state: str | None,
    as_json: bool,
    connection: ConnectionOptions,
) -> None:
    """Change a campaign: only the fields given change. --label replaces all labels.

    Example: flowtrack campaigns update spring-2026 --state running
    """
    campaign, paths = _campaign_fields(name, flow_id, channels, labels, clear_labels, schedule, state)
    if not paths:
        raise click.UsageError("nothing to change: give at least one of --name, --flow-id, --channel, --label, ...")
    campaign.id = campaign_id
    request = campaign_pb2.UpdateCampaignRequest(campaign=campaign, update_mask=field_mask_pb2.FieldMask(paths=paths))
    with connect(connection) as stubs:
        reply = stubs.campaigns.UpdateCampaign(request, timeout=stubs.timeout)
    _show_campaign(reply.campaign, as_json)


@campaigns.command("delete")
@click.argument("campaign_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@connection_options
def delete_campaign(campaign_id: str, yes: bool, connection: ConnectionOptions) -> None:
    """Delete a campaign with all of its recipients, events and counters.

    Example: flowtrack campaigns delete spring-2026 --yes
    """
    if not yes:
        click.confirm(f"Delete campaign {campaign_id} and all of its data?", abort=True, err=True)
    with connect(connection) as stubs:
        reply = stubs.campaigns.DeleteCampaign(
            campaign_pb2.DeleteCampaignRequest(campaign_id=campaign_id), timeout=stubs.timeout
        )
    click.echo(f"deleted campaign {campaign_id}: {reply.deleted_recipients} recipients, {reply.deleted_events} events")


# -- stats --------------------------------------------------------------------------


@click.command()
@click.argument("campaign_id", metavar="CAMPAIGN")
@click.option("--watch", is_flag=True, help="Redraw live as the campaign changes (until Ctrl-C).")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Canonical proto3 JSON, lowerCamelCase names (with --watch: one line per snapshot).",
)
@click.option(
    "--variants",
    is_flag=True,
    help="The A/B test: each pair of variants (and each against the rest) per rate, with confidence.",
)
@connection_options
def stats(campaign_id: str, watch: bool, as_json: bool, variants: bool, connection: ConnectionOptions) -> None:
    """A campaign's stats: every status bucket, rates, clicks, engagement (read,
    replied, opted out, button taps) and the flow funnel (entered, in flow,
    exited, goal achieved), per channel and per A/B variant side by side.
    --json prints the canonical proto3 JSON (lowerCamelCase names: optedOut,
    inFlow, goalAchieved...). --variants prints the A/B test instead: the
    difference of each rate with its 95% interval, the p-value and a verdict
    ("B leads", "no difference yet", "not enough data"); with --json, the
    AbTest message. A campaign made from a segment of another (campaigns
    create --from) also shows its source and the source's figures.

    Example: flowtrack stats demo --variants
    """
    out = render.console()
    with connect(connection) as stubs:
        if not watch:
            reply = stubs.reports.GetCampaignStats(
                report_pb2.GetCampaignStatsRequest(campaign_id=campaign_id), timeout=stubs.timeout
            )
            if variants:
                if as_json:
                    click.echo(render.json_line(reply.stats.ab_test))
                else:
                    out.print(variants_view.ab_test_view(reply.stats))
            elif as_json:
                click.echo(render.stats_json(reply.stats))
            else:
                out.print(render.stats_view(reply.stats, out.width))
                if reply.HasField("source"):
                    source = reply.source
                    out.print(f"source: campaign {source.campaign_id}, segment {source.segment}")
                    if reply.HasField("source_stats"):
                        out.print(render.stats_view(reply.source_stats, out.width))
                    else:
                        out.print("(the source campaign no longer exists)")
            return
        if variants:
            raise click.UsageError("--variants takes no --watch")
        call = stubs.reports.WatchCampaignStats(report_pb2.WatchCampaignStatsRequest(campaign_id=campaign_id))
        try:
            if as_json or not out.is_terminal:
                # Scripts and pipes get every snapshot, one after the other.
                for snapshot in call:
                    if as_json:
                        click.echo(render.stats_json(snapshot.stats))
                    else:
                        out.print(render.stats_view(snapshot.stats, out.width))
            else:
                with Live(console=out, auto_refresh=False) as live:
                    for snapshot in call:
                        live.update(render.stats_view(snapshot.stats, out.width), refresh=True)
        except KeyboardInterrupt:
            call.cancel()
            return
    click.echo(f"campaign {campaign_id} was deleted; the watch ended", err=True)


# -- message report -----------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])

# The engaged-segment filters: (option, MessageFilter field, what it is).
SEGMENT_OPTIONS = (
    ("read", "read", "read the message"),
    ("replied", "replied", "replied"),
    ("opted-out", "opted_out", "opted out"),
    ("clicked-link", "clicked_link", "clicked a tracked link"),
    ("clicked-button", "clicked_button", "tapped a button"),
    ("reached-goal", "reached_goal", "reached the goal"),
)


def _segment_options(prefix: str = "") -> Callable[[F], F]:
    """Tri-state --X/--not-X options, one per engaged segment (unset: either)."""

    def decorate(command: F) -> F:
        for option, field, what in reversed(SEGMENT_OPTIONS):
            command = click.option(
                f"--{option}/--not-{option}",
                f"segment_{field}",
                default=None,
                help=f"{prefix}only recipients that {what} (--not-{option}: that did not).",
            )(command)
        return command

    return decorate


def _set_segments(message_filter: report_pb2.MessageFilter, values: dict[str, Any]) -> None:
    """Set the engaged segments given on the command line (segment_* options)."""
    for _option, field, _what in SEGMENT_OPTIONS:
        value = values.get(f"segment_{field}")
        if value is not None:
            setattr(message_filter, field, value)


@click.command()
@click.argument("campaign_id", metavar="CAMPAIGN")
@click.option("--status", "statuses", multiple=True, type=STATUS_CHOICE, help="Current status (repeatable).")
@click.option("--channel", default="", help="Only this channel.")
@click.option("--variant", default="", help="Only this A/B variant.")
@click.option("--recipient", default="", help="Only this recipient.")
@click.option("--failure-code", default="", help="Only this failure reason code.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Stop after this many rows.")
@click.option(
    "--page-size", type=click.IntRange(min=1, max=1000), default=500, show_default=True, help="Rows per page."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per row, per line (for scripts).")
@click.option("--segment", "named_segment", default=None, type=SEGMENT_CHOICE, help="A named segment (see below).")
@_segment_options()
@connection_options
def report(
    named_segment: str | None,
    campaign_id: str,
    statuses: tuple[str, ...],
    channel: str,
    variant: str,
    recipient: str,
    failure_code: str,
    limit: int | None,
    page_size: int,
    as_json: bool,
    connection: ConnectionOptions,
    **segments: bool | None,
) -> None:
    """Every recipient's message with its current state and engagement,
    streamed a page at a time. The engaged-segment options combine, e.g.
    --clicked-link --not-replied: who clicked but did not reply. --segment
    names a common one: failed, not_submitted, undelivered (either),
    delivered_not_read, clicked_not_replied, not_clicked (delivered).

    Example: flowtrack report demo --status failed --status not_submitted --channel sms --json
    """
    message_filter = report_pb2.MessageFilter(
        statuses=[common_pb2.MessageStatus.Value(f"MESSAGE_STATUS_{s.upper()}") for s in statuses],
        channel=channel,
        variant=variant,
        recipient=recipient,
        failure_code=failure_code,
    )
    if named_segment is not None:
        audience.set_segment(message_filter, named_segment)
    _set_segments(message_filter, segments)
    request = report_pb2.StreamMessageReportRequest(campaign_id=campaign_id, filter=message_filter, page_size=page_size)
    out = render.console()
    table = render.PagedTable(out, render.REPORT_COLUMNS, render.report_cells)
    with connect(connection) as stubs:
        shown, sequence = _print_pages(stubs.reports.StreamMessageReport(request), table, limit, as_json)
    if not as_json:
        click.echo(f"{shown} rows at sequence {sequence}", err=True)


# -- failure reasons ----------------------------------------------------------------


@click.command()
@click.argument("campaign_id", metavar="CAMPAIGN")
@click.option(
    "--samples", type=click.IntRange(min=1, max=20), default=3, show_default=True, help="Sample recipients per reason."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per reason, per line.")
@connection_options
def failures(campaign_id: str, samples: int, as_json: bool, connection: ConnectionOptions) -> None:
    """Why messages failed or were not submitted, most frequent reason first.

    Example: flowtrack failures demo
    """
    out = render.console()
    table = render.PagedTable(out, render.FAILURE_COLUMNS, render.failure_cells)
    sequence = 0
    with connect(connection) as stubs:
        call = stubs.reports.StreamFailureReasons(
            report_pb2.StreamFailureReasonsRequest(campaign_id=campaign_id, sample_size=samples)
        )
        for page in call:
            sequence = page.sequence
            if as_json:
                for reason in page.reasons:
                    _echo_json(reason)
            else:
                table.page(page.reasons)
    if not as_json:
        click.echo(f"{table.rows} reasons at sequence {sequence}", err=True)


# -- clicks -------------------------------------------------------------------------


@click.command()
@click.argument("campaign_id", metavar="CAMPAIGN")
@click.option("--link", default="", help="Only this uLink id.")
@click.option("--country", default="", help="Only this ISO country code, e.g. BR.")
@click.option(
    "--class",
    "click_class",
    type=click.Choice(["all", "human", "bot"]),
    default="all",
    show_default=True,
    help="Only human clicks, or only bot clicks (previews, scanners, no user agent).",
)
@click.option("--limit", type=click.IntRange(min=0), default=None, help="Show at most this many click rows.")
@click.option(
    "--rows/--no-rows", default=True, show_default=True, help="Show the click rows (else only the breakdown)."
)
@click.option("--json", "as_json", is_flag=True, help='JSON lines: {"click": ...} per click, then {"breakdown": ...}.')
@connection_options
def clicks(
    campaign_id: str,
    link: str,
    country: str,
    click_class: str,
    limit: int | None,
    rows: bool,
    as_json: bool,
    connection: ConnectionOptions,
) -> None:
    """Every uLink click (who, which link, where, when, human or bot and why),
    then clicks per country and per link.

    Example: flowtrack clicks demo --country BR --class bot --limit 20
    """
    out = render.console()
    table = render.PagedTable(out, render.CLICK_COLUMNS, render.click_cells)
    shown = 0
    with connect(connection) as stubs:
        if rows and limit != 0:
            request = report_pb2.StreamClickReportRequest(
                campaign_id=campaign_id,
                filter=report_pb2.ClickFilter(
                    link_id=link, country_code=country.upper(), click_class=_CLICK_CLASSES[click_class]
                ),
            )
            call = stubs.reports.StreamClickReport(request)
            try:
                for page in call:
                    page_rows = list(page.rows)[: None if limit is None else limit - shown]
                    shown += len(page_rows)
                    if as_json:
                        for row in page_rows:
                            click.echo(render.json_object_line("click", row))
                    else:
                        table.page(page_rows)
                    if limit is not None and shown >= limit:
                        break
            finally:
                call.cancel()
        breakdown = stubs.reports.GetClickBreakdown(
            report_pb2.GetClickBreakdownRequest(campaign_id=campaign_id), timeout=stubs.timeout
        )
    if as_json:
        click.echo(render.json_object_line("breakdown", breakdown))
    else:
        out.print(render.breakdown_view(breakdown))


_CLICK_CLASSES = {
    "all": report_pb2.CLICK_CLASS_UNSPECIFIED,
    "human": report_pb2.CLICK_CLASS_HUMAN,
    "bot": report_pb2.CLICK_CLASS_BOT,
}


# -- replies ------------------------------------------------------------------------


@click.command()
@click.argument("campaign_id", metavar="CAMPAIGN")
@click.option("--recipient", default="", help="Only this recipient's replies.")
@click.option("--after", default=None, metavar="TIME", help="Replied at or after (ISO 8601).")
@click.option("--before", default=None, metavar="TIME", help="Replied before (ISO 8601).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Stop after this many replies.")
@click.option(
    "--page-size", type=click.IntRange(min=1, max=1000), default=500, show_default=True, help="Replies per page."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per reply, per line (for scripts).")
@connection_options
def replies(
    campaign_id: str,
    recipient: str,
    after: str | None,
    before: str | None,
    limit: int | None,
    page_size: int,
    as_json: bool,
    connection: ConnectionOptions,
) -> None:
    """Every reply of a campaign (the Replies tab): who, when, what, in arrival order.

    Example: flowtrack replies demo --recipient +5511999990001
    """
    reply_filter = report_pb2.ReplyFilter(recipient=recipient)
    if after is not None:
        reply_filter.occurred_after.CopyFrom(_timestamp(after, "--after"))
    if before is not None:
        reply_filter.occurred_before.CopyFrom(_timestamp(before, "--before"))
    request = report_pb2.StreamRepliesRequest(campaign_id=campaign_id, filter=reply_filter, page_size=page_size)
    out = render.console()
    table = render.PagedTable(out, render.REPLY_COLUMNS, render.reply_cells)
    with connect(connection) as stubs:
        shown, sequence = _print_pages(stubs.reports.StreamReplies(request), table, limit, as_json)
    if not as_json:
        click.echo(f"{shown} replies at sequence {sequence}", err=True)


# -- tail ---------------------------------------------------------------------------


@click.command()
@click.option(
    "--after",
    "after",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    metavar="SEQ",
    help="Start after this sequence.",
)
@click.option("--campaign", "campaign_id", default="", help="Only this campaign's events.")
@click.option(
    "--follow/--no-follow",
    default=True,
    show_default=True,
    help="Keep printing live events (else stop when caught up).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per stored event, per line.")
@connection_options
def tail(after: int, campaign_id: str, follow: bool, as_json: bool, connection: ConnectionOptions) -> None:
    """Print stored events from a sequence on, then live ones as they commit.

    Example: flowtrack tail --campaign demo --after 1200
    """
    out = render.console()
    with connect(connection) as stubs:
        call = stubs.reports.SubscribeEvents(
            report_pb2.SubscribeEventsRequest(after_sequence=after, campaign_id=campaign_id)
        )
        try:
            for page in call:
                for stored in page.events:
                    if as_json:
                        _echo_json(stored)
                    else:
                        out.print(render.event_line(stored), highlight=False, soft_wrap=True)
                if page.caught_up and not follow:
                    break
        except KeyboardInterrupt:
            pass
        finally:
            call.cancel()


# -- export -------------------------------------------------------------------------

EXPORT_KINDS = {
    "messages": report_pb2.EXPORT_KIND_MESSAGES,
    "clicks": report_pb2.EXPORT_KIND_CLICKS,
    "failures": report_pb2.EXPORT_KIND_FAILURE_REASONS,
}
EXPORT_FORMATS = {"csv": report_pb2.EXPORT_FORMAT_CSV, "xlsx": report_pb2.EXPORT_FORMAT_XLSX}
EXPORT_LAYOUTS = {
    "flowtrack": report_pb2.EXPORT_LAYOUT_FLOWTRACK,
    "connectly": report_pb2.EXPORT_LAYOUT_CONNECTLY,
    "audience": report_pb2.EXPORT_LAYOUT_AUDIENCE,
}


@click.command()
@click.argument("campaign_id", metavar="CAMPAIGN")
@click.option(
    "--kind", type=click.Choice(sorted(EXPORT_KINDS)), default="messages", show_default=True, help="What to export."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(sorted(EXPORT_FORMATS)),
    default=None,
    help="File format; default: from the -o file's extension (.xlsx or .csv), else csv.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="File to write (replaced if it exists); default: the server's suggested name, here.",
)
@click.option("--status", "statuses", multiple=True, type=STATUS_CHOICE, help="messages: current status (repeatable).")
@click.option("--channel", default="", help="messages: only this channel.")
@click.option("--variant", default="", help="messages: only this A/B variant.")
@click.option("--recipient", default="", help="messages: only this recipient.")
@click.option("--failure-code", default="", help="messages: only this failure reason code.")
@click.option("--updated-after", default=None, metavar="TIME", help="messages: changed at or after (ISO 8601).")
@click.option("--updated-before", default=None, metavar="TIME", help="messages: changed before (ISO 8601).")
@click.option("--link", default="", help="clicks: only this uLink id.")
@click.option("--country", default="", help="clicks: only this ISO country code, e.g. BR.")
@click.option("--clicked-after", default=None, metavar="TIME", help="clicks: clicked at or after (ISO 8601).")
@click.option("--clicked-before", default=None, metavar="TIME", help="clicks: clicked before (ISO 8601).")
@click.option("--quiet", is_flag=True, help="No progress bar (it is also off when stderr is not a terminal).")
@click.option(
    "--layout",
    type=click.Choice(sorted(EXPORT_LAYOUTS)),
    default="flowtrack",
    show_default=True,
    help="messages: the columns; connectly = Connectly's campaign CSV, column for column.",
)
@click.option("--segment", "named_segment", default=None, type=SEGMENT_CHOICE, help="messages: a named segment.")
@_segment_options("messages: ")
@connection_options
def export(
    named_segment: str | None,
    campaign_id: str,
    kind: str,
    fmt: str | None,
    output: str | None,
    statuses: tuple[str, ...],
    channel: str,
    variant: str,
    recipient: str,
    failure_code: str,
    updated_after: str | None,
    updated_before: str | None,
    link: str,
    country: str,
    clicked_after: str | None,
    clicked_before: str | None,
    quiet: bool,
    layout: str,
    connection: ConnectionOptions,
    **segments: bool | None,
) -> None:
    """Export the message report, the clicks or the failure reasons to a CSV or
    XLSX file, with the report's filters and a progress bar. The file appears
    only when complete (written to a temporary file, then renamed).

    The format follows the file's extension (`-o demo.xlsx` writes XLSX)
    unless --format is given. The file gets the permissions of any new file
    (0666 less the umask).

    Example: flowtrack export demo -o demo.xlsx --status failed --status not_submitted
    Example: flowtrack export demo --layout connectly -o demo.csv

    Example: flowtrack export june --layout audience --segment failed -o failed.csv
    """
    fmt = fmt or export_format(output)
    if output is not None:
        check_writable(output)
    message_filter = report_pb2.MessageFilter(
        statuses=[common_pb2.MessageStatus.Value(f"MESSAGE_STATUS_{s.upper()}") for s in statuses],
        channel=channel,
        variant=variant,
        recipient=recipient,
        failure_code=failure_code,
    )
    if named_segment is not None:
        audience.set_segment(message_filter, named_segment)
    _set_segments(message_filter, segments)
    if updated_after is not None:
        message_filter.updated_after.CopyFrom(_timestamp(updated_after, "--updated-after"))
    if updated_before is not None:
        message_filter.updated_before.CopyFrom(_timestamp(updated_before, "--updated-before"))
    click_filter = report_pb2.ClickFilter(link_id=link, country_code=country.upper())
    if clicked_after is not None:
        click_filter.occurred_after.CopyFrom(_timestamp(clicked_after, "--clicked-after"))
    if clicked_before is not None:
        click_filter.occurred_before.CopyFrom(_timestamp(clicked_before, "--clicked-before"))
    request = report_pb2.ExportReportRequest(
        campaign_id=campaign_id,
        kind=EXPORT_KINDS[kind],
        format=EXPORT_FORMATS[fmt],
        message_filter=message_filter,
        click_filter=click_filter,
    )
    if layout != "flowtrack" or kind == "messages":
        request.layout = EXPORT_LAYOUTS[layout]
    rows, size, target = _download(connection, request, output, f"{campaign_id}-{kind}.{fmt}", quiet)
    click.echo(f"exported {rows:,} rows to {target} ({size:,} bytes)", err=True)


def _download(
    connection: ConnectionOptions,
    request: report_pb2.ExportReportRequest,
    output: str | None,
    fallback_name: str,
    quiet: bool,
) -> tuple[int, int, str]:
    """ExportReport's chunks into `output` (else the file name the server
    gives, else `fallback_name`), through a temporary file renamed once
    complete, with a progress bar on a terminal: (rows, bytes, file)."""
    err = render.console(stderr=True)
    progress = Progress(
        TextColumn("[bold]export[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TimeElapsedColumn(),
        console=err,
        disable=quiet or not err.is_terminal,
        transient=False,
    )
    temp: str | None = None
    target = output
    rows = size = 0
    try:
        with connect(connection) as stubs, progress:
            task = progress.add_task("rows", total=None)
            call = stubs.reports.ExportReport(request)
            try:
                for message in call:
                    if temp is None:
                        target = output or message.file_name or fallback_name
                        folder = check_writable(target)
                        try:
                            handle, temp = tempfile.mkstemp(prefix=".flowtrack-export-", suffix=".part", dir=folder)
                        except OSError as error:
                            raise CliError(f"cannot write {target}: {error.strerror or error}", EXIT_USAGE) from None
                        out = os.fdopen(handle, "wb")
                    if message.chunk:
                        out.write(message.chunk)
                        size += len(message.chunk)
                    rows = message.rows_written
                    total = max(message.rows_estimate, rows)
                    progress.update(task, completed=rows, total=total or None)
            finally:
                call.cancel()
                if temp is not None:
                    out.close()
        if temp is None or target is None:
            raise CliError("the server sent no file", EXIT_SERVER_ERROR)
        try:
            os.chmod(temp, 0o666 & ~_umask())  # mkstemp made it 0600; a new file's usual mode
            os.replace(temp, target)
        except OSError as error:
            raise CliError(f"cannot write {target}: {error.strerror or error}", EXIT_USAGE) from None
        temp = None
    except OSError as error:  # writing a chunk: disk full, quota...
        raise CliError(f"cannot write {target}: {error.strerror or error}", EXIT_USAGE) from None
    finally:
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp)
    return rows, size, target


def export_format(output: str | None) -> str:
    """The export format a file name asks for: xlsx for `.xlsx`, else csv."""
    if output is not None and os.path.splitext(output)[1].lower() == ".xlsx":
        return "xlsx"
    return "csv"


def check_writable(target: str) -> str:
    """The folder `target` goes in, if it exists and is a folder; else a one-line CliError."""
    folder = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(folder):
        what = "is not a folder" if os.path.exists(folder) else "does not exist"
        raise CliError(f"cannot write {target}: folder {folder} {what}", EXIT_USAGE)
    return folder


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# -- simulate -----------------------------------------------------------------------


@click.command()
@click.option(
    "--campaign", "campaign_id", default="demo", show_default=True, help="Campaign to create (or reuse) and fill."
)
@click.option(
    "--recipients", type=click.IntRange(min=1, max=1_000_000), default=1000, show_default=True, help="Audience size."
)
@click.option(
    "--seed", type=int, default=1, show_default=True, help="Random seed: the same seed gives the same campaign."
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    metavar="EVENTS_PER_S",
    help="Events per second; 0 = as fast as the server takes them.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1, max=5000),
    default=500,
    show_default=True,
    help="Most events per StreamEvents message.",
)
@click.option("--quiet", is_flag=True, help="No progress display (it is also off when stderr is not a terminal).")
@click.option(
    "--resume",
    is_flag=True,
    help="Go on with a simulation cut short (the server died): send the events it did not acknowledge.",
)
@click.option(
    "--state-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where the acknowledged progress is kept; default .flowtrack-simulate-CAMPAIGN.json here.",
)
@click.option(
    "--days-ago",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Make the campaign end this many days ago (every occurred_at in the past), e.g. to try retention.",
)
@connection_options
def simulate(
    campaign_id: str,
    recipients: int,
    seed: int,
    rate: float,
    batch_size: int,
    quiet: bool,
    resume: bool,
    state_file: Path | None,
    days_ago: float,
    connection: ConnectionOptions,
) -> None:
    """Drive a realistic campaign into a server: audience, status transitions,
    failures, retries, duplicates, late events, uLink clicks, engagement
    (reads by channel, replies, opt-outs, button taps) and the flow funnel.

    As the server acknowledges events, the progress is written to a state
    file; if the run is cut short (the server died), `simulate --resume`
    (same --campaign) sends what was not acknowledged, and the stats end as
    those of a run never interrupted. The file is removed once all is sent.

    Example: flowtrack simulate --campaign demo --recipients 5000 --rate 500
    Example: flowtrack simulate --campaign demo --resume
    Example: flowtrack simulate --campaign last-spring --days-ago 45
    """
    err = render.console(stderr=True)
    show = not quiet and err.is_terminal
    path = state_file or drive.state_path(campaign_id)
    if resume:
        if not path.exists():
            raise CliError(
                f"nothing to resume: no state file {path} (a simulation that completed removes it)", EXIT_USAGE
            )
        try:
            before = drive.Progress.load(path)
        except ValueError as error:
            raise CliError(str(error), EXIT_USAGE) from None
        if before.campaign_id != campaign_id:
            raise CliError(f"{path} is the simulation of campaign {before.campaign_id}, not {campaign_id}", EXIT_USAGE)
        recipients, seed = before.recipients, before.seed
        end_time = before.end_time
    else:
        end_time = time.time() - days_ago * 86_400
    sim = generate(SimConfig(campaign_id=campaign_id, recipients=recipients, seed=seed, end_time=end_time))
    if not resume:
        before = drive.Progress(campaign_id, recipients, seed, end_time, events=len(sim.events))
    if len(sim.events) != before.events:
        raise CliError(f"{path} does not match this version's simulation of seed {seed}: start a new one", EXIT_USAGE)
    progress_now = dataclasses.replace(before, refusals=dict(before.refusals))
    streaming: list[bool] = []  # set once the state file is written and events go out
    try:
        with connect(connection) as stubs:
            summary = _simulate(stubs, sim, before, progress_now, path, batch_size, rate, show, err, streaming)
    except CliError as error:
        if progress_now.complete or not streaming:
            raise
        raise CliError(
            f"{error.message}; {progress_now.acked:,} of {progress_now.events:,} events acknowledged "
            f"(kept in {path}): `flowtrack simulate --campaign {campaign_id} --resume` sends the rest",
            error.exit_code,
        ) from None
    with contextlib.suppress(OSError):
        path.unlink()
    resumed = f", resumed after {before.acked:,} acknowledged" if resume else ""
    click.echo(
        f"simulated campaign {campaign_id} (seed {seed}): {recipients:,} recipients, "
        f"{summary.sent:,} events sent in {summary.seconds:.1f} s ({summary.rate:,.0f}/s){resumed}: "
        f"{progress_now.accepted:,} accepted, {progress_now.duplicates:,} duplicates, "
        f"{progress_now.refused:,} refused; sequence {progress_now.committed_sequence}"
    )
    if progress_now.refused:
        refusals = collections.Counter(progress_now.refusals)
        reasons = ", ".join(f"{n} {why}" for why, n in refusals.most_common(3))
        hint = ""
        if any("EVENT_ID_REUSED" in why for why in refusals):
            hint = " (this seed was already simulated into this campaign: use another --seed or --campaign)"
        raise CliError(f"{progress_now.refused} events refused: {reasons}{hint}", EXIT_SERVER_ERROR)


def _save_progress(progress: drive.Progress, path: Path) -> None:
    try:
        progress.save(path)
    except OSError as error:
        raise CliError(f"cannot write the state file {path}: {error.strerror or error}", EXIT_USAGE) from None


def _simulate(
    stubs: Any,
    sim: Any,
    before: drive.Progress,
    progress_now: drive.Progress,
    path: Path,
    batch_size: int,
    rate: float,
    show: bool,
    err: Any,
    streaming: list[bool],
) -> drive.Summary:
    """Prepare the campaign and send the events after `before.acked`,
    recording each acknowledgement in `progress_now` and the state file."""
    campaign_id = sim.campaign.id
    created, added = drive.prepare(stubs, sim)
    # From the first event sent on, the state file says how to go on (the same timeline).
    _save_progress(progress_now, path)
    streaming.append(True)
    if show:
        verb = "created" if created else "reused"
        err.print(f"{verb} campaign [bold]{campaign_id}[/bold]; audience +{added.added:,} (total {added.total:,})")
    progress = Progress(
        TextColumn("[bold]simulate[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("events · {task.fields[detail]}"),
        TimeElapsedColumn(),
        console=err,
        disable=not show,
        transient=False,
    )
    with progress:
        task = progress.add_task("events", total=len(sim.events), completed=before.acked, detail="")

        def on_reply(reply: ingest_pb2.StreamEventsResponse, summary: drive.Summary) -> None:
            progress_now.record(before, summary)
            _save_progress(progress_now, path)
            detail = (
                f"{progress_now.accepted:,} accepted, {progress_now.duplicates:,} dup, {progress_now.refused:,} refused"
            )
            progress.update(task, completed=progress_now.acked, detail=detail)

        return drive.send(stubs, sim.events[before.acked :], batch_size=batch_size, rate=rate, on_reply=on_reply)


COMMANDS: list[click.Command] = [campaigns, stats, report, failures, clicks, replies, export, tail, simulate]
