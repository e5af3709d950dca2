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
from their fields. Every statement is a SQLAlchemy Core construct over
store/schema.py's tables, run with store/sql.py; a stream's query is
`(statement, values)` (`Query`), built once per shape of its filter and
compiled once per dialect, and its rows are read from the DB-API cursor a
page at a time (`Snapshot.fetch`), each made into its record by the
stream's `make` (a NamedTuple's `_make`): no SQLAlchemy object per row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import Integer, and_, bindparam, case, cast, func, literal, or_, select
from sqlalchemy.sql.elements import ClauseElement, ColumnElement
from sqlalchemy.sql.selectable import Select

from flowtrack.domain import bots
from flowtrack.domain import stats as dstats
from flowtrack.domain.errors import ResourceExhausted, invalid
from flowtrack.domain.ingest import KIND_CLICK
from flowtrack.domain.model import CampaignSource, Status
from flowtrack.domain.records import ClickBucket, EventRecord, MessageRecord, TimelineRow
from flowtrack.domain.segments import SourcedStats
from flowtrack.domain.stats import CampaignStats, ClickFilter, MessageFilter, ReasonRow
from flowtrack.store import db, dialects, engaged_reports, sql
from flowtrack.store.schema import businesses, campaigns, counters, events
from flowtrack.store.timelimit import TimeLimit

Row = tuple[Any, ...]
Values = dict[str, Any]
# A stream's query: a statement (store/sql.py) and the values of its bindparams.
Query = tuple[ClauseElement, Values]

# Page cache of a stream's own connection: the default (64 MiB) would let one
# long scan grow the server's memory by that much (memory must not grow with a report's size).
SNAPSHOT_CACHE_KIB = 4096

# Statements built per request (a filter's conditions, a keyset position)
# are built once per shape (which conditions there are) and kept: each
# shape is compiled once per dialect (store/sql.py), not once per request.
# Measured on the message report with a filter (a busy 2-core machine):
# building and compiling it costs about 1.2 ms; a kept shape's compiled
# form and its values' binding, 25-40 µs.
_SHAPES = 512


@dataclass(frozen=True, slots=True)
class CampaignRef:
    cid: int
    campaign_id: str
    first_event_at: int | None
    last_event_at: int | None


def begin_read(conn: Any) -> None:
    """Open a read transaction on `conn`: SQLite's deferred BEGIN (a WAL
    snapshot from the first read), PostgreSQL's REPEATABLE READ READ ONLY
    (one snapshot for every statement of the read)."""
    if isinstance(conn, sqlite3.Connection):
        conn.execute("BEGIN")
    else:
        conn.execute_text("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", {})


def end_read(conn: Any) -> None:
    """End the read transaction on `conn`, if one is open."""
    if not conn.in_transaction:
        return
    if isinstance(conn, sqlite3.Connection):
        conn.execute("COMMIT")
    else:
        conn.execute_text("COMMIT", {})


@contextlib.contextmanager
def read_transaction(conn: Any) -> Iterator[int]:
    """One read transaction (a WAL snapshot), ended however the block ends."""
    begin_read(conn)
    try:
        yield 0
    finally:
        end_read(conn)


_SEQUENCE = select(businesses.c.last_sequence).where(businesses.c.business_id == bindparam("business_id"))
_CAMPAIGN = select(campaigns.c.cid, campaigns.c.first_event_at, campaigns.c.last_event_at).where(
    campaigns.c.business_id == bindparam("business_id"), campaigns.c.campaign_id == bindparam("campaign_id")
)
_CAMPAIGN_BY_CID = select(campaigns.c.campaign_id, campaigns.c.first_event_at, campaigns.c.last_event_at).where(
    campaigns.c.cid == bindparam("cid"), campaigns.c.business_id == bindparam("business_id")
)
_EXISTS = select(campaigns.c.cid).where(
    campaigns.c.cid == bindparam("cid"), campaigns.c.business_id == bindparam("business_id")
)


def sequence(conn: Any, business_id: str) -> int:
    """The business's committed sequence."""
    found = sql.scalar(conn, _SEQUENCE, {"business_id": business_id})
    return 0 if found is None else int(found)


