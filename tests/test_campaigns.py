"""CampaignService through a real server, real sockets and the generated stubs:
every RPC's happy path, every validation error with its field violation and
ErrorInfo reason, the state machine, pagination, filters, tokens, audiences
and deletion (checked in the SQLite file itself)."""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2

from flowtrack.domain import tokens
from flowtrack.domain.campaigns import CampaignDraft, parse_filter
from flowtrack.store import campaigns as queries
from flowtrack.store.writer import Tx
from flowtrack.v1 import campaign_pb2 as pb
from flowtrack.v1 import common_pb2, ingest_pb2, report_pb2
from tests.conftest import (
    Backend,
    Client,
    ErrorDetails,
    ServerThread,
    checks,
    connect_db,
    error_details,
    make_client,
    start_server,
)
from tests.tenants import start_tenants

S = pb.CAMPAIGN_STATE_SCHEDULED
R = pb.CAMPAIGN_STATE_RUNNING
C = pb.CAMPAIGN_STATE_COMPLETED
X = pb.CAMPAIGN_STATE_CANCELLED


# -- helpers ------------------------------------------------------------------
def create(client: Client, **fields: Any) -> pb.Campaign:
    reply = client.campaigns.CreateCampaign(pb.CreateCampaignRequest(campaign=pb.Campaign(**fields)), timeout=5)
    return reply.campaign


def get(client: Client, campaign_id: str) -> pb.Campaign:
    return client.campaigns.GetCampaign(pb.GetCampaignRequest(campaign_id=campaign_id), timeout=5).campaign


def update(client: Client, campaign: pb.Campaign, *paths: str) -> pb.Campaign:
    request = pb.UpdateCampaignRequest(campaign=campaign, update_mask=field_mask_pb2.FieldMask(paths=list(paths)))
    return client.campaigns.UpdateCampaign(request, timeout=5).campaign


def fails(call: Callable[..., Any], request: Any) -> ErrorDetails:
    with pytest.raises(grpc.RpcError) as caught:
        result = call(request, timeout=5)
        if hasattr(result, "__next__"):
            list(result)
    return error_details(caught.value)


def add(client: Client, *batches: pb.AddRecipientsRequest) -> pb.AddRecipientsResponse:
    return client.campaigns.AddRecipients(iter(batches), timeout=10)


def rec(recipient: str, channel: str = "", variant: str = "", **inputs: str) -> pb.Recipient:
    return pb.Recipient(recipient=recipient, channel=channel, variant=variant, input_variables=inputs)


def ids(reply: pb.ListCampaignsResponse) -> list[str]:
    return [c.id for c in reply.campaigns]


def list_all(client: Client, filter: str = "", page_size: int = 0) -> list[str]:
    found: list[str] = []
    token = ""
    for _ in range(1000):  # a token that never advances must fail the test, not hang it
        reply = client.campaigns.ListCampaigns(
            pb.ListCampaignsRequest(page_size=page_size, page_token=token, filter=filter), timeout=5
        )
        found += ids(reply)
        token = reply.next_page_token
        if not token:
            return found
    raise AssertionError("pagination does not end")


def db(server: ServerThread) -> sqlite3.Connection:
    return connect_db(server.settings.database)


def cid_of(server: ServerThread, campaign_id: str, business_id: str = "default") -> int:
    with db(server) as conn:
        row = conn.execute(
            "SELECT cid FROM campaigns WHERE business_id = ? AND campaign_id = ?", (business_id, campaign_id)
        ).fetchone()
    assert row is not None
    return int(row[0])


def write(server: ServerThread, job: Callable[[Tx], Any]) -> Any:
    return server.store.writer.run_sync(job)


# -- CreateCampaign / GetCampaign ---------------------------------------------
def test_create_with_client_id_then_get_returns_every_field(client: Client) -> None:
    schedule = timestamp_pb2.Timestamp(seconds=1_900_000_000, nanos=123_456_000)
    made = create(
        client,
        id="spring-2026.v1:a_b",
        name="Spring sale",
        flow_id="flow-7",
        channels=["whatsapp", "sms"],
        labels={"team": "growth", "region": "br"},
        schedule_time=schedule,
        recipient_count=99,  # output only: ignored
        implicit=True,  # output only: ignored
    )
    assert made.id == "spring-2026.v1:a_b"
    assert made.state == S
    assert made.HasField("create_time") and made.update_time == made.create_time
    assert not made.HasField("start_time") and not made.HasField("complete_time")
    assert made.recipient_count == 0 and not made.implicit
    got = get(client, made.id)
    assert got == made
    assert list(got.channels) == ["whatsapp", "sms"]
    assert dict(got.labels) == {"team": "growth", "region": "br"}
    assert got.schedule_time == schedule
    assert got.name == "Spring sale" and got.flow_id == "flow-7"


def test_create_generates_an_id_when_empty(client: Client) -> None:
    first = create(client, name="a")
    second = create(client)
    for made in (first, second):
        assert re.fullmatch(r"cmp_[a-z2-7]{20}", made.id), made.id
        assert get(client, made.id).id == made.id
    assert first.id != second.id


