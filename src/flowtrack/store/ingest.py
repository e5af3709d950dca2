"""Storing events: the writer job behind every IngestService RPC.

For each valid event, in one writer transaction:
1. find the campaign (create it implicitly, or refuse it under strict mode);
2. insert the event, unless its event_id is known: then it is a DUPLICATE
   (same fingerprint) or a CONFLICT (another payload), and nothing changes;
3. fold it into its message's current state (domain.model.apply; if the
   result could depend on arrival order, recompute from all the message's
   events with domain.model.fold);
4. move the counters from the message's old (bucket, channel, variant) to
   the new one, and count clicks and unique clickers.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from flowtrack.domain.model import ClickEvent, Event, MessageState, Status, StatusEvent, fold
from flowtrack.domain.model import apply as apply_event
from flowtrack.domain.validation import fingerprint
from flowtrack.store import campaigns
from flowtrack.store.writer import Tx

KIND_STATUS = 1
KIND_CLICK = 2


class Outcome(IntEnum):
    """Same numbers as the proto's EventOutcome."""

    ACCEPTED = 1
    DUPLICATE = 2
    CONFLICT = 3
    INVALID = 4
    REJECTED = 5


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    sequence: int = 0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Options:
    strict_campaigns: bool = False
    store_ip: bool = False


_STATE_COLUMNS = (
    "status, attempt, cur_occurred_at, cur_event_id, reason_code, reason_message, channel, variant,"
    " provider_message_id, session_id, input_vars, output_vars, not_submitted_at, submitted_at,"
    " delivery_not_confirmed_at, success_at, failed_at, last_event_at"
)
_SELECT_MESSAGE = (
    f"SELECT {_STATE_COLUMNS}, clicks, aud_channel, aud_variant, aud_input FROM messages"
    " WHERE cid = ? AND recipient = ?"
)
_UPDATE_MESSAGE = (
    "UPDATE messages SET status = ?, attempt = ?, cur_occurred_at = ?, cur_event_id = ?, reason_code = ?,"
    " reason_message = ?, channel = ?, variant = ?, provider_message_id = ?, session_id = ?, input_vars = ?,"
    " output_vars = ?, not_submitted_at = ?, submitted_at = ?, delivery_not_confirmed_at = ?, success_at = ?,"
    " failed_at = ?, last_event_at = ?, updated_at = ? WHERE cid = ? AND recipient = ?"
)
_INSERT_EVENT = (
    "INSERT INTO events (business_id, seq, event_id, fingerprint, cid, recipient, kind, occurred_at, received_at,"
    " status, attempt, reason_code, reason_message, channel, variant, provider_message_id, session_id, input_vars,"
    " output_vars, link_id, link_variable, url, country_code, region, city, latitude, longitude, user_agent,"
    " ip_address) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
    " ON CONFLICT (business_id, event_id) DO NOTHING"
)


def record_events(tx: Tx, business_id: str, events: list[Event], options: Options) -> tuple[list[Result], int]:
    """The writer job: store `events` (all valid) of one business. Returns a
    result per event and the business's last sequence after them."""
    conn = tx.conn
    cids: dict[str, int | None] = {}
    results = []
    for event in events:
        cid = cids.get(event.campaign_id, -1)
        if cid == -1:
            cid = campaigns.lookup(conn, business_id, event.campaign_id)
            cids[event.campaign_id] = cid
        if cid is None:
            known = _known(conn, business_id, event)
            if known is not None:
                results.append(known)
                continue
            if options.strict_campaigns:
                results.append(Result(Outcome.REJECTED, 0, "UNKNOWN_CAMPAIGN"))
                continue
            cid = campaigns.create_implicit(conn, business_id, event.campaign_id, tx.now_us)
            cids[event.campaign_id] = cid
        results.append(_record(tx, business_id, cid, event, options))
    return results, tx.last_sequence(business_id)


def _known(conn: sqlite3.Connection, business_id: str, event: Event) -> Result | None:
    """DUPLICATE or CONFLICT if the event_id was stored before, else None."""
    row = conn.execute(
        "SELECT seq, fingerprint FROM events WHERE business_id = ? AND event_id = ?", (business_id, event.event_id)
    ).fetchone()
    if row is None:
        return None
    if bytes(row[1]) == fingerprint(event):
        return Result(Outcome.DUPLICATE, row[0])
    return Result(Outcome.CONFLICT, row[0], "EVENT_ID_REUSED")


def _record(tx: Tx, business_id: str, cid: int, event: Event, options: Options) -> Result:
    conn = tx.conn
    seq = tx.last_sequence(business_id) + 1
    if isinstance(event, StatusEvent):
        values: tuple[object, ...] = (
            business_id,
            seq,
            event.event_id,
            fingerprint(event),
            cid,
            event.recipient,
            KIND_STATUS,
            event.occurred_at,
            tx.now_us,
            int(event.status),
            event.attempt,
            event.reason_code,
            event.reason_message,
            event.channel,
            event.variant,
            event.provider_message_id,
            event.session_id,
            _json(event.input_variables),
            _json(event.output_variables),
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        )
    else:
        values = (
            business_id,
            seq,
            event.event_id,
            fingerprint(event),
            cid,
            event.recipient,
            KIND_CLICK,
            event.occurred_at,
            tx.now_us,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            event.link_id,
            event.link_variable,
            event.url,
            event.country_code,
            event.region,
            event.city,
            event.latitude,
            event.longitude,
            event.user_agent,
            event.ip_address if options.store_ip else None,
        )
    if conn.execute(_INSERT_EVENT, values).rowcount == 0:
        known = _known(conn, business_id, event)
        assert known is not None
        return known
    tx.next_sequence(business_id)
    if isinstance(event, StatusEvent):
        _fold_status(tx, cid, event)
    else:
        _count_click(tx, cid, event)
    tx.touch_campaign(cid, event.occurred_at, seq)
    return Result(Outcome.ACCEPTED, seq)


