"""Erasures: one row per erased recipient of a business, its record (who,
when, rows changed per table) and its pseudonym, never its identifier
(store/privacy.py).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Key = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
Big = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "erasures",
        sa.Column("erasure_id", Key, nullable=False),
        sa.Column("business_id", Key, nullable=False),
        sa.Column("pseudonym", Key, nullable=False),
        sa.Column("key_id", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("create_time", Big, nullable=False),
        sa.Column("complete_time", Big),
        sa.Column("next_cid", Big, server_default=sa.text("0"), nullable=False),
        sa.Column("campaigns", Big, server_default=sa.text("0"), nullable=False),
        sa.Column("rows", sa.Text(), server_default=sa.text("'{}'"), nullable=False),
        sa.PrimaryKeyConstraint("business_id", "erasure_id"),
        sa.UniqueConstraint("business_id", "pseudonym"),
    )
    op.create_index("erasures_by_time", "erasures", ["business_id", "create_time"])


def downgrade() -> None:
    op.drop_index("erasures_by_time", table_name="erasures")
    op.drop_table("erasures")
