"""ReportService's queries: stats from counters, and page-at-a-time reads.

Every function here runs in a reader thread (through `Store.read`) on a
read-only connection. A unary read that needs several things at one sequence
opens one read transaction (`BEGIN` ... `COMMIT`), a WAL snapshot, and reads
`businesses.last_sequence` inside it.

A report stream holds a `Snapshot`: its own read-only connection with one
read transaction open, so every page reads at the same sequence, and a
cursor that it fetches a page at a time from (memory stays bounded by the
page, whatever the campaign's size). `Snapshot.interrupt` stops the query in progress from any
thread, so a cancelled stream stops its database work at once;
`Snapshot.expire` lets the transaction go when the stream has held it too
long (core/paging.py decides when, and takes a new one).

Rows come out as the named rows of domain/records.py: the SELECTs are built
from their fields.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from flowtrack.domain import stats as dstats
from flowtrack.domain.errors import ResourceExhausted, invalid
from flowtrack.domain.records import EventRecord, MessageRecord
from flowtrack.domain.stats import CampaignStats, ClickFilter, MessageFilter, ReasonRow
from flowtrack.store import db, engaged_reports
from flowtrack.store.timelimit import TimeLimit

Row = tuple[Any, ...]

# Page cache of a stream's own connection: the default (64 MiB) would let one
# long scan grow the server's memory by that much (memory must not grow with a report's size).
SNAPSHOT_CACHE_KIB = 4096


@dataclass(frozen=True, slots=True)
class CampaignRef:
    cid: int
    campaign_id: str
    first_event_at: int | None
    last_event_at: int | None


@contextlib.contextmanager
def read_transaction(conn: sqlite3.Connection) -> Iterator[int]:
    """One read transaction (a WAL snapshot), ended however the block ends."""
    conn.execute("BEGIN")
    try:
        yield 0
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


def sequence(conn: sqlite3.Connection, business_id: str) -> int:
    """The business's committed sequence."""
    row = conn.execute("SELECT last_sequence FROM businesses WHERE business_id = ?", (business_id,)).fetchone()
    return int(row[0]) if row else 0


def campaign(conn: sqlite3.Connection, business_id: str, campaign_id: str) -> CampaignRef | None:
    row = conn.execute(
        "SELECT cid, first_event_at, last_event_at FROM campaigns WHERE business_id = ? AND campaign_id = ?",
        (business_id, campaign_id),
    ).fetchone()
    return None if row is None else CampaignRef(int(row[0]), campaign_id, row[1], row[2])


def campaign_exists(conn: sqlite3.Connection, business_id: str, cid: int) -> bool:
    row = conn.execute("SELECT 1 FROM campaigns WHERE cid = ? AND business_id = ?", (cid, business_id)).fetchone()
    return row is not None


# -- stats ---------------------------------------------------------------------

_STATS_COUNTERS = (
    "SELECT scope, name, value FROM counters WHERE cid = ?1 AND"
    " (scope = '' OR (scope >= 'c:' AND scope < 'c;') OR (scope >= 'v:' AND scope < 'v;'))"
)


def stats_in_tx(conn: sqlite3.Connection, business_id: str, ref: CampaignRef, seq: int) -> CampaignStats:
    """A campaign's stats from its counters, inside the caller's transaction."""
    rows = conn.execute(_STATS_COUNTERS, (ref.cid,)).fetchall()
    stats = dstats.stats_from_counters(
        ref.campaign_id, rows, first_event_at=ref.first_event_at, last_event_at=ref.last_event_at, sequence=seq
    )
    found = conn.execute("SELECT state, complete_time FROM campaigns WHERE cid = ?", (ref.cid,)).fetchone()
    return stats if found is None else dataclasses.replace(stats, state=int(found[0]), complete_time=found[1])


def read_stats(conn: sqlite3.Connection, business_id: str, campaign_id: str) -> CampaignStats | None:
    """A campaign's stats at one sequence, or None if it does not exist. Cost:
    a handful of counter rows, whatever the campaign's size."""
    with read_transaction(conn):
        seq = sequence(conn, business_id)
        ref = campaign(conn, business_id, campaign_id)
        if ref is None:
            return None
        return stats_in_tx(conn, business_id, ref, seq)


