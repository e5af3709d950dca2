"""Statements written once, as SQLAlchemy Core constructs, run on the
store's own DB-API connections (sqlite3, or store/pg/conn.py's PgConnection).

The store keeps its connections (sqlite3's C loop and psycopg's COPY are the
speed of ingest and of the reports); what it takes from SQLAlchemy is the
statement: written once in Python over the tables of store/schema.py,
compiled by SQLAlchemy for each dialect, never edited as text.

- `run(conn, statement, values)` runs a statement with the caller's values
  (a dict keyed by the names of its `bindparam`s) and returns the cursor;
  `run_many` is `executemany`; `one`, `scalar` and `records` read.
- A statement is compiled once per dialect (kept while the statement object
  lives: statements are module constants, or built per request and then
  compiled per request, `cache=False`). The values a statement binds itself
  (the domain's constants: `messages.c.status == Status.SUCCESS` binds 5)
  are kept with the compiled text and merged under the caller's.
- A list goes in an expanding `bindparam` (`column.in_(bindparam("ids",
  expanding=True))`); SQLAlchemy itself expands it for the values of each
  call (`construct_expanded_state`).
- `records(conn, statement, values, Record)` gives each row as a `Record`
  (a NamedTuple whose fields are the statement's columns, in order: checked
  when it is compiled), so no code outside the store reads a row by position.

Text that differs between the backends is not here: a construct per backend
with `@compiles` (store/dialects.py) or a small module per backend named for
its job (the bulk write, commit notification, locks).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

SQLITE: Dialect = sqlite.dialect(paramstyle="named")
POSTGRESQL: Dialect = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]  # pyformat: %(name)s

Values = Mapping[str, Any]
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Compiled:
    """One statement as one dialect runs it."""

    text: str
    own: dict[str, Any]  # the values the statement binds itself (constants)
    expanding: bool  # holds a list to expand per call
    compiled: SQLCompiler
    columns: tuple[str, ...]  # a SELECT's (or RETURNING's) column names
    lists: tuple[str, ...] = ()  # its expanding parameters, if the expansion may be kept per shape
    expanded: dict[tuple[int, ...], tuple[str, dict[str, tuple[str, ...]]]] = field(default_factory=dict)

    def bind(self, values: Values | None) -> tuple[str, dict[str, Any]]:
        merged = {**self.own, **values} if values else dict(self.own)
        if not self.expanding:
            return self.text, merged
        if not self.lists:  # a value rendered into the text (literal_execute): expanded every call
            state = self.compiled.construct_expanded_state(merged)
            return state.statement, dict(state.parameters)
        # SQLAlchemy expands the lists once per shape (the length of each
        # list); a call with the same lengths reuses its text and names.
        lists = {name: merged.pop(name) for name in self.lists}
        shape = tuple(len(value) for value in lists.values())
        known = self.expanded.get(shape)
        if known is None:
            state = self.compiled.construct_expanded_state({**merged, **lists})
            known = (state.statement, {name: tuple(state.parameter_expansion[name]) for name in self.lists})
            if len(self.expanded) >= _SHAPES_PER_STATEMENT:
                self.expanded.clear()
            self.expanded[shape] = known
        text, names = known
        for name, value in lists.items():
            flat = [part for item in value for part in item] if value and isinstance(value[0], tuple) else value
            merged.update(zip(names[name], flat, strict=True))
        return text, merged


# statement id -> (the statement, its compiled form per dialect name). The
# statement is held so that its id is not reused while the entry lives.
_CACHE: dict[tuple[int, str], tuple[ClauseElement, Compiled]] = {}
_CACHE_LIMIT = 4096
_SHAPES_PER_STATEMENT = 256  # expanded texts kept per statement (list lengths seen)


class PerDialect(ClauseElement):
    """A statement whose construct differs by dialect but not its meaning:
    today the dialects' own `insert()` (for `on_conflict_do_nothing` and
    `on_conflict_do_update`, the same API on both). `insert_on_both(build)`
    makes one from a function of the dialect's `insert`."""

    __visit_name__ = "per_dialect"
    inherit_cache = False

    def __init__(self, sqlite_statement: ClauseElement, postgresql_statement: ClauseElement) -> None:
        self.by_name = {"sqlite": sqlite_statement, "postgresql": postgresql_statement}


