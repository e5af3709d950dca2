"""The report use cases: stats, live stats, report streams, breakdowns,
the timeline and event subscriptions.

Each takes a `Call` (the caller's principal and the call's end, core/calls.py)
and domain values, and returns domain results or pages, or raises domain
errors. Every one is scoped to the caller's business: another business's
campaign is NOT_FOUND. Scopes are the faces' (the gRPC gate, the HTTP routes).

Report streams page through one snapshot with core/paging.py (page and byte
caps, the snapshot's time cap, resume positions); the next page is built in
a reader thread while the current one is sent. When the call ends early (the
client cancels, its deadline passes, the HTTP client leaves) the query in
progress is interrupted and the snapshot closed.

The items and pages of a stream are built by the face: a stream takes a
`Pages` (wire/reports.py has the proto ones) whose `item` turns each store
row into the face's item in the reader thread — the hot path goes straight
from the store's named row to the proto, with no object in between — whose
`size` is the item's serialized size (the page byte cap) and whose `page`
wraps a page's items with its sequence and resume token.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol, TypeVar

from flowtrack.core.calls import Call
from flowtrack.core.live import LiveHub
from flowtrack.core.paging import PAGE_BYTES, ReportStream, fit
from flowtrack.domain import errors, tokens
from flowtrack.domain import stats as dstats
from flowtrack.domain.records import EventRecord, MessageRecord, ReplyRecord, TimelineRow
from flowtrack.domain.segments import SourcedStats
from flowtrack.domain.stats import CampaignStats, ClickFilter, MessageFilter, ReasonRow
from flowtrack.store import encodings as sencodings
from flowtrack.store import engaged_reports as sengaged
from flowtrack.store import reports as sreports
from flowtrack.store.base import Store

R_contra = TypeVar("R_contra", contravariant=True)
I = TypeVar("I")  # noqa: E741 - an item of a page
T_co = TypeVar("T_co", covariant=True)
P = TypeVar("P", str, int)

# How long a caught-up subscription waits for a commit before looking again.
SUBSCRIBE_POLL_SECONDS = 1.0
# At most this many link clicks and button taps go into one message row (the
# earliest; `clicks` and `button_clicks` have the totals): bounds a row.
ROW_CLICKS_CAP = 100

LinkClick = sengaged.LinkClick
ButtonTap = sengaged.ButtonTap


class Pages(Protocol[R_contra, I, T_co]):
    """How a face builds a stream's items and pages (called in a reader thread)."""

    def item(self, row: R_contra) -> I: ...
    def size(self, item: I) -> int: ...
    def page(self, items: list[I], sequence: int, resume_token: str) -> T_co: ...


class MessagePages(Pages[MessageRecord, I, T_co], Protocol):
    def engaged(self, row: MessageRecord, links: Sequence[LinkClick], taps: Sequence[ButtonTap]) -> I:
        """The item of a row with its link clicks and button taps."""
        ...


# A face whose items are a MessageRow's wire bytes says so with `stored =
# True` on its MessagePages: its pages then serve the bytes the store keeps
# (store/encodings.py) and encode only the rows without them.
STORED_ROW = "row_pb"


class ReasonPages(Protocol[I, T_co]):
    def reason(self, row: ReasonRow, failed_total: int, not_submitted_total: int) -> I: ...
    def size(self, item: I) -> int: ...
    def page(self, items: list[I], sequence: int) -> T_co: ...


class EventPages(Protocol[I, T_co]):
    def item(self, row: EventRecord) -> I: ...
    def size(self, item: I) -> int: ...
    def page(self, items: list[I], caught_up: bool) -> T_co: ...


def not_found(campaign_id: str) -> errors.NotFound:
    return errors.NotFound(f"campaign {campaign_id!r} not found", reason="CAMPAIGN_NOT_FOUND")


def _resume(key: bytes, kind: str, bound: str, token: str, name: str, kind_of: type[P]) -> P | None:
    """The position saved in a resume token (None without a token): a string
    (a recipient) or a non-negative integer (a sequence or row id)."""
    if not token:
        return None
    position = tokens.decode(key, kind, bound, token, field="resume_token").get(name)
    valid = isinstance(position, str) if kind_of is str else type(position) is int and position >= 0
    if not valid:
        raise errors.invalid("resume_token", "not a token returned by this server", "BAD_TOKEN")
    return position  # type: ignore[no-any-return]