def test_create_running_sets_start_time(client: Client) -> None:
    made = create(client, id="live", state=R)
    assert made.state == R
    assert made.start_time == made.create_time


def test_create_with_a_taken_id_is_already_exists_and_changes_nothing(client: Client) -> None:
    create(client, id="taken", name="first")
    error = fails(client.campaigns.CreateCampaign, pb.CreateCampaignRequest(campaign=pb.Campaign(id="taken")))
    assert error.code == grpc.StatusCode.ALREADY_EXISTS
    assert error.reason == "CAMPAIGN_ALREADY_EXISTS"
    assert "taken" in error.message
    assert get(client, "taken").name == "first"


def test_create_accepts_every_limit_exactly(client: Client) -> None:
    made = create(
        client,
        id="a" * 128,
        name="n" * 256,
        flow_id="f" * 128,
        channels=[f"{i:02d}" + "c" * 30 for i in range(16)],
        labels={f"{i:02d}" + "k" * 61: "v" * 256 for i in range(32)},
        state=R,
    )
    assert len(get(client, made.id).labels) == 32


def test_create_reports_every_violation_at_once(client: Client) -> None:
    labels = {f"k{i}": "v" for i in range(32)}
    labels["K" * 64] = "v" * 257
    request = pb.CreateCampaignRequest(
        campaign=pb.Campaign(
            id="no spaces!",
            name="n" * 257,
            flow_id="f" * 129,
            channels=["sms"] * 2 + ["", "c" * 33] + [f"x{i}" for i in range(14)],
            labels=labels,
            state=C,
            schedule_time=timestamp_pb2.Timestamp(seconds=253_402_300_800),
        )
    )
    error = fails(client.campaigns.CreateCampaign, request)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_ARGUMENT"
    long_key = "campaign.labels[" + "K" * 32 + "]"
    assert error.violation_reasons == {
        "campaign.id": "BAD_FORMAT",
        "campaign.name": "TOO_LONG",
        "campaign.flow_id": "TOO_LONG",
        "campaign.channels": "TOO_MANY",
        "campaign.channels[1]": "DUPLICATE",
        "campaign.channels[2]": "REQUIRED",
        "campaign.channels[3]": "TOO_LONG",
        "campaign.labels": "TOO_MANY",
        long_key: "TOO_LONG",
        "campaign.schedule_time": "OUT_OF_RANGE",
        "campaign.state": "NOT_ALLOWED",
    }
    assert "256" in error.violations["campaign.name"]
    assert list_all(client) == []


@pytest.fixture(scope="module")
def refusing(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[Client]:
    """One server for the cases that must be refused (they store nothing, so
    they need no server each): made once per module and backend."""
    server = start_server(tmp_path_factory.mktemp("refusing"))
    client = make_client(server.address)
    yield client
    client.channel.close()
    server.stop()


@pytest.mark.parametrize(
    ("campaign", "field", "reason"),
    [
        (None, "campaign", "REQUIRED"),
        (pb.Campaign(id="i" * 129), "campaign.id", "TOO_LONG"),
        (pb.Campaign(id="caf\u00e9"), "campaign.id", "BAD_FORMAT"),
        (pb.Campaign(id="a/b"), "campaign.id", "BAD_FORMAT"),
        (pb.Campaign(name="n" * 257), "campaign.name", "TOO_LONG"),
        (pb.Campaign(flow_id="f" * 129), "campaign.flow_id", "TOO_LONG"),
        (pb.Campaign(channels=[str(i) for i in range(17)]), "campaign.channels", "TOO_MANY"),
        (pb.Campaign(channels=["sms", "c" * 33]), "campaign.channels[1]", "TOO_LONG"),
        (pb.Campaign(labels={str(i): "" for i in range(33)}), "campaign.labels", "TOO_MANY"),
        (pb.Campaign(labels={"": "v"}), "campaign.labels[]", "REQUIRED"),
        (pb.Campaign(labels={"team": "v" * 257}), "campaign.labels[team]", "TOO_LONG"),
        (pb.Campaign(state=X), "campaign.state", "NOT_ALLOWED"),
        (pb.Campaign(state=9), "campaign.state", "BAD_ENUM"),  # type: ignore[arg-type]
        (
            pb.Campaign(schedule_time=timestamp_pb2.Timestamp(seconds=1, nanos=1_000_000_000)),
            "campaign.schedule_time",
            "OUT_OF_RANGE",
        ),
    ],
)
def test_create_refuses_each_invalid_field(
    refusing: Client, campaign: pb.Campaign | None, field: str, reason: str
) -> None:
    error = fails(refusing.campaigns.CreateCampaign, pb.CreateCampaignRequest(campaign=campaign))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.violation_reasons == {field: reason}
    assert error.violations[field]
    assert field in error.message


def test_get_unknown_or_empty_id(client: Client) -> None:
    error = fails(client.campaigns.GetCampaign, pb.GetCampaignRequest(campaign_id="nope"))
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "CAMPAIGN_NOT_FOUND")
    error = fails(client.campaigns.GetCampaign, pb.GetCampaignRequest())
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.violation_reasons == {"campaign_id": "REQUIRED"}