def _join_audience(tx: Tx, cid: int, recipient: str) -> None:
    """A recipient first seen in an event joins the audience, as PENDING."""
    tx.conn.execute(
        "INSERT INTO messages (cid, recipient, added_at, updated_at) VALUES (?, ?, ?, ?)",
        (cid, recipient, tx.now_us, tx.now_us),
    )
    _count_message(tx, cid, Status.PENDING.bucket, "", "", +1)


def _count_message(tx: Tx, cid: int, bucket: str, channel: str, variant: str, delta: int) -> None:
    tx.count(cid, "", bucket, delta)
    tx.count(cid, "c:" + channel, bucket, delta)
    tx.count(cid, "v:" + variant, bucket, delta)


def _fold_status(tx: Tx, cid: int, event: StatusEvent) -> None:
    conn = tx.conn
    row = conn.execute(_SELECT_MESSAGE, (cid, event.recipient)).fetchone()
    if row is None:
        _join_audience(tx, cid, event.recipient)
        row = conn.execute(_SELECT_MESSAGE, (cid, event.recipient)).fetchone()
    state = _state(row)
    clicks = row[18]
    old = (state.status.bucket, state.channel, state.variant)
    if not apply_event(state, event):
        base = MessageState(channel=row[19], variant=row[20], input_variables=_vars(row[21]))
        state = fold(base, message_events(conn, cid, event.recipient))
    conn.execute(
        _UPDATE_MESSAGE,
        (
            int(state.status),
            state.attempt,
            state.occurred_at,
            state.event_id,
            state.reason_code,
            state.reason_message,
            state.channel,
            state.variant,
            state.provider_message_id,
            state.session_id,
            _json(state.input_variables),
            _json(state.output_variables),
            state.not_submitted_at,
            state.submitted_at,
            state.delivery_not_confirmed_at,
            state.success_at,
            state.failed_at,
            state.last_event_at,
            tx.now_us,
            cid,
            event.recipient,
        ),
    )
    new = (state.status.bucket, state.channel, state.variant)
    if new != old:
        _count_message(tx, cid, old[0], old[1], old[2], -1)
        _count_message(tx, cid, new[0], new[1], new[2], +1)
        if clicks:
            _move_clicks(tx, cid, clicks, old[1:], new[1:])


def _move_clicks(tx: Tx, cid: int, clicks: int, old: tuple[str, str], new: tuple[str, str]) -> None:
    """A message whose channel or variant changed takes its clicks along."""
    for prefix, before, after in (("c:", old[0], new[0]), ("v:", old[1], new[1])):
        if before != after:
            for name, amount in (("clicks", clicks), ("unique_clickers", 1)):
                tx.count(cid, prefix + before, name, -amount)
                tx.count(cid, prefix + after, name, +amount)


def _count_click(tx: Tx, cid: int, event: ClickEvent) -> None:
    conn = tx.conn
    row = conn.execute(
        "SELECT clicks, channel, variant FROM messages WHERE cid = ? AND recipient = ?", (cid, event.recipient)
    ).fetchone()
    if row is None:
        _join_audience(tx, cid, event.recipient)
        row = (0, "", "")
    clicks, channel, variant = row
    conn.execute(
        "UPDATE messages SET clicks = clicks + 1, first_click_at = min(coalesce(first_click_at, ?1), ?1),"
        " updated_at = ?2 WHERE cid = ?3 AND recipient = ?4",
        (event.occurred_at, tx.now_us, cid, event.recipient),
    )
    for scope in ("", "c:" + channel, "v:" + variant, "l:" + event.link_id):
        tx.count(cid, scope, "clicks", 1)
    if clicks == 0:
        for scope in ("", "c:" + channel, "v:" + variant):
            tx.count(cid, scope, "unique_clickers", 1)
    first_on_link = conn.execute(
        "INSERT INTO link_clickers (cid, link_id, recipient) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        (cid, event.link_id, event.recipient),
    ).rowcount
    if first_on_link:
        tx.count(cid, "l:" + event.link_id, "unique_clickers", 1)


def _state(row: Any) -> MessageState:
    """The MessageState of a row of _SELECT_MESSAGE (its first 18 columns)."""
    values = list(row[:18])
    values[0] = Status(values[0])
    values[10], values[11] = _vars(values[10]), _vars(values[11])
    return MessageState(*values)


def message_events(conn: sqlite3.Connection, cid: int, recipient: str) -> list[StatusEvent]:
    """Every stored status event of one message, in arrival order."""
    rows = conn.execute(
        "SELECT event_id, status, occurred_at, attempt, reason_code, reason_message, channel, variant,"
        " provider_message_id, session_id, input_vars, output_vars FROM events"
        " WHERE cid = ? AND recipient = ? AND kind = 1 ORDER BY id",
        (cid, recipient),
    ).fetchall()
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


def _json(values: dict[str, str]) -> str | None:
    return json.dumps(values, sort_keys=True, separators=(",", ":")) if values else None


def _vars(text: object) -> dict[str, str]:
    return json.loads(text) if isinstance(text, str) else {}