def insert_on_both(build: Callable[[Callable[..., Any]], ClauseElement]) -> PerDialect:
    """`build(insert)` with each dialect's `insert` (sqlite.insert,
    postgresql.insert): e.g. `lambda insert: insert(t).on_conflict_do_nothing()`."""
    return PerDialect(build(sqlite.insert), build(postgresql.insert))


def dialect_of(conn: Any) -> Dialect:
    return SQLITE if isinstance(conn, sqlite3.Connection) else POSTGRESQL


def compile_for(statement: ClauseElement, dialect: Dialect, *, cache: bool = True) -> Compiled:
    key = (id(statement), dialect.name)
    if cache:
        hit = _CACHE.get(key)
        if hit is not None and hit[0] is statement:
            return hit[1]
    chosen = statement.by_name[dialect.name] if isinstance(statement, PerDialect) else statement
    compiled = chosen.compile(dialect=dialect)
    assert isinstance(compiled, SQLCompiler)
    # The values bound by the statement itself (a constant, None included);
    # a bare `bindparam("x")` is required: the caller's.
    own = {name: bind.value for bind, name in compiled.bind_names.items() if not bind.required}
    columns = tuple(str(column[0]) for column in getattr(compiled, "_result_columns", ()) or ())
    post = compiled.post_compile_params
    keep = all(bind.expanding and not bind.literal_execute for bind in post)
    lists = tuple(sorted(compiled.bind_names[bind] for bind in post)) if keep else ()
    result = Compiled(str(compiled), own, bool(post), compiled, columns, lists)
    if cache:
        if len(_CACHE) >= _CACHE_LIMIT:
            _CACHE.clear()
        _CACHE[key] = (statement, result)
    return result


def text_of(statement: ClauseElement, conn: Any) -> str:
    """The text a connection runs for a statement (for EXPLAIN, tests, logs)."""
    return compile_for(statement, dialect_of(conn)).text


def run(conn: Any, statement: ClauseElement, values: Values | None = None, *, cache: bool = True) -> Any:
    """Run a statement; the DB-API cursor (rowcount, fetchone, iteration)."""
    text, params = compile_for(statement, dialect_of(conn), cache=cache).bind(values)
    if isinstance(conn, sqlite3.Connection):
        return conn.execute(text, params)
    return conn.execute_text(text, params)


def run_many(conn: Any, statement: ClauseElement, rows: Iterable[Values]) -> Any:
    """`executemany` of a statement without lists, a dict of values per row."""
    compiled = compile_for(statement, dialect_of(conn))
    assert not compiled.expanding, "run_many takes no expanding bindparam"
    own = compiled.own
    batch = [{**own, **row} for row in rows] if own else [dict(row) for row in rows]
    if isinstance(conn, sqlite3.Connection):
        return conn.executemany(compiled.text, batch)
    return conn.executemany_text(compiled.text, batch)


def one(conn: Any, statement: ClauseElement, values: Values | None = None) -> Any:
    """The first row, or None."""
    return run(conn, statement, values).fetchone()


def scalar(conn: Any, statement: ClauseElement, values: Values | None = None) -> Any:
    """The first column of the first row, or None."""
    row = run(conn, statement, values).fetchone()
    return None if row is None else row[0]


def records(
    conn: Any, statement: ClauseElement, values: Values | None, record: type[R], *, cache: bool = True
) -> Iterator[R]:
    """Each row as a `record`: a NamedTuple whose fields are the statement's
    columns, by name and in order (a mismatch is a programming error, raised
    at the first call)."""
    compiled = compile_for(statement, dialect_of(conn), cache=cache)
    fields = getattr(record, "_fields", None)
    if fields is not None and tuple(fields) != compiled.columns:
        raise TypeError(f"{record.__name__} has fields {fields}, the statement gives {compiled.columns}")
    text, params = compiled.bind(values)
    cursor = conn.execute(text, params) if isinstance(conn, sqlite3.Connection) else conn.execute_text(text, params)
    make = record._make  # type: ignore[attr-defined]
    return map(make, cursor)
