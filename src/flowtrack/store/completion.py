"""Campaigns that complete by themselves, decided inside the writer.

`CompletionHook` runs before each COMMIT (Writer.before_commit) over the
campaigns the transaction touched: it stamps `last_arrival_at` for those an
event reached, emits a campaign.failure_rate threshold event once per
endpoint, and completes a SCHEDULED or RUNNING campaign whose audience is all
final (domain/completion.py). `sweep_quiet` is the writer job of the periodic
sweeper for quiet periods. Either way, the state change, `complete_time`, the
campaign.completed outbox messages and the on-complete report runs commit in
one transaction, and `completion_emitted` makes the event happen exactly once
(a campaign completed by hand through UpdateCampaign gets it too).
"""

from __future__ import annotations

import sqlite3
from typing import NamedTuple

from sqlalchemy import bindparam, func, literal, select, update

from flowtrack.domain import completion as rules
from flowtrack.domain import webhooks as wh
from flowtrack.domain.model import CampaignState
from flowtrack.domain.times import iso
from flowtrack.store import schedules, sql, webhooks
from flowtrack.store.schema import campaigns
from flowtrack.store.schema import counters as counters_table
from flowtrack.store.transaction import Tx
from flowtrack.store.writer import Job

_OPEN = tuple(int(s) for s in rules.OPEN_STATES)
_CID = campaigns.c.cid == bindparam("cid")
_OF_BUSINESS = campaigns.c.business_id == bindparam("business_id")
_COUNTERS = select(counters_table.c.name, counters_table.c.value).where(
    counters_table.c.business_id == bindparam("business_id"),
    counters_table.c.cid == bindparam("cid"),
    counters_table.c.scope == literal(""),
)


class Touched(NamedTuple):
    """A campaign as the pre-commit hook reads it."""

    business_id: str
    campaign_id: str
    state: int
    completion_emitted: int
    implicit: int


_TOUCHED = select(
    campaigns.c.business_id,
    campaigns.c.campaign_id,
    campaigns.c.state,
    campaigns.c.completion_emitted,
    campaigns.c.implicit,
).where(_OF_BUSINESS, _CID)
_ARRIVED = update(campaigns).where(_OF_BUSINESS, _CID).values(last_arrival_at=bindparam("now"))
_EMITTED = update(campaigns).where(_OF_BUSINESS, _CID).values(completion_emitted=literal(1))
_COMPLETE = (
    update(campaigns)
    .where(_OF_BUSINESS, _CID)
    .values(
        state=literal(int(CampaignState.COMPLETED)),
        complete_time=bindparam("now"),
        update_time=bindparam("now"),
        completion_emitted=literal(1),
    )
)
_NAME_AND_TIME = select(campaigns.c.name, campaigns.c.complete_time).where(_OF_BUSINESS, _CID)
_QUIET = (
    select(campaigns.c.cid, campaigns.c.business_id, campaigns.c.campaign_id)
    .where(
        campaigns.c.state.in_(_OPEN),
        campaigns.c.last_arrival_at.is_not(None),
        campaigns.c.last_arrival_at + func.coalesce(campaigns.c.quiet_period, bindparam("default_quiet"))
        <= bindparam("now"),
    )
    .limit(bindparam("limit"))
)
_STILL_OPEN = select(literal(1)).where(
    _OF_BUSINESS, _CID, campaigns.c.state.in_(_OPEN), campaigns.c.completion_emitted == literal(0)
)
_BY_ID = campaigns.c.campaign_id == bindparam("campaign_id")
_SET_QUIET = update(campaigns).where(_OF_BUSINESS, _BY_ID).values(quiet_period=bindparam("quiet"))
_GET_QUIET = select(campaigns.c.quiet_period).where(_OF_BUSINESS, _BY_ID)


def counters(conn: sqlite3.Connection, business_id: str, cid: int) -> dict[str, int]:
    """A campaign's campaign-wide counters (status buckets, clicks)."""
    rows = sql.run(conn, _COUNTERS, {"business_id": business_id, "cid": cid})
    return {str(name): int(value) for name, value in rows}


class CompletionHook:
    """The pre-commit hook; `default_quiet_us` is the server's quiet period."""

    def __init__(self, default_quiet_us: int) -> None:
        self.default_quiet_us = default_quiet_us
        # Set when a transaction wrote outbox messages or report runs; read
        # and cleared by `take_news` in the commit listener (same thread).
        self._news = False

    def take_news(self) -> bool:
        """Whether a transaction since the last call completed a campaign or
        emitted an event (so the delivery worker and the runner have work)."""
        news, self._news = self._news, False
        return news

    def __call__(self, tx: Tx) -> None:
        touched = tx.touched()
        if not touched:
            return
        conn = tx.conn
        for cid, (owner, by_event) in touched.items():
            row = next(sql.records(conn, _TOUCHED, {"business_id": owner, "cid": cid}, Touched), None)
            if row is None:  # deleted
                continue
            business_id, campaign_id, state, emitted = (
                str(row.business_id),
                str(row.campaign_id),
                int(row.state),
                int(row.completion_emitted),
            )
            if by_event:
                sql.run(conn, _ARRIVED, {"now": tx.now_us, "business_id": business_id, "cid": cid})
            if emitted:
                continue
            if state == CampaignState.COMPLETED:  # completed by hand (UpdateCampaign)
                complete(tx, cid, business_id, campaign_id, rules.MANUAL, already=True)
                self._news = True
                continue
            if state not in _OPEN:
                continue
            found = counters(conn, business_id, cid)
            if by_event:
                self._news |= _thresholds(tx, cid, business_id, campaign_id, found)
            # An implicit campaign has no declared audience (its events make
            # it up as they come): only its quiet period completes it.
            if not row.implicit and rules.all_final(found):
                complete(tx, cid, business_id, campaign_id, rules.ALL_FINAL, found=found)
                self._news = True


