"""Opening the SQLite database, its settings, and its migrations.

The write connection belongs to the writer thread (store/writer.py); readers
open their own read-only connections. WAL mode lets them read a committed
snapshot while the writer commits.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import sqlite_utils

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
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA journal_size_limit=67108864")  # 64 MiB: the WAL is cut back to it after a checkpoint
        conn.execute(f"PRAGMA synchronous={DURABILITY[durability]}")
    conn.execute("PRAGMA busy_timeout=10000")
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
    record them in the schema_migrations table. Returns the versions applied."""
    db = sqlite_utils.Database(conn)
    if "schema_migrations" not in db.table_names():
        db.table("schema_migrations").create({"version": int, "name": str, "applied_at": int}, pk="version")
    applied = {row["version"] for row in db.table("schema_migrations").rows}
    done = []
    for version, name, sql in migrations():
        if version in applied:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
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
    Raises OSError / sqlite3.Error with a clear message when the path is not
    usable."""
    path = Path(path)
    if not path.parent.exists():
        raise OSError(f"folder {path.parent} does not exist")
    conn = connect(path, durability=durability)
    migrate(conn)
    return conn
