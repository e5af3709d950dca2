"""Opening the SQLite database, its settings, and its migrations.

The write connection belongs to the writer thread (store/writer.py); readers
open their own read-only connections. WAL mode lets them read a committed
snapshot while the writer commits.
"""

from __future__ import annotations

import functools
import itertools
import os
import sqlite3
import tempfile
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from sqlalchemy import Table, bindparam, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement, ColumnElement
from sqlalchemy.sql.selectable import FromClause

from flowtrack.store import schema

R = TypeVar("R")

# sqlite3 binds an exact int, float or str as it is, but looks every other
# value up in its adapter registry first: a miss builds a key, then looks for
# `__adapt__` and `__conform__` methods (about 3,300 instructions a value).
# None (NULL) and bytes (fingerprints) are a third of the writer's values:
# 20 misses an event were a fifth of the writer job's instructions. An
# adapter that gives the value back binds exactly what the miss bound.
sqlite3.register_adapter(type(None), {}.get)  # type: ignore[arg-type]  # {}.get(None) is None: NULL
sqlite3.register_adapter(bytes, bytes)  # bytes(b) is b: a BLOB

# synchronous=FULL keeps acknowledged events through an OS crash; with group
# commit it costs nothing measurable (LIMITS.md). NORMAL keeps them through a
# process kill only.
DURABILITY = {"full": "FULL", "normal": "NORMAL"}


