"""Builds the gRPC server: services, reflection, health, graceful stop.

`create_server(settings)` is shared by `flowtrack serve` and the tests: it
opens the store, registers every service, binds the address (port 0 picks a
free port) and returns the server with the port it got.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from flowtrack.config import Settings
from flowtrack.store.store import Store
from flowtrack.v1 import (
    campaign_pb2,
    campaign_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    report_pb2,
    report_pb2_grpc,
)

log = logging.getLogger("flowtrack")

SERVICE_NAMES = (
    campaign_pb2.DESCRIPTOR.services_by_name["CampaignService"].full_name,
    ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name,
    report_pb2.DESCRIPTOR.services_by_name["ReportService"].full_name,
)


class StartupError(Exception):
    """A problem that stops the server from starting, said in one line."""


@dataclass
class Running:
    server: grpc.aio.Server
    port: int
    store: Store
    health: health_aio.HealthServicer
    settings: Settings

    async def stop(self, grace: float | None = None) -> None:
        """Drain: health NOT_SERVING, refuse new RPCs, let in-flight ones finish
        within `grace` seconds, then commit what is queued and close the store."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.grace if grace is None else grace)
        await asyncio.to_thread(self.store.close)


async def create_server(settings: Settings) -> Running:
    # Imported here so that a servicer module may import server-level names.
    from flowtrack.api.campaigns import CampaignServicer
    from flowtrack.api.ingest import IngestServicer
    from flowtrack.api.reports import ReportServicer

    try:
        store = Store(
            settings.database,
            durability=settings.durability,
            max_commit_rows=settings.max_commit_rows,
        )
    except (OSError, Exception) as error:  # sqlite3.Error included
        raise StartupError(f"cannot open database {settings.database}: {error}") from error
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ],
    )
    campaign_pb2_grpc.add_CampaignServiceServicer_to_server(CampaignServicer(store, settings), server)
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(IngestServicer(store, settings), server)
    report_pb2_grpc.add_ReportServiceServicer_to_server(ReportServicer(store, settings), server)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    try:
        port = server.add_insecure_port(settings.listen)
    except RuntimeError as error:
        store.close()
        raise StartupError(f"cannot listen on {settings.listen}: {error}") from error
    if port == 0:
        store.close()
        raise StartupError(f"cannot listen on {settings.listen}: address in use or not available")
    await server.start()
    for name in (*SERVICE_NAMES, ""):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return Running(server, port, store, health_servicer, settings)


async def serve(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM, then stop gracefully."""
    running = await create_server(settings)
    host = settings.listen.rsplit(":", 1)[0]
    log.info(
        "flowtrack serving on %s:%d, database %s (durability %s)",
        host,
        running.port,
        settings.database,
        settings.durability,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: draining for up to %.1f s", settings.grace)
    await running.stop()
    log.info("stopped")
