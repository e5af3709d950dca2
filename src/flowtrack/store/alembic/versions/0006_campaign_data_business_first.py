"""A campaign's data keyed by its business first (ready for Citus,
docs/operations.md "Citus"): messages, counters, link_clickers, engagement,
replies and button_clicks get a `business_id` column, filled from their
campaign, first in their primary keys:

- messages (business_id, cid, recipient), counters (business_id, cid, scope,
  name), link_clickers (business_id, cid, link_id, recipient), engagement
  (business_id, cid, recipient), replies and button_clicks (business_id, cid,
  seq); the indexes of replies and button_taps by recipient start with it too.
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

SQLite cannot change a table's key in place: each table is copied into a new
one (Alembic's batch mode); PostgreSQL drops and adds the key constraint.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

import warnings
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


def _sqlite() -> bool:
    return bool(op.get_bind().dialect.name == "sqlite")


def _rekey(table: str, columns: list[str], *, business_id: str) -> None:
    """Make `columns` the primary key of `table`, its indexes of INDEXES made
    with their columns of `business_id` ("after" or "before"), and, after,
    business_id NOT NULL."""
    after = business_id == "after"
    indexes = {name: (cols[2] if after else cols[1]) for name, cols in INDEXES.items() if cols[0] == table}
    name = f"{table}_pkey"  # PostgreSQL's own name for it, which the previous release's tables have
    if not _sqlite():
        for index in indexes:
            op.drop_index(index, table_name=table)
        if after:
            op.alter_column(table, "business_id", existing_type=Key, nullable=False)
        op.drop_constraint(name, table, type_="primary")
        op.create_primary_key(name, table, columns)
        for index, cols in indexes.items():
            op.create_index(index, table, cols)
        return
    with warnings.catch_warnings():
        # SQLAlchemy says, of the copy, that its columns' key flags differ from the new key: the point.
        warnings.filterwarnings("ignore", message=".*specifies columns .* as primary_key=True")
        with op.batch_alter_table(table, recreate="always", table_kwargs={"sqlite_with_rowid": False}) as batch:
            for index in indexes:
                batch.drop_index(index)
            if after:
                batch.alter_column("business_id", existing_type=Key, nullable=False)
            else:
                batch.drop_column("business_id")
            batch.create_primary_key(name, columns)
            for index, cols in indexes.items():
                batch.create_index(index, cols)


def upgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    if dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS campaigns_delete_engagement")
    else:
        op.execute("DROP TRIGGER IF EXISTS campaigns_delete_engagement ON campaigns")
        op.execute("DROP FUNCTION IF EXISTS campaigns_delete_engagement()")
    campaigns = sa.table("campaigns", sa.column("cid"), sa.column("business_id"))
    for table in KEYS:
        op.add_column(table, sa.Column("business_id", Key, nullable=True))
        child = sa.table(table, sa.column("cid"), sa.column("business_id"))
        owner = sa.select(campaigns.c.business_id).where(campaigns.c.cid == child.c.cid).scalar_subquery()
        bind.execute(child.update().values(business_id=owner))
        bind.execute(child.delete().where(child.c.business_id.is_(None)))
        _rekey(table, KEYS[table][1], business_id="after")
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
        if dialect == "sqlite":
            _rekey(table, before, business_id="before")
        else:
            _rekey(table, before, business_id="before")
            op.drop_column(table, "business_id")
    for statement in TRIGGER[dialect]:
        op.execute(statement)
