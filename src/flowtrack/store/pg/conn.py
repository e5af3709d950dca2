"""A psycopg connection that runs the store's SQL as the SQLite code writes it.

The query functions of the store (store/campaigns.py, ingest.py, reports.py,
engagement.py, export.py, keys.py, check.py) take a DB-API connection and
issue SQL with SQLite's placeholders (`?`, `?1`, `:name`). `PgConnection`
gives them the same surface on a psycopg 3 connection — `execute` returning a
cursor (with `rowcount`, `fetchone`, `fetchall`, `fetchmany`, iteration and,
for an insert into `campaigns`, `lastrowid`), `executemany`,
`in_transaction`, `getlimit` — and rewrites each statement once (cached):

- placeholders to psycopg's (`%s`, `%(p1)s`, `%(name)s`) and `%` to `%%`;
- the few SQLite-only expressions the store uses to their PostgreSQL
  equivalents (`_REWRITES`: `INDEXED BY` hints dropped, `sum(bool)`,
  `json_group_array`, `json_each`, `instr`, `INSERT OR IGNORE`, aliases of
  subqueries); a new SQLite-only expression in the store needs a line there,
  and the PostgreSQL half of the suite finds the ones missing;
- `BEGIN` on a reader to a REPEATABLE READ READ ONLY transaction (one
  snapshot for every statement of a read, as a WAL read transaction is);
  `BEGIN IMMEDIATE` on the writer to a READ COMMITTED one (the writer locks
  what it changes; see store/pg/store.py).

So the rules and the queries exist once; only the dialect differs.
numeric results (PostgreSQL's sum of bigint) come back as int, as SQLite's do.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any, NamedTuple

import psycopg
import sqlalchemy as sa
from psycopg import pq
from psycopg import sql as psql
from psycopg.types.numeric import NumericLoader
from sqlalchemy.dialects import postgresql

from flowtrack.domain.errors import InvalidArgument, Violation
from flowtrack.store.db import Lookup, Rows
from flowtrack.store.sql import POSTGRESQL

Params = Sequence[Any] | Mapping[str, Any] | None

# Every flowtrack session plans each statement for its parameters and the
# tables as they are now. A generic plan (psycopg prepares a statement after
# 5 runs; PostgreSQL may then keep one plan for every later run) is chosen
# while the tables are small and kept as they grow: a scan of the business's
# events that was cheap at 2,000 rows is then run at 1M, on every batch.
SESSION_OPTIONS = "-c plan_cache_mode=force_custom_plan"


class IntNumericLoader(NumericLoader):
    """numeric as int when it is whole (sum() of bigint columns), else float."""

    def load(self, data: Any) -> Any:
        value = super().load(data)
        if isinstance(value, Decimal):
            return int(value) if value == value.to_integral_value() else float(value)
        return value


# Sees the text of every statement a PgConnection runs (its `observed`
# ones), as PostgreSQL receives it; None but in the tests, whose Citus check
# (tests/citus.py) reads what the store runs. One place: every statement of
# the store goes through PgConnection.
statement_observer: Callable[[str], None] | None = None


def observe(text: str) -> None:
    if statement_observer is not None:
        statement_observer(text)


class Cursor(psycopg.Cursor[Any]):
    """A psycopg cursor with SQLite's `lastrowid` (set for inserts into campaigns)."""

    lastrowid: int | None = None


# SQLite-only expressions of the store's SQL and their PostgreSQL spelling.
_REWRITES: tuple[tuple[str, str], ...] = (
    ("sum(status = 5)", "sum((status = 5)::int)"),
    ("sum(status = 2)", "sum((status = 2)::int)"),
    (
        "json_group_array(recipient) FILTER (WHERE n <= ?2)",
        "coalesce((json_agg(recipient) FILTER (WHERE n <= ?2))::text, '[]')",
    ),
    ("status IN (2, 5))", "status IN (2, 5)) AS r"),
    ("instr(c.name_folded, ?) > 0", "strpos(c.name_folded, ?) > 0"),
    ("json_each(c.labels) j", "json_each_text(c.labels::json) j"),
)
_INDEXED_BY = re.compile(r"\s+INDEXED BY \w+")
_TOKENS = re.compile(r"'(?:[^']|'')*'|\?(\d+)|\?|(?<![:\w]):([A-Za-z_]\w*)|%")
_COUNT_OF = re.compile(r"^SELECT count\(\*\) FROM \((.*)\)$", re.S)


