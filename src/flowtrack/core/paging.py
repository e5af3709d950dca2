"""The paging machinery of report streams and exports (core/reports.py and
core/export.py use it; the faces never do).

A `ReportStream` is one stream's read of one campaign:

- a snapshot (store.reports.Snapshot): its own read-only connection with one
  read transaction, so the stream reads at one sequence; opened by `open`,
  interrupted as soon as the call ends (core/calls.Call), closed in the background by `close`;
- a query started by `start`, read a page at a time in a reader thread:
  `pages` for pages of items the face builds (protos: a `Codec`) (with `prepare`, what a page's items need about
  all its rows is read at once, before the byte cap counts them: the message
  report's link clicks and button taps), `rows_sync` and `advance` for the
  export;
- bounds: every read stops after the server's `read_time_limit`
  (RESOURCE_EXHAUSTED, reason READ_TIME_LIMIT); a page holds at most
  `page_size` rows and at most PAGE_BYTES of serialized rows (a single row
  larger than that goes alone), so a default client (4 MiB receive limit)
  always takes a page;
- a snapshot is held at most `snapshot_seconds`, whether or not the client
  reads (a held snapshot keeps SQLite from checkpointing the WAL past it).
  When it is let go, a stream whose query can continue from a position
  (`start(..., resume=...)`: message report, history, clicks, message and
  click exports) takes a new snapshot and goes on right after the last row
  it paged; later pages read at the new snapshot's sequence. Any other
  (failure reasons) ends with RESOURCE_EXHAUSTED, reason SNAPSHOT_EXPIRED.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar

from flowtrack.core.calls import Call
from flowtrack.domain import errors
from flowtrack.store import reports as sreports
from flowtrack.store.base import Snapshot, Store

T = TypeVar("T")
R = TypeVar("R")
I = TypeVar("I")  # noqa: E741 - an item of a page

# Serialized rows per page, at most (a lone larger row goes by itself).
PAGE_BYTES = 1 << 20
# What a repeated field adds to each item: its tag and length.
_ITEM_OVERHEAD = 6

Query = Callable[[Any], sreports.Query]  # the position -> a statement and its values

# Snapshots being closed in the background (kept referenced until done).
_closing: set[asyncio.Future[Any]] = set()


def fit(items: list[I], max_bytes: int, size: Callable[[I], int]) -> list[I]:
    """The longest head of `items` whose serialized size (`size(item)`), as
    repeated fields of one message, stays within `max_bytes`; at least one item."""
    total = 0
    for i, item in enumerate(items):
        total += size(item) + _ITEM_OVERHEAD
        if i and total > max_bytes:
            return items[:i]
    return items


class SnapshotExpired(errors.ResourceExhausted):
    reason = "SNAPSHOT_EXPIRED"


def _not_found(campaign_id: str) -> errors.NotFound:
    return errors.NotFound(f"campaign {campaign_id!r} not found", reason="CAMPAIGN_NOT_FOUND")


def _in_thread(_conn: Any, fn: Callable[..., T], *args: Any) -> T:
    """Run fn(*args) in a reader thread (without the thread's own connection)."""
    return fn(*args)


class ReportStream(Generic[R]):
    """One report stream's snapshot, query and position; see the module."""

    def __init__(
        self,
        store: Store,
        call: Call,
        business_id: str,
        campaign_id: str,
        *,
        snapshot_seconds: float,
        read_time_limit: float,
    ) -> None:
        self.store = store
        self._call = call
        self.business_id = business_id
        self.campaign_id = campaign_id
        self.snapshot_seconds = snapshot_seconds
        self.read_time_limit = read_time_limit
        self.snapshot: Snapshot | None = None
        self.ref: sreports.CampaignRef | None = None
        self._opened_at = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._query: Query | None = None
        self._make: Callable[[Any], R] | None = None
        self._resume: Callable[[R], Any] | None = None
        self.position: Any = None
        self._carry: list[R] = []
        self._ended = False
        self._done = False
        self._handed = 0  # rows handed out
        self._loop = asyncio.get_running_loop()
        call.on_end(self._end)

    @property
    def snapshot_sequence(self) -> int:
        """The business's sequence the current snapshot reads at."""
        return self.snapshot.sequence if self.snapshot is not None else 0

    # -- event loop ---------------------------------------------------------------
    async def open(self) -> sreports.CampaignRef:
        """Take the snapshot; the campaign as of it (NOT_FOUND if none)."""
        ref: sreports.CampaignRef = await self.store.read(_in_thread, self._take)
        self._arm()
        return ref

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(conn, *args) in a reader thread, inside the snapshot."""
        return await self.store.read(_in_thread, self.call_sync, fn, *args)

    async def start(
        self,
        query: Query,
        make: Callable[[Any], R] | None = None,
        *,
        position: Any = None,
        resume: Callable[[R], Any] | None = None,
    ) -> None:
        """Run `query(position)` on the snapshot. `make` turns a raw row into
        the stream's row; `resume(row)` is the position after a row, which
        lets the stream go on from there on a new snapshot."""
        self._query, self._make, self._resume, self.position = query, make, resume, position
        await self.store.read(_in_thread, self._limited, self._run)

    async def pages(
        self,
        size: int,
        item: Callable[[R], I],
        page: Callable[[list[I], list[R]], T],
        *,
        item_size: Callable[[I], int],
        max_bytes: int = PAGE_BYTES,
        first: bool = True,
        prepare: Callable[[list[R]], Callable[[R], I]] | None = None,
    ) -> AsyncIterator[T]:
        """Pages of up to `size` rows and `max_bytes` serialized items:
        `page(items, rows)` of the rows' `item(row)`, an item counting
        `item_size(item)` bytes. Every page with rows is
        sent, and the first even when empty if `first` (it carries the
        sequence and token). Each page is read and built in a reader thread
        while the one before it is sent.

        `prepare(rows)`, if given, is called (in the reader thread) with the
        rows read for a page and returns the item function for those rows,
        used instead of `item`: it may read what the items need about all of
        them at once, inside the snapshot (`call_sync`). The byte cap counts
        the items it builds."""

        async def job() -> tuple[T, int, bool]:
            return await self.store.read(_in_thread, self._page, size, item, page, item_size, max_bytes, prepare)

        pending: asyncio.Future[tuple[T, int, bool]] | None = asyncio.ensure_future(job())
        try:
            while pending is not None:
                built, n, more = await pending
                pending = None
                if more and not self._call.done():
                    pending = asyncio.ensure_future(job())
                if n or first:
                    yield built
                first = False
        finally:
            if pending is not None:
                pending.cancel()

    def close(self) -> None:
        """Stop the query and close the snapshot in the background (it waits
        for a page being read to give up)."""
        self._end()

    def _end(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._ended:
            return
        self._ended = True
        snapshot = self.snapshot
        if snapshot is not None:
            snapshot.interrupt()
            self._background(snapshot.close)

    def _background(self, fn: Callable[[], None]) -> None:
        future = asyncio.get_running_loop().run_in_executor(None, fn)
        _closing.add(future)
        future.add_done_callback(_closing.discard)

    def _arm(self) -> None:
        """Let the snapshot go once it is `snapshot_seconds` old, even while
        the stream waits for its client."""
        if self._ended or self.snapshot_seconds <= 0:
            return
        if self._timer is not None:
            self._timer.cancel()
        left = self._opened_at + self.snapshot_seconds - time.monotonic()
        self._timer = asyncio.get_running_loop().call_later(max(left, 0.0), self._expire)

    def _expire(self) -> None:
        self._timer = None
        snapshot = self.snapshot
        if self._ended or snapshot is None or snapshot.expired:
            return
        if time.monotonic() - self._opened_at < self.snapshot_seconds:  # a newer snapshot
            self._arm()
            return
        snapshot.expired = True  # at once: the next read takes a new one
        self._background(snapshot.expire)

    # -- reader thread -------------------------------------------------------------
    def _limited(self, fn: Callable[[Snapshot], T]) -> T:
        """fn(snapshot) within the read time limit; if the snapshot expired,
        again on a new one (see `_renew`)."""
        for _ in range(3):
            if self._ended:
                raise asyncio.CancelledError("the stream ended")
            snapshot = self.snapshot
            if snapshot is None:
                raise RuntimeError("ReportStream.open was not called")
            try:
                with snapshot.limit.limited(self.read_time_limit):
                    return fn(snapshot)
            except sreports.SnapshotExpired:
                self._renew()
        raise SnapshotExpired("the stream could not keep a database snapshot; retry")

    def call_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(conn, *args) inside the snapshot (in the calling reader thread)."""
        result: T = self._limited(lambda snapshot: snapshot.call(fn, *args))
        return result

    def _take(self) -> sreports.CampaignRef:
        """Open a snapshot (in a reader thread)."""
        if self._ended:
            raise asyncio.CancelledError("the stream ended")
        snapshot = self.store.snapshot()
        try:
            with snapshot.limit.limited(self.read_time_limit):
                ref = snapshot.begin(self.business_id, self.campaign_id)
        except BaseException:
            snapshot.close()
            raise
        if ref is None:
            snapshot.close()
            raise _not_found(self.campaign_id)
        old, self.snapshot, self.ref = self.snapshot, snapshot, ref
        if old is not None:
            old.close()
        self._opened_at = time.monotonic()
        if self._ended:  # ended meanwhile: nobody else will close it
            snapshot.close()
        return ref

    def _renew(self) -> None:
        """A new snapshot for an expired one: before the query hands out a
        row, simply that (and the query again); after, only if the query can
        go on from its position (it runs again from there), else
        SNAPSHOT_EXPIRED."""
        started = self._query is not None
        if started and self._resume is None and self._handed:
            raise SnapshotExpired(
                f"the stream held its database snapshot longer than {self.snapshot_seconds:g} s "
                "(--snapshot-seconds); read it faster, or ask again"
            )
        self._carry = []
        self._done = False
        self._take()
        if started:
            self._run(self._current())
        self._loop.call_soon_threadsafe(self._arm)

    def _current(self) -> Snapshot:
        if self.snapshot is None:
            raise RuntimeError("ReportStream.open was not called")
        return self.snapshot

    def _run(self, snapshot: Snapshot) -> None:
        assert self._query is not None
        statement, values = self._query(self.position)
        snapshot.run(statement, values, self._make)

    def rows_sync(self, n: int) -> list[R]:
        """The next up to `n` rows, in the calling reader thread: rows kept
        back by `keep` first (alone), else from the query. Fewer than `n`
        does not mean the end: `more` says whether rows are left."""
        if self._carry:
            rows, self._carry = self._carry[:n], self._carry[n:]
            return rows

        def fetch(snapshot: Snapshot) -> list[R]:
            rows: list[R] = snapshot.fetch(n)
            self._done = len(rows) < n
            self._handed += len(rows)
            return rows

        return self._limited(fetch)

    @property
    def more(self) -> bool:
        """Whether the query may have rows left after those handed out."""
        return bool(self._carry) or not self._done

    def keep(self, rows: list[R]) -> None:
        """Rows to hand out first on the next `rows_sync` (taken but not used)."""
        self._carry = rows + self._carry

    def advance(self, last: R) -> None:
        """Remember the position after `last`, the last row used."""
        if self._resume is not None:
            self.position = self._resume(last)

    def _prepare(
        self, size: int, rows: list[R], prepare: Callable[[list[R]], Callable[[R], I]]
    ) -> tuple[list[R], Callable[[R], I]]:
        """`prepare(rows)` and the rows it was given. If the snapshot was
        renewed meanwhile, the query runs again from the position before
        these rows (not advanced yet): they are read again from it, on the
        new snapshot, and prepared again."""
        for _ in range(3):
            snapshot = self.snapshot
            item = prepare(rows)
            if self.snapshot is snapshot or not rows:
                return rows, item
            rows = self.rows_sync(size)
        raise SnapshotExpired("the stream could not keep a database snapshot; retry")

    def _page(
        self,
        size: int,
        item: Callable[[R], I],
        page: Callable[[list[I], list[R]], T],
        item_size: Callable[[I], int],
        max_bytes: int,
        prepare: Callable[[list[R]], Callable[[R], I]] | None = None,
    ) -> tuple[T, int, bool]:
        rows = self.rows_sync(size)
        if prepare is not None and rows:
            rows, item = self._prepare(size, rows, prepare)
        items: list[I] = []
        total = 0
        for i, row in enumerate(rows):
            built = item(row)
            total += item_size(built) + _ITEM_OVERHEAD
            if items and total > max_bytes:
                self.keep(rows[i:])
                rows = rows[:i]
                break
            items.append(built)
        if rows:
            self.advance(rows[-1])
        return page(items, rows), len(rows), self.more