def _thresholds(tx: Tx, cid: int, business_id: str, campaign_id: str, found: dict[str, int]) -> bool:
    """Emit campaign.failure_rate to the endpoints whose limit the campaign
    crossed (once each); whether any was emitted."""
    endpoints = webhooks.threshold_endpoints(tx.conn, business_id)
    if not endpoints:
        return False
    emitted = False
    stats = rules.summary(found)
    submitted, rate = int(stats["submitted"]), float(stats.get("failure_rate", 0.0))
    for e in endpoints:
        assert e.failure_rate is not None
        crossed = submitted >= max(1, e.min_submitted) and rate > e.failure_rate
        if crossed and webhooks.first_time(tx, e.endpoint_id, cid, wh.CAMPAIGN_FAILURE_RATE, business_id=business_id):
            data: dict[str, object] = {
                "campaign_id": campaign_id,
                "failure_rate": rate,
                "limit": e.failure_rate,
                "min_submitted": e.min_submitted,
                "submitted": submitted,
                "failed": stats["failed"],
            }
            emitted |= webhooks.emit(tx, business_id, wh.CAMPAIGN_FAILURE_RATE, data, {e.endpoint_id}) > 0
    return emitted


def complete(
    tx: Tx,
    cid: int,
    business_id: str,
    campaign_id: str,
    reason: str,
    *,
    found: dict[str, int] | None = None,
    already: bool = False,
    touch: bool = False,
) -> None:
    """Complete a campaign (unless `already`), and emit campaign.completed
    with its final stats and enqueue its on-complete report runs, once.
    `touch` (from a job, not the hook) wakes the campaign's stats watchers."""
    conn = tx.conn
    now = tx.now_us
    tx.lock_business(business_id)  # the sweeper's job may complete campaigns of several businesses
    where = {"business_id": business_id, "cid": cid}
    if already:
        sql.run(conn, _EMITTED, where)
    else:
        sql.run(conn, _COMPLETE, {**where, "now": now})
        if touch:
            tx.touch_campaign(business_id, cid, None, tx.last_sequence(business_id))
    name, complete_time = sql.one(conn, _NAME_AND_TIME, where)
    data: dict[str, object] = {
        "campaign_id": campaign_id,
        "name": name,
        "state": "COMPLETED",
        "reason": reason,
        "complete_time": iso(complete_time),
        "stats": rules.summary(found if found is not None else counters(conn, business_id, cid)),
    }
    webhooks.emit(tx, business_id, wh.CAMPAIGN_COMPLETED, data)
    schedules.enqueue_on_complete(tx, business_id, campaign_id)


def sweep_quiet(default_quiet_us: int, limit: int = 100) -> Job[int]:
    """Writer job of the sweeper: complete up to `limit` open campaigns that
    have had no event for their quiet period. Returns how many."""

    def job(tx: Tx) -> int:
        rows = sql.run(
            tx.conn, _QUIET, {"default_quiet": default_quiet_us, "now": tx.now_us, "limit": limit}
        ).fetchall()
        done = 0
        for cid, business_id, campaign_id in rows:
            # Locked, then read again: another server's sweep may have
            # completed it since the SELECT above (PostgreSQL replicas).
            tx.lock_business(str(business_id))
            still = sql.one(tx.conn, _STILL_OPEN, {"business_id": business_id, "cid": cid})
            if still is not None:
                complete(tx, int(cid), str(business_id), str(campaign_id), rules.QUIET_PERIOD, touch=True)
                done += 1
        return done

    return job


def set_quiet_period(tx: Tx, business_id: str, campaign_id: str, quiet_us: int | None) -> None:
    """Store a campaign's own quiet period (None: the server's default)."""
    sql.run(tx.conn, _SET_QUIET, {"quiet": quiet_us, "business_id": business_id, "campaign_id": campaign_id})


def quiet_period(conn: sqlite3.Connection, business_id: str, campaign_id: str) -> int | None:
    """A campaign's own quiet period in µs, or None."""
    value = sql.scalar(conn, _GET_QUIET, {"business_id": business_id, "campaign_id": campaign_id})
    return None if value is None else int(value)