def test_another_business_campaign_is_invisible(server: ServerThread, client: Client) -> None:
    write(server, queries.create("other", CampaignDraft(campaign_id="shared", name="theirs")))
    for call, request in [
        (client.campaigns.GetCampaign, pb.GetCampaignRequest(campaign_id="shared")),
        (client.campaigns.DeleteCampaign, pb.DeleteCampaignRequest(campaign_id="shared")),
        (client.campaigns.UpdateCampaign, pb.UpdateCampaignRequest(campaign=pb.Campaign(id="shared", name="x"))),
    ]:
        assert fails(call, request).code == grpc.StatusCode.NOT_FOUND
    error = fails(client.campaigns.AddRecipients, iter([pb.AddRecipientsRequest(campaign_id="shared")]))
    assert error.code == grpc.StatusCode.NOT_FOUND
    assert list_all(client) == []
    # Ids are unique per business: the same id is free in ours.
    assert create(client, id="shared").name == ""
    assert list_all(client) == ["shared"]
    with db(server) as conn:
        assert conn.execute("SELECT name FROM campaigns WHERE business_id = 'other'").fetchall() == [("theirs",)]


# -- UpdateCampaign -----------------------------------------------------------
def test_update_with_a_mask_changes_only_those_fields(client: Client) -> None:
    made = create(client, id="u", name="old", flow_id="f1", channels=["sms"], labels={"a": "1"})
    changed = update(client, pb.Campaign(id="u", name="new", flow_id="ignored", labels={"b": "2"}), "name", "labels")
    assert changed.name == "new" and dict(changed.labels) == {"b": "2"}
    assert changed.flow_id == "f1" and list(changed.channels) == ["sms"]
    assert changed.create_time == made.create_time
    assert changed.update_time.ToMicroseconds() > made.update_time.ToMicroseconds()
    assert get(client, "u") == changed


def test_update_with_an_empty_mask_replaces_all_six_fields(client: Client) -> None:
    create(client, id="u", name="old", flow_id="f1", channels=["sms"], labels={"a": "1"}, state=R,
           schedule_time=timestamp_pb2.Timestamp(seconds=2_000_000_000))  # fmt: skip
    changed = update(client, pb.Campaign(id="u", name="new", channels=["email"]))
    assert changed.name == "new" and changed.flow_id == "" and list(changed.channels) == ["email"]
    assert dict(changed.labels) == {} and not changed.HasField("schedule_time")
    assert changed.state == R  # UNSPECIFIED with an empty mask keeps the state
    schedule = timestamp_pb2.Timestamp(seconds=2_100_000_000)
    assert update(client, pb.Campaign(id="u", schedule_time=schedule), "schedule_time").schedule_time == schedule


def test_update_refuses_bad_masks_and_values(client: Client) -> None:
    create(client, id="u", name="keep")
    cases: list[tuple[pb.UpdateCampaignRequest, dict[str, str]]] = [
        (
            pb.UpdateCampaignRequest(
                campaign=pb.Campaign(id="u"), update_mask=field_mask_pb2.FieldMask(paths=["name", "colour", "id"])
            ),
            {"update_mask.paths[1]": "UNKNOWN_FIELD", "update_mask.paths[2]": "NOT_UPDATABLE"},
        ),
        (
            pb.UpdateCampaignRequest(
                campaign=pb.Campaign(id="u"), update_mask=field_mask_pb2.FieldMask(paths=["create_time"])
            ),
            {"update_mask.paths[0]": "NOT_UPDATABLE"},
        ),
        (
            pb.UpdateCampaignRequest(campaign=pb.Campaign(name="x")),
            {"campaign.id": "REQUIRED"},
        ),
        (pb.UpdateCampaignRequest(), {"campaign": "REQUIRED"}),
        (
            pb.UpdateCampaignRequest(
                campaign=pb.Campaign(id="u", name="n" * 257, channels=["a", "a"], labels={"k": "v" * 257}, state=7)  # type: ignore[arg-type]
            ),
            {
                "campaign.name": "TOO_LONG",
                "campaign.channels[1]": "DUPLICATE",
                "campaign.labels[k]": "TOO_LONG",
                "campaign.state": "BAD_ENUM",
            },
        ),
        (
            pb.UpdateCampaignRequest(
                campaign=pb.Campaign(id="u"), update_mask=field_mask_pb2.FieldMask(paths=["state"])
            ),
            {"campaign.state": "REQUIRED"},
        ),
    ]
    for request, expected in cases:
        error = fails(client.campaigns.UpdateCampaign, request)
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT, request
        assert error.violation_reasons == expected
    # A value outside the mask is not looked at.
    assert update(client, pb.Campaign(id="u", name="n" * 300, flow_id="ok"), "flow_id").flow_id == "ok"
    assert get(client, "u").name == "keep"


