"""Business-first keys (ready for Citus, docs/citus.md): the tables of
webhooks and report schedules are keyed by their business first, and the two
that did not name the business get its column, filled from the row they
belong to:

- webhook_endpoints (business_id, endpoint_id), webhook_messages
  (business_id, message_id), report_schedules (business_id, schedule_id),
  report_runs (business_id, run_id): the same columns, the key reordered;
- webhook_attempts (business_id, message_id, attempt): business_id from its
  message; webhook_thresholds (business_id, endpoint_id, cid, type): from its
  endpoint. An attempt whose message, or a threshold whose endpoint, is gone
  (none should be: they are deleted together) names no business and is
  dropped: nothing shows it.

SQLite cannot change a table's key in place: each table is copied into a new
one (Alembic's batch mode); PostgreSQL drops and adds the key constraint.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table: (the key before, the key after), as the revision found and left them (frozen)
KEYS: dict[str, tuple[list[str], list[str]]] = {
    "webhook_endpoints": (["endpoint_id"], ["business_id", "endpoint_id"]),
    "webhook_messages": (["message_id"], ["business_id", "message_id"]),
    "webhook_attempts": (["message_id", "attempt"], ["business_id", "message_id", "attempt"]),
    "webhook_thresholds": (["endpoint_id", "cid", "type"], ["business_id", "endpoint_id", "cid", "type"]),
    "report_schedules": (["schedule_id"], ["business_id", "schedule_id"]),
    "report_runs": (["run_id"], ["business_id", "run_id"]),
}
# The tables that get a business_id column, and the table (and its key) it comes from.
FILLED_FROM = {
    "webhook_attempts": ("webhook_messages", "message_id"),
    "webhook_thresholds": ("webhook_endpoints", "endpoint_id"),
}
WITHOUT_ROWID = {"webhook_attempts", "webhook_thresholds"}  # on SQLite, as before
Key = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")


def _rekey(table: str, columns: list[str], *, business_id_nullable: bool | None = None) -> None:
    """Make `columns` the primary key of `table` (NOT NULL business_id too, if asked)."""
    name = f"{table}_pkey"  # PostgreSQL's own name for it, which the previous release's tables have
    if op.get_bind().dialect.name != "sqlite":
        if business_id_nullable is not None:
            op.alter_column(table, "business_id", existing_type=Key, nullable=business_id_nullable)
        op.drop_constraint(name, table, type_="primary")
        op.create_primary_key(name, table, columns)
        return
    options = {"sqlite_with_rowid": False} if table in WITHOUT_ROWID else {}
    with warnings.catch_warnings():
        # SQLAlchemy says, of the copy, that its columns' key flags differ from the new key: the point.
        warnings.filterwarnings("ignore", message=".*specifies columns .* as primary_key=True")
        with op.batch_alter_table(table, recreate="always", table_kwargs=options) as batch:
            if business_id_nullable is not None:
                batch.alter_column("business_id", existing_type=Key, nullable=business_id_nullable)
            batch.create_primary_key(name, columns)


def upgrade() -> None:
    bind = op.get_bind()
    for table, (source, key) in FILLED_FROM.items():
        op.add_column(table, sa.Column("business_id", Key, nullable=True))
        child = sa.table(table, sa.column(key), sa.column("business_id"))
        parent = sa.table(source, sa.column(key), sa.column("business_id"))
        owner = sa.select(parent.c.business_id).where(parent.c[key] == child.c[key]).scalar_subquery()
        bind.execute(child.update().values(business_id=owner))
        bind.execute(child.delete().where(child.c.business_id.is_(None)))
    for table, (_, after) in KEYS.items():
        _rekey(table, after, business_id_nullable=False if table in FILLED_FROM else None)


def downgrade() -> None:
    for table, (before, _) in KEYS.items():
        _rekey(table, before)
    for table in FILLED_FROM:
        if op.get_bind().dialect.name == "sqlite":
            options = {"sqlite_with_rowid": False} if table in WITHOUT_ROWID else {}
            with op.batch_alter_table(table, recreate="always", table_kwargs=options) as batch:
                batch.drop_column("business_id")
        else:
            op.drop_column(table, "business_id")
