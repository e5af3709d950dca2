"""ReportService's protos to domain values and back (the gRPC face, the HTTP
face's JSON and the report runs share them). Pure conversion: no I/O, no grpc
calls; it imports the domain and the generated stubs only.

- requests: `message_filter`, `click_filter`, `reply_filter`,
  `timeline_width`, `export_request` (INVALID_ARGUMENT names every bad part);
- results: `stats_to_proto`, `breakdown`, `timeline`, `export_response`;
- the pages of the report streams (core/reports.Pages): `MESSAGE_PAGES`,
  `HISTORY_PAGES`, `REASON_PAGES`, `CLICK_PAGES`, `REPLY_PAGES`,
  `EVENT_PAGES`: each builds its items from the store's named rows
  (domain/records.py) and its response message from them.

`message_row` runs for every row of a message report page (the hot path of
scripts/bench_reports.py): it touches only the fields that are set (the
engagement ones only for a recipient with engagement).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from google.protobuf import timestamp_pb2

from flowtrack.domain import errors
from flowtrack.domain import stats as dstats
from flowtrack.domain.exports import ExportChunk, ExportFormat, ExportKind, ExportLayout, ExportRequest
from flowtrack.domain.model import EngagementKind
from flowtrack.domain.records import (
    ButtonTap,
    ClickBucket,
    EventRecord,
    LinkClick,
    MessageRecord,
    ReplyRecord,
    TimelineRow,
)
from flowtrack.domain.segments import SourcedStats
from flowtrack.domain.stats import CampaignStats, ClickFilter, MessageFilter, ReasonRow
from flowtrack.v1 import common_pb2, report_pb2
from flowtrack.wire.abtest import ab_test_to_proto
from flowtrack.wire.convert import optional_ts_to_us, ts_to_us

_RATES = (
    "success_rate",
    "failure_rate",
    "delivery_not_confirmed_rate",
    "click_through_rate",
    "not_submitted_rate",
    "delivery_rate",
    "read_rate",
    "reply_rate",
    "link_click_rate",
    "opt_out_rate",
    "button_click_rate",
    "goal_rate",
)
_MessageRow = report_pb2.MessageRow
_REASON_STATUSES = frozenset({2, 5})
_loads = json.JSONDecoder().decode


def stats_response(found: SourcedStats) -> report_pb2.GetCampaignStatsResponse:
    """GetCampaignStats' answer: the stats, and the source and its stats if any."""
    out = report_pb2.GetCampaignStatsResponse(stats=stats_to_proto(found.stats))
    if found.source is not None:
        out.source.campaign_id = found.source.campaign_id
        out.source.segment = found.source.segment
    if found.source_stats is not None:
        out.source_stats.CopyFrom(stats_to_proto(found.source_stats))
    return out


def set_ts(ts: timestamp_pb2.Timestamp, us: int) -> None:
    """Set a Timestamp from µs since the epoch."""
    ts.seconds, micros = divmod(us, 1_000_000)
    ts.nanos = micros * 1000


def stats_to_proto(stats: CampaignStats) -> report_pb2.CampaignStats:
    def bucket(b: dstats.Bucket) -> report_pb2.StatsBucket:
        c, r, e = b.counts, b.rates, b.engaged
        rates = report_pb2.Rates()
        for name in _RATES:
            value = getattr(r, name)
            if value is not None:
                setattr(rates, name, value)
        return report_pb2.StatsBucket(
            key=b.key,
            counts=report_pb2.StatusCounts(
                total=c.total,
                pending=c.pending,
                not_submitted=c.not_submitted,
                submitted=c.submitted,
                awaiting=c.awaiting,
                delivery_not_confirmed=c.delivery_not_confirmed,
                success=c.success,
                failed=c.failed,
            ),
            rates=rates,
            clicks=b.clicks,
            unique_clickers=b.unique_clickers,
            human_clicks=b.human_clicks,
            bot_clicks=b.bot_clicks,
            unique_human_clickers=b.unique_human_clickers,
            read=e.read,
            replied=e.replied,
            opted_out=e.opted_out,
            button_clickers=e.button_clickers,
            replies=e.replies,
            button_clicks=e.button_clicks,
            entered=e.entered,
            in_flow=e.in_flow,
            exited=e.exited,
            goal_achieved=e.goal_achieved,
            conversations_initiated=e.conversations_initiated,
        )

    out = report_pb2.CampaignStats(
        campaign_id=stats.campaign_id,
        overall=bucket(stats.overall),
        by_channel=[bucket(b) for b in stats.by_channel],
        by_variant=[bucket(b) for b in stats.by_variant],
        sequence=stats.sequence,
        state=stats.state,  # type: ignore[arg-type]
    )
    if stats.complete_time is not None:
        set_ts(out.complete_time, stats.complete_time)
    if stats.first_event_at is not None:
        set_ts(out.first_event_time, stats.first_event_at)
    if stats.last_event_at is not None:
        set_ts(out.last_event_time, stats.last_event_at)
    ab_test = ab_test_to_proto(stats.by_variant)
    if ab_test is not None:
        out.ab_test.CopyFrom(ab_test)
    return out