def connect(path: str | Path, *, durability: str = "full", readonly: bool = False) -> sqlite3.Connection:
    """A connection with flowtrack's settings. Autocommit mode: the caller
    issues BEGIN / COMMIT itself."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None)
    else:
        conn = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None, cached_statements=WRITER_CACHED_STATEMENTS
        )
    # First, so that the journal_mode switch below waits for a lock too.
    conn.execute("PRAGMA busy_timeout=10000")
    if not readonly:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA journal_size_limit=67108864")  # 64 MiB: the WAL is cut back to it after a checkpoint
        conn.execute(f"PRAGMA synchronous={DURABILITY[durability]}")
        # A freed cell is zeroed in its page (no extra I/O): the free space of
        # a page never keeps an old copy of a row (an erasure relies on it:
        # store/sqlite/scrub.py).
        conn.execute("PRAGMA secure_delete=FAST")
    conn.execute("PRAGMA foreign_keys=OFF")
    conn.execute("PRAGMA cache_size=-65536")  # 64 MiB
    return conn


# Bound parameters in one statement, at most: SQLite's own limit is 32766
# since 3.32 and 999 before; execute_rows asks the connection.
_MAX_PARAMETERS = 16384
# Rows per statement at most: each row count is its own statement, compiled
# by SQLAlchemy once (the first time, inside a write: about 0.5 ms a row at
# 25 columns), so a cap keeps the compiling a fresh server does small (127
# rows' worth per table instead of 1,023) for a few more statements a batch.
_MOST_ROWS = 64
# Rows go in statements of a power of two rows each (37 rows: 32, 4 and 1):
# few shapes, each compiled once (SQLAlchemy takes milliseconds for a large
# one), and the writer's statement cache (WRITER_CACHED_STATEMENTS) keeps
# them prepared.
WRITER_CACHED_STATEMENTS = 512
# The positional form of SQLite's dialect: a multi-row statement's values go
# as one flat list, row after row (no dict per row on the hot path).
_SQLITE_POSITIONAL: Dialect = sqlite.dialect(paramstyle="qmark")


class Rows:
    """Where a bulk write goes: a table, the columns each row gives (in the
    table's order: the statement binds them so), and what to do on a
    conflict, a function of the dialect's insert (e.g. `lambda insert:
    insert.on_conflict_do_update(index_elements=[...], set_={...})`; the
    same API on both dialects). Made once, as a module constant."""

    __slots__ = ("columns", "conflict", "table")

    def __init__(self, table: Table, columns: Sequence[str], conflict: Callable[[Any], Any] | None = None) -> None:
        order = [c.name for c in table.columns if c.name in columns]
        if order != list(columns) or len(set(columns)) != len(columns):
            raise ValueError(f"Rows({table.name}): give the columns in the table's order: {order}")
        self.table = table
        self.columns = tuple(columns)
        self.conflict = conflict
        if table.metadata is schema.metadata:
            _ROWS.append(self)

    def statement(self, insert: Callable[..., Any], rows: int) -> ClauseElement:
        """The dialect's multi-row INSERT of `rows` rows (with the conflict
        clause): bind parameters named r<row>_<column>, in row order."""
        values: list[dict[str, Any]] = [{name: bindparam(f"r{i}_{name}") for name in self.columns} for i in range(rows)]
        statement = insert(self.table).values(values if rows > 1 else values[0])
        made: ClauseElement = self.conflict(statement) if self.conflict is not None else statement
        return made


# Every Rows on the schema's tables (the store modules' constants), for compile_rows_statements.
_ROWS: list[Rows] = []


def compile_rows_statements() -> int:
    """Compile every SQLite multi-row statement execute_rows can run (each
    Rows of the schema's tables, each row count it uses), largest first; how
    many were compiled by this call. The server runs it in a thread of its
    own as it starts (store/base.compile_ahead): SQLAlchemy takes 1-31 ms a
    statement (31 ms for 64 rows of the messages' 27 columns), about 0.2 s
    for all 70, which a fresh server otherwise spent inside its first writes
    (a quarter of the writer's time over its first 12,000 events, profiled)."""
    probe = sqlite3.connect(":memory:")
    try:
        limit = probe.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    finally:
        probe.close()
    done = 0
    for target in list(_ROWS):  # a copy: a thread may import a module that makes one
        most = _most_rows(target, limit)
        for size in (1 << k for k in range(most.bit_length() - 1, -1, -1)):
            before = _multi_row.cache_info().misses
            _multi_row(target, size)
            done += _multi_row.cache_info().misses - before
    return done


def _most_rows(target: Rows, limit: int) -> int:
    """The most rows one statement of `target` takes, under SQLite's parameter `limit`."""
    return max(1, min(_MOST_ROWS, min(_MAX_PARAMETERS, limit) // len(target.columns)))


def execute_rows(conn: sqlite3.Connection, target: Rows, rows: Sequence[Sequence[object]]) -> None:
    """Insert `rows` (tuples of `target.columns`) into `target.table`, as
    one or a few multi-row statements instead of `executemany`.

    executemany binds and steps its statement once per row; each step lets go
    of the GIL, and under load the writer thread then waits for the event loop
    to hand it back, once per row. One multi-row statement binds and steps
    once. Measured on 30-row counter upserts: 26 instead of 88 µs, and 123
    instead of 355 µs with another thread keeping the GIL 70% busy (the
    writer's situation under load; scripts/bench_ingest.py has the end-to-end
    figures). PostgreSQL's connection has its own way (COPY: store/pg/conn.py).
    """
    if not rows:
        return
    if not isinstance(conn, sqlite3.Connection):
        conn.execute_rows(target, rows)
        return
    most = _most_rows(target, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
    start = 0
    while start < len(rows):
        left = min(most, len(rows) - start)
        size = 1 << (left.bit_length() - 1)  # 37 rows: 32, 4, 1
        chunk = rows[start : start + size]
        conn.execute(_multi_row(target, size), [value for row in chunk for value in row])
        start += size


@functools.lru_cache(maxsize=WRITER_CACHED_STATEMENTS)
def _multi_row(target: Rows, rows: int) -> str:
    return str(target.statement(sqlite.insert, rows).compile(dialect=_SQLITE_POSITIONAL))


class Lookup(Generic[R]):
    """What `rows_by_keys` reads: `columns` of `source` (a table, or a join)
    whose `key` columns (a unique key of it, two or three columns) equal one
    of the keys given, each row as a `record` (a NamedTuple of the key's
    values, then the columns'). Made once, as a module constant."""

    __slots__ = ("columns", "expanded", "key", "make", "record", "source", "statement")

    def __init__(
        self,
        source: FromClause,
        key: Sequence[ColumnElement[Any]],
        columns: Sequence[ColumnElement[Any]],
        record: type[R],
    ) -> None:
        self.source = source
        self.key = tuple(key)
        self.columns = tuple(columns)
        self.record = record
        fields = getattr(record, "_fields", ())
        if len(fields) != len(self.key) + len(self.columns):
            raise TypeError(
                f"{record.__name__} has fields {fields} for {len(self.key)} keys and {len(self.columns)} columns"
            )
        self.make: Callable[[Any], R] = record._make  # type: ignore[attr-defined]
        # SQLite's: each key column's values in an IN list (expanded per call).
        self.statement = (
            select(*self.key, *self.columns)
            .select_from(source)
            .where(*[k.in_(bindparam(f"k{i}", expanding=True)) for i, k in enumerate(self.key)])
        )
        self.expanded: dict[tuple[int, ...], str] = {}  # SQLite's text per list lengths (_expanded)


# Values per IN (...) list of rows_by_keys, under SQLite's oldest limit of
# 999 parameters: 250 of the first key column, 100 of a middle one, 500 of
# the last.
_FIRST_CHUNK = 250
_MIDDLE_CHUNK = 100
_LAST_CHUNK = 500


def rows_by_keys(conn: sqlite3.Connection, lookup: Lookup[R], keys: Collection[tuple[Any, ...]]) -> Iterator[R]:
    """The rows of `lookup` whose key equals one of `keys`, each as its
    record (the key's values, then the columns), in no particular order.

    Here one query per chunk of each key column's values, `k1 IN (...) AND
    k2 IN (...)`, which SQLite runs as probes of the key's index; it may also
    find combinations that are not in `keys` (a recipient of another
    campaign of the batch), skipped. PostgreSQL's connection has its own way
    (one probe per key, whatever the planner knows of the tables:
    store/pg/conn.py)."""
    if not isinstance(conn, sqlite3.Connection):
        yield from map(lookup.make, conn.rows_by_keys(lookup, keys))
        return
    wanted = keys if isinstance(keys, set | frozenset) else set(keys)
    if not wanted:
        return
    width = len(lookup.key)
    sizes = [_FIRST_CHUNK] + [_MIDDLE_CHUNK] * (width - 2) + [_LAST_CHUNK]
    chunked = []
    for i, size in enumerate(sizes):
        values = sorted({k[i] for k in wanted})
        chunked.append([values[at : at + size] for at in range(0, len(values), size)])
    make = lookup.make
    for chunks in itertools.product(*chunked):
        lists = [_padded(chunk) for chunk in chunks]
        text = _expanded(lookup, tuple(map(len, lists)))
        for row in conn.execute(text, [value for values in lists for value in values]):
            if row[:width] in wanted:
                yield make(row)


def _expanded(lookup: Lookup[Any], shape: tuple[int, ...]) -> str:
    """`lookup.statement` as SQLite runs it with lists of `shape`'s lengths,
    its parameters positional (`?`, the lists' values one after the other):
    bound by position, a value costs the sqlite3 module no look-up of its
    name (named, about 2,000 instructions a value at 500 values). The
    statement is compiled once per Lookup; SQLAlchemy expands its lists
    once per shape (`construct_expanded_state`), and the text is kept."""
    text = lookup.expanded.get(shape)
    if text is None:
        compiled = _positional(lookup)
        lists = {f"k{i}": [None] * length for i, length in enumerate(shape)}
        state = compiled.construct_expanded_state(lists)
        order = [f"k{i}_{j}" for i, length in enumerate(shape) for j in range(1, length + 1)]
        if list(state.positiontup or ()) != order:  # pragma: no cover - a Lookup binds only its key lists
            raise TypeError(f"{lookup.record.__name__}: parameters {state.positiontup}, not {order[:4]}...")
        text = state.statement
        if len(lookup.expanded) >= _SHAPES_KEPT:
            lookup.expanded.clear()
        lookup.expanded[shape] = text
    return text


@functools.lru_cache(maxsize=64)
def _positional(lookup: Lookup[Any]) -> SQLCompiler:
    """`lookup.statement` compiled once for SQLite, positional, its lists
    left to expand per shape."""
    compiled = lookup.statement.compile(dialect=_SQLITE_POSITIONAL)
    names = [f"k{i}" for i in range(len(lookup.key))]
    if list(compiled.positiontup or ()) != names:  # pragma: no cover - a Lookup binds only its key lists
        raise TypeError(f"{lookup.record.__name__}: parameters {compiled.positiontup}, not {names}")
    return compiled  # type: ignore[return-value]


_SHAPES_KEPT = 256  # texts kept per Lookup (list lengths are powers of two: a few dozen at most)


def _padded(values: list[Any]) -> list[Any]:
    """`values` made a power of two long by repeating its last value: an `IN`
    list means the same with a value twice, and the statement's expanded
    text (store/sql.py keeps one per list length) is then one of a few."""
    size = 1 << (len(values) - 1).bit_length()
    return values + [values[-1]] * (size - len(values))


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Bring the database to flowtrack's schema (store/schema.py) with
    Alembic, on this connection, in one `BEGIN IMMEDIATE` transaction;
    a database of the previous release is adopted first (store/upgrade.py).
    Returns what was applied ('legacy N', then revisions).

    Safe when two processes migrate the same file at once (a server starting
    while `flowtrack keys` runs): the second waits for the first's
    transaction and then finds nothing to do."""
    from flowtrack.store import upgrade  # SQLAlchemy and Alembic: only when a database is opened

    return upgrade.upgrade(upgrade.sqlite_engine(conn))


def open_database(path: str | Path, *, durability: str = "full") -> sqlite3.Connection:
    """Create the file if needed, migrate it, and return the write connection.
    Raises StorageError with a one-line explanation when the path is not
    usable (see check_storage and explain)."""
    path = Path(path)
    check_storage(path)
    try:
        conn = connect(path, durability=durability)
    except sqlite3.Error as error:
        raise StorageError(f"cannot open database {path}: {explain(error)}") from error
    try:
        migrate(conn)
    except sqlite3.Error as error:
        conn.close()
        raise StorageError(f"cannot open database {path}: {explain(error)}") from error
    except sqlalchemy_errors() as error:
        conn.close()
        orig = error.orig
        reason = explain(orig) if isinstance(orig, sqlite3.Error) else str(orig)
        raise StorageError(f"cannot open database {path}: {reason}") from error
    return conn


def sqlalchemy_errors() -> type[Any]:
    """SQLAlchemy's wrapper of a driver's error (its `.orig`)."""
    from sqlalchemy.exc import DBAPIError

    return DBAPIError


class StorageError(OSError):
    """The database cannot be used as it is; the message says why, in one line."""


def check_storage(path: Path, *, min_free_bytes: int = 0) -> None:
    """Refuse, before SQLite is involved, what can be known to fail: a folder
    that is missing, not a folder or read-only (SQLite in WAL mode creates
    `<db>-wal` and `<db>-shm` beside the file), a database path that is a
    folder or a read-only file, and less than `min_free_bytes` free on the
    disk. Each is a StorageError saying it in one line.

    The checks write for real (a temporary file in the folder, the database
    opened for writing) instead of trusting permission bits, which root
    ignores; an immutable file (`chattr +i`) or a read-only mount is caught too."""
    folder = path.parent
    if not folder.exists():
        raise StorageError(f"cannot open database {path}: folder {folder} does not exist")
    if not folder.is_dir():
        raise StorageError(f"cannot open database {path}: {folder} is not a folder")
    if path.is_dir():
        raise StorageError(f"cannot open database {path}: it is a folder, not a file")
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".flowtrack-probe-"):
            pass
    except OSError as error:
        raise StorageError(
            f"cannot open database {path}: folder {folder} is not writable ({error.strerror or error}); "
            f"SQLite needs to create {path.name}-wal and {path.name}-shm beside the database"
        ) from error
    if path.exists():
        try:
            with open(path, "r+b"):
                pass
        except OSError as error:
            raise StorageError(
                f"cannot open database {path}: the file is not writable ({error.strerror or error})"
            ) from error
    if min_free_bytes > 0:
        stats = os.statvfs(folder)
        free = stats.f_bavail * stats.f_frsize
        if free < min_free_bytes:
            raise StorageError(
                f"cannot open database {path}: disk full: {free:,} bytes free in {folder}, "
                f"below the {min_free_bytes:,} needed to start (--min-free-bytes)"
            )


_EXPLANATIONS = {
    "SQLITE_FULL": "disk full (or the database reached its size limit)",
    "SQLITE_READONLY": "the database is read-only",
    "SQLITE_CANTOPEN": "SQLite cannot open the file or create its -wal/-shm files beside it",
    "SQLITE_NOTADB": "the file is not a SQLite database",
    "SQLITE_CORRUPT": "the database file is corrupt",
    "SQLITE_IOERR": "disk I/O error",
    "SQLITE_PERM": "permission denied",
    "SQLITE_BUSY": "the database is locked by another process",
}


def explain(error: sqlite3.Error) -> str:
    """What a SQLite error means for the person running flowtrack, in one line."""
    name = getattr(error, "sqlite_errorname", "") or ""
    for prefix, text in _EXPLANATIONS.items():
        if name == prefix or name.startswith(prefix + "_"):
            return f"{text} ({name}: {error})"
    return str(error)
