"""ReportService: stats, live stats, report streams, breakdowns, subscriptions.

Thin: requests become domain values (domain/stats.py), the store reads
(store/reports.py), and rows become protos here. Every RPC is scoped to the
caller's business; another business's campaign is NOT_FOUND.

Report streams read a page at a time from one snapshot (store.reports.Snapshot)
and build the next page in a reader thread while the current one is sent. When
the RPC ends early (the client cancels, or its deadline passes) the query in
progress is interrupted and the snapshot closed, so no database work goes on
for a stream nobody reads.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import timestamp_pb2

from flowtrack.api.base import Servicer
from flowtrack.api.context import business_of
from flowtrack.api.convert import checked_ts_to_us, ts_to_us
from flowtrack.api.errors import handle_errors
from flowtrack.api.export import export_report
from flowtrack.api.live import LiveHub
from flowtrack.config import Settings
from flowtrack.domain import errors, tokens
from flowtrack.domain import stats as dstats
from flowtrack.domain.stats import CampaignStats, ReasonRow
from flowtrack.store import reports as sreports
from flowtrack.store.store import Store
from flowtrack.v1 import common_pb2, report_pb2, report_pb2_grpc

T = TypeVar("T")

# How long a caught-up SubscribeEvents waits for a commit before looking again.
SUBSCRIBE_POLL_SECONDS = 1.0

_WIDTHS = {
    report_pb2.TIMELINE_BUCKET_WIDTH_UNSPECIFIED: dstats.HOUR_US,
    report_pb2.TIMELINE_BUCKET_WIDTH_MINUTE: dstats.MINUTE_US,
    report_pb2.TIMELINE_BUCKET_WIDTH_HOUR: dstats.HOUR_US,
    report_pb2.TIMELINE_BUCKET_WIDTH_DAY: dstats.DAY_US,
}
_RATES = ("success_rate", "failure_rate", "delivery_not_confirmed_rate", "click_through_rate", "not_submitted_rate")
_TIMELINE_FIELD = {2: "not_submitted", 3: "submitted", 4: "delivery_not_confirmed", 5: "failed", 6: "success"}


def _not_found(campaign_id: str) -> errors.NotFound:
    return errors.NotFound(f"campaign {campaign_id!r} not found", reason="CAMPAIGN_NOT_FOUND")


def _opt_time(message: Any, name: str) -> int | None:
    return checked_ts_to_us(getattr(message, name), name) if message.HasField(name) else None


def _no_conn(conn: Any, fn: Callable[..., T], *args: Any) -> T:
    """Run fn(*args) in a reader thread without the thread's own connection."""
    return fn(*args)


# -- protos from domain values and rows -------------------------------------------


def _set_ts(ts: timestamp_pb2.Timestamp, us: int) -> None:
    ts.seconds, micros = divmod(us, 1_000_000)
    ts.nanos = micros * 1000


def stats_to_proto(stats: CampaignStats) -> report_pb2.CampaignStats:
    def bucket(b: dstats.Bucket) -> report_pb2.StatsBucket:
        c, r = b.counts, b.rates
        rates = report_pb2.Rates()
        for name in _RATES:
            value = getattr(r, name)
            if value is not None:
                setattr(rates, name, value)
        return report_pb2.StatsBucket(
            key=b.key,
            counts=report_pb2.StatusCounts(
                total=c.total,
                pending=c.pending,
                not_submitted=c.not_submitted,
                submitted=c.submitted,
                awaiting=c.awaiting,
                delivery_not_confirmed=c.delivery_not_confirmed,
                success=c.success,
                failed=c.failed,
            ),
            rates=rates,
            clicks=b.clicks,
            unique_clickers=b.unique_clickers,
        )

    out = report_pb2.CampaignStats(
        campaign_id=stats.campaign_id,
        overall=bucket(stats.overall),
        by_channel=[bucket(b) for b in stats.by_channel],
        by_variant=[bucket(b) for b in stats.by_variant],
        sequence=stats.sequence,
        state=stats.state,  # type: ignore[arg-type]
    )
    if stats.complete_time is not None:
        _set_ts(out.complete_time, stats.complete_time)
    if stats.first_event_at is not None:
        _set_ts(out.first_event_time, stats.first_event_at)
    if stats.last_event_at is not None:
        _set_ts(out.last_event_time, stats.last_event_at)
    return out


