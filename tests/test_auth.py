"""API keys, scopes, open mode and sealed tenants, on a real server.

The tenant matrix (`CELLS` x credentials) covers every RPC of
CampaignService, IngestService, ReportService and PrivacyService. Report cells read campaign
`twin`, which both businesses hold with the same event ids and different data
(tests/tenants.py `TWINS`): every reply must carry the caller's exact counts
and rows, and never the other business's id, which every text value of the
other's events carries.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner
from google.protobuf import duration_pb2, field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from flowtrack.api.auth import is_loopback, required_scope
from flowtrack.cli import cli
from flowtrack.domain.keys import Scope
from flowtrack.v1 import (
    campaign_pb2,
    campaign_pb2_grpc,
    common_pb2,
    ingest_pb2,
    privacy_pb2,
    privacy_pb2_grpc,
    report_pb2,
    retention_pb2,
    retention_pb2_grpc,
    settings_pb2,
    settings_pb2_grpc,
)
from tests.conftest import Backend, Client, ServerThread, database_of, error_details, make_client, start_server
from tests.tenants import (
    A_SEALED,
    TWIN,
    TWINS,
    Tenants,
    Twin,
    code_of,
    create_key,
    keyed_client,
    revoke_key,
    rows,
    seed_twins,
    start_tenants,
    twin_engagement,
    twin_events,
)
from tests.test_ingest import batch, click, status

OK = grpc.StatusCode.OK
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def _flowtrack(*args: str, database: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ}
    if database is not None:
        env["FLOWTRACK_DATABASE"] = str(database)
    return subprocess.run(
        [sys.executable, "-m", "flowtrack", *args], capture_output=True, text=True, env=env, timeout=60
    )


# -- the keys commands ---------------------------------------------------------


@pytest.mark.slow
def test_keys_commands_create_list_revoke(tmp_path: Path) -> None:
    database = tmp_path / "keys.db"
    missing = _flowtrack("keys", "list", database=database)
    assert missing.returncode == 1 and "no database" in missing.stderr

    made = _flowtrack("keys", "create", "--business", "acme", "--scope", "ingest", "--scope", "read", "--name", "e1",
                      "--create-database", database=database)  # fmt: skip
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert re.fullmatch(r"ftk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", key), made.stdout
    key_id, secret = key.split("_", 2)[1:]
    assert key_id in made.stderr and "only time" in made.stderr

    # Stored hashed: neither the key nor its secret is anywhere in the file.
    assert secret.encode() not in database.read_bytes()
    [(stored_hash,)] = rows(database, "SELECT hash FROM api_keys WHERE key_id = ?", key_id)
    assert stored_hash == hashlib.sha256(key.encode()).digest()

    listed = _flowtrack("keys", "list", database=database)
    assert listed.returncode == 0
    assert key_id in listed.stdout and "acme" in listed.stdout and "ingest,read" in listed.stdout
    assert secret not in listed.stdout + listed.stderr
    [row] = [json.loads(line) for line in _flowtrack("keys", "list", "--json", database=database).stdout.splitlines()]
    assert row["keyId"] == key_id and row["scopes"] == ["ingest", "read"] and row["revokedAt"] == ""
    assert _flowtrack("keys", "list", "--business", "other", database=database).stdout.count("\n") == 1  # header

    revoked = _flowtrack("keys", "revoke", key_id, "--database", str(database))
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    [row] = [json.loads(line) for line in _flowtrack("keys", "list", "--json", database=database).stdout.splitlines()]
    assert row["revokedAt"] != ""

    unknown = _flowtrack("keys", "revoke", "0123456789ab", database=database)
    assert unknown.returncode == 1 and "no key" in unknown.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--business", "acme", "--scope", "root"],
        ["--business", "acme"],
        ["--business", "bad business", "--scope", "read"],
        ["--business", "", "--scope", "read"],
    ],
)
def test_keys_create_refuses_bad_input(tmp_path: Path, args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["keys", "create", "--database", str(tmp_path / "k.db"), *args])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "ftk_" not in result.output


def test_every_keys_command_has_an_example() -> None:
    for command in ([], ["create"], ["list"], ["revoke"]):
        result = CliRunner().invoke(cli, ["keys", *command, "--help"])
        assert result.exit_code == 0
        assert "Example:" in result.output, command


# -- open mode -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:0", True),
        ("127.0.0.2:50051", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        (":50051", False),
        ("10.1.2.3:50051", False),
        ("example.com:50051", False),
        ("unix:/tmp/flowtrack.sock", False),
    ],
)
def test_loopback_addresses(listen: str, loopback: bool) -> None:
    assert is_loopback(listen) is loopback


def test_open_mode_on_loopback_without_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, server: ServerThread, client: Client
) -> None:
    reply = client.ingest.RecordStatusEvent(ingest_pb2.RecordStatusEventRequest(event=status("o1")), timeout=10)
    assert reply.result.outcome == ingest_pb2.EVENT_OUTCOME_ACCEPTED
    assert rows(server.settings.database, "SELECT business_id FROM events") == [("default",)]
    # A key is never ignored: in open mode every key is unknown.
    with pytest.raises(grpc.RpcError) as raised:
        keyed_client(server.address, "ftk_0123456789ab_" + "x" * 43).campaigns.ListCampaigns(
            campaign_pb2.ListCampaignsRequest(), timeout=10
        )
    assert error_details(raised.value).reason == "INVALID_API_KEY"


def test_open_mode_is_announced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flowtrack")
    running = start_server(tmp_path)
    running.stop()
    assert any("OPEN MODE" in r.message and r.levelno == logging.WARNING for r in caplog.records)
    caplog.clear()
    create_key(database_of(tmp_path), "acme", Scope.READ)
    running = start_server(tmp_path)
    running.stop()
    assert not any("OPEN MODE" in r.message for r in caplog.records)
    assert any("API keys required" in r.message for r in caplog.records)


def test_keys_required_on_loopback_once_one_exists(tmp_path: Path) -> None:
    key = create_key(database_of(tmp_path), "acme", Scope.ADMIN)
    running = start_server(tmp_path)
    try:
        anonymous = make_client(running.address)
        with pytest.raises(grpc.RpcError) as raised:
            anonymous.campaigns.ListCampaigns(campaign_pb2.ListCampaignsRequest(), timeout=10)
        details = error_details(raised.value)
        assert (details.code, details.reason) == (UNAUTHENTICATED, "NO_CREDENTIALS")
        _assert_health_and_reflection_without_key(anonymous.channel)
        anonymous.channel.close()
        keyed = keyed_client(running.address, key)
        keyed.campaigns.ListCampaigns(campaign_pb2.ListCampaignsRequest(), timeout=10)
        keyed.channel.close()
    finally:
        running.stop()


def test_open_mode_ends_when_a_key_is_created(tmp_path: Path) -> None:
    running = start_server(tmp_path, key_cache_seconds=0.2)
    try:
        anonymous = make_client(running.address)
        anonymous.campaigns.ListCampaigns(campaign_pb2.ListCampaignsRequest(), timeout=10)
        key = create_key(database_of(tmp_path), "acme", Scope.READ)
        revoke_key(database_of(tmp_path), key)  # even a revoked key ends open mode for good
        deadline = time.monotonic() + 30
        while code_of(lambda: anonymous.campaigns.ListCampaigns(campaign_pb2.ListCampaignsRequest(), timeout=10)) == OK:
            assert time.monotonic() < deadline, "open mode did not end"
            time.sleep(0.05)
        assert (
            code_of(lambda: anonymous.campaigns.ListCampaigns(campaign_pb2.ListCampaignsRequest())) == UNAUTHENTICATED
        )
        anonymous.channel.close()
    finally:
        running.stop()


def test_not_loopback_is_never_open(tmp_path: Path) -> None:
    running = start_server(tmp_path, listen="0.0.0.0:0")
    try:
        anonymous = make_client(running.address)
        with pytest.raises(grpc.RpcError) as raised:
            anonymous.campaigns.ListCampaigns(campaign_pb2.ListCampaignsRequest(), timeout=10)
        assert error_details(raised.value).reason == "NO_CREDENTIALS"
        _assert_health_and_reflection_without_key(anonymous.channel)
        anonymous.channel.close()
        # Keys created while it runs work at once (no cache for a key never seen).
        key = create_key(database_of(tmp_path), "acme", Scope.READ)
        keyed = keyed_client(running.address, key)
        keyed.campaigns.ListCampaigns(campaign_pb2.ListCampaignsRequest(), timeout=10)
        keyed.channel.close()
    finally:
        running.stop()


def _assert_health_and_reflection_without_key(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    assert any(reply.list_services_response.service for reply in replies)


# -- every error code -----------------------------------------------------------


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[Tenants]:
    world = start_tenants(tmp_path_factory.mktemp("tenants"))
    _seed(world)
    yield world
    world.close()


@pytest.mark.parametrize(
    ("metadata", "code", "reason"),
    [
        ([], UNAUTHENTICATED, "NO_CREDENTIALS"),
        ([("authorization", "Basic YWNtZTpzZWNyZXQ=")], UNAUTHENTICATED, "MALFORMED_CREDENTIALS"),
        ([("authorization", "Bearer")], UNAUTHENTICATED, "MALFORMED_CREDENTIALS"),
        ([("x-api-key", "not-a-key")], UNAUTHENTICATED, "INVALID_API_KEY"),
        ([("x-api-key", "ftk_0123456789ab_" + "A" * 43)], UNAUTHENTICATED, "INVALID_API_KEY"),
        (["WRONG_SECRET"], UNAUTHENTICATED, "INVALID_API_KEY"),
        (["TWO_KEYS"], UNAUTHENTICATED, "MALFORMED_CREDENTIALS"),
        (["REVOKED"], UNAUTHENTICATED, "REVOKED_API_KEY"),
        (["INGEST_KEY"], PERMISSION_DENIED, "MISSING_SCOPE"),
        (["READ_KEY_X_API_KEY"], OK, ""),
        (["READ_KEY_LOWERCASE_BEARER"], OK, ""),
        (["SAME_KEY_TWICE"], OK, ""),
    ],
)
def test_credential_errors(tenants: Tenants, metadata: list[Any], code: grpc.StatusCode, reason: str) -> None:
    a = tenants.a
    special = {
        "WRONG_SECRET": [("x-api-key", a.read[:-1] + ("A" if a.read[-1] != "A" else "B"))],
        "TWO_KEYS": [("x-api-key", a.read), ("authorization", f"Bearer {tenants.b.read}")],
        "REVOKED": [("x-api-key", a.revoked)],
        "INGEST_KEY": [("authorization", f"Bearer {a.ingest}")],
        "READ_KEY_X_API_KEY": [("x-api-key", a.read)],
        "READ_KEY_LOWERCASE_BEARER": [("authorization", f"bearer {a.read}")],
        "SAME_KEY_TWICE": [("x-api-key", a.read), ("authorization", f"Bearer {a.read}")],
    }
    if metadata and isinstance(metadata[0], str):
        metadata = special[metadata[0]]
    channel = grpc.insecure_channel(tenants.server.address)
    try:
        stub = campaign_pb2_grpc.CampaignServiceStub(channel)
        if code == OK:
            stub.ListCampaigns(campaign_pb2.ListCampaignsRequest(), metadata=metadata, timeout=10)
            return
        with pytest.raises(grpc.RpcError) as raised:
            stub.ListCampaigns(campaign_pb2.ListCampaignsRequest(), metadata=metadata, timeout=10)
        details = error_details(raised.value)
        assert (details.code, details.reason) == (code, reason), details.message
        assert a.read not in details.message and a.revoked not in details.message  # never echo a secret
    finally:
        channel.close()


# -- the scope table ------------------------------------------------------------

A, R, IN = Scope.ADMIN, Scope.READ, Scope.INGEST
SCOPE_TABLE: dict[str, Scope] = {
    "/flowtrack.v1.CampaignService/CreateCampaign": A,
    "/flowtrack.v1.CampaignService/GetCampaign": R,
    "/flowtrack.v1.CampaignService/UpdateCampaign": A,
    "/flowtrack.v1.CampaignService/DeleteCampaign": A,
    "/flowtrack.v1.CampaignService/ListCampaigns": R,
    "/flowtrack.v1.CampaignService/AddRecipients": A,
    "/flowtrack.v1.IngestService/RecordStatusEvent": IN,
    "/flowtrack.v1.IngestService/RecordClickEvent": IN,
    "/flowtrack.v1.IngestService/RecordEngagementEvent": IN,
    "/flowtrack.v1.IngestService/StreamEvents": IN,
    "/flowtrack.v1.PrivacyService/EraseRecipient": A,
    "/flowtrack.v1.PrivacyService/ListErasures": R,
    **{
        f"/flowtrack.v1.ReportService/{m.name}": R
        for m in report_pb2.DESCRIPTOR.services_by_name["ReportService"].methods
    },
    "/flowtrack.v1.SettingsService/GetSettings": R,
    "/flowtrack.v1.SettingsService/UpdateSettings": A,
    "/flowtrack.v1.RetentionService/GetRetention": R,
    "/flowtrack.v1.RetentionService/SetRetention": A,
    "/flowtrack.v1.RetentionService/ApplyRetention": A,
}


def _methods() -> list[Any]:
    found = []
    for module, name in (
        (campaign_pb2, "CampaignService"),
        (ingest_pb2, "IngestService"),
        (report_pb2, "ReportService"),
        (settings_pb2, "SettingsService"),
        (retention_pb2, "RetentionService"),
        (privacy_pb2, "PrivacyService"),
    ):
        found.extend(module.DESCRIPTOR.services_by_name[name].methods)
    return found


def test_scope_table_covers_every_rpc() -> None:
    paths = {f"/{m.containing_service.full_name}/{m.name}" for m in _methods()}
    assert paths == set(SCOPE_TABLE)
    for path, scope in SCOPE_TABLE.items():
        assert required_scope(path) == scope, path
    assert required_scope("/grpc.health.v1.Health/Check") is None


def _raw_call(channel: grpc.Channel, method: Any, metadata: list[tuple[str, str]]) -> grpc.StatusCode:
    """Call `method` with an empty request (raw bytes, so any RPC shape works)."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    kind = ("stream" if method.client_streaming else "unary") + "_" + ("stream" if method.server_streaming else "unary")
    callable_ = getattr(channel, kind)(path)
    request: Any = iter([b""]) if method.client_streaming else b""
    try:
        reply = callable_(request, metadata=metadata, timeout=3)
        if method.server_streaming:
            for _ in reply:
                pass
    except grpc.RpcError as error:
        return error.code()  # type: ignore[attr-defined, no-any-return]
    return OK


