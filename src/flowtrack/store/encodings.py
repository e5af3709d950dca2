"""The message report's rows kept encoded (revision 0011).

A report page built from named rows costs a Python encoding per row (the
MessageRow's bytes, wire/encoded.py; the CSV line, export/csvlines.py). Each
message keeps both forms in two columns of its own row: `row_pb`, the wire
bytes of its MessageRow (link clicks and button taps included), and
`csv_tail`, its flowtrack CSV line after the cells every line of an export
shares (business_id, campaign_name, sendout_id: a campaign rename changes
no row). A report reads them where they are and encodes the row as before
where they are not (core/reports.py, core/export.py): never wrong, only
slower.

- Lazy: every writer statement that changes what a row's encodings hold
  sets both to NULL (`schema.FORGET`) in the statement that already changes
  the row: the message upsert of ingest (status folds, clicks), the
  engagement's touch of its messages (reads, replies, taps, exits, goals),
  bot re-classification, erasure (at the start of each step in a campaign,
  and on the erased row), retention's deletion of click events and taps,
  and a campaign's deletion. New rows (AddRecipients, a segment's copy)
  start NULL.
- `fill_job`: a writer job that encodes at most `limit` NULL rows after a
  position in key order, looking at no more than `scan` rows (bounded in
  rows and time, whatever the database's size). It claims its rows first
  (row_pb = b'', a mark no writer statement sets: each sets NULL) and writes
  the encodings only where the mark is still there, so a row that a writer
  changed between the job's read and its write stays NULL (a report encodes
  it, the next pass fills it). On PostgreSQL the claim is `FOR UPDATE SKIP
  LOCKED`: replicas filling at once never wait on each other or on a writer
  (no deadlock), and a writer that changes a claimed row waits the job's few
  milliseconds for its COMMIT, then forgets what it wrote.
- `rows_of`: the named rows of some recipients of a page (those whose
  encodings are NULL), at the stream's snapshot.

The encoder is the caller's (core/encodings.py): the store holds bytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from sqlalchemy import and_, bindparam, func, select, tuple_, update

from flowtrack.domain.records import ButtonTap, LinkClick, MessageRecord
from flowtrack.store import engaged_reports, sql
from flowtrack.store.schema import FORGET, campaigns, messages
from flowtrack.store.writer import Job, Tx

# Rows a fill job encodes at most, and looks at at most (one short job).
FILL_BATCH = 500
FILL_SCAN = 5000
# The mark of a row a fill job has claimed (no writer statement sets it).
CLAIMED = b""

# (links, taps) of a page's recipients -> (row_pb, csv_tail) per record.
Encode = Callable[
    [Sequence[MessageRecord], dict[str, list[LinkClick]], dict[str, list[ButtonTap]]], list[tuple[bytes, str]]
]

_m = messages.c
_KEY = tuple_(_m.business_id, _m.cid, _m.recipient)
_SCAN = (
    select(_m.cid, _m.recipient, _m.row_pb.is_(None))
    .where(_m.business_id == bindparam("b"), tuple_(_m.cid, _m.recipient) > tuple_(bindparam("c"), bindparam("r")))
    .order_by(_m.cid, _m.recipient)
    .limit(bindparam("scan"))
)
# The next business with a campaign (a business without events has no
# `businesses` row): one probe of the campaigns' key, across businesses.
_NEXT_BUSINESS = select(func.min(campaigns.c.business_id)).where(campaigns.c.business_id > bindparam("b"))
_OF_CAMPAIGN = and_(
    _m.business_id == bindparam("business_id"),
    _m.cid == bindparam("cid"),
    _m.recipient.in_(bindparam("recipients", expanding=True)),
)
# PostgreSQL: the rows no other transaction holds, locked until COMMIT (SQLite: one writer, no lock).
_CLAIMABLE = select(_m.recipient).where(_OF_CAMPAIGN, _m.row_pb.is_(None)).with_for_update(skip_locked=True)
_CLAIM = update(messages).where(_OF_CAMPAIGN, _m.row_pb.is_(None)).values(row_pb=CLAIMED)
_STORE = (
    update(messages)
    .where(
        _m.business_id == bindparam("business_id"),
        _m.cid == bindparam("cid"),
        _m.recipient == bindparam("recipient"),
        _m.row_pb == bindparam("claimed"),
    )
    .values(row_pb=bindparam("pb"), csv_tail=bindparam("tail"))
)
_ROWS_OF = (
    select(*engaged_reports.message_columns(MessageRecord._fields))
    .select_from(engaged_reports.messages_joined())
    .where(_OF_CAMPAIGN)
    .order_by(_m.recipient)
)
_FORGET_ALL = (
    update(messages).where(_m.business_id == bindparam("business_id"), _m.row_pb.is_not(None)).values(**FORGET)
)

Position = tuple[str, int, str]  # (business_id, cid, recipient): the key a pass goes on after
START: Position = ("", -1, "")  # before the first business (no business is named "")


def business_start(business_id: str) -> Position:
    """Before the first row of `business_id`'s messages."""
    return (business_id, -1, "")


class Filled(NamedTuple):
    """What one fill job did: rows encoded, rows looked at, and where the
    next job goes on (None: the pass reached the end of the table)."""

    encoded: int
    scanned: int
    after: Position | None
    seconds: float


