"""Retention use cases: read and set a business's retention, and the sweep
that applies it (ApplyRetention for the caller's business now; the
background task of delivery/retention.py for every business, one replica at
a time under the `retention` lease).

The sweep is a loop of small writer jobs (store/pruning.py), each a short
transaction of at most `pruning.BATCH` rows of one business, so ingest waits
for one batch at most: first the history below the horizon, then each
completed campaign past its retention (its events in batches, then
DeleteCampaign's job and its report run files). `on_pruned(table, rows)` is
told after each job (the flowtrack_retention_pruned_rows_total metric)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowtrack.core.background import bookkeeping
from flowtrack.core.calls import Call
from flowtrack.domain import errors
from flowtrack.domain import retention as rules
from flowtrack.domain.retention import Retention
from flowtrack.store import campaigns as campaign_queries
from flowtrack.store import pruning
from flowtrack.store import retention as queries
from flowtrack.store.base import Store
from flowtrack.store.writer import Job

Write = Callable[[Job[Any]], Awaitable[Any]]

__all__ = ["Applied", "Retention", "RetentionCore"]

# Campaigns looked up per round of a business's sweep.
_CAMPAIGNS_PER_ROUND = 20
# Businesses read per page of the background sweep's list.
_BUSINESSES_PER_PAGE = 100


@dataclass
class Applied:
    """What a sweep of one business deleted: rows per table (domain/retention.TABLES)
    and the history horizon it applied (None without a history retention)."""

    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(rules.TABLES, 0))
    horizon: int | None = None

    def add(self, other: Applied) -> None:
        for table, n in other.rows.items():
            self.rows[table] += n


class RetentionCore:
    def __init__(
        self,
        store: Store,
        *,
        reports_dir: Path | None = None,
        on_pruned: Callable[[str, int], None] | None = None,
    ) -> None:
        self.store = store
        self.reports_dir = reports_dir  # where report run files are (deleted campaigns' runs go)
        self.on_pruned = on_pruned

    async def get(self, call: Call) -> Retention:
        return await self.store.read(queries.get, call.business_id)

    async def set(self, call: Call, history_days: int, campaign_days: int) -> Retention:
        """Set the caller's retention (0: forever); INVALID_ARGUMENT out of range."""
        wrong = rules.check(history_days, campaign_days)
        if wrong:
            raise errors.InvalidArgument(wrong)
        history, campaign = rules.days_or_none(history_days), rules.days_or_none(campaign_days)
        return await self.store.write(queries.set_retention(call.business_id, history, campaign))

    async def apply(self, call: Call) -> Applied:
        """Run the sweep for the caller's business now."""
        return await self.sweep_business(call.business_id, write=self._client, still=call.done)

    async def _client(self, job: Job[Any]) -> Any:
        return await self.store.write(job)

    async def any_set(self) -> bool:
        """Whether any business has a retention (else a sweep has nothing to do)."""
        return bool(await self.store.read(queries.with_history, "", 1))

    async def sweep_all(self, held: Callable[[], Awaitable[bool]]) -> Applied:
        """Sweep every business with a retention while `held()` (the lease is
        still this replica's); what was deleted in all."""
        total = Applied()
        after = ""
        while True:
            page = await self.store.read(queries.with_history, after, _BUSINESSES_PER_PAGE)
            for business_id in page:
                if not await held():
                    return total
                total.add(await self.sweep_business(business_id, write=self._background))
            if len(page) < _BUSINESSES_PER_PAGE:
                return total
            after = page[-1]

    async def _background(self, job: Job[Any]) -> Any:
        return await bookkeeping(self.store, job)

    async def sweep_business(
        self,
        business_id: str,
        *,
        write: Write,
        still: Callable[[], bool] = lambda: False,
    ) -> Applied:
        """Delete the business's history below its horizon and its completed
        campaigns past their retention, a batch per job; stops early if
        `still()` says the caller is gone."""
        applied = Applied()
        while not still():
            pruned = await write(pruning.prune_history(business_id))
            assert isinstance(pruned, pruning.Pruned)
            applied.horizon = pruned.horizon
            self._count(applied, "events", pruned.events)
            self._count(applied, "replies", pruned.replies)
            self._count(applied, "button_clicks", pruned.button_clicks)
            if pruned.events < pruning.BATCH:
                break
        kept = await self.store.read(queries.get, business_id)
        horizon = rules.campaign_horizon(int(time.time() * 1_000_000), kept.campaign_days)
        while horizon is not None and not still():
            due = await self.store.read(pruning.completed_before, business_id, horizon, _CAMPAIGNS_PER_ROUND)
            for campaign in due:
                await self._delete_campaign(business_id, campaign, applied, write)
            if len(due) < _CAMPAIGNS_PER_ROUND:
                break
        return applied

    async def _delete_campaign(
        self,
        business_id: str,
        campaign: pruning.Completed,
        applied: Applied,
        write: Write,
    ) -> None:
        """Delete a campaign as DeleteCampaign does, its events, then its
        messages, replies and taps first, in batches (short writer jobs
        whatever the campaign's size)."""
        while True:
            n = await write(pruning.prune_campaign_events(business_id, campaign.cid, pruning.BATCH))
            assert isinstance(n, int)
            self._count(applied, "events", n)
            if n < pruning.BATCH:
                break
        while True:
            most = await write(pruning.prune_campaign_rows(business_id, campaign.cid, pruning.BATCH))
            assert isinstance(most, int)
            if most < pruning.BATCH:
                break
        try:
            deleted = await write(campaign_queries.delete(business_id, campaign.campaign_id))
        except errors.NotFound:  # deleted meanwhile by its owner
            return
        assert isinstance(deleted, campaign_queries.Deleted)
        self._count(applied, "events", deleted.events)
        self._count(applied, "campaigns", 1)
        if self.reports_dir is not None:
            for path in deleted.files:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread((self.reports_dir / path).unlink, missing_ok=True)

    def _count(self, applied: Applied, table: str, rows: int) -> None:
        if not rows:
            return
        applied.rows[table] += rows
        if self.on_pruned is not None:
            self.on_pruned(table, rows)
