"""ReportService: stats, live stats, report streams, breakdowns, subscriptions.

Thin: requests become domain values (domain/stats.py), the store reads
(store/reports.py), and rows become protos in api/report_convert.py. Every
RPC is scoped to the caller's business; another business's campaign is
NOT_FOUND.

Report streams page through one snapshot with api/paging.py (page and byte
caps, the snapshot's time cap, resume positions); the next page is built in a
reader thread while the current one is sent. When the RPC ends early (the
client cancels, or its deadline passes) the query in progress is interrupted
and the snapshot closed, so no database work goes on for a stream nobody
reads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeVar

import grpc

from flowtrack.api import engaged_reports
from flowtrack.api.auth import ends_when_revoked
from flowtrack.api.base import Servicer
from flowtrack.api.context import business_of
from flowtrack.api.convert import optional_ts_to_us, ts_to_us
from flowtrack.api.errors import handle_errors
from flowtrack.api.export import export_report
from flowtrack.api.live import LiveHub
from flowtrack.api.paging import PAGE_BYTES, ReportStream, fit
from flowtrack.api.report_convert import (
    click_buckets,
    click_row,
    message_row,
    reason_row,
    set_ts,
    stats_to_proto,
    stored_event,
)
from flowtrack.config import Settings
from flowtrack.domain import errors, tokens
from flowtrack.domain import stats as dstats
from flowtrack.domain.records import EventRecord, MessageRecord
from flowtrack.domain.stats import CampaignStats, ReasonRow
from flowtrack.store import reports as sreports
from flowtrack.store.base import Store
from flowtrack.v1 import report_pb2, report_pb2_grpc

T = TypeVar("T")

# How long a caught-up SubscribeEvents waits for a commit before looking again.
SUBSCRIBE_POLL_SECONDS = 1.0

_WIDTHS = {
    report_pb2.TIMELINE_BUCKET_WIDTH_UNSPECIFIED: dstats.HOUR_US,
    report_pb2.TIMELINE_BUCKET_WIDTH_MINUTE: dstats.MINUTE_US,
    report_pb2.TIMELINE_BUCKET_WIDTH_HOUR: dstats.HOUR_US,
    report_pb2.TIMELINE_BUCKET_WIDTH_DAY: dstats.DAY_US,
}
_TIMELINE_FIELD = {2: "not_submitted", 3: "submitted", 4: "delivery_not_confirmed", 5: "failed", 6: "success"}


def _not_found(campaign_id: str) -> errors.NotFound:
    return errors.NotFound(f"campaign {campaign_id!r} not found", reason="CAMPAIGN_NOT_FOUND")


def _opt_time(message: Any, name: str, prefix: str = "") -> int | None:
    return optional_ts_to_us(message, name, prefix)


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

    # -- helpers ------------------------------------------------------------------
    async def _campaign(self, business_id: str, campaign_id: str) -> sreports.CampaignRef:
        ref = await self.store.read(sreports.campaign, business_id, campaign_id)
        if ref is None:
            raise _not_found(campaign_id)
        return ref

    def stream(self, context: grpc.aio.ServicerContext, business_id: str, campaign_id: str) -> ReportStream[Any]:
        """A report stream on the server's read bounds (api/paging.py)."""
        return ReportStream(
            self.store,
            context,
            business_id,
            campaign_id,
            snapshot_seconds=self.settings.snapshot_seconds,
            read_time_limit=self.settings.read_time_limit,
        )

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
    @ends_when_revoked
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
    @ends_when_revoked
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
            updated_after=_opt_time(f, "updated_after", "filter"),
            updated_before=_opt_time(f, "updated_before", "filter"),
            segments=engaged_reports.segments_of(f),
        )
        key = self.store.token_key
        bound = tokens.bind(business_id, campaign_id, flt.bound())
        after = _resume(key, "messages", bound, request.resume_token, "r", str)
        stream = self.stream(context, business_id, campaign_id)
        try:
            ref = await stream.open()
            await stream.start(
                lambda position: sreports.message_report_sql(ref.cid, flt, position),
                MessageRecord._make,
                position=after,
                resume=lambda r: r.recipient,
            )

            def page(
                rows: list[report_pb2.MessageRow], records: list[MessageRecord]
            ) -> report_pb2.StreamMessageReportResponse:
                out = report_pb2.StreamMessageReportResponse(rows=rows, sequence=stream.snapshot_sequence)
                position = stream.position
                out.resume_token = tokens.encode(key, "messages", bound, {"r": position}) if position else ""
                return out

            prepare = engaged_reports.message_items(stream, ref.cid)  # link clicks and button taps
            async for response in stream.pages(size, message_row, page, prepare=prepare):
                yield response
        finally:
            stream.close()

    # -- history --------------------------------------------------------------------
    @handle_errors
    @ends_when_revoked
    async def StreamMessageHistory(
        self, request: report_pb2.StreamMessageHistoryRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[report_pb2.StreamMessageHistoryResponse]:
        business_id = business_of(context)
        campaign_id = dstats.require_campaign_id(request.campaign_id)
        size = dstats.page_size(request.page_size)
        wrong = dstats.filter_text("recipient", request.recipient, "recipient")
        if wrong is not None:
            raise errors.InvalidArgument([wrong])
        key = self.store.token_key
        bound = tokens.bind(business_id, campaign_id, request.recipient)
        after = _resume(key, "history", bound, request.resume_token, "s", int) or 0
        stream = self.stream(context, business_id, campaign_id)
        try:
            ref = await stream.open()
            await stream.start(
                lambda position: sreports.history_sql(business_id, ref.cid, request.recipient, position),
                EventRecord._make,
                position=after,
                resume=lambda r: r.seq,
            )

            def page(
                events: list[report_pb2.StoredEvent], records: list[EventRecord]
            ) -> report_pb2.StreamMessageHistoryResponse:
                return report_pb2.StreamMessageHistoryResponse(
                    events=events, resume_token=tokens.encode(key, "history", bound, {"s": stream.position})
                )

            async for response in stream.pages(size, stored_event, page):
                yield response
        finally:
            stream.close()

    # -- failure reasons ------------------------------------------------------------
    @handle_errors
    @ends_when_revoked
    async def StreamFailureReasons(
        self, request: report_pb2.StreamFailureReasonsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[report_pb2.StreamFailureReasonsResponse]:
        business_id = business_of(context)
        campaign_id = dstats.require_campaign_id(request.campaign_id)
        size = dstats.page_size(request.page_size, default=dstats.DEFAULT_REASONS_PAGE_SIZE)
        samples = dstats.sample_size(request.sample_size)
        stream = self.stream(context, business_id, campaign_id)
        try:
            ref = await stream.open()
            failed, not_submitted = await stream.call(sreports.failure_totals, ref.cid)
            await stream.start(lambda _position: sreports.failure_reasons_sql(ref.cid, samples), sreports.reason_row)
            seq = stream.snapshot_sequence

            def page(
                rows: list[report_pb2.FailureReasonRow], reasons: list[ReasonRow]
            ) -> report_pb2.StreamFailureReasonsResponse:
                return report_pb2.StreamFailureReasonsResponse(reasons=rows, sequence=seq)

            async for response in stream.pages(size, lambda r: reason_row(r, failed, not_submitted), page):
                yield response
        finally:
            stream.close()

    # -- clicks -----------------------------------------------------------------------
    @handle_errors
    @ends_when_revoked
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
            occurred_after=_opt_time(f, "occurred_after", "filter"),
            occurred_before=_opt_time(f, "occurred_before", "filter"),
        )
        key = self.store.token_key
        bound = tokens.bind(business_id, campaign_id, flt.bound())
        after = _resume(key, "clicks", bound, request.resume_token, "i", int) or 0
        stream = self.stream(context, business_id, campaign_id)
        try:
            ref = await stream.open()
            await stream.start(
                lambda position: sreports.click_report_sql(ref.cid, flt, position),
                EventRecord._make,
                position=after,
                resume=lambda r: r.id,
            )

            def page(
                rows: list[report_pb2.ClickRow], records: list[EventRecord]
            ) -> report_pb2.StreamClickReportResponse:
                return report_pb2.StreamClickReportResponse(
                    rows=rows, resume_token=tokens.encode(key, "clicks", bound, {"i": stream.position})
                )

            async for response in stream.pages(size, click_row, page):
                yield response
        finally:
            stream.close()

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
            by_link=click_buckets(data["by_link"], ("link_id",)),
            by_country=click_buckets(data["by_country"], ("country_code",)),
            by_region=click_buckets(data["by_region"], ("country_code", "region")),
            by_city=click_buckets(data["by_city"], ("country_code", "region", "city")),
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
                set_ts(current.start_time, b)
            if kind == 2:
                current.clicks += count
            elif kind == 3:
                engaged_reports.add_timeline_engagement(current, status, count)
            elif status in _TIMELINE_FIELD:
                name = _TIMELINE_FIELD[status]
                setattr(current, name, getattr(current, name) + count)
        return response

    @handle_errors
    @ends_when_revoked
    async def ExportReport(
        self, request: report_pb2.ExportReportRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[report_pb2.ExportReportResponse]:
        """A report as a CSV or XLSX file in chunks: see api/export.py."""
        async for response in export_report(self, request, context):
            yield response

    @handle_errors
    @ends_when_revoked
    async def StreamReplies(
        self, request: report_pb2.StreamRepliesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[report_pb2.StreamRepliesResponse]:
        """The Replies tab: see api/engaged_reports.py."""
        async for response in engaged_reports.stream_replies(self, request, context):
            yield response

    # -- subscriptions ----------------------------------------------------------------
    @handle_errors
    @ends_when_revoked
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
                events = fit([stored_event(r) for r in rows], PAGE_BYTES)
                cut = len(events) < len(rows)
                rows = rows[: len(events)]
                caught_up = not cut and (len(rows) < size or rows[-1].seq >= last)
                if rows:
                    after = rows[-1].seq
                if rows or (caught_up and not announced):
                    yield report_pb2.SubscribeEventsResponse(events=events, caught_up=caught_up)
                    announced = announced or caught_up
                if caught_up:
                    await subscription.wait(SUBSCRIBE_POLL_SECONDS)
        finally:
            subscription.close()