def test_update_unknown_campaign_is_not_found(client: Client) -> None:
    error = fails(client.campaigns.UpdateCampaign, pb.UpdateCampaignRequest(campaign=pb.Campaign(id="ghost")))
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "CAMPAIGN_NOT_FOUND")


ALLOWED = {(S, S), (S, R), (S, X), (R, R), (R, C), (R, X), (C, C), (X, X)}


def _campaign_in(client: Client, campaign_id: str, state: int) -> pb.Campaign:
    made = create(client, id=campaign_id, state=R if state in (R, C) else S)
    if state in (C, X):
        made = update(client, pb.Campaign(id=campaign_id, state=state), "state")  # type: ignore[arg-type]
    assert made.state == state
    return made


def test_every_state_transition(client: Client) -> None:
    states = (S, R, C, X)
    for before in states:
        for after in states:
            campaign_id = f"t{before}{after}"
            made = _campaign_in(client, campaign_id, before)
            request = pb.UpdateCampaignRequest(
                campaign=pb.Campaign(id=campaign_id, state=after),
                update_mask=field_mask_pb2.FieldMask(paths=["state"]),
            )
            if (before, after) not in ALLOWED:
                error = fails(client.campaigns.UpdateCampaign, request)
                assert error.code == grpc.StatusCode.FAILED_PRECONDITION, (before, after)
                assert error.reason == "ILLEGAL_STATE_TRANSITION"
                assert pb.CampaignState.Name(before).removeprefix("CAMPAIGN_STATE_") in error.message
                assert get(client, campaign_id) == made
                continue
            changed = client.campaigns.UpdateCampaign(request, timeout=5).campaign
            assert changed.state == after
            assert changed.update_time.ToMicroseconds() > made.update_time.ToMicroseconds()
            if before == after:  # a no-op, apart from update_time
                assert (changed.start_time, changed.complete_time) == (made.start_time, made.complete_time)
            elif after == R:
                assert changed.start_time == changed.update_time
                assert not changed.HasField("complete_time")
            else:
                assert changed.complete_time == changed.update_time
                assert changed.start_time == made.start_time
            assert get(client, campaign_id) == changed


# -- DeleteCampaign -----------------------------------------------------------
def _rows(server: ServerThread, cid: int) -> dict[str, int]:
    with db(server) as conn:
        return {
            table: conn.execute(f"SELECT count(*) FROM {table} WHERE cid = ?", (cid,)).fetchone()[0]
            for table in ("campaigns", "messages", "events", "counters", "link_clickers")
        }


def _insert_events(server: ServerThread, cid: int, recipients: list[str]) -> None:
    def job(tx: Tx) -> None:
        for n, recipient in enumerate(recipients):
            seq = tx.next_sequence("default")
            checks(tx.conn).execute(
                "INSERT INTO events (business_id, seq, event_id, fingerprint, cid, recipient, kind, occurred_at,"
                " received_at, status, link_id) VALUES ('default', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (seq, f"e-{cid}-{n}", b"\x00", cid, recipient, 1 + n % 2, tx.now_us, tx.now_us, 3, "L1"),
            )
            checks(tx.conn).execute(
                "INSERT INTO link_clickers (business_id, cid, link_id, recipient) VALUES ('default', ?, 'L1', ?)",
                (cid, recipient),
            )
            tx.count("default", cid, "l:L1", "clicks", 1)

    write(server, job)


def test_delete_removes_every_row_of_the_campaign_and_nothing_else(server: ServerThread, client: Client) -> None:
    for campaign_id in ("doomed", "kept"):
        create(client, id=campaign_id)
        reply = add(
            client,
            pb.AddRecipientsRequest(campaign_id=campaign_id, recipients=[rec("+1", "sms", "A"), rec("+2"), rec("+3")]),
        )
        assert reply.added == 3
        _insert_events(server, cid_of(server, campaign_id), ["+1", "+2"])
    doomed, kept = cid_of(server, "doomed"), cid_of(server, "kept")
    before_kept = _rows(server, kept)
    assert min(before_kept.values()) > 0 and _rows(server, doomed) == before_kept

    reply = client.campaigns.DeleteCampaign(pb.DeleteCampaignRequest(campaign_id="doomed"), timeout=5)
    assert (reply.deleted_recipients, reply.deleted_events) == (3, 2)
    assert _rows(server, doomed) == dict.fromkeys(before_kept, 0)
    assert _rows(server, kept) == before_kept
    assert fails(client.campaigns.GetCampaign, pb.GetCampaignRequest(campaign_id="doomed")).code == (
        grpc.StatusCode.NOT_FOUND
    )
    error = fails(client.campaigns.DeleteCampaign, pb.DeleteCampaignRequest(campaign_id="doomed"))
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "CAMPAIGN_NOT_FOUND")
    # The id is free again, with an empty audience.
    assert create(client, id="doomed").recipient_count == 0
    assert add(client, pb.AddRecipientsRequest(campaign_id="doomed", recipients=[rec("+1")])).added == 1


def test_delete_needs_an_id(client: Client) -> None:
    error = fails(client.campaigns.DeleteCampaign, pb.DeleteCampaignRequest())
    assert error.violation_reasons == {"campaign_id": "REQUIRED"}


