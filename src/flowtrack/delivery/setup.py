"""Wiring of issue 14 into the server: the completion hook, the webhook
worker, the report scheduler, their two gRPC services, and (until the HTTP
face hosts them) a minimal HTTP listener for the signed download links."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from flowtrack.config import Settings
from flowtrack.delivery import bookkeeping as _bookkeeping
from flowtrack.delivery.runner import Runner
from flowtrack.delivery.worker import DeliveryWorker
from flowtrack.store import schedules as sschedules
from flowtrack.store.completion import CompletionHook
from flowtrack.store.store import Store
from flowtrack.v1 import delivery_pb2, delivery_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    delivery_pb2.DESCRIPTOR.services_by_name["WebhookService"].full_name,
    delivery_pb2.DESCRIPTOR.services_by_name["ReportScheduleService"].full_name,
)


def reports_dir(settings: Settings) -> Path:
    """The reports folder: --reports-dir, else `<database>.reports` beside the database."""
    return Path(settings.reports_dir) if settings.reports_dir else Path(settings.database + ".reports")


def install_hook(store: Store, settings: Settings) -> CompletionHook:
    """Campaign completion inside the writer's transactions (before any job runs)."""
    hook = CompletionHook(int(settings.campaign_quiet_period * 1_000_000))
    store.writer.before_commit(hook)
    return hook


@dataclass
class Delivery:
    worker: DeliveryWorker
    runner: Runner
    http_port: int | None = None
    _http: Any = None
    _http_task: asyncio.Task[None] | None = None
    _base_url: list[str] = field(default_factory=lambda: [""])
    _http_socket: socket.socket | None = None

    def begin(self) -> None:
        """Start the background tasks and the HTTP listener (once the gRPC server runs)."""
        if self._http is not None:
            # _serve, not serve: serve() takes over SIGINT/SIGTERM, which `flowtrack serve` handles itself.
            self._http_task = asyncio.create_task(self._http._serve(sockets=[self._http_socket]), name="flowtrack-http")
        self.worker.start()
        self.runner.start()

    async def stop(self) -> None:
        if self._http is not None:
            self._http.should_exit = True
            if self._http_task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._http_task, 5)
        await self.runner.stop()
        await self.worker.stop()


def _bind(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def start(
    store: Store, settings: Settings, server: grpc.aio.Server, reports: Any, hook: CompletionHook
) -> Delivery:
    """Register the services on `server` and bind the HTTP listener (call
    before server.start(), then Delivery.begin() after it)."""
    from flowtrack.api.schedules import ScheduleServicer
    from flowtrack.api.webhooks import WebhookServicer

    folder = reports_dir(settings)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(f"cannot create the reports folder {folder}: {error.strerror or error}") from error
    link_key = await _bookkeeping(store, lambda tx: sschedules.link_key(tx.conn))
    worker = DeliveryWorker(
        store,
        allow_private=settings.webhook_allow_private,
        retry_base=settings.webhook_retry_base,
        retry_window=settings.webhook_retry_window,
        disable_after=settings.webhook_disable_after,
    )
    base_url = [settings.public_url.rstrip("/")]
    runner = Runner(
        store,
        reports,
        reports_dir=folder,
        link_key=link_key,
        base_url=lambda: base_url[0],
        default_quiet_us=int(settings.campaign_quiet_period * 1_000_000),
        tick=settings.scheduler_tick,
        outbox_written=worker.wake,
    )
    delivery = Delivery(worker, runner, _base_url=base_url)

    def committed(_changed: dict[str, int], _touched: set[int]) -> None:
        # Only a commit that completed a campaign or emitted an event wakes
        # them (not every ingest commit); other writers of the outbox wake
        # the worker themselves.
        if hook.take_news():
            worker.wake()
            runner.wake()

    store.writer.on_commit(committed)
    delivery_pb2_grpc.add_WebhookServiceServicer_to_server(WebhookServicer(store, settings, worker), server)
    delivery_pb2_grpc.add_ReportScheduleServiceServicer_to_server(
        ScheduleServicer(store, settings, runner.signed_url, folder), server
    )
    if settings.http:
        try:
            _http(delivery, store, settings, link_key, folder)
        except (OSError, ValueError) as error:
            raise OSError(f"cannot listen on {settings.http} (--http): {error}") from error
    return delivery


def _http(delivery: Delivery, store: Store, settings: Settings, link_key: bytes, folder: Path) -> None:
    """A minimal uvicorn listener serving only the download links (the HTTP
    face's app takes web/downloads.routes() once merged)."""
    import uvicorn
    from starlette.applications import Starlette

    from flowtrack.web.downloads import routes

    assert settings.http is not None
    sock = _bind(settings.http)
    host, port = sock.getsockname()[:2]
    delivery.http_port = int(port)
    if not delivery._base_url[0]:
        shown = f"[{host}]" if ":" in host else host
        delivery._base_url[0] = f"http://{shown}:{port}"
    app = Starlette(routes=routes(store, link_key, folder))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    delivery._http = server
    delivery._http_socket = sock
    log.info("HTTP listener on %s", delivery._base_url[0])
