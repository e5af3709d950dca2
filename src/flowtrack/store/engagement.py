"""Storing engagement events: the write side of engagement
(reads, replies, button taps, opt-outs, the flow funnel).

`record_events` (store/ingest.py) decides DUPLICATE / CONFLICT and hands out
sequences for every kind alike; the engagement events it accepts come here,
in the same writer transaction, after the batch's status and click events
were folded into their messages. Per batch:

1. insert them into the events log (kind 3, with their own columns);
2. a recipient not in the audience joins it as a PENDING message (its
   pending counters bumped), as with status events;
3. fold them into each message's `engagement` row (domain/engagement.py);
4. move the counters by the difference between each touched message's
   contribution before and after, in the campaign, channel and variant
   scopes. The row remembers the channel and variant it was counted in
   (counted_channel / counted_variant): when a status event of the batch
   changed a message's channel or variant, its engagement counts move too;
5. append every reply and button tap to `replies` / `button_clicks`.

Nothing here changes a message's delivery status (its current status is folded from status events only).
"""

from __future__ import annotations

import collections
import operator
import sqlite3
from collections import Counter
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy import bindparam, func, select

from flowtrack.domain import engagement as deng
from flowtrack.domain.engagement import Engagement
from flowtrack.domain.model import EngagementEvent, EngagementKind, Status
from flowtrack.store import sql
from flowtrack.store.db import Lookup, Rows, execute_rows, rows_by_keys
from flowtrack.store.schema import FORGET, button_clicks, engagement, events, messages, replies
from flowtrack.store.schema import engagement as engagement_table
from flowtrack.store.transaction import Tx

KIND_ENGAGEMENT = 3  # events.kind of engagement events (1 status, 2 click)

_INSERT_EVENTS = Rows(
    events,
    (
        "business_id", "seq", "event_id", "fingerprint", "cid", "recipient", "kind", "occurred_at", "received_at",
        "engagement", "text", "discard_text", "button_id", "button_name", "exit_reason", "goal_id",
    ),
)  # fmt: skip
_STATE = tuple(f.name for f in fields(Engagement))  # the engagement row's state columns, in Engagement's order
# An Engagement's values in _STATE's order. Its fields are scalars: dataclasses.astuple
# deep-copied each one, about 13 Python calls a field for every message written.
_state_values = operator.attrgetter(*_STATE)
_UPSERT = Rows(
    engagement,
    ("business_id", "cid", "recipient", *_STATE, "counted_channel", "counted_variant"),
    lambda insert: insert.on_conflict_do_update(
        index_elements=[engagement.c.business_id, engagement.c.cid, engagement.c.recipient],
        set_={name: insert.excluded[name] for name in (*_STATE, "counted_channel", "counted_variant")},
    ),
)
_ANY_ENGAGEMENT: sa.Select[Any] = (
    sa.select(sa.literal_column("1"))
    .where(engagement.c.business_id == sa.bindparam("business_id"), engagement.c.cid == sa.bindparam("cid"))
    .limit(1)
)
# A message as `_load` reads it: where it counts now, and its engagement row if any.
_m, _e = messages.alias("m"), engagement.alias("e")
_LOADED = (
    _m.c.channel,
    _m.c.variant,
    _e.c.cid.is_not(None),
    _e.c.counted_channel,
    _e.c.counted_variant,
    *(_e.c[name] for name in _STATE),
)
# A loaded message: its key, where it counts now, whether it has an engagement
# row (and where that counted), then the row's state columns (_STATE).
Loaded = collections.namedtuple(  # type: ignore[misc]
    "Loaded",
    ("business_id", "cid", "recipient", "channel", "variant", "has_row", "counted_channel", "counted_variant", *_STATE),
)
_STATE_AT = len(Loaded._fields) - len(_STATE)  # where the state columns start in a Loaded
_ON = sa.and_(_e.c.business_id == _m.c.business_id, _e.c.cid == _m.c.cid, _e.c.recipient == _m.c.recipient)
_LOAD_EVERY = Lookup(
    _m.outerjoin(_e, _ON),
    (_m.c.business_id, _m.c.cid, _m.c.recipient),
    _LOADED,
    Loaded,
)
_LOAD_ENGAGED = Lookup(
    _m.join(_e, _ON),
    (_m.c.business_id, _m.c.cid, _m.c.recipient),
    _LOADED,
    Loaded,
)
_JOIN_AUDIENCE = Rows(
    messages,
    ("business_id", "cid", "recipient", "added_at", "updated_at"),
    lambda insert: insert.on_conflict_do_update(
        index_elements=[messages.c.business_id, messages.c.cid, messages.c.recipient],
        set_={"updated_at": insert.excluded.updated_at, **FORGET},  # its encoded forms go (store/encodings.py)
    ),
)
_INSERT_REPLIES = Rows(replies, ("business_id", "cid", "seq", "recipient", "occurred_at", "text"))
_INSERT_TAPS = Rows(
    button_clicks, ("business_id", "cid", "seq", "recipient", "occurred_at", "button_id", "button_name")
)