_KEYS_PER_QUERY = 10_000
_FEW_ROWS = 16  # execute_rows: up to this many rows in one VALUES statement, more by COPY
_IN_LIST = re.compile(r"(?i)\b(NOT\s+)?IN\s*\(\s*\?(?:\s*,\s*\?)*\s*\)")


class Statement(NamedTuple):
    """A SQLite statement as psycopg runs it: its text, how its parameters
    are passed ('seq' positional, 'num' for `?N`: a dict p1, p2, ..., or
    'named'), and for 'seq', how many of the caller's values each
    placeholder takes (0: one scalar, n: an `IN` list of n; None: one each)."""

    text: str
    mode: str
    groups: tuple[int, ...] | None = None

    def bind(self, params: Params) -> tuple[str, Any]:
        """The text and the parameters for psycopg: an `IN` list's values go
        as one array, typed in the text by what they hold."""
        if params is None:
            return self.text, []
        if self.mode == "num" and not isinstance(params, Mapping):
            return self.text, {f"p{i}": value for i, value in enumerate(params, 1)}
        if isinstance(params, Mapping):
            return self.text, dict(params)
        if self.groups is None:
            return self.text, list(params)
        values = list(params)
        bound: list[Any] = []
        types: list[str] = []
        at = 0
        for size in self.groups:
            if size:
                some = values[at : at + size]
                bound.append(some)
                types.append(_array_type(some))
                at += size
            else:
                bound.append(values[at])
                at += 1
        return _typed(self.text, tuple(types)), bound


_ARRAY = "\x01"  # in a translated text: the element type of the next IN list's array


def _array_type(values: list[Any]) -> str:
    if all(isinstance(v, str) for v in values):
        return "text"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "bigint"
    if all(isinstance(v, bytes) for v in values):
        return "bytea"
    raise TypeError(f"an IN (...) list of mixed or unsupported values: {values[:3]!r}...")


@functools.lru_cache(maxsize=2048)
def _typed(text: str, types: tuple[str, ...]) -> str:
    parts = text.split(_ARRAY)
    return parts[0] + "".join(f"{kind}{part}" for kind, part in zip(types, parts[1:], strict=True))


@functools.lru_cache(maxsize=2048)
def translate(sql: str, reader: bool) -> Statement:
    """The PostgreSQL statement of a SQLite one.

    A list of bare placeholders, `x IN (?, ?, ...)`, becomes
    `x IN (SELECT unnest(%s::text[]))` bound to one array: the text is the
    same whatever the list's length, so psycopg parses it once (a text with
    hundreds of `%s` is parsed in Python on every call), and the planner
    sees a join it can run as a probe of an index per value (as
    `x = ANY(%s)`, a table not yet ANALYZEd makes it guess that most rows
    match). The writer's hot look-ups do not rely on the planner's guess:
    they go through PgConnection.rows_by_keys."""
    stripped = sql.strip()
    upper = stripped.upper()
    if upper == "BEGIN":
        return Statement("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY" if reader else "BEGIN", "seq")
    if upper in ("BEGIN IMMEDIATE", "BEGIN DEFERRED", "BEGIN EXCLUSIVE"):
        return Statement("BEGIN", "seq")
    text = _INDEXED_BY.sub("", sql)
    for old, new in _REWRITES:
        text = text.replace(old, new)
    count = _COUNT_OF.match(text)
    if count:
        text = f"SELECT count(*) FROM ({count.group(1)}) AS q"
    ignore = text.lstrip().upper().startswith("INSERT OR IGNORE INTO")
    if ignore:
        text = re.sub(r"(?i)INSERT OR IGNORE INTO", "INSERT INTO", text, count=1) + " ON CONFLICT DO NOTHING"
    if text.lstrip().startswith("INSERT INTO campaigns ") and "RETURNING" not in text:
        text += " RETURNING cid"
    numbered = any(m.group(1) for m in _TOKENS.finditer(text))
    named = any(m.group(2) for m in _TOKENS.finditer(text))
    groups: list[int] | None = None
    if not numbered and not named and _IN_LIST.search(text):
        text, groups = _arrays(text)
    mode = "num" if numbered else "seq"
    largest = 0

    def swap(match: re.Match[str]) -> str:
        # SQLite numbers a bare `?` one above the largest number so far.
        nonlocal mode, largest
        token = match.group(0)
        if token.startswith("'"):
            return token.replace("%", "%%")
        if token == "%":
            return "%%"
        if match.group(1):
            largest = max(largest, int(match.group(1)))
            return f"%(p{match.group(1)})s"
        if match.group(2):
            mode = "named"
            return f"%({match.group(2)})s"
        if numbered:
            largest += 1
            return f"%(p{largest})s"
        return "%s"

    return Statement(_TOKENS.sub(swap, text), mode, None if groups is None else tuple(groups))