# -- ListCampaigns ------------------------------------------------------------
def _bulk_create(server: ServerThread, drafts: list[CampaignDraft]) -> None:
    """Many campaigns in one transaction: they share one create_time, so the
    order (and pagination) rests on the tie-break."""

    def job(tx: Tx) -> None:
        for draft in drafts:
            queries.create("default", draft)(tx)

    write(server, job)


def test_list_pages_newest_first_without_duplicates_or_gaps(server: ServerThread, client: Client) -> None:
    _bulk_create(server, [CampaignDraft(campaign_id=f"old{i:02d}") for i in range(12)])
    newer = [create(client, id=f"new{i:02d}").id for i in range(11)]
    expected = newer[::-1] + [f"old{i:02d}" for i in range(11, -1, -1)]
    pages: list[list[str]] = []
    token = ""
    while len(pages) < 100:
        reply = client.campaigns.ListCampaigns(pb.ListCampaignsRequest(page_size=5, page_token=token), timeout=5)
        pages.append(ids(reply))
        token = reply.next_page_token
        if not token:
            break
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    assert [i for page in pages for i in page] == expected
    # An exact multiple of the page size ends with an empty token, not an empty page.
    assert list_all(client, page_size=23) == expected
    reply = client.campaigns.ListCampaigns(pb.ListCampaignsRequest(page_size=23), timeout=5)
    assert reply.next_page_token == ""
    # Campaigns created between pages do not shift the pages after the token.
    first = client.campaigns.ListCampaigns(pb.ListCampaignsRequest(page_size=10), timeout=5)
    create(client, id="newest")
    rest = list_all_from(client, first.next_page_token, page_size=10)
    assert ids(first) + rest == expected


def list_all_from(client: Client, token: str, page_size: int) -> list[str]:
    found: list[str] = []
    for _ in range(1000):
        if not token:
            return found
        reply = client.campaigns.ListCampaigns(pb.ListCampaignsRequest(page_size=page_size, page_token=token))
        found += ids(reply)
        token = reply.next_page_token
    raise AssertionError("pagination does not end")


def test_list_page_size_default_and_cap(server: ServerThread, client: Client) -> None:
    _bulk_create(server, [CampaignDraft(campaign_id=f"c{i:03d}") for i in range(520)])
    reply = client.campaigns.ListCampaigns(pb.ListCampaignsRequest(), timeout=5)
    assert len(reply.campaigns) == 50 and reply.next_page_token
    reply = client.campaigns.ListCampaigns(pb.ListCampaignsRequest(page_size=100_000), timeout=5)
    assert len(reply.campaigns) == 500 and reply.next_page_token
    rest = client.campaigns.ListCampaigns(pb.ListCampaignsRequest(page_token=reply.next_page_token), timeout=5)
    assert len(rest.campaigns) == 20 and not rest.next_page_token
    assert len(set(ids(reply) + ids(rest))) == 520
    error = fails(client.campaigns.ListCampaigns, pb.ListCampaignsRequest(page_size=-1))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.violation_reasons == {"page_size": "OUT_OF_RANGE"}


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[Client]:
    """A server with campaigns to filter, made once per module and backend:
    the filters only read it (and each test checks the table survived)."""
    server = start_server(tmp_path_factory.mktemp("catalogue"))
    client = make_client(server.address)
    create(client, id="spring", name="Spring Sale", state=R, labels={"team": "growth", "tier": "gold"})
    create(client, id="springtime", name="SPRINGTIME promo", labels={"team": "care"})
    create(client, id="summer", name="Summer", state=R, labels={"team": "growth"})
    create(client, id="ete", name="\u00c9t\u00e9 \u00e0 Paris", state=R, labels={"a.b": "x y", "tier": ""})
    create(client, id="quote", name="O'Brien's \"best\" sale")
    done = create(client, id="done", name="spring cleaning", state=R)
    update(client, pb.Campaign(id=done.id, state=C), "state")
    yield client
    client.channel.close()
    server.stop()


