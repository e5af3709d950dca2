"""Retention (domain/retention.py): a business's `retention` row, and the
index the sweep deletes a business's oldest events by.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEY = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
_BIG = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "retention",
        sa.Column("business_id", _KEY, nullable=False),
        sa.Column("history_days", sa.Integer(), nullable=True),
        sa.Column("campaign_days", sa.Integer(), nullable=True),
        sa.Column("pruned_before", _BIG, nullable=True),
        sa.Column("update_time", _BIG, nullable=False),
        sa.PrimaryKeyConstraint("business_id"),
    )
    # Partial on a predicate every row meets, so that only the sweep (which
    # states it) uses the index: see store/schema.py.
    op.create_index(
        "events_by_time",
        "events",
        ["business_id", "occurred_at"],
        unique=False,
        sqlite_where=sa.text("received_at >= 0"),
        postgresql_where=sa.text("received_at >= 0"),
    )


def downgrade() -> None:
    op.drop_index("events_by_time", table_name="events")
    op.drop_table("retention")