def message_row(r: MessageRecord) -> report_pb2.MessageRow:
    """A MessageRow from a message report row (hot path)."""
    status = r.status
    row = _MessageRow(
        recipient=r.recipient,
        status=status,  # type: ignore[arg-type]
        attempt=r.attempt,
        channel=r.channel,
        variant=r.variant,
        provider_message_id=r.provider_message_id,
        session_id=r.session_id,
        clicks=r.clicks,
        input_variables=_loads(r.input_vars) if r.input_vars else None,
        output_variables=_loads(r.output_vars) if r.output_vars else None,
    )
    if status in _REASON_STATUSES:
        reason = row.failure_reason
        reason.code = r.reason_code
        reason.message = r.reason_message
    # Only the times that are set are touched: reading a submessage field costs.
    if r.not_submitted_at is not None:
        set_ts(row.not_submitted_time, r.not_submitted_at)
    if r.submitted_at is not None:
        set_ts(row.submitted_time, r.submitted_at)
    if r.delivery_not_confirmed_at is not None:
        set_ts(row.delivery_not_confirmed_time, r.delivery_not_confirmed_at)
    if r.success_at is not None:
        set_ts(row.success_time, r.success_at)
    if r.failed_at is not None:
        set_ts(row.failed_time, r.failed_at)
    if r.updated_at is not None:
        set_ts(row.update_time, r.updated_at)
    if r.first_click_at is not None:
        set_ts(row.first_click_time, r.first_click_at)
    if r.last_event_at is not None:
        set_ts(row.last_event_time, r.last_event_at)
    if r.replies is not None:  # NOT NULL in an engagement row: the recipient has one
        _fill_engagement(row, r)
    return row


def _fill_engagement(row: report_pb2.MessageRow, r: MessageRecord) -> None:
    """A MessageRow's engagement fields (earliest times, totals, exit, goal)."""
    if r.read_at is not None:
        set_ts(row.read_time, r.read_at)
    if r.replied_at is not None:
        set_ts(row.replied_time, r.replied_at)
    if r.opted_out_at is not None:
        set_ts(row.opted_out_time, r.opted_out_at)
    if r.entered_at is not None:
        set_ts(row.entered_time, r.entered_at)
    if r.exited_at is not None:
        set_ts(row.exited_time, r.exited_at)
        row.exit_reason = r.exit_reason or ""
    if r.goal_at is not None:
        set_ts(row.goal_time, r.goal_at)
        row.goal_id = r.goal_id or ""
    if r.replies:
        row.replies = r.replies
    if r.button_clicks:
        row.button_clicks = r.button_clicks


def add_clicks_and_taps(row: report_pb2.MessageRow, links: Sequence[LinkClick], taps: Sequence[ButtonTap]) -> None:
    """Add a MessageRow's link clicks and button taps."""
    for link in links:
        click = row.link_clicks.add(link_id=link.link_id, link_variable=link.link_variable, url=link.url)
        set_ts(click.occurred_at, link.occurred_at)
    for button in taps:
        tap = row.buttons.add(button_id=button.button_id, button_name=button.button_name)
        set_ts(tap.occurred_at, button.occurred_at)


def reply_row(r: ReplyRecord) -> report_pb2.ReplyRow:
    """A ReplyRow (StreamReplies) from a stored reply."""
    row = report_pb2.ReplyRow(sequence=r.seq, recipient=r.recipient, text=r.text)
    set_ts(row.occurred_at, r.occurred_at)
    return row


