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
from tests.conftest import Client, ServerThread, start_server


def create_key(database: str | Path, business: str, *scopes: Scope, name: str = "") -> str:
    """A new key in `database` (created and migrated if needed); returns the full key."""
    conn = db.open_database(database)
    try:
        conn.execute("BEGIN IMMEDIATE")
        new, _ = stored.create(conn, business, frozenset(scopes), name, now_us())
        conn.execute("COMMIT")
    finally:
        conn.close()
    return new.token


def revoke_key(database: str | Path, key: str) -> None:
    conn = db.open_database(database)
    try:
        conn.execute("BEGIN IMMEDIATE")
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
    database: Path
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
    database = tmp_path / "flowtrack.db"
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
