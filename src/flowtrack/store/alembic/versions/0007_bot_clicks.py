"""Bot clicks (domain/bots.py): each click event's bot reason (0 human),
each message's and each link clicker's human clicks, the human counters, and
a table of per-business settings (the bot rules).

Clicks stored before this revision count as human, as they were counted:
their reason is 0, every message's human clicks its clicks, every link
clicker's human clicks its clicks of the link, and the counters
human_clicks and unique_human_clickers copies of clicks and unique_clickers.
A change of the business's rules (UpdateSettings) re-classifies them.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEY = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
_BIG = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_CLICK = 2  # domain/ingest.py KIND_CLICK


def upgrade() -> None:
    # Plain ADD COLUMNs on both backends (no table copy).
    op.add_column("events", sa.Column("bot_reason", sa.Integer()))
    op.add_column("messages", sa.Column("human_clicks", sa.Integer(), nullable=False, server_default=sa.text("0")))
    op.add_column("link_clickers", sa.Column("human_clicks", sa.Integer(), nullable=False, server_default=sa.text("0")))
    op.create_table(
        "business_settings",
        sa.Column("business_id", _KEY, primary_key=True),
        sa.Column("bot_click_threshold_ms", _BIG, nullable=False, server_default=sa.text("2000")),
        sa.Column("crawler_ua_is_bot", sa.Integer(), nullable=False, server_default=sa.text("1")),
        sa.Column("no_ua_is_bot", sa.Integer(), nullable=False, server_default=sa.text("1")),
        sa.Column("update_time", _BIG, nullable=False),
        sqlite_with_rowid=False,
    )
    events = sa.table("events", sa.column("business_id"), sa.column("kind"), sa.column("bot_reason"),
                      sa.column("cid"), sa.column("recipient"), sa.column("link_id"))  # fmt: skip
    messages = sa.table("messages", sa.column("clicks"), sa.column("human_clicks"))
    clickers = sa.table("link_clickers", sa.column("business_id"), sa.column("cid"), sa.column("link_id"),
                        sa.column("recipient"), sa.column("human_clicks"))  # fmt: skip
    counters = sa.table("counters", sa.column("business_id"), sa.column("cid"), sa.column("scope"),
                        sa.column("name"), sa.column("value"))  # fmt: skip
    op.execute(sa.update(events).where(events.c.kind == _CLICK).values(bot_reason=0))
    op.execute(sa.update(messages).where(messages.c.clicks > 0).values(human_clicks=messages.c.clicks))
    per_link = (
        sa.select(sa.func.count())
        .select_from(events)
        .where(
            events.c.business_id == clickers.c.business_id,
            events.c.cid == clickers.c.cid,
            events.c.recipient == clickers.c.recipient,
            events.c.kind == _CLICK,
            events.c.link_id == clickers.c.link_id,
        )
        .scalar_subquery()
    )
    op.execute(sa.update(clickers).values(human_clicks=per_link))
    for name, source in (("human_clicks", "clicks"), ("unique_human_clickers", "unique_clickers")):
        copied = sa.select(
            counters.c.business_id, counters.c.cid, counters.c.scope, sa.literal(name), counters.c.value
        ).where(counters.c.name == source)
        op.execute(sa.insert(counters).from_select(["business_id", "cid", "scope", "name", "value"], copied))


def downgrade() -> None:
    counters = sa.table("counters", sa.column("name"))
    op.execute(sa.delete(counters).where(counters.c.name.in_(["human_clicks", "unique_human_clickers"])))
    op.drop_table("business_settings")
    for table, column in (("link_clickers", "human_clicks"), ("messages", "human_clicks"), ("events", "bot_reason")):
        op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")  # SQLite 3.35+ and PostgreSQL alike