Key = tuple[int, str]  # (cid, recipient)
Accepted = tuple[int, EngagementEvent, int]  # (cid, event, seq)


def event_row(
    business_id: str, seq: int, print_: bytes, cid: int, event: EngagementEvent, now: int
) -> tuple[object, ...]:
    """The events-log row of an accepted engagement event (for `record`)."""
    replied = event.kind is EngagementKind.REPLIED
    return (
        business_id, seq, event.event_id, print_, cid, event.recipient, KIND_ENGAGEMENT, event.occurred_at, now,
        int(event.kind), event.text if replied else None, int(event.discard_text) if replied else None,
        event.button_id or None, event.button_name or None, event.exit_reason or None, event.goal_id or None,
    )  # fmt: skip


@dataclass(slots=True)
class _Message:
    """One message's engagement as loaded for a batch, and where it counts now."""

    state: Engagement
    counted: tuple[str, str, dict[str, int]] | None  # (channel, variant, contribution) as stored; None if no row
    channel: str  # the message's channel and variant now (after the batch's status events)
    variant: str
    changed: bool = False


def record(
    tx: Tx, business_id: str, rows: list[tuple[object, ...]], engaged: list[Accepted], status_keys: set[Key]
) -> None:
    """Store a batch's accepted engagement events of `business_id` (`rows` from `event_row`,
    `engaged` the same events with their campaign and sequence), and move the
    engagement counters of the messages whose channel or variant the batch's
    status events (`status_keys`) may have changed."""
    conn = tx.conn
    if rows:
        execute_rows(conn, _INSERT_EVENTS, rows)
    keys = {(cid, event.recipient) for cid, event, _ in engaged}
    moved: set[Key] = set()  # status-only keys: only those with an engagement row matter
    if status_keys - keys:
        with_engagement = {
            cid
            for cid in {cid for cid, _ in status_keys - keys}
            if sql.one(conn, _ANY_ENGAGEMENT, {"business_id": business_id, "cid": cid})
        }
        moved = {key for key in status_keys - keys if key[0] in with_engagement}
    if not keys and not moved:
        return
    messages = _load(conn, business_id, keys, every=True) | _load(conn, business_id, moved, every=False)
    joined: list[Key] = []
    for cid, event, _ in engaged:
        key = (cid, event.recipient)
        message = messages.get(key)
        if message is None:  # a recipient first seen in an event joins the audience
            message = messages[key] = _Message(Engagement(), None, "", "")
            joined.append(key)
        deng.apply(message.state, event)
        message.changed = True
    _join_audience(tx, business_id, joined, {(cid, event.recipient) for cid, event, _ in engaged})
    upserts: list[tuple[object, ...]] = []
    for (cid, recipient), message in messages.items():
        if message.counted is None and not message.changed:
            continue  # a status event's message with no engagement: nothing to keep
        after = (message.channel, message.variant, deng.contribution(message.state))
        if after != message.counted:
            if message.counted is not None:
                _count(tx, business_id, cid, message.counted, -1)
            _count(tx, business_id, cid, after, +1)
            message.changed = True
        if message.changed:
            upserts.append(
                (business_id, cid, recipient, *_state_values(message.state), message.channel, message.variant)
            )
    execute_rows(conn, _UPSERT, upserts)
    _append_rows(conn, business_id, engaged)
    for cid, event, seq in engaged:
        tx.touch_campaign(business_id, cid, event.occurred_at, seq)


