"""The Connectly layout of the message export: the seed's campaign CSV,
column for column (ExportLayout EXPORT_LAYOUT_CONNECTLY). Pure: no grpc, no
SQL.

The header is exactly HEADER, in that order. Per recipient (a row of the
message report, columns.MESSAGE_SOURCE):

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
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from flowtrack.export.columns import MESSAGE_SOURCE, Cell, Context, Row, variables

HEADER = (
    "customer_external_id",
    "business_id",
    "campaign_name",
    "sendout_id",
    "cnt_session_id",
    "sent_at",
    "delivered_at",
    "read_at",
    "opt_out_at",
    "error_code",
    "error_msg",
    "button_clicks",
    "link_clicks",
    "input_variables",
    "output_variables",
)

LinkClick = tuple[str, str, str, int]  # (link_id, link_variable, url, occurred_at)
ButtonTap = tuple[str, str, int]  # (button_id, button_name, occurred_at)

_REASON_STATUSES = frozenset({2, 5})  # NOT_SUBMITTED, FAILED
# Where each source field is in a report row (named, not counted by hand).
_RECIPIENT, _STATUS, _CODE, _MESSAGE, _SESSION, _INPUT, _OUTPUT, _SENT, _DELIVERED, _READ, _OPTED_OUT = (
    MESSAGE_SOURCE.index(name)
    for name in (
        "recipient",
        "status",
        "reason_code",
        "reason_message",
        "session_id",
        "input_vars",
        "output_vars",
        "submitted_at",
        "success_at",
        "read_at",
        "opted_out_at",
    )
)
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_SECONDS: dict[int, str] = {}


def timestamp(us: int | None) -> str | None:
    """Microseconds since the epoch as `YYYY-MM-DD HH:MM:SS.ffffff` (UTC);
    None for no time. A second's prefix is formatted once and reused."""
    if us is None:
        return None
    seconds, micros = divmod(us, 1_000_000)
    prefix = _SECONDS.get(seconds)
    if prefix is None:
        if len(_SECONDS) >= 100_000:
            _SECONDS.clear()
        prefix = _SECONDS[seconds] = time.strftime("%Y-%m-%d %H:%M:%S.", time.gmtime(seconds))
    return f"{prefix}{micros:06d}"


def button_clicks(taps: Sequence[ButtonTap] | None) -> str | None:
    """The button_clicks cell: a JSON array of {"id", "name", "ts"}."""
    if not taps:
        return None
    return _dumps([{"id": button, "name": name, "ts": timestamp(at)} for button, name, at in taps])


def link_clicks(clicks: Sequence[LinkClick] | None) -> str | None:
    """The link_clicks cell: a JSON array of {"link_id", "link_variable", "url", "ts"}."""
    if not clicks:
        return None
    return _dumps(
        [
            {"link_id": link, "link_variable": variable, "url": url, "ts": timestamp(at)}
            for link, variable, url, at in clicks
        ]
    )


def cells(row: Row, ctx: Context, clicks: Sequence[LinkClick] | None, taps: Sequence[ButtonTap] | None) -> list[Cell]:
    """The cells of HEADER for one message report row (columns.MESSAGE_SOURCE)."""
    failed = row[_STATUS] in _REASON_STATUSES
    return [
        row[_RECIPIENT],
        ctx.business_id,
        ctx.campaign_name or None,
        ctx.campaign_id,
        row[_SESSION] or None,
        timestamp(row[_SENT]),
        timestamp(row[_DELIVERED]),
        timestamp(row[_READ]),
        timestamp(row[_OPTED_OUT]),
        (row[_CODE] or None) if failed else None,
        (row[_MESSAGE] or None) if failed else None,
        button_clicks(taps),
        link_clicks(clicks),
        variables(row[_INPUT]),
        variables(row[_OUTPUT]),
    ]
