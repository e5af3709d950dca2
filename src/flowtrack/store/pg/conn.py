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

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import pq
from psycopg.types.numeric import NumericLoader

from flowtrack.domain.errors import InvalidArgument, Violation

Params = Sequence[Any] | Mapping[str, Any] | None


class _IntNumericLoader(NumericLoader):
    """numeric as int when it is whole (sum() of bigint columns), else float."""

    def load(self, data: Any) -> Any:
        value = super().load(data)
        if isinstance(value, Decimal):
            return int(value) if value == value.to_integral_value() else float(value)
        return value


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
    ("instr(ft_fold(c.name), ?) > 0", "strpos(ft_fold(c.name), ?) > 0"),
    ("json_each(c.labels) j", "json_each_text(c.labels::json) j"),
)
_INDEXED_BY = re.compile(r"\s+INDEXED BY \w+")
_TOKENS = re.compile(r"'(?:[^']|'')*'|\?(\d+)|\?|(?<![:\w]):([A-Za-z_]\w*)|%")
_COUNT_OF = re.compile(r"^SELECT count\(\*\) FROM \((.*)\)$", re.S)


@functools.lru_cache(maxsize=2048)
def translate(sql: str, reader: bool) -> tuple[str, str]:
    """The PostgreSQL text of a SQLite statement, and how its parameters are
    passed: 'seq' (positional), 'num' (`?N`: a dict p1, p2, ...) or 'named'."""
    stripped = sql.strip()
    upper = stripped.upper()
    if upper == "BEGIN":
        return ("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY" if reader else "BEGIN"), "seq"
    if upper in ("BEGIN IMMEDIATE", "BEGIN DEFERRED", "BEGIN EXCLUSIVE"):
        return "BEGIN", "seq"
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

    return _TOKENS.sub(swap, text), mode


def _check_text(values: Iterable[Any]) -> None:
    """PostgreSQL text cannot hold U+0000 (SQLite's can): a request carrying
    one is INVALID_ARGUMENT on this backend, never an unknown error."""
    for value in values:
        if isinstance(value, str) and "\x00" in value:
            raise InvalidArgument(
                [Violation("", "text containing NUL (U+0000) cannot be stored or looked up", "NUL_CHARACTER")],
                "text containing NUL (U+0000) cannot be stored or looked up on this server's database (PostgreSQL)",
            )


def _params(mode: str, params: Params) -> Any:
    if params is None:
        return []
    if mode == "num" and not isinstance(params, Mapping):
        return {f"p{i}": value for i, value in enumerate(params, 1)}
    if isinstance(params, Mapping):
        return dict(params)
    return list(params)


class PgConnection:
    """The store's DB-API surface over one psycopg connection (autocommit:
    transactions are the caller's BEGIN / COMMIT, as with SQLite)."""

    def __init__(self, conn: psycopg.Connection[Any], *, reader: bool = False) -> None:
        self.raw = conn
        self.reader = reader
        conn.adapters.register_loader("numeric", _IntNumericLoader)

    @classmethod
    def connect(cls, url: str, *, reader: bool = False, application_name: str = "flowtrack") -> PgConnection:
        conn = psycopg.connect(url, autocommit=True, application_name=application_name, cursor_factory=Cursor)
        return cls(conn, reader=reader)

    def execute(self, sql: str, params: Params = None) -> Cursor:
        text, mode = translate(sql, self.reader)
        cursor = self.raw.cursor()
        assert isinstance(cursor, Cursor)
        values = _params(mode, params)
        _check_text(values.values() if isinstance(values, dict) else values)
        cursor.execute(text, values)
        if text.endswith(" RETURNING cid") and text.lstrip().startswith("INSERT INTO campaigns "):
            row = cursor.fetchone()
            cursor.lastrowid = None if row is None else int(row[0])
        return cursor

    def executemany(self, sql: str, rows: Iterable[Params]) -> Cursor:
        text, mode = translate(sql, self.reader)
        cursor = self.raw.cursor()
        assert isinstance(cursor, Cursor)
        batch = [_params(mode, row) for row in rows]
        for values in batch:
            _check_text(values.values() if isinstance(values, dict) else values)
        if batch:
            cursor.executemany(text, batch)
        return cursor

    def __enter__(self) -> PgConnection:
        return self

    def __exit__(self, kind: object, *_rest: object) -> None:
        """As sqlite3's: ends a transaction the block opened (commit, or
        rollback on an exception); the connection stays open."""
        if self.in_transaction:
            self.raw.execute("ROLLBACK" if kind is not None else "COMMIT")

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