_MessageRow = report_pb2.MessageRow
_REASON_STATUSES = frozenset({2, 5})
_loads = json.JSONDecoder().decode


def message_row(r: sreports.Row) -> report_pb2.MessageRow:
    """A MessageRow from a row of store.reports.MESSAGE_COLUMNS (hot path)."""
    (
        rec,
        status,
        attempt,
        channel,
        variant,
        code,
        rmsg,
        pmid,
        sid,
        inp,
        outp,
        ns,
        sb,
        dnc,
        sc,
        fl,
        upd,
        clicks,
        fc,
        last,
    ) = r
    row = _MessageRow(
        recipient=rec,
        status=status,
        attempt=attempt,
        channel=channel,
        variant=variant,
        provider_message_id=pmid,
        session_id=sid,
        clicks=clicks,
        input_variables=_loads(inp) if inp else None,
        output_variables=_loads(outp) if outp else None,
    )
    if status in _REASON_STATUSES:
        reason = row.failure_reason
        reason.code = code
        reason.message = rmsg
    # Only the times that are set are touched: reading a submessage field costs.
    if ns is not None:
        _set_ts(row.not_submitted_time, ns)
    if sb is not None:
        _set_ts(row.submitted_time, sb)
    if dnc is not None:
        _set_ts(row.delivery_not_confirmed_time, dnc)
    if sc is not None:
        _set_ts(row.success_time, sc)
    if fl is not None:
        _set_ts(row.failed_time, fl)
    if upd is not None:
        _set_ts(row.update_time, upd)
    if fc is not None:
        _set_ts(row.first_click_time, fc)
    if last is not None:
        _set_ts(row.last_event_time, last)
    return row


def stored_event(r: sreports.Row) -> report_pb2.StoredEvent:
    """A StoredEvent from a row of store.reports.EVENT_COLUMNS."""
    (
        _id,
        seq,
        received_at,
        event_id,
        campaign_id,
        recipient,
        kind,
        occurred_at,
        status,
        attempt,
        code,
        rmsg,
        channel,
        variant,
        pmid,
        sid,
        inp,
        outp,
        link_id,
        link_variable,
        url,
        country,
        region,
        city,
        lat,
        lon,
        ua,
        ip,
    ) = r
    out = report_pb2.StoredEvent(sequence=seq)
    _set_ts(out.received_at, received_at)
    if kind == 1:
        ev = out.event.status
        ev.event_id = event_id
        ev.campaign_id = campaign_id
        ev.recipient = recipient
        ev.status = status
        ev.attempt = attempt or 1
        _set_ts(ev.occurred_at, occurred_at)
        if code or rmsg:
            ev.failure_reason.code = code or ""
            ev.failure_reason.message = rmsg or ""
        ev.channel = channel or ""
        ev.variant = variant or ""
        ev.provider_message_id = pmid or ""
        ev.session_id = sid or ""
        if inp:
            ev.input_variables.update(json.loads(inp))
        if outp:
            ev.output_variables.update(json.loads(outp))
    else:
        click = out.event.click
        click.event_id = event_id
        click.campaign_id = campaign_id
        click.recipient = recipient
        click.link_id = link_id or ""
        click.link_variable = link_variable or ""
        click.url = url or ""
        _set_ts(click.occurred_at, occurred_at)
        _fill_location(click.location, country, region, city, lat, lon)
        click.user_agent = ua or ""
        click.ip_address = ip or ""
    return out


