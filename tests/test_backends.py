"""The same answers on both backends (issue 20, items 3, 7, 8).

- Campaign name search (`name:TEXT`) folds with Python's str.casefold, once,
  when the name is written (campaigns.name_folded), so SQLite, PostgreSQL
  and a PostgreSQL database with the C locale find the same campaigns:
  `Straße` by `name:strasse`, `ΟΔΟΣ` by `name:οδος` (final sigma), the
  Turkish dotted I as casefold leaves it. Names stored before the column
  existed are folded by the migration.
- No text of a request may hold NUL (U+0000): INVALID_ARGUMENT, reason
  NUL_CHARACTER, naming the field, on both backends and both doors.
- The marks that keep a test to one run need their reason, and the Citus
  check (tests/citus.py) tells a statement that names the business from one
  that does not.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import grpc
import pytest

from flowtrack.domain.campaigns import fold
from flowtrack.store import upgrade
from flowtrack.v1 import campaign_pb2 as pb
from tests import citus
from tests.conftest import (
    _POSTGRES,
    Backend,
    Client,
    ServerThread,
    connect_db,
    error_details,
    make_client,
    start_server,
    url_of,
)

ROOT = Path(__file__).resolve().parent.parent

NAMES = {
    "sharp": "Straße Sale",
    "sigma": "ΟΔΟΣ ΠΡΟΣ",
    "turkish": "İstanbul launch",
    "dotless": "ILIK",
    "plain": "Spring",
}
# (filter term, the campaigns Python's casefold finds)
CASES = [
    ("strasse", {"sharp"}),
    ("STRASSE", {"sharp"}),
    ("straße", {"sharp"}),
    ("οδος", {"sigma"}),
    ("οδοσ", {"sigma"}),
    ("ΟΔΟΣ", {"sigma"}),
    ("προς", {"sigma"}),
    ("İstanbul", {"turkish"}),
    ("i\u0307stanbul", {"turkish"}),
    ("istanbul", set()),  # casefold keeps İ's dot: i + U+0307
    ("\u0131l\u0131k", set()),  # dotless i (U+0131) is not i
    ("ilik", {"dotless"}),
    ("spring", {"plain"}),
    ("sale", {"sharp"}),
]


def found(client: Client, term: str) -> set[str]:
    reply = client.campaigns.ListCampaigns(pb.ListCampaignsRequest(filter=f'name:"{term}"', page_size=100), timeout=5)
    return {c.id for c in reply.campaigns}


def create_all(client: Client) -> None:
    for campaign_id, name in NAMES.items():
        client.campaigns.CreateCampaign(pb.CreateCampaignRequest(campaign=pb.Campaign(id=campaign_id, name=name)))


def assert_cases(client: Client) -> None:
    for term, expected in CASES:
        assert {k for k, name in NAMES.items() if fold(term) in fold(name)} == expected, term  # Python's answer
        assert found(client, term) == expected, term


def test_name_search_folds_as_python_does_on_both_backends(client: Client) -> None:
    create_all(client)
    assert_cases(client)
    # A renamed campaign is found by its new name only.
    renamed = pb.Campaign(id="plain", name="Große Woche")
    request = pb.UpdateCampaignRequest(campaign=renamed, update_mask={"paths": ["name"]})
    client.campaigns.UpdateCampaign(request, timeout=5)
    assert found(client, "grosse") == {"plain"}
    assert found(client, "spring") == set()


@pytest.mark.own_backend("makes a PostgreSQL database with the C locale of its own")
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_name_search_is_the_same_on_a_c_locale_database(backend: Backend, tmp_path: Path) -> None:
    """lower() folds ASCII only where LC_CTYPE is C: the folded column does not rely on it."""
    _POSTGRES.ensure()
    name = f"ft_test_c_{secrets.token_hex(5)}"
    with _POSTGRES.admin() as admin:
        admin.execute(f"CREATE DATABASE \"{name}\" LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    try:
        with _POSTGRES.admin() as admin:
            row = admin.execute("SELECT datctype FROM pg_database WHERE datname = %s", [name]).fetchone()
        assert row is not None and row[0] == "C"
        server = start_server(tmp_path, database=url_of(name))
        client = make_client(server.address)
        try:
            create_all(client)
            assert_cases(client)
            with connect_db(url_of(name)) as conn:  # what lower() would have given here
                assert conn.execute("SELECT lower('ΟΔΟΣ'), lower('Straße')").fetchone() == ("ΟΔΟΣ", "straße")
        finally:
            client.channel.close()
            server.stop()
    finally:
        _POSTGRES.drop(name)


def test_names_stored_before_the_folded_column_are_folded_by_the_migration(backend: Backend, tmp_path: Path) -> None:
    """A database of the previous release (before campaign_name_folded): its
    upgrade (revision 0002) folds every name in Python, and search finds them."""
    from tests.schema_helpers import blank_database, build_legacy, engine_of

    row = ("default", "old", "Straße ΟΔΟΣ", 1, 1, 1)
    insert = (
        "INSERT INTO campaigns (business_id, campaign_id, name, state, create_time, update_time)"
        " VALUES (?, ?, ?, ?, ?, ?)"
    )
    with blank_database("postgres" if backend.postgres else "sqlite", tmp_path) as database:
        build_legacy(database)
        with connect_db(database) as conn:
            conn.execute(insert, row)
            if not backend.postgres:
                conn.commit()
        assert "0002" in upgrade.upgrade(engine_of(database))
        with connect_db(database) as check:
            assert check.execute("SELECT name_folded FROM campaigns").fetchone() == ("strasse οδοσ",)
        server = start_server(tmp_path, database=database)
        client = make_client(server.address)
        try:
            assert found(client, "STRASSE οδος") == {"old"}
        finally:
            client.channel.close()
            server.stop()


# -- NUL ------------------------------------------------------------------------


def test_a_nul_in_any_text_is_invalid_argument_on_both_backends(server: ServerThread, client: Client) -> None:
    """Fields, map keys and values, repeated messages: each refused with the
    field named, before the store, and nothing is stored."""
    calls: list[tuple[Any, Any, dict[str, str]]] = [
        (
            client.campaigns.CreateCampaign,
            pb.CreateCampaignRequest(campaign=pb.Campaign(id="n", name="a\x00b")),
            {"campaign.name": "NUL_CHARACTER"},
        ),
        (
            client.campaigns.CreateCampaign,
            pb.CreateCampaignRequest(campaign=pb.Campaign(id="n", labels={"te\x00am": "x", "ok": "y\x00"})),
            {"campaign.labels[te\x00am]": "NUL_CHARACTER", "campaign.labels[ok]": "NUL_CHARACTER"},
        ),
        (
            client.campaigns.GetCampaign,
            pb.GetCampaignRequest(campaign_id="n\x00"),
            {"campaign_id": "NUL_CHARACTER"},
        ),
        (
            client.campaigns.ListCampaigns,
            pb.ListCampaignsRequest(filter="name:a\x00"),
            {"filter": "NUL_CHARACTER"},
        ),
    ]
    for call, request, expected in calls:
        with pytest.raises(grpc.RpcError) as raised:
            call(request, timeout=5)
        details = error_details(raised.value)
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert details.violation_reasons == expected
    client.campaigns.CreateCampaign(pb.CreateCampaignRequest(campaign=pb.Campaign(id="c")), timeout=5)
    batch = pb.AddRecipientsRequest(
        campaign_id="c",
        recipients=[pb.Recipient(recipient="+1"), pb.Recipient(recipient="+2", input_variables={"k": "\x00"})],
    )
    with pytest.raises(grpc.RpcError) as raised:
        client.campaigns.AddRecipients(iter([batch]), timeout=5)
    assert error_details(raised.value).violation_reasons == {"recipients[1].input_variables[k]": "NUL_CHARACTER"}
    with connect_db(server.settings.database) as conn:
        assert conn.execute("SELECT count(*) FROM campaigns").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == (0,)


# -- the marks and the Citus check -----------------------------------------------


@pytest.mark.sqlite_only("runs pytest on a file of its own: no database")
def test_a_one_run_mark_without_its_reason_stops_the_collection(tmp_path: Path) -> None:
    module = tmp_path / "test_marks.py"
    for mark, ok in [("sqlite_only", False), ("own_backend", False), ('sqlite_only("a reason")', True)]:
        module.write_text(
            textwrap.dedent(f"""
                import pytest

                @pytest.mark.{mark}
                def test_x() -> None:
                    pass
            """)
        )
        done = subprocess.run(
            # -n 0: in this process, not on the four workers of pyproject's addopts.
            [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "tests.conftest", "--collect-only", str(module)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert (done.returncode == 0) == ok, done.stdout + done.stderr
        if not ok:
            assert "needs its reason" in done.stdout + done.stderr


TENANTS = {"campaigns", "events", "webhook_endpoints"}


@pytest.mark.sqlite_only("reads SQL text: no database")
@pytest.mark.parametrize(
    ("sql", "problems"),
    [
        ("SELECT cid FROM campaigns WHERE business_id = %s AND campaign_id = %s", []),
        ("SELECT cid FROM campaigns WHERE campaign_id = %s", ["SELECT from campaigns without business_id"]),
        ("UPDATE campaigns SET name = %s WHERE cid = %s", ["UPDATE campaigns without business_id"]),
        ("UPDATE campaigns SET name = %s WHERE business_id = %s AND cid = %s", []),
        ("DELETE FROM events WHERE cid = %(p1)s", ["DELETE events without business_id"]),
        ("INSERT INTO events (business_id, seq) VALUES (%s, %s) ON CONFLICT DO NOTHING", []),
        ("INSERT INTO events (seq) VALUES (%s)", ["INSERT INTO events without business_id"]),
        ("SELECT m.x FROM messages m JOIN campaigns c ON c.cid = m.cid AND c.business_id = %s", []),
        # A subquery's filter does not filter the outer table.
        (
            "SELECT 1 FROM campaigns c WHERE c.cid IN (SELECT cid FROM events WHERE business_id = %s)",
            ["SELECT from campaigns without business_id"],
        ),
        # Another table's business_id does not filter this one.
        (
            "SELECT 1 FROM campaigns c JOIN webhook_endpoints w ON w.cid = c.cid WHERE w.business_id = %s",
            ["SELECT from campaigns without business_id"],
        ),
        # Joined on the business, but about every business: across shards.
        (
            "SELECT 1 FROM campaigns c JOIN webhook_endpoints w ON w.business_id = c.business_id WHERE c.state = 1",
            ["SELECT from campaigns, webhook_endpoints across businesses"],
        ),
        ("SELECT 1 FROM campaigns c JOIN webhook_endpoints w USING (business_id, cid) WHERE c.business_id = %s", []),
        # A LATERAL probe keyed by an outer query's column (PgConnection.rows_by_keys).
        (
            "SELECT w.k, r.* FROM (SELECT (p->>0)::text AS k FROM json_array_elements(%s::json) AS p) AS w"
            " CROSS JOIN LATERAL (SELECT a FROM events WHERE business_id = w.k OFFSET 0) AS r",
            [],
        ),
        ("SELECT key FROM server_settings", []),  # not a tenant table
    ],
)
def test_the_citus_check_reads_which_table_is_filtered(sql: str, problems: list[str]) -> None:
    assert citus.unfiltered(sql, TENANTS) == problems


@pytest.mark.sqlite_only("reads SQL text: no database")
def test_every_allowed_cross_business_statement_has_its_reason() -> None:
    for text, reason in citus.ALLOWED + citus.PENDING:
        assert text.strip() and len(reason) > 20, (text, reason)
