"""Bringing a database to flowtrack's schema (store/schema.py) with Alembic.

One migration history (store/alembic/versions/) for both backends, run on
the store's own connection: SQLite's write connection through a SQLAlchemy
engine that borrows it, PostgreSQL through `postgresql+psycopg`. All of it
(the legacy steps below, the stamp, every revision) is one transaction:

- SQLite: `BEGIN IMMEDIATE`, so two processes upgrading one file at once (a
  server starting while `flowtrack keys` runs) take turns and the second
  finds nothing to do; the server holds its owner lock (store/owner.py) too;
- PostgreSQL: `pg_advisory_xact_lock` on the key the previous release's
  migrations locked, so replicas starting at once (of this release or the
  previous one) migrate once.

A database made by the previous release has no `alembic_version` but a
`schema_migrations` table naming the versions of the SQL migrations it got
(store/legacy/: SQLite 1-11, PostgreSQL 1-5, the last of which is exactly
the baseline revision's schema). Adopting it runs the legacy steps it lacks,
then stamps it at the baseline, then upgrades it through what came after.
Its `schema_migrations` table is kept, as a record.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any

import sqlalchemy as sa

# Alembic says every step at INFO (its plugins as it is imported, "Context
# impl SQLiteImpl"...); flowtrack says what it applied, in one line, instead.
logging.getLogger("alembic").setLevel(logging.WARNING)

from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402
from alembic.runtime.migration import MigrationContext  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402
from sqlalchemy import event  # noqa: E402
from sqlalchemy.engine import Connection, Engine  # noqa: E402
from sqlalchemy.pool import NullPool, StaticPool  # noqa: E402

BASELINE = "0001"  # the revision whose schema is the last legacy migration's
LOCK_KEY = 7_361_011  # PostgreSQL advisory lock key of flowtrack's migrations (the previous release's too)
LEGACY_LAST = {"sqlite": 11, "postgresql": 5}
SCRIPTS = resources.files("flowtrack.store") / "alembic"  # env.py and versions/: the history
log = logging.getLogger(__name__)
# Alembic's `context` and `op` are module-wide: one run at a time per process
# (two databases upgraded by two threads at once take turns).
_ALEMBIC = threading.Lock()


def config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for flowtrack's history; `connection`, if
    given, is the one env.py runs on."""
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    """The newest revision of the history."""
    found = ScriptDirectory.from_config(config()).get_current_head()
    assert found is not None
    return found


def revisions() -> list[str]:
    """Every revision of the history, oldest (the baseline) first."""
    return [script.revision for script in reversed(list(ScriptDirectory.from_config(config()).walk_revisions()))]


def legacy_scripts(dialect: str) -> list[tuple[int, str, str]]:
    """The previous release's SQL migrations of `dialect` ('sqlite' or
    'postgresql'), (version, name, sql), in order: what adopting an older
    database still needs, and the tests' way to make one."""
    found = []
    for entry in (resources.files("flowtrack.store") / "legacy" / dialect).iterdir():
        if entry.name.endswith(".sql"):
            version, _, name = entry.name.removesuffix(".sql").partition("_")
            found.append((int(version), name, entry.read_text()))
    return sorted(found)


def sqlite_engine(conn: sqlite3.Connection) -> Engine:
    """An engine over the store's own SQLite connection (autocommit mode,
    from db.connect), whose transactions are `BEGIN IMMEDIATE`
    (SQLAlchemy's documented recipe for pysqlite). Closing its connections
    leaves the store's open; `dispose()` would close it: never call it."""
    engine = sa.create_engine("sqlite://", creator=lambda: conn, poolclass=StaticPool)

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def postgres_engine(url: str) -> Engine:
    """An engine over psycopg 3 connections to `url` (a postgresql:// URL or
    a libpq connection string, as the store takes it)."""
    import psycopg

    return sa.create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(url), poolclass=NullPool)


@contextmanager
def _driver_errors() -> Iterator[None]:
    """The driver's own error (sqlite3.Error, psycopg.Error) instead of
    SQLAlchemy's wrapper of it: what the store's callers catch and explain."""
    try:
        yield
    except sa.exc.DBAPIError as error:
        if isinstance(error.orig, Exception):
            raise error.orig from error
        raise


@contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that holds the migration lock; commits
    at the end, rolls back on an error."""
    with _driver_errors(), engine.connect() as connection, connection.begin():
        if connection.dialect.name == "postgresql":
            connection.execute(sa.select(sa.func.pg_advisory_xact_lock(LOCK_KEY)))
        yield connection


def upgrade(engine: Engine, target: str = "heads") -> list[str]:
    """Bring the database to `target` (the newest revision by default),
    adopting a database of the previous release first. Returns what was
    applied: 'legacy N' for each legacy step, then the revisions."""
    applied: list[str] = []
    with _locked(engine) as connection, _ALEMBIC:
        cfg = config(connection)
        cfg.attributes["applied"] = applied
        new = not sa.inspect(connection).get_table_names()
        if _adopt(connection, applied):
            command.stamp(cfg, BASELINE)
        command.upgrade(cfg, target)
    if applied:  # a new database's schema is no news (and a failed start says one line)
        (log.debug if new else log.info)("database schema: applied %s", ", ".join(applied))
    return applied


# The previous release's record of the SQL migrations a database got (kept,
# not flowtrack's schema: no MetaData holds it).
LEGACY_RECORD = sa.table("schema_migrations", sa.column("version"), sa.column("name"), sa.column("applied_at"))

# Tables that are not flowtrack's schema: SQLite's own, and the records of
# which migrations a database got (the previous release's, Alembic's).
NOT_SCHEMA = frozenset({"sqlite_sequence", "schema_migrations", "alembic_version"})


def include_object(obj: Any, name: str | None, kind: str, reflected: bool, compare_to: Any) -> bool:
    """Alembic's filter: what autogenerate compares (env.py, differences)."""
    return not (kind == "table" and name in NOT_SCHEMA)


def differences(engine: Engine) -> list[Any]:
    """What autogenerate finds between schema.py and the database (`alembic
    check`); empty when they agree. SQLite has no identity columns: the
    `Identity()` of campaigns.cid and events.id (PostgreSQL's) is a rowid
    alias there, and the difference autogenerate reports for it is none."""
    from alembic.autogenerate import compare_metadata

    from flowtrack.store.schema import metadata

    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={"compare_type": True, "compare_server_default": True, "include_object": include_object},
        )
        with warnings.catch_warnings():
            # events_by_hour is on an expression, which SQLite's reflection
            # cannot read back: autogenerate skips it there, saying so each
            # time (tests/test_schema.py compares its DDL instead).
            warnings.filterwarnings("ignore", message=".*expression-based index")
            found: list[Any] = compare_metadata(context, metadata)
        if connection.dialect.name == "sqlite":
            found = [d for d in found if not _sqlite_identity(d)]
    return found


def _sqlite_identity(difference: Any) -> bool:
    return (
        isinstance(difference, list)
        and len(difference) == 1
        and difference[0][0] == "modify_default"
        and isinstance(difference[0][-1], sa.Identity)
        and difference[0][-2] is None
    )


def current(engine: Engine) -> str | None:
    """The database's revision; None for a new (or a legacy) database."""
    with _driver_errors(), engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def _adopt(connection: Connection, applied: list[str]) -> bool:
    """A database of the previous release (a schema_migrations table, no
    alembic_version) gets the legacy steps it lacks; True if it was one."""
    inspector = sa.inspect(connection)
    if inspector.has_table("alembic_version") or not inspector.has_table("schema_migrations"):
        return False
    dialect = connection.dialect.name
    done = set(connection.scalars(sa.select(LEGACY_RECORD.c.version)))
    for version, name, sql in legacy_scripts(dialect):
        if version in done:
            continue
        statements = sqlite3_statements(sql) if dialect == "sqlite" else [sql]
        raw: Any = connection.connection.driver_connection
        for statement in statements:
            raw.execute(statement)  # the driver's own: scripts have no parameters
        connection.execute(
            sa.insert(LEGACY_RECORD).values(version=version, name=name, applied_at=time.time_ns() // 1000)
        )
        applied.append(f"legacy {version}")
    return True


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
