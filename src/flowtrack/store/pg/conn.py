"""The store's DB-API surface on a psycopg 3 connection (PostgreSQL).

The store's statements are SQLAlchemy Core constructs compiled for
PostgreSQL (store/sql.py) and run here as they were compiled
(`execute_text`, `executemany_text`); nothing rewrites SQL text. What differs
from SQLite lives here, named for its job: the bulk write (`execute_rows`:
one VALUES statement for a few rows, COPY for more, upserts through a
staging table), the key look-ups (`rows_by_keys`: one index probe per key),
transaction control (`control`), and the NUL guard (PostgreSQL text cannot
hold U+0000: INVALID_ARGUMENT before the database). `execute` runs text in
PostgreSQL's own dialect with psycopg's placeholders (transaction control,
the tests' own checks). Numeric results (PostgreSQL's sum of bigint) come
back as int, as SQLite's do.
"""

from __future__ import annotations

import contextlib
import functools
import json
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

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
    """The cursor of a PgConnection."""


_KEYS_PER_QUERY = 10_000
_FEW_ROWS = 16  # execute_rows: up to this many rows in one VALUES statement, more by COPY
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
        """Run text in PostgreSQL's own dialect, with psycopg's placeholders
        (transaction control; the tests' own checks). The store's statements
        come compiled by SQLAlchemy through `execute_text`."""
        cursor = self.raw.cursor()
        assert isinstance(cursor, Cursor)
        if params is not None:
            _check_text(params.values() if isinstance(params, Mapping) else params)
        if self.observed:
            observe(sql)
        cursor.execute(sql, params)
        self._ended(sql.strip().upper())
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
        """`execute` for many rows of parameters."""
        cursor = self.raw.cursor()
        assert isinstance(cursor, Cursor)
        batch = list(rows)
        for values in batch:
            if values is not None:
                _check_text(values.values() if isinstance(values, Mapping) else values)
        if batch:
            if self.observed:
                observe(sql)
            cursor.executemany(sql, batch)  # type: ignore[arg-type]
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