def campaign(conn: Any, business_id: str, campaign_id: str) -> CampaignRef | None:
    row = sql.one(conn, _CAMPAIGN, {"business_id": business_id, "campaign_id": campaign_id})
    return None if row is None else CampaignRef(int(row[0]), campaign_id, row[1], row[2])


def campaign_exists(conn: Any, business_id: str, cid: int) -> bool:
    return sql.one(conn, _EXISTS, {"cid": cid, "business_id": business_id}) is not None


# -- stats ---------------------------------------------------------------------


def _scope_prefix(prefix: str) -> ColumnElement[bool]:
    """counters.scope starts with `prefix` (a range: the scope index serves it)."""
    after = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    return and_(counters.c.scope >= prefix, counters.c.scope < after)


class CounterRow(NamedTuple):
    scope: str
    name: str
    value: int


_STATS_COUNTERS = select(counters.c.scope, counters.c.name, counters.c.value).where(
    counters.c.business_id == bindparam("business_id"),
    counters.c.cid == bindparam("cid"),
    or_(
        counters.c.scope == "",
        _scope_prefix(dstats.CHANNEL_SCOPE),
        _scope_prefix(dstats.VARIANT_SCOPE),
    ),
)
_STATE = select(campaigns.c.state, campaigns.c.complete_time).where(
    campaigns.c.cid == bindparam("cid"), campaigns.c.business_id == bindparam("business_id")
)


def stats_in_tx(conn: Any, business_id: str, ref: CampaignRef, seq: int) -> CampaignStats:
    """A campaign's stats from its counters, inside the caller's transaction."""
    # (scope, name, value) rows as the cursor gives them: a record per counter
    # row would cost a third more per call, for rows that only the domain's
    # stats_from_counters unpacks.
    rows = sql.run(conn, _STATS_COUNTERS, {"business_id": business_id, "cid": ref.cid}).fetchall()
    stats = dstats.stats_from_counters(
        ref.campaign_id, rows, first_event_at=ref.first_event_at, last_event_at=ref.last_event_at, sequence=seq
    )
    found = sql.one(conn, _STATE, {"cid": ref.cid, "business_id": business_id})
    return stats if found is None else dataclasses.replace(stats, state=int(found[0]), complete_time=found[1])


def read_stats(conn: Any, business_id: str, campaign_id: str) -> CampaignStats | None:
    """A campaign's stats at one sequence, or None if it does not exist. Cost:
    a handful of counter rows, whatever the campaign's size."""
    with read_transaction(conn):
        seq = sequence(conn, business_id)
        ref = campaign(conn, business_id, campaign_id)
        if ref is None:
            return None
        return stats_in_tx(conn, business_id, ref, seq)


_SOURCED = select(
    campaigns.c.cid,
    campaigns.c.first_event_at,
    campaigns.c.last_event_at,
    campaigns.c.source_campaign_id,
    campaigns.c.source_segment,
).where(campaigns.c.business_id == bindparam("business_id"), campaigns.c.campaign_id == bindparam("campaign_id"))


def read_sourced_stats(conn: Any, business_id: str, campaign_id: str) -> SourcedStats | None:
    """GetCampaignStats' read: a campaign's stats, its source (a segment of
    another campaign) and the source's stats, at one sequence in one read
    transaction; None if the campaign does not exist. (Its source looked up
    in a second read cost a second hop to a reader thread: a third more time
    per call.)"""
    with read_transaction(conn):
        seq = sequence(conn, business_id)
        row = sql.one(conn, _SOURCED, {"business_id": business_id, "campaign_id": campaign_id})
        if row is None:
            return None
        stats = stats_in_tx(conn, business_id, CampaignRef(int(row[0]), campaign_id, row[1], row[2]), seq)
        if row[3] is None:
            return SourcedStats(stats)
        source = CampaignSource(row[3], row[4])
        ref = campaign(conn, business_id, source.campaign_id)
        return SourcedStats(stats, source, None if ref is None else stats_in_tx(conn, business_id, ref, seq))


