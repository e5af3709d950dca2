"""One schema for both databases (store/schema.py), one Alembic history
(store/alembic/), and the adoption of databases the previous release made
with its SQL migrations (store/legacy/), on both backends."""

from __future__ import annotations

import io
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command as alembic_command
from click.testing import CliRunner

from flowtrack.cli import cli
from flowtrack.config import Settings
from flowtrack.domain.campaigns import fold
from flowtrack.domain.ingest import KIND_CLICK
from flowtrack.domain.keys import Scope
from flowtrack.store import check, db, schema, upgrade
from flowtrack.store.schema import metadata
from flowtrack.v1 import campaign_pb2, ingest_pb2, report_pb2
from flowtrack.v1 import common_pb2 as C
from tests.conftest import ServerThread, connect_db, make_client
from tests.report_helpers import BASE_US, add_recipients, all_report_rows, click_event, send_events, status_event, ts
from tests.schema_helpers import back_to_the_previous_release, blank_database, build_legacy, describe, dump, engine_of
from tests.tenants import create_key, keyed_client
from tests.test_bots import REASONS, STORY, click_rows, stats_of, tell_story

BACKENDS = ["sqlite", "postgres"]
# Tables made by revisions after the baseline (the previous release had none of them).
SINCE_BASELINE = {"business_settings", "erasures", "retention", "reclassifications"}  # 0007, 0008, 0009, 0012
pytestmark = pytest.mark.own_backend("picks its databases itself (the kind parameter): each test on both")


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_new_database_gets_the_schema_the_previous_release_made(tmp_path: Path, kind: str) -> None:
    """Alembic's history on a new database makes, table for table, column
    for column (type, nullability, default, identity, collation), index for
    index (partial predicates too), the schema the legacy SQL made, WITHOUT
    ROWID, AUTOINCREMENT, triggers and functions included: what keeps the
    store's queries right."""
    with blank_database(kind, tmp_path) as legacy, blank_database(kind, tmp_path) as fresh:
        build_legacy(legacy)
        assert upgrade.upgrade(engine_of(fresh), upgrade.BASELINE) == [upgrade.BASELINE]
        made, wanted = describe(fresh), describe(legacy)
        assert len([t for t in wanted if t in {m.name for m in metadata.sorted_tables}]) == len(
            set(metadata.tables) - SINCE_BASELINE
        )
        assert made == wanted


@pytest.mark.parametrize("kind", BACKENDS)
def test_schema_py_and_the_migration_history_agree(tmp_path: Path, kind: str) -> None:
    """`alembic check`: autogenerate finds nothing to do between schema.py
    and a database the history made (a change to schema.py without its
    revision fails here); and what autogenerate does not compare (WITHOUT
    ROWID, AUTOINCREMENT, partial predicates on SQLite) is the same in a
    database made from schema.py alone (`create_all`)."""
    with blank_database(kind, tmp_path) as database, blank_database(kind, tmp_path) as direct:
        engine = engine_of(database)
        upgrade.upgrade(engine)
        assert upgrade.differences(engine) == []
        made = engine_of(direct)
        with made.begin() as conn:
            metadata.create_all(conn)
        if kind == "postgres":
            made.dispose()
        history, schema = describe(database), describe(direct)
        for found in (history, schema):  # triggers and functions are not MetaData's: the revisions make them
            found.pop("triggers", None), found.pop("functions", None)
        assert history == schema


@pytest.mark.parametrize("kind", BACKENDS)
def test_upgrading_twice_does_nothing_and_current_names_the_head(tmp_path: Path, kind: str) -> None:
    with blank_database(kind, tmp_path) as database:
        assert upgrade.current(engine_of(database)) is None
        assert upgrade.upgrade(engine_of(database)) == upgrade.revisions()
        assert upgrade.upgrade(engine_of(database)) == []
        assert upgrade.current(engine_of(database)) == upgrade.head()


# -- a database of the previous release ---------------------------------------------


def _server(database: str, folder: Path) -> ServerThread:
    return ServerThread(
        Settings(listen="127.0.0.1:0", database=database, grace=0.5, reports_dir=str(folder / "reports"))
    )


