"""webhook_attempts and webhook_thresholds are made again with their key's
columns first, in the key's order (business_id, which revision 0003 added
last, comes first), on both backends (schema.py's column order).

Tables stored without a rowid whose key column is declared after a NOT NULL
column are misread by SQLite 3.40's `PRAGMA integrity_check`: it reports
those columns as NULL, so `flowtrack backup --check` refused a database
holding webhook attempts. The rows were never wrong; only the check was.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table: its key, as this revision found it (frozen)
KEYS: dict[str, list[str]] = {
    "webhook_attempts": ["business_id", "message_id", "attempt"],
    "webhook_thresholds": ["business_id", "endpoint_id", "cid", "type"],
}


def _reorder(table: str, first: list[str]) -> None:
    """Make `table` again (a new table, a copy, a rename) with the columns
    `first` first, the others after them as they were."""
    bind = op.get_bind()
    old = sa.Table(table, sa.MetaData(), autoload_with=bind)
    old_name = f"{table}_before_0010"
    op.rename_table(table, old_name)
    if bind.dialect.name != "sqlite":  # the key's name, {table}_pkey, is for the new table
        op.drop_constraint(f"{table}_pkey", old_name, type_="primary")
    ordered = [old.c[name] for name in first] + [c for c in old.columns if c.name not in first]
    columns = []
    for column in ordered:
        text = getattr(column.server_default, "arg", None)
        columns.append(
            sa.Column(
                column.name,
                column.type,
                nullable=column.nullable,
                server_default=None if text is None else sa.text(str(getattr(text, "text", text))),
            )
        )
    op.create_table(table, *columns, sa.PrimaryKeyConstraint(*KEYS[table]), sqlite_with_rowid=False)
    names = [c.name for c in ordered]
    source = sa.table(old_name, *(sa.column(name) for name in names))
    target = sa.table(table, *(sa.column(name) for name in names))
    bind.execute(target.insert().from_select(names, sa.select(*source.c)))
    op.drop_table(old_name)


def upgrade() -> None:
    for table, key in KEYS.items():
        _reorder(table, key)


def downgrade() -> None:
    pass  # the order of columns is no schema change to undo