def _arrays(text: str) -> tuple[str, list[int]]:
    """`text` with each `IN (?, ...)` as `IN (SELECT unnest(?::T[]))`, and
    per remaining placeholder the number of values it takes (0: one scalar,
    n: an array of n)."""
    groups: list[int] = []
    parts: list[str] = []
    at = 0
    for found in _IN_LIST.finditer(text):
        before = text[at : found.start()]
        groups += [0] * sum(1 for m in _TOKENS.finditer(before) if m.group(0) == "?")
        groups.append(found.group(0).count("?"))
        parts += [before, f" {found.group(1) or ''}IN (SELECT unnest(?::{_ARRAY}[]))"]
        at = found.end()
    rest = text[at:]
    groups += [0] * sum(1 for m in _TOKENS.finditer(rest) if m.group(0) == "?")
    parts.append(rest)
    return "".join(parts), groups


# The positional form of PostgreSQL's dialect (%s): a multi-row statement's
# values go as one flat list, row after row.
_POSITIONAL = postgresql.psycopg.dialect(paramstyle="format")  # type: ignore[no-untyped-call]


@functools.lru_cache(maxsize=512)
def _multi_row(target: Rows, rows: int) -> str:
    """The multi-row INSERT of `rows` rows into `target` (with its conflict clause)."""
    return str(target.statement(postgresql.insert, rows).compile(dialect=_POSITIONAL))


@functools.lru_cache(maxsize=256)
def _staged(target: Rows) -> tuple[str, psql.Composed, psql.Composed, str]:
    """How `execute_rows` writes many rows into `target` with a conflict
    clause: the staging table's name, its CREATE, the COPY into it, and the
    upsert that moves its rows into the table (emptying it)."""
    table, columns = target.table.name, target.columns
    stage = f"ft_stage_{table}_{zlib.crc32(','.join(columns).encode()):08x}"
    names = psql.SQL(", ").join(psql.Identifier(name) for name in columns)
    # ON COMMIT DELETE ROWS: a temporary table is never vacuumed, so the rows
    # deleted by the upsert must not outlive the transaction.
    create = psql.SQL(
        "CREATE TEMPORARY TABLE IF NOT EXISTS {} ON COMMIT DELETE ROWS AS SELECT {} FROM {} WITH NO DATA"
    ).format(psql.Identifier(stage), names, psql.Identifier(table))
    copy = psql.SQL("COPY {} FROM STDIN").format(psql.Identifier(stage))
    staging = sa.table(stage, *[sa.column(name) for name in columns])
    moved = sa.delete(staging).returning(*staging.c).cte("staged")
    insert = postgresql.insert(target.table).from_select(list(columns), sa.select(*[moved.c[n] for n in columns]))
    assert target.conflict is not None
    upsert = target.conflict(insert).add_cte(moved)
    return stage, create, copy, str(upsert.compile(dialect=_POSITIONAL))


@functools.lru_cache(maxsize=256)
def _copy_into(target: Rows) -> tuple[psql.Composed, str]:
    """The COPY of `target`'s rows straight into its table, and the
    single-row INSERT it stands for (for the statement observer)."""
    copy = psql.SQL("COPY {} ({}) FROM STDIN").format(
        psql.Identifier(target.table.name), psql.SQL(", ").join(psql.Identifier(name) for name in target.columns)
    )
    return copy, _multi_row(target, 1)