def _fill(address: str, api_key: str | None = None, *, offset: int = 0) -> None:
    """A campaign with an audience, statuses (a retry, failures with
    reasons), clicks, engagement (reads, replies, button taps), and a second,
    deleted campaign (its cid must not come back); as the business of
    `api_key` (None: open mode's), `offset` making its data its own."""
    client = make_client(address) if api_key is None else keyed_client(address, api_key)
    try:
        for campaign in ("kept", "gone"):
            client.campaigns.CreateCampaign(
                campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id=campaign, name=f"{campaign}, ü")),
                timeout=10,
            )
        audience = [(f"+4915100000{i:03d}", ("sms", "whatsapp", "rcs")[i % 3], "AB"[i % 2]) for i in range(40)]
        add_recipients(client, "kept", audience)
        events = []
        for i, (recipient, channel, _) in enumerate(audience):
            at = BASE_US + i * 1_000_000
            events.append(status_event(f"s{i}", "kept", recipient, C.MESSAGE_STATUS_SUBMITTED, at, channel=channel))
            if i % 4 == 0:
                events.append(
                    status_event(
                        f"f{i}", "kept", recipient, C.MESSAGE_STATUS_FAILED, at + 1, reason=("RATE_LIMITED", "slow")
                    )
                )
                events.append(status_event(f"r{i}", "kept", recipient, C.MESSAGE_STATUS_SUCCESS, at + 9, attempt=2))
            elif i % 4 == 1:
                events.append(status_event(f"d{i}", "kept", recipient, C.MESSAGE_STATUS_SUCCESS, at + 5))
            if i % 5 == 0:  # a person's click (a browser, 20 s after delivery): human before revision 0007 too
                click = click_event(f"c{i}", "kept", recipient, "promo", at + 20_000_000, ("BR", "SP", "São Paulo"))
                click.click.user_agent = "Mozilla/5.0 (Linux; Android 14) Chrome/124.0 Mobile Safari/537.36"
                events.append(click)
            if i % 6 == offset % 6:
                events.append(
                    ingest_pb2.Event(
                        engagement=ingest_pb2.EngagementEvent(
                            event_id=f"e{i}",
                            campaign_id="kept",
                            recipient=recipient,
                            kind=2,
                            text=f"yes {i + offset}",
                            occurred_at=ts(at + 30),
                        )
                    )
                )
            if i % 7 == offset % 7:
                for n, kind in enumerate((1, 4)):  # READ, BUTTON_CLICKED
                    events.append(
                        ingest_pb2.Event(
                            engagement=ingest_pb2.EngagementEvent(
                                event_id=f"b{i}-{n}",
                                campaign_id="kept",
                                recipient=recipient,
                                kind=kind,
                                button_id="yes" if kind == 4 else "",
                                button_name=f"Yes {offset}" if kind == 4 else "",
                                occurred_at=ts(at + 40 + n),
                            )
                        )
                    )
        events.append(status_event("g1", "gone", "+49151", C.MESSAGE_STATUS_SUBMITTED, BASE_US))
        results = send_events(client, events)
        assert {r.outcome for r in results} == {ingest_pb2.EVENT_OUTCOME_ACCEPTED}, results
        client.campaigns.DeleteCampaign(campaign_pb2.DeleteCampaignRequest(campaign_id="gone"), timeout=10)
    finally:
        client.channel.close()


def _workbook(data: bytes) -> dict[str, bytes]:
    """An XLSX file's parts but the one that says when it was made."""
    with zipfile.ZipFile(io.BytesIO(data)) as book:
        return {name: book.read(name) for name in book.namelist() if name != "docProps/core.xml"}


