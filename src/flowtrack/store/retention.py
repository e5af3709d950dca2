"""A business's retention row (domain/retention.py): read it, set it, and
the horizon ingest refuses events below. The sweep's jobs are in
store/pruning.py."""

from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import bindparam, func, select

from flowtrack.domain import retention as rules
from flowtrack.domain.retention import Retention
from flowtrack.store import sql
from flowtrack.store.schema import retention
from flowtrack.store.writer import Job, Tx

__all__ = ["Retention", "get", "horizon_of", "raise_pruned_before", "set_retention", "with_history"]


class _Row(NamedTuple):
    history_days: int | None
    campaign_days: int | None
    pruned_before: int | None
    update_time: int | None


_GET = select(*(retention.c[name] for name in _Row._fields)).where(retention.c.business_id == bindparam("business_id"))
_SET = sql.insert_on_both(
    lambda insert: (
        row := insert(retention).values(
            business_id=bindparam("business_id"),
            history_days=bindparam("history_days"),
            campaign_days=bindparam("campaign_days"),
            update_time=bindparam("now"),
        )
    ).on_conflict_do_update(
        index_elements=[retention.c.business_id],
        set_={
            "history_days": row.excluded.history_days,
            "campaign_days": row.excluded.campaign_days,
            "update_time": row.excluded.update_time,
        },
    )
)
# pruned_before only moves forward (SQLite's two-argument max is NULL if either is).
_RAISE = sql.PerDialect(
    retention.update()
    .where(retention.c.business_id == bindparam("business_id"))
    .values(
        pruned_before=func.max(func.coalesce(retention.c.pruned_before, bindparam("horizon")), bindparam("horizon"))
    ),
    retention.update()
    .where(retention.c.business_id == bindparam("business_id"))
    .values(
        pruned_before=func.greatest(
            retention.c.pruned_before, bindparam("horizon", type_=retention.c.pruned_before.type)
        )
    ),
)
# The businesses with a retention (the background sweep's list), in key order from `after`.
_WITH = (
    select(retention.c.business_id)
    .where(
        retention.c.business_id > bindparam("after"),
        (retention.c.history_days.is_not(None)) | (retention.c.campaign_days.is_not(None)),
    )
    .order_by(retention.c.business_id)
    .limit(bindparam("limit"))
)


def get(conn: Any, business_id: str) -> Retention:
    """The business's retention (all None: kept forever)."""
    found = sql.one(conn, _GET, {"business_id": business_id})
    return Retention() if found is None else Retention(*_Row(*found))


def horizon_of(conn: Any, business_id: str, now_us: int) -> int | None:
    """Events of the business whose occurred_at is below this are refused (None: none is)."""
    found = get(conn, business_id)
    return rules.horizon(now_us, found.history_days, found.pruned_before)


def set_retention(business_id: str, history_days: int | None, campaign_days: int | None) -> Job[Retention]:
    """Writer job of SetRetention (values already checked)."""

    def job(tx: Tx) -> Retention:
        tx.lock_business(business_id)
        values = {"business_id": business_id, "history_days": history_days, "campaign_days": campaign_days}
        sql.run(tx.conn, _SET, {**values, "now": tx.now_us})
        return get(tx.conn, business_id)

    return job


def raise_pruned_before(conn: Any, business_id: str, horizon: int) -> None:
    """Record that the business's events below `horizon` are (being) pruned."""
    sql.run(conn, _RAISE, {"business_id": business_id, "horizon": horizon})


def with_history(conn: Any, after: str, limit: int) -> list[str]:
    """Up to `limit` businesses with a retention, after `after` in key order."""
    return [str(row[0]) for row in sql.run(conn, _WITH, {"after": after, "limit": limit})]