@pytest.mark.parametrize("scope", list(Scope))
def test_scope_table_is_enforced(tenants: Tenants, scope: Scope) -> None:
    key = getattr(tenants.a, scope.value)
    channel = grpc.insecure_channel(tenants.server.address)
    try:
        for method in _methods():
            path = f"/{method.containing_service.full_name}/{method.name}"
            code = _raw_call(channel, method, [("x-api-key", key)])
            if scope in (SCOPE_TABLE[path], Scope.ADMIN):
                assert code not in (UNAUTHENTICATED, PERMISSION_DENIED), path
            else:
                assert code == PERMISSION_DENIED, (path, code)
            assert _raw_call(channel, method, []) == UNAUTHENTICATED, path
    finally:
        channel.close()


# -- the tenant matrix --------------------------------------------------------------


def _campaign(campaign_id: str, name: str) -> campaign_pb2.CreateCampaignRequest:
    return campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id=campaign_id, name=name))


def _recipients(campaign_id: str, *who: str) -> Iterator[campaign_pb2.AddRecipientsRequest]:
    yield campaign_pb2.AddRecipientsRequest(
        campaign_id=campaign_id, recipients=[campaign_pb2.Recipient(recipient=r) for r in who]
    )


def _seed(world: Tenants) -> None:
    """Both businesses use the same campaign id ("spring") and the same event
    ids; each also has a campaign of its own."""
    for tenant, letter in ((world.a, "A"), (world.b, "B")):
        admin, ingest = world.client(tenant.admin), world.client(tenant.ingest)
        for campaign_id, name in (("spring", "spring"), (f"{letter.lower()}-only", "only"), ("upd", "to update")):
            admin.campaigns.CreateCampaign(_campaign(campaign_id, f"{letter} {name}"), timeout=10)
    world.client(world.a.admin).campaigns.CreateCampaign(_campaign("a-twin", "A twin"), timeout=10)
    for tenant, letter in ((world.a, "A"), (world.b, "B")):
        admin, ingest = world.client(tenant.admin), world.client(tenant.ingest)
        admin.campaigns.AddRecipients(_recipients("spring", "+15550001", "+15550002"), timeout=10)
        admin.campaigns.AddRecipients(_recipients(f"{letter.lower()}-only", "+15550009"), timeout=10)
        replies = list(
            ingest.ingest.StreamEvents(
                iter(
                    [
                        batch(
                            status("e1", campaign="spring"),
                            status("e2", recipient="+15550002", campaign="spring"),
                            click("c1", campaign="spring"),
                        )
                    ]
                ),
                timeout=10,
            )
        )
        assert replies[0].accepted == 3
    ingest_a = world.client(world.a.ingest)
    for kind in ("status", "click", "stream", "engagement"):
        event = status(f"a-private-{kind}", campaign="a-only", recipient="+15550009")
        ingest_a.ingest.RecordStatusEvent(ingest_pb2.RecordStatusEventRequest(event=event), timeout=10)
    seed_twins(world)


