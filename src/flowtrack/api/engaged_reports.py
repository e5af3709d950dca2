"""The report side of engagement (reads, replies, taps, opt-outs, the funnel) over gRPC: what api/reports.py
and api/export.py add for it, kept apart so those stay thin.

- `segments_of`: a MessageFilter proto's engaged segments (tri-state
  `optional bool`s) as the domain filter takes them.
- `message_items`: the item function of a message report page
  (ReportStream.pages' `prepare`): MessageRows with their link clicks and
  button taps, read once per page (only for the rows that have any).
- `stream_replies`: StreamReplies, the Replies tab, a ReportStream
  (api/paging.py) over the `replies` table.
- `add_timeline_engagement`: a timeline bucket's engagement counts.

Conversions (rows to protos) are in api/report_convert.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpc

from flowtrack.api.context import business_of
from flowtrack.api.convert import optional_ts_to_us
from flowtrack.api.paging import ReportStream
from flowtrack.api.report_convert import add_clicks_and_taps, message_row, reply_row
from flowtrack.domain import errors, tokens
from flowtrack.domain import stats as dstats
from flowtrack.domain.model import EngagementKind
from flowtrack.domain.records import MessageRecord, ReplyRecord
from flowtrack.store import engaged_reports as sengaged
from flowtrack.v1 import report_pb2

if TYPE_CHECKING:
    from flowtrack.api.reports import ReportServicer

# At most this many link clicks and button taps go into one MessageRow (the
# earliest; `clicks` and `button_clicks` have the totals): bounds a row.
ROW_CLICKS_CAP = 100

# TimelineBucket field per EngagementKind.
TIMELINE_FIELDS: dict[int, str] = {
    EngagementKind.READ: "read",
    EngagementKind.REPLIED: "replied",
    EngagementKind.OPTED_OUT: "opted_out",
    EngagementKind.BUTTON_CLICKED: "button_clicks",
    EngagementKind.ENTERED_FLOW: "entered_flow",
    EngagementKind.EXITED_FLOW: "exited_flow",
    EngagementKind.GOAL_ACHIEVED: "goal_achieved",
}


def segments_of(f: report_pb2.MessageFilter) -> dict[str, bool]:
    """The engaged segments set on a MessageFilter proto, by name."""
    message: Any = f  # HasField's stub takes literal names only
    return {name: bool(getattr(f, name)) for name in dstats.ENGAGED_SEGMENTS if message.HasField(name)}


def message_items(
    stream: ReportStream[MessageRecord], cid: int
) -> Callable[[list[MessageRecord]], Callable[[MessageRecord], report_pb2.MessageRow]]:
    """ReportStream.pages' `prepare` for the message report: for a page's
    rows, reads (in the reader thread, inside the snapshot) the link clicks
    and button taps of those that have any, and returns the function that
    makes each row's MessageRow with them."""

    def prepare(rows: list[MessageRecord]) -> Callable[[MessageRecord], report_pb2.MessageRow]:
        clicked = [r.recipient for r in rows if r.clicks]
        tapped = [r.recipient for r in rows if r.button_clicks]
        links = stream.call_sync(sengaged.link_clicks, cid, clicked, ROW_CLICKS_CAP) if clicked else {}
        taps = stream.call_sync(sengaged.button_taps, cid, tapped, ROW_CLICKS_CAP) if tapped else {}
        if not links and not taps:
            return message_row

        def item(r: MessageRecord) -> report_pb2.MessageRow:
            row = message_row(r)
            add_clicks_and_taps(row, links.get(r.recipient, ()), taps.get(r.recipient, ()))
            return row

        return item

    return prepare


def add_timeline_engagement(bucket: report_pb2.TimelineBucket, kind: int | None, count: int) -> None:
    """Add `count` engagement events of EngagementKind `kind` to `bucket`."""
    name = TIMELINE_FIELDS.get(kind) if kind is not None else None
    if name is not None:
        setattr(bucket, name, getattr(bucket, name) + count)


def _checked_reply_filter(f: report_pb2.ReplyFilter) -> tuple[str, int | None, int | None]:
    """The filter's recipient and time range; INVALID_ARGUMENT names every
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


def _resume_seq(key: bytes, bound: str, token: str) -> int:
    if not token:
        return 0
    position = tokens.decode(key, "replies", bound, token, field="resume_token").get("s")
    if type(position) is not int or position < 0:
        raise errors.invalid("resume_token", "not a token returned by this server", "BAD_TOKEN")
    return position


async def stream_replies(
    servicer: ReportServicer, request: report_pb2.StreamRepliesRequest, context: grpc.aio.ServicerContext
) -> AsyncIterator[report_pb2.StreamRepliesResponse]:
    """StreamReplies: pages of up to `page_size` replies and PAGE_BYTES
    (api/paging.py), each with a resume token after its last reply. A stream
    that outlives its snapshot goes on after its last reply on a new one."""
    business_id = business_of(context)
    campaign_id = dstats.require_campaign_id(request.campaign_id)
    size = dstats.page_size(request.page_size)
    recipient, after_time, before_time = _checked_reply_filter(request.filter)
    key = servicer.store.token_key
    bound = tokens.bind(business_id, campaign_id, recipient, after_time, before_time)
    after = _resume_seq(key, bound, request.resume_token)
    stream: ReportStream[ReplyRecord] = servicer.stream(context, business_id, campaign_id)
    try:
        ref = await stream.open()
        await stream.start(
            lambda position: sengaged.replies_sql(ref.cid, recipient, after_time, before_time, position),
            ReplyRecord._make,
            position=after,
            resume=lambda r: r.seq,
        )

        def page(rows: list[report_pb2.ReplyRow], records: list[ReplyRecord]) -> report_pb2.StreamRepliesResponse:
            return report_pb2.StreamRepliesResponse(
                rows=rows,
                sequence=stream.snapshot_sequence,
                resume_token=tokens.encode(key, "replies", bound, {"s": stream.position}),
            )

        async for response in stream.pages(size, reply_row, page):
            yield response
    finally:
        stream.close()