class Reports:
    """The report use cases over one store, on the server's read bounds."""

    def __init__(self, store: Store, *, snapshot_seconds: float, read_time_limit: float) -> None:
        self.store = store
        self.snapshot_seconds = snapshot_seconds
        self.read_time_limit = read_time_limit
        self.live = LiveHub(store)

    def stream(self, call: Call, campaign_id: str) -> ReportStream[Any]:
        """A report stream of the caller's campaign on the server's read bounds."""
        return ReportStream(
            self.store,
            call,
            call.business_id,
            campaign_id,
            snapshot_seconds=self.snapshot_seconds,
            read_time_limit=self.read_time_limit,
        )

    async def campaign(self, call: Call, campaign_id: str) -> sreports.CampaignRef:
        """The caller's campaign (NOT_FOUND if none)."""
        ref = await self.store.read(sreports.campaign, call.business_id, campaign_id)
        if ref is None:
            raise not_found(campaign_id)
        return ref

    # -- stats ------------------------------------------------------------------------
    async def stats(self, call: Call, campaign_id: str) -> CampaignStats:
        campaign_id = dstats.require_campaign_id(campaign_id)
        stats = await self.store.read(sreports.read_stats, call.business_id, campaign_id)
        if stats is None:
            raise not_found(campaign_id)
        return stats

    async def sourced_stats(self, call: Call, campaign_id: str) -> SourcedStats:
        """The campaign's stats, with its source (a segment of another
        campaign) and the source's stats, when it has one and the source
        still exists: one read, at one sequence."""
        campaign_id = dstats.require_campaign_id(campaign_id)
        found = await self.store.read(sreports.read_sourced_stats, call.business_id, campaign_id)
        if found is None:
            raise not_found(campaign_id)
        return found

    async def watch_stats(self, call: Call, campaign_id: str) -> AsyncIterator[CampaignStats]:
        """The campaign's stats now and after each change (coalesced,
        core/live.py); ends after the last snapshot when it is deleted."""
        campaign_id = dstats.require_campaign_id(campaign_id)
        ref = await self.campaign(call, campaign_id)
        last: CampaignStats | None = None
        async for stats in self.live.watch(call.business_id, ref.cid):
            if stats is last:
                continue
            last = stats
            yield stats

    # -- message report ---------------------------------------------------------------
    async def message_report(
        self,
        call: Call,
        campaign_id: str,
        flt: MessageFilter,
        page_size: int,
        resume_token: str,
        pages: MessagePages[I, T_co],
    ) -> AsyncIterator[T_co]:
        """Pages of message rows; each page's resume token goes on after it
        ("" once the report is done)."""
        business_id = call.business_id
        campaign_id = dstats.require_campaign_id(campaign_id)
        size = dstats.page_size(page_size)
        key = self.store.token_key
        bound = tokens.bind(business_id, campaign_id, flt.bound())
        after = _resume(key, "messages", bound, resume_token, "r", str)
        stream = self.stream(call, campaign_id)
        stored = getattr(pages, "stored", False)
        try:
            ref = await stream.open()
            await stream.start(
                lambda position: sreports.message_report_sql(
                    business_id, ref.cid, flt, position, STORED_ROW if stored else None
                ),
                None if stored else MessageRecord._make,
                position=after,
                resume=_recipient,
            )

            def page(items: list[I], records: list[Any]) -> T_co:
                position = stream.position
                token = tokens.encode(key, "messages", bound, {"r": position}) if position else ""
                return pages.page(items, stream.snapshot_sequence, token)

            prepare = (_from_stored if stored else _with_engagement)(stream, business_id, ref.cid, pages)
            async for built in stream.pages(size, pages.item, page, item_size=pages.size, prepare=prepare):
                yield built
        finally:
            stream.close()

    # -- history ----------------------------------------------------------------------
    async def message_history(
        self,
        call: Call,
        campaign_id: str,
        recipient: str,
        page_size: int,
        resume_token: str,
        pages: Pages[EventRecord, I, T_co],
    ) -> AsyncIterator[T_co]:
        business_id = call.business_id
        campaign_id = dstats.require_campaign_id(campaign_id)
        size = dstats.page_size(page_size)
        wrong = dstats.filter_text("recipient", recipient, "recipient")
        if wrong is not None:
            raise errors.InvalidArgument([wrong])
        key = self.store.token_key
        bound = tokens.bind(business_id, campaign_id, recipient)
        after = _resume(key, "history", bound, resume_token, "s", int) or 0
        stream = self.stream(call, campaign_id)
        try:
            ref = await stream.open()
            await stream.start(
                lambda position: sreports.history_sql(business_id, ref.cid, recipient, position),
                EventRecord._make,
                position=after,
                resume=lambda r: r.seq,
            )

            def page(items: list[I], records: list[EventRecord]) -> T_co:
                return pages.page(items, 0, tokens.encode(key, "history", bound, {"s": stream.position}))

            async for built in stream.pages(size, pages.item, page, item_size=pages.size):
                yield built
        finally:
            stream.close()

    # -- failure reasons --------------------------------------------------------------
    async def failure_reasons(
        self, call: Call, campaign_id: str, page_size: int, sample_size: int, pages: ReasonPages[I, T_co]
    ) -> AsyncIterator[T_co]:
        campaign_id = dstats.require_campaign_id(campaign_id)
        size = dstats.page_size(page_size, default=dstats.DEFAULT_REASONS_PAGE_SIZE)
        samples = dstats.sample_size(sample_size)
        stream = self.stream(call, campaign_id)
        try:
            ref = await stream.open()
            business_id = call.business_id
            failed, not_submitted = await stream.call(sreports.failure_totals, business_id, ref.cid)
            await stream.start(
                lambda _position: sreports.failure_reasons_sql(business_id, ref.cid, samples), sreports.reason_row
            )
            seq = stream.snapshot_sequence

            def page(items: list[I], reasons: list[ReasonRow]) -> T_co:
                return pages.page(items, seq)

            def item(r: ReasonRow) -> I:
                return pages.reason(r, failed, not_submitted)

            async for built in stream.pages(size, item, page, item_size=pages.size):
                yield built
        finally:
            stream.close()

    # -- clicks -----------------------------------------------------------------------
    async def click_report(
        self,
        call: Call,
        campaign_id: str,
        flt: ClickFilter,
        page_size: int,
        resume_token: str,
        pages: Pages[EventRecord, I, T_co],
    ) -> AsyncIterator[T_co]:
        business_id = call.business_id
        campaign_id = dstats.require_campaign_id(campaign_id)
        size = dstats.page_size(page_size)
        key = self.store.token_key
        bound = tokens.bind(business_id, campaign_id, flt.bound())
        after = _resume(key, "clicks", bound, resume_token, "i", int) or 0
        stream = self.stream(call, campaign_id)
        try:
            ref = await stream.open()
            await stream.start(
                lambda position: sreports.click_report_sql(business_id, ref.cid, flt, position),
                EventRecord._make,
                position=after,
                resume=lambda r: r.id,
            )

            def page(items: list[I], records: list[EventRecord]) -> T_co:
                return pages.page(items, 0, tokens.encode(key, "clicks", bound, {"i": stream.position}))

            async for built in stream.pages(size, pages.item, page, item_size=pages.size):
                yield built
        finally:
            stream.close()

    async def click_breakdown(self, call: Call, campaign_id: str) -> tuple[dict[str, Any], int]:
        """The breakdown's totals and buckets (store/reports.read_breakdown),
        and the sequence it was read at."""
        campaign_id = dstats.require_campaign_id(campaign_id)
        found = await self.store.read(sreports.read_breakdown, call.business_id, campaign_id)
        if found is None:
            raise not_found(campaign_id)
        data, seq = found
        return data, seq

    # -- timeline ---------------------------------------------------------------------
    async def timeline(
        self, call: Call, campaign_id: str, width_us: int, start: int | None, end: int | None
    ) -> tuple[list[TimelineRow], int]:
        """Counts per bucket of `width_us` (ordered by bucket), and the sequence."""
        campaign_id = dstats.require_campaign_id(campaign_id)
        if start is not None and end is not None and end <= start:
            raise errors.invalid("end_time", "must be after start_time", "EMPTY_RANGE")
        found = await self.store.read(sreports.read_timeline, call.business_id, campaign_id, width_us, start, end)
        if found is None:
            raise not_found(campaign_id)
        rows, seq = found
        return rows, seq

    # -- replies ----------------------------------------------------------------------
    async def replies(
        self,
        call: Call,
        campaign_id: str,
        recipient: str,
        after_time: int | None,
        before_time: int | None,
        page_size: int,
        resume_token: str,
        pages: Pages[ReplyRecord, I, T_co],
    ) -> AsyncIterator[T_co]:
        """The Replies tab: pages of replies, each with a resume token after
        its last reply. A stream that outlives its snapshot goes on after its
        last reply on a new one. The filter is checked by the face
        (wire/reports.reply_filter)."""
        business_id = call.business_id
        campaign_id = dstats.require_campaign_id(campaign_id)
        size = dstats.page_size(page_size)
        key = self.store.token_key
        bound = tokens.bind(business_id, campaign_id, recipient, after_time, before_time)
        after = _resume(key, "replies", bound, resume_token, "s", int) or 0
        stream: ReportStream[ReplyRecord] = self.stream(call, campaign_id)
        try:
            ref = await stream.open()
            await stream.start(
                lambda position: sengaged.replies_sql(
                    business_id, ref.cid, recipient, after_time, before_time, position
                ),
                ReplyRecord._make,
                position=after,
                resume=lambda r: r.seq,
            )

            def page(items: list[I], records: list[ReplyRecord]) -> T_co:
                token = tokens.encode(key, "replies", bound, {"s": stream.position})
                return pages.page(items, stream.snapshot_sequence, token)

            async for built in stream.pages(size, pages.item, page, item_size=pages.size):
                yield built
        finally:
            stream.close()

    # -- subscriptions ----------------------------------------------------------------
    async def subscribe(
        self, call: Call, after_sequence: int, campaign_id: str, page_size: int, pages: EventPages[I, T_co]
    ) -> AsyncIterator[T_co]:
        """Pages from the store until caught up, then a page after each commit
        with new events. Nothing is buffered per subscriber: a slow one reads
        the next page from the store when it has taken the previous one."""
        business_id = call.business_id
        if after_sequence < 0:
            raise errors.invalid("after_sequence", "must not be negative", "OUT_OF_RANGE")
        size = dstats.page_size(page_size)
        cid: int | None = None
        if campaign_id:
            cid = (await self.campaign(call, dstats.require_campaign_id(campaign_id))).cid
        subscription = self.live.subscribe(business_id)
        try:
            after = after_sequence
            announced = False
            while not call.done():
                subscription.clear()
                rows, last = await self.store.read(sreports.events_page, business_id, after, cid, size)
                events = fit([pages.item(r) for r in rows], PAGE_BYTES, pages.size)
                cut = len(events) < len(rows)
                rows = rows[: len(events)]
                caught_up = not cut and (len(rows) < size or rows[-1].seq >= last)
                if rows:
                    after = rows[-1].seq
                if rows or (caught_up and not announced):
                    yield pages.page(events, caught_up)
                    announced = announced or caught_up
                if caught_up:
                    await subscription.wait(SUBSCRIBE_POLL_SECONDS)
        finally:
            subscription.close()