@pytest.mark.parametrize(
    ("filter", "expected"),
    [
        ("", {"spring", "springtime", "summer", "ete", "quote", "done"}),
        ("state=RUNNING", {"spring", "summer", "ete"}),
        ("state=CAMPAIGN_STATE_RUNNING", {"spring", "summer", "ete"}),
        ("state=completed", {"done"}),
        ("state=SCHEDULED", {"springtime", "quote"}),
        ("state=CANCELLED", set()),
        ("name:spring", {"spring", "springtime", "done"}),
        ("name:SALE", {"spring", "quote"}),
        ("name:\u00e9T\u00c9", {"ete"}),
        ('name:"spring sale"', {"spring"}),
        ("name:o'brien", {"quote"}),
        ('name:"\\"best\\""', {"quote"}),
        ('name:"\'); DROP TABLE campaigns; --"', set()),
        ("labels.team=growth", {"spring", "summer"}),
        ("labels.team", {"spring", "springtime", "summer"}),
        ("labels.tier=", {"ete"}),
        ("labels.tier", {"spring", "ete"}),
        ('labels.a.b="x y"', {"ete"}),
        ("labels.missing", set()),
        ("state=RUNNING labels.team=growth", {"spring", "summer"}),
        ("  state=RUNNING   labels.team=growth name:spring  ", {"spring"}),
        ("labels.team labels.tier", {"spring"}),
        ("name:spring name:sale", {"spring"}),  # each term its own parameter
        ("name:s name:p name:r name:i", {"spring", "springtime", "done", "ete"}),
        ("labels.team=growth labels.tier=gold", {"spring"}),
        ("labels.team=growth labels.tier=gold labels.a.b", set()),
        ("state=RUNNING state=SCHEDULED", set()),
    ],
)
def test_list_filters(catalogue: Client, filter: str, expected: set[str]) -> None:
    found = list_all(catalogue, filter=filter, page_size=1)
    assert len(found) == len(set(found))
    assert set(found) == expected
    assert list_all(catalogue) and get(catalogue, "spring").id == "spring"  # the table survived every filter


@pytest.mark.parametrize(
    "bad",
    [
        "state=DONE",
        "state=UNSPECIFIED",
        "state:RUNNING",
        "state",
        "colour=red",
        "name=spring",
        "name:",
        "labels.",
        "labels.=x",
        "labels.team:growth",
        'name:"unterminated',
        "state=RUNNING OR state=SCHEDULED",
    ],
)
def test_list_bad_filter_is_invalid_argument_on_filter(refusing: Client, bad: str) -> None:
    error = fails(refusing.campaigns.ListCampaigns, pb.ListCampaignsRequest(filter=bad))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.violation_reasons == {"filter": "BAD_FILTER"}
    assert "filter" in error.message


def test_list_refuses_tokens_tampered_foreign_or_for_another_filter(
    server: ServerThread, client: Client, tmp_path: Any
) -> None:
    for i in range(4):
        create(client, id=f"c{i}", state=R)
    token = client.campaigns.ListCampaigns(pb.ListCampaignsRequest(page_size=1, filter="state=RUNNING")).next_page_token
    assert token
    # The same filter spelled differently is the same filter.
    same = client.campaigns.ListCampaigns(
        pb.ListCampaignsRequest(page_size=1, page_token=token, filter="  state=CAMPAIGN_STATE_RUNNING")
    )
    assert ids(same) == ["c2"]

    def refused(page_token: str, filter: str = "state=RUNNING") -> str:
        error = fails(client.campaigns.ListCampaigns, pb.ListCampaignsRequest(page_token=page_token, filter=filter))
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert set(error.violation_reasons) == {"page_token"}
        return error.violation_reasons["page_token"]

    assert refused(token, filter="") == "TOKEN_MISMATCH"
    assert refused(token, filter="state=SCHEDULED") == "TOKEN_MISMATCH"
    tampered = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
    assert refused(tampered) == "BAD_TOKEN"
    assert refused("not-a-token") == "BAD_TOKEN"
    assert refused("!!!") == "BAD_TOKEN"
    # Signed with the server's key but bound to another business.
    canonical = parse_filter("state=RUNNING").canonical()
    foreign = tokens.encode(server.store.token_key, "campaigns", tokens.bind("other", canonical), {"t": 0, "c": 0})
    assert refused(foreign) == "TOKEN_MISMATCH"
    # A genuine token of another server.
    (tmp_path / "other").mkdir()
    other = start_server(tmp_path / "other")
    try:
        other_key = other.store.token_key
    finally:
        other.stop()
    assert other_key != server.store.token_key
    alien = tokens.encode(other_key, "campaigns", tokens.bind("default", canonical), {"t": 0, "c": 0})
    assert refused(alien) == "BAD_TOKEN"