def _fill_location(
    loc: common_pb2.Location, country: str | None, region: str | None, city: str | None, lat: Any, lon: Any
) -> None:
    loc.country_code = country or ""
    loc.region = region or ""
    loc.city = city or ""
    if lat is not None:
        loc.latitude = lat
    if lon is not None:
        loc.longitude = lon


def click_row(r: sreports.Row) -> report_pb2.ClickRow:
    ev = stored_event(r)
    c = ev.event.click
    return report_pb2.ClickRow(
        sequence=ev.sequence,
        event_id=c.event_id,
        recipient=c.recipient,
        link_id=c.link_id,
        link_variable=c.link_variable,
        url=c.url,
        location=c.location,
        occurred_at=c.occurred_at,
        user_agent=c.user_agent,
        ip_address=c.ip_address,
    )


def _click_buckets(rows: list[tuple[Any, ...]], names: tuple[str, ...]) -> list[report_pb2.ClickBucket]:
    """ClickBuckets from (keys..., clicks, unique) rows: clicks descending, then keys."""
    ordered = sorted(rows, key=lambda r: (-r[-2], *r[:-2]))
    return [
        report_pb2.ClickBucket(**dict(zip(names, r[:-2], strict=True)), clicks=r[-2], unique_clickers=r[-1])
        for r in ordered
    ]


# -- the servicer -------------------------------------------------------------------


P = TypeVar("P", str, int)


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


