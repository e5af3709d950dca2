"""The report streams' pages as wire bytes (the gRPC face sends them as they are).

`message_row`, `click_row` and `stored_event` (wire/reports.py) build a proto
per row; the encoders here write the same rows' bytes straight from the
store's named rows (wire/protowire.py: the fields from the descriptors, the
values from the columns), which costs a fraction of it. The bytes are those
of `SerializeToString(deterministic=True)` of the proto wire/reports.py
builds from the same row (tests/test_protowire.py holds them to it); the
HTTP face, which turns the protos into JSON, keeps using those.

Where a field's value does not come from the column of its name, `sources`
says so below; a field added to a proto is encoded without a change here if
its row has a column of its name, and fails at import if not.
"""

from __future__ import annotations

from collections.abc import Sequence

from flowtrack.domain.records import ButtonTap, EventRecord, LinkClick, MessageRecord
from flowtrack.v1 import common_pb2, ingest_pb2, report_pb2
from flowtrack.wire import protowire
from flowtrack.wire.protowire import ENCODED, compile_encoder

_REASON = compile_encoder(common_pb2.FailureReason.DESCRIPTOR, ("code", "message"))
_LOCATION = compile_encoder(
    common_pb2.Location.DESCRIPTOR,
    ("country_code", "region", "city", "latitude", "longitude"),
)
_LINK_CLICK = compile_encoder(report_pb2.LinkClick.DESCRIPTOR, LinkClick._fields)
_BUTTON = compile_encoder(report_pb2.ButtonClick.DESCRIPTOR, ButtonTap._fields)

# A message report row: the times are the `_at` columns; the failure reason
# only for FAILED and NOT_SUBMITTED; the exit reason and goal id with their times.
message_row = compile_encoder(
    report_pb2.MessageRow.DESCRIPTOR,
    MessageRecord._fields,
    {
        "failure_reason": "(reason_code, reason_message) if status == 5 or status == 2 else None",
        "input_variables": "input_vars",
        "output_variables": "output_vars",
        "not_submitted_time": "not_submitted_at",
        "submitted_time": "submitted_at",
        "delivery_not_confirmed_time": "delivery_not_confirmed_at",
        "success_time": "success_at",
        "failed_time": "failed_at",
        "update_time": "updated_at",
        "first_click_time": "first_click_at",
        "last_event_time": "last_event_at",
        "read_time": "read_at",
        "replied_time": "replied_at",
        "opted_out_time": "opted_out_at",
        "entered_time": "entered_at",
        "exited_time": "exited_at",
        "exit_reason": "exit_reason if exited_at is not None else None",
        "goal_time": "goal_at",
        "goal_id": "goal_id if goal_at is not None else None",
        "buttons": "taps",
        "link_clicks": "links",
    },
    {"failure_reason": _REASON, "buttons": _BUTTON, "link_clicks": _LINK_CLICK},
    params=("links", "taps"),
)

# A click report row (table `events`, kind 2); its location always present.
click_row = compile_encoder(
    report_pb2.ClickRow.DESCRIPTOR,
    EventRecord._fields,
    {"sequence": "seq", "location": "(country_code, region, city, latitude, longitude)"},
    {"location": _LOCATION},
)

_LOCATED = {"location": "(country_code, region, city, latitude, longitude)"}
_STATUS_EVENT = compile_encoder(
    ingest_pb2.StatusEvent.DESCRIPTOR,
    EventRecord._fields,
    {
        "status": "status or 0",
        "attempt": "attempt or 1",
        "failure_reason": "(reason_code or '', reason_message or '') if reason_code or reason_message else None",
        "input_variables": "input_vars",
        "output_variables": "output_vars",
    },
    {"failure_reason": _REASON},
)
_CLICK_EVENT = compile_encoder(ingest_pb2.ClickEvent.DESCRIPTOR, EventRecord._fields, _LOCATED, {"location": _LOCATION})
_ENGAGEMENT_EVENT = compile_encoder(
    ingest_pb2.EngagementEvent.DESCRIPTOR, EventRecord._fields, {"kind": "engagement or 0"}
)
_EVENT = compile_encoder(
    ingest_pb2.Event.DESCRIPTOR,
    EventRecord._fields,
    {
        "status": "_row if kind == 1 else None",
        "engagement": "_row if kind == 3 else None",
        "click": "_row if kind != 1 and kind != 3 else None",
    },
    {"status": _STATUS_EVENT, "click": _CLICK_EVENT, "engagement": _ENGAGEMENT_EVENT},
)
# A stored event (history, subscriptions): the event as its kind's message.
stored_event = compile_encoder(
    report_pb2.StoredEvent.DESCRIPTOR,
    EventRecord._fields,
    {"sequence": "seq", "event": "_row"},
    {"event": _EVENT},
)

_message_page = compile_encoder(
    report_pb2.StreamMessageReportResponse.DESCRIPTOR, ("rows", "resume_token", "sequence"), None, {"rows": ENCODED}
)
_click_page = compile_encoder(
    report_pb2.StreamClickReportResponse.DESCRIPTOR, ("rows", "resume_token"), None, {"rows": ENCODED}
)
_history_page = compile_encoder(
    report_pb2.StreamMessageHistoryResponse.DESCRIPTOR, ("events", "resume_token"), None, {"events": ENCODED}
)


class _MessagePages:
    item = staticmethod(message_row)
    size = staticmethod(len)

    @staticmethod
    def engaged(r: MessageRecord, links: Sequence[LinkClick], taps: Sequence[ButtonTap]) -> bytes:
        return message_row(r, links, taps)

    @staticmethod
    def page(items: list[bytes], sequence: int, resume_token: str) -> bytes:
        return _message_page((items, resume_token, sequence))


class _ClickPages:
    item = staticmethod(click_row)
    size = staticmethod(len)

    @staticmethod
    def page(items: list[bytes], sequence: int, resume_token: str) -> bytes:
        return _click_page((items, resume_token))


class _HistoryPages:
    item = staticmethod(stored_event)
    size = staticmethod(len)

    @staticmethod
    def page(items: list[bytes], sequence: int, resume_token: str) -> bytes:
        return _history_page((items, resume_token))


# The pages of StreamMessageReport, StreamClickReport and StreamMessageHistory
# as serialized responses (core/reports.Pages).
MESSAGE_PAGES = _MessagePages()
CLICK_PAGES = _ClickPages()
HISTORY_PAGES = _HistoryPages()

__all__ = ["CLICK_PAGES", "HISTORY_PAGES", "MESSAGE_PAGES", "click_row", "message_row", "protowire", "stored_event"]
