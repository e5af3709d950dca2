"""Alembic's environment for flowtrack's one migration history.

flowtrack runs it on its own connection, in a transaction that holds the
migration lock (store/upgrade.py: `config.attributes["connection"]`). Run
by hand (`alembic revision --autogenerate`, docs/development.md), it opens
the database named by `-x database=PATH_OR_URL` itself.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from alembic import context
from alembic.runtime.migration import MigrationContext, MigrationInfo

from flowtrack.store import upgrade
from flowtrack.store.schema import metadata


def _run(connection: Any) -> None:
    applied = context.config.attributes.get("applied")

    def _record(
        ctx: MigrationContext, step: MigrationInfo, heads: Collection[Any], run_args: Mapping[str, Any]
    ) -> None:
        if applied is not None and step.is_upgrade and not step.is_stamp:
            applied.append(step.up_revision_id)

    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # ALTERs SQLite lacks: copy-and-move
        compare_type=True,
        compare_server_default=True,
        include_object=upgrade.include_object,
        on_version_apply=_record,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


_connection = context.config.attributes.get("connection")
if _connection is not None:
    _run(_connection)
else:
    _database = context.get_x_argument(as_dictionary=True).get("database")
    if not _database:
        raise SystemExit("pass -x database=PATH_OR_URL (a SQLite file or a postgresql:// URL)")
    if _database.startswith(("postgresql:", "postgres:")):
        _engine = upgrade.postgres_engine(_database)
    else:
        from flowtrack.store import db

        _engine = upgrade.sqlite_engine(db.connect(_database))
    with _engine.connect() as _conn, _conn.begin():
        _run(_conn)
