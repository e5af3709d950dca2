"""Campaign rows: lookups shared by every service, and CampaignService's
queries and writer jobs."""

from __future__ import annotations

import sqlite3

from flowtrack.domain.model import CampaignState


def lookup(conn: sqlite3.Connection, business_id: str, campaign_id: str) -> int | None:
    """The internal key (cid) of a business's campaign, or None."""
    row = conn.execute(
        "SELECT cid FROM campaigns WHERE business_id = ? AND campaign_id = ?", (business_id, campaign_id)
    ).fetchone()
    return None if row is None else int(row[0])


def create_implicit(conn: sqlite3.Connection, business_id: str, campaign_id: str, now_us: int) -> int:
    """Create the campaign an event named before anyone created it (writer only)."""
    cursor = conn.execute(
        "INSERT INTO campaigns (business_id, campaign_id, state, implicit, create_time, update_time)"
        " VALUES (?, ?, ?, 1, ?, ?)",
        (business_id, campaign_id, int(CampaignState.RUNNING), now_us, now_us),
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid
