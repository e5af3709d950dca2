"""The message report's pages as wire bytes (the gRPC face sends them as they are).

`message_row` (wire/reports.py) builds a proto per row; the encoder here
writes the same row's bytes straight from the store's named row
(wire/protowire.py: the fields from the descriptors, the values from the
columns), with about a third fewer instructions (a MessageRow has many
timestamps and submessages, which cost most in upb's building; the click
report's and the history's rows do not, and stay protos). The bytes are those
of `SerializeToString(deterministic=True)` of the proto wire/reports.py
builds from the same row (tests/test_protowire.py holds them to it); the
HTTP face, which turns the protos into JSON, keeps using those.

Where a field's value does not come from the column of its name, `sources`
says so below; a field added to a proto is encoded without a change here if
its row has a column of its name, and fails at import if not.
"""

from __future__ import annotations

from collections.abc import Sequence

from flowtrack.domain.records import ButtonTap, LinkClick, MessageRecord
from flowtrack.v1 import common_pb2, report_pb2
from flowtrack.wire.protowire import ENCODED, compile_encoder

_REASON = compile_encoder(common_pb2.FailureReason.DESCRIPTOR, ("code", "message"))
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

_message_page = compile_encoder(
    report_pb2.StreamMessageReportResponse.DESCRIPTOR, ("rows", "resume_token", "sequence"), None, {"rows": ENCODED}
)


class _MessagePages:
    # Pages of the bytes the store keeps where it has them (core/reports.py, store/encodings.py).
    stored = True
    item = staticmethod(message_row)
    size = staticmethod(len)

    @staticmethod
    def engaged(r: MessageRecord, links: Sequence[LinkClick], taps: Sequence[ButtonTap]) -> bytes:
        return message_row(r, links, taps)

    @staticmethod
    def page(items: list[bytes], sequence: int, resume_token: str) -> bytes:
        return _message_page((items, resume_token, sequence))


# The pages of StreamMessageReport as serialized responses (core/reports.Pages).
MESSAGE_PAGES = _MessagePages()

__all__ = ["MESSAGE_PAGES", "message_row"]