@functools.lru_cache(maxsize=256)
def probes_text(lookup: Lookup[Any], types: tuple[str, ...]) -> str:
    """The statement of PgConnection.rows_by_keys: its one parameter
    (`keys`) is a JSON array of keys, each an array of values of the SQL
    `types`; per key, one probe of the source (a LATERAL subquery, OFFSET 0
    so that the planner keeps it one)."""
    element = sa.func.json_array_elements(sa.cast(sa.bindparam("keys"), sa.JSON)).column_valued("p")
    wanted = sa.select(
        *[
            sa.cast(element.op("->>")(sa.literal_column(str(i))), sa.BigInteger if kind == "bigint" else sa.Text).label(
                f"ft_k{i}"
            )
            for i, kind in enumerate(types)
        ]
    ).subquery("w")
    probe = (
        sa.select(*[column.label(f"ft_c{i}") for i, column in enumerate(lookup.columns)])
        .select_from(lookup.source)
        .where(*[key == wanted.c[f"ft_k{i}"] for i, key in enumerate(lookup.key)])
        .offset(sa.literal_column("0"))
        .lateral("r")
    )
    statement = sa.select(*wanted.c, *probe.c).select_from(wanted.join(probe, sa.true()))
    return str(statement.compile(dialect=POSTGRESQL))


def _check_text(values: Iterable[Any]) -> None:
    """PostgreSQL text cannot hold U+0000 (SQLite's can): a request carrying
    one is INVALID_ARGUMENT on this backend, never an unknown error."""
    for value in values:
        if isinstance(value, list):  # the array of an `IN (...)` list
            _check_text(value)
        elif isinstance(value, str) and "\x00" in value:
            raise _nul_error()


def _nul_error() -> InvalidArgument:
    return InvalidArgument(
        [Violation("", "text containing NUL (U+0000) cannot be stored or looked up", "NUL_CHARACTER")],
        "text containing NUL (U+0000) cannot be stored or looked up on this server's database (PostgreSQL)",
    )


