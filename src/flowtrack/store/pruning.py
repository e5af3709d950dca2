"""The retention sweep's writer jobs (domain/retention.py, core/retention.py).

Each job is one short transaction that deletes at most `limit` rows of one
business, so ingest waits for one small batch at most; the core calls them
until one finds nothing left.

- `prune_history`: the business's events below its horizon, oldest hour
  first (the events_by_hour index gives the hours up to the horizon's, and
  within that one each row's occurred_at decides), with the replies and
  button taps made from them (same campaign and sequence). Before a status
  event goes, its message is made independent of its history: a message
  stored before the per-attribute keys were kept gets them now
  (store/ingest.keep_attribute_keys). The
  horizon is recorded as `pruned_before` in the same transaction, so ingest
  refuses a retry of an event it deletes.
- `completed_before`: completed campaigns whose complete time is below the
  campaign horizon; `prune_campaign_events` empties one's history in
  batches, `prune_campaign_rows` its messages (with their engagement and
  link clicks) and its replies and button taps in batches, and then
  store/campaigns.delete (DeleteCampaign's job) removes the campaign with
  what is left (its counters), in one short transaction whatever its size.

What stays whatever its age (counters, messages, engagement folds, unique
clickers per link) is what stats and the message report read.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import bindparam, literal_column, select, update
from sqlalchemy import delete as delete_from

from flowtrack.domain import retention as rules
from flowtrack.domain.ingest import KIND_CLICK, KIND_STATUS
from flowtrack.domain.model import CampaignState, EngagementKind
from flowtrack.store import dialects, ingest, retention, sql
from flowtrack.store.schema import (
    FORGET,
    HOUR_US,
    OCCURRED_HOUR,
    button_clicks,
    campaigns,
    engagement,
    events,
    link_clickers,
    messages,
    replies,
)
from flowtrack.store.writer import Job, Tx

# Rows a job deletes at most: one short transaction (and under SQLite's 999 parameters).
BATCH = 500


class Pruned(NamedTuple):
    """What one job deleted, and the horizon it applied (None: no history retention)."""

    events: int = 0
    replies: int = 0
    button_clicks: int = 0
    horizon: int | None = None


class _Old(NamedTuple):
    id: int
    cid: int
    seq: int
    recipient: str
    kind: int
    engagement: int | None


_OLDEST = (
    select(*(events.c[name] for name in _Old._fields))
    .where(
        events.c.business_id == bindparam("business_id"),
        OCCURRED_HOUR <= bindparam("hour"),  # noqa: SIM300 - up to the horizon's hour: the index's range
        events.c.occurred_at < bindparam("horizon"),
        events.c.received_at >= literal_column("0"),  # events_by_hour's predicate: only this query uses it
    )
    .order_by(OCCURRED_HOUR)
    .limit(bindparam("limit"))
)
_DELETE_EVENTS = delete_from(events).where(
    events.c.business_id == bindparam("business_id"), events.c.id.in_(bindparam("ids", expanding=True))
)
_DELETE_REPLIES = delete_from(replies).where(
    replies.c.business_id == bindparam("business_id"),
    replies.c.cid == bindparam("cid"),
    replies.c.seq.in_(bindparam("seqs", expanding=True)),
)
_DELETE_TAPS = delete_from(button_clicks).where(
    button_clicks.c.business_id == bindparam("business_id"),
    button_clicks.c.cid == bindparam("cid"),
    button_clicks.c.seq.in_(bindparam("seqs", expanding=True)),
)

# The messages whose link clicks or button taps a job deletes: their encoded
# forms (store/encodings.py) hold them.
_FORGET_MESSAGES = (
    update(messages)
    .where(
        messages.c.business_id == bindparam("business_id"),
        messages.c.cid == bindparam("cid"),
        messages.c.recipient.in_(bindparam("recipients", expanding=True)),
    )
    .values(**FORGET)
)


def prune_history(business_id: str, limit: int = BATCH) -> Job[Pruned]:
    """Delete up to `limit` of the business's events below its horizon, with
    their replies and button taps."""

    def job(tx: Tx) -> Pruned:
        conn = tx.conn
        tx.lock_business(business_id)
        kept = retention.get(conn, business_id)
        horizon = rules.horizon(tx.now_us, kept.history_days, kept.pruned_before)
        if horizon is None:
            return Pruned()
        retention.raise_pruned_before(conn, business_id, horizon)
        values = {"business_id": business_id, "horizon": horizon, "hour": horizon // HOUR_US, "limit": limit}
        old = list(sql.records(conn, _OLDEST, values, _Old))
        if not old:
            return Pruned(horizon=horizon)
        ingest.keep_attribute_keys(conn, business_id, {(e.cid, e.recipient) for e in old if e.kind == KIND_STATUS})
        shown: dict[int, set[str]] = {}  # (cid -> recipients) whose rows show a deleted click or tap
        for e in old:
            if e.kind == KIND_CLICK or e.engagement == EngagementKind.BUTTON_CLICKED:
                shown.setdefault(e.cid, set()).add(e.recipient)
        for cid, recipients in shown.items():
            values = {"business_id": business_id, "cid": cid, "recipients": sorted(recipients)}
            sql.run(conn, _FORGET_MESSAGES, values)
        deleted = sql.run(conn, _DELETE_EVENTS, {"business_id": business_id, "ids": [e.id for e in old]}).rowcount
        by_kind = {EngagementKind.REPLIED: _DELETE_REPLIES, EngagementKind.BUTTON_CLICKED: _DELETE_TAPS}
        counts = dict.fromkeys(by_kind, 0)
        for kind, statement in by_kind.items():
            seqs: dict[int, list[int]] = {}
            for e in old:
                if e.engagement == kind:
                    seqs.setdefault(e.cid, []).append(e.seq)
            for cid, of_campaign in seqs.items():
                values = {"business_id": business_id, "cid": cid, "seqs": of_campaign}
                counts[kind] += sql.run(conn, statement, values).rowcount
        return Pruned(deleted, counts[EngagementKind.REPLIED], counts[EngagementKind.BUTTON_CLICKED], horizon)

    return job


class Completed(NamedTuple):
    cid: int
    campaign_id: str


_COMPLETED_BEFORE = (
    select(campaigns.c.cid, campaigns.c.campaign_id)
    .where(
        campaigns.c.business_id == bindparam("business_id"),
        campaigns.c.state == int(CampaignState.COMPLETED),
        campaigns.c.complete_time < bindparam("horizon"),
    )
    .order_by(campaigns.c.complete_time, campaigns.c.cid)
    .limit(bindparam("limit"))
)


def completed_before(conn: Any, business_id: str, horizon: int, limit: int) -> list[Completed]:
    """Up to `limit` of the business's campaigns completed before `horizon`, oldest first."""
    values = {"business_id": business_id, "horizon": horizon, "limit": limit}
    return list(sql.records(conn, _COMPLETED_BEFORE, values, Completed))


