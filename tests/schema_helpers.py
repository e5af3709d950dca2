"""Databases for the schema tests: empty ones on either backend, ones the
previous release's SQL migrations made (store/legacy/, the packaged copy:
the server still adopts such databases, so the tests use the very files it
reads), and a description of a database's schema to compare two by."""

from __future__ import annotations

import os
import re
import secrets
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

from flowtrack.store import db, upgrade
from tests.conftest import POSTGRES_URL, url_of

# Not flowtrack's schema: SQLite's own table, and the records of which
# migrations a database got (the previous release's and Alembic's).
NOT_SCHEMA = {"sqlite_sequence", "schema_migrations", "alembic_version"}


@contextmanager
def blank_database(backend: str, folder: Path) -> Iterator[str]:
    """A new, empty database: a SQLite file's path or a PostgreSQL URL (a
    database of its own, dropped afterwards)."""
    if backend == "sqlite":
        yield str(folder / f"flowtrack-{secrets.token_hex(3)}.db")
        return
    import psycopg

    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.Error as error:
        if os.environ.get("FLOWTRACK_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL at {POSTGRES_URL} not usable: {error}")
        pytest.skip(f"PostgreSQL at {POSTGRES_URL} not usable: {error}")
    name = f"ft_schema_{secrets.token_hex(5)}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield url_of(name)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def is_postgres(database: str) -> bool:
    return database.startswith("postgresql://")


def engine_of(database: str) -> sa.Engine:
    if is_postgres(database):
        return upgrade.postgres_engine(database)
    return upgrade.sqlite_engine(db.connect(database))


def build_legacy(database: str, upto: int | None = None) -> None:
    """What the previous release's `migrate` made of a new database: its SQL
    migrations up to version `upto` (all by default), each recorded in
    schema_migrations as it recorded them."""
    if is_postgres(database):
        import psycopg

        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE schema_migrations"
                " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)"
            )
            for version, name, sql in upgrade.legacy_scripts("postgresql"):
                if upto is None or version <= upto:
                    with conn.transaction():
                        conn.execute(sql.encode())
                        conn.execute("INSERT INTO schema_migrations VALUES (%s, %s, 0)", [version, name])
        return
    lite = db.connect(database)
    try:
        lite.execute(
            "CREATE TABLE [schema_migrations] ([version] INTEGER PRIMARY KEY, [name] TEXT, [applied_at] INTEGER)"
        )
        for version, name, sql in upgrade.legacy_scripts("sqlite"):
            if upto is None or version <= upto:
                lite.execute("BEGIN IMMEDIATE")
                for statement in upgrade.sqlite3_statements(sql):
                    lite.execute(statement)
                lite.execute("INSERT INTO schema_migrations VALUES (?, ?, 0)", (version, name))
                lite.execute("COMMIT")
    finally:
        lite.close()


def back_to_the_previous_release(database: str) -> None:
    """A database this release made, turned into what the previous release
    would hold with the same rows: the revisions after the baseline undone
    (the baseline is the previous release's schema), no Alembic record, and
    the previous release's record of its SQL migrations (all of them)."""
    engine = engine_of(database)
    dialect = "postgresql" if is_postgres(database) else "sqlite"
    with engine.begin() as connection:
        command.downgrade(upgrade.config(connection), upgrade.BASELINE)
        connection.execute(sa.text("DROP TABLE alembic_version"))
        connection.execute(
            sa.text("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT, applied_at BIGINT)")
        )
        for version, name, _ in upgrade.legacy_scripts(dialect):
            connection.execute(
                sa.text("INSERT INTO schema_migrations VALUES (:version, :name, 0)"), {"version": version, "name": name}
            )
    engine.dispose()


def _squeeze(sql: str) -> str:
    """SQL text with its layout and comments gone, for comparing."""
    sql = re.sub(r"--[^\n]*", "", sql)
    sql = re.sub(r"\s+", " ", sql).strip()
    return re.sub(r"\s*([(),])\s*", r"\1", sql)