def _footprint(world: Tenants, business: str) -> list[tuple[Any, ...]]:
    """Everything stored for a business: campaigns, recipients and events."""
    db = world.database
    return [
        *rows(db, "SELECT campaign_id, name, state, labels FROM campaigns WHERE business_id = ? ORDER BY 1", business),
        *rows(
            db,
            "SELECT c.campaign_id, m.recipient, m.status FROM messages m JOIN campaigns c USING (cid)"
            " WHERE c.business_id = ? ORDER BY 1, 2",
            business,
        ),
        *rows(db, "SELECT event_id, seq, fingerprint FROM events WHERE business_id = ? ORDER BY seq", business),
        *rows(
            db,
            "SELECT bot_click_threshold_ms, crawler_ua_is_bot, no_ua_is_bot FROM business_settings"
            " WHERE business_id = ?",
            business,
        ),
    ]


def _names(reply: campaign_pb2.ListCampaignsResponse) -> set[str]:
    return {c.name for c in reply.campaigns}


def _uid() -> str:
    return uuid.uuid4().hex[:10]


@dataclasses.dataclass
class Cell:
    """One RPC of the matrix.

    `call(world, client)` does the RPC as A would; `own` checks its result
    with A's key. `other(world, client)` runs with B's key of the same scope,
    aiming at A's data, and checks that B sees and changes nothing of A's
    (A's whole footprint is also compared before and after)."""

    rpc: str
    scope: Scope
    call: Callable[[Tenants, Client, Any], Any]
    own: Callable[[Tenants, Any], None]
    other: Callable[[Tenants, Client], None]
    # Makes what `call` acts on (passed as its third argument), before A's footprint is taken.
    prepare: Callable[[Tenants], Any] | None = None


