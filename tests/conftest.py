"""A real flowtrack server on a free loopback port, per test, on a real SQLite
file, reached through real channels and the generated stubs."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from flowtrack.config import Settings
from flowtrack.server import Running, create_server
from flowtrack.v1 import campaign_pb2_grpc, ingest_pb2_grpc, report_pb2_grpc


class ServerThread:
    """Runs create_server() in its own event loop thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.running: Running = self._call(create_server(settings))
        self.port = self.running.port
        self.address = f"127.0.0.1:{self.port}"

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    @property
    def store(self) -> Any:
        return self.running.store

    def stop(self, grace: float = 0.5) -> None:
        if self.loop.is_running():
            self._call(self.running.stop(grace))
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)


@dataclasses.dataclass
class Client:
    channel: grpc.Channel
    campaigns: campaign_pb2_grpc.CampaignServiceStub
    ingest: ingest_pb2_grpc.IngestServiceStub
    reports: report_pb2_grpc.ReportServiceStub


def make_client(address: str) -> Client:
    channel = grpc.insecure_channel(address)
    return Client(
        channel,
        campaign_pb2_grpc.CampaignServiceStub(channel),
        ingest_pb2_grpc.IngestServiceStub(channel),
        report_pb2_grpc.ReportServiceStub(channel),
    )


def start_server(tmp_path: Path, **overrides: Any) -> ServerThread:
    options: dict[str, Any] = {"listen": "127.0.0.1:0", "database": str(tmp_path / "flowtrack.db"), "grace": 0.5}
    settings = Settings(**{**options, **overrides})
    return ServerThread(settings)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    running = start_server(tmp_path)
    yield running
    running.stop()


@pytest.fixture
def client(server: ServerThread) -> Iterator[Client]:
    c = make_client(server.address)
    yield c
    c.channel.close()


@dataclasses.dataclass
class ErrorDetails:
    code: grpc.StatusCode
    message: str
    reason: str
    violations: dict[str, str]  # field -> description
    violation_reasons: dict[str, str]  # field -> reason


def error_details(error: grpc.RpcError) -> ErrorDetails:
    """The rich status of a failed call: code, ErrorInfo reason, BadRequest violations."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, f"no rich status on {error}"
    reason, violations, reasons = "", {}, {}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            for v in bad.field_violations:
                violations[v.field] = v.description
                reasons[v.field] = v.reason
    return ErrorDetails(error.code(), status.message, reason, violations, reasons)  # type: ignore[attr-defined]
