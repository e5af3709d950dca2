"""The server itself: services, reflection, health, start-up errors, stop."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from flowtrack.store import db
from tests.conftest import ServerThread, start_server


def test_health_and_reflection_list_every_service(server: ServerThread) -> None:
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "flowtrack.v1.CampaignService", "flowtrack.v1.IngestService", "flowtrack.v1.ReportService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {
        "flowtrack.v1.CampaignService",
        "flowtrack.v1.IngestService",
        "flowtrack.v1.ReportService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names


@pytest.mark.sqlite_only("the SQLite file's schema and journal mode (PostgreSQL: tests/test_replicas.py)")
def test_schema_is_created_and_migrations_recorded(tmp_path: Path) -> None:
    from flowtrack.store import upgrade

    running = start_server(tmp_path)
    running.stop()
    conn = db.connect(tmp_path / "flowtrack.db", readonly=True)
    assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(upgrade.head(),)]
    # A new database never had the previous release's record of its SQL migrations.
    assert conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'schema_migrations'").fetchone() is None
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # A second start applies nothing new and keeps the data.
    running = start_server(tmp_path)
    running.stop()
    assert db.migrate(db.connect(tmp_path / "flowtrack.db")) == []


def test_stop_sets_health_not_serving(tmp_path: Path) -> None:
    running = start_server(tmp_path, grace=2.0)
    channel = grpc.insecure_channel(running.address)
    health = health_pb2_grpc.HealthStub(channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    import threading

    stopper = threading.Thread(target=running.stop, kwargs={"grace": 2.0})
    stopper.start()
    statuses = []
    try:
        for reply in watch:
            statuses.append(reply.status)
    except grpc.RpcError:
        pass
    stopper.join()
    channel.close()
    assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "flowtrack", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.slow
def test_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _serve("--listen", f"127.0.0.1:{port}", "--database", str(tmp_path / "a.db"))
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert err.strip().splitlines() == [err.strip()]
    assert err.startswith(f"flowtrack: cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in err


@pytest.mark.slow
@pytest.mark.parametrize("path", ["missing-folder/x.db", "."])
def test_unusable_database_path_is_one_clear_line(tmp_path: Path, path: str) -> None:
    proc = _serve("--listen", f"127.0.0.1:{_free_port()}", "--database", str(tmp_path / path))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert err.startswith("flowtrack: cannot open database")
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


@pytest.mark.slow
def test_serve_from_environment_and_sigterm_stops_cleanly(tmp_path: Path) -> None:
    port = _free_port()
    database = tmp_path / "env.db"
    proc = _serve(
        env={
            "FLOWTRACK_LISTEN": f"127.0.0.1:{port}",
            "FLOWTRACK_DATABASE": str(database),
            "FLOWTRACK_GRACE": "1",
            "FLOWTRACK_LOG_LEVEL": "INFO",
        }
    )
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=20)
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        channel.close()
        assert database.exists()
    finally:
        proc.terminate()
        # A generous deadline for the process to end; what it did is in its log.
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopping: draining for up to 1.0 s" in err and re.search(r": stopped$", err, re.MULTILINE), err
    assert "Traceback" not in err