def _observe(address: str, api_key: str | None = None) -> dict[str, Any]:
    """What a user sees: the stats, the message report, the exports' bytes."""
    client = make_client(address) if api_key is None else keyed_client(address, api_key)
    try:
        stats = client.reports.GetCampaignStats(report_pb2.GetCampaignStatsRequest(campaign_id="kept"), timeout=10)
        rows, _ = all_report_rows(client, "kept")
        exports = {}
        messages, clicks = report_pb2.EXPORT_KIND_MESSAGES, report_pb2.EXPORT_KIND_CLICKS
        csv, xlsx = report_pb2.EXPORT_FORMAT_CSV, report_pb2.EXPORT_FORMAT_XLSX
        for kind, fmt in ((messages, csv), (clicks, csv), (messages, xlsx)):
            request = report_pb2.ExportReportRequest(campaign_id="kept", kind=kind, format=fmt)
            data = b"".join(m.chunk for m in client.reports.ExportReport(request, timeout=30))
            exports[(kind, fmt)] = data if fmt == csv else _workbook(data)
        return {
            "stats": stats.stats.SerializeToString(deterministic=True),
            "report": [r.SerializeToString(deterministic=True) for r in rows],
            "exports": exports,
        }
    finally:
        client.channel.close()


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_database_of_the_previous_release_upgrades_in_place_with_nothing_lost(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database filled through the server's own code path, then turned
    into the previous release's (the revisions after the baseline undone, its
    record of SQL migrations), observed; then a server adopts it: every row
    of every table, the stats, the message report and the exports' bytes are
    the same after (the new columns filled in), and it works on (no cid
    reused)."""
    with blank_database(kind, tmp_path) as database:
        server = _server(database, tmp_path)
        try:
            _fill(server.address)
            before = _observe(server.address)
        finally:
            server.stop()
        back_to_the_previous_release(database)
        rows_before = dump(database)
        assert upgrade.current(engine_of(database)) is None  # still the legacy schema
        assert rows_before["events"] and rows_before["engagement"] and rows_before["replies"]

        server = _server(database, tmp_path)  # adopts it
        try:
            assert upgrade.current(engine_of(database)) == upgrade.head()
            rows_after = dump(database)
            _pending_reclassifications(rows_after)  # revision 0012
            assert all(rows_after.pop(table) == [] for table in SINCE_BASELINE)  # made empty
            # The lease a running server holds (the report scheduler's) is renewed by each.
            # Revision 0002 added campaigns.name_folded: each name, folded; 0005
            # the source (source_campaign_id, source_segment, the last two): NULL.
            assert [(row[3], row[-3], row[-2:]) for row in rows_after["campaigns"]] == [
                (row[3], fold(row[3]), (None, None)) for row in rows_before["campaigns"]
            ]
            rows_after["campaigns"] = sorted((row[:-3] for row in rows_after["campaigns"]), key=repr)
            _without_business(rows_after)  # revision 0006
            _strip_encodings(rows_after)  # revision 0011
            _strip_bot_columns(rows_after)  # revision 0007
            # The lease a running server holds (the report scheduler's) is renewed by each.
            assert {t: r for t, r in rows_after.items() if t != "leases"} == {
                t: r for t, r in rows_before.items() if t != "leases"
            }
            after = _observe(server.address)
            assert after["stats"] == before["stats"]
            assert after["report"] == before["report"]
            assert after["exports"] == before["exports"]
            client = make_client(server.address)
            try:
                client.campaigns.CreateCampaign(
                    campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id="new")), timeout=10
                )
            finally:
                client.channel.close()
        finally:
            server.stop()
        engine = engine_of(database)
        with engine.connect() as conn:
            cids: dict[str, int] = dict(conn.execute(sa.text("SELECT campaign_id, cid FROM campaigns")).all())
            legacy = conn.execute(sa.text("SELECT max(version) FROM schema_migrations")).scalar()
        assert cids["new"] > cids["kept"] + 1  # above the deleted campaign's cid too
        assert legacy == upgrade.LEGACY_LAST["postgresql" if kind == "postgres" else "sqlite"]  # kept, as a record


def _strip_encodings(rows: dict[str, list[tuple[Any, ...]]]) -> None:
    """Revision 0011 adds the message rows' stored encodings (the last two
    columns of `messages`; the server's background job may have filled
    them, store/encodings.py): taken out."""
    rows["messages"] = [row[:-2] for row in rows["messages"]]


def _strip_bot_columns(rows: dict[str, list[tuple[Any, ...]]]) -> None:
    """Revision 0007 (bot clicks) counts every click stored before it as
    human: checked here, then its columns, counters and table taken out."""
    clicks_at = list(schema.messages.c.keys()).index("clicks") - 1  # business_id taken away (0006)
    kind_at = list(schema.events.c.keys()).index("kind")
    assert all(row[-1] == row[clicks_at] for row in rows["messages"])
    assert all(row[-1] == (0 if row[kind_at] == KIND_CLICK else None) for row in rows["events"])
    assert all(row[-1] >= 1 for row in rows["link_clickers"])
    copies = {"human_clicks": "clicks", "unique_human_clickers": "unique_clickers"}
    kept = {(row[0], row[1], row[2]): row[3] for row in rows["counters"]}  # (cid, scope, name): value
    assert all(kept[(r[0], r[1], copies[r[2]])] == r[3] for r in rows["counters"] if r[2] in copies)
    rows["counters"] = [row for row in rows["counters"] if row[2] not in copies]
    for table in ("messages", "events", "link_clickers"):
        rows[table] = sorted((row[:-1] for row in rows[table]), key=repr)
    assert rows.pop("business_settings", []) == []


def _pending_reclassifications(rows: dict[str, list[tuple[Any, ...]]]) -> None:
    """Revision 0012 asks for a re-classification of every business with
    clicks (the server's background task may have finished some already):
    checked, then the rows taken out (the table left empty)."""
    with_clicks = {row[0] for row in rows["counters"] if row[2:4] == ("", "clicks") and row[4] > 0}
    assert with_clicks
    assert {row[0] for row in rows["reclassifications"]} <= with_clicks
    rows["reclassifications"] = []


# The tables of a campaign's data that revision 0006 gave a business_id (their first column).
CAMPAIGN_DATA = ("messages", "counters", "link_clickers", "engagement", "replies", "button_clicks")


def _without_business(rows: dict[str, list[tuple[Any, ...]]]) -> None:
    """Check that each row of CAMPAIGN_DATA names its campaign's business
    (its first column), and take that column away (the rows as before 0006)."""
    owner = {row[0]: row[1] for row in rows["campaigns"]}  # cid, business_id
    for table in CAMPAIGN_DATA:
        assert all(row[0] == owner[row[1]] for row in rows[table]), table
        rows[table] = sorted((row[1:] for row in rows[table]), key=repr)


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_database_at_revision_0005_upgrades_to_0006_with_nothing_lost(tmp_path: Path, kind: str) -> None:
    """Two businesses with the same campaign ids, each with statuses,
    clicks, reads, replies, button taps and a deleted campaign, observed;
    the database taken back to revision 0005 (no business_id in the six
    tables of a campaign's data, the old keys); a server upgrades it: every
    row is there with its campaign's business, and each business's stats,
    message report and exports' bytes are the same."""
    with blank_database(kind, tmp_path) as database:
        upgrade.upgrade(engine_of(database))
        keys = {business: create_key(database, business, Scope.ADMIN) for business in ("acme", "zeta")}
        server = _server(database, tmp_path)
        try:
            for offset, key in enumerate(keys.values()):
                _fill(server.address, key, offset=offset)
            before = {business: _observe(server.address, key) for business, key in keys.items()}
        finally:
            server.stop()
        engine = engine_of(database)
        with engine.begin() as connection:
            alembic_command.downgrade(upgrade.config(connection), "0005")
        assert upgrade.current(engine) == "0005"
        if kind == "postgres":
            engine.dispose()
        rows_before = dump(database)
        assert all(rows_before[table] for table in CAMPAIGN_DATA)
        assert len({row[1] for row in rows_before["campaigns"]}) == 2

        server = _server(database, tmp_path)  # upgrades it
        try:
            assert upgrade.current(engine_of(database)) == upgrade.head()
            rows_after = dump(database)
            if kind == "sqlite":  # business_id before the other columns: SQLite 3.40 checks WITHOUT ROWID tables right
                with engine_of(database).connect() as conn:
                    assert conn.exec_driver_sql("PRAGMA integrity_check").all() == [("ok",)]
            _pending_reclassifications(rows_after)  # revision 0012
            _without_business(rows_after)
            _strip_encodings(rows_after)  # revision 0011
            _strip_bot_columns(rows_after)  # revision 0007, after 0006
            # Tables made by a revision after 0005 and 0006 (SINCE_BASELINE): made empty.
            assert all(rows_after.pop(table, []) == [] for table in SINCE_BASELINE if table not in rows_before)
            assert {t: r for t, r in rows_after.items() if t != "leases"} == {
                t: r for t, r in rows_before.items() if t != "leases"
            }
            after = {business: _observe(server.address, key) for business, key in keys.items()}
            assert after == before
            assert before["acme"]["stats"] != before["zeta"]["stats"]  # each its own
        finally:
            server.stop()
        if kind == "postgres":
            engine_of(database).dispose()


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "upto"), [("sqlite", 3), ("sqlite", 10), ("postgres", 1), ("postgres", 4)])
def test_an_older_database_gets_the_remaining_legacy_steps_then_the_history(
    tmp_path: Path, kind: str, upto: int
) -> None:
    with blank_database(kind, tmp_path) as older, blank_database(kind, tmp_path) as fresh:
        build_legacy(older, upto=upto)
        last = upgrade.LEGACY_LAST["postgresql" if kind == "postgres" else "sqlite"]
        applied = upgrade.upgrade(engine_of(older))
        # The baseline is stamped, not run; the revisions after it are.
        assert applied == [f"legacy {v}" for v in range(upto + 1, last + 1)] + upgrade.revisions()[1:]
        assert upgrade.current(engine_of(older)) == upgrade.head()
        upgrade.upgrade(engine_of(fresh))
        assert describe(older) == describe(fresh)