def _get_other(world: Tenants, b: Client) -> None:
    assert code_of(lambda: b.campaigns.GetCampaign(campaign_pb2.GetCampaignRequest(campaign_id="a-only"))) == NOT_FOUND
    # The same id in both businesses: B gets its own.
    assert b.campaigns.GetCampaign(campaign_pb2.GetCampaignRequest(campaign_id="spring")).campaign.name == "B spring"


def _list_other(world: Tenants, b: Client) -> None:
    names = _names(b.campaigns.ListCampaigns(campaign_pb2.ListCampaignsRequest(page_size=1000)))
    assert names and not any(n.startswith("A ") for n in names), names
    for query in ("name:A", "name:spring", "labels.x"):
        with_filter = b.campaigns.ListCampaigns(campaign_pb2.ListCampaignsRequest(filter=query), timeout=10)
        assert not any(n.startswith("A ") for n in _names(with_filter))


def _create_other(world: Tenants, b: Client) -> None:
    # B may use an id that A uses: it is B's own campaign.
    b.campaigns.CreateCampaign(_campaign("a-twin", "B twin"), timeout=10)


def _update_other(world: Tenants, b: Client) -> None:
    request = campaign_pb2.UpdateCampaignRequest(
        campaign=campaign_pb2.Campaign(id="a-only", name="B was here"),
        update_mask=field_mask_pb2.FieldMask(paths=["name"]),
    )
    assert code_of(lambda: b.campaigns.UpdateCampaign(request, timeout=10)) == NOT_FOUND


def _delete_other(world: Tenants, b: Client) -> None:
    request = campaign_pb2.DeleteCampaignRequest(campaign_id="a-only")
    assert code_of(lambda: b.campaigns.DeleteCampaign(request, timeout=10)) == NOT_FOUND


def _add_recipients_other(world: Tenants, b: Client) -> None:
    code = code_of(lambda: b.campaigns.AddRecipients(_recipients("a-only", "+15559999"), timeout=10))
    assert code in (OK, NOT_FOUND)


def _ingest_other(kind: str) -> Callable[[Tenants, Client], None]:
    def check(world: Tenants, b: Client) -> None:
        # A's event id and campaign id, another payload: B's own event, not a conflict with A's.
        event = status(f"a-private-{kind}", campaign="a-only", recipient="+15550008")
        if kind == "status":
            reply: Any = b.ingest.RecordStatusEvent(ingest_pb2.RecordStatusEventRequest(event=event), timeout=10)
            outcome = reply.result.outcome
        elif kind == "click":
            reply = b.ingest.RecordClickEvent(
                ingest_pb2.RecordClickEventRequest(event=click(f"a-private-{kind}", campaign="a-only")), timeout=10
            )
            outcome = reply.result.outcome
        elif kind == "engagement":
            request = ingest_pb2.RecordEngagementEventRequest(event=_engagement(f"a-private-{kind}", "a-only"))
            outcome = b.ingest.RecordEngagementEvent(request, timeout=10).result.outcome
        else:
            [reply] = list(b.ingest.StreamEvents(iter([batch(event)]), timeout=10))
            outcome = reply.results[0].outcome
        assert outcome == ingest_pb2.EVENT_OUTCOME_ACCEPTED
        stored = rows(world.database, "SELECT business_id FROM events WHERE event_id = ?", f"a-private-{kind}")
        assert sorted(stored) == [(world.a.business,), (world.b.business,)]

    return check


def _create_call(world: Tenants, c: Client, _target: Any) -> Any:
    return c.campaigns.CreateCampaign(_campaign(f"a-new-{_uid()}", "A new"), timeout=10)


def _delete_prepare(world: Tenants) -> str:
    campaign_id = f"a-del-{_uid()}"
    world.client(world.a.admin).campaigns.CreateCampaign(_campaign(campaign_id, "A to delete"), timeout=10)
    return campaign_id


def _delete_call(world: Tenants, c: Client, campaign_id: str) -> Any:
    return c.campaigns.DeleteCampaign(campaign_pb2.DeleteCampaignRequest(campaign_id=campaign_id), timeout=10)


def _update_call(world: Tenants, c: Client, _target: Any) -> Any:
    request = campaign_pb2.UpdateCampaignRequest(
        campaign=campaign_pb2.Campaign(id="upd", name=f"A updated {_uid()}"),
        update_mask=field_mask_pb2.FieldMask(paths=["name"]),
    )
    return c.campaigns.UpdateCampaign(request, timeout=10)


def _record_status(world: Tenants, c: Client, _target: Any) -> Any:
    request = ingest_pb2.RecordStatusEventRequest(event=status(f"a-{_uid()}", campaign="spring"))
    return c.ingest.RecordStatusEvent(request, timeout=10)


def _record_click(world: Tenants, c: Client, _target: Any) -> Any:
    return c.ingest.RecordClickEvent(ingest_pb2.RecordClickEventRequest(event=click(f"a-{_uid()}", campaign="spring")))


