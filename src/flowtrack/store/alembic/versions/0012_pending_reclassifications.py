"""Re-classifications of stored clicks that are still to do (store/bots.py):
the `reclassifications` table, one row per business with one pending, and a
row for every business that has clicks.

A change of a business's bot rules records its re-classification here in
the change's own transaction, and each page of it moves the progress on in
its own, so one cut short (the call cancelled, the server killed) is
finished by a server's background task instead of leaving the business's
clicks classified under two rules.

Clicks stored before revision 0007 were counted human by it (their reason
0, every human figure a copy of the click figures) and stayed so until the
business's rules changed. The rows this revision writes make the background
task classify every business's stored clicks under its rules; clicks
already classified come out the same, so for them it is one read of their
clicks.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEY = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
_BIG = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "reclassifications",
        sa.Column("business_id", _KEY, primary_key=True),
        sa.Column("cid", _BIG, nullable=False, server_default=sa.text("0")),
        sa.Column("after", _KEY, nullable=False, server_default=sa.text("''")),
        sa.Column("changed", _BIG, nullable=False, server_default=sa.text("0")),
        sa.Column("requested_at", _BIG, nullable=False),
        sa.Column("holder", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column("held_until", _BIG, nullable=False, server_default=sa.text("0")),
        sqlite_with_rowid=False,
    )
    # Every business with a click: a campaign's `clicks` counter (scope '',
    # the campaign's own) is above 0. The counters, not the events: a small table.
    counters = sa.table("counters", sa.column("business_id"), sa.column("scope"), sa.column("name"),
                        sa.column("value"))  # fmt: skip
    pending = sa.table("reclassifications", sa.column("business_id"), sa.column("requested_at"))
    with_clicks = (
        sa.select(counters.c.business_id, sa.literal(int(time.time() * 1_000_000), _BIG))
        .where(counters.c.scope == "", counters.c.name == "clicks", counters.c.value > 0)
        .distinct()
    )
    op.execute(sa.insert(pending).from_select(["business_id", "requested_at"], with_clicks))


def downgrade() -> None:
    op.drop_table("reclassifications")