def read_stats_by_cid(conn: Any, business_id: str, cid: int) -> CampaignStats | None:
    with read_transaction(conn):
        seq = sequence(conn, business_id)
        row = sql.one(conn, _CAMPAIGN_BY_CID, {"cid": cid, "business_id": business_id})
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
            begin_read(self._conn)
            self.sequence = sequence(self._conn, business_id)
            return campaign(self._conn, business_id, campaign_id)

    def run(self, statement: ClauseElement, values: Values, make: Callable[[Row], Any] | None = None) -> None:
        """Start the stream's query (a statement of store/sql.py and its
        values); its rows are read with `fetch`, each made into `make(row)`
        if given (e.g. `MessageRecord._make`)."""
        with self._lock, self._expiring():
            text, params = sql.compile_for(statement, sql.SQLITE).bind(values)
            self._cursor = self._conn.execute(text, params)
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

_MESSAGE_JOINED = engaged_reports.messages_joined()
# The columns of each MessageRecord field, by name, from the join.
MESSAGE_COLUMNS = engaged_reports.message_columns(MessageRecord._fields)
_M = engaged_reports.messages


@functools.lru_cache(maxsize=_SHAPES)
def _message_report(shape: tuple[Any, ...]) -> ClauseElement:
    after, recipient, statuses, channel, variant, code, ua, ub, segments, encoded = shape
    where: list[ColumnElement[bool]] = [_M.c.business_id == bindparam("business_id"), _M.c.cid == bindparam("cid")]
    if after:
        where.append(_M.c.recipient > bindparam("after"))
    if recipient:
        where.append(_M.c.recipient == bindparam("recipient"))
    if statuses:
        where.append(_M.c.status.in_(bindparam("statuses", expanding=True)))
    if channel:
        where.append(_M.c.channel == bindparam("channel"))
    if variant:
        where.append(_M.c.variant == bindparam("variant"))
    if code:
        where.append(_M.c.reason_code == bindparam("code"))
    if ua:
        where.append(_M.c.updated_at >= bindparam("ua"))
    if ub:
        where.append(_M.c.updated_at < bindparam("ub"))
    where += engaged_reports.segment_conditions(segments)
    columns = MESSAGE_COLUMNS if encoded is None else [_M.c.recipient, _M.c[encoded]]
    return select(*columns).select_from(_MESSAGE_JOINED).where(*where).order_by(_M.c.recipient)


def message_report_sql(
    business_id: str, cid: int, flt: MessageFilter, after: str | None, encoded: str | None = None
) -> Query:
    """The message report's query: the campaign's messages (joined to their
    engagement, store/engaged_reports.py) in recipient (primary key) order,
    after `after`, with the filter's conditions. Its rows are MessageRecord's
    columns, or with `encoded` ("row_pb" or "csv_tail", store/encodings.py)
    (recipient, that column)."""
    segments = tuple(flt.segments().items())
    shape = (
        after is not None,
        bool(flt.recipient),
        bool(flt.statuses),
        bool(flt.channel),
        bool(flt.variant),
        bool(flt.failure_code),
        flt.updated_after is not None,
        flt.updated_before is not None,
        segments,
        encoded,
    )
    values: Values = {"business_id": business_id, "cid": cid}
    if after is not None:
        values["after"] = after
    if flt.recipient:
        values["recipient"] = flt.recipient
    if flt.statuses:
        values["statuses"] = list(flt.statuses)
    if flt.channel:
        values["channel"] = flt.channel
    if flt.variant:
        values["variant"] = flt.variant
    if flt.failure_code:
        values["code"] = flt.failure_code
    if flt.updated_after is not None:
        values["ua"] = flt.updated_after
    if flt.updated_before is not None:
        values["ub"] = flt.updated_before
    return _message_report(shape), values


# -- events (history, clicks, subscriptions) -----------------------------------


def _event_columns(source: Any) -> list[ColumnElement[Any]]:
    """The columns of each EventRecord field: the campaign's id from its
    campaign, every other field the event's own."""
    return [campaigns.c.campaign_id if name == "campaign_id" else source.c[name] for name in EventRecord._fields]


def _events_from(source: Any) -> Any:
    return source.join(
        campaigns, and_(campaigns.c.cid == source.c.cid, campaigns.c.business_id == source.c.business_id)
    )


def _events_select(source: Any) -> Select[Any]:
    return select(*_event_columns(source)).select_from(_events_from(source))