def _load(conn: sqlite3.Connection, business_id: str, keys: set[Key], *, every: bool) -> dict[Key, _Message]:
    """The messages of `keys` that exist with their engagement row: every one
    (with an empty engagement if it has no row), or only those with a row."""
    found: dict[Key, _Message] = {}
    row: Any
    wanted = {(business_id, cid, recipient) for cid, recipient in keys}
    for row in rows_by_keys(conn, _LOAD_EVERY if every else _LOAD_ENGAGED, wanted):
        state = Engagement(*row[_STATE_AT:]) if row.has_row else Engagement()
        counted = (row.counted_channel, row.counted_variant, deng.contribution(state)) if row.has_row else None
        found[(row.cid, row.recipient)] = _Message(state, counted, row.channel, row.variant)
    return found


def _join_audience(tx: Tx, business_id: str, joined: list[Key], touched: set[Key]) -> None:
    """Create the PENDING messages of `joined` (and count them), and mark every
    message of `touched` as changed now (messages.updated_at)."""
    rows = [(business_id, cid, recipient, tx.now_us, tx.now_us) for cid, recipient in sorted(touched)]
    execute_rows(tx.conn, _JOIN_AUDIENCE, rows)
    per_campaign = Counter(cid for cid, _ in joined)
    pending = Status.PENDING.bucket
    for cid, n in per_campaign.items():
        for scope in ("", "c:", "v:"):  # a new message has no channel and no variant
            tx.count(business_id, cid, scope, pending, n)


def _count(tx: Tx, business_id: str, cid: int, counted: tuple[str, str, dict[str, int]], sign: int) -> None:
    channel, variant, values = counted
    for scope in ("", "c:" + channel, "v:" + variant):
        for name, value in values.items():
            tx.count(business_id, cid, scope, name, sign * value)


def _append_rows(conn: sqlite3.Connection, business_id: str, engaged: list[Accepted]) -> None:
    replies = [
        (business_id, cid, seq, e.recipient, e.occurred_at, e.text)
        for cid, e, seq in engaged
        if e.kind is EngagementKind.REPLIED
    ]
    taps = [
        (business_id, cid, seq, e.recipient, e.occurred_at, e.button_id, e.button_name)
        for cid, e, seq in engaged
        if e.kind is EngagementKind.BUTTON_CLICKED
    ]
    execute_rows(conn, _INSERT_REPLIES, replies)
    execute_rows(conn, _INSERT_TAPS, taps)


# -- reading back (history, recounts) ----------------------------------------------

EVENT_COLUMNS = "event_id, occurred_at, engagement, text, discard_text, button_id, button_name, exit_reason, goal_id"


class _EventRow(NamedTuple):
    """An engagement event as stored (events, kind 3)."""

    recipient: str
    event_id: str
    occurred_at: int
    engagement: int
    text: str | None
    discard_text: int | None
    button_id: str | None
    button_name: str | None
    exit_reason: str | None
    goal_id: str | None


