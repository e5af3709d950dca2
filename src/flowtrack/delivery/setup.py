"""Wiring of reports delivered: the completion hook, the webhook
worker and the report scheduler (and the filler of the messages' stored
encodings, core/encodings.py, a background task like them). Their gRPC services (api/schedules.py,
api/webhooks.py) and the routes of the signed download links
(web/downloads.py) are the faces' and are wired by server.py."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from flowtrack.config import Settings
from flowtrack.core import background
from flowtrack.core import schedules as cschedules
from flowtrack.core.background import CompletionHook
from flowtrack.core.encodings import Filler
from flowtrack.core.reports import Reports
from flowtrack.core.retention import RetentionCore
from flowtrack.core.settings import Settings as SettingsCore
from flowtrack.delivery.reclassify import Reclassifier
from flowtrack.delivery.retention import RetentionSweeper
from flowtrack.delivery.runner import Runner
from flowtrack.delivery.worker import DeliveryWorker
from flowtrack.store.base import Store, is_postgres
from flowtrack.v1 import delivery_pb2
from flowtrack.wire.encoded import message_row

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    delivery_pb2.DESCRIPTOR.services_by_name["WebhookService"].full_name,
    delivery_pb2.DESCRIPTOR.services_by_name["ReportScheduleService"].full_name,
)


def reports_dir(settings: Settings) -> Path:
    """The reports folder: --reports-dir, else `<database>.reports` beside the
    database (on PostgreSQL, which has no file: `flowtrack.reports` in the
    working directory; replicas need a shared --reports-dir)."""
    if settings.reports_dir:
        return Path(settings.reports_dir)
    if is_postgres(settings.database):
        return Path("flowtrack.reports")
    return Path(settings.database + ".reports")


def install_hook(store: Store, settings: Settings) -> CompletionHook:
    """Campaign completion inside the writer's transactions (before any job runs)."""
    return background.install_completion(store, int(settings.campaign_quiet_period * 1_000_000))


@dataclass
class Delivery:
    """The background tasks, the reports folder and the key of its signed links."""

    worker: DeliveryWorker
    runner: Runner
    folder: Path
    link_key: bytes
    sweeper: RetentionSweeper | None = None
    reclassifier: Reclassifier | None = None
    _base_url: list[str] = field(default_factory=lambda: [""])
    filler: Filler | None = None

    def listening(self, url: str) -> None:
        """The HTTP listener's URL: what signed links name unless --public-url says otherwise."""
        if not self._base_url[0]:
            self._base_url[0] = url.rstrip("/")

    def begin(self) -> None:
        """Start the background tasks (once the gRPC server runs)."""
        self.worker.start()
        self.runner.start()
        if self.sweeper is not None:
            self.sweeper.start()
        if self.reclassifier is not None:
            self.reclassifier.start()
        if self.filler is not None:
            self.filler.start()

    async def stop(self) -> None:
        if self.filler is not None:
            await self.filler.stop()
        if self.reclassifier is not None:
            await self.reclassifier.stop()
        if self.sweeper is not None:
            await self.sweeper.stop()
        await self.runner.stop()
        await self.worker.stop()


async def start(
    store: Store,
    settings: Settings,
    reports: Reports,
    hook: CompletionHook,
    retention: RetentionCore | None = None,
    business_settings: SettingsCore | None = None,
) -> Delivery:
    """The worker, the scheduler, the retention sweep and the finishing of
    re-classifications, not started yet: Delivery.begin() once the gRPC
    server runs."""
    folder = reports_dir(settings)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(f"cannot create the reports folder {folder}: {error.strerror or error}") from error
    link_key = await cschedules.link_key(store)
    base_url = [settings.public_url.rstrip("/")]
    worker = DeliveryWorker(
        store,
        allow_private=settings.webhook_allow_private,
        retry_base=settings.webhook_retry_base,
        retry_window=settings.webhook_retry_window,
        disable_after=settings.webhook_disable_after,
        timeout=settings.webhook_timeout,
        smtp=settings.smtp,
        page_url=lambda: base_url[0],
    )
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
    sweeper = None if retention is None else RetentionSweeper(retention, settings.retention_interval)
    reclassifier = None if business_settings is None else Reclassifier(business_settings)
    filler = Filler(store, message_row) if settings.encode_rows else None
    delivery = Delivery(worker, runner, folder, link_key, sweeper, reclassifier, _base_url=base_url, filler=filler)

    def committed(_changed: dict[str, int], _touched: set[int]) -> None:
        # Only a commit that completed a campaign or emitted an event wakes
        # them (not every ingest commit); other writers of the outbox wake
        # the worker themselves.
        if hook.take_news():
            worker.wake()
            runner.wake()

    store.writer.on_commit(committed)
    return delivery
