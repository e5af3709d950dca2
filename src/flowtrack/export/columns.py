"""The columns of every export, and the cells of a row. Pure: no grpc, no SQL.

A cell is a `str`, an `int`, a `float` or `None` (blank: the report has no
data there). The CSV writer writes `None` as an empty field; the XLSX writer
leaves the cell empty and writes numbers as numbers.

Rows arrive as the tuples of the report queries, whose fields are named in
`MESSAGE_SOURCE` and `EVENT_SOURCE` (the store's MESSAGE_COLUMNS and
EVENT_COLUMNS; a test keeps them in step).

Times are ISO 8601 in UTC with milliseconds and a Z (`domain.times.iso`),
e.g. `2026-01-01T09:30:00.123Z`. Every column is documented in the README (Exports).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flowtrack.domain.model import Status
from flowtrack.domain.stats import ReasonRow, ratio

Cell = str | int | float | None
Row = Sequence[Any]

# At most this many clicks go into one row's link_clicks (the earliest ones);
# the `clicks` column always has the total. Keeps a cell within Excel's
# 32,767 characters and a row's memory bounded.
LINK_CLICKS_CAP = 100

# The message report's query columns, in order (store.reports.MESSAGE_COLUMNS).
MESSAGE_SOURCE = (
    "recipient",
    "status",
    "attempt",
    "channel",
    "variant",
    "reason_code",
    "reason_message",
    "provider_message_id",
    "session_id",
    "input_vars",
    "output_vars",
    "not_submitted_at",
    "submitted_at",
    "delivery_not_confirmed_at",
    "success_at",
    "failed_at",
    "updated_at",
    "clicks",
    "first_click_at",
    "last_event_at",
    # the engagement row's (store.engaged_reports.ENGAGEMENT_COLUMNS)
    "read_at",
    "replied_at",
    "replies",
    "opted_out_at",
    "button_clicks",
    "entered_at",
    "exited_at",
    "exit_reason",
    "goal_at",
    "goal_id",
)
MESSAGE_RECIPIENT = MESSAGE_SOURCE.index("recipient")
MESSAGE_CLICKS = MESSAGE_SOURCE.index("clicks")
MESSAGE_BUTTON_CLICKS = MESSAGE_SOURCE.index("button_clicks")

# The event queries' columns, in order (store.reports.EVENT_COLUMNS).
EVENT_SOURCE = (
    "id",
    "seq",
    "received_at",
    "event_id",
    "campaign_id",
    "recipient",
    "kind",
    "occurred_at",
    "status",
    "attempt",
    "reason_code",
    "reason_message",
    "channel",
    "variant",
    "provider_message_id",
    "session_id",
    "input_vars",
    "output_vars",
    "link_id",
    "link_variable",
    "url",
    "country_code",
    "region",
    "city",
    "latitude",
    "longitude",
    "user_agent",
    "ip_address",
    "engagement",
    "text",
    "discard_text",
    "button_id",
    "button_name",
    "exit_reason",
    "goal_id",
)

# The message export: first the columns of the campaign report messaging users
# know, in their order, then the flow studio's.
MESSAGE_HEADER = (
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
    "status",
    "delivery_not_confirmed_at",
    "failed_at",
    "not_submitted_at",
    "attempt",
    "channel",
    "variant",
    "clicks",
    "replied_at",
    "replies",
    "button_taps",
    "entered_at",
    "exited_at",
    "exit_reason",
    "goal_at",
    "goal_id",
)

CLICK_HEADER = (
    "customer_external_id",
    "business_id",
    "sendout_id",
    "link_id",
    "link_variable",
    "url",
    "clicked_at",
    "country_code",
    "region",
    "city",
    "latitude",
    "longitude",
    "user_agent",
    "ip_address",
    "event_id",
    "sequence",
)

FAILURE_HEADER = (
    "error_code",
    "error_msg",
    "count",
    "failed",
    "not_submitted",
    "share_of_failed",
    "share_of_not_submitted",
    "sample_recipients",
)

_STATUS_NAMES = {int(s): s.name for s in Status}
_REASON_STATUSES = frozenset({int(Status.FAILED), int(Status.NOT_SUBMITTED)})
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_loads = json.JSONDecoder().decode


@dataclass(frozen=True, slots=True)
class Context:
    """What every row of one export shares."""

    business_id: str
    campaign_id: str
    campaign_name: str


# -- values -----------------------------------------------------------------------

_SECONDS: dict[int, str] = {}


def iso(us: int | None) -> str | None:
    """`domain.times.iso` (ISO 8601, UTC, milliseconds, Z) for a row's time, or
    None for no time. The date and time of a second are formatted once and
    reused: report rows share seconds, and this runs for every time cell."""
    if us is None:
        return None
    seconds, micros = divmod(us, 1_000_000)
    prefix = _SECONDS.get(seconds)
    if prefix is None:
        if len(_SECONDS) >= 100_000:
            _SECONDS.clear()
        prefix = _SECONDS[seconds] = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(seconds))
    return f"{prefix}{micros // 1000:03d}Z"


def variables(text: str | None) -> str | None:
    """A stored JSON object of variables as the export shows it: compact, keys
    sorted, non-ASCII characters as themselves (not \\u escapes)."""
    if not text:
        return None
    if "\\u" in text:
        return _dumps(_loads(text))
    return text


def link_clicks(clicks: Sequence[tuple[str, str, int]] | None) -> str | None:
    """A JSON array of {"id": link id, "name": link variable, "ts": click
    time} from (link_id, link_variable, occurred_at) in click-time order."""
    if not clicks:
        return None
    return _dumps([{"id": link, "name": name or "", "ts": iso(at)} for link, name, at in clicks])


def button_clicks(taps: Sequence[tuple[str, str, int]] | None) -> str | None:
    """A JSON array of {"id": button id, "name": button name, "ts": tap
    time} from (button_id, button_name, occurred_at) in tap-time order."""
    if not taps:
        return None
    return _dumps([{"id": button, "name": name or "", "ts": iso(at)} for button, name, at in taps])


# -- rows -------------------------------------------------------------------------


def message_cells(
    row: Row,
    ctx: Context,
    clicks: Sequence[tuple[str, str, int]] | None,
    taps: Sequence[tuple[str, str, int]] | None = None,
) -> list[Cell]:
    """The cells of MESSAGE_HEADER for one message report row (MESSAGE_SOURCE),
    its clicks (see `link_clicks`) and its button taps (see `button_clicks`)."""
    (
        rec,
        status,
        attempt,
        channel,
        variant,
        code,
        rmsg,
        _pmid,
        sid,
        inp,
        outp,
        ns,
        sb,
        dnc,
        sc,
        fl,
        _upd,
        nclicks,
        _fc,
        _last,
        read,
        replied,
        replies,
        opted_out,
        ntaps,
        entered,
        exited,
        exit_reason,
        goal,
        goal_id,
    ) = row
    failed = status in _REASON_STATUSES
    # Hot path (every row of a message export): no call for a blank time.
    return [
        rec,
        ctx.business_id,
        ctx.campaign_name or None,
        ctx.campaign_id,
        sid or None,
        None if sb is None else iso(sb),
        None if sc is None else iso(sc),
        None if read is None else iso(read),
        None if opted_out is None else iso(opted_out),
        (code or None) if failed else None,
        (rmsg or None) if failed else None,
        button_clicks(taps) if ntaps else None,
        link_clicks(clicks) if nclicks else None,
        (variables(inp) if inp else None),
        (variables(outp) if outp else None),
        _STATUS_NAMES.get(status) or str(status),
        None if dnc is None else iso(dnc),
        None if fl is None else iso(fl),
        None if ns is None else iso(ns),
        attempt,
        channel or None,
        variant or None,
        nclicks,
        None if replied is None else iso(replied),
        replies or 0,
        ntaps or 0,
        None if entered is None else iso(entered),
        None if exited is None else iso(exited),
        exit_reason or None,
        None if goal is None else iso(goal),
        goal_id or None,
    ]


def click_cells(row: Row, ctx: Context) -> list[Cell]:
    """The cells of CLICK_HEADER for one click (EVENT_SOURCE)."""
    return [
        row[5],
        ctx.business_id,
        ctx.campaign_id,
        row[18] or None,
        row[19] or None,
        row[20] or None,
        iso(row[7]),
        row[21] or None,
        row[22] or None,
        row[23] or None,
        row[24],
        row[25],
        row[26] or None,
        row[27] or None,
        row[3],
        row[1],
    ]


def failure_cells(reason: ReasonRow, failed_total: int, not_submitted_total: int) -> list[Cell]:
    """The cells of FAILURE_HEADER for one failure reason, given the campaign's
    FAILED and NOT_SUBMITTED totals (a share is blank when its total is 0)."""
    return [
        reason.code or None,
        reason.message or None,
        reason.count,
        reason.failed,
        reason.not_submitted,
        ratio(reason.failed, failed_total),
        ratio(reason.not_submitted, not_submitted_total),
        _dumps(reason.samples),
    ]
