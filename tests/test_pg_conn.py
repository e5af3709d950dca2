"""The PostgreSQL connection adapter (store/pg/conn.py): the store's hot
look-ups and writes stay bounded there.

- rows_by_keys probes the key's index once per key even on a table that was
  never ANALYZEd (a planner guessing from no statistics once scanned every
  event of the business for every batch);
- execute_rows COPYs rows (a few go in one VALUES statement), for an
  upsert through a staging table that is empty again after each statement
  (several in one transaction, after a rollback, outside a transaction);
- a NUL character is INVALID_ARGUMENT on every path.
PostgreSQL only (skipped where none is reachable; never in CI).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from flowtrack.domain.errors import InvalidArgument
from flowtrack.store import transaction
from flowtrack.store.db import Lookup, Rows, execute_rows, rows_by_keys
from flowtrack.store.pg.conn import PgConnection, probes_text
from flowtrack.store.schema import messages
from tests.conftest import database_of

pytestmark = pytest.mark.own_backend("PostgreSQL only: the adapter on a database of its own")

on_postgres = pytest.mark.parametrize("backend", ["postgres"], indirect=True)

_UPSERT = transaction.COUNTERS  # the writer's counters upsert


class AddedAt(NamedTuple):
    business_id: str
    cid: int
    recipient: str
    added_at: int


class StatusOf(NamedTuple):
    business_id: str
    cid: int
    recipient: str
    status: int


_KEY = (messages.c.business_id, messages.c.cid, messages.c.recipient)  # the store's key of a message
_ADDED_AT = Lookup(messages, _KEY, (messages.c.added_at,), AddedAt)
_STATUS = Lookup(messages, _KEY, (messages.c.status,), StatusOf)


@pytest.fixture
def conn(tmp_path: Path) -> Any:
    connection = PgConnection.connect(database_of(tmp_path))
    try:
        yield connection
    finally:
        connection.close()


@on_postgres
def test_every_session_plans_each_statement_for_its_parameters(conn: Any, tmp_path: Path) -> None:
    """No generic plan kept from when the tables were small (SESSION_OPTIONS)."""
    from flowtrack.store.pg.store import PgStore

    assert conn.execute("SHOW plan_cache_mode").fetchone() == ("force_custom_plan",)
    store = PgStore(database_of(tmp_path), readers=1, read_time_limit=5.0)
    try:
        shown = store.read_sync(lambda c: c.execute("SHOW plan_cache_mode").fetchone())
        assert shown == ("force_custom_plan",)
    finally:
        store.close()


@on_postgres
def test_key_lookups_probe_the_index_on_a_table_never_analyzed(conn: Any) -> None:
    conn.execute("ALTER TABLE messages SET (autovacuum_enabled = false)")  # no statistics, ever
    rows = [("acme", cid, f"+1555{n:07d}", n, 1) for cid in (1, 2) for n in range(40_000)]
    conn.execute("BEGIN")
    execute_rows(conn, Rows(messages, ("business_id", "cid", "recipient", "added_at", "updated_at")), rows)
    conn.execute("COMMIT")
    assert conn.execute(
        "SELECT last_analyze, last_autoanalyze FROM pg_stat_user_tables WHERE relname = 'messages'"
    ).fetchone() == (None, None)
    keys = {("acme", 1, f"+1555{n:07d}") for n in range(0, 40_000, 80)} | {("acme", 2, "+15559999999")}
    found = list(rows_by_keys(conn, _ADDED_AT, keys))
    assert sorted(found) == sorted(("acme", 1, r, int(r[5:])) for _, cid, r in keys if cid == 1)
    text = probes_text(_STATUS, ("text", "bigint", "text"))
    plan = "\n".join(row[0] for row in conn.raw.execute("EXPLAIN " + text, {"keys": json.dumps(sorted(keys))}))
    assert "Index Scan using messages_pkey" in plan, plan
    assert "Seq Scan on messages" not in plan and "Bitmap" not in plan, plan


def _many(name: str, value: int) -> list[tuple[object, ...]]:
    return [("acme", 1, f"s{i}", name, value) for i in range(20)]  # more rows than one VALUES statement takes


@on_postgres
def test_upserts_through_the_staging_table_leave_it_empty(conn: Any) -> None:
    conn.execute("BEGIN")
    conn.execute("SAVEPOINT job")
    execute_rows(conn, _UPSERT, _many("sent", 1))  # creates the staging table ...
    conn.execute("ROLLBACK TO job")  # ... and the rollback to the savepoint drops it again
    conn.execute("COMMIT")
    conn.execute("BEGIN")
    execute_rows(conn, _UPSERT, _many("sent", 1))
    conn.raw.execute("ROLLBACK")  # as a COMMIT that failed: the adapter does not see it end ...
    conn.execute("BEGIN")
    conn.execute("SELECT 1")
    conn.execute("COMMIT")  # ... and must not take this commit for the staging table's
    conn.execute("BEGIN")
    execute_rows(conn, _UPSERT, _many("sent", 2))
    execute_rows(conn, _UPSERT, _many("sent", 3))  # the same stage, same transaction
    conn.execute("COMMIT")
    conn.execute("BEGIN")
    execute_rows(conn, _UPSERT, _many("sent", 100))
    conn.execute("ROLLBACK")
    execute_rows(conn, _UPSERT, _many("sent", 4))  # outside a transaction: one of its own
    execute_rows(conn, _UPSERT, [("acme", 1, "s0", "sent", 10)])  # a few rows: one VALUES statement
    values = dict(conn.execute("SELECT scope, value FROM counters WHERE business_id = 'acme' AND cid = 1").fetchall())
    assert values == {f"s{i}": 9 + (10 if i == 0 else 0) for i in range(20)}
    stages = conn.execute("SELECT relname FROM pg_class WHERE relname LIKE 'ft_stage_counters_%'").fetchall()
    assert len(stages) == 1
    assert conn.execute(f"SELECT count(*) FROM {stages[0][0]}").fetchone() == (0,)


@on_postgres
def test_a_nul_character_is_invalid_argument_on_every_path(conn: Any) -> None:
    conn.execute("BEGIN")
    with pytest.raises(InvalidArgument):
        execute_rows(conn, _UPSERT, [*_many("a", 1), ("acme", 1, "", "a\x00b", 1)])  # by COPY
    conn.execute("ROLLBACK")
    conn.execute("BEGIN")
    with pytest.raises(InvalidArgument):
        execute_rows(conn, _UPSERT, [("acme", 1, "", "a\x00b", 1)])  # one VALUES statement
    conn.execute("ROLLBACK")
    with pytest.raises(InvalidArgument):
        list(rows_by_keys(conn, _STATUS, {("acme", 1, "x\x00")}))
    # The text \u0000 (a backslash, then u0000) is no NUL: looked up, not refused.
    assert list(rows_by_keys(conn, _STATUS, {("acme", 1, "x\\u0000")})) == []
    with pytest.raises(InvalidArgument):
        conn.execute("SELECT 1 FROM messages WHERE business_id = 'acme' AND recipient IN (%s, %s)", ("a", "b\x00"))
    assert conn.execute("SELECT count(*) FROM counters WHERE business_id = 'acme'").fetchone() == (0,)


@on_postgres
def test_a_report_streams_snapshot_goes_back_to_the_pool_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stream's REPEATABLE READ transaction ends when the stream does: the
    pool got it back in its transaction and logged "rolling back returned
    connection" at WARNING for every report stream."""
    from sqlalchemy import literal, select

    from flowtrack.store.base import open_store

    store = open_store(database_of(tmp_path))
    try:
        with caplog.at_level(logging.WARNING, logger="psycopg.pool"):
            for _ in range(3):  # the same pooled connection, again and again
                snapshot = store.snapshot()
                snapshot.begin("default", "none")
                snapshot.run(select(literal(1).label("one")), {})
                assert snapshot.fetch(10) == [(1,)]
                snapshot.close()
        assert [r.getMessage() for r in caplog.records if r.name.startswith("psycopg")] == []
    finally:
        store.close()