def test_a_failed_adoption_keeps_the_database_as_it_was(tmp_path: Path) -> None:
    """All of an upgrade is one transaction: a legacy step that fails leaves
    the earlier ones and no stamp behind (here: a table the step creates is
    in the way)."""
    database = str(tmp_path / "old.db")
    build_legacy(database, upto=9)
    conn = db.connect(database)
    conn.execute("CREATE TABLE http_sessions (x)")  # what 0010 creates
    conn.close()
    with pytest.raises(db.StorageError, match="already exists"):
        db.open_database(database)
    engine = engine_of(database)
    with engine.connect() as check:
        assert check.execute(sa.text("SELECT max(version) FROM schema_migrations")).scalar() == 9
        assert not sa.inspect(check).has_table("alembic_version")
        assert "claimed_by" not in {c["name"] for c in sa.inspect(check).get_columns("report_runs")}


@contextmanager
def _migration_lock_held(database: str) -> Iterator[Callable[[], int] | None]:
    """On PostgreSQL, the migration lock held (as by a replica migrating)
    until the block ends; yields how many sessions wait for it."""
    if not database.startswith("postgresql://"):
        yield None
        return
    import psycopg

    with psycopg.connect(database, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [upgrade.LOCK_KEY])

        def waiting() -> int:
            row = holder.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").fetchone()
            return int(row[0]) if row else 0

        try:
            yield waiting
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s)", [upgrade.LOCK_KEY])