def describe(database: str) -> dict[str, Any]:
    """Everything about a database's schema that the store's SQL depends on:
    per table its columns (type, nullability, default, identity, collation),
    primary key, unique constraints, indexes (columns, uniqueness, partial
    predicate) and foreign keys; SQLite's WITHOUT ROWID and AUTOINCREMENT
    tables; triggers and functions."""
    engine = engine_of(database)
    found: dict[str, Any] = {}
    with engine.connect() as conn, warnings.catch_warnings():
        # SQLite's reflection cannot read back an index on an expression
        # (events_by_hour) and says so; the index SQL compared below has it.
        warnings.filterwarnings("ignore", message=".*expression-based index")
        inspector = sa.inspect(conn)
        dialect = conn.dialect
        for table in sorted(set(inspector.get_table_names()) - NOT_SCHEMA):
            pk = inspector.get_pk_constraint(table)["constrained_columns"]
            columns = []
            for column in inspector.get_columns(table):
                columns.append(
                    {
                        "name": column["name"],
                        "type": column["type"].compile(dialect=dialect),
                        # SQLite lets a rowid table's primary key column hold
                        # NULL unless it says NOT NULL (a quirk kept for old
                        # files); schema.py says NOT NULL. The store never
                        # wrote a NULL key: the same column, for its SQL.
                        "nullable": column["nullable"] and column["name"] not in pk,
                        "default": column.get("default"),
                        "identity": column.get("identity"),
                        "autoincrement": column.get("autoincrement") if dialect.name == "postgresql" else None,
                    }
                )
            indexes = sorted(
                (
                    index["name"],
                    tuple(index["column_names"]),
                    bool(index["unique"]),
                    str(index.get("dialect_options", {}).get("postgresql_where", "")),
                )
                for index in inspector.get_indexes(table)
            )
            uniques = sorted(tuple(u["column_names"]) for u in inspector.get_unique_constraints(table))
            foreign = inspector.get_foreign_keys(table)
            found[table] = {"columns": columns, "pk": pk, "indexes": indexes, "uniques": uniques, "foreign": foreign}
        if dialect.name == "sqlite":
            for kind, name, table, sql in conn.exec_driver_sql(
                "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY type, name"
            ):
                if table in NOT_SCHEMA:
                    continue
                if kind == "table":
                    squeezed = _squeeze(sql).upper()
                    found[name]["without_rowid"] = squeezed.endswith("WITHOUT ROWID")
                    found[name]["autoincrement"] = "AUTOINCREMENT" in squeezed
                elif kind == "index":  # their SQL has the partial predicate
                    found[table].setdefault("index_sql", []).append(_squeeze(sql))
                else:
                    found.setdefault("triggers", []).append(_squeeze(sql).lower())
        else:
            found["collations"] = sorted(
                conn.exec_driver_sql(
                    "SELECT table_name, column_name, collation_name FROM information_schema.columns"
                    " WHERE table_schema = current_schema() AND collation_name IS NOT NULL"
                ).all()
            )
            found["triggers"] = sorted(
                conn.exec_driver_sql(
                    "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal"
                ).all()
            )
            found["functions"] = sorted(
                (name, _squeeze(source), result)
                for name, source, result in conn.exec_driver_sql(
                    "SELECT proname, prosrc, pg_get_function_result(oid) FROM pg_proc"
                    " WHERE pronamespace = current_schema()::regnamespace"
                )
            )
    if is_postgres(database):
        engine.dispose()  # (a SQLite engine's dispose would close its borrowed connection)
    return found


def dump(database: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of flowtrack's schema, in key order."""
    engine = engine_of(database)
    rows: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        for table in sorted(set(sa.inspect(conn).get_table_names()) - NOT_SCHEMA):
            found = conn.exec_driver_sql(f"SELECT * FROM {table}").all()
            rows[table] = sorted((tuple(_plain(v) for v in row) for row in found), key=repr)
        if conn.dialect.name == "sqlite":
            rows["sqlite_sequence"] = sorted(tuple(r) for r in conn.exec_driver_sql("SELECT * FROM sqlite_sequence"))
    return rows


def _plain(value: Any) -> Any:
    return bytes(value) if isinstance(value, memoryview | bytearray) else value