# -- AddRecipients ------------------------------------------------------------
def test_add_recipients_across_batches_with_duplicates_and_invalid_ones(server: ServerThread, client: Client) -> None:
    create(client, id="aud", channels=["sms", "whatsapp"])
    reply = add(
        client,
        pb.AddRecipientsRequest(
            campaign_id="aud",
            recipients=[
                rec("+100", "sms", "A", name="Ann", city="Rio"),
                rec("+200", "whatsapp", "B"),
                rec(""),  # invalid: no recipient
                rec("+300", "c" * 33),  # invalid: channel too long
            ],
        ),
        pb.AddRecipientsRequest(
            recipients=[
                rec("+200", "sms", "A"),  # already present (left unchanged)
                rec("ann@example.com"),
                rec("+100"),
                rec("+400", **{f"k{i}": "v" for i in range(65)}),  # invalid: too many input variables
            ]
        ),
        pb.AddRecipientsRequest(campaign_id="aud", recipients=[rec("ext-9", variant="B"), rec("ext-9")]),
        pb.AddRecipientsRequest(campaign_id="aud"),  # an empty batch is fine
    )
    assert (reply.added, reply.already_present, reply.invalid, reply.total) == (4, 3, 3, 4)
    assert [(v.field, v.reason) for v in reply.violations] == [
        ("requests[0].recipients[2].recipient", "REQUIRED"),
        ("requests[0].recipients[3].channel", "TOO_LONG"),
        ("requests[1].recipients[3].input_variables", "TOO_MANY"),
    ]
    assert all(v.description for v in reply.violations)
    assert get(client, "aud").recipient_count == 4

    cid = cid_of(server, "aud")
    with db(server) as conn:
        rows = conn.execute(
            "SELECT recipient, aud_channel, aud_variant, aud_input, channel, variant, input_vars, status,"
            " added_at = updated_at FROM messages WHERE cid = ? ORDER BY recipient",
            (cid,),
        ).fetchall()
        counters = dict(
            ((scope, name), value)
            for scope, name, value in conn.execute("SELECT scope, name, value FROM counters WHERE cid = ?", (cid,))
        )
    inputs = '{"city":"Rio","name":"Ann"}'
    assert rows == [
        ("+100", "sms", "A", inputs, "sms", "A", inputs, 1, 1),
        ("+200", "whatsapp", "B", None, "whatsapp", "B", None, 1, 1),
        ("ann@example.com", "", "", None, "", "", None, 1, 1),
        ("ext-9", "", "B", None, "", "B", None, 1, 1),
    ]
    assert counters == {
        ("", "pending"): 4,
        ("c:sms", "pending"): 1,
        ("c:whatsapp", "pending"): 1,
        ("c:", "pending"): 2,
        ("v:A", "pending"): 1,
        ("v:B", "pending"): 2,
        ("v:", "pending"): 1,
    }
    # A second call adds only what is new.
    again = add(client, pb.AddRecipientsRequest(campaign_id="aud", recipients=[rec("+100"), rec("+500")]))
    assert (again.added, again.already_present, again.invalid, again.total) == (1, 1, 0, 5)


def test_add_recipients_limits(client: Client) -> None:
    create(client, id="lim")
    ok = [
        rec("r" * 256, "c" * 32, "v" * 64, **{f"{i:03d}" + "k" * 125: "x" * 4096 for i in range(64)}),
    ]
    bad = {
        "recipient": rec("r" * 257),
        "channel": rec("b1", "c" * 33),
        "variant": rec("b2", variant="v" * 65),
        "input_variables[" + "k" * 32 + "]": rec("b3", **{"k" * 129: "x"}),
        "input_variables[key]": rec("b4", key="x" * 4097),
        "input_variables[]": rec("b5", **{"": "x"}),
    }
    reply = add(client, pb.AddRecipientsRequest(campaign_id="lim", recipients=ok + list(bad.values())))
    assert (reply.added, reply.invalid) == (1, len(bad))
    assert {v.field: v.reason for v in reply.violations} == {
        f"requests[0].recipients[{i + 1}].{name}": reason
        for i, (name, reason) in enumerate(
            zip(bad, ["TOO_LONG", "TOO_LONG", "TOO_LONG", "TOO_LONG", "TOO_LONG", "REQUIRED"], strict=True)
        )
    }


def test_add_recipients_keeps_the_first_100_violations_and_the_valid_ones(client: Client) -> None:
    create(client, id="many")
    batch = [rec("") if i % 2 else rec(f"+{i}") for i in range(300)]
    reply = add(client, pb.AddRecipientsRequest(campaign_id="many", recipients=batch))
    assert (reply.added, reply.invalid, reply.total) == (150, 150, 150)
    assert [v.field for v in reply.violations] == [f"requests[0].recipients[{i}].recipient" for i in range(1, 200, 2)]


def test_add_recipients_errors(client: Client) -> None:
    def error_of(*batches: pb.AddRecipientsRequest) -> ErrorDetails:
        return fails(client.campaigns.AddRecipients, iter(batches))

    error = error_of(pb.AddRecipientsRequest(campaign_id="ghost", recipients=[rec("+1")]))
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "CAMPAIGN_NOT_FOUND")
    error = error_of(pb.AddRecipientsRequest(recipients=[rec("+1")]))
    assert error.violation_reasons == {"requests[0].campaign_id": "REQUIRED"}
    error = error_of()
    assert error.violation_reasons == {"requests[0].campaign_id": "REQUIRED"}

    create(client, id="a")
    create(client, id="b")
    error = error_of(
        pb.AddRecipientsRequest(campaign_id="a", recipients=[rec("+1")]),
        pb.AddRecipientsRequest(campaign_id="b", recipients=[rec("+2")]),
    )
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.violation_reasons == {"requests[1].campaign_id": "CAMPAIGN_MISMATCH"}
    # Batches before the error stay committed; nothing went to the other campaign.
    assert (get(client, "a").recipient_count, get(client, "b").recipient_count) == (1, 0)

    error = error_of(pb.AddRecipientsRequest(campaign_id="a", recipients=[rec(f"+{i}") for i in range(10_001)]))
    assert error.violation_reasons == {"requests[0].recipients": "TOO_MANY"}
    assert get(client, "a").recipient_count == 1

    # A COMPLETED campaign still takes recipients (it may have completed by
    # itself between two batches of its audience); a CANCELLED one does not.
    update(client, pb.Campaign(id="b", state=pb.CAMPAIGN_STATE_RUNNING), "state")
    update(client, pb.Campaign(id="b", state=pb.CAMPAIGN_STATE_COMPLETED), "state")
    reply = client.campaigns.AddRecipients(iter([pb.AddRecipientsRequest(campaign_id="b", recipients=[rec("+1")])]))
    assert (reply.added, get(client, "b").state) == (1, pb.CAMPAIGN_STATE_COMPLETED)
    create(client, id="c")
    update(client, pb.Campaign(id="c", state=X), "state")
    error = error_of(pb.AddRecipientsRequest(campaign_id="c", recipients=[rec("+1")]))
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CAMPAIGN_FINAL")
    assert get(client, "c").recipient_count == 0


