"""What ExportReport reads besides the report queries (store/reports.py):
the campaign's name, the clicks of a page's recipients (link_clicks), and a
row estimate for the progress bar. Each runs inside a stream's Snapshot
(`snapshot.call(fn, ...)`), so it reads at the export's sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.sql.elements import ClauseElement

from flowtrack.domain import stats as dstats
from flowtrack.domain.ingest import KIND_CLICK
from flowtrack.domain.model import Status
from flowtrack.domain.records import Click
from flowtrack.domain.stats import ClickFilter, MessageFilter
from flowtrack.store import sql
from flowtrack.store.schema import campaigns, counters, events

__all__ = ["Click", "campaign_name", "click_estimate", "count_rows", "link_clicks", "message_estimate"]

_NAME = select(campaigns.c.name).where(
    campaigns.c.cid == bindparam("cid"), campaigns.c.business_id == bindparam("business_id")
)


def campaign_name(conn: Any, business_id: str, cid: int) -> str:
    found = sql.scalar(conn, _NAME, {"cid": cid, "business_id": business_id})
    return "" if found is None else str(found)


_ranked = (
    select(
        events.c.recipient,
        events.c.link_id,
        func.coalesce(events.c.link_variable, "").label("link_variable"),
        events.c.occurred_at,
        events.c.id,
        func.row_number()
        .over(partition_by=events.c.recipient, order_by=(events.c.occurred_at, events.c.id))
        .label("n"),
    )
    .where(
        events.c.cid == bindparam("cid"),
        events.c.business_id == bindparam("business_id"),
        events.c.recipient.in_(bindparam("recipients", expanding=True)),
        events.c.kind == KIND_CLICK,
    )
    .subquery("w")
)
# The cap is applied by the database (one window per recipient): a
# recipient with a million clicks costs `cap` rows here, not a million.
_LINK_CLICKS = (
    select(_ranked.c.recipient, _ranked.c.link_id, _ranked.c.link_variable, _ranked.c.occurred_at)
    .where(_ranked.c.n <= bindparam("cap"))
    .order_by(_ranked.c.recipient, _ranked.c.occurred_at, _ranked.c.id)
)


def link_clicks(conn: Any, business_id: str, cid: int, recipients: Sequence[str], cap: int) -> dict[str, list[Click]]:
    """The clicks of each of `recipients` (at most `cap` each, the earliest),
    in click-time order: one query per page over the (cid, recipient) index."""
    found: dict[str, list[Click]] = {}
    if not recipients:
        return found
    values = {"cid": cid, "business_id": business_id, "recipients": list(recipients), "cap": cap}
    for recipient, link, name, at in sql.run(conn, _LINK_CLICKS, values):
        found.setdefault(recipient, []).append(Click(link, name, at))
    return found


_COUNTERS = select(counters.c.name, counters.c.value).where(
    counters.c.business_id == bindparam("business_id"),
    counters.c.cid == bindparam("cid"),
    counters.c.scope == bindparam("scope"),
)


def _counters(conn: Any, business_id: str, cid: int, scope: str) -> dict[str, int]:
    values = {"business_id": business_id, "cid": cid, "scope": scope}
    return {str(name): int(value) for name, value in sql.run(conn, _COUNTERS, values)}


def _count(conn: Any, statement: ClauseElement, values: dict[str, Any]) -> int:
    """Rows `statement` returns, counted by the database."""
    counted = select(func.count()).select_from(statement.subquery("q"))  # type: ignore[attr-defined]
    row = sql.run(conn, counted, values, cache=False).fetchone()  # built for this call: compiled once
    return 0 if row is None else int(row[0])


def message_estimate(
    conn: Any, business_id: str, cid: int, flt: MessageFilter, statement: ClauseElement, values: dict[str, Any]
) -> int:
    """Rows the message export will hold: from the counters when they can say
    (no filter, or statuses with at most one of channel / variant), else by
    counting the report query's rows."""
    if flt.recipient or flt.failure_code or flt.updated_after is not None or flt.updated_before is not None:
        return _count(conn, statement, values)
    if flt.segments():  # engaged segments: no counter says how many
        return _count(conn, statement, values)
    if flt.channel and flt.variant:
        return _count(conn, statement, values)
    scope = f"{dstats.CHANNEL_SCOPE}{flt.channel}" if flt.channel else ""
    scope = f"{dstats.VARIANT_SCOPE}{flt.variant}" if flt.variant else scope
    found = _counters(conn, business_id, cid, scope)
    known = {int(s) for s in Status}
    buckets = [Status(s).bucket for s in flt.statuses if s in known] if flt.statuses else list(dstats.BUCKETS)
    return sum(found.get(name, 0) for name in buckets)


def click_estimate(
    conn: Any, business_id: str, cid: int, flt: ClickFilter, statement: ClauseElement, values: dict[str, Any]
) -> int:
    """Rows of the click export: the clicks counter of the campaign (or of the
    link), else a count of the click query's rows."""
    if flt.country_code or flt.occurred_after is not None or flt.occurred_before is not None:
        return _count(conn, statement, values)
    scope = f"{dstats.LINK_SCOPE}{flt.link_id}" if flt.link_id else ""
    return _counters(conn, business_id, cid, scope).get("clicks", 0)


def count_rows(conn: Any, statement: ClauseElement, values: dict[str, Any]) -> int:
    """Rows a query returns (the failure reasons export's estimate)."""
    return _count(conn, statement, values)
