"""Helpers for tests with API keys: keys made straight in the database, clients
that send them, and a server holding two businesses with keys of every kind.

The tenant matrix of test_auth.py is built on `Tenants`; other services'
cells can use the same `world` (see test_auth.CELLS).
"""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path
from typing import Any

import grpc

import flowtrack
from flowtrack.domain.keys import Scope, key_id_of
from flowtrack.domain.times import now_us
from flowtrack.store import db
from flowtrack.store import keys as stored
from flowtrack.v1 import campaign_pb2_grpc, ingest_pb2_grpc, report_pb2_grpc
from tests.conftest import Client, ServerThread, connect_db, database_of, start_server


def _open(database: str | Path) -> Any:
    """A write connection to `database` (created and migrated if needed):
    SQLite, or PostgreSQL for a URL (through the store's adapter)."""
    if str(database).startswith("postgresql://"):
        from flowtrack.store.pg.conn import PgConnection
        from flowtrack.store.pg.store import migrate

        migrate(str(database))
        return PgConnection.connect(str(database))
    return db.open_database(database)


# SQLite's write transaction takes the lock at once; PostgreSQL's BEGIN is it.
_BEGIN_WRITE = {"Connection": "BEGIN IMMEDIATE"}


def create_key(database: str | Path, business: str, *scopes: Scope, name: str = "") -> str:
    """A new key in `database` (created and migrated if needed); returns the full key."""
    conn = _open(database)
    try:
        conn.execute(_BEGIN_WRITE.get(type(conn).__name__, "BEGIN"))
        new, _ = stored.create(conn, business, frozenset(scopes), name, now_us())
        conn.execute("COMMIT")
    finally:
        conn.close()
    return new.token


def revoke_key(database: str | Path, key: str) -> None:
    conn = _open(database)
    try:
        conn.execute(_BEGIN_WRITE.get(type(conn).__name__, "BEGIN"))
        stored.revoke(conn, key_id_of(key) or key, now_us())
        conn.execute("COMMIT")
    finally:
        conn.close()


def keyed_client(address: str, api_key: str | None = None, **tls: Any) -> Client:
    """A client whose every call carries `api_key` (None: no key)."""
    channel = flowtrack.client_channel(address, api_key=api_key, **tls)
    return Client(
        channel,
        campaign_pb2_grpc.CampaignServiceStub(channel),
        ingest_pb2_grpc.IngestServiceStub(channel),
        report_pb2_grpc.ReportServiceStub(channel),
    )