def _engagement(event_id: str, campaign_id: str) -> ingest_pb2.EngagementEvent:
    event = ingest_pb2.EngagementEvent(
        event_id=event_id, campaign_id=campaign_id, recipient="+15550008", kind=ingest_pb2.ENGAGEMENT_KIND_READ
    )
    event.occurred_at.GetCurrentTime()
    return event


def _record_engagement(world: Tenants, c: Client, _target: Any) -> Any:
    request = ingest_pb2.RecordEngagementEventRequest(event=_engagement(f"a-{_uid()}", "spring"))
    return c.ingest.RecordEngagementEvent(request, timeout=10)


def _stream_events(world: Tenants, c: Client, _target: Any) -> Any:
    return list(c.ingest.StreamEvents(iter([batch(status(f"a-{_uid()}", campaign="spring"))]), timeout=10))


def _accepted(reply: Any) -> None:
    results = reply[0].results if isinstance(reply, list) else [reply.result]
    assert [r.outcome for r in results] == [ingest_pb2.EVENT_OUTCOME_ACCEPTED]


_PREPARED: list[str] = []  # the recipients _erase_prepare made (Cell.other gets no target)


def _erase_prepare(world: Tenants) -> str:
    """A recipient of A's own, to erase."""
    recipient = f"+1777{_uid()[:7]}"
    _PREPARED.append(recipient)
    event = status(f"erase-{_uid()}", recipient=recipient, campaign="a-only")
    world.client(world.a.ingest).ingest.RecordStatusEvent(ingest_pb2.RecordStatusEventRequest(event=event), timeout=10)
    return recipient


def _erase_call(world: Tenants, c: Client, recipient: str) -> Any:
    request = privacy_pb2.EraseRecipientRequest(recipient=recipient)
    return privacy_pb2_grpc.PrivacyServiceStub(c.channel).EraseRecipient(request, timeout=60)


def _erase_own(world: Tenants, reply: Any) -> None:
    assert reply.erasure.rows["messages"] == 1 and reply.erasure.rows["events"] == 1
    [(business,)] = rows(world.database, "SELECT business_id FROM erasures WHERE erasure_id = ?", reply.erasure.id)
    assert business == world.a.business


def _erase_other(world: Tenants, b: Client) -> None:
    # A's own recipient is nowhere in B: nothing to erase there, and A keeps it.
    code = code_of(lambda: _erase_call(world, b, _PREPARED[-1]))
    assert code == NOT_FOUND
    assert rows(world.database, "SELECT count(*) FROM messages WHERE recipient = ?", _PREPARED[-1]) == [(1,)]


def _list_erasures(world: Tenants, c: Client, _target: Any) -> Any:
    request = privacy_pb2.ListErasuresRequest(page_size=500)
    return privacy_pb2_grpc.PrivacyServiceStub(c.channel).ListErasures(request, timeout=10)


def _erasures_of(world: Tenants, business: str) -> set[str]:
    return {e for (e,) in rows(world.database, "SELECT erasure_id FROM erasures WHERE business_id = ?", business)}


def _list_erasures_own(world: Tenants, reply: Any) -> None:
    assert {e.id for e in reply.erasures} == _erasures_of(world, world.a.business)


def _list_erasures_other(world: Tenants, b: Client) -> None:
    listed = {e.id for e in _list_erasures(world, b, None).erasures}
    assert listed == _erasures_of(world, world.b.business)
    assert not listed & _erasures_of(world, world.a.business)


CELLS: list[Cell] = [
    Cell(
        "GetCampaign",
        R,
        lambda w, c, t: c.campaigns.GetCampaign(campaign_pb2.GetCampaignRequest(campaign_id="a-only"), timeout=10),
        lambda w, r: _check(r.campaign.name == "A only" and r.campaign.recipient_count == 1),
        _get_other,
    ),
    Cell(
        "ListCampaigns",
        R,
        lambda w, c, t: c.campaigns.ListCampaigns(campaign_pb2.ListCampaignsRequest(page_size=1000), timeout=10),
        lambda w, r: _check({"A spring", "A only"} <= _names(r) and all(n.startswith("A ") for n in _names(r))),
        _list_other,
    ),
    Cell("CreateCampaign", A, _create_call, lambda w, r: _check(r.campaign.name == "A new"), _create_other),
    Cell(
        "UpdateCampaign", A, _update_call, lambda w, r: _check(r.campaign.name.startswith("A updated")), _update_other
    ),
    Cell("DeleteCampaign", A, _delete_call, lambda w, r: None, _delete_other, _delete_prepare),
    Cell(
        "AddRecipients",
        A,
        lambda w, c, t: c.campaigns.AddRecipients(_recipients("spring", f"+1555{_uid()[:7]}"), timeout=10),
        lambda w, r: _check(r.added == 1),
        _add_recipients_other,
    ),
    Cell("RecordStatusEvent", IN, _record_status, lambda w, r: _accepted(r), _ingest_other("status")),
    Cell("RecordClickEvent", IN, _record_click, lambda w, r: _accepted(r), _ingest_other("click")),
    Cell("RecordEngagementEvent", IN, _record_engagement, lambda w, r: _accepted(r), _ingest_other("engagement")),
    Cell("StreamEvents", IN, _stream_events, lambda w, r: _accepted(r), _ingest_other("stream")),
    Cell("EraseRecipient", A, _erase_call, _erase_own, _erase_other, _erase_prepare),
    Cell("ListErasures", R, _list_erasures, _list_erasures_own, _list_erasures_other),
]


# -- ReportService cells: every read aims at campaign TWIN --------------------------

RP = report_pb2


def _sealed(replies: Any, twin: Twin) -> str:
    """The text of every reply; the other business's id must be nowhere in it."""
    text = "\n".join(str(r) for r in (replies if isinstance(replies, list) else [replies]))
    assert twin.foreign not in text, f"{twin.foreign}'s data in a reply to {twin.business}:\n{text[:3000]}"
    return text


def _event_id(stored: report_pb2.StoredEvent) -> str:
    kind = stored.event.WhichOneof("kind")
    assert kind is not None
    return str(getattr(stored.event, kind).event_id)


