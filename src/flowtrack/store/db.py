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
import time
from collections.abc import Collection, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import sqlite_utils

from flowtrack.domain.campaigns import fold

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
    conn.execute("PRAGMA foreign_keys=OFF")
    conn.execute("PRAGMA cache_size=-65536")  # 64 MiB
    return conn


# Bound parameters in one statement, at most: SQLite's own limit is 32766
# since 3.32 and 999 before; execute_rows asks the connection.
_MAX_PARAMETERS = 16384
# Up to this many rows go in one statement of exactly that many rows; more go
# in chunks of powers of two. Either way few shapes recur, and the writer's
# statement cache (WRITER_CACHED_STATEMENTS) keeps them prepared.
_EXACT_ROWS = 64
WRITER_CACHED_STATEMENTS = 512


def execute_rows(conn: sqlite3.Connection, head: str, rows: Sequence[Sequence[object]], tail: str = "") -> None:
    """Run `head VALUES (?, ...), (?, ...), ... tail` over every row, as one
    or a few multi-row statements instead of `executemany`.

    executemany binds and steps its statement once per row; each step lets go
    of the GIL, and under load the writer thread then waits for the event loop
    to hand it back, once per row. One multi-row statement binds and steps
    once. Measured on 30-row counter upserts: 26 instead of 88 µs, and 123
    instead of 355 µs with another thread keeping the GIL 70% busy (the
    writer's situation under load; scripts/bench_ingest.py has the end-to-end
    figures). `tail` may be an ON CONFLICT clause.
    """
    if not rows:
        return
    own = getattr(conn, "execute_rows", None)
    if own is not None:  # PostgreSQL's connection (store/pg/conn.py) has its own way
        own(head, rows, tail)
        return
    width = len(rows[0])
    limit = min(_MAX_PARAMETERS, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
    most = max(1, limit // width)
    start = 0
    while start < len(rows):
        left = len(rows) - start
        size = min(most, left if left <= _EXACT_ROWS else 1 << (left.bit_length() - 1))
        chunk = rows[start : start + size]
        conn.execute(_multi_row(head, width, size, tail), [value for row in chunk for value in row])
        start += size


# Values per IN (...) list of rows_by_keys, under SQLite's oldest limit of
# 999 parameters: 250 of the first key column, 100 of a middle one, 500 of
# the last.
_FIRST_CHUNK = 250
_MIDDLE_CHUNK = 100
_LAST_CHUNK = 500


def rows_by_keys(
    conn: sqlite3.Connection, columns: str, source: str, key: tuple[str, ...], keys: Collection[tuple[Any, ...]]
) -> Iterator[tuple[Any, ...]]:
    """The rows of `SELECT columns FROM source` whose `key` expressions (a
    unique key of `source`, two or three columns) equal one of `keys`, each
    as (*key values, *columns), in no particular order.

    Here one query per chunk of each key column's values, `k1 IN (...) AND
    k2 IN (...)`, which SQLite runs as probes of the key's index; it may also
    find combinations that are not in `keys` (a recipient of another
    campaign of the batch), skipped. PostgreSQL's connection has its own way
    (one probe per key, whatever the planner knows of the tables:
    store/pg/conn.py)."""
    own = getattr(conn, "rows_by_keys", None)
    if own is not None:
        yield from own(columns, source, key, keys)
        return
    wanted = keys if isinstance(keys, set | frozenset) else set(keys)
    if not wanted:
        return
    width = len(key)
    sizes = [_FIRST_CHUNK] + [_MIDDLE_CHUNK] * (width - 2) + [_LAST_CHUNK]
    chunked = []
    for i, size in enumerate(sizes):
        values = sorted({k[i] for k in wanted})
        chunked.append([values[at : at + size] for at in range(0, len(values), size)])
    selected = ", ".join(key)
    for chunks in itertools.product(*chunked):
        where = " AND ".join(
            f"{name} IN ({','.join('?' * len(chunk))})" for name, chunk in zip(key, chunks, strict=True)
        )
        query = f"SELECT {selected}, {columns} FROM {source} WHERE {where}"
        for row in conn.execute(query, [value for chunk in chunks for value in chunk]):
            if row[:width] in wanted:
                yield row


@functools.lru_cache(maxsize=WRITER_CACHED_STATEMENTS)
def _multi_row(head: str, width: int, rows: int, tail: str) -> str:
    row = "(" + ",".join("?" * width) + ")"
    return f"{head} VALUES {','.join([row] * rows)} {tail}".rstrip()


def migrations() -> list[tuple[int, str, str]]:
    """The known migrations, (version, name, sql), in order."""
    found = []
    folder = resources.files("flowtrack.store") / "migrations"
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version, _, name = entry.name.removesuffix(".sql").partition("_")
            found.append((int(version), name, entry.read_text()))
    return sorted(found)


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Apply the migrations not applied yet, each in its own transaction, and
    record them in the schema_migrations table. Returns the versions applied.

    Safe when two processes migrate the same file at once (a server starting
    while `flowtrack keys` runs): whether a version is applied is read again
    inside its `BEGIN IMMEDIATE` transaction, so each is applied exactly once."""
    # In a write transaction from the start: a deferred one that read the
    # schema and then wrote would fail at once (SQLITE_BUSY, no waiting) if
    # another connection wrote in between.
    conn.execute("BEGIN IMMEDIATE")
    try:
        sqlite_utils.Database(conn).table("schema_migrations").create(
            {"version": int, "name": str, "applied_at": int}, pk="version", if_not_exists=True
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    # The backfill of migration 0012 (campaign_name_folded) folds in Python.
    conn.create_function("ft_fold", 1, fold, deterministic=True)
    done = []
    for version, name, sql in migrations():
        if _applied(conn, version):
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            if _applied(conn, version):  # another process applied it meanwhile
                conn.execute("ROLLBACK")
                continue
            for statement in sqlite3_statements(sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (version, name, int(time.time() * 1_000_000)),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        done.append(version)
    return done


def _applied(conn: sqlite3.Connection, version: int) -> bool:
    return conn.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (version,)).fetchone() is not None


def sqlite3_statements(sql: str) -> list[str]:
    """Split a migration script into complete statements."""
    statements, buffer = [], ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip().strip(";").strip() and not buffer.strip().startswith("--"):
        statements.append(buffer.strip())
    return statements


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
    return conn


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