def rows(database: str | Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = connect_db(database) if str(database).startswith("postgresql://") else None
    if conn is None:
        conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return list(conn.execute(sql, args))
    finally:
        conn.close()


@dataclasses.dataclass
class Tenant:
    business: str
    admin: str
    read: str
    ingest: str
    revoked: str


@dataclasses.dataclass
class Tenants:
    """A server (keys required, loopback) with businesses `a` and `b`."""

    server: ServerThread
    a: Tenant
    b: Tenant
    database: Path | str
    _clients: list[Client] = dataclasses.field(default_factory=list)

    def client(self, api_key: str | None) -> Client:
        c = keyed_client(self.server.address, api_key)
        self._clients.append(c)
        return c

    def close(self) -> None:
        for c in self._clients:
            c.channel.close()
        self.server.stop()


def start_tenants(tmp_path: Path, **overrides: Any) -> Tenants:
    database = database_of(tmp_path)
    tenants = []
    for business in ("acme", "globex"):
        keys = {scope.value: create_key(database, business, scope, name=scope.value) for scope in Scope}
        revoked = create_key(database, business, Scope.ADMIN, name="revoked")
        revoke_key(database, revoked)
        tenants.append(Tenant(business, keys["admin"], keys["read"], keys["ingest"], revoked))
    server = start_server(tmp_path, **overrides)
    return Tenants(server, tenants[0], tenants[1], database)


def code_of(call: Any) -> grpc.StatusCode:
    """The status code of calling `call()` (OK if it returns)."""
    try:
        call()
    except grpc.RpcError as error:
        return error.code()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK


# -- the twin campaign: the same id and event ids in both businesses, other data --

TWIN = "twin"
# A campaign only business a has, with an event; no cell ever writes to it with b's keys.
A_SEALED = "a-sealed"


@dataclasses.dataclass(frozen=True)
class Twin:
    """What one business holds in campaign TWIN. Every text value of its events
    carries the business id, so `foreign` (the other business's id) showing up
    in a reply is a leak; the counts differ between the two as well."""

    business: str
    foreign: str
    recipients: tuple[str, ...]  # the audience, in recipient order
    awaiting: int
    failed: int
    success: int
    clicks: int
    unique_clickers: int
    failure_code: str
    link_id: str
    country: str
    event_ids: tuple[str, ...]  # in sequence order
    read: int  # engagement (twin_engagement): recipients that read, replied, tapped a button
    replied: int
    button_clickers: int

    @property
    def total(self) -> int:
        return len(self.recipients)


TWINS = {
    "acme": Twin(
        business="acme",
        foreign="globex",
        recipients=("+15550001", "+15550002"),
        awaiting=1,
        failed=1,
        success=0,
        clicks=1,
        unique_clickers=1,
        failure_code="FAIL_ACME",
        link_id="link-acme",
        country="FR",
        event_ids=("t1", "t2", "tc1", "tg1", "tg2"),
        read=1,
        replied=1,
        button_clickers=0,
    ),
    "globex": Twin(
        business="globex",
        foreign="acme",
        recipients=("+15550001", "+15550002", "+15550777"),
        awaiting=1,
        failed=1,
        success=1,
        clicks=2,
        unique_clickers=2,
        failure_code="FAIL_GLOBEX",
        link_id="link-globex",
        country="BR",
        event_ids=("t1", "t2", "t3", "tc1", "tc2", "tg1", "tg2", "tg3"),
        read=2,
        replied=0,
        button_clickers=1,
    ),
}


def twin_events(business: str) -> list[Any]:
    """The events of TWINS[business], in the order they are sent."""
    from flowtrack.v1 import common_pb2 as S
    from tests.test_ingest import click, status

    def where(country: str) -> S.Location:
        return S.Location(country_code=country, region=f"region-{business}", city=f"city-{business}")

    def clicked(event_id: str, recipient: str, country: str) -> Any:
        return click(
            event_id,
            recipient,
            link=f"link-{business}",
            campaign=TWIN,
            url=f"https://{business}.example/x",
            link_variable=f"var-{business}",
            location=where(country),
            user_agent=f"ua-{business}",
        )

    channel, variant = f"chan-{business}", f"variant-{business}"
    reason = S.FailureReason(code=TWINS[business].failure_code, message=f"{business} failed")
    if business == "acme":
        return [
            status(
                "t1",
                "+15550001",
                S.MESSAGE_STATUS_SUBMITTED,
                TWIN,
                channel=channel,
                variant=variant,
                provider_message_id=f"pm-{business}",
                input_variables={"who": business},
            ),
            status("t2", "+15550002", S.MESSAGE_STATUS_FAILED, TWIN, channel=channel, failure_reason=reason),
            clicked("tc1", "+15550001", "FR"),
        ]
    return [
        status(
            "t1",
            "+15550001",
            S.MESSAGE_STATUS_FAILED,
            TWIN,
            channel=channel,
            variant=variant,
            failure_reason=reason,
            session_id=f"session-{business}",
        ),
        status("t2", "+15550002", S.MESSAGE_STATUS_SUCCESS, TWIN, channel=channel, output_variables={"who": business}),
        status("t3", "+15550777", S.MESSAGE_STATUS_SUBMITTED, TWIN, channel=channel),
        clicked("tc1", "+15550001", "BR"),
        clicked("tc2", "+15550777", "BR"),
    ]


def twin_engagement(business: str) -> list[Any]:
    """The engagement events of TWINS[business] (sent after twin_events). The
    same event ids in both businesses, other payloads, texts naming the business."""
    from flowtrack.v1 import ingest_pb2 as I
    from tests.test_ingest import NOW, ts

    def engaged(event_id: str, recipient: str, kind: int, **fields: Any) -> Any:
        event = I.EngagementEvent(
            event_id=event_id, campaign_id=TWIN, recipient=recipient, kind=kind, occurred_at=ts(NOW - 20), **fields
        )
        return I.Event(engagement=event)

    if business == "acme":
        return [
            engaged("tg1", "+15550001", I.ENGAGEMENT_KIND_READ),
            engaged("tg2", "+15550001", I.ENGAGEMENT_KIND_REPLIED, text=f"reply from {business}"),
        ]
    return [
        engaged(
            "tg1",
            "+15550002",
            I.ENGAGEMENT_KIND_BUTTON_CLICKED,
            button_id=f"btn-{business}",
            button_name=f"button {business}",
        ),
        engaged("tg2", "+15550777", I.ENGAGEMENT_KIND_READ),
        engaged("tg3", "+15550002", I.ENGAGEMENT_KIND_READ),
    ]


def seed_twins(world: Tenants) -> None:
    """Campaign TWIN in both businesses (audience +15550001 and +15550002;
    globex's +15550777 joins through its event), and A_SEALED in a's only."""
    from flowtrack.v1 import campaign_pb2
    from flowtrack.v1 import common_pb2 as S
    from tests.test_ingest import batch, status

    for tenant in (world.a, world.b):
        admin, ingest = world.client(tenant.admin), world.client(tenant.ingest)
        letter = "A" if tenant is world.a else "B"
        campaign = campaign_pb2.Campaign(id=TWIN, name=f"{letter} twin ({tenant.business})")
        admin.campaigns.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=campaign), timeout=10)
        if tenant is world.a:
            sealed = campaign_pb2.Campaign(id=A_SEALED, name="A sealed")
            admin.campaigns.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=sealed), timeout=10)
        audience = [campaign_pb2.Recipient(recipient=r) for r in ("+15550001", "+15550002")]
        admin.campaigns.AddRecipients(iter([campaign_pb2.AddRecipientsRequest(campaign_id=TWIN, recipients=audience)]))
        events = twin_events(tenant.business)
        if tenant is world.a:
            events.append(status("sealed-1", "+15550001", S.MESSAGE_STATUS_SUBMITTED, A_SEALED))
        request = batch(*events)
        request.events.extend(twin_engagement(tenant.business))
        [reply] = list(ingest.ingest.StreamEvents(iter([request]), timeout=10))
        assert reply.accepted == len(request.events), reply