def rows_of(conn: Any, business_id: str, cid: int, recipients: Sequence[str]) -> list[MessageRecord]:
    """The named rows (message report's columns) of `recipients` of a campaign, in recipient order."""
    if not recipients:
        return []
    values = {"business_id": business_id, "cid": cid, "recipients": list(recipients)}
    return list(sql.records(conn, _ROWS_OF, values, MessageRecord))


def missing(
    conn: Any, after: Position, scan: int, limit: int, within: bool = False
) -> tuple[list[Position], int, Position | None]:
    """Up to `limit` keys without encodings among the next `scan` rows after
    `after` (a business at a time, in key order); how many rows were looked
    at; where the next look goes on (None: past the last business, or with
    `within`, past the last row of `after`'s business)."""
    b, c, r = after
    found: list[Position] = []
    scanned = 0
    while True:
        budget = scan - scanned
        rows = sql.run(conn, _SCAN, {"b": b, "c": c, "r": r, "scan": budget}).fetchall()
        for cid, recipient, null in rows:
            scanned += 1
            if null:
                found.append((b, cid, recipient))
                if len(found) >= limit:
                    return found, scanned, (b, cid, recipient)
        if len(rows) == budget:  # the business goes on after these
            last = rows[-1]
            return found, scanned, (b, last[0], last[1])
        if within:
            return found, scanned, None
        following = sql.scalar(conn, _NEXT_BUSINESS, {"b": b})
        if following is None:
            return found, scanned, None
        b, c, r = str(following), -1, ""
        if scanned >= scan:
            return found, scanned, (b, c, r)


def claim(conn: Any, keys: Sequence[Position]) -> dict[tuple[str, int], list[str]]:
    """Mark the rows of `keys` still without encodings as claimed (on
    PostgreSQL only those no other transaction holds, locked until COMMIT);
    the claimed recipients per (business_id, cid)."""
    per: dict[tuple[str, int], list[str]] = {}
    for business_id, cid, recipient in keys:
        per.setdefault((business_id, cid), []).append(recipient)
    claimed: dict[tuple[str, int], list[str]] = {}
    for (business_id, cid), recipients in per.items():
        values = {"business_id": business_id, "cid": cid, "recipients": recipients}
        free = sorted(str(row[0]) for row in sql.run(conn, _CLAIMABLE, values))
        if free:
            sql.run(conn, _CLAIM, {**values, "recipients": free})
            claimed[(business_id, cid)] = free
    return claimed


def read_claimed(
    conn: Any, claimed: dict[tuple[str, int], list[str]], cap: int
) -> list[tuple[str, int, list[MessageRecord], dict[str, list[LinkClick]], dict[str, list[ButtonTap]]]]:
    """The claimed rows, with their link clicks and button taps (the
    earliest `cap` of each), per campaign."""
    out = []
    for (business_id, cid), recipients in claimed.items():
        records = rows_of(conn, business_id, cid, recipients)
        clicked = [r.recipient for r in records if r.clicks]
        tapped = [r.recipient for r in records if r.button_clicks]
        links = engaged_reports.link_clicks(conn, business_id, cid, clicked, cap) if clicked else {}
        taps = engaged_reports.button_taps(conn, business_id, cid, tapped, cap) if tapped else {}
        out.append((business_id, cid, records, links, taps))
    return out


def store(
    conn: Any, business_id: str, cid: int, records: Sequence[MessageRecord], encoded: list[tuple[bytes, str]]
) -> int:
    """Write the encodings of `records` where the row is still claimed (a
    writer's change since the claim made it NULL: it stays so); how many."""
    rows = [
        {"business_id": business_id, "cid": cid, "recipient": r.recipient, "claimed": CLAIMED, "pb": pb, "tail": tail}
        for r, (pb, tail) in zip(records, encoded, strict=True)
    ]
    if not rows:
        return 0
    sql.run_many(conn, _STORE, rows)
    return len(rows)


def fill_job(
    encode: Encode,
    cap: int,
    after: Position = START,
    limit: int = FILL_BATCH,
    scan: int = FILL_SCAN,
    within: bool = False,
) -> Job[Filled]:
    """Writer job: encode up to `limit` rows without encodings among the
    `scan` rows after `after` (see the module); with `within`, only in
    `after`'s business (a pass over one business: `business_start`)."""

    def job(tx: Tx) -> Filled:
        began = time.perf_counter()
        keys, scanned, following = missing(tx.conn, after, scan, limit, within)
        done = 0
        if keys:
            for business_id, cid, records, links, taps in read_claimed(tx.conn, claim(tx.conn, keys), cap):
                done += store(tx.conn, business_id, cid, records, encode(records, links, taps))
        return Filled(done, scanned, following, time.perf_counter() - began)

    return job


def forget_all() -> Job[int]:
    """Writer job: every message's encodings forgotten, a business at a time
    (`flowtrack db encode --rebuild`: after a change of the encoders, before
    filling again); how many."""

    def job(tx: Tx) -> int:
        forgotten = 0
        b = ""
        while (following := sql.scalar(tx.conn, _NEXT_BUSINESS, {"b": b})) is not None:
            b = str(following)
            forgotten += int(sql.run(tx.conn, _FORGET_ALL, {"business_id": b}).rowcount)
        return forgotten

    return job