# A campaign's events through its (cid, seq) index: SQLite's planner, without
# statistics, may take a business_id index instead (store/dialects.py).
_OF_CAMPAIGN = dialects.indexed_by(events, "events_by_campaign")
_CAMPAIGN_EVENTS = (
    select(_OF_CAMPAIGN.c.id, _OF_CAMPAIGN.c.recipient, _OF_CAMPAIGN.c.kind)
    .where(_OF_CAMPAIGN.c.business_id == bindparam("business_id"), _OF_CAMPAIGN.c.cid == bindparam("cid"))
    .limit(bindparam("limit"))
)


def prune_campaign_events(business_id: str, cid: int, limit: int = BATCH) -> Job[int]:
    """Delete up to `limit` events of campaign `cid` (one being deleted); how many."""

    def job(tx: Tx) -> int:
        tx.lock_business(business_id)
        values = {"business_id": business_id, "cid": cid, "limit": limit}
        found = sql.run(tx.conn, _CAMPAIGN_EVENTS, values).fetchall()
        if not found:
            return 0
        ids = [row[0] for row in found]
        clicked = sorted({row[1] for row in found if row[2] == KIND_CLICK})
        if clicked:  # their rows show these clicks until the campaign goes
            sql.run(tx.conn, _FORGET_MESSAGES, {"business_id": business_id, "cid": cid, "recipients": clicked})
        return int(sql.run(tx.conn, _DELETE_EVENTS, {"business_id": business_id, "ids": ids}).rowcount)

    return job


_CAMPAIGN_MESSAGES = (
    select(messages.c.recipient)
    .where(messages.c.business_id == bindparam("business_id"), messages.c.cid == bindparam("cid"))
    .order_by(messages.c.recipient)
    .limit(bindparam("limit"))
)
_CAMPAIGN_RECIPIENT_ROWS = tuple(
    delete_from(table).where(
        table.c.business_id == bindparam("business_id"),
        table.c.cid == bindparam("cid"),
        table.c.recipient.in_(bindparam("recipients", expanding=True)),
    )
    for table in (messages, engagement, link_clickers)
)
_CAMPAIGN_SEQ_ROWS = tuple(
    (
        select(table.c.seq, table.c.recipient)
        .where(table.c.business_id == bindparam("business_id"), table.c.cid == bindparam("cid"))
        .order_by(table.c.seq)
        .limit(bindparam("limit")),
        delete_from(table).where(
            table.c.business_id == bindparam("business_id"),
            table.c.cid == bindparam("cid"),
            table.c.seq.in_(bindparam("seqs", expanding=True)),
        ),
    )
    for table in (replies, button_clicks)
)


def prune_campaign_rows(business_id: str, cid: int, limit: int = BATCH) -> Job[int]:
    """Delete up to `limit` messages of campaign `cid` (one being deleted)
    with their engagement and link clicks, and up to `limit` of its replies
    and of its button taps; how many messages, replies and taps went (fewer
    than `limit` of each: nothing is left of them)."""

    def job(tx: Tx) -> int:
        tx.lock_business(business_id)
        of_campaign = {"business_id": business_id, "cid": cid, "limit": limit}
        recipients = [row[0] for row in sql.run(tx.conn, _CAMPAIGN_MESSAGES, of_campaign)]
        most = len(recipients)
        if recipients:
            values = {"business_id": business_id, "cid": cid, "recipients": recipients}
            for statement in _CAMPAIGN_RECIPIENT_ROWS:
                sql.run(tx.conn, statement, values)
        for table, (find, remove) in zip((replies, button_clicks), _CAMPAIGN_SEQ_ROWS, strict=True):
            found = sql.run(tx.conn, find, of_campaign).fetchall()
            seqs = [row[0] for row in found]
            if seqs:
                sql.run(tx.conn, remove, {"business_id": business_id, "cid": cid, "seqs": seqs})
            if table is button_clicks and found:  # the rows left that show these taps
                values = {"business_id": business_id, "cid": cid, "recipients": sorted({row[1] for row in found})}
                sql.run(tx.conn, _FORGET_MESSAGES, values)
            most = max(most, len(seqs))
        return most

    return job