# (cid, seq) is the campaign's events in sequence order; SQLite's planner
# takes the business's (business_id, seq) instead unless told (store/dialects.py).
_BY_CAMPAIGN = dialects.indexed_by(events, "events_by_campaign")
_HISTORY_OF_RECIPIENT = (
    _events_select(events)
    .where(
        events.c.cid == bindparam("cid"),
        events.c.recipient == bindparam("recipient"),
        events.c.seq > bindparam("after"),
        events.c.business_id == bindparam("business_id"),
    )
    .order_by(events.c.seq)
)
_CAMPAIGN_EVENTS = (
    _events_select(_BY_CAMPAIGN)
    .where(
        _BY_CAMPAIGN.c.cid == bindparam("cid"),
        _BY_CAMPAIGN.c.seq > bindparam("after"),
        _BY_CAMPAIGN.c.business_id == bindparam("business_id"),
    )
    .order_by(_BY_CAMPAIGN.c.seq)
)
_CAMPAIGN_EVENTS_PAGE = _CAMPAIGN_EVENTS.limit(bindparam("limit"))
_BUSINESS_EVENTS_PAGE = (
    _events_select(events)
    .where(events.c.business_id == bindparam("business_id"), events.c.seq > bindparam("after"))
    .order_by(events.c.seq)
    .limit(bindparam("limit"))
)


def history_sql(business_id: str, cid: int, recipient: str, after_seq: int) -> Query:
    """Every event of one recipient, or of the campaign, in sequence order."""
    values: Values = {"cid": cid, "after": after_seq, "business_id": business_id}
    if recipient:
        values["recipient"] = recipient
        return _HISTORY_OF_RECIPIENT, values
    return _CAMPAIGN_EVENTS, values


def events_page(
    conn: Any, business_id: str, after_seq: int, cid: int | None, limit: int
) -> tuple[list[EventRecord], int]:
    """Up to `limit` events of the business after `after_seq` (of one campaign
    if `cid`), in sequence order, and the business's committed sequence read
    in the same transaction."""
    with read_transaction(conn):
        last = sequence(conn, business_id)
        values: Values = {"business_id": business_id, "after": after_seq, "limit": limit}
        if cid is None:
            rows = list(sql.records(conn, _BUSINESS_EVENTS_PAGE, values, EventRecord))
        else:
            rows = list(sql.records(conn, _CAMPAIGN_EVENTS_PAGE, {**values, "cid": cid}, EventRecord))
    return rows, last


@functools.lru_cache(maxsize=_SHAPES)
def _click_report(shape: tuple[bool, ...]) -> ClauseElement:
    link, country, oa, ob, human, bot = shape
    where: list[ColumnElement[bool]] = [
        events.c.cid == bindparam("cid"),
        events.c.business_id == bindparam("business_id"),
        events.c.kind == KIND_CLICK,
        events.c.id > bindparam("after"),
    ]
    if link:
        where.append(events.c.link_id == bindparam("link"))
    if country:
        where.append(events.c.country_code == bindparam("country"))
    if oa:
        where.append(events.c.occurred_at >= bindparam("oa"))
    if ob:
        where.append(events.c.occurred_at < bindparam("ob"))
    if human:
        where.append(events.c.bot_reason == bots.HUMAN)
    if bot:
        where.append(events.c.bot_reason != bots.HUMAN)
    return _events_select(events).where(*where).order_by(events.c.id)


def click_report_sql(business_id: str, cid: int, flt: ClickFilter, after_id: int) -> Query:
    """Clicks of a campaign in arrival order (= sequence order within a
    business: the writer inserts events in sequence order and row ids only
    grow), after the event row `after_id`."""
    shape = (
        bool(flt.link_id),
        bool(flt.country_code),
        flt.occurred_after is not None,
        flt.occurred_before is not None,
        flt.click_class == dstats.CLICK_CLASS_HUMAN,
        flt.click_class == dstats.CLICK_CLASS_BOT,
    )
    values: Values = {"cid": cid, "business_id": business_id, "after": after_id}
    if flt.link_id:
        values["link"] = flt.link_id
    if flt.country_code:
        values["country"] = flt.country_code
    if flt.occurred_after is not None:
        values["oa"] = flt.occurred_after
    if flt.occurred_before is not None:
        values["ob"] = flt.occurred_before
    return _click_report(shape), values