@pytest.mark.slow
@pytest.mark.parametrize("kind", BACKENDS)
def test_processes_upgrading_a_new_database_at_once_make_the_schema_once(tmp_path: Path, kind: str) -> None:
    """Four processes (replicas starting together; on SQLite a server and
    `flowtrack keys`) upgrade one new database at the same moment: one makes
    the schema, the others wait for it (PostgreSQL's advisory lock, SQLite's
    write lock) and find it done; none fails."""
    with blank_database(kind, tmp_path) as database:
        if kind == "sqlite":
            db.connect(database).close()  # the file exists (`db upgrade` refuses a missing one)
        command = [sys.executable, "-m", "flowtrack", "db", "upgrade", "--database", database]
        with _migration_lock_held(database) as waiting:
            processes = [
                subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)
            ]
            if waiting is not None:  # PostgreSQL: all four wait for the lock, then it is let go
                deadline = time.monotonic() + 60
                while waiting() < 4:
                    assert all(p.poll() is None for p in processes), "an upgrade did not wait for the lock"
                    assert time.monotonic() < deadline, "the upgrades did not all wait for the lock"
                    time.sleep(0.05)
        outputs = [p.communicate(timeout=120) for p in processes]
        assert [p.returncode for p in processes] == [0] * 4, outputs
        said = sorted(out.strip() for out, _ in outputs)
        assert (
            said
            == [f"applied {', '.join(upgrade.revisions())}; the database is at revision {upgrade.head()}"]
            + [f"the database is already at revision {upgrade.head()}, the newest"] * 3
        ), outputs
        with engine_of(database).connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all() == [upgrade.head()]


@pytest.mark.parametrize("kind", BACKENDS)
def test_the_db_command_upgrades_and_names_the_revision(tmp_path: Path, kind: str) -> None:
    with blank_database(kind, tmp_path) as database:
        build_legacy(database, upto=2 if kind == "sqlite" else 1)
        runner = CliRunner()
        result = runner.invoke(cli, ["db", "current", "--database", database])
        assert result.exit_code == 0, result.output
        assert "none" in result.output.lower()
        result = runner.invoke(cli, ["db", "upgrade", "--database", database])
        assert result.exit_code == 0, result.output
        assert upgrade.head() in result.output
        result = runner.invoke(cli, ["db", "current", "--database", database])
        assert result.exit_code == 0, result.output
        assert result.output.strip().endswith(upgrade.head())
        result = runner.invoke(cli, ["db", "upgrade", "--database", database])
        assert result.exit_code == 0, result.output
        assert "already" in result.output


@pytest.mark.slow
def test_the_db_command_says_why_it_cannot_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "garbage.db").write_bytes(b"not a database at all" * 100)
    cases = {
        str(tmp_path / "missing.db"): "no database at",
        str(tmp_path / "garbage.db"): "file is not a database",
        "postgresql://postgres@127.0.0.1:1/none": "cannot open database 127.0.0.1:1/none",
    }
    for database, reason in cases.items():
        for command in ("upgrade", "current"):
            done = subprocess.run(
                [sys.executable, "-m", "flowtrack", "db", command, "--database", database],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 1, done
            [line] = done.stderr.strip().splitlines()
            assert line.startswith("flowtrack: ") and reason in line, line
            assert done.stdout == ""


_LATER = """
from alembic import op
import sqlalchemy as sa

revision = "later"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("campaigns", sa.Column("note", sa.Text(), nullable=False, server_default=sa.text("'-'")))
    op.create_index("campaigns_by_note", "campaigns", ["note"])
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", BACKENDS)
def test_an_adopted_database_goes_on_through_the_later_revisions(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A history with a revision after the baseline (here a column and an
    index): a database of the previous release is stamped at the baseline,
    then gets that revision, its rows kept; a new one gets both."""
    import shutil

    from alembic.script import ScriptDirectory

    real = [s.revision for s in reversed(list(ScriptDirectory(str(upgrade.SCRIPTS)).walk_revisions()))]
    assert real[0] == upgrade.BASELINE
    scripts = tmp_path / "alembic"
    shutil.copytree(str(upgrade.SCRIPTS), scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "9999_note.py").write_text(_LATER.replace("{head}", real[-1]))
    monkeypatch.setattr(upgrade, "SCRIPTS", scripts)
    assert upgrade.head() == "later"
    with blank_database(kind, tmp_path) as old, blank_database(kind, tmp_path) as new:
        build_legacy(old)
        with engine_of(old).begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO campaigns (business_id, campaign_id, state, create_time, update_time)"
                    " VALUES ('b', 'kept', 2, 1, 1)"
                )
            )
        last = upgrade.LEGACY_LAST["postgresql" if kind == "postgres" else "sqlite"]
        assert upgrade.upgrade(engine_of(old)) == [*real[1:], "later"]  # stamped at the baseline, then the rest
        assert upgrade.upgrade(engine_of(new)) == [*real, "later"]
        for database in (old, new):
            assert upgrade.current(engine_of(database)) == "later"
        with engine_of(old).connect() as conn:
            assert conn.execute(sa.text("SELECT campaign_id, note FROM campaigns")).all() == [("kept", "-")]
            assert conn.execute(sa.text("SELECT max(version) FROM schema_migrations")).scalar() == last
        assert describe(old) == describe(new)


