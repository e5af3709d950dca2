"""Baseline: flowtrack's schema as the previous release's SQL migrations
left it (SQLite 0001-0011, PostgreSQL 0001-0005; store/legacy/). A new
database gets it here; a database of the previous release is stamped at this
revision instead (store/upgrade.py). Frozen: later changes are revisions of
their own.

Revision ID: 0001
Revises:
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# What MetaData cannot hold, per dialect, in the order to create it: deleting
# a campaign deletes its engagement rows (DeleteCampaign deletes the campaign
# row last), and, on PostgreSQL, ft_fold: the campaign name search's fold
# (SQLite calls Python's str.casefold; lower() is the same for every script
# but a few special cases, such as German sharp s).
TRIGGERS: dict[str, tuple[str, ...]] = {
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
        "CREATE FUNCTION ft_fold(text) RETURNS text LANGUAGE sql IMMUTABLE AS 'SELECT lower($1)'",
    ),
}


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column("business_id", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column("name", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("scopes", sa.Text(), nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("revoked_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("last_used_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.PrimaryKeyConstraint("key_id"),
    )
    op.create_index("api_keys_by_business", "api_keys", ["business_id", "created_at"], unique=False)

    op.create_table(
        "businesses",
        sa.Column("business_id", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column(
            "last_sequence",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            server_default=sa.text("0"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("business_id"),
    )
    op.create_table(
        "button_clicks",
        sa.Column("cid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("recipient", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column("occurred_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("button_id", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column("button_name", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.PrimaryKeyConstraint("cid", "seq"),
        sqlite_with_rowid=False,
    )
    op.create_index("button_clicks_by_recipient", "button_clicks", ["cid", "recipient", "seq"], unique=False)

    op.create_table(
        "campaigns",
        sa.Column(
            "cid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), sa.Identity(always=False), nullable=False
        ),
        sa.Column("business_id", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column("campaign_id", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column("name", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("flow_id", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("channels", sa.Text(), server_default=sa.text("'[]'"), nullable=False),
        sa.Column("labels", sa.Text(), server_default=sa.text("'{}'"), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("implicit", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("create_time", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("schedule_time", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("start_time", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("complete_time", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("update_time", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("first_event_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("last_event_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column(
            "last_sequence",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            server_default=sa.text("0"),
            nullable=False,
        ),
        sa.Column("quiet_period", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("last_arrival_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("completion_emitted", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("cid"),
        sa.UniqueConstraint("business_id", "campaign_id"),
        sqlite_autoincrement=True,
    )
    op.create_index("campaigns_by_time", "campaigns", ["business_id", "create_time", "cid"], unique=False)
    op.create_index(
        "campaigns_open",
        "campaigns",
        ["state", "last_arrival_at"],
        unique=False,
        sqlite_where=sa.text("state IN (1, 2)"),
        postgresql_where=sa.text("state IN (1, 2)"),
    )

    op.create_table(
        "counters",
        sa.Column("cid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("scope", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column("name", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column("value", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.PrimaryKeyConstraint("cid", "scope", "name"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "engagement",
        sa.Column("cid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("recipient", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column("read_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("replied_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("replies", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("opted_out_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("first_button_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("button_clicks", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("entered_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("exited_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("exit_event_id", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=True),
        sa.Column("exit_reason", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("goal_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("goal_event_id", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=True),
        sa.Column("goal_id", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column(
            "counted_channel",
            sa.Text().with_variant(sa.Text(collation="C"), "postgresql"),
            server_default=sa.text("''"),
            nullable=False,
        ),
        sa.Column(
            "counted_variant",
            sa.Text().with_variant(sa.Text(collation="C"), "postgresql"),
            server_default=sa.text("''"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("cid", "recipient"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "events",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), sa.Identity(always=False), nullable=False
        ),
        sa.Column("business_id", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("event_id", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column("fingerprint", sa.LargeBinary(), nullable=False),
        sa.Column("cid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("recipient", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column("kind", sa.Integer(), nullable=False),
        sa.Column("occurred_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("received_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("reason_code", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=True),
        sa.Column("reason_message", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=True),
        sa.Column("channel", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=True),
        sa.Column("variant", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=True),
        sa.Column("provider_message_id", sa.Text(), nullable=True),
        sa.Column("session_id", sa.Text(), nullable=True),
        sa.Column("input_vars", sa.Text(), nullable=True),
        sa.Column("output_vars", sa.Text(), nullable=True),
        sa.Column("link_id", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=True),
        sa.Column("link_variable", sa.Text(), nullable=True),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("country_code", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=True),
        sa.Column("region", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=True),
        sa.Column("city", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=True),
        sa.Column("latitude", sa.REAL().with_variant(sa.DOUBLE_PRECISION(), "postgresql"), nullable=True),
        sa.Column("longitude", sa.REAL().with_variant(sa.DOUBLE_PRECISION(), "postgresql"), nullable=True),
        sa.Column("user_agent", sa.Text(), nullable=True),
        sa.Column("ip_address", sa.Text(), nullable=True),
        sa.Column("engagement", sa.Integer(), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("discard_text", sa.Integer(), nullable=True),
        sa.Column("button_id", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=True),
        sa.Column("button_name", sa.Text(), nullable=True),
        sa.Column("exit_reason", sa.Text(), nullable=True),
        sa.Column("goal_id", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("events_by_campaign", "events", ["cid", "seq"], unique=False)
    op.create_index("events_by_event_id", "events", ["business_id", "event_id"], unique=True)
    op.create_index("events_by_message", "events", ["cid", "recipient"], unique=False)
    op.create_index("events_by_seq", "events", ["business_id", "seq"], unique=False)
    op.create_index(
        "events_clicks",
        "events",
        ["cid", "id"],
        unique=False,
        sqlite_where=sa.text("kind = 2"),
        postgresql_where=sa.text("kind = 2"),
    )

    op.create_table(
        "http_sessions",
        sa.Column("session_id", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column("key_id", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column("created_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("expires_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.PrimaryKeyConstraint("session_id"),
    )
    op.create_index("http_sessions_by_expiry", "http_sessions", ["expires_at"], unique=False)

    op.create_table(
        "leases",
        sa.Column("name", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column("holder", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "link_clickers",
        sa.Column("cid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("link_id", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column("recipient", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.PrimaryKeyConstraint("cid", "link_id", "recipient"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "messages",
        sa.Column("cid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("recipient", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column(
            "aud_channel",
            sa.Text().with_variant(sa.Text(collation="C"), "postgresql"),
            server_default=sa.text("''"),
            nullable=False,
        ),
        sa.Column(
            "aud_variant",
            sa.Text().with_variant(sa.Text(collation="C"), "postgresql"),
            server_default=sa.text("''"),
            nullable=False,
        ),
        sa.Column("aud_input", sa.Text(), nullable=True),
        sa.Column("status", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("attempt", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("cur_occurred_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("cur_event_id", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=True),
        sa.Column(
            "reason_code",
            sa.Text().with_variant(sa.Text(collation="C"), "postgresql"),
            server_default=sa.text("''"),
            nullable=False,
        ),
        sa.Column(
            "reason_message",
            sa.Text().with_variant(sa.Text(collation="C"), "postgresql"),
            server_default=sa.text("''"),
            nullable=False,
        ),
        sa.Column(
            "channel",
            sa.Text().with_variant(sa.Text(collation="C"), "postgresql"),
            server_default=sa.text("''"),
            nullable=False,
        ),
        sa.Column(
            "variant",
            sa.Text().with_variant(sa.Text(collation="C"), "postgresql"),
            server_default=sa.text("''"),
            nullable=False,
        ),
        sa.Column("provider_message_id", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("session_id", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("input_vars", sa.Text(), nullable=True),
        sa.Column("output_vars", sa.Text(), nullable=True),
        sa.Column("not_submitted_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("submitted_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("delivery_not_confirmed_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("success_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("failed_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("last_event_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("clicks", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("first_click_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("added_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("updated_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("attr_keys", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("cid", "recipient"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "replies",
        sa.Column("cid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("recipient", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column("occurred_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("text", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.PrimaryKeyConstraint("cid", "seq"),
        sqlite_with_rowid=False,
    )
    op.create_index("replies_by_recipient", "replies", ["cid", "recipient", "seq"], unique=False)

    op.create_table(
        "report_runs",
        sa.Column("run_id", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column("schedule_id", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column("business_id", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column("campaign_id", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("file_name", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("content_type", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("path", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column(
            "bytes", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), server_default=sa.text("0"), nullable=False
        ),
        sa.Column(
            "rows", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), server_default=sa.text("0"), nullable=False
        ),
        sa.Column("create_time", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("complete_time", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("claimed_by", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column(
            "claim_expires",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            server_default=sa.text("0"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("run_id"),
    )
    op.create_index("report_runs_by_schedule", "report_runs", ["schedule_id", "create_time"], unique=False)
    op.create_index(
        "report_runs_processing",
        "report_runs",
        ["create_time"],
        unique=False,
        sqlite_where=sa.text("status = 1"),
        postgresql_where=sa.text("status = 1"),
    )

    op.create_table(
        "report_schedules",
        sa.Column("schedule_id", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column("business_id", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column("name", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("kind", sa.Integer(), nullable=False),
        sa.Column("format", sa.Integer(), nullable=False),
        sa.Column(
            "campaign_id",
            sa.Text().with_variant(sa.Text(collation="C"), "postgresql"),
            server_default=sa.text("''"),
            nullable=False,
        ),
        sa.Column("filters", sa.LargeBinary(), nullable=False),
        sa.Column("cron", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("time_zone", sa.Text(), server_default=sa.text("'UTC'"), nullable=False),
        sa.Column("on_complete", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("link_ttl", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("retention", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("next_run_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("create_time", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("layout", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("schedule_id"),
    )
    op.create_index("report_schedules_by_business", "report_schedules", ["business_id", "create_time"], unique=False)

    op.create_table(
        "server_settings",
        sa.Column("key", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "webhook_attempts",
        sa.Column("message_id", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("time", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("status_code", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "latency_us",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            server_default=sa.text("0"),
            nullable=False,
        ),
        sa.Column("error", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.PrimaryKeyConstraint("message_id", "attempt"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "webhook_endpoints",
        sa.Column("endpoint_id", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column("business_id", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("events", sa.Text(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("failure_rate", sa.REAL().with_variant(sa.DOUBLE_PRECISION(), "postgresql"), nullable=True),
        sa.Column(
            "min_submitted",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            server_default=sa.text("0"),
            nullable=False,
        ),
        sa.Column("create_time", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("disabled_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("disabled_reason", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("failing_since", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column(
            "failures",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            server_default=sa.text("0"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("endpoint_id"),
    )
    op.create_index("webhook_endpoints_by_business", "webhook_endpoints", ["business_id", "create_time"], unique=False)

    op.create_table(
        "webhook_messages",
        sa.Column("message_id", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column("business_id", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column("endpoint_id", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("create_time", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("next_attempt_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("last_error", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("retry_since", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("retry_offset", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("message_id"),
    )
    op.create_index("webhook_messages_by_endpoint", "webhook_messages", ["endpoint_id", "create_time"], unique=False)
    op.create_index("webhook_messages_by_time", "webhook_messages", ["create_time"], unique=False)
    op.create_index(
        "webhook_messages_due",
        "webhook_messages",
        ["next_attempt_at"],
        unique=False,
        sqlite_where=sa.text("state = 1"),
        postgresql_where=sa.text("state = 1"),
    )

    op.create_table(
        "webhook_thresholds",
        sa.Column("endpoint_id", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.Column("cid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("type", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.PrimaryKeyConstraint("endpoint_id", "cid", "type"),
        sqlite_with_rowid=False,
    )

    for statement in TRIGGERS[op.get_bind().dialect.name]:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS ft_fold(text)")
        op.execute("DROP TRIGGER IF EXISTS campaigns_delete_engagement ON campaigns")
        op.execute("DROP FUNCTION IF EXISTS campaigns_delete_engagement()")
    op.drop_table("webhook_thresholds")
    op.drop_index(
        "webhook_messages_due",
        table_name="webhook_messages",
        sqlite_where=sa.text("state = 1"),
        postgresql_where=sa.text("state = 1"),
    )
    op.drop_index("webhook_messages_by_time", table_name="webhook_messages")
    op.drop_index("webhook_messages_by_endpoint", table_name="webhook_messages")

    op.drop_table("webhook_messages")
    op.drop_index("webhook_endpoints_by_business", table_name="webhook_endpoints")

    op.drop_table("webhook_endpoints")
    op.drop_table("webhook_attempts")
    op.drop_table("server_settings")
    op.drop_index("report_schedules_by_business", table_name="report_schedules")

    op.drop_table("report_schedules")
    op.drop_index(
        "report_runs_processing",
        table_name="report_runs",
        sqlite_where=sa.text("status = 1"),
        postgresql_where=sa.text("status = 1"),
    )
    op.drop_index("report_runs_by_schedule", table_name="report_runs")

    op.drop_table("report_runs")
    op.drop_index("replies_by_recipient", table_name="replies")

    op.drop_table("replies")
    op.drop_table("messages")
    op.drop_table("link_clickers")
    op.drop_table("leases")
    op.drop_index("http_sessions_by_expiry", table_name="http_sessions")

    op.drop_table("http_sessions")
    op.drop_index(
        "events_clicks", table_name="events", sqlite_where=sa.text("kind = 2"), postgresql_where=sa.text("kind = 2")
    )
    op.drop_index("events_by_seq", table_name="events")
    op.drop_index("events_by_message", table_name="events")
    op.drop_index("events_by_event_id", table_name="events")
    op.drop_index("events_by_campaign", table_name="events")

    op.drop_table("events")
    op.drop_table("engagement")
    op.drop_table("counters")
    op.drop_index(
        "campaigns_open",
        table_name="campaigns",
        sqlite_where=sa.text("state IN (1, 2)"),
        postgresql_where=sa.text("state IN (1, 2)"),
    )
    op.drop_index("campaigns_by_time", table_name="campaigns")

    op.drop_table("campaigns")
    op.drop_index("button_clicks_by_recipient", table_name="button_clicks")

    op.drop_table("button_clicks")
    op.drop_table("businesses")
    op.drop_index("api_keys_by_business", table_name="api_keys")

    op.drop_table("api_keys")
