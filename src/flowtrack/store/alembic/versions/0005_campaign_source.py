"""A campaign made from a segment of another (CampaignSource): the source
campaign's id and the segment's name, NULL for every campaign made otherwise.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN on both backends: SQLite's batch mode would copy the
    # table, and with it lose AUTOINCREMENT's memory of deleted campaigns' ids.
    op.add_column(
        "campaigns", sa.Column("source_campaign_id", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"))
    )
    op.add_column("campaigns", sa.Column("source_segment", sa.Text()))


def downgrade() -> None:
    op.execute("ALTER TABLE campaigns DROP COLUMN source_segment")  # SQLite 3.35+ and PostgreSQL alike
    op.execute("ALTER TABLE campaigns DROP COLUMN source_campaign_id")
