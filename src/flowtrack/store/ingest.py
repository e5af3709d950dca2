"""Storing events: the writer job behind every IngestService RPC.

For each valid event, in one writer transaction:
1. if its event_id is stored already, it is a DUPLICATE (same fingerprint)
   or a CONFLICT (another payload), and nothing changes;
2. otherwise find its campaign (create it implicitly, or refuse it under
   strict mode), give it the business's next sequence and insert it;
3. fold it into its message's current state (domain.model.apply, O(1) in
   any arrival order thanks to the per-attribute keys kept in attr_keys; only
   a message stored before those keys were kept is recomputed once from all
   its stored events with domain.model.fold);
4. classify each click human or bot (domain/bots.py: the business's rules,
   its user agent, its message's delivery as known after the batch; the
   stored clicks of a message whose delivery became known or earlier in the
   batch are classified again: store/bots.py);
5. change the counters by the difference between each touched message's
   contribution (bucket, clicks and human clicks, in the campaign, channel
   and variant scopes) before and after, plus the per-link click counters;
6. hand the batch's engagement events to store/engagement.py (after the
   fold, so they count in each message's channel and variant as it is now).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, replace
from typing import NamedTuple

import sqlalchemy as sa

from flowtrack.domain import jsonvars
from flowtrack.domain.bots import DEFAULT_RULES, HUMAN, BotRules, classify
from flowtrack.domain.ingest import KIND_CLICK, KIND_STATUS, Options, Outcome, Result
from flowtrack.domain.model import ClickEvent, EngagementEvent, Event, Key, MessageState, Status, StatusEvent, fold
from flowtrack.domain.model import apply as apply_event
from flowtrack.domain.privacy import REASON_ERASED
from flowtrack.domain.retention import OUTSIDE_RETENTION
from flowtrack.domain.validation import fingerprint
from flowtrack.store import bots, campaigns, engagement, privacy, retention, sql
from flowtrack.store.db import Lookup, Rows, execute_rows, rows_by_keys
from flowtrack.store.schema import FORGET, events, messages
from flowtrack.store.writer import Tx

__all__ = [
    "KIND_CLICK",
    "KIND_STATUS",
    "Options",
    "Outcome",
    "Result",
    "keep_attribute_keys",
    "message_events",
    "record_events",
]


_STATE_COLUMNS = (
    "status", "attempt", "cur_occurred_at", "cur_event_id", "reason_code", "reason_message", "channel", "variant",
    "provider_message_id", "session_id", "input_vars", "output_vars", "not_submitted_at", "submitted_at",
    "delivery_not_confirmed_at", "success_at", "failed_at", "last_event_at",
)  # fmt: skip
_STATE_NAMES = (*_STATE_COLUMNS, "clicks", "first_click_at", "updated_at", "attr_keys", "human_clicks")


class MessageRow(NamedTuple):
    """A message as _fold_into_messages loads it (after its key: db.rows_by_keys)."""

    business_id: str
    cid: int
    recipient: str
    status: int
    attempt: int
    cur_occurred_at: int | None
    cur_event_id: str | None
    reason_code: str
    reason_message: str
    channel: str
    variant: str
    provider_message_id: str
    session_id: str
    input_vars: str | None
    output_vars: str | None
    not_submitted_at: int | None
    submitted_at: int | None
    delivery_not_confirmed_at: int | None
    success_at: int | None
    failed_at: int | None
    last_event_at: int | None
    clicks: int
    first_click_at: int | None
    aud_channel: str
    aud_variant: str
    aud_input: str | None
    attr_keys: str | None
    human_clicks: int


_LOAD_MESSAGES = Lookup(
    messages,
    (messages.c.business_id, messages.c.cid, messages.c.recipient),
    [messages.c[name] for name in MessageRow._fields[3:]],
    MessageRow,
)
# One statement for new and known messages alike: added_at is kept on update.
_UPSERT_MESSAGES = Rows(
    messages,
    (
        "business_id",
        "cid",
        "recipient",
        *_STATE_COLUMNS,
        "clicks",
        "first_click_at",
        "added_at",
        "updated_at",
        "attr_keys",
        "human_clicks",
    ),
    lambda insert: insert.on_conflict_do_update(
        index_elements=[messages.c.business_id, messages.c.cid, messages.c.recipient],
        # A changed message's encoded forms go (store/encodings.py).
        set_={**{name: insert.excluded[name] for name in _STATE_NAMES}, **FORGET},
    ),
)
# Status and click events go in two inserts, each with its kind's columns
# only: the other kind's columns are NULL by default, and a NULL bound costs
# the sqlite3 module an adapter look-up (about 1,200 instructions), eleven
# per status event; PostgreSQL's COPY has as many fewer values to write.
_EVENT_COLUMNS = (
    "business_id", "seq", "event_id", "fingerprint", "cid", "recipient", "kind", "occurred_at", "received_at",
)  # fmt: skip
_INSERT_STATUS_EVENTS = Rows(
    events,
    (
        *_EVENT_COLUMNS, "status", "attempt", "reason_code", "reason_message", "channel", "variant",
        "provider_message_id", "session_id", "input_vars", "output_vars",
    ),
)  # fmt: skip
_INSERT_CLICK_EVENTS = Rows(
    events,
    (
        *_EVENT_COLUMNS, "link_id", "link_variable", "url", "country_code", "region", "city", "latitude",
        "longitude", "user_agent", "ip_address", "bot_reason",
    ),
)  # fmt: skip


class StoredEvent(NamedTuple):
    """An event_id already stored (the duplicate check)."""

    business_id: str
    event_id: str
    seq: int
    fingerprint: bytes


_STORED_EVENTS = Lookup(
    events, (events.c.business_id, events.c.event_id), (events.c.seq, events.c.fingerprint), StoredEvent
)
_MESSAGE_EVENTS = (
    sa.select(
        events.c.event_id, events.c.status, events.c.occurred_at, events.c.attempt, events.c.reason_code,
        events.c.reason_message, events.c.channel, events.c.variant, events.c.provider_message_id,
        events.c.session_id, events.c.input_vars, events.c.output_vars,
    )
    .where(
        events.c.business_id == sa.bindparam("business_id"),
        events.c.cid == sa.bindparam("cid"),
        events.c.recipient == sa.bindparam("recipient"),
        events.c.kind == KIND_STATUS,
    )
    .order_by(events.c.id)
)  # fmt: skip


def record_events(tx: Tx, business_id: str, events: list[Event], options: Options) -> tuple[list[Result], int]:
    """The writer job: store `events` (all valid) of one business. Returns a
    result per event and the business's last sequence after them.

    Works a batch at a time, not an event at a time: one query finds every
    event_id already stored, one finds their campaigns, one multi-row insert
    stores the new events, one query loads every message they touch, the
    fold runs in Python, and one multi-row upsert writes the messages back
    (each "one" is per few hundred events; see db.execute_rows)."""
    conn = tx.conn
    tx.lock_business(business_id)
    # Events older than the business's retention horizon are refused (domain/retention.py).
    horizon = retention.horizon_of(conn, business_id, tx.now_us)
    if not options.store_ip:
        # A discarded IP must not survive in the fingerprint either (a hash of
        # an IPv4 address with the event's other, known fields is easy to
        # reverse), and a resend from another address is the same event.
        events = [replace(e, ip_address="") if isinstance(e, ClickEvent) and e.ip_address else e for e in events]
    results: list[Result | None] = [None] * len(events)
    # Erased recipients' events are refused (one index probe when the business erased nobody).
    erased = privacy.erased_among(conn, business_id, [event.recipient for event in events])
    if erased:
        for index, event in enumerate(events):
            if event.recipient in erased:
                results[index] = Result(Outcome.REJECTED, 0, REASON_ERASED)
    prints = [fingerprint(event) for event in events]
    stored = _stored_events(conn, business_id, [event.event_id for event in events])
    cids = campaigns.lookup_many(conn, business_id, {event.campaign_id for event in events})
    accepted: list[tuple[int, StatusEvent | ClickEvent, int]] = []  # (cid, event, seq)
    accepted_prints: list[bytes] = []
    engaged_rows: list[tuple[object, ...]] = []  # engagement events: store/engagement.py
    engaged: list[tuple[int, EngagementEvent, int]] = []
    for index, event in enumerate(events):
        if results[index] is not None:
            continue
        known = stored.get(event.event_id)
        if known is not None:
            seq, print_ = known
            results[index] = (
                Result(Outcome.DUPLICATE, seq) if print_ == prints[index] else Result(Outcome.CONFLICT, seq, _REUSED)
            )
            continue
        if horizon is not None and event.occurred_at < horizon:
            results[index] = Result(Outcome.REJECTED, 0, OUTSIDE_RETENTION)
            continue
        cid = cids.get(event.campaign_id)
        if cid is None:
            if options.strict_campaigns:
                results[index] = Result(Outcome.REJECTED, 0, "UNKNOWN_CAMPAIGN")
                continue
            cid = cids[event.campaign_id] = campaigns.create_implicit(conn, business_id, event.campaign_id, tx.now_us)
        seq = tx.next_sequence(business_id)
        stored[event.event_id] = (seq, prints[index])  # a repeat later in the batch is a duplicate
        if isinstance(event, EngagementEvent):
            engaged_rows.append(engagement.event_row(business_id, seq, prints[index], cid, event, tx.now_us))
            engaged.append((cid, event, seq))
        else:
            accepted.append((cid, event, seq))
            accepted_prints.append(prints[index])
        results[index] = Result(Outcome.ACCEPTED, seq)
    if accepted:
        _store_and_fold(tx, business_id, accepted, accepted_prints)
    if accepted or engaged:  # after the fold: engagement counts in the message's channel as it is now
        status_keys = {(cid, e.recipient) for cid, e, _ in accepted if isinstance(e, StatusEvent)}
        engagement.record(tx, business_id, engaged_rows, engaged, status_keys)
    return [r for r in results if r is not None], tx.last_sequence(business_id)


_REUSED = "EVENT_ID_REUSED"


def _stored_events(conn: sqlite3.Connection, business_id: str, event_ids: list[str]) -> dict[str, tuple[int, bytes]]:
    """The (seq, fingerprint) of each of `event_ids` already stored."""
    keys = {(business_id, event_id) for event_id in event_ids}
    found: dict[str, tuple[int, bytes]] = {}
    for row in rows_by_keys(conn, _STORED_EVENTS, keys):
        found[row.event_id] = (row.seq, bytes(row.fingerprint))
    return found


def _status_row(
    business_id: str, seq: int, print_: bytes, cid: int, event: StatusEvent, now: int
) -> tuple[object, ...]:
    """A status event's row of _INSERT_STATUS_EVENTS."""
    return (
        business_id, seq, event.event_id, print_, cid, event.recipient, KIND_STATUS, event.occurred_at, now,
        int(event.status), event.attempt, event.reason_code, event.reason_message, event.channel, event.variant,
        event.provider_message_id, event.session_id, _json(event.input_variables), _json(event.output_variables),
    )  # fmt: skip