class ReportServicer(Servicer, report_pb2_grpc.ReportServiceServicer):
    def __init__(self, store: Store, settings: Settings) -> None:
        super().__init__(store, settings)
        self.live = LiveHub(store)
        self._closing: set[asyncio.Future[Any]] = set()

    # -- helpers ------------------------------------------------------------------
    async def _campaign(self, business_id: str, campaign_id: str) -> sreports.CampaignRef:
        ref = await self.store.read(sreports.campaign, business_id, campaign_id)
        if ref is None:
            raise _not_found(campaign_id)
        return ref

    async def _pages(
        self,
        context: grpc.aio.ServicerContext,
        snapshot: sreports.Snapshot,
        size: int,
        build: Callable[[list[sreports.Row]], T],
    ) -> AsyncIterator[T]:
        """The pages of the snapshot's query: every page with rows, and the
        first one even when empty (it carries the sequence and token). Each
        page is read and built in a reader thread while the one before it is
        being sent."""

        def job() -> tuple[T, int]:
            rows = snapshot.fetch(size)
            return build(rows), len(rows)

        pending: asyncio.Future[tuple[T, int]] | None = asyncio.ensure_future(self.store.read(_no_conn, job))
        first = True
        try:
            while pending is not None:
                page, n = await pending
                pending = None
                if n == size and not context.done():
                    pending = asyncio.ensure_future(self.store.read(_no_conn, job))
                if n or first:
                    yield page
                first = False
        finally:
            if pending is not None:
                pending.cancel()

    async def _open(
        self, context: grpc.aio.ServicerContext, business_id: str, campaign_id: str
    ) -> tuple[sreports.Snapshot, sreports.CampaignRef]:
        """A snapshot for one stream, interrupted as soon as the RPC ends."""
        snapshot = sreports.Snapshot(self.store.path)
        context.add_done_callback(lambda _ctx: snapshot.interrupt())
        try:
            ref = await self.store.read(_no_conn, snapshot.begin, business_id, campaign_id)
        except BaseException:
            self._close(snapshot)
            raise
        if ref is None:
            self._close(snapshot)
            raise _not_found(campaign_id)
        return snapshot, ref

    def _close(self, snapshot: sreports.Snapshot) -> None:
        """Interrupt the snapshot's query and close it in the background (it
        waits for a page being read to give up)."""
        snapshot.interrupt()
        future = asyncio.get_running_loop().run_in_executor(None, snapshot.close)
        self._closing.add(future)
        future.add_done_callback(self._closing.discard)

    # -- stats ----------------------------------------------------------------------
    @handle_errors
    async def GetCampaignStats(
        self, request: report_pb2.GetCampaignStatsRequest, context: grpc.aio.ServicerContext
    ) -> report_pb2.GetCampaignStatsResponse:
        campaign_id = dstats.require_campaign_id(request.campaign_id)
        stats = await self.store.read(sreports.read_stats, business_of(context), campaign_id)
        if stats is None:
            raise _not_found(campaign_id)
        return report_pb2.GetCampaignStatsResponse(stats=stats_to_proto(stats))

    @handle_errors
    async def WatchCampaignStats(
        self, request: report_pb2.WatchCampaignStatsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[report_pb2.WatchCampaignStatsResponse]:
        """Ends with OK (after the last snapshot) when the campaign is deleted."""
        business_id = business_of(context)
        campaign_id = dstats.require_campaign_id(request.campaign_id)
        ref = await self._campaign(business_id, campaign_id)
        last: CampaignStats | None = None
        async for stats in self.live.watch(business_id, ref.cid):
            if stats is last:
                continue
            last = stats
            yield report_pb2.WatchCampaignStatsResponse(stats=stats_to_proto(stats))

    # -- message report -------------------------------------------------------------
    @handle_errors
    async def StreamMessageReport(
        self, request: report_pb2.StreamMessageReportRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[report_pb2.StreamMessageReportResponse]:
        business_id = business_of(context)
        campaign_id = dstats.require_campaign_id(request.campaign_id)
        size = dstats.page_size(request.page_size)
        f = request.filter
        flt = dstats.message_filter(
            statuses=list(f.statuses),
            channel=f.channel,
            variant=f.variant,
            recipient=f.recipient,
            failure_code=f.failure_code,
            updated_after=_opt_time(f, "updated_after"),
            updated_before=_opt_time(f, "updated_before"),
        )
        key = self.store.token_key
        bound = tokens.bind(business_id, campaign_id, flt.bound())
        after = _resume(key, "messages", bound, request.resume_token, "r", str)
        snapshot, ref = await self._open(context, business_id, campaign_id)
        try:
            sql, params = sreports.message_report_sql(ref.cid, flt, after)
            await self.store.read(_no_conn, snapshot.run, sql, params)
            seq = snapshot.sequence
            position = after

            def build(rows: list[sreports.Row]) -> report_pb2.StreamMessageReportResponse:
                nonlocal position
                page = report_pb2.StreamMessageReportResponse(rows=[message_row(r) for r in rows], sequence=seq)
                if rows:
                    position = rows[-1][0]
                page.resume_token = tokens.encode(key, "messages", bound, {"r": position}) if position else ""
                return page

            async for page in self._pages(context, snapshot, size, build):
                yield page
        finally:
            self._close(snapshot)

    # -- history --------------------------------------------------------------------
    @handle_errors
    async def StreamMessageHistory(
        self, request: report_pb2.StreamMessageHistoryRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[report_pb2.StreamMessageHistoryResponse]:
        business_id = business_of(context)
        campaign_id = dstats.require_campaign_id(request.campaign_id)
        size = dstats.page_size(request.page_size)
        if len(request.recipient) > dstats.FILTER_CAPS["recipient"]:
            raise errors.invalid("recipient", "at most 256 characters", "TOO_LONG")
        key = self.store.token_key
        bound = tokens.bind(business_id, campaign_id, request.recipient)
        after = _resume(key, "history", bound, request.resume_token, "s", int) or 0
        snapshot, ref = await self._open(context, business_id, campaign_id)
        try:
            sql, params = sreports.history_sql(business_id, ref.cid, request.recipient, after)
            await self.store.read(_no_conn, snapshot.run, sql, params)
            position = after

            def build(rows: list[sreports.Row]) -> report_pb2.StreamMessageHistoryResponse:
                nonlocal position
                if rows:
                    position = rows[-1][1]
                return report_pb2.StreamMessageHistoryResponse(
                    events=[stored_event(r) for r in rows],
                    resume_token=tokens.encode(key, "history", bound, {"s": position}),
                )

            async for page in self._pages(context, snapshot, size, build):
                yield page
        finally:
            self._close(snapshot)

    # -- failure reasons ------------------------------------------------------------
    @handle_errors
    async def StreamFailureReasons(
        self, request: report_pb2.StreamFailureReasonsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[report_pb2.StreamFailureReasonsResponse]:
        business_id = business_of(context)
        campaign_id = dstats.require_campaign_id(request.campaign_id)
        size = dstats.page_size(request.page_size, default=dstats.DEFAULT_REASONS_PAGE_SIZE)
        samples = dstats.sample_size(request.sample_size)
        snapshot, ref = await self._open(context, business_id, campaign_id)
        try:
            failed, not_submitted = await self.store.read(_no_conn, snapshot.call, sreports.failure_totals, ref.cid)
            await self.store.read(_no_conn, snapshot.run, sreports.FAILURE_REASONS_SQL, (ref.cid,))
            seq = snapshot.sequence

            def build(rows: list[sreports.Row]) -> report_pb2.StreamFailureReasonsResponse:
                reasons = [ReasonRow(code, message, int(f), int(n)) for code, message, f, n in rows]
                if reasons:
                    snapshot.call(sreports.fill_samples, ref.cid, reasons, samples)
                page = report_pb2.StreamFailureReasonsResponse(sequence=seq)
                for r in reasons:
                    row = page.reasons.add(
                        code=r.code,
                        message=r.message,
                        count=r.count,
                        failed=r.failed,
                        not_submitted=r.not_submitted,
                        sample_recipients=r.samples,
                    )
                    share_failed = dstats.ratio(r.failed, failed)
                    if share_failed is not None:
                        row.share_of_failed = share_failed
                    share_ns = dstats.ratio(r.not_submitted, not_submitted)
                    if share_ns is not None:
                        row.share_of_not_submitted = share_ns
                return page

            async for page in self._pages(context, snapshot, size, build):
                yield page
        finally:
            self._close(snapshot)

    # -- clicks -----------------------------------------------------------------------
    @handle_errors
    async def StreamClickReport(
        self, request: report_pb2.StreamClickReportRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[report_pb2.StreamClickReportResponse]:
        business_id = business_of(context)
        campaign_id = dstats.require_campaign_id(request.campaign_id)
        size = dstats.page_size(request.page_size)
        f = request.filter
        flt = dstats.click_filter(
            link_id=f.link_id,
            country_code=f.country_code,
            occurred_after=_opt_time(f, "occurred_after"),
            occurred_before=_opt_time(f, "occurred_before"),
        )
        key = self.store.token_key
        bound = tokens.bind(business_id, campaign_id, flt.bound())
        after = _resume(key, "clicks", bound, request.resume_token, "i", int) or 0
        snapshot, ref = await self._open(context, business_id, campaign_id)
        try:
            sql, params = sreports.click_report_sql(ref.cid, flt, after)
            await self.store.read(_no_conn, snapshot.run, sql, params)
            position = after

            def build(rows: list[sreports.Row]) -> report_pb2.StreamClickReportResponse:
                nonlocal position
                if rows:
                    position = rows[-1][0]
                return report_pb2.StreamClickReportResponse(
                    rows=[click_row(r) for r in rows],
                    resume_token=tokens.encode(key, "clicks", bound, {"i": position}),
                )

            async for page in self._pages(context, snapshot, size, build):
                yield page
        finally:
            self._close(snapshot)

    @handle_errors
    async def GetClickBreakdown(
        self, request: report_pb2.GetClickBreakdownRequest, context: grpc.aio.ServicerContext
    ) -> report_pb2.GetClickBreakdownResponse:
        business_id = business_of(context)
        campaign_id = dstats.require_campaign_id(request.campaign_id)
        found = await self.store.read(sreports.read_breakdown, business_id, campaign_id)
        if found is None:
            raise _not_found(campaign_id)
        data, seq = found
        return report_pb2.GetClickBreakdownResponse(
            clicks=data["clicks"],
            unique_clickers=data["unique_clickers"],
            by_link=_click_buckets(data["by_link"], ("link_id",)),
            by_country=_click_buckets(data["by_country"], ("country_code",)),
            by_region=_click_buckets(data["by_region"], ("country_code", "region")),
            by_city=_click_buckets(data["by_city"], ("country_code", "region", "city")),
            sequence=seq,
        )

    # -- timeline ---------------------------------------------------------------------
    @handle_errors
    async def GetCampaignTimeline(
        self, request: report_pb2.GetCampaignTimelineRequest, context: grpc.aio.ServicerContext
    ) -> report_pb2.GetCampaignTimelineResponse:
        business_id = business_of(context)
        campaign_id = dstats.require_campaign_id(request.campaign_id)
        width = _WIDTHS.get(request.width)
        if width is None:
            raise errors.invalid("width", f"unknown width {request.width}", "UNKNOWN_VALUE")
        start = _opt_time(request, "start_time")
        end = _opt_time(request, "end_time")
        if start is not None and end is not None and end <= start:
            raise errors.invalid("end_time", "must be after start_time", "EMPTY_RANGE")
        found = await self.store.read(sreports.read_timeline, business_id, campaign_id, width, start, end)
        if found is None:
            raise _not_found(campaign_id)
        rows, seq = found
        response = report_pb2.GetCampaignTimelineResponse(sequence=seq)
        current: report_pb2.TimelineBucket | None = None
        for b, kind, status, count in rows:
            if current is None or ts_to_us(current.start_time) != b:
                current = response.buckets.add()
                _set_ts(current.start_time, b)
            if kind == 2:
                current.clicks += count
            elif status in _TIMELINE_FIELD:
                name = _TIMELINE_FIELD[status]
                setattr(current, name, getattr(current, name) + count)
        return response

    @handle_errors
    async def ExportReport(
        self, request: report_pb2.ExportReportRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[report_pb2.ExportReportResponse]:
        """A report as a CSV or XLSX file in chunks: see api/export.py."""
        async for response in export_report(self, request, context):
            yield response

    # -- subscriptions ----------------------------------------------------------------
    @handle_errors
    async def SubscribeEvents(
        self, request: report_pb2.SubscribeEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[report_pb2.SubscribeEventsResponse]:
        """Pages from the store until caught up, then a page after each commit
        with new events. Nothing is buffered per subscriber: a slow one reads
        the next page from the store when it has taken the previous one."""
        business_id = business_of(context)
        if request.after_sequence < 0:
            raise errors.invalid("after_sequence", "must not be negative", "OUT_OF_RANGE")
        size = dstats.page_size(request.page_size)
        cid: int | None = None
        if request.campaign_id:
            cid = (await self._campaign(business_id, dstats.require_campaign_id(request.campaign_id))).cid
        subscription = self.live.subscribe(business_id)
        try:
            after = request.after_sequence
            announced = False
            while not context.done():
                subscription.clear()
                rows, last = await self.store.read(sreports.events_page, business_id, after, cid, size)
                caught_up = len(rows) < size or rows[-1][1] >= last
                if rows:
                    after = rows[-1][1]
                if rows or (caught_up and not announced):
                    yield report_pb2.SubscribeEventsResponse(
                        events=[stored_event(r) for r in rows], caught_up=caught_up
                    )
                    announced = announced or caught_up
                if caught_up:
                    await subscription.wait(SUBSCRIBE_POLL_SECONDS)
        finally:
            subscription.close()
