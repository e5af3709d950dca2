"""What the routes share: one object on `app.state.web`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from flowtrack.config import Settings
from flowtrack.core.auth import StreamQuota
from flowtrack.core.campaigns import Campaigns
from flowtrack.core.reports import Reports
from flowtrack.metrics import Metrics
from flowtrack.store.base import Store
from flowtrack.web.access import Access


@dataclass
class WebState:
    store: Store
    settings: Settings
    access: Access
    campaigns: Campaigns  # the use cases the routes call (core/)
    reports: Reports
    metrics: Metrics
    # Set when the server starts stopping: live streams end at once.
    stopping: asyncio.Event
    tls: bool
    # Open streams per key, shared with the gRPC gate (live stats hold one).
    streams: StreamQuota = field(default_factory=lambda: StreamQuota(0))
