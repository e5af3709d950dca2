"""The Citus check: every statement the store runs on a tenant table (one
with a `business_id` column) names the business, so that on Citus, with the
tenant tables distributed by `business_id`, it goes to one shard.

A statement passes when, for each tenant table it reads or changes, the
condition of its own query level (WHERE, a JOIN's ON or USING, a LATERAL
probe's WHERE) names that table's `business_id` (qualified by its alias, or
not qualified: joins of tenant tables are on the business, so co-located),
and one of them is compared with a value (a parameter, a literal, an outer
query's column: the query is about one business, so one shard); for an
INSERT, its column list provides `business_id`.
Statements that span businesses on purpose (background sweeps, start-up)
are ALLOWED below with their reason; docs/operations.md says what they mean
on Citus. The PostgreSQL half of the suite collects what the store runs
(store/pg/conn.statement_observer) and conftest fails the session on one that
neither passes nor is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Collection

import sqlglot
from sqlglot import exp

# Tables with a business_id column that are reference tables on Citus:
# API keys are looked up by their id before the business is known (every
# authenticated call), and are few.
REFERENCE = frozenset({"api_keys"})

_SWEEP = "a background round over every business (multi-shard on Citus)"
# (a text the statement contains, why it may span businesses)
ALLOWED: tuple[tuple[str, str], ...] = (
    ("FROM businesses", "the LISTEN thread's catch-up after a reconnect reads every business's sequence (a sweep)"),
    (
        "FROM webhook_messages JOIN webhook_endpoints ON webhook_endpoints.business_id = webhook_messages.business_id"
        " AND webhook_endpoints.endpoint_id = webhook_messages.endpoint_id WHERE webhook_messages.state =",
        f"the delivery worker's look for due deliveries: {_SWEEP}",
    ),
    ("SELECT min(webhook_messages.next_attempt_at)", f"the delivery worker's next wake-up: {_SWEEP}"),
    (
        "SELECT webhook_messages.business_id, webhook_messages.message_id FROM webhook_messages"
        " WHERE webhook_messages.create_time <",
        f"clean-up of old deliveries: {_SWEEP}",
    ),
    (
        "SELECT min(campaigns.business_id) AS min_1 FROM campaigns WHERE campaigns.business_id >",
        f"the fill of the messages' stored encodings goes to the next business (store/encodings.py): {_SWEEP}",
    ),
    (
        "FROM report_schedules WHERE report_schedules.next_run_at IS NOT NULL",
        f"the scheduler's look for due report runs: {_SWEEP}",
    ),
    (
        "FROM report_runs JOIN report_schedules ON report_schedules.business_id = report_runs.business_id"
        " AND report_schedules.schedule_id = report_runs.schedule_id WHERE report_runs.status",
        f"report runs to make or to expire: {_SWEEP}",
    ),
    (
        "FROM report_runs WHERE report_runs.run_id = %(run_id)s",
        "a download link names its run alone (domain/schedules.py), looked up before any business is known:"
        " one row, found on every shard",
    ),
    ("FROM campaigns WHERE campaigns.state IN", f"campaigns whose quiet period ended (completion): {_SWEEP}"),
    (
        "SELECT retention.business_id FROM retention WHERE retention.business_id >",
        f"the businesses the retention sweep goes through (store/retention.py): {_SWEEP}",
    ),
    (
        "FROM reclassifications WHERE reclassifications.business_id >",
        f"the pending re-classifications of stored clicks a background round finishes (store/bots.py): {_SWEEP}",
    ),
)

# Statements of one business that named it only through an id of its own
# (a campaign's cid): none left, the rewrite of issue 20 (item 7) names the
# business in each. A new one is a finding, not an entry here.
PENDING: tuple[tuple[str, str], ...] = ()

_SKIP = re.compile(
    r"^\s*(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE|LISTEN|UNLISTEN|SET|SHOW|CREATE|ALTER|DROP|COPY|LOCK|"
    r"SELECT pg_|SELECT set_config)",
    re.I,
)


def allowed(sql: str) -> str | None:
    """The reason `sql` may not name the business, if it is one of ALLOWED or PENDING."""
    sql = " ".join(sql.split())
    for text, reason in ALLOWED + PENDING:
        if text in sql:
            return reason
    return None


def _business_columns(condition: exp.Expression | None, level: exp.Expression) -> list[exp.Column]:
    """The `business_id` columns of `condition` at query level `level` (not
    those inside a subquery of it)."""
    if condition is None:
        return []
    return [
        column
        for column in condition.find_all(exp.Column)
        if column.name == "business_id" and column.find_ancestor(exp.Select, exp.Update, exp.Delete) is level
    ]


def _names_business(condition: exp.Expression | None, alias: str, level: exp.Expression) -> bool:
    return any(column.table in ("", alias) for column in _business_columns(condition, level))


def _pinned(conditions: list[exp.Expression | None], aliases: Collection[str], level: exp.Expression) -> bool:
    """Whether a condition compares a tenant table's business_id with a value
    (a parameter, a literal, a column of an outer query): the statement is
    about one business (or a list of them), not every business."""
    for condition in conditions:
        for column in _business_columns(condition, level):
            compared = column.parent
            if isinstance(compared, exp.In):
                return True
            if isinstance(compared, exp.EQ):
                other = compared.expression if compared.this is column else compared.this
                if not (isinstance(other, exp.Column) and other.table in aliases):
                    return True
    return False


def unfiltered(sql: str, tenants: Collection[str]) -> list[str]:
    """The tenant tables `sql` touches without naming the business (empty:
    it passes). Raises sqlglot.errors.ParseError for a statement it cannot read."""
    if _SKIP.match(sql):
        return []
    sql = sql.replace("%%", "%")  # psycopg's escape of a literal %
    tenants = set(tenants) - REFERENCE
    found: list[str] = []
    for tree in sqlglot.parse(sql, read="postgres"):
        if tree is None:
            continue
        for insert in tree.find_all(exp.Insert):
            target = insert.this
            table = target.this if isinstance(target, exp.Schema) else target
            if isinstance(table, exp.Table) and table.name in tenants:
                columns = {c.name for c in target.expressions} if isinstance(target, exp.Schema) else set()
                if "business_id" not in columns:
                    found.append(f"INSERT INTO {table.name} without business_id")
        for change in tree.find_all(exp.Update, exp.Delete):
            table = change.this
            if (
                isinstance(table, exp.Table)
                and table.name in tenants
                and not _pinned([change.args.get("where")], (), change)
            ):
                found.append(f"{change.key.upper()} {table.name} without business_id")
        for select in tree.find_all(exp.Select):
            joins = select.args.get("joins") or []
            sources = []
            origin = select.args.get("from_") or select.args.get("from")
            if origin is not None:
                sources.append(origin.this)
            sources += [join.this for join in joins]
            conditions = [select.args.get("where")] + [join.args.get("on") for join in joins]
            # JOIN ... USING (business_id, ...): both sides name it
            using = any("business_id" in {i.name for i in join.args.get("using") or []} for join in joins)
            tenant = [s for s in sources if isinstance(s, exp.Table) and s.name in tenants]
            before = len(found)
            for source in tenant:
                alias = source.alias_or_name
                if not using and not any(_names_business(c, alias, select) for c in conditions):
                    found.append(f"SELECT from {source.name} without business_id")
            if tenant and len(found) == before and not _pinned(conditions, {s.alias_or_name for s in sources}, select):
                found.append(f"SELECT from {', '.join(s.name for s in tenant)} across businesses")
    return found
