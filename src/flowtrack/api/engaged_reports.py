"""The report side of engagement (SPEC §5) over gRPC: what api/reports.py
and api/export.py add for it, kept apart so those stay thin.

- `segments_of`: a MessageFilter proto's engaged segments (tri-state
  `optional bool`s) as the domain filter takes them.
- `fill_engagement`: a MessageRow's engagement fields from the report row's
  ENGAGEMENT_COLUMNS; `attach_clicks`: its link clicks and button taps, one
  query each per page (only for the rows that have any).
- `stream_replies`: StreamReplies, the Replies tab.
- `add_timeline_engagement`: a timeline bucket's engagement counts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import timestamp_pb2

from flowtrack.api.context import business_of
from flowtrack.api.convert import checked_ts_to_us
from flowtrack.domain import errors, tokens
from flowtrack.domain import stats as dstats
from flowtrack.domain.model import EngagementKind
from flowtrack.store import engaged_reports as sengaged
from flowtrack.store import reports as sreports
from flowtrack.v1 import report_pb2

if TYPE_CHECKING:
    from flowtrack.api.reports import ReportServicer

# At most this many link clicks and button taps go into one MessageRow (the
# earliest; `clicks` and `button_clicks` have the totals): bounds a row.
ROW_CLICKS_CAP = 100
# A StreamReplies message ends early once its texts reach this many bytes
# (UTF-8), so a page of long replies stays far below gRPC's 4 MiB default.
REPLY_PAGE_BYTES = 1 << 20

# Where fields are in a row of MESSAGE_COLUMNS.
_COLUMN = {name.strip(): i for i, name in enumerate(sreports.MESSAGE_COLUMNS.split(","))}
_RECIPIENT, _CLICKS, _BUTTON_CLICKS = _COLUMN["recipient"], _COLUMN["clicks"], _COLUMN["button_clicks"]

# The engagement columns of a message that has none (the LEFT JOIN's NULLs).
NOT_ENGAGED: list[None] = [None] * len(sengaged.ENGAGEMENT_COLUMNS.split(","))

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


def _set_ts(ts: timestamp_pb2.Timestamp, us: int) -> None:
    ts.seconds, micros = divmod(us, 1_000_000)
    ts.nanos = micros * 1000


def segments_of(f: report_pb2.MessageFilter) -> dict[str, bool]:
    """The engaged segments set on a MessageFilter proto, by name."""
    message: Any = f  # HasField's stub takes literal names only
    return {name: bool(getattr(f, name)) for name in dstats.ENGAGED_SEGMENTS if message.HasField(name)}


def fill_engagement(row: report_pb2.MessageRow, engaged: Sequence[Any]) -> None:
    """Set `row`'s engagement fields from the row's ENGAGEMENT_COLUMNS values
    (all NULL when the recipient has no engagement)."""
    read, replied, replies, opted_out, taps, entered, exited, exit_reason, goal, goal_id = engaged
    if read is not None:
        _set_ts(row.read_time, read)
    if replied is not None:
        _set_ts(row.replied_time, replied)
    if opted_out is not None:
        _set_ts(row.opted_out_time, opted_out)
    if entered is not None:
        _set_ts(row.entered_time, entered)
    if exited is not None:
        _set_ts(row.exited_time, exited)
        row.exit_reason = exit_reason or ""
    if goal is not None:
        _set_ts(row.goal_time, goal)
        row.goal_id = goal_id or ""
    if replies:
        row.replies = replies
    if taps:
        row.button_clicks = taps


def attach_clicks(
    snapshot: sreports.Snapshot, cid: int, raw: Sequence[sreports.Row], rows: Sequence[report_pb2.MessageRow]
) -> None:
    """Fill the link_clicks and buttons of a page's MessageRows (`rows`, built
    from `raw`, rows of MESSAGE_COLUMNS) inside the stream's snapshot."""
    clicked = [r[_RECIPIENT] for r in raw if r[_CLICKS]]
    tapped = [r[_RECIPIENT] for r in raw if r[_BUTTON_CLICKS]]
    links = snapshot.call(sengaged.link_clicks, cid, clicked, ROW_CLICKS_CAP) if clicked else {}
    taps = snapshot.call(sengaged.button_taps, cid, tapped, ROW_CLICKS_CAP) if tapped else {}
    if not links and not taps:
        return
    for row in rows:
        for link_id, variable, url, at in links.get(row.recipient, ()):
            click = row.link_clicks.add(link_id=link_id, link_variable=variable, url=url)
            _set_ts(click.occurred_at, at)
        for button_id, name, at in taps.get(row.recipient, ()):
            tap = row.buttons.add(button_id=button_id, button_name=name)
            _set_ts(tap.occurred_at, at)


def add_timeline_engagement(bucket: report_pb2.TimelineBucket, kind: int | None, count: int) -> None:
    """Add `count` engagement events of EngagementKind `kind` to `bucket`."""
    name = TIMELINE_FIELDS.get(kind) if kind is not None else None
    if name is not None:
        setattr(bucket, name, getattr(bucket, name) + count)


def _opt_time(message: Any, name: str, field: str) -> int | None:
    return checked_ts_to_us(getattr(message, name), field) if message.HasField(name) else None


def _checked_reply_filter(f: report_pb2.ReplyFilter) -> tuple[str, int | None, int | None]:
    violations: list[errors.Violation] = []
    if len(f.recipient) > dstats.FILTER_CAPS["recipient"]:
        violations.append(
            errors.Violation("filter.recipient", f"at most {dstats.FILTER_CAPS['recipient']} characters", "TOO_LONG")
        )
    after = _opt_time(f, "occurred_after", "filter.occurred_after")
    before = _opt_time(f, "occurred_before", "filter.occurred_before")
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
    """StreamReplies: a page of up to `page_size` replies per message (fewer
    when their texts reach REPLY_PAGE_BYTES), each with a resume token after
    its last reply, all read at one snapshot."""
    business_id = business_of(context)
    campaign_id = dstats.require_campaign_id(request.campaign_id)
    size = dstats.page_size(request.page_size)
    recipient, after_time, before_time = _checked_reply_filter(request.filter)
    key = servicer.store.token_key
    bound = tokens.bind(business_id, campaign_id, recipient, after_time, before_time)
    after = _resume_seq(key, bound, request.resume_token)
    snapshot, ref = await servicer._open(context, business_id, campaign_id)
    try:
        sql, params = sengaged.replies_sql(ref.cid, recipient, after_time, before_time, after)
        await servicer.store.read(lambda _conn: snapshot.run(sql, params))
        seq = snapshot.sequence
        position = after

        def build(rows: list[sreports.Row]) -> list[report_pb2.StreamRepliesResponse]:
            nonlocal position
            pages = [report_pb2.StreamRepliesResponse(sequence=seq)]
            used = 0
            for row_seq, who, at, text in rows:
                if used >= REPLY_PAGE_BYTES:
                    pages[-1].resume_token = tokens.encode(key, "replies", bound, {"s": position})
                    pages.append(report_pb2.StreamRepliesResponse(sequence=seq))
                    used = 0
                reply = pages[-1].rows.add(sequence=row_seq, recipient=who, text=text)
                _set_ts(reply.occurred_at, at)
                used += len(text.encode("utf-8"))
                position = row_seq
            pages[-1].resume_token = tokens.encode(key, "replies", bound, {"s": position})
            return pages

        async for pages in servicer._pages(context, snapshot, size, build):
            for page in pages:
                yield page
    finally:
        servicer._close(snapshot)