def stored_event(r: EventRecord) -> report_pb2.StoredEvent:
    """A StoredEvent from a stored event row."""
    out = report_pb2.StoredEvent(sequence=r.seq)
    set_ts(out.received_at, r.received_at)
    if r.kind == 1:
        ev = out.event.status
        ev.event_id = r.event_id
        ev.campaign_id = r.campaign_id
        ev.recipient = r.recipient
        ev.status = r.status or 0  # type: ignore[assignment]
        ev.attempt = r.attempt or 1
        set_ts(ev.occurred_at, r.occurred_at)
        if r.reason_code or r.reason_message:
            ev.failure_reason.code = r.reason_code or ""
            ev.failure_reason.message = r.reason_message or ""
        ev.channel = r.channel or ""
        ev.variant = r.variant or ""
        ev.provider_message_id = r.provider_message_id or ""
        ev.session_id = r.session_id or ""
        if r.input_vars:
            ev.input_variables.update(json.loads(r.input_vars))
        if r.output_vars:
            ev.output_variables.update(json.loads(r.output_vars))
    elif r.kind == 3:
        g = out.event.engagement
        g.event_id = r.event_id
        g.campaign_id = r.campaign_id
        g.recipient = r.recipient
        g.kind = r.engagement or 0  # type: ignore[assignment]
        set_ts(g.occurred_at, r.occurred_at)
        g.text = r.text or ""
        g.discard_text = bool(r.discard_text)
        g.button_id = r.button_id or ""
        g.button_name = r.button_name or ""
        g.exit_reason = r.exit_reason or ""
        g.goal_id = r.goal_id or ""
    else:
        click = out.event.click
        click.event_id = r.event_id
        click.campaign_id = r.campaign_id
        click.recipient = r.recipient
        click.link_id = r.link_id or ""
        click.link_variable = r.link_variable or ""
        click.url = r.url or ""
        set_ts(click.occurred_at, r.occurred_at)
        _fill_location(click.location, r)
        click.user_agent = r.user_agent or ""
        click.ip_address = r.ip_address or ""
    return out


def _fill_location(loc: common_pb2.Location, r: EventRecord) -> None:
    loc.country_code = r.country_code or ""
    loc.region = r.region or ""
    loc.city = r.city or ""
    if r.latitude is not None:
        loc.latitude = r.latitude
    if r.longitude is not None:
        loc.longitude = r.longitude


def click_row(r: EventRecord) -> report_pb2.ClickRow:
    """A ClickRow from a stored click event row."""
    row = report_pb2.ClickRow(
        sequence=r.seq,
        event_id=r.event_id,
        recipient=r.recipient,
        link_id=r.link_id or "",
        link_variable=r.link_variable or "",
        url=r.url or "",
        user_agent=r.user_agent or "",
        ip_address=r.ip_address or "",
        click_class=report_pb2.CLICK_CLASS_HUMAN if not r.bot_reason else report_pb2.CLICK_CLASS_BOT,  # type: ignore[arg-type]
        bot_reason=r.bot_reason or 0,  # type: ignore[arg-type]
    )
    _fill_location(row.location, r)
    set_ts(row.occurred_at, r.occurred_at)
    return row


def reason_row(r: ReasonRow, failed_total: int, not_submitted_total: int) -> report_pb2.FailureReasonRow:
    """A FailureReasonRow, with its shares of the campaign's FAILED and
    NOT_SUBMITTED totals (absent when a total is 0)."""
    row = report_pb2.FailureReasonRow(
        code=r.code,
        message=r.message,
        count=r.count,
        failed=r.failed,
        not_submitted=r.not_submitted,
        sample_recipients=r.samples,
    )
    share_failed = dstats.ratio(r.failed, failed_total)
    if share_failed is not None:
        row.share_of_failed = share_failed
    share_ns = dstats.ratio(r.not_submitted, not_submitted_total)
    if share_ns is not None:
        row.share_of_not_submitted = share_ns
    return row


def click_buckets(rows: list[ClickBucket]) -> list[report_pb2.ClickBucket]:
    """ClickBucket protos: clicks descending, then keys."""
    ordered = sorted(rows, key=lambda r: (-r.clicks, r.link_id, r.country_code, r.region, r.city))
    return [
        report_pb2.ClickBucket(
            link_id=r.link_id,
            country_code=r.country_code,
            region=r.region,
            city=r.city,
            clicks=r.clicks,
            unique_clickers=r.unique_clickers,
            human_clicks=r.human_clicks,
            bot_clicks=r.bot_clicks,
            unique_human_clickers=r.unique_human_clickers,
        )
        for r in ordered
    ]


