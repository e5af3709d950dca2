"""The message report's rows kept encoded (store/encodings.py): two nullable
columns on `messages`, the MessageRow's wire bytes (`row_pb`) and the
flowtrack CSV line after its shared cells (`csv_tail`).

Plain ADD COLUMNs on both backends (no table copy, no rewrite): every row
starts with NULL (encoded as before when read) and the server's background
job fills them when its writer is idle; `flowtrack db encode` fills them
all at once.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("row_pb", sa.LargeBinary()))
    op.add_column("messages", sa.Column("csv_tail", sa.Text()))


def downgrade() -> None:
    op.drop_column("messages", "csv_tail")
    op.drop_column("messages", "row_pb")