def read_stats_by_cid(conn: sqlite3.Connection, business_id: str, cid: int) -> CampaignStats | None:
    with read_transaction(conn):
        seq = sequence(conn, business_id)
        row = conn.execute(
            "SELECT campaign_id, first_event_at, last_event_at FROM campaigns WHERE cid = ? AND business_id = ?",
            (cid, business_id),
        ).fetchone()
        if row is None:
            return None
        return stats_in_tx(conn, business_id, CampaignRef(cid, row[0], row[1], row[2]), seq)


# -- one stream's snapshot -------------------------------------------------------


class SnapshotExpired(Exception):
    """The snapshot was let go (`Snapshot.expire`) before the stream ended."""


# How long a new report stream waits for one of the server's snapshot slots
# (--max-report-streams) before RESOURCE_EXHAUSTED: a short wait, enough for
# a stream that just ended to give its slot back.
SNAPSHOT_WAIT = 1.0


def too_many_streams(limit: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"this server has {limit} report streams and exports open, its most (--max-report-streams):"
        " retry later or on another replica",
        reason="TOO_MANY_STREAMS",
    )


class SnapshotSlots:
    """At most `limit` snapshots open at once (0: no bound): `take` waits up
    to SNAPSHOT_WAIT for one, then raises RESOURCE_EXHAUSTED TOO_MANY_STREAMS."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free = threading.BoundedSemaphore(limit) if limit > 0 else None

    def take(self) -> None:
        if self._free is not None and not self._free.acquire(timeout=SNAPSHOT_WAIT):
            raise too_many_streams(self.limit)

    def give(self) -> None:
        if self._free is not None:
            self._free.release()


class Snapshot:
    """A read transaction held for one stream on a connection of its own.

    Only one thread uses it at a time (a lock makes sure); `interrupt` and
    `expire` may be called from any thread and make the running statement
    fail at once. After `expire`, `fetch` and `call` raise SnapshotExpired
    (the stream may open a new snapshot and go on from where it was)."""

    def __init__(self, path: str, on_close: Callable[[], None] | None = None) -> None:
        self._on_close = on_close  # called once, when closed (gives back its slot)
        self._conn = db.connect(path, readonly=True)
        self._conn.execute(f"PRAGMA cache_size=-{SNAPSHOT_CACHE_KIB}")
        self.limit = TimeLimit(self._conn)  # the caller sets each read's deadline
        self._lock = threading.Lock()
        self._cursor: sqlite3.Cursor | None = None
        self._make: Callable[[Row], Any] | None = None
        self._closed = False
        self.expired = False
        self.sequence = 0

    def begin(self, business_id: str, campaign_id: str) -> CampaignRef | None:
        """Start the read transaction; the business's sequence and the
        campaign as of it (None if there is no such campaign)."""
        with self._lock:
            self._check()
            self._conn.execute("BEGIN")
            self.sequence = sequence(self._conn, business_id)
            return campaign(self._conn, business_id, campaign_id)

    def run(self, sql: str, params: tuple[Any, ...] | dict[str, Any], make: Callable[[Row], Any] | None = None) -> None:
        """Start the stream's query; its rows are read with `fetch`, each
        made into `make(row)` if given (e.g. `MessageRecord._make`)."""
        with self._lock, self._expiring():
            self._cursor = self._conn.execute(sql, params)
            self._make = make

    def fetch(self, n: int) -> list[Any]:
        """The next up to `n` rows of the query (fewer only at its end)."""
        with self._lock, self._expiring():
            if self._cursor is None or self._closed:
                return []
            rows = self._cursor.fetchmany(n)
            return rows if self._make is None else [self._make(r) for r in rows]

    def call(self, fn: Any, *args: Any) -> Any:
        """fn(conn, *args) inside the snapshot's transaction."""
        with self._lock, self._expiring():
            return fn(self._conn, *args)

    def _check(self) -> None:
        if self.expired:
            raise SnapshotExpired("the stream's snapshot was released")

    @contextlib.contextmanager
    def _expiring(self) -> Iterator[None]:
        """SnapshotExpired before the block if the snapshot expired, and for
        a statement that `expire` interrupted."""
        self._check()
        try:
            yield
        except sqlite3.OperationalError:
            self._check()
            raise

    def interrupt(self) -> None:
        if not self._closed:
            with contextlib.suppress(sqlite3.ProgrammingError):
                self._conn.interrupt()

    def expire(self) -> None:
        """Let the snapshot go: stop the running statement, then end the
        read transaction (so the WAL can be checkpointed past it)."""
        self.expired = True
        self.interrupt()
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._cursor is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._cursor.close()
            with contextlib.suppress(sqlite3.Error):
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
            self._conn.close()
            if self._on_close is not None:
                self._on_close()