# -- failure reasons -------------------------------------------------------------

_FAILING = (Status.NOT_SUBMITTED, Status.FAILED)
_ranked = (
    select(
        _M.c.reason_code,
        _M.c.reason_message,
        _M.c.status,
        _M.c.recipient,
        func.row_number()
        .over(partition_by=(_M.c.reason_code, _M.c.reason_message), order_by=_M.c.recipient)
        .label("n"),
    )
    .where(
        _M.c.business_id == bindparam("business_id"),
        _M.c.cid == bindparam("cid"),
        _M.c.status.in_([int(s) for s in _FAILING]),
    )
    .subquery("r")
)
FAILURE_REASONS = (
    select(
        _ranked.c.reason_code,
        _ranked.c.reason_message,
        func.sum(cast(_ranked.c.status == int(Status.FAILED), Integer)).label("failed"),
        func.sum(cast(_ranked.c.status == int(Status.NOT_SUBMITTED), Integer)).label("not_submitted"),
        dialects.json_array(_ranked.c.recipient, _ranked.c.n <= bindparam("samples")).label("samples"),
    )
    .group_by(_ranked.c.reason_code, _ranked.c.reason_message)
    .order_by(func.count().desc(), _ranked.c.reason_code, _ranked.c.reason_message)
)


def failure_reasons_sql(business_id: str, cid: int, samples: int) -> Query:
    """The failure reasons of a campaign, most frequent first, each with the
    first `samples` of its recipients (in recipient order) as a JSON array:
    one query, one pass over the campaign's FAILED and NOT_SUBMITTED
    messages, however many pages the reasons fill (`reason_row` reads a row)."""
    return FAILURE_REASONS, {"business_id": business_id, "cid": cid, "samples": samples}


class _Reason(NamedTuple):
    reason_code: str
    reason_message: str
    failed: int
    not_submitted: int
    samples: str


def reason_row(raw: Row) -> ReasonRow:
    """A ReasonRow from a row of `failure_reasons_sql`. The aggregate does not
    promise the samples' order, so they are put back in recipient order."""
    row = _Reason._make(raw)
    return ReasonRow(
        row.reason_code, row.reason_message, int(row.failed), int(row.not_submitted), sorted(json.loads(row.samples))
    )


_TOTALS = select(counters.c.name, counters.c.value).where(
    counters.c.business_id == bindparam("business_id"),
    counters.c.cid == bindparam("cid"),
    counters.c.scope == "",
    counters.c.name.in_(bindparam("names", expanding=True)),
)


def _totals(conn: Any, business_id: str, cid: int, *names: str) -> dict[str, int]:
    """The campaign-wide counters `names` of `cid` (0 for one not there)."""
    found = dict.fromkeys(names, 0)
    for name, value in sql.run(conn, _TOTALS, {"business_id": business_id, "cid": cid, "names": list(names)}):
        found[str(name)] = int(value)
    return found


def failure_totals(conn: Any, business_id: str, cid: int) -> tuple[int, int]:
    """(failed, not_submitted) of the campaign, from its counters."""
    totals = _totals(conn, business_id, cid, Status.FAILED.bucket, Status.NOT_SUBMITTED.bucket)
    return totals[Status.FAILED.bucket], totals[Status.NOT_SUBMITTED.bucket]


# -- click breakdown -------------------------------------------------------------

_LINK_COUNTERS = select(counters.c.scope, counters.c.name, counters.c.value).where(
    counters.c.business_id == bindparam("business_id"),
    counters.c.cid == bindparam("cid"),
    _scope_prefix(dstats.LINK_SCOPE),
    counters.c.name.in_(["clicks", "unique_clickers", "human_clicks", "unique_human_clickers"]),
)


