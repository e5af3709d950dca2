"""Campaign name search (`name:TEXT`) compares each name case-folded once, in
Python (`str.casefold`, domain/campaigns.fold), when it is written: the same
answer on SQLite and PostgreSQL whatever the database's locale (SQL's lower()
folds ASCII only in SQLite and in a C-locale PostgreSQL, and never folds the
German sharp s). The names already stored are folded here, in Python, in the
upgrade's transaction.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from flowtrack.domain.campaigns import fold

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "campaigns",
        sa.Column(
            "name_folded",
            sa.Text().with_variant(sa.Text(collation="C"), "postgresql"),
            server_default=sa.text("''"),
            nullable=False,
        ),
    )
    bind = op.get_bind()
    campaigns = sa.table("campaigns", sa.column("business_id"), sa.column("cid"), sa.column("name"))
    rows = bind.execute(
        sa.select(campaigns.c.business_id, campaigns.c.cid, campaigns.c.name).where(campaigns.c.name != "")
    ).all()
    if rows:
        folded = sa.table("campaigns", sa.column("business_id"), sa.column("cid"), sa.column("name_folded"))
        bind.execute(
            folded.update()
            .where(folded.c.business_id == sa.bindparam("b_business_id"), folded.c.cid == sa.bindparam("b_cid"))
            .values(name_folded=sa.bindparam("b_name_folded")),
            [{"b_business_id": b, "b_cid": cid, "b_name_folded": fold(name)} for b, cid, name in rows],
        )


def downgrade() -> None:
    op.execute("ALTER TABLE campaigns DROP COLUMN name_folded")  # SQLite 3.35+ and PostgreSQL alike