# -- message report ------------------------------------------------------------

# The SQL of each MessageRecord field: the column of the same name unless
# listed here (a computed field adds its expression here).
_MESSAGE_SQL: dict[str, str] = {}
MESSAGE_COLUMNS = ", ".join(_MESSAGE_SQL.get(name, name) for name in MessageRecord._fields)


def message_report_sql(cid: int, flt: MessageFilter, after: str | None) -> tuple[str, dict[str, Any]]:
    """The message report's query: the campaign's messages (joined to their
    engagement, store/engaged_reports.py) in recipient (primary key) order,
    after `after`, with the filter's conditions."""
    where = ["cid = :cid"]
    params: dict[str, Any] = {"cid": cid}
    if after is not None:
        where.append("recipient > :after")
        params["after"] = after
    if flt.recipient:
        where.append("recipient = :recipient")
        params["recipient"] = flt.recipient
    if flt.statuses:
        names = []
        for i, status in enumerate(flt.statuses):
            params[f"s{i}"] = status
            names.append(f":s{i}")
        where.append(f"status IN ({', '.join(names)})")
    if flt.channel:
        where.append("channel = :channel")
        params["channel"] = flt.channel
    if flt.variant:
        where.append("variant = :variant")
        params["variant"] = flt.variant
    if flt.failure_code:
        where.append("reason_code = :code")
        params["code"] = flt.failure_code
    if flt.updated_after is not None:
        where.append("updated_at >= :ua")
        params["ua"] = flt.updated_after
    if flt.updated_before is not None:
        where.append("updated_at < :ub")
        params["ub"] = flt.updated_before
    where += engaged_reports.segment_conditions(flt)
    joined = engaged_reports.MESSAGES_JOINED
    sql = f"SELECT {MESSAGE_COLUMNS} FROM {joined} WHERE {' AND '.join(where)} ORDER BY recipient"
    return sql, params


# -- events (history, clicks, subscriptions) -----------------------------------

# The SQL of each EventRecord field: columns both tables have are qualified.
_EVENT_SQL = {"campaign_id": "campaigns.campaign_id", "channel": "events.channel", "variant": "events.variant"}
EVENT_COLUMNS = ", ".join(_EVENT_SQL.get(name, name) for name in EventRecord._fields)


def _events_from(index: str | None = None) -> str:
    hint = f" INDEXED BY {index}" if index else ""
    return f"events{hint} JOIN campaigns ON campaigns.cid = events.cid AND campaigns.business_id = events.business_id"


def history_sql(business_id: str, cid: int, recipient: str, after_seq: int) -> tuple[str, tuple[Any, ...]]:
    """Every event of one recipient, or of the campaign, in sequence order."""
    if recipient:
        return (
            f"SELECT {EVENT_COLUMNS} FROM {_events_from()}"
            " WHERE events.cid = ? AND recipient = ? AND seq > ? AND events.business_id = ? ORDER BY seq",
            (cid, recipient, after_seq, business_id),
        )
    # (cid, seq) is the campaign's events in sequence order (migration 0003).
    return (
        f"SELECT {EVENT_COLUMNS} FROM {_events_from('events_by_campaign')}"
        " WHERE events.cid = ? AND seq > ? AND events.business_id = ? ORDER BY seq",
        (cid, after_seq, business_id),
    )