def _click_row(
    business_id: str, seq: int, print_: bytes, cid: int, event: ClickEvent, now: int, reason: int
) -> tuple[object, ...]:
    """A click event's row of _INSERT_CLICK_EVENTS."""
    return (
        business_id, seq, event.event_id, print_, cid, event.recipient, KIND_CLICK, event.occurred_at, now,
        event.link_id, event.link_variable, event.url, event.country_code, event.region, event.city,
        event.latitude, event.longitude, event.user_agent, event.ip_address or None, reason,
    )  # fmt: skip


@dataclass(slots=True)
class _Message:
    """A message row loaded (or created) for one batch."""

    state: MessageState
    clicks: int
    human_clicks: int
    first_click_at: int | None
    audience: tuple[str, str, str | None]  # aud_channel, aud_variant, aud_input
    before: _Counted | None  # what it counted for as loaded; None if new

    def counted(self) -> _Counted:
        return (self.state.status.bucket, self.state.channel, self.state.variant, self.clicks, self.human_clicks)


# What a message counts for: its bucket in the campaign, channel and variant
# scopes, and its clicks and human clicks (and one unique clicker, one unique
# human clicker, if any) in the same scopes.
_Counted = tuple[str, str, str, int, int]


def _count(tx: Tx, business_id: str, cid: int, counted: _Counted, sign: int) -> None:
    bucket, channel, variant, clicks, human = counted
    for scope in ("", "c:" + channel, "v:" + variant):
        tx.count(business_id, cid, scope, bucket, sign)
        if clicks:
            tx.count(business_id, cid, scope, "clicks", sign * clicks)
            tx.count(business_id, cid, scope, "unique_clickers", sign)
        if human:
            tx.count(business_id, cid, scope, "human_clicks", sign * human)
            tx.count(business_id, cid, scope, "unique_human_clickers", sign)