def test_add_recipients_wakes_stats_watchers(server: ServerThread, client: Client) -> None:
    create(client, id="w")
    cid = cid_of(server, "w")
    touched: list[set[int]] = []
    seen = threading.Event()

    def listener(sequences: dict[str, int], cids: set[int]) -> None:
        touched.append(set(cids))
        seen.set()

    server.store.writer.on_commit(listener)
    add(client, pb.AddRecipientsRequest(campaign_id="w", recipients=[rec("+1")]))
    assert seen.wait(30)
    assert any(cid in cids for cids in touched)


def test_two_businesses_with_keys_share_nothing_not_even_page_tokens(tmp_path: Any) -> None:
    world = start_tenants(tmp_path)
    try:
        acme, globex = world.client(world.a.admin), world.client(world.b.admin)
        for i in range(3):
            create(acme, id=f"same-{i}", name="acme")
        create(globex, id="same-0", name="globex")
        assert add(acme, pb.AddRecipientsRequest(campaign_id="same-0", recipients=[rec("+1"), rec("+2")])).total == 2
        assert add(globex, pb.AddRecipientsRequest(campaign_id="same-0", recipients=[rec("+1")])).added == 1
        assert (get(acme, "same-0").recipient_count, get(globex, "same-0").recipient_count) == (2, 1)
        token = acme.campaigns.ListCampaigns(pb.ListCampaignsRequest(page_size=1), timeout=5).next_page_token
        assert token
        error = fails(globex.campaigns.ListCampaigns, pb.ListCampaignsRequest(page_size=1, page_token=token))
        assert error.violation_reasons == {"page_token": "TOKEN_MISMATCH"}
        assert list_all(globex) == ["same-0"]
        reply = globex.campaigns.DeleteCampaign(pb.DeleteCampaignRequest(campaign_id="same-0"), timeout=5)
        assert reply.deleted_recipients == 1
        assert get(acme, "same-0").recipient_count == 2
        assert sorted(list_all(acme)) == ["same-0", "same-1", "same-2"]
    finally:
        world.close()


def test_audience_and_events_agree(server: ServerThread, client: Client) -> None:
    """Recipients first seen in events join the audience; adding them again
    leaves their message as the events made it; stats and recipient_count agree."""
    create(client, id="mix", state=R)
    assert (
        add(client, pb.AddRecipientsRequest(campaign_id="mix", recipients=[rec("+1", "sms"), rec("+2", "sms")])).added
        == 2
    )
    for n, recipient in enumerate(("+2", "+3")):
        event = ingest_pb2.StatusEvent(
            event_id=f"mix-{n}",
            campaign_id="mix",
            recipient=recipient,
            status=common_pb2.MESSAGE_STATUS_SUBMITTED,
            occurred_at=timestamp_pb2.Timestamp(seconds=int(time.time()) - 60),
        )
        client.ingest.RecordStatusEvent(ingest_pb2.RecordStatusEventRequest(event=event), timeout=10)
    again = add(
        client, pb.AddRecipientsRequest(campaign_id="mix", recipients=[rec("+2", "email"), rec("+3"), rec("+4")])
    )
    assert (again.added, again.already_present, again.total) == (1, 2, 4)
    with db(server) as conn:
        statuses = dict(
            conn.execute("SELECT recipient, status FROM messages WHERE cid = ?", (cid_of(server, "mix"),)).fetchall()
        )
    assert statuses == {"+1": 1, "+2": 3, "+3": 3, "+4": 1}
    assert get(client, "mix").recipient_count == len(statuses)
    stats = client.reports.GetCampaignStats(report_pb2.GetCampaignStatsRequest(campaign_id="mix"), timeout=10)
    overall = stats.stats.overall.counts
    assert (overall.total, overall.pending, overall.awaiting) == (4, 2, 2)
    by_channel = {b.key: (b.counts.total, b.counts.pending) for b in stats.stats.by_channel}
    assert by_channel == {"sms": (2, 1), "": (2, 1)}
    deleted = client.campaigns.DeleteCampaign(pb.DeleteCampaignRequest(campaign_id="mix"), timeout=5)
    assert (deleted.deleted_recipients, deleted.deleted_events) == (4, 2)
