"""The rows the report queries return, with names.

The store (store/reports.py) builds its SELECTs from these fields, in this
order, and hands out these tuples; the proto converters (wire/reports.py)
and the export's cells (export/columns.py) read them by name. A new report
column is one field here and its SQL expression in store/reports.py, nothing
positional elsewhere.

NamedTuples rather than dataclasses: a page of up to 1000 rows is made per
page in the reader thread, and a tuple is the cheapest named row Python has.
"""

from __future__ import annotations

from typing import NamedTuple


class MessageRecord(NamedTuple):
    """One row of the message report (table `messages`, joined to its
    `engagement` row: the fields from `read_at` on are None when the recipient
    has no engagement). Times are µs since the epoch; variables are stored
    JSON text."""

    recipient: str
    status: int
    attempt: int
    channel: str
    variant: str
    reason_code: str
    reason_message: str
    provider_message_id: str
    session_id: str
    input_vars: str | None
    output_vars: str | None
    not_submitted_at: int | None
    submitted_at: int | None
    delivery_not_confirmed_at: int | None
    success_at: int | None
    failed_at: int | None
    updated_at: int | None
    clicks: int
    first_click_at: int | None
    last_event_at: int | None
    # engagement (store/engaged_reports.py): earliest times, totals, the exit and the goal
    read_at: int | None
    replied_at: int | None
    replies: int | None
    opted_out_at: int | None
    button_clicks: int | None
    entered_at: int | None
    exited_at: int | None
    exit_reason: str | None
    goal_at: int | None
    goal_id: str | None


class ReplyRecord(NamedTuple):
    """One reply (table `replies`), for StreamReplies."""

    seq: int
    recipient: str
    occurred_at: int
    text: str


class EventRecord(NamedTuple):
    """One stored event (table `events`), status (kind 1), click (kind 2) or
    engagement (kind 3): the fields of the other kinds are None."""

    id: int
    seq: int
    received_at: int
    event_id: str
    campaign_id: str
    recipient: str
    kind: int
    occurred_at: int
    status: int | None
    attempt: int | None
    reason_code: str | None
    reason_message: str | None
    channel: str | None
    variant: str | None
    provider_message_id: str | None
    session_id: str | None
    input_vars: str | None
    output_vars: str | None
    link_id: str | None
    link_variable: str | None
    url: str | None
    country_code: str | None
    region: str | None
    city: str | None
    latitude: float | None
    longitude: float | None
    user_agent: str | None
    ip_address: str | None
    engagement: int | None
    text: str | None
    discard_text: int | None
    button_id: str | None
    button_name: str | None
    exit_reason: str | None
    goal_id: str | None
    bot_reason: int | None  # clicks: 0 human, else why a bot's (domain/bots.py)


class ClickBucket(NamedTuple):
    """Clicks and clickers of one link, or of one country, region or city
    (the keys a bucket is not about are '')."""

    link_id: str
    country_code: str
    region: str
    city: str
    clicks: int
    unique_clickers: int
    human_clicks: int
    unique_human_clickers: int

    @property
    def bot_clicks(self) -> int:
        return self.clicks - self.human_clicks


class TimelineRow(NamedTuple):
    """Events of one kind and status in one bucket of the timeline (the
    bucket's start, µs); for engagement events (kind 3) `status` is the
    EngagementKind number, for clicks None."""

    bucket: int
    kind: int
    status: int | None
    events: int


class LinkClick(NamedTuple):
    """One link click of a message row (the message report, the Connectly export)."""

    link_id: str
    link_variable: str
    url: str
    occurred_at: int


class ButtonTap(NamedTuple):
    """One button tap of a message row."""

    button_id: str
    button_name: str
    occurred_at: int


class Click(NamedTuple):
    """One link click of a message row in flowtrack's own export layout."""

    link_id: str
    link_variable: str
    occurred_at: int
