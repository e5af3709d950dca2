"""The columns of every export, and the cells of a row. Pure: no grpc, no SQL.

A cell is a `str`, an `int`, a `float` or `None` (blank: the report has no
data there). The CSV writer writes `None` as an empty field; the XLSX writer
leaves the cell empty and writes numbers as numbers.

Rows arrive as the store's named rows (domain/records.py: MessageRecord,
EventRecord) and are read by name.

Times are ISO 8601 in UTC with milliseconds and a Z (`domain.times.iso`),
e.g. `2026-01-01T09:30:00.123Z`. Every column is documented in docs/exports.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

from flowtrack.domain import bots
from flowtrack.domain.model import Status
from flowtrack.domain.records import ButtonTap, Click, EventRecord, MessageRecord
from flowtrack.domain.stats import ReasonRow, ratio

Cell = str | int | float | None

# At most this many clicks go into one row's link_clicks (the earliest ones);
# the `clicks` column always has the total. Keeps a cell within Excel's
# 32,767 characters and a row's memory bounded.
LINK_CLICKS_CAP = 100

# The Connectly campaign CSV's columns, in its order: the whole of the
# connectly layout (export/connectly.py) and the head of flowtrack's own.
CONNECTLY_HEADER = (
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

# The message export: first the columns of the campaign report messaging users
# know, in their order (Connectly's), then the flow studio's.
MESSAGE_HEADER = (
    *CONNECTLY_HEADER,
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
    "click_class",
    "bot_reason",
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


def second_prefix(cache: dict[int, str], seconds: int, fmt: str) -> str:
    """`fmt` of a whole second (UTC), kept in `cache` (at most 100,000
    seconds): report rows share seconds, and a time cell's formatter looks
    here first (`cache.get(seconds) or second_prefix(...)`: a hit costs one
    dict look-up)."""
    if len(cache) >= 100_000:
        cache.clear()
    prefix = cache[seconds] = time.strftime(fmt, time.gmtime(seconds))
    return prefix


_SECONDS: dict[int, str] = {}


def iso(us: int | None) -> str | None:
    """`domain.times.iso` (ISO 8601, UTC, milliseconds, Z) for a row's time, or
    None for no time. The date and time of a second are formatted once and
    reused (second_prefix)."""
    if us is None:
        return None
    seconds, micros = divmod(us, 1_000_000)
    prefix = _SECONDS.get(seconds) or second_prefix(_SECONDS, seconds, "%Y-%m-%dT%H:%M:%S.")
    return f"{prefix}{micros // 1000:03d}Z"


def variables(text: str | None) -> str | None:
    """A stored JSON object of variables as the export shows it: compact, keys
    sorted, non-ASCII characters as themselves (not \\u escapes)."""
    if not text:
        return None
    if "\\u" in text:
        return _dumps(_loads(text))
    return text


def link_clicks(clicks: Sequence[Click] | None) -> str | None:
    """A JSON array of {"id": link id, "name": link variable, "ts": click
    time} of the clicks, in click-time order."""
    if not clicks:
        return None
    return _dumps([{"id": c.link_id, "name": c.link_variable or "", "ts": iso(c.occurred_at)} for c in clicks])


def button_clicks(taps: Sequence[ButtonTap] | None) -> str | None:
    """A JSON array of {"id": button id, "name": button name, "ts": tap
    time} of the taps, in tap-time order."""
    if not taps:
        return None
    return _dumps([{"id": t.button_id, "name": t.button_name or "", "ts": iso(t.occurred_at)} for t in taps])


# -- rows -------------------------------------------------------------------------


def message_cells(
    row: MessageRecord,
    ctx: Context,
    clicks: Sequence[Click] | None,
    taps: Sequence[ButtonTap] | None = None,
) -> list[Cell]:
    """The cells of MESSAGE_HEADER for one message report row, its clicks
    (see `link_clicks`) and its button taps (see `button_clicks`)."""
    status = row.status
    failed = status in _REASON_STATUSES
    sb, sc, dnc, fl, ns = (
        row.submitted_at,
        row.success_at,
        row.delivery_not_confirmed_at,
        row.failed_at,
        row.not_submitted_at,
    )
    inp, outp, nclicks = row.input_vars, row.output_vars, row.clicks
    # Hot path (every row of a message export): no call for a blank time.
    return [
        row.recipient,
        ctx.business_id,
        ctx.campaign_name or None,
        ctx.campaign_id,
        row.session_id or None,
        None if sb is None else iso(sb),
        None if sc is None else iso(sc),
        None if row.read_at is None else iso(row.read_at),
        None if row.opted_out_at is None else iso(row.opted_out_at),
        (row.reason_code or None) if failed else None,
        (row.reason_message or None) if failed else None,
        button_clicks(taps) if row.button_clicks else None,
        link_clicks(clicks) if nclicks else None,
        (variables(inp) if inp else None),
        (variables(outp) if outp else None),
        _STATUS_NAMES.get(status) or str(status),
        None if dnc is None else iso(dnc),
        None if fl is None else iso(fl),
        None if ns is None else iso(ns),
        row.attempt,
        row.channel or None,
        row.variant or None,
        nclicks,
        None if row.replied_at is None else iso(row.replied_at),
        row.replies or 0,
        row.button_clicks or 0,
        None if row.entered_at is None else iso(row.entered_at),
        None if row.exited_at is None else iso(row.exited_at),
        row.exit_reason or None,
        None if row.goal_at is None else iso(row.goal_at),
        row.goal_id or None,
    ]


def click_cells(row: EventRecord, ctx: Context) -> list[Cell]:
    """The cells of CLICK_HEADER for one stored click."""
    return [
        row.recipient,
        ctx.business_id,
        ctx.campaign_id,
        row.link_id or None,
        row.link_variable or None,
        row.url or None,
        iso(row.occurred_at),
        row.country_code or None,
        row.region or None,
        row.city or None,
        row.latitude,
        row.longitude,
        row.user_agent or None,
        row.ip_address or None,
        row.event_id,
        row.seq,
        bots.class_name(row.bot_reason or 0),
        bots.reason_name(row.bot_reason or 0) or None,
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