def _store_and_fold(
    tx: Tx, business_id: str, accepted: list[tuple[int, StatusEvent | ClickEvent, int]], prints: list[bytes]
) -> None:
    """Insert the batch's status and click events, each click with its bot
    reason, and fold them into their messages."""
    conn = tx.conn
    wanted = {(business_id, cid, event.recipient) for cid, event, _ in accepted}
    loaded = {(row.cid, row.recipient): row for row in rows_by_keys(conn, _LOAD_MESSAGES, wanted)}
    # Each message's delivery as the batch leaves it: the earliest SUCCESS
    # (domain/model.py keeps success_at as that minimum, in any order).
    delivered: dict[tuple[int, str], int | None] = {}
    has_click = False
    for cid, event, _ in accepted:
        if isinstance(event, StatusEvent):
            if event.status == Status.SUCCESS:
                key = (cid, event.recipient)
                known = delivered[key] if key in delivered else _success_at(loaded.get(key))
                if known is None or event.occurred_at < known:
                    delivered[key] = event.occurred_at
        else:
            has_click = True
    # Messages with stored clicks whose delivery the batch made known or earlier.
    late = [
        key
        for key, at in delivered.items()
        if (row := loaded.get(key)) is not None and row.clicks and at != row.success_at
    ]
    rules = bots.rules_of(conn, business_id) if has_click or late else DEFAULT_RULES
    status_rows: list[tuple[object, ...]] = []
    click_rows: list[tuple[object, ...]] = []
    reasons: list[int | None] = []
    now = tx.now_us
    for (cid, event, seq), print_ in zip(accepted, prints, strict=True):
        if isinstance(event, StatusEvent):
            reasons.append(None)
            status_rows.append(_status_row(business_id, seq, print_, cid, event, now))
            continue
        key = (cid, event.recipient)
        at = delivered[key] if key in delivered else _success_at(loaded.get(key))
        reason = classify(rules, event.user_agent, event.occurred_at, at)
        reasons.append(reason)
        click_rows.append(_click_row(business_id, seq, print_, cid, event, now, reason))
    # Each kind's events keep their arrival order (events.id) among themselves:
    # what every read ordered by id (a message's status events, the clicks) needs.
    execute_rows(conn, _INSERT_STATUS_EVENTS, status_rows)
    execute_rows(conn, _INSERT_CLICK_EVENTS, click_rows)
    _fold_into_messages(tx, business_id, accepted, reasons, loaded, (rules, late, delivered))


