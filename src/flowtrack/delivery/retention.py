"""The retention sweep in the background (core/retention.py).

Every `interval` seconds (--retention-interval, an hour by default; the
first round a minute after start), one replica at a time sweeps every
business that has a retention: it takes the `retention` lease in the
database (the same leases table as the report scheduler's), and only while it
holds it deletes, batch by batch, what is past each business's retention.
The lease lasts a minute and is renewed between businesses; a replica that
dies mid-sweep lets it lapse and another takes over at its next round. A
sweep deletes in short transactions of its own, so two replicas sweeping at
once (a lapsed lease taken while the old holder still works) would only
share the work, never delete twice or count anything wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time

from flowtrack.core import background
from flowtrack.core import schedules as cschedules
from flowtrack.core.retention import Applied, RetentionCore

log = logging.getLogger(__name__)

LEASE = "retention"
LEASE_US = 60 * 1_000_000
FIRST_ROUND_AFTER = 60.0  # seconds after start (at most the interval): not in the way of start-up


class RetentionSweeper:
    def __init__(self, core: RetentionCore, interval: float) -> None:
        self.core = core
        self.store = core.store
        self.interval = interval
        self.holder = secrets.token_hex(8)
        self.rounds = 0  # rounds that held the lease and swept (tests wait on it)
        self.last: Applied | None = None
        self._task: asyncio.Task[None] | None = None
        self._renewed = 0.0
        self._took = False  # whether this server ever took the lease (then it gives it up at stop)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="flowtrack-retention")

    async def stop(self) -> None:
        if self._task is None:
            return
        await background.cancelled(self._task)
        if self._took:
            with contextlib.suppress(Exception):
                await cschedules.release_lease(self.store, LEASE, self.holder)

    async def _held(self) -> bool:
        """Whether the lease is still this replica's (renewed once a third of it has passed)."""
        if time.monotonic() - self._renewed > LEASE_US / 3e6:
            if not await cschedules.acquire_lease(self.store, LEASE, self.holder, LEASE_US):
                return False
            self._renewed = time.monotonic()
        return True

    async def sweep_once(self) -> Applied | None:
        """One round: the sweep of every business if this replica takes the
        lease (what it deleted), else None. Without any retention set it
        writes nothing at all (not even the lease)."""
        if not await self.core.any_set():
            return None
        if not await cschedules.acquire_lease(self.store, LEASE, self.holder, LEASE_US):
            return None
        self._took = True
        self._renewed = time.monotonic()
        applied = await self.core.sweep_all(self._held)
        self.rounds += 1
        self.last = applied
        return applied

    async def _run(self) -> None:
        await asyncio.sleep(min(FIRST_ROUND_AFTER, self.interval))
        while True:
            try:
                applied = await self.sweep_once()
                if applied is not None and any(applied.rows.values()):
                    log.info("retention sweep deleted %s", applied.rows)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("retention sweep failed")
            await asyncio.sleep(self.interval)