# Tables without a business_id column: global settings and locks (reference
# tables on Citus, docs/operations.md "Citus"), and sessions (looked up by
# their id before the business is known, as API keys are).
NO_BUSINESS = {
    "server_settings": "global",
    "leases": "global",
    "http_sessions": "a session of an API key, looked up by its id",
}
# Tables with a business_id whose key does not start with it, on each backend.
NOT_BUSINESS_FIRST = {
    "sqlite": {
        "api_keys": "a reference table: a key is looked up by its id before the business is known",
        # A dialect difference (revision 0006): PostgreSQL keys them (business_id, cid) and
        # (business_id, id); SQLite is never distributed, and its rowid is what a one-column
        # INTEGER PRIMARY KEY alone can be.
        "campaigns": "cid is SQLite's rowid (AUTOINCREMENT: never reused), which only a one-column key can be",
        "events": "id is SQLite's rowid (the append order), which only a one-column key can be",
    },
    "postgres": {
        "api_keys": "a reference table: a key is looked up by its id before the business is known",
    },
}


def primary_keys(database: str) -> dict[str, list[str]]:
    """Each table's primary key columns in key order, read from the
    database's own catalog (not through SQLAlchemy's MetaData)."""
    engine = engine_of(database)
    keys: dict[str, list[str]] = {}
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            tables = conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'table'").scalars().all()
            for table in tables:
                info = conn.exec_driver_sql(
                    f'PRAGMA table_info("{table}")'
                ).all()  # cid, name, type, notnull, default, pk
                keys[table] = [row[1] for row in sorted((r for r in info if r[5]), key=lambda r: r[5])]
                keys[table + ".columns"] = [row[1] for row in info]
        else:
            rows = conn.exec_driver_sql(
                "SELECT c.relname, a.attname FROM pg_constraint k"
                " JOIN pg_class c ON c.oid = k.conrelid"
                " CROSS JOIN LATERAL unnest(k.conkey) WITH ORDINALITY AS u(attnum, position)"
                " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = u.attnum"
                " WHERE k.contype = 'p' AND c.relnamespace = current_schema()::regnamespace"
                " ORDER BY c.relname, u.position"
            ).all()
            for table, column in rows:
                keys.setdefault(table, []).append(column)
            for table, column in conn.exec_driver_sql(
                "SELECT table_name, column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
            ).all():
                keys.setdefault(table + ".columns", []).append(column)
    if engine.dialect.name == "postgresql":
        engine.dispose()
    return keys


@pytest.mark.parametrize("kind", BACKENDS)
def test_every_tenant_tables_primary_key_starts_with_business_id(tmp_path: Path, kind: str) -> None:
    """Ready for Citus (docs/citus.md): a table with a business_id column is
    keyed by it first (so it can be distributed by it), but for the listed
    ones; the lists only shrink."""
    with blank_database(kind, tmp_path) as database:
        upgrade.upgrade(engine_of(database))
        keys = primary_keys(database)
    tables = {t for t in keys if not t.endswith(".columns")} - upgrade.NOT_SCHEMA
    assert tables == set(metadata.tables)
    tenant = {t for t in tables if "business_id" in keys[t + ".columns"]}
    assert tables - tenant == set(NO_BUSINESS)
    assert {t for t in tenant if keys[t][0] != "business_id"} == set(NOT_BUSINESS_FIRST[kind])
    assert keys["webhook_attempts"] == ["business_id", "message_id", "attempt"]
    assert keys["messages"] == ["business_id", "cid", "recipient"]
    assert keys["counters"] == ["business_id", "cid", "scope", "name"]
    assert keys["link_clickers"] == ["business_id", "cid", "link_id", "recipient"]
    assert keys["engagement"] == ["business_id", "cid", "recipient"]
    assert keys["replies"] == keys["button_clicks"] == ["business_id", "cid", "seq"]
    if kind == "postgres":
        assert keys["campaigns"] == ["business_id", "cid"] and keys["events"] == ["business_id", "id"]
    else:
        assert keys["campaigns"] == ["cid"] and keys["events"] == ["id"]
    assert keys["webhook_thresholds"] == ["business_id", "endpoint_id", "cid", "type"]