def _success_at(row: MessageRow | None) -> int | None:
    return None if row is None else row.success_at


def _fold_into_messages(
    tx: Tx,
    business_id: str,
    accepted: list[tuple[int, StatusEvent | ClickEvent, int]],
    reasons: list[int | None],
    loaded: dict[tuple[int, str], MessageRow],
    late: tuple[BotRules, list[tuple[int, str]], dict[tuple[int, str], int | None]],
) -> None:
    """Fold `accepted` (events of one business) into their messages."""
    conn = tx.conn
    messages: dict[tuple[int, str], _Message] = {}
    clickers = bots.Clickers()
    for key, row in loaded.items():
        message = _Message(
            _state(row),
            row.clicks,
            row.human_clicks,
            row.first_click_at,
            (row.aud_channel, row.aud_variant, row.aud_input),
            None,
        )
        message.before = message.counted()
        messages[key] = message
    for (cid, event, seq), reason in zip(accepted, reasons, strict=True):
        found = messages.get((cid, event.recipient))
        if found is None:  # a recipient first seen in an event joins the audience
            found = messages[(cid, event.recipient)] = _Message(MessageState(), 0, 0, None, ("", "", None), None)
        message = found
        if isinstance(event, StatusEvent):
            if not apply_event(message.state, event):
                channel, variant, inputs = message.audience
                base = MessageState(channel=channel, variant=variant, input_variables=_vars(inputs))
                message.state = fold(base, message_events(conn, business_id, cid, event.recipient))
        else:
            message.clicks += 1
            if message.first_click_at is None or event.occurred_at < message.first_click_at:
                message.first_click_at = event.occurred_at
            tx.count(business_id, cid, "l:" + event.link_id, "clicks", 1)
            if reason == HUMAN:
                message.human_clicks += 1
                tx.count(business_id, cid, "l:" + event.link_id, "human_clicks", 1)
            clickers.click((cid, event.link_id, event.recipient), reason == HUMAN)
        tx.touch_campaign(business_id, cid, event.occurred_at, seq)
    rules, keys, delivered = late
    if keys:  # their stored clicks, classified again against the new delivery
        again = {key: bots.Counted(delivered[key], "", "", messages[key].human_clicks) for key in keys}
        bots.reclassify(tx, business_id, rules, again, clickers)
        for key, counted in again.items():
            messages[key].human_clicks = counted.human_clicks
    bots.apply_clickers(tx, business_id, clickers)
    rows: list[tuple[object, ...]] = []
    for (cid, recipient), message in messages.items():
        after = message.counted()
        if after != message.before:
            if message.before is not None:
                _count(tx, business_id, cid, message.before, -1)
            _count(tx, business_id, cid, after, +1)
        state = message.state
        rows.append(
            (
                business_id, cid, recipient, int(state.status), state.attempt, state.occurred_at, state.event_id,
                state.reason_code, state.reason_message, state.channel, state.variant, state.provider_message_id,
                state.session_id,
                _json(state.input_variables), _json(state.output_variables), state.not_submitted_at,
                state.submitted_at, state.delivery_not_confirmed_at, state.success_at, state.failed_at,
                state.last_event_at, message.clicks, message.first_click_at, tx.now_us, tx.now_us,
                _keys_json(state.attribute_keys), message.human_clicks,
            )
        )  # fmt: skip
    execute_rows(conn, _UPSERT_MESSAGES, rows)