def _clicks_by(*places: Any) -> Any:
    """Click buckets of a campaign per value of `places` (the partial index
    of clicks); the keys not among `places` are ''."""
    keys = [func.coalesce(column, "").label(column.name) for column in places]
    named = {key.name: key for key in keys}
    columns = [named.get(name, literal("").label(name)) for name in ClickBucket._fields[:4]]
    return (
        select(
            *columns,
            func.count().label("clicks"),
            func.count(events.c.recipient.distinct()).label("unique_clickers"),
            func.coalesce(func.sum(case((events.c.bot_reason == bots.HUMAN, 1), else_=0)), 0).label("human_clicks"),
            func.count(case((events.c.bot_reason == bots.HUMAN, events.c.recipient)).distinct()).label(
                "unique_human_clickers"
            ),
        )
        .where(
            events.c.cid == bindparam("cid"),
            events.c.business_id == bindparam("business_id"),
            events.c.kind == KIND_CLICK,
        )
        .group_by(*keys)
    )


_BY_COUNTRY = _clicks_by(events.c.country_code)
_BY_REGION = _clicks_by(events.c.country_code, events.c.region)
_BY_CITY = _clicks_by(events.c.country_code, events.c.region, events.c.city)


def click_breakdown(conn: Any, business_id: str, cid: int) -> dict[str, Any]:
    """Totals and per-link buckets from counters; per country, region and city
    from the campaign's clicks (the partial index of clicks). The buckets are
    ClickBuckets."""
    totals = _totals(conn, business_id, cid, "clicks", "unique_clickers", "human_clicks", "unique_human_clickers")
    links: dict[str, dict[str, int]] = {}
    for row in sql.records(conn, _LINK_COUNTERS, {"business_id": business_id, "cid": cid}, CounterRow):
        links.setdefault(row.scope[len(dstats.LINK_SCOPE) :], {})[row.name] = int(row.value)
    values = {"cid": cid, "business_id": business_id}
    return {
        "clicks": totals["clicks"],
        "unique_clickers": totals["unique_clickers"],
        "human_clicks": totals["human_clicks"],
        "unique_human_clickers": totals["unique_human_clickers"],
        "by_link": [
            ClickBucket(
                link,
                "",
                "",
                "",
                v.get("clicks", 0),
                v.get("unique_clickers", 0),
                v.get("human_clicks", 0),
                v.get("unique_human_clickers", 0),
            )
            for link, v in links.items()
        ],
        "by_country": list(sql.records(conn, _BY_COUNTRY, values, ClickBucket)),
        "by_region": list(sql.records(conn, _BY_REGION, values, ClickBucket)),
        "by_city": list(sql.records(conn, _BY_CITY, values, ClickBucket)),
    }


# -- timeline --------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _timeline(start: bool, end: bool) -> ClauseElement:
    bucket = (events.c.occurred_at - events.c.occurred_at % bindparam("width")).label("bucket")
    status = func.coalesce(events.c.status, events.c.engagement).label("status")
    where = [events.c.cid == bindparam("cid"), events.c.business_id == bindparam("business_id")]
    if start:
        where.append(events.c.occurred_at >= bindparam("start"))
    if end:
        where.append(events.c.occurred_at < bindparam("end"))
    return (
        select(bucket, events.c.kind, status, func.count().label("events"))
        .where(*where)
        .group_by(bucket, events.c.kind, status)
        .order_by(bucket)
    )


def timeline(
    conn: Any, business_id: str, cid: int, width_us: int, start: int | None, end: int | None
) -> list[TimelineRow]:
    """(bucket start, kind, status, events) per bucket, in time order; for
    engagement events (kind 3) `status` is the EngagementKind number."""
    values: Values = {"width": width_us, "cid": cid, "business_id": business_id}
    if start is not None:
        values["start"] = start
    if end is not None:
        values["end"] = end
    return list(sql.records(conn, _timeline(start is not None, end is not None), values, TimelineRow))


def read_breakdown(conn: Any, business_id: str, campaign_id: str) -> tuple[dict[str, Any], int] | None:
    """The click breakdown and the sequence it reflects; None if no such campaign."""
    with read_transaction(conn):
        seq = sequence(conn, business_id)
        ref = campaign(conn, business_id, campaign_id)
        if ref is None:
            return None
        return click_breakdown(conn, business_id, ref.cid), seq


def read_timeline(
    conn: Any, business_id: str, campaign_id: str, width: int, start: int | None, end: int | None
) -> tuple[list[TimelineRow], int] | None:
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
        return timeline(conn, business_id, ref.cid, width, start, end), seq
