"""What ExportReport reads besides the report queries (store/reports.py):
the campaign's name, the clicks of a page's recipients (link_clicks), and a
row estimate for the progress bar. Each runs inside a stream's Snapshot
(`snapshot.call(fn, ...)`), so it reads at the export's sequence.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from flowtrack.domain import stats as dstats
from flowtrack.domain.model import Status
from flowtrack.domain.stats import ClickFilter, MessageFilter

Click = tuple[str, str, int]  # (link_id, link_variable, occurred_at)


def campaign_name(conn: sqlite3.Connection, cid: int) -> str:
    row = conn.execute("SELECT name FROM campaigns WHERE cid = ?", (cid,)).fetchone()
    return str(row[0]) if row else ""


def link_clicks(conn: sqlite3.Connection, cid: int, recipients: Sequence[str], cap: int) -> dict[str, list[Click]]:
    """The clicks of each of `recipients` (at most `cap` each, the earliest),
    in click-time order: one query per page over the (cid, recipient) index."""
    found: dict[str, list[Click]] = {}
    if not recipients:
        return found
    marks = ",".join("?" * len(recipients))
    # The cap is applied by the database (one window per recipient): a
    # recipient with a million clicks costs `cap` rows here, not a million.
    cursor = conn.execute(
        "SELECT recipient, link_id, link_variable, occurred_at FROM"
        " (SELECT recipient, link_id, coalesce(link_variable, '') AS link_variable, occurred_at, id,"
        " row_number() OVER (PARTITION BY recipient ORDER BY occurred_at, id) AS n"
        " FROM events INDEXED BY events_by_message"
        f" WHERE cid = ? AND recipient IN ({marks}) AND kind = 2) AS w"
        " WHERE n <= ? ORDER BY recipient, occurred_at, id",
        (cid, *recipients, cap),
    )
    for recipient, link, name, at in cursor:
        found.setdefault(recipient, []).append((link, name, at))
    return found


def _counters(conn: sqlite3.Connection, cid: int, scope: str) -> dict[str, int]:
    rows = conn.execute("SELECT name, value FROM counters WHERE cid = ? AND scope = ?", (cid, scope)).fetchall()
    return {str(name): int(value) for name, value in rows}


def _count(conn: sqlite3.Connection, sql: str, params: Any) -> int:
    return int(conn.execute(f"SELECT count(*) FROM ({sql})", params).fetchone()[0])


def message_estimate(conn: sqlite3.Connection, cid: int, flt: MessageFilter, sql: str, params: Any) -> int:
    """Rows the message export will hold: from the counters when they can say
    (no filter, or statuses with at most one of channel / variant), else by
    counting the report query's rows."""
    if flt.recipient or flt.failure_code or flt.updated_after is not None or flt.updated_before is not None:
        return _count(conn, sql, params)
    if flt.segments():  # engaged segments: no counter says how many
        return _count(conn, sql, params)
    if flt.channel and flt.variant:
        return _count(conn, sql, params)
    scope = f"{dstats.CHANNEL_SCOPE}{flt.channel}" if flt.channel else ""
    scope = f"{dstats.VARIANT_SCOPE}{flt.variant}" if flt.variant else scope
    values = _counters(conn, cid, scope)
    known = {int(s) for s in Status}
    buckets = [Status(s).bucket for s in flt.statuses if s in known] if flt.statuses else list(dstats.BUCKETS)
    return sum(values.get(name, 0) for name in buckets)


def click_estimate(conn: sqlite3.Connection, cid: int, flt: ClickFilter, sql: str, params: Any) -> int:
    """Rows of the click export: the clicks counter of the campaign (or of the
    link), else a count of the click query's rows."""
    if flt.country_code or flt.occurred_after is not None or flt.occurred_before is not None:
        return _count(conn, sql, params)
    scope = f"{dstats.LINK_SCOPE}{flt.link_id}" if flt.link_id else ""
    return _counters(conn, cid, scope).get("clicks", 0)


def count_rows(conn: sqlite3.Connection, sql: str, params: Any) -> int:
    """Rows a query returns (the failure reasons export's estimate)."""
    return _count(conn, sql, params)