# -- requests ---------------------------------------------------------------------------


def segments_of(f: report_pb2.MessageFilter) -> dict[str, bool]:
    """The engaged segments set on a MessageFilter proto, by name."""
    message: Any = f  # HasField's stub takes literal names only
    return {name: bool(getattr(f, name)) for name in dstats.ENGAGED_SEGMENTS if message.HasField(name)}


def message_filter(f: report_pb2.MessageFilter, prefix: str = "filter") -> MessageFilter:
    """The domain filter of a MessageFilter (INVALID_ARGUMENT under `prefix`)."""
    return dstats.message_filter(
        statuses=list(f.statuses),
        channel=f.channel,
        variant=f.variant,
        recipient=f.recipient,
        failure_code=f.failure_code,
        updated_after=optional_ts_to_us(f, "updated_after", prefix),
        updated_before=optional_ts_to_us(f, "updated_before", prefix),
        segments=segments_of(f),
        prefix=prefix,
    )


def click_filter(f: report_pb2.ClickFilter, prefix: str = "filter") -> ClickFilter:
    """The domain filter of a ClickFilter (INVALID_ARGUMENT under `prefix`)."""
    return dstats.click_filter(
        link_id=f.link_id,
        country_code=f.country_code,
        occurred_after=optional_ts_to_us(f, "occurred_after", prefix),
        occurred_before=optional_ts_to_us(f, "occurred_before", prefix),
        click_class=int(f.click_class),
        prefix=prefix,
    )


def reply_filter(f: report_pb2.ReplyFilter) -> tuple[str, int | None, int | None]:
    """A ReplyFilter's recipient and time range; INVALID_ARGUMENT names every
    bad part (times through the checked Timestamp conversion)."""
    violations: list[errors.Violation] = []
    wrong = dstats.filter_text("filter.recipient", f.recipient, "recipient")
    if wrong is not None:
        violations.append(wrong)
    after = before = None
    try:
        after = optional_ts_to_us(f, "occurred_after", "filter")
    except errors.InvalidArgument as bad:
        violations.extend(bad.violations)
    try:
        before = optional_ts_to_us(f, "occurred_before", "filter")
    except errors.InvalidArgument as bad:
        violations.extend(bad.violations)
    if after is not None and before is not None and before <= after:
        violations.append(errors.Violation("filter.occurred_before", "must be after occurred_after", "EMPTY_RANGE"))
    if violations:
        raise errors.InvalidArgument(violations)
    return f.recipient, after, before


_WIDTHS: dict[int, int] = {
    report_pb2.TIMELINE_BUCKET_WIDTH_UNSPECIFIED: dstats.HOUR_US,
    report_pb2.TIMELINE_BUCKET_WIDTH_MINUTE: dstats.MINUTE_US,
    report_pb2.TIMELINE_BUCKET_WIDTH_HOUR: dstats.HOUR_US,
    report_pb2.TIMELINE_BUCKET_WIDTH_DAY: dstats.DAY_US,
}


def timeline_width(width: int) -> int:
    """A TimelineBucketWidth in µs (INVALID_ARGUMENT for an unknown one)."""
    found = _WIDTHS.get(width)
    if found is None:
        raise errors.invalid("width", f"unknown width {width}", "UNKNOWN_VALUE")
    return found


_KINDS: dict[int, ExportKind] = {
    report_pb2.EXPORT_KIND_UNSPECIFIED: ExportKind.MESSAGES,
    report_pb2.EXPORT_KIND_MESSAGES: ExportKind.MESSAGES,
    report_pb2.EXPORT_KIND_CLICKS: ExportKind.CLICKS,
    report_pb2.EXPORT_KIND_FAILURE_REASONS: ExportKind.FAILURE_REASONS,
}
_FORMATS: dict[int, ExportFormat] = {
    report_pb2.EXPORT_FORMAT_UNSPECIFIED: ExportFormat.CSV,
    report_pb2.EXPORT_FORMAT_CSV: ExportFormat.CSV,
    report_pb2.EXPORT_FORMAT_XLSX: ExportFormat.XLSX,
}
_LAYOUTS: dict[int, ExportLayout] = {
    report_pb2.EXPORT_LAYOUT_UNSPECIFIED: ExportLayout.FLOWTRACK,
    report_pb2.EXPORT_LAYOUT_FLOWTRACK: ExportLayout.FLOWTRACK,
    report_pb2.EXPORT_LAYOUT_CONNECTLY: ExportLayout.CONNECTLY,
    report_pb2.EXPORT_LAYOUT_AUDIENCE: ExportLayout.AUDIENCE,
}