def events_page(
    conn: sqlite3.Connection, business_id: str, after_seq: int, cid: int | None, limit: int
) -> tuple[list[EventRecord], int]:
    """Up to `limit` events of the business after `after_seq` (of one campaign
    if `cid`), in sequence order, and the business's committed sequence read
    in the same transaction."""
    with read_transaction(conn):
        last = sequence(conn, business_id)
        if cid is None:
            rows = conn.execute(
                f"SELECT {EVENT_COLUMNS} FROM {_events_from('events_by_seq')}"
                " WHERE events.business_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (business_id, after_seq, limit),
            ).fetchall()
        else:
            rows = conn.execute(
                f"SELECT {EVENT_COLUMNS} FROM {_events_from('events_by_campaign')}"
                " WHERE events.cid = ? AND seq > ? AND events.business_id = ? ORDER BY seq LIMIT ?",
                (cid, after_seq, business_id, limit),
            ).fetchall()
    return [EventRecord._make(r) for r in rows], last


def click_report_sql(cid: int, flt: ClickFilter, after_id: int) -> tuple[str, dict[str, Any]]:
    """Clicks of a campaign in arrival order (= sequence order within a
    business: the writer inserts events in sequence order and row ids only
    grow), after the event row `after_id`."""
    where = ["events.cid = :cid", "kind = 2", "id > :after"]
    params: dict[str, Any] = {"cid": cid, "after": after_id}
    if flt.link_id:
        where.append("link_id = :link")
        params["link"] = flt.link_id
    if flt.country_code:
        where.append("country_code = :country")
        params["country"] = flt.country_code
    if flt.occurred_after is not None:
        where.append("occurred_at >= :oa")
        params["oa"] = flt.occurred_after
    if flt.occurred_before is not None:
        where.append("occurred_at < :ob")
        params["ob"] = flt.occurred_before
    return (
        f"SELECT {EVENT_COLUMNS} FROM {_events_from('events_clicks')} WHERE {' AND '.join(where)} ORDER BY id",
        params,
    )


# -- failure reasons -------------------------------------------------------------


def failure_reasons_sql(cid: int, samples: int) -> tuple[str, tuple[Any, ...]]:
    """The failure reasons of a campaign, most frequent first, each with the
    first `samples` of its recipients (in recipient order) as a JSON array:
    one query, one pass over the campaign's FAILED and NOT_SUBMITTED
    messages, however many pages the reasons fill (`reason_row` reads a row)."""
    return (
        "SELECT reason_code, reason_message, sum(status = 5), sum(status = 2),"
        " json_group_array(recipient) FILTER (WHERE n <= ?2)"
        " FROM (SELECT reason_code, reason_message, status, recipient,"
        "       row_number() OVER (PARTITION BY reason_code, reason_message ORDER BY recipient) AS n"
        "       FROM messages WHERE cid = ?1 AND status IN (2, 5))"
        " GROUP BY reason_code, reason_message ORDER BY count(*) DESC, reason_code, reason_message",
        (cid, samples),
    )


def reason_row(raw: Row) -> ReasonRow:
    """A ReasonRow from a row of `failure_reasons_sql`. The aggregate does not
    promise the samples' order, so they are put back in recipient order."""
    code, message, failed, not_submitted, samples = raw
    return ReasonRow(code, message, int(failed), int(not_submitted), sorted(json.loads(samples)))


def failure_totals(conn: sqlite3.Connection, cid: int) -> tuple[int, int]:
    """(failed, not_submitted) of the campaign, from its counters."""
    values = dict(
        conn.execute(
            "SELECT name, value FROM counters WHERE cid = ? AND scope = '' AND name IN ('failed', 'not_submitted')",
            (cid,),
        ).fetchall()
    )
    return int(values.get("failed", 0)), int(values.get("not_submitted", 0))


# -- click breakdown -------------------------------------------------------------


