"""The report side of engagement (reads, replies, taps, opt-outs, the funnel): what the message report, its
export and the Replies tab read besides store/reports.py.

- The message report joins each message to its `engagement` row (0006,
  `MESSAGES_JOINED`): the engagement fields of domain.records.MessageRecord
  come from it, NULL when the recipient has no engagement, and
  `segment_conditions` turns a filter's engaged segments into SQL conditions
  on that join.
- `link_clicks` / `button_taps`: the clicks and taps of a page's recipients
  (one query per page over a (cid, recipient) index, at most `cap` each).
- `replies_sql`: the campaign's replies in sequence order (the `replies`
  table), as domain.records.ReplyRecord rows, for StreamReplies.

Every function runs inside a stream's Snapshot, so it reads at the stream's
sequence. No value is ever interpolated into SQL: only fixed fragments.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from flowtrack.domain.records import ReplyRecord
from flowtrack.domain.stats import MessageFilter

# The join of the message report: every message, with its engagement if any
# (column names are unique across the two tables, so they stay unqualified).
MESSAGES_JOINED = "messages LEFT JOIN engagement USING (cid, recipient)"

# What "did it" means per engaged segment, on the joined row.
_DID: dict[str, str] = {
    "read": "read_at IS NOT NULL",
    "replied": "replied_at IS NOT NULL",
    "opted_out": "opted_out_at IS NOT NULL",
    "clicked_link": "clicks > 0",
    "clicked_button": "coalesce(button_clicks, 0) > 0",
    "reached_goal": "goal_at IS NOT NULL",
}

LinkClick = tuple[str, str, str, int]  # (link_id, link_variable, url, occurred_at)
ButtonTap = tuple[str, str, int]  # (button_id, button_name, occurred_at)


def segment_conditions(flt: MessageFilter) -> list[str]:
    """SQL conditions (on MESSAGES_JOINED) for the filter's engaged segments."""
    return [_DID[name] if did else f"NOT ({_DID[name]})" for name, did in flt.segments().items()]


def _marks(n: int) -> str:
    return ",".join("?" * n)


def link_clicks(conn: sqlite3.Connection, cid: int, recipients: Sequence[str], cap: int) -> dict[str, list[LinkClick]]:
    """The link clicks of each of `recipients` (the earliest `cap`), in click
    time order (then arrival)."""
    found: dict[str, list[LinkClick]] = {}
    if not recipients:
        return found
    # The cap is applied by the database (one window per recipient): a
    # recipient with a million clicks costs `cap` rows here, not a million.
    cursor = conn.execute(
        "SELECT recipient, link_id, link_variable, url, occurred_at FROM"
        " (SELECT recipient, link_id, coalesce(link_variable, '') AS link_variable, coalesce(url, '') AS url,"
        " occurred_at, id, row_number() OVER (PARTITION BY recipient ORDER BY occurred_at, id) AS n"
        " FROM events INDEXED BY events_by_message"
        f" WHERE cid = ? AND recipient IN ({_marks(len(recipients))}) AND kind = 2) AS w"
        " WHERE n <= ? ORDER BY recipient, occurred_at, id",
        (cid, *recipients, cap),
    )
    for recipient, link, variable, url, at in cursor:
        found.setdefault(recipient, []).append((link, variable, url, at))
    return found


def button_taps(conn: sqlite3.Connection, cid: int, recipients: Sequence[str], cap: int) -> dict[str, list[ButtonTap]]:
    """The button taps of each of `recipients` (the earliest `cap`), in tap
    time order (then sequence)."""
    found: dict[str, list[ButtonTap]] = {}
    if not recipients:
        return found
    cursor = conn.execute(
        "SELECT recipient, button_id, button_name, occurred_at FROM"
        " (SELECT recipient, button_id, button_name, occurred_at, seq,"
        " row_number() OVER (PARTITION BY recipient ORDER BY occurred_at, seq) AS n FROM button_clicks"
        f" WHERE cid = ? AND recipient IN ({_marks(len(recipients))})) AS w"
        " WHERE n <= ? ORDER BY recipient, occurred_at, seq",
        (cid, *recipients, cap),
    )
    for recipient, button_id, name, at in cursor:
        found.setdefault(recipient, []).append((button_id, name, at))
    return found


REPLY_COLUMNS = ", ".join(ReplyRecord._fields)


def replies_sql(
    cid: int, recipient: str, occurred_after: int | None, occurred_before: int | None, after_seq: int
) -> tuple[str, dict[str, Any]]:
    """The campaign's replies after sequence `after_seq`, in sequence order,
    of one recipient if `recipient`, in [occurred_after, occurred_before)."""
    where = ["cid = :cid", "seq > :after"]
    params: dict[str, Any] = {"cid": cid, "after": after_seq}
    if recipient:
        where.append("recipient = :recipient")
        params["recipient"] = recipient
    if occurred_after is not None:
        where.append("occurred_at >= :oa")
        params["oa"] = occurred_after
    if occurred_before is not None:
        where.append("occurred_at < :ob")
        params["ob"] = occurred_before
    return f"SELECT {REPLY_COLUMNS} FROM replies WHERE {' AND '.join(where)} ORDER BY seq", params