def _recipient(row: Any) -> str:
    """A message report row's recipient (a MessageRecord's, or a stored row's (recipient, encoded))."""
    return str(row[0])


def _from_stored(
    stream: ReportStream[Any], business_id: str, cid: int, pages: MessagePages[I, Any]
) -> Callable[[list[Any]], Callable[[Any], I]]:
    """ReportStream.pages' `prepare` for rows (recipient, stored bytes): the
    stored bytes where there are (b'' is a fill job's claim: none), else
    the row read (inside the snapshot) and encoded as `_with_engagement` does."""

    def prepare(rows: list[Any]) -> Callable[[Any], I]:
        absent = [r[0] for r in rows if not r[1]]
        if not absent:
            return _stored
        records = stream.call_sync(sencodings.rows_of, business_id, cid, absent)
        make = _with_engagement(stream, business_id, cid, pages)(records)
        built = {r.recipient: make(r) for r in records}

        def item(r: Any) -> I:
            return r[1] or built[r[0]]

        return item

    return prepare


def _stored(row: Any) -> Any:
    return row[1]


def _with_engagement(
    stream: ReportStream[MessageRecord], business_id: str, cid: int, pages: MessagePages[I, Any]
) -> Callable[[list[MessageRecord]], Callable[[MessageRecord], I]]:
    """ReportStream.pages' `prepare` for the message report: for a page's
    rows, reads (in the reader thread, inside the snapshot) the link clicks
    and button taps of those that have any, and returns the item function
    for those rows."""

    def prepare(rows: list[MessageRecord]) -> Callable[[MessageRecord], I]:
        clicked = [r.recipient for r in rows if r.clicks]
        tapped = [r.recipient for r in rows if r.button_clicks]
        links = stream.call_sync(sengaged.link_clicks, business_id, cid, clicked, ROW_CLICKS_CAP) if clicked else {}
        taps = stream.call_sync(sengaged.button_taps, business_id, cid, tapped, ROW_CLICKS_CAP) if tapped else {}
        if not links and not taps:
            return pages.item

        def item(r: MessageRecord) -> I:
            return pages.engaged(r, links.get(r.recipient, ()), taps.get(r.recipient, ()))

        return item

    return prepare