def _state(row: MessageRow) -> MessageState:
    """The MessageState of a loaded message."""
    state = MessageState(
        Status(row.status), row.attempt, row.cur_occurred_at, row.cur_event_id, row.reason_code,
        row.reason_message, row.channel, row.variant, row.provider_message_id, row.session_id,
        _vars(row.input_vars), _vars(row.output_vars), row.not_submitted_at, row.submitted_at,
        row.delivery_not_confirmed_at, row.success_at, row.failed_at, row.last_event_at,
    )  # fmt: skip
    if row.attr_keys is not None:
        state.attribute_keys = {name: (k[0], k[1], k[2], k[3]) for name, k in json.loads(row.attr_keys).items()}
    elif state.event_id is not None:
        state.attribute_keys = None  # stored before the keys were kept: unknown
    return state


_SET_KEYS = (
    messages.update()
    .where(
        messages.c.business_id == sa.bindparam("business_id"),
        messages.c.cid == sa.bindparam("cid"),
        messages.c.recipient == sa.bindparam("recipient"),
    )
    .values(attr_keys=sa.bindparam("keys"))
)


def keep_attribute_keys(conn: sqlite3.Connection, business_id: str, keys: set[tuple[int, str]]) -> int:
    """Of the business's messages `keys` ((cid, recipient)), those stored
    before the per-attribute keys were kept (attr_keys NULL) are folded once
    from all their stored events and keep their keys, so that folding a later
    event never needs the events a retention sweep is about to delete. How
    many. Writer connection; the caller locked the business."""
    filled = 0
    for row in rows_by_keys(conn, _LOAD_MESSAGES, {(business_id, cid, recipient) for cid, recipient in keys}):
        if row.attr_keys is not None or row.cur_event_id is None:
            continue
        base = MessageState(channel=row.aud_channel, variant=row.aud_variant, input_variables=_vars(row.aud_input))
        state = fold(base, message_events(conn, business_id, row.cid, row.recipient))
        values = {"business_id": business_id, "cid": row.cid, "recipient": row.recipient}
        sql.run(conn, _SET_KEYS, {**values, "keys": _keys_json(state.attribute_keys)})
        filled += 1
    return filled


def _keys_json(keys: dict[str, Key] | None) -> str | None:
    return None if keys is None else jsonvars.dumps(keys)  # event ids are ASCII: the text json.dumps gave


def message_events(conn: sqlite3.Connection, business_id: str, cid: int, recipient: str) -> list[StatusEvent]:
    """Every stored status event of one message, in arrival order."""
    rows = sql.run(conn, _MESSAGE_EVENTS, {"business_id": business_id, "cid": cid, "recipient": recipient}).fetchall()
    return [
        StatusEvent(
            r[0],
            "",
            recipient,
            Status(r[1]),
            r[2],
            r[3],
            r[4],
            r[5],
            r[6],
            r[7],
            r[8],
            r[9],
            _vars(r[10]),
            _vars(r[11]),
        )
        for r in rows
    ]


_json = jsonvars.dumps_vars
_vars = jsonvars.loads_vars