class PgConnection:
    """The store's DB-API surface over one psycopg connection (autocommit:
    transactions are the caller's BEGIN / COMMIT, as with SQLite)."""

    def __init__(self, conn: psycopg.Connection[Any], *, reader: bool = False) -> None:
        self.raw = conn
        self.reader = reader
        self.observed = True  # its statements go to statement_observer (a test's own checks: False)
        self._stages: set[str] = set()  # execute_rows' staging tables known to exist
        self._staged_now: set[str] = set()  # those created in the running transaction
        conn.adapters.register_loader("numeric", IntNumericLoader)

    @classmethod
    def connect(cls, url: str, *, reader: bool = False, application_name: str = "flowtrack") -> PgConnection:
        conn = psycopg.connect(
            url, autocommit=True, application_name=application_name, cursor_factory=Cursor, options=SESSION_OPTIONS
        )
        return cls(conn, reader=reader)

    def execute(self, sql: str, params: Params = None) -> Cursor:
        text, values = translate(sql, self.reader).bind(params)
        cursor = self.raw.cursor()
        assert isinstance(cursor, Cursor)
        _check_text(values.values() if isinstance(values, dict) else values)
        if self.observed:
            observe(text)
        cursor.execute(text, values)
        self._ended(text)
        if text.endswith(" RETURNING cid") and text.lstrip().startswith("INSERT INTO campaigns "):
            row = cursor.fetchone()
            cursor.lastrowid = None if row is None else int(row[0])
        return cursor

    def execute_text(self, text: str, values: Mapping[str, Any]) -> Cursor:
        """Run a statement compiled for PostgreSQL by SQLAlchemy (store/sql.py):
        its text as it is, its values by name."""
        cursor = self.raw.cursor()
        assert isinstance(cursor, Cursor)
        _check_text(values.values())
        if self.observed:
            observe(text)
        cursor.execute(text, values)
        return cursor

    def executemany_text(self, text: str, rows: Sequence[Mapping[str, Any]]) -> Cursor:
        """execute_text for many rows of values."""
        cursor = self.raw.cursor()
        assert isinstance(cursor, Cursor)
        for values in rows:
            _check_text(values.values())
        if rows:
            if self.observed:
                observe(text)
            cursor.executemany(text, rows)
        return cursor

    def executemany(self, sql: str, rows: Iterable[Params]) -> Cursor:
        statement = translate(sql, self.reader)
        cursor = self.raw.cursor()
        assert isinstance(cursor, Cursor)
        bound = [statement.bind(row) for row in rows]
        batch = [values for _, values in bound]
        for values in batch:
            _check_text(values.values() if isinstance(values, dict) else values)
        if batch:
            if self.observed:
                observe(bound[0][0])
            cursor.executemany(bound[0][0], batch)
        return cursor

    def execute_rows(self, target: Rows, rows: Sequence[Sequence[object]]) -> None:
        """db.execute_rows on PostgreSQL. A few rows: one multi-row VALUES
        statement (one round trip). More: by COPY, straight into the table
        for a plain insert; for an upsert (a conflict clause), into a
        temporary staging table of this session, then `INSERT ... SELECT`
        from it with the conflict clause, in one statement that also empties
        it. Measured on 1,000 rows of 7 columns: 1.2 ms of client CPU,
        against 6 ms as one statement with a typed array per column (psycopg
        quotes every array element in Python) and 14 ms with executemany
        (scripts/bench_pg.py has the whole picture)."""
        if not rows:
            return
        if len(rows) <= _FEW_ROWS:
            text = _multi_row(target, len(rows))
            values = [v for r in rows for v in r]
            _check_text(values)
            if self.observed:
                observe(text)
            self.raw.execute(text, values)
            return
        outside = not self.in_transaction
        try:
            with self.raw.transaction() if outside else contextlib.nullcontext():
                if target.conflict is None:
                    copy, stands_for = _copy_into(target)
                    self._copy(copy, rows)
                    if self.observed:
                        observe(stands_for)  # what the COPY does
                    return
                stage, create, copy_stage, upsert = _staged(target)
                if stage not in self._stages:
                    self.raw.execute(create)
                    self._staged_now.add(stage)
                self._copy(copy_stage, rows)
                if self.observed:
                    observe(upsert)
                self.raw.execute(upsert)
        except psycopg.DataError as error:
            if "NUL" in str(error):  # psycopg refuses it before it leaves
                raise _nul_error() from error
            raise
        except BaseException:
            if outside:
                self._staged_now.clear()
            raise
        if outside:
            self._ended("COMMIT")

    def control(self, statement: str) -> None:
        """Run a transaction-control statement as it is (BEGIN: READ
        COMMITTED, the writer's; COMMIT, ROLLBACK, SAVEPOINT, RELEASE,
        ROLLBACK TO), keeping track of the staging tables it keeps or undoes."""
        if self.observed:
            observe(statement)
        self.raw.execute(statement)
        self._ended(statement)

    def _ended(self, statement: str) -> None:
        """Keep track of the staging tables that exist: those created in a
        transaction that committed last the session; a rollback (to a
        savepoint too) may have undone those created since, and so may a
        COMMIT that failed (forgotten at the next BEGIN)."""
        if statement in ("COMMIT", "END"):
            self._stages |= self._staged_now
            self._staged_now.clear()
        elif statement.startswith(("ROLLBACK", "BEGIN")):
            self._staged_now.clear()

    def _copy(self, statement: psql.Composed, rows: Sequence[Sequence[object]]) -> None:
        with self.raw.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)

    def rows_by_keys(self, lookup: Lookup[Any], keys: Collection[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
        """db.rows_by_keys on PostgreSQL: one probe of the lookup's source
        per key, in one statement (each probe a LATERAL subquery the planner
        cannot turn into a scan of the table, whatever it knows or guesses of
        its size). The keys go as one JSON array: json.dumps is C, where
        psycopg dumps an array element by element in Python."""
        unique = list(dict.fromkeys(keys))
        for at in range(0, len(unique), _KEYS_PER_QUERY):
            some = unique[at : at + _KEYS_PER_QUERY]
            payload = json.dumps(some, ensure_ascii=False, separators=(",", ":"))
            if "\\u0000" in payload:  # a NUL (or the text \u0000): look closer
                _check_text(value for one in some for value in one)
            types = tuple("bigint" if isinstance(value, int) else "text" for value in some[0])
            query = probes_text(lookup, types)
            if self.observed:
                observe(query)
            yield from self.raw.execute(query, {"keys": payload})

    def __enter__(self) -> PgConnection:
        return self

    def __exit__(self, kind: object, *_rest: object) -> None:
        """As sqlite3's: ends a transaction the block opened (commit, or
        rollback on an exception); the connection stays open."""
        if self.in_transaction:
            end = "ROLLBACK" if kind is not None else "COMMIT"
            self.raw.execute(end)
            self._ended(end)

    def create_function(self, *_args: Any, **_kwargs: Any) -> None:
        """SQLite user functions exist in the schema instead (ft_fold)."""

    def getlimit(self, _category: int) -> int:
        return 32766  # bound parameters per statement (PostgreSQL allows 65535)

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != pq.TransactionStatus.IDLE

    def interrupt(self) -> None:
        self.raw.cancel_safe()

    def close(self) -> None:
        self.raw.close()

    @property
    def closed(self) -> bool:
        return self.raw.closed