def _verify_stats(world: Tenants, reply: Any, twin: Twin) -> None:
    _sealed(reply, twin)
    s, c = reply.stats, reply.stats.overall.counts
    assert s.campaign_id == TWIN
    assert (c.total, c.pending, c.not_submitted, c.submitted) == (twin.total, 0, 0, twin.total)
    assert (c.awaiting, c.delivery_not_confirmed, c.failed, c.success) == (twin.awaiting, 0, twin.failed, twin.success)
    assert (s.overall.clicks, s.overall.unique_clickers) == (twin.clicks, twin.unique_clickers)
    assert (s.overall.read, s.overall.replied, s.overall.button_clickers) == (
        twin.read,
        twin.replied,
        twin.button_clickers,
    )
    assert [(b.key, b.counts.total) for b in s.by_channel] == [(f"chan-{twin.business}", twin.total)]
    assert sum(b.counts.total for b in s.by_variant) == twin.total


def _verify_messages(world: Tenants, pages: list[Any], twin: Twin) -> None:
    _sealed(pages, twin)
    found = [r for page in pages for r in page.rows]
    assert tuple(r.recipient for r in found) == twin.recipients
    assert [r.failure_reason.code for r in found if r.status == common_pb2.MESSAGE_STATUS_FAILED] == [twin.failure_code]
    assert sum(r.clicks for r in found) == twin.clicks
    assert {r.channel for r in found} == {f"chan-{twin.business}"}


def _verify_history(world: Tenants, pages: list[Any], twin: Twin) -> None:
    _sealed(pages, twin)
    events = [e for page in pages for e in page.events]
    assert tuple(_event_id(e) for e in events) == twin.event_ids
    sequences = [e.sequence for e in events]
    assert sequences == sorted(sequences)


def _verify_reasons(world: Tenants, pages: list[Any], twin: Twin) -> None:
    _sealed(pages, twin)
    reasons = [r for page in pages for r in page.reasons]
    assert [(r.code, r.message, r.count) for r in reasons] == [(twin.failure_code, f"{twin.business} failed", 1)]
    assert set(reasons[0].sample_recipients) <= set(twin.recipients)


def _verify_clicks(world: Tenants, pages: list[Any], twin: Twin) -> None:
    _sealed(pages, twin)
    found = [r for page in pages for r in page.rows]
    assert [r.event_id for r in found] == [e for e in twin.event_ids if e.startswith("tc")]
    assert {(r.link_id, r.location.country_code, r.location.city) for r in found} == {
        (twin.link_id, twin.country, f"city-{twin.business}")
    }


def _verify_breakdown(world: Tenants, reply: Any, twin: Twin) -> None:
    _sealed(reply, twin)
    assert (reply.clicks, reply.unique_clickers) == (twin.clicks, twin.unique_clickers)
    assert [(b.link_id, b.clicks) for b in reply.by_link] == [(twin.link_id, twin.clicks)]
    assert [(b.country_code, b.clicks) for b in reply.by_country] == [(twin.country, twin.clicks)]
    assert [(b.city, b.clicks) for b in reply.by_city] == [(f"city-{twin.business}", twin.clicks)]


def _verify_timeline(world: Tenants, reply: Any, twin: Twin) -> None:
    _sealed(reply, twin)
    names = {
        common_pb2.MESSAGE_STATUS_SUBMITTED: "submitted",
        common_pb2.MESSAGE_STATUS_FAILED: "failed",
        common_pb2.MESSAGE_STATUS_SUCCESS: "success",
    }
    expected = {"submitted": 0, "failed": 0, "success": 0, "clicks": 0, "not_submitted": 0}
    for event in twin_events(twin.business):
        if isinstance(event, ingest_pb2.ClickEvent):
            expected["clicks"] += 1
        else:
            expected[names[event.status]] += 1
    assert {name: sum(getattr(b, name) for b in reply.buckets) for name in expected} == expected


def _verify_replies(world: Tenants, pages: list[Any], twin: Twin) -> None:
    _sealed(pages, twin)
    sent = [
        (e.engagement.recipient, e.engagement.text)
        for e in twin_engagement(twin.business)
        if e.engagement.kind == ingest_pb2.ENGAGEMENT_KIND_REPLIED
    ]
    assert [(r.recipient, r.text) for p in pages for r in p.rows] == sent


def _verify_export(kind: int) -> Callable[[Tenants, list[Any], Twin], None]:
    def verify(world: Tenants, pages: list[Any], twin: Twin) -> None:
        _sealed(pages, twin)
        text = b"".join(p.chunk for p in pages).decode()
        assert twin.foreign not in text
        lines = text.splitlines()
        if kind == RP.EXPORT_KIND_MESSAGES:
            assert len(lines) == 1 + twin.total and all(r in text for r in twin.recipients)
        elif kind == RP.EXPORT_KIND_CLICKS:
            assert len(lines) == 1 + twin.clicks and twin.link_id in text
        else:
            assert len(lines) == 2 and twin.failure_code in text

    return verify


def _first(replies: Any) -> Any:
    try:
        return next(replies)
    finally:
        replies.cancel()


def _subscribe(c: Client, campaign_id: str) -> list[report_pb2.SubscribeEventsResponse]:
    """SubscribeEvents from the start until its caught-up page."""
    replies = c.reports.SubscribeEvents(RP.SubscribeEventsRequest(campaign_id=campaign_id, page_size=1000), timeout=10)
    pages = []
    try:
        for page in replies:
            pages.append(page)
            if page.caught_up:
                break
    finally:
        replies.cancel()
    assert pages and pages[-1].caught_up
    return pages


def _verify_subscribe(world: Tenants, pages: list[Any], twin: Twin) -> None:
    """With no campaign filter: every event of the caller's business, and nothing else."""
    _sealed(pages, twin)
    got = [(e.sequence, _event_id(e)) for page in pages for e in page.events]
    sql = "SELECT seq, event_id FROM events WHERE business_id = ? ORDER BY seq"
    assert got == [tuple(r) for r in rows(world.database, sql, twin.business)]