def export_request(request: report_pb2.ExportReportRequest) -> ExportRequest:
    """The checked export of an ExportReportRequest: kind, format, layout and
    filters; INVALID_ARGUMENT names every bad part (report schedules check
    theirs with it too)."""
    violations: list[errors.Violation] = []
    kind = _KINDS.get(request.kind)
    if kind is None:
        violations.append(errors.Violation("kind", f"unknown kind {request.kind}", "UNKNOWN_VALUE"))
    fmt = _FORMATS.get(request.format)
    if fmt is None:
        violations.append(errors.Violation("format", f"unknown format {request.format}", "UNKNOWN_VALUE"))
    layout = _LAYOUTS.get(request.layout)
    if layout is None:
        violations.append(errors.Violation("layout", f"unknown layout {request.layout}", "UNKNOWN_VALUE"))
    elif kind is not None and kind != ExportKind.MESSAGES and request.layout:
        violations.append(errors.Violation("layout", "only for EXPORT_KIND_MESSAGES", "NOT_APPLICABLE"))
    if layout == ExportLayout.AUDIENCE and fmt == ExportFormat.XLSX:
        violations.append(errors.Violation("format", "an audience file is CSV only", "NOT_APPLICABLE"))
    if kind is not None and kind != ExportKind.MESSAGES and request.message_filter.ByteSize():
        violations.append(errors.Violation("message_filter", "only for EXPORT_KIND_MESSAGES", "NOT_APPLICABLE"))
    if kind is not None and kind != ExportKind.CLICKS and request.click_filter.ByteSize():
        violations.append(errors.Violation("click_filter", "only for EXPORT_KIND_CLICKS", "NOT_APPLICABLE"))
    mflt = cflt = None
    try:
        mflt = message_filter(request.message_filter, "message_filter")
    except errors.InvalidArgument as bad:
        violations.extend(bad.violations)
    try:
        cflt = click_filter(request.click_filter, "click_filter")
    except errors.InvalidArgument as bad:
        violations.extend(bad.violations)
    if violations or kind is None or fmt is None or layout is None or mflt is None or cflt is None:
        raise errors.InvalidArgument(violations)
    return ExportRequest(request.campaign_id, kind, fmt, layout, mflt, cflt)


# -- results ----------------------------------------------------------------------------


def export_response(chunk: ExportChunk) -> report_pb2.ExportReportResponse:
    return report_pb2.ExportReportResponse(
        chunk=chunk.chunk,
        file_name=chunk.file_name,
        content_type=chunk.content_type,
        rows_written=chunk.rows_written,
        rows_estimate=chunk.rows_estimate,
    )


def breakdown(data: dict[str, Any], seq: int) -> report_pb2.GetClickBreakdownResponse:
    return report_pb2.GetClickBreakdownResponse(
        clicks=data["clicks"],
        unique_clickers=data["unique_clickers"],
        human_clicks=data["human_clicks"],
        bot_clicks=data["clicks"] - data["human_clicks"],
        unique_human_clickers=data["unique_human_clickers"],
        by_link=click_buckets(data["by_link"]),
        by_country=click_buckets(data["by_country"]),
        by_region=click_buckets(data["by_region"]),
        by_city=click_buckets(data["by_city"]),
        sequence=seq,
    )


# TimelineBucket field per status, and per EngagementKind.
_TIMELINE_FIELD = {2: "not_submitted", 3: "submitted", 4: "delivery_not_confirmed", 5: "failed", 6: "success"}
TIMELINE_FIELDS: dict[int, str] = {
    EngagementKind.READ: "read",
    EngagementKind.REPLIED: "replied",
    EngagementKind.OPTED_OUT: "opted_out",
    EngagementKind.BUTTON_CLICKED: "button_clicks",
    EngagementKind.ENTERED_FLOW: "entered_flow",
    EngagementKind.EXITED_FLOW: "exited_flow",
    EngagementKind.GOAL_ACHIEVED: "goal_achieved",
}


