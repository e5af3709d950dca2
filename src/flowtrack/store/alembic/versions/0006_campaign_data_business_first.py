"""A campaign's data keyed by its business first (ready for Citus,
docs/operations.md "Citus"): messages, counters, link_clickers, engagement,
replies and button_clicks get a `business_id` column, filled from their
campaign, first in their primary keys:

- messages (business_id, cid, recipient), counters (business_id, cid, scope,
  name), link_clickers (business_id, cid, link_id, recipient), engagement
  (business_id, cid, recipient), replies and button_clicks (business_id, cid,
  seq); the indexes of replies and button_clicks by recipient start with it too.
- A row whose campaign is gone (none should be: a campaign's rows are
  deleted with it) names no business and is dropped: nothing shows it.
- The trigger `campaigns_delete_engagement` is dropped: DeleteCampaign
  deletes a campaign's engagement, replies and button taps itself, by its
  business and cid (store/campaigns.py), as it deletes its messages (a
  trigger on a distributed table needs `citus.enable_unsafe_triggers`).
- On PostgreSQL, `campaigns` and `events` are keyed (business_id, cid) and
  (business_id, id), their identity kept. On SQLite they keep their rowid
  keys (cid, id): only a one-column INTEGER PRIMARY KEY is the rowid (and
  AUTOINCREMENT), and SQLite is never distributed (tests/test_schema.py).

Each of the six tables is made again and its rows copied (business_id first
among its columns: `_rebuild`), on both backends; the keys of campaigns and
events on PostgreSQL are dropped and added.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table: (the key before, the key after), as the revision found and left them (frozen)
KEYS: dict[str, tuple[list[str], list[str]]] = {
    "messages": (["cid", "recipient"], ["business_id", "cid", "recipient"]),
    "counters": (["cid", "scope", "name"], ["business_id", "cid", "scope", "name"]),
    "link_clickers": (["cid", "link_id", "recipient"], ["business_id", "cid", "link_id", "recipient"]),
    "engagement": (["cid", "recipient"], ["business_id", "cid", "recipient"]),
    "replies": (["cid", "seq"], ["business_id", "cid", "seq"]),
    "button_clicks": (["cid", "seq"], ["business_id", "cid", "seq"]),
}
# index: (table, columns before, columns after)
INDEXES: dict[str, tuple[str, list[str], list[str]]] = {
    "replies_by_recipient": ("replies", ["cid", "recipient", "seq"], ["business_id", "cid", "recipient", "seq"]),
    "button_clicks_by_recipient": (
        "button_clicks",
        ["cid", "recipient", "seq"],
        ["business_id", "cid", "recipient", "seq"],
    ),
}
# PostgreSQL only: (the key before, the key after)
PG_KEYS: dict[str, tuple[list[str], list[str]]] = {
    "campaigns": (["cid"], ["business_id", "cid"]),
    "events": (["id"], ["business_id", "id"]),
}
Key = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")

# The trigger of the baseline (0001), dropped here and made again by the downgrade.
TRIGGER = {
    "sqlite": (
        """CREATE TRIGGER campaigns_delete_engagement AFTER DELETE ON campaigns
BEGIN
  DELETE FROM engagement WHERE cid = old.cid;
  DELETE FROM replies WHERE cid = old.cid;
  DELETE FROM button_clicks WHERE cid = old.cid;
END""",
    ),
    "postgresql": (
        """CREATE FUNCTION campaigns_delete_engagement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM engagement WHERE cid = OLD.cid;
  DELETE FROM replies WHERE cid = OLD.cid;
  DELETE FROM button_clicks WHERE cid = OLD.cid;
  RETURN OLD;
END $$""",
        """CREATE TRIGGER campaigns_delete_engagement AFTER DELETE ON campaigns
  FOR EACH ROW EXECUTE FUNCTION campaigns_delete_engagement()""",
    ),
}


def _rebuild(table: str, key: list[str], *, business_id: bool) -> None:
    """Make `table` again, keyed by `key`: with `business_id` as its first
    column (NOT NULL, its campaign's; a row whose campaign is gone is
    dropped), or without it; its other columns as they are (read from the
    database), its indexes of INDEXES with their columns after or before.

    A new table, a copy and a rename, on both backends: SQLite cannot
    change a key in place, and business_id must come first among the
    columns (SQLite 3.40's integrity_check reports a NOT NULL column of a
    WITHOUT ROWID table as NULL when a key column is declared after it; and
    the column order is schema.py's on both backends)."""
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    old_name = f"{table}_before_0006"
    old = sa.Table(table, sa.MetaData(), autoload_with=bind)
    for index, (of, *_) in INDEXES.items():
        if of == table:
            op.drop_index(index, table_name=table)
    op.rename_table(table, old_name)
    if not sqlite:  # the key's name, {table}_pkey, is for the new table
        op.drop_constraint(f"{table}_pkey", old_name, type_="primary")
    kept = [c for c in old.columns if c.name != "business_id"]
    columns = [sa.Column("business_id", Key, nullable=False)] if business_id else []
    for column in kept:
        default = column.server_default
        text = getattr(default, "arg", None)
        columns.append(
            sa.Column(
                column.name,
                column.type,
                nullable=column.nullable,
                server_default=None if text is None else sa.text(str(getattr(text, "text", text))),
            )
        )
    op.create_table(table, *columns, sa.PrimaryKeyConstraint(*key), sqlite_with_rowid=False)
    source = sa.table(old_name, *(sa.column(c.name) for c in kept))
    names = [c.name for c in kept]
    if business_id:
        campaigns = sa.table("campaigns", sa.column("cid"), sa.column("business_id"))
        rows = sa.select(campaigns.c.business_id, *source.c).select_from(
            source.join(campaigns, campaigns.c.cid == source.c.cid)
        )
        names = ["business_id", *names]
    else:
        rows = sa.select(*source.c)
    target = sa.table(table, *(sa.column(name) for name in names))
    bind.execute(target.insert().from_select(names, rows))
    op.drop_table(old_name)
    for index, (of, before, after) in INDEXES.items():
        if of == table:
            op.create_index(index, table, after if business_id else before)


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS campaigns_delete_engagement")
    else:
        op.execute("DROP TRIGGER IF EXISTS campaigns_delete_engagement ON campaigns")
        op.execute("DROP FUNCTION IF EXISTS campaigns_delete_engagement()")
    for table, (_, after) in KEYS.items():
        _rebuild(table, after, business_id=True)
    if dialect != "sqlite":
        for table, (_, after) in PG_KEYS.items():
            op.drop_constraint(f"{table}_pkey", table, type_="primary")
            op.create_primary_key(f"{table}_pkey", table, after)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect != "sqlite":
        for table, (before, _) in PG_KEYS.items():
            op.drop_constraint(f"{table}_pkey", table, type_="primary")
            op.create_primary_key(f"{table}_pkey", table, before)
    for table, (before, _) in KEYS.items():
        _rebuild(table, before, business_id=False)
    for statement in TRIGGER[dialect]:
        op.execute(statement)