Read = Callable[[Client, str], Any]
REPORT_READS: list[tuple[str, Read, Callable[[Tenants, Any, Twin], None]]] = [
    (
        "GetCampaignStats",
        lambda c, cid: c.reports.GetCampaignStats(RP.GetCampaignStatsRequest(campaign_id=cid), timeout=10),
        _verify_stats,
    ),
    (
        "WatchCampaignStats",
        lambda c, cid: _first(c.reports.WatchCampaignStats(RP.WatchCampaignStatsRequest(campaign_id=cid), timeout=10)),
        _verify_stats,
    ),
    (
        "StreamMessageReport",
        lambda c, cid: list(
            c.reports.StreamMessageReport(RP.StreamMessageReportRequest(campaign_id=cid, page_size=1), timeout=10)
        ),
        _verify_messages,
    ),
    (
        "StreamMessageHistory",
        lambda c, cid: list(
            c.reports.StreamMessageHistory(RP.StreamMessageHistoryRequest(campaign_id=cid, page_size=2), timeout=10)
        ),
        _verify_history,
    ),
    (
        "StreamFailureReasons",
        lambda c, cid: list(
            c.reports.StreamFailureReasons(RP.StreamFailureReasonsRequest(campaign_id=cid, sample_size=20), timeout=10)
        ),
        _verify_reasons,
    ),
    (
        "StreamClickReport",
        lambda c, cid: list(
            c.reports.StreamClickReport(RP.StreamClickReportRequest(campaign_id=cid, page_size=1), timeout=10)
        ),
        _verify_clicks,
    ),
    (
        "GetClickBreakdown",
        lambda c, cid: c.reports.GetClickBreakdown(RP.GetClickBreakdownRequest(campaign_id=cid), timeout=10),
        _verify_breakdown,
    ),
    (
        "GetCampaignTimeline",
        lambda c, cid: c.reports.GetCampaignTimeline(
            RP.GetCampaignTimelineRequest(campaign_id=cid, width=RP.TIMELINE_BUCKET_WIDTH_MINUTE), timeout=10
        ),
        _verify_timeline,
    ),
    (
        "StreamReplies",
        lambda c, cid: list(c.reports.StreamReplies(RP.StreamRepliesRequest(campaign_id=cid, page_size=1), timeout=10)),
        _verify_replies,
    ),
    *[
        (
            f"ExportReport-{name}",
            lambda c, cid, kind=kind: list(
                c.reports.ExportReport(
                    RP.ExportReportRequest(campaign_id=cid, kind=kind, format=RP.EXPORT_FORMAT_CSV), timeout=10
                )
            ),
            _verify_export(kind),
        )
        for name, kind in (
            ("messages", RP.EXPORT_KIND_MESSAGES),
            ("clicks", RP.EXPORT_KIND_CLICKS),
            ("failures", RP.EXPORT_KIND_FAILURE_REASONS),
        )
    ],
]


def _report_cell(rpc: str, read: Read, verify: Callable[[Tenants, Any, Twin], None]) -> Cell:
    def other(world: Tenants, b: Client) -> None:
        # A campaign only A has is NOT_FOUND for B; the id both use is B's own data.
        assert code_of(lambda: read(b, A_SEALED)) == NOT_FOUND
        verify(world, read(b, TWIN), TWINS[world.b.business])

    return Cell(rpc, R, lambda w, c, t: read(c, TWIN), lambda w, r: verify(w, r, TWINS[w.a.business]), other)


def _subscribe_other(world: Tenants, b: Client) -> None:
    assert code_of(lambda: _subscribe(b, A_SEALED)) == NOT_FOUND
    _verify_subscribe(world, _subscribe(b, ""), TWINS[world.b.business])
    twin = _subscribe(b, TWIN)
    _sealed(twin, TWINS[world.b.business])
    assert tuple(_event_id(e) for p in twin for e in p.events) == TWINS[world.b.business].event_ids


CELLS += [
    *[_report_cell(rpc, read, verify) for rpc, read, verify in REPORT_READS],
    Cell(
        "SubscribeEvents",
        R,
        lambda w, c, t: _subscribe(c, ""),
        lambda w, r: _verify_subscribe(w, r, TWINS[w.a.business]),
        _subscribe_other,
    ),
]


def _settings(c: Client) -> Any:
    return settings_pb2_grpc.SettingsServiceStub(c.channel)


def _get_settings_other(world: Tenants, b: Client) -> None:
    """B reads its own settings (the defaults), never A's (changed by A's own cell or not)."""
    mine = _settings(b).GetSettings(settings_pb2.GetSettingsRequest(), timeout=10).settings
    assert mine.bot_clicks.threshold.ToMilliseconds() == 2000


def _update_settings_other(world: Tenants, b: Client) -> None:
    """B's admin changes B's settings; A's stay (its footprint is compared too)."""
    reply = _settings(b).UpdateSettings(
        settings_pb2.UpdateSettingsRequest(bot_click_threshold=duration_pb2.Duration(seconds=9)), timeout=30
    )
    assert reply.settings.bot_clicks.threshold.ToMilliseconds() == 9000
    a_sees = _settings(world.client(world.a.read)).GetSettings(settings_pb2.GetSettingsRequest(), timeout=10)
    assert a_sees.settings.bot_clicks.threshold.ToMilliseconds() != 9000
    _settings(b).UpdateSettings(  # back to the default, for the other cells
        settings_pb2.UpdateSettingsRequest(bot_click_threshold=duration_pb2.Duration(seconds=2)), timeout=30
    )


# Retention (tests/test_retention.py has the rest): each business sets its
# own, long enough that nothing seeded is ever pruned; neither ever sees or
# changes the other's.
RETENTION_DAYS = {"A": 36_500, "B": 36_000}


def _retention(c: Client) -> Any:
    return retention_pb2_grpc.RetentionServiceStub(c.channel)


def _get_retention(c: Client) -> int:
    return int(_retention(c).GetRetention(retention_pb2.GetRetentionRequest(), timeout=10).retention.history_days)


def _set_retention(c: Client, days: int) -> Any:
    wanted = retention_pb2.Retention(history_days=days)
    return _retention(c).SetRetention(retention_pb2.SetRetentionRequest(retention=wanted), timeout=10)


def _apply_retention(c: Client) -> Any:
    return _retention(c).ApplyRetention(retention_pb2.ApplyRetentionRequest(), timeout=30)