def click_breakdown(conn: sqlite3.Connection, cid: int) -> dict[str, Any]:
    """Totals and per-link buckets from counters; per country, region and city
    from the campaign's clicks (the partial index of clicks)."""
    totals = dict(
        conn.execute(
            "SELECT name, value FROM counters WHERE cid = ? AND scope = '' AND name IN ('clicks', 'unique_clickers')",
            (cid,),
        ).fetchall()
    )
    links: dict[str, dict[str, int]] = {}
    for scope, name, value in conn.execute(
        "SELECT scope, name, value FROM counters WHERE cid = ? AND scope >= 'l:' AND scope < 'l;'"
        " AND name IN ('clicks', 'unique_clickers')",
        (cid,),
    ):
        links.setdefault(scope[2:], {})[name] = int(value)
    base = "FROM events INDEXED BY events_clicks WHERE cid = ? AND kind = 2"
    by_country = conn.execute(
        f"SELECT coalesce(country_code, ''), count(*), count(DISTINCT recipient) {base} GROUP BY 1",
        (cid,),
    ).fetchall()
    by_region = conn.execute(
        f"SELECT coalesce(country_code, ''), coalesce(region, ''), count(*), count(DISTINCT recipient) {base}"
        " GROUP BY 1, 2",
        (cid,),
    ).fetchall()
    by_city = conn.execute(
        f"SELECT coalesce(country_code, ''), coalesce(region, ''), coalesce(city, ''), count(*),"
        f" count(DISTINCT recipient) {base} GROUP BY 1, 2, 3",
        (cid,),
    ).fetchall()
    return {
        "clicks": int(totals.get("clicks", 0)),
        "unique_clickers": int(totals.get("unique_clickers", 0)),
        "by_link": [(k, v.get("clicks", 0), v.get("unique_clickers", 0)) for k, v in links.items()],
        "by_country": by_country,
        "by_region": by_region,
        "by_city": by_city,
    }


# -- timeline --------------------------------------------------------------------


def timeline(
    conn: sqlite3.Connection, cid: int, width_us: int, start: int | None, end: int | None
) -> list[tuple[int, int, int | None, int]]:
    """(bucket start, kind, status, events) per bucket, in time order; for
    engagement events (kind 3) `status` is the EngagementKind number."""
    where = ["cid = ?"]
    params: list[Any] = [width_us, cid]
    if start is not None:
        where.append("occurred_at >= ?")
        params.append(start)
    if end is not None:
        where.append("occurred_at < ?")
        params.append(end)
    return conn.execute(
        "SELECT occurred_at - occurred_at % ?1 AS b, kind, coalesce(status, engagement) AS s, count(*) FROM events"
        f" WHERE {' AND '.join(where)} GROUP BY b, kind, s ORDER BY b",
        params,
    ).fetchall()


def read_breakdown(conn: sqlite3.Connection, business_id: str, campaign_id: str) -> tuple[dict[str, Any], int] | None:
    """The click breakdown and the sequence it reflects; None if no such campaign."""
    with read_transaction(conn):
        seq = sequence(conn, business_id)
        ref = campaign(conn, business_id, campaign_id)
        if ref is None:
            return None
        return click_breakdown(conn, ref.cid), seq


def read_timeline(
    conn: sqlite3.Connection, business_id: str, campaign_id: str, width: int, start: int | None, end: int | None
) -> tuple[list[tuple[int, int, int | None, int]], int] | None:
    """The timeline rows and the sequence they reflect; None if no such
    campaign. Refuses (INVALID_ARGUMENT) a width and range that would make more
    than MAX_TIMELINE_BUCKETS buckets, judged from the campaign's first and
    last event times, before reading any event."""
    with read_transaction(conn):
        seq = sequence(conn, business_id)
        ref = campaign(conn, business_id, campaign_id)
        if ref is None:
            return None
        if ref.first_event_at is not None and ref.last_event_at is not None:
            lo = max(ref.first_event_at, start) if start is not None else ref.first_event_at
            hi = min(ref.last_event_at, end) if end is not None else ref.last_event_at
            if hi >= lo and (hi - lo) // width + 1 > dstats.MAX_TIMELINE_BUCKETS:
                raise invalid(
                    "width",
                    f"more than {dstats.MAX_TIMELINE_BUCKETS} buckets: use a wider width or a shorter range",
                    "TOO_MANY_BUCKETS",
                )
        return timeline(conn, ref.cid, width, start, end), seq
