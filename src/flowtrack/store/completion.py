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

from flowtrack.domain import completion as rules
from flowtrack.domain import webhooks as wh
from flowtrack.domain.model import CampaignState
from flowtrack.domain.times import iso
from flowtrack.store import schedules, webhooks
from flowtrack.store.writer import Job, Tx

_COMPLETED = int(CampaignState.COMPLETED)
_OPEN = tuple(int(s) for s in rules.OPEN_STATES)


def counters(conn: sqlite3.Connection, cid: int) -> dict[str, int]:
    """A campaign's campaign-wide counters (status buckets, clicks)."""
    rows = conn.execute("SELECT name, value FROM counters WHERE cid = ? AND scope = ''", (cid,))
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
        for cid, by_event in touched.items():
            row = conn.execute(
                "SELECT business_id, campaign_id, state, completion_emitted, implicit FROM campaigns WHERE cid = ?",
                (cid,),
            ).fetchone()
            if row is None:  # deleted
                continue
            business_id, campaign_id, state, emitted = str(row[0]), str(row[1]), int(row[2]), int(row[3])
            if by_event:
                conn.execute(
                    "UPDATE campaigns SET last_arrival_at = ? WHERE business_id = ? AND cid = ?",
                    (tx.now_us, business_id, cid),
                )
            if emitted:
                continue
            if state == _COMPLETED:  # completed by hand (UpdateCampaign)
                complete(tx, cid, business_id, campaign_id, rules.MANUAL, already=True)
                self._news = True
                continue
            if state not in _OPEN:
                continue
            found = counters(conn, cid)
            if by_event:
                self._news |= _thresholds(tx, cid, business_id, campaign_id, found)
            # An implicit campaign has no declared audience (its events make
            # it up as they come): only its quiet period completes it.
            if not row[4] and rules.all_final(found):
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
    if already:
        conn.execute(
            "UPDATE campaigns SET completion_emitted = 1 WHERE business_id = ? AND cid = ?", (business_id, cid)
        )
    else:
        conn.execute(
            "UPDATE campaigns SET state = ?, complete_time = ?, update_time = ?, completion_emitted = 1"
            " WHERE business_id = ? AND cid = ?",
            (_COMPLETED, now, now, business_id, cid),
        )
        if touch:
            tx.touch_campaign(cid, None, tx.last_sequence(business_id))
    name, complete_time = conn.execute(
        "SELECT name, complete_time FROM campaigns WHERE business_id = ? AND cid = ?", (business_id, cid)
    ).fetchone()
    data: dict[str, object] = {
        "campaign_id": campaign_id,
        "name": name,
        "state": "COMPLETED",
        "reason": reason,
        "complete_time": iso(complete_time),
        "stats": rules.summary(found if found is not None else counters(conn, cid)),
    }
    webhooks.emit(tx, business_id, wh.CAMPAIGN_COMPLETED, data)
    schedules.enqueue_on_complete(tx, business_id, campaign_id)


def sweep_quiet(default_quiet_us: int, limit: int = 100) -> Job[int]:
    """Writer job of the sweeper: complete up to `limit` open campaigns that
    have had no event for their quiet period. Returns how many."""

    def job(tx: Tx) -> int:
        rows = tx.conn.execute(
            "SELECT cid, business_id, campaign_id FROM campaigns"
            f" WHERE state IN ({', '.join('?' * len(_OPEN))}) AND last_arrival_at IS NOT NULL"
            " AND last_arrival_at + coalesce(quiet_period, ?) <= ? LIMIT ?",
            (*_OPEN, default_quiet_us, tx.now_us, limit),
        ).fetchall()
        done = 0
        for cid, business_id, campaign_id in rows:
            # Locked, then read again: another server's sweep may have
            # completed it since the SELECT above (PostgreSQL replicas).
            tx.lock_business(str(business_id))
            still = tx.conn.execute(
                "SELECT 1 FROM campaigns WHERE business_id = ? AND cid = ?"
                f" AND state IN ({', '.join('?' * len(_OPEN))}) AND completion_emitted = 0",
                (business_id, cid, *_OPEN),
            ).fetchone()
            if still is not None:
                complete(tx, int(cid), str(business_id), str(campaign_id), rules.QUIET_PERIOD, touch=True)
                done += 1
        return done

    return job


def set_quiet_period(tx: Tx, business_id: str, campaign_id: str, quiet_us: int | None) -> None:
    """Store a campaign's own quiet period (None: the server's default)."""
    tx.conn.execute(
        "UPDATE campaigns SET quiet_period = ? WHERE business_id = ? AND campaign_id = ?",
        (quiet_us, business_id, campaign_id),
    )


def quiet_period(conn: sqlite3.Connection, business_id: str, campaign_id: str) -> int | None:
    """A campaign's own quiet period in µs, or None."""
    row = conn.execute(
        "SELECT quiet_period FROM campaigns WHERE business_id = ? AND campaign_id = ?", (business_id, campaign_id)
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])