def _set_retention_other(world: Tenants, b: Client) -> None:
    assert _set_retention(b, RETENTION_DAYS["B"]).retention.history_days == RETENTION_DAYS["B"]
    assert _get_retention(world.client(world.a.read)) in (0, RETENTION_DAYS["A"])


def _nothing_pruned(reply: Any) -> None:
    assert [p.rows for p in reply.pruned] == [0, 0, 0, 0]


CELLS += [
    Cell(
        "GetSettings",
        R,
        lambda w, c, t: _settings(c).GetSettings(settings_pb2.GetSettingsRequest(), timeout=10),
        lambda w, r: _check(r.settings.bot_clicks.crawler_user_agent_is_bot),
        _get_settings_other,
    ),
    Cell(
        "UpdateSettings",
        A,
        lambda w, c, t: _settings(c).UpdateSettings(
            settings_pb2.UpdateSettingsRequest(bot_click_threshold=duration_pb2.Duration(seconds=3)), timeout=30
        ),
        lambda w, r: _check(r.settings.bot_clicks.threshold.ToMilliseconds() == 3000),
        _update_settings_other,
    ),
    Cell(
        "GetRetention",
        R,
        lambda w, c, t: _get_retention(c),
        lambda w, r: _check(r in (0, RETENTION_DAYS["A"])),
        lambda w, b: _check(_get_retention(b) in (0, RETENTION_DAYS["B"])),
    ),
    Cell(
        "SetRetention",
        A,
        lambda w, c, t: _set_retention(c, RETENTION_DAYS["A"]),
        lambda w, r: _check(r.retention.history_days == RETENTION_DAYS["A"]),
        _set_retention_other,
    ),
    Cell(
        "ApplyRetention",
        A,
        lambda w, c, t: _apply_retention(c),
        lambda w, r: _nothing_pruned(r),
        lambda w, b: _nothing_pruned(_apply_retention(b)),
    ),
]


def test_the_matrix_has_every_rpc() -> None:
    covered = {cell.rpc.split("-")[0] for cell in CELLS}
    assert covered == {m.name for m in _methods()}


# A key of the wrong scope for each scope a cell needs.
WRONG_SCOPE = {A: "read", R: "ingest", IN: "read"}


def _check(ok: bool) -> None:
    assert ok


@pytest.mark.parametrize("credential", ["own", "other", "revoked", "none", "wrong_scope"])
@pytest.mark.parametrize("cell", CELLS, ids=[c.rpc for c in CELLS])
def test_tenant_matrix(tenants: Tenants, cell: Cell, credential: str) -> None:
    a, b = tenants.a, tenants.b
    target = cell.prepare(tenants) if cell.prepare else None
    before = _footprint(tenants, a.business)
    if credential == "own":
        cell.own(tenants, cell.call(tenants, tenants.client(getattr(a, cell.scope.value)), target))
        return
    if credential == "other":
        cell.other(tenants, tenants.client(getattr(b, cell.scope.value)))
    else:
        key = {"revoked": a.revoked, "none": None, "wrong_scope": getattr(a, WRONG_SCOPE[cell.scope])}[credential]
        with pytest.raises(grpc.RpcError) as raised:
            cell.call(tenants, tenants.client(key), target)
        expected = PERMISSION_DENIED if credential == "wrong_scope" else UNAUTHENTICATED
        assert raised.value.code() == expected  # type: ignore[attr-defined]
    assert _footprint(tenants, a.business) == before, "A's data changed"


def test_sequences_and_event_ids_are_per_business(tenants: Tenants) -> None:
    seqs = rows(tenants.database, "SELECT business_id, min(seq) FROM events GROUP BY business_id ORDER BY 1")
    assert seqs == [("acme", 1), ("globex", 1)]
    both = rows(tenants.database, "SELECT DISTINCT business_id FROM events WHERE event_id = 'e1' ORDER BY 1")
    assert both == [("acme",), ("globex",)]


# -- revocation ---------------------------------------------------------------------


def test_revocation_takes_effect_within_the_cache_time(tmp_path: Path) -> None:
    database = database_of(tmp_path)
    key = create_key(database, "acme", Scope.INGEST, Scope.READ)
    running = start_server(tmp_path, key_cache_seconds=0.3)
    client = keyed_client(running.address, key)
    try:
        client.campaigns.ListCampaigns(campaign_pb2.ListCampaignsRequest(), timeout=10)
        # A stream opened before the revocation keeps its authorisation to its end.
        gate: list[Any] = []
        requests = _gated([batch(status("r1")), batch(status("r2"))], gate)
        replies = client.ingest.StreamEvents(requests, timeout=30)
        assert next(replies).accepted == 1

        key_id = key.split("_")[1]
        result = _flowtrack("keys", "revoke", key_id, database=database)
        assert result.returncode == 0, result.stderr
        # Takes effect without a restart, once the cached check (0.3 s here)
        # expires: a generous deadline for that condition, not a bound on time.
        deadline = time.monotonic() + 30
        while code_of(lambda: client.campaigns.ListCampaigns(campaign_pb2.ListCampaignsRequest(), timeout=10)) == OK:
            assert time.monotonic() < deadline, "revoked key still works"
            time.sleep(0.05)
        with pytest.raises(grpc.RpcError) as raised:
            client.campaigns.ListCampaigns(campaign_pb2.ListCampaignsRequest(), timeout=10)
        assert error_details(raised.value).reason == "REVOKED_API_KEY"

        gate.append(True)
        assert next(replies).accepted == 1
        [(last_used,)] = rows(database, "SELECT last_used_at FROM api_keys")
        assert last_used is not None
    finally:
        client.channel.close()
        running.stop()


def _gated(items: list[Any], gate: list[Any]) -> Iterator[Any]:
    yield items[0]
    while not gate:
        time.sleep(0.02)
    yield from items[1:]


def test_status_codes_are_listed_in_errors() -> None:
    # UNAUTHENTICATED and PERMISSION_DENIED come from domain errors like every other code.
    from flowtrack.api.errors import to_status
    from flowtrack.domain import errors

    assert to_status(errors.Unauthenticated("x")).code == grpc.StatusCode.UNAUTHENTICATED
    assert to_status(errors.PermissionDenied("x")).code == grpc.StatusCode.PERMISSION_DENIED