@pytest.mark.parametrize("kind", BACKENDS)
def test_revision_0003_names_the_business_of_each_attempt_and_threshold(tmp_path: Path, kind: str) -> None:
    """A database at revision 0002 with webhook and report rows: after 0003
    every row is there, each attempt with its message's business and each
    threshold with its endpoint's; an attempt or threshold whose parent is
    gone is dropped. Downgraded again, the rows are as they were."""
    with blank_database(kind, tmp_path) as database:
        engine = engine_of(database)
        upgrade.upgrade(engine, "0002")
        endpoint = {"secret": "s", "url": "https://example.com/", "events": "[]", "create_time": 1}
        message = {"type": "t", "body": "{}", "create_time": 1, "state": 1}
        schedule = {"kind": 1, "format": 1, "link_ttl": 1, "retention": 1}
        run = {"status": 2, "create_time": 1}
        rows: dict[str, list[dict[str, Any]]] = {
            "webhook_endpoints": [
                {"endpoint_id": "ep_a", "business_id": "a", **endpoint},
                {"endpoint_id": "ep_b", "business_id": "b", **endpoint},
            ],
            "webhook_messages": [
                {"message_id": "msg_a", "business_id": "a", "endpoint_id": "ep_a", **message},
                {"message_id": "msg_b", "business_id": "b", "endpoint_id": "ep_b", **message},
            ],
            "webhook_attempts": [
                {"message_id": "msg_a", "attempt": 1, "time": 5},
                {"message_id": "msg_a", "attempt": 2, "time": 6},
                {"message_id": "msg_b", "attempt": 1, "time": 7},
                {"message_id": "msg_gone", "attempt": 1, "time": 8},
            ],
            "webhook_thresholds": [
                {"endpoint_id": "ep_a", "cid": 1, "type": "campaign.failure_rate"},
                {"endpoint_id": "ep_b", "cid": 2, "type": "campaign.failure_rate"},
                {"endpoint_id": "ep_gone", "cid": 3, "type": "campaign.failure_rate"},
            ],
            "report_schedules": [
                {"schedule_id": "rs_a", "business_id": "a", "filters": b"", "create_time": 1, **schedule},
            ],
            "report_runs": [
                {"run_id": "run_a", "schedule_id": "rs_a", "business_id": "a", "campaign_id": "c", **run},
            ],
        }
        tables = {name: sa.Table(name, sa.MetaData(), autoload_with=engine) for name in rows}
        with engine.begin() as conn:
            for name, values in rows.items():
                conn.execute(sa.insert(tables[name]), values)

        def read(name: str, *columns: str) -> list[tuple[Any, ...]]:
            table = sa.table(name, *(sa.column(c) for c in columns))
            with engine.connect() as conn:
                return sorted(tuple(r) for r in conn.execute(sa.select(*table.c)))

        before = {name: read(name, *rows[name][0]) for name in rows}
        upgrade.upgrade(engine)
        assert read("webhook_attempts", "business_id", "message_id", "attempt") == [
            ("a", "msg_a", 1),
            ("a", "msg_a", 2),
            ("b", "msg_b", 1),
        ]
        assert read("webhook_thresholds", "business_id", "endpoint_id", "cid") == [("a", "ep_a", 1), ("b", "ep_b", 2)]
        for name in ("webhook_endpoints", "webhook_messages", "report_schedules", "report_runs"):
            assert read(name, *rows[name][0]) == before[name]
        with engine.begin() as conn:
            from alembic import command

            command.downgrade(upgrade.config(conn), "0002")
        after = {name: read(name, *rows[name][0]) for name in rows}
        gone = {"msg_gone", "ep_gone"}
        assert after == {name: [r for r in found if not gone & set(r)] for name, found in before.items()}
        if kind == "postgres":
            engine.dispose()


