"""Live updates: one shared notifier per server, fed by the writer's commits.

The writer calls `on_commit(changed_sequences, touched_cids)` in its thread
after each commit; the hub hops onto the event loop and

- marks the stats feed of every touched campaign dirty. A feed is shared by
  every watcher of that campaign: one stats read per change, however many
  watch, and at most one read per `min_interval` (0.25 s: about 4 per
  second), so a busy campaign's changes are coalesced. A watcher that is slow
  to read only ever gets the latest snapshot; nothing queues up per watcher.
- wakes every event subscriber of a business whose sequence moved. A
  subscriber then reads the new events from the store, page by page, so a
  slow subscriber costs nothing but its position.

A feed also re-reads its campaign every `poll_interval` seconds when nothing
happened, which is how it notices a deletion that did not go through an
event commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator

from flowtrack.domain.stats import CampaignStats
from flowtrack.store import reports as sreports
from flowtrack.store.base import Store

log = logging.getLogger(__name__)


class StatsFeed:
    """The stats of one campaign, recomputed when it changes, for every watcher."""

    def __init__(self, hub: LiveHub, business_id: str, cid: int) -> None:
        self.hub = hub
        self.business_id = business_id
        self.cid = cid
        self.version = 0
        self.stats: CampaignStats | None = None
        self.deleted = False
        self.watchers = 0
        self.reads = 0  # stats computations, for tests and benchmarks
        self._dirty = asyncio.Event()
        self._dirty.set()
        self._published = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"flowtrack-stats-feed-{cid}")

    def poke(self) -> None:
        self._dirty.set()

    def stop(self) -> None:
        self._task.cancel()

    async def next(self, seen: int) -> tuple[int, CampaignStats | None]:
        """The first snapshot newer than version `seen`: (version, stats), or
        (version, None) once the campaign is deleted."""
        while self.version <= seen and not self.deleted:
            await self._published.wait()
        return self.version, (None if self.deleted else self.stats)

    def _publish(self) -> None:
        self.version += 1
        published, self._published = self._published, asyncio.Event()
        published.set()

    async def _run(self) -> None:
        hub = self.hub
        while True:
            try:
                await asyncio.wait_for(self._dirty.wait(), hub.poll_interval)
                changed = True
            except TimeoutError:
                changed = False
            self._dirty.clear()
            try:
                stats = await hub.store.read(sreports.read_stats_by_cid, self.business_id, self.cid)
            except asyncio.CancelledError:
                raise
            except Exception:  # pragma: no cover - a failed read is retried on the next change
                log.exception("stats feed of campaign %d: read failed", self.cid)
                self._dirty.set()
                await asyncio.sleep(hub.min_interval)
                continue
            self.reads += 1
            if stats is None:
                self.deleted = True
                self._publish()
                hub._forget(self)
                return
            if changed or self.stats is None or _differs(stats, self.stats):
                self.stats = stats
                self._publish()
            await asyncio.sleep(hub.min_interval)


def _differs(a: CampaignStats, b: CampaignStats) -> bool:
    """Whether two snapshots differ in more than the business's sequence (which
    other campaigns' events move too)."""
    return dataclasses.replace(a, sequence=0) != dataclasses.replace(b, sequence=0)


class Subscription:
    """Woken at every commit that moved one business's sequence."""

    def __init__(self, hub: LiveHub, business_id: str) -> None:
        self.hub = hub
        self.business_id = business_id
        self.event = asyncio.Event()

    def clear(self) -> None:
        """Call before reading, so that a commit after the read is not missed."""
        self.event.clear()

    async def wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), timeout)

    def close(self) -> None:
        subs = self.hub._subscriptions.get(self.business_id)
        if subs is not None:
            subs.discard(self)
            if not subs:
                del self.hub._subscriptions[self.business_id]


class LiveHub:
    """The one notifier of a server: feeds per watched campaign, subscriptions
    per business."""

    def __init__(self, store: Store, *, min_interval: float = 0.25, poll_interval: float = 1.0) -> None:
        self.store = store
        self.min_interval = min_interval
        self.poll_interval = poll_interval
        self._loop: asyncio.AbstractEventLoop | None = None
        self._feeds: dict[int, StatsFeed] = {}
        self._subscriptions: dict[str, set[Subscription]] = {}
        store.writer.on_commit(self._on_commit)

    # -- writer thread ----------------------------------------------------------
    def _on_commit(self, changed: dict[str, int], touched: set[int]) -> None:
        loop = self._loop
        if loop is None or (not self._feeds and not self._subscriptions):
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens any more
            loop.call_soon_threadsafe(self._dispatch, dict(changed), set(touched))

    # -- event loop ---------------------------------------------------------------
    def _bind(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()

    def _dispatch(self, changed: dict[str, int], touched: set[int]) -> None:
        for cid in touched:
            feed = self._feeds.get(cid)
            if feed is not None:
                feed.poke()
        for business_id in changed:
            for sub in self._subscriptions.get(business_id, ()):
                sub.event.set()

    def _forget(self, feed: StatsFeed) -> None:
        if self._feeds.get(feed.cid) is feed:
            del self._feeds[feed.cid]

    def feed(self, cid: int) -> StatsFeed | None:
        return self._feeds.get(cid)

    async def watch(self, business_id: str, cid: int) -> AsyncIterator[CampaignStats]:
        """The campaign's current stats at once, then after every change
        (coalesced); ends when the campaign is deleted."""
        self._bind()
        feed = self._feeds.get(cid)
        if feed is None or feed.deleted:
            feed = StatsFeed(self, business_id, cid)
            self._feeds[cid] = feed
        feed.watchers += 1
        try:
            seen = 0
            while True:
                seen, stats = await feed.next(seen)
                if stats is None:
                    return
                yield stats
        finally:
            feed.watchers -= 1
            if feed.watchers == 0:
                feed.stop()
                self._forget(feed)

    def subscribe(self, business_id: str) -> Subscription:
        self._bind()
        sub = Subscription(self, business_id)
        self._subscriptions.setdefault(business_id, set()).add(sub)
        return sub
