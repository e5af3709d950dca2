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
from psycopg import pq
from psycopg.types.numeric import NumericLoader

from flowtrack.domain.errors import InvalidArgument, Violation

Params = Sequence[Any] | Mapping[str, Any] | None

# Every flowtrack session plans each statement for its parameters and the
# tables as they are now. A generic plan (psycopg prepares a statement after
# 5 runs; PostgreSQL may then keep one plan for every later run) is chosen
# while the tables are small and kept as they grow: a scan of the business's
# events that was cheap at 2,000 rows is then run at 1M, on every batch.
SESSION_OPTIONS = "-c plan_cache_mode=force_custom_plan"


class _IntNumericLoader(NumericLoader):
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


_INSERT_HEAD = re.compile(r"\s*INSERT INTO (\w+)(?: AS \w+)? \(([^)]*)\)\s*$")
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


def keys_query(columns: str, source: str, key: tuple[str, ...], types: tuple[str, ...]) -> str:
    """The statement of PgConnection.rows_by_keys: its one parameter is a
    JSON array of keys, arrays of values of the SQL `types`."""
    values = ", ".join(f"(p->>{i})::{kind} AS ft_k{i}" for i, kind in enumerate(types))
    match = " AND ".join(f"{name} = w.ft_k{i}" for i, name in enumerate(key))
    picked = ", ".join(f"w.ft_k{i}" for i in range(len(key)))
    return (
        f"SELECT {picked}, r.* FROM (SELECT {values} FROM json_array_elements(%s::json) AS p) AS w"
        f" CROSS JOIN LATERAL (SELECT {columns} FROM {source} WHERE {match} OFFSET 0) AS r"
    )


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
        conn.adapters.register_loader("numeric", _IntNumericLoader)

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

    def execute_rows(self, head: str, rows: Sequence[Sequence[object]], tail: str = "") -> None:
        """db.execute_rows on PostgreSQL. A few rows: one multi-row VALUES
        statement (one round trip). More: by COPY, straight into the table
        for a plain insert; for an upsert (a `tail`), into a temporary
        staging table of this session, then `INSERT ... SELECT` from it with
        the tail, in one statement that also empties it. Measured on 1,000
        rows of 7 columns: 1.2 ms of client CPU, against 6 ms as one statement
        with a typed array per column (psycopg quotes every array element in
        Python) and 14 ms with executemany (scripts/bench_pg.py has the whole
        picture)."""
        if not rows:
            return
        if len(rows) <= _FEW_ROWS:
            row = "(" + ",".join("?" * len(rows[0])) + ")"
            self.execute(f"{head} VALUES {','.join([row] * len(rows))} {tail}".rstrip(), [v for r in rows for v in r])
            return
        target = _INSERT_HEAD.match(head)
        if target is None:
            raise ValueError(f"execute_rows needs 'INSERT INTO table (columns)': {head!r}")
        table, columns = target.group(1), ", ".join(name.strip() for name in target.group(2).split(","))
        outside = not self.in_transaction
        try:
            with self.raw.transaction() if outside else contextlib.nullcontext():
                if not tail:
                    self._copy(f"COPY {table} ({columns}) FROM STDIN", rows)
                    if self.observed:
                        observe(f"{head} VALUES ({', '.join(['%s'] * len(rows[0]))})")  # what the COPY does
                    return
                stage = f"ft_stage_{table}_{zlib.crc32(columns.encode()):08x}"
                if stage not in self._stages:
                    # ON COMMIT DELETE ROWS: a temporary table is never vacuumed,
                    # so the rows deleted below must not outlive the transaction.
                    self.raw.execute(
                        f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS"
                        f" AS SELECT {columns} FROM {table} WITH NO DATA"
                    )
                    self._staged_now.add(stage)
                self._copy(f"COPY {stage} FROM STDIN", rows)
                upsert = f"WITH staged AS (DELETE FROM {stage} RETURNING *) {head} SELECT {columns} FROM staged {tail}"
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

    def _copy(self, statement: str, rows: Sequence[Sequence[object]]) -> None:
        with self.raw.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)

    def rows_by_keys(
        self, columns: str, source: str, key: tuple[str, ...], keys: Collection[tuple[Any, ...]]
    ) -> Iterator[tuple[Any, ...]]:
        """db.rows_by_keys on PostgreSQL: one probe of `source` per key, in
        one statement (each probe a LATERAL subquery the planner cannot turn
        into a scan of the table, whatever it knows or guesses of its size).
        The keys go as one JSON array: json.dumps is C, where psycopg dumps
        an array element by element in Python."""
        unique = list(dict.fromkeys(keys))
        for at in range(0, len(unique), _KEYS_PER_QUERY):
            some = unique[at : at + _KEYS_PER_QUERY]
            payload = json.dumps(some, ensure_ascii=False, separators=(",", ":"))
            if "\\u0000" in payload:  # a NUL (or the text \u0000): look closer
                _check_text(value for one in some for value in one)
            types = tuple("bigint" if isinstance(value, int) else "text" for value in some[0])
            query = keys_query(columns, source, key, types)
            if self.observed:
                observe(query)
            yield from self.raw.execute(query, [payload])

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
