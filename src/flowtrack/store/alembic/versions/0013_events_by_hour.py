"""The retention sweep's index by the hour an event occurred in
(store/schema.py's events_by_hour) in place of 0009's events_by_time on
occurred_at itself: the same sweep, and each ingested batch changes one
page of it per hour its events occurred in instead of one per event.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_EVERY_ROW = "received_at >= 0"  # see store/schema.py: only the sweep states it
# occurred_at in whole hours (integer division on both dialects)
_HOUR = sa.column("occurred_at", sa.BigInteger) // sa.literal_column("3600000000", sa.BigInteger)


def upgrade() -> None:
    op.drop_index("events_by_time", table_name="events")
    op.create_index(
        "events_by_hour",
        "events",
        [sa.column("business_id"), _HOUR],
        unique=False,
        sqlite_where=sa.text(_EVERY_ROW),
        postgresql_where=sa.text(_EVERY_ROW),
    )


def downgrade() -> None:
    op.drop_index("events_by_hour", table_name="events")
    op.create_index(
        "events_by_time",
        "events",
        ["business_id", "occurred_at"],
        unique=False,
        sqlite_where=sa.text(_EVERY_ROW),
        postgresql_where=sa.text(_EVERY_ROW),
    )