def test_sqlite_keys_come_first_and_integrity_check_passes_with_a_row_in_every_table(tmp_path: Path) -> None:
    """Every table stored as its key's b-tree on SQLite (WITHOUT ROWID)
    declares its key's columns first, in the key's order (schema.py,
    WITHOUT_ROWID), and `PRAGMA integrity_check` (what `flowtrack backup
    --check` runs) is ok with a row in every table of a migrated database:
    SQLite 3.40 misreads such a table's NOT NULL columns when a key column
    comes after them (webhook attempts did, until revision 0010)."""
    import sqlite3

    with blank_database("sqlite", tmp_path) as database:
        upgrade.upgrade(engine_of(database))
        conn = sqlite3.connect(database)
        try:
            for table in metadata.sorted_tables:
                info = conn.execute(f'PRAGMA table_info("{table.name}")').fetchall()
                if table.dialect_options["sqlite"].get("with_rowid", True) is False:
                    names = [row[1] for row in info]
                    key = [row[1] for row in sorted((row for row in info if row[5]), key=lambda row: row[5])]
                    assert names[: len(key)] == key, f"{table.name}: its key {key} must come first, not {names}"
                values = [
                    1
                    if "INT" in row[2].upper()
                    else 1.5
                    if "REAL" in row[2].upper()
                    else b"x"
                    if "BLOB" in row[2].upper()
                    else "x"
                    for row in info
                ]
                columns = ", ".join(f'"{row[1]}"' for row in info)
                conn.execute(f'INSERT INTO "{table.name}" ({columns}) VALUES ({", ".join("?" * len(info))})', values)
            conn.commit()
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            conn.close()


@pytest.mark.parametrize("kind", BACKENDS)
def test_revision_0010_keeps_webhook_attempts_and_thresholds(tmp_path: Path, kind: str) -> None:
    """The two tables made again with their keys first keep every row."""
    rows: dict[str, list[dict[str, Any]]] = {
        "webhook_attempts": [
            {
                "business_id": "acme",
                "message_id": f"msg_{i}",
                "attempt": 1 + i % 3,
                "time": 10 + i,
                "status_code": 500,
                "latency_us": 7,
                "error": f"boom {i}",
            }
            for i in range(50)
        ],
        "webhook_thresholds": [
            {"business_id": b, "endpoint_id": "ep_1", "cid": i, "type": "campaign.failure_rate"}
            for b in ("acme", "globex")
            for i in range(5)
        ],
    }
    with blank_database(kind, tmp_path) as database:
        engine = engine_of(database)
        upgrade.upgrade(engine, "0006")
        with engine.begin() as conn:
            for table, found in rows.items():
                conn.execute(sa.table(table, *(sa.column(c) for c in found[0])).insert(), found)
        upgrade.upgrade(engine)
        with engine.connect() as conn:
            for table, found in rows.items():
                kept = [dict(r._mapping) for r in conn.execute(sa.select(metadata.tables[table]))]
                assert sorted(tuple(sorted(r.items())) for r in kept) == sorted(tuple(sorted(r.items())) for r in found)
        engine.dispose()


@pytest.mark.parametrize(("kind", "revision"), [(k, r) for r in ("0006", "0010") for k in BACKENDS])
def test_clicks_stored_before_bot_clicks_are_classified_after_an_upgrade(
    tmp_path: Path, kind: str, revision: str
) -> None:
    """A database at revision 0006 (before bot clicks) or 0010 (after 0007,
    which counted the clicks it found human) holding link previews', a
    scanner's and a user-agent-less click: once a server upgraded it
    (revision 0012), its background task classifies them as the default
    rules say, and every counter equals a recount."""
    with blank_database(kind, tmp_path) as database:
        upgrade.upgrade(engine_of(database))
        server = _server(database, tmp_path)
        client = make_client(server.address)
        try:
            tell_story(client)
            assert stats_of(client).overall.bot_clicks == 6
        finally:
            client.channel.close()
            server.stop()
        engine = engine_of(database)
        with engine.begin() as connection:
            alembic_command.downgrade(upgrade.config(connection), "0006")
        if revision == "0010":
            upgrade.upgrade(engine, "0010")
            with engine.connect() as conn:
                human = sa.text("SELECT value FROM counters WHERE scope = '' AND name = 'human_clicks'")
                assert conn.execute(human).scalar() == len(STORY)  # 0007: every click human
        if kind == "postgres":
            engine.dispose()

        server = _server(database, tmp_path)  # upgrades it
        client = make_client(server.address)
        try:
            deadline = time.monotonic() + 60
            while _pending(database):
                assert time.monotonic() < deadline, "the re-classification was not finished"
                time.sleep(0.1)
            o = stats_of(client).overall
            assert (o.clicks, o.human_clicks, o.bot_clicks, o.unique_human_clickers) == (9, 3, 6, 2)
            reasons = {row.event_id: row.bot_reason for row in click_rows(client)}
            assert reasons == {event_id: REASONS[reason] for event_id, _, _, _, reason in STORY}
        finally:
            client.channel.close()
            server.stop()
        conn = connect_db(database)
        try:
            for business_id, cid in conn.execute("SELECT business_id, cid FROM campaigns").fetchall():
                assert check.problems(conn, business_id, cid) == []
        finally:
            conn.close()
        if kind == "postgres":
            engine_of(database).dispose()


def _pending(database: str) -> list[Any]:
    conn = connect_db(database)
    try:
        return list(conn.execute("SELECT business_id FROM reclassifications").fetchall())
    finally:
        conn.close()