def add_timeline_engagement(bucket: report_pb2.TimelineBucket, kind: int | None, count: int) -> None:
    """Add `count` engagement events of EngagementKind `kind` to `bucket`."""
    name = TIMELINE_FIELDS.get(kind) if kind is not None else None
    if name is not None:
        setattr(bucket, name, getattr(bucket, name) + count)


def timeline(rows: Sequence[TimelineRow], seq: int) -> report_pb2.GetCampaignTimelineResponse:
    """GetCampaignTimelineResponse of the timeline's rows."""
    response = report_pb2.GetCampaignTimelineResponse(sequence=seq)
    current: report_pb2.TimelineBucket | None = None
    for row in rows:
        b, kind, status, count = row.bucket, row.kind, row.status, row.events
        if current is None or ts_to_us(current.start_time) != b:
            current = response.buckets.add()
            set_ts(current.start_time, b)
        if kind == 2:
            current.clicks += count
        elif kind == 3:
            add_timeline_engagement(current, status, count)
        elif status in _TIMELINE_FIELD:
            name = _TIMELINE_FIELD[status]
            setattr(current, name, getattr(current, name) + count)
    return response


# -- pages of the report streams (core/reports.Pages) -----------------------------------


class _MessagePages:
    item = staticmethod(message_row)
    size = staticmethod(report_pb2.MessageRow.ByteSize)  # no Python frame per row

    @staticmethod
    def engaged(r: MessageRecord, links: Sequence[LinkClick], taps: Sequence[ButtonTap]) -> report_pb2.MessageRow:
        row = message_row(r)
        add_clicks_and_taps(row, links, taps)
        return row

    @staticmethod
    def page(
        items: list[report_pb2.MessageRow], sequence: int, resume_token: str
    ) -> report_pb2.StreamMessageReportResponse:
        return report_pb2.StreamMessageReportResponse(rows=items, sequence=sequence, resume_token=resume_token)


class _HistoryPages:
    item = staticmethod(stored_event)
    size = staticmethod(report_pb2.StoredEvent.ByteSize)  # no Python frame per row

    @staticmethod
    def page(
        items: list[report_pb2.StoredEvent], sequence: int, resume_token: str
    ) -> report_pb2.StreamMessageHistoryResponse:
        return report_pb2.StreamMessageHistoryResponse(events=items, resume_token=resume_token)


class _ReasonPages:
    reason = staticmethod(reason_row)
    size = staticmethod(report_pb2.FailureReasonRow.ByteSize)  # no Python frame per row

    @staticmethod
    def page(items: list[report_pb2.FailureReasonRow], sequence: int) -> report_pb2.StreamFailureReasonsResponse:
        return report_pb2.StreamFailureReasonsResponse(reasons=items, sequence=sequence)


class _ClickPages:
    item = staticmethod(click_row)
    size = staticmethod(report_pb2.ClickRow.ByteSize)  # no Python frame per row

    @staticmethod
    def page(
        items: list[report_pb2.ClickRow], sequence: int, resume_token: str
    ) -> report_pb2.StreamClickReportResponse:
        return report_pb2.StreamClickReportResponse(rows=items, resume_token=resume_token)


class _ReplyPages:
    item = staticmethod(reply_row)
    size = staticmethod(report_pb2.ReplyRow.ByteSize)  # no Python frame per row

    @staticmethod
    def page(items: list[report_pb2.ReplyRow], sequence: int, resume_token: str) -> report_pb2.StreamRepliesResponse:
        return report_pb2.StreamRepliesResponse(rows=items, sequence=sequence, resume_token=resume_token)


class _EventPages:
    item = staticmethod(stored_event)
    size = staticmethod(report_pb2.StoredEvent.ByteSize)  # no Python frame per row

    @staticmethod
    def page(items: list[report_pb2.StoredEvent], caught_up: bool) -> report_pb2.SubscribeEventsResponse:
        return report_pb2.SubscribeEventsResponse(events=items, caught_up=caught_up)


MESSAGE_PAGES = _MessagePages()
HISTORY_PAGES = _HistoryPages()
REASON_PAGES = _ReasonPages()
CLICK_PAGES = _ClickPages()
REPLY_PAGES = _ReplyPages()
EVENT_PAGES = _EventPages()