_EVENTS = (
    select(*(events.c[name] for name in _EventRow._fields))
    .where(
        events.c.business_id == bindparam("business_id"),
        events.c.cid == bindparam("cid"),
        events.c.kind == KIND_ENGAGEMENT,
    )
    .order_by(events.c.id)
)
_STORED = select(engagement_table.c.recipient, *(engagement_table.c[name] for name in _STATE)).where(
    engagement_table.c.business_id == bindparam("business_id"), engagement_table.c.cid == bindparam("cid")
)
_EVENTS_OF_KIND = select(func.count()).where(
    events.c.business_id == bindparam("business_id"),
    events.c.cid == bindparam("cid"),
    events.c.kind == KIND_ENGAGEMENT,
    events.c.engagement == bindparam("engagement"),
)
_ROWS = {
    "replies": select(func.count())
    .select_from(replies)
    .where(replies.c.business_id == bindparam("business_id"), replies.c.cid == bindparam("cid")),
    "button_clicks": select(func.count())
    .select_from(button_clicks)
    .where(button_clicks.c.business_id == bindparam("business_id"), button_clicks.c.cid == bindparam("cid")),
}


def event_from_row(campaign_id: str, recipient: str, row: tuple[Any, ...]) -> EngagementEvent:
    """An EngagementEvent from a row of EVENT_COLUMNS."""
    event_id, occurred_at, kind, text, discard, button_id, button_name, exit_reason, goal_id = row
    return EngagementEvent(
        event_id=str(event_id),
        campaign_id=campaign_id,
        recipient=recipient,
        kind=EngagementKind(kind),
        occurred_at=int(occurred_at),
        text=str(text or ""),
        discard_text=bool(discard),
        button_id=str(button_id or ""),
        button_name=str(button_name or ""),
        exit_reason=str(exit_reason or ""),
        goal_id=str(goal_id or ""),
    )


def campaign_engagement(conn: Any, business_id: str, cid: int) -> dict[str, Engagement]:
    """Every message's engagement of campaign `cid` folded from scratch from
    the events log (for checks: never on a request path)."""
    found: dict[str, list[EngagementEvent]] = {}
    values = {"business_id": business_id, "cid": cid}
    for row in sql.records(conn, _EVENTS, values, _EventRow):
        found.setdefault(row.recipient, []).append(event_from_row("", row.recipient, row[1:]))
    return {recipient: deng.fold(events_of) for recipient, events_of in found.items()}


def stored_engagement(conn: Any, business_id: str, cid: int) -> dict[str, Engagement]:
    """Every engagement row of campaign `cid`, as maintained by the writer."""
    rows = sql.run(conn, _STORED, {"business_id": business_id, "cid": cid})
    return {row[0]: Engagement(**dict(zip(_STATE, row[1:], strict=True))) for row in rows}


def recount(conn: Any, business_id: str, cid: int, scopes: dict[str, tuple[str, str]]) -> Counter[tuple[str, str]]:
    """The engagement counters of `cid` from scratch: (scope, name) -> value,
    each message counted in the channel and variant `scopes[recipient]`."""
    counts: Counter[tuple[str, str]] = Counter()
    for recipient, state in campaign_engagement(conn, business_id, cid).items():
        channel, variant = scopes.get(recipient, ("", ""))
        for scope in ("", "c:" + channel, "v:" + variant):
            for name, value in deng.contribution(state).items():
                counts[(scope, name)] += value
    return counts


def problems(conn: Any, business_id: str, cid: int) -> list[str]:
    """Differences between the stored engagement rows (and the replies and
    button taps) of `cid` and a fold of its engagement events."""
    found = []
    stored, expected = stored_engagement(conn, business_id, cid), campaign_engagement(conn, business_id, cid)
    for recipient in sorted(set(stored) | set(expected)):
        if stored.get(recipient) != expected.get(recipient):
            found.append(
                f"engagement {recipient!r}: stored {stored.get(recipient)}, recomputed {expected.get(recipient)}"
            )
    for table, kind in (("replies", EngagementKind.REPLIED), ("button_clicks", EngagementKind.BUTTON_CLICKED)):
        rows = sql.scalar(conn, _ROWS[table], {"business_id": business_id, "cid": cid})
        of_kind = sql.scalar(conn, _EVENTS_OF_KIND, {"business_id": business_id, "cid": cid, "engagement": int(kind)})
        if rows != of_kind:
            found.append(f"{table}: {rows} rows for {of_kind} events")
    return found
