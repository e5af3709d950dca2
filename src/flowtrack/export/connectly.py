"""The Connectly layout of the message export: the campaign CSV that
messaging users know (Connectly's 15 columns, docs/exports.md), column for
column (ExportLayout EXPORT_LAYOUT_CONNECTLY). Pure: no grpc, no SQL.

The header is exactly HEADER, in that order. Per recipient (a row of the
message report, domain.records.MessageRecord):

| column | from |
|---|---|
| customer_external_id | the recipient |
| business_id | the caller's business |
| campaign_name | the campaign's name |
| sendout_id | the campaign id |
| cnt_session_id | the session id (latest status event that carried one) |
| sent_at | earliest SUBMITTED |
| delivered_at | earliest SUCCESS |
| read_at | earliest READ |
| opt_out_at | earliest OPTED_OUT |
| error_code, error_msg | the failure reason, when the current status is FAILED or NOT_SUBMITTED |
| button_clicks | `[{"id":..,"name":..,"ts":..}]`, every tap (earliest 100) in time order |
| link_clicks | `[{"link_id":..,"link_variable":..,"url":..,"ts":..}]`, every click (earliest 100) |
| input_variables, output_variables | JSON objects (compact, keys sorted) |

Times (cells and the `ts` inside JSON) are UTC as `YYYY-MM-DD HH:MM:SS.ffffff`.
A cell is blank when there is nothing: the event has not happened, no
session, no reason, no clicks, no variables.

In CSV every text cell goes through export/csv.py's formula neutralisation,
as in the flowtrack layout: a recipient, campaign name, session id or error
that starts with `=`, `+`, `-`, `@`, a tab or CR gets a leading `'`, unless
it is plainly a number or an E.164 phone number. The time cells start with
a digit and the JSON cells with `[` or `{`, so they are never changed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from flowtrack.domain.records import ButtonTap, LinkClick, MessageRecord
from flowtrack.export.columns import CONNECTLY_HEADER, Cell, Context, second_prefix, variables

HEADER = CONNECTLY_HEADER


_REASON_STATUSES = frozenset({2, 5})  # NOT_SUBMITTED, FAILED
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_SECONDS: dict[int, str] = {}


def timestamp(us: int | None) -> str | None:
    """Microseconds since the epoch as `YYYY-MM-DD HH:MM:SS.ffffff` (UTC);
    None for no time. A second's prefix is formatted once and reused."""
    if us is None:
        return None
    seconds, micros = divmod(us, 1_000_000)
    prefix = _SECONDS.get(seconds) or second_prefix(_SECONDS, seconds, "%Y-%m-%d %H:%M:%S.")
    return f"{prefix}{micros:06d}"


def button_clicks(taps: Sequence[ButtonTap] | None) -> str | None:
    """The button_clicks cell: a JSON array of {"id", "name", "ts"}."""
    if not taps:
        return None
    return _dumps([{"id": t.button_id, "name": t.button_name, "ts": timestamp(t.occurred_at)} for t in taps])


def link_clicks(clicks: Sequence[LinkClick] | None) -> str | None:
    """The link_clicks cell: a JSON array of {"link_id", "link_variable", "url", "ts"}."""
    if not clicks:
        return None
    return _dumps(
        [
            {"link_id": c.link_id, "link_variable": c.link_variable, "url": c.url, "ts": timestamp(c.occurred_at)}
            for c in clicks
        ]
    )


def cells(
    row: MessageRecord, ctx: Context, clicks: Sequence[LinkClick] | None, taps: Sequence[ButtonTap] | None
) -> list[Cell]:
    """The cells of HEADER for one message report row, its link clicks and
    its button taps."""
    failed = row.status in _REASON_STATUSES
    return [
        row.recipient,
        ctx.business_id,
        ctx.campaign_name or None,
        ctx.campaign_id,
        row.session_id or None,
        timestamp(row.submitted_at),
        timestamp(row.success_at),
        timestamp(row.read_at),
        timestamp(row.opted_out_at),
        (row.reason_code or None) if failed else None,
        (row.reason_message or None) if failed else None,
        button_clicks(taps),
        link_clicks(clicks),
        variables(row.input_vars),
        variables(row.output_vars),
    ]
