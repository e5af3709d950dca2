"""ReportService over gRPC: a thin face over the report use cases
(core/reports.py, core/export.py).

Each method turns its request into domain values (wire/reports.py), calls
the core with the RPC's `Call` (api/context.call_of: the caller, ended when
the RPC ends, so a cancelled stream stops reading at once), and sends what
the core returns as protos. The pages of StreamMessageReport are sent as the
wire bytes wire/encoded.py writes from the store's rows in the reader thread
(no proto object per row); `add_to_server` registers the service with a
serializer that sends such bytes as they are. (The click report's and the
history's rows are built as protos: written in Python their bytes cost as
many instructions as upb's building, docs/report-benchmarks.md.) Domain errors become statuses in one
place, api/errors.handle_errors.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from flowtrack.api.auth import ends_when_revoked
from flowtrack.api.base import Servicer
from flowtrack.api.context import call_of
from flowtrack.api.errors import handle_errors
from flowtrack.config import Settings
from flowtrack.core.export import export_report
from flowtrack.core.reports import Reports
from flowtrack.domain import stats as dstats
from flowtrack.store.base import Store
from flowtrack.v1 import report_pb2, report_pb2_grpc
from flowtrack.wire import encoded
from flowtrack.wire import reports as wire
from flowtrack.wire.convert import optional_ts_to_us


class ReportServicer(Servicer, report_pb2_grpc.ReportServiceServicer):
    def __init__(self, store: Store, settings: Settings, core: Reports | None = None) -> None:
        super().__init__(store, settings)
        self.core = core or Reports(
            store, snapshot_seconds=settings.snapshot_seconds, read_time_limit=settings.read_time_limit
        )

    @handle_errors
    async def GetCampaignStats(
        self, request: report_pb2.GetCampaignStatsRequest, context: grpc.aio.ServicerContext
    ) -> report_pb2.GetCampaignStatsResponse:
        return wire.stats_response(await self.core.sourced_stats(call_of(context), request.campaign_id))

    @handle_errors
    @ends_when_revoked
    async def WatchCampaignStats(
        self, request: report_pb2.WatchCampaignStatsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[report_pb2.WatchCampaignStatsResponse]:
        """Ends with OK (after the last snapshot) when the campaign is deleted."""
        async for stats in self.core.watch_stats(call_of(context), request.campaign_id):
            yield report_pb2.WatchCampaignStatsResponse(stats=wire.stats_to_proto(stats))

    @handle_errors
    @ends_when_revoked
    async def StreamMessageReport(  # type: ignore[override]
        self, request: report_pb2.StreamMessageReportRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        call = call_of(context)
        campaign_id = dstats.require_campaign_id(request.campaign_id)
        dstats.page_size(request.page_size)  # checked before the filter, as ever
        flt = wire.message_filter(request.filter)
        pages = self.core.message_report(
            call, campaign_id, flt, request.page_size, request.resume_token, encoded.MESSAGE_PAGES
        )
        async for page in pages:
            yield page

    @handle_errors
    @ends_when_revoked
    async def StreamMessageHistory(
        self, request: report_pb2.StreamMessageHistoryRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[report_pb2.StreamMessageHistoryResponse]:
        pages = self.core.message_history(
            call_of(context),
            request.campaign_id,
            request.recipient,
            request.page_size,
            request.resume_token,
            wire.HISTORY_PAGES,
        )
        async for page in pages:
            yield page

    @handle_errors
    @ends_when_revoked
    async def StreamFailureReasons(
        self, request: report_pb2.StreamFailureReasonsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[report_pb2.StreamFailureReasonsResponse]:
        pages = self.core.failure_reasons(
            call_of(context), request.campaign_id, request.page_size, request.sample_size, wire.REASON_PAGES
        )
        async for page in pages:
            yield page

    @handle_errors
    @ends_when_revoked
    async def StreamClickReport(
        self, request: report_pb2.StreamClickReportRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[report_pb2.StreamClickReportResponse]:
        call = call_of(context)
        campaign_id = dstats.require_campaign_id(request.campaign_id)
        dstats.page_size(request.page_size)  # checked before the filter, as ever
        flt = wire.click_filter(request.filter)
        pages = self.core.click_report(
            call, campaign_id, flt, request.page_size, request.resume_token, wire.CLICK_PAGES
        )
        async for page in pages:
            yield page

    @handle_errors
    async def GetClickBreakdown(
        self, request: report_pb2.GetClickBreakdownRequest, context: grpc.aio.ServicerContext
    ) -> report_pb2.GetClickBreakdownResponse:
        data, seq = await self.core.click_breakdown(call_of(context), request.campaign_id)
        return wire.breakdown(data, seq)

    @handle_errors
    async def GetCampaignTimeline(
        self, request: report_pb2.GetCampaignTimelineRequest, context: grpc.aio.ServicerContext
    ) -> report_pb2.GetCampaignTimelineResponse:
        campaign_id = dstats.require_campaign_id(request.campaign_id)
        width = wire.timeline_width(request.width)
        start = optional_ts_to_us(request, "start_time")
        end = optional_ts_to_us(request, "end_time")
        rows, seq = await self.core.timeline(call_of(context), campaign_id, width, start, end)
        return wire.timeline(rows, seq)

    @handle_errors
    @ends_when_revoked
    async def ExportReport(
        self, request: report_pb2.ExportReportRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[report_pb2.ExportReportResponse]:
        """A report as a CSV or XLSX file in chunks: see core/export.py."""
        call = call_of(context)
        dstats.require_campaign_id(request.campaign_id)  # before the rest, as ever
        export = wire.export_request(request)
        async for chunk in export_report(self.core, export, call):
            yield wire.export_response(chunk)

    @handle_errors
    @ends_when_revoked
    async def StreamReplies(
        self, request: report_pb2.StreamRepliesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[report_pb2.StreamRepliesResponse]:
        """The Replies tab: pages of replies, each with a resume token."""
        call = call_of(context)
        campaign_id = dstats.require_campaign_id(request.campaign_id)
        dstats.page_size(request.page_size)  # checked before the filter, as ever
        recipient, after, before = wire.reply_filter(request.filter)
        pages = self.core.replies(
            call, campaign_id, recipient, after, before, request.page_size, request.resume_token, wire.REPLY_PAGES
        )
        async for page in pages:
            yield page

    @handle_errors
    @ends_when_revoked
    async def SubscribeEvents(
        self, request: report_pb2.SubscribeEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[report_pb2.SubscribeEventsResponse]:
        """Pages until caught up, then a page after each commit with new events."""
        pages = self.core.subscribe(
            call_of(context), request.after_sequence, request.campaign_id, request.page_size, wire.EVENT_PAGES
        )
        async for page in pages:
            yield page


# The streams whose pages the servicer sends as serialized bytes (wire/encoded.py).
ENCODED_STREAMS = ("StreamMessageReport",)


class _Handlers:
    """Takes what the generated `add_ReportServiceServicer_to_server` registers."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.service = service
        self.handlers = dict(handlers)


def _send_bytes(response: bytes) -> bytes:
    return response


def add_to_server(servicer: ReportServicer, server: grpc.aio.Server) -> None:
    """Register ReportService on `server` as the generated code does, the
    streams of ENCODED_STREAMS with a serializer that sends their bytes as
    they are."""
    taken = _Handlers()
    report_pb2_grpc.add_ReportServiceServicer_to_server(servicer, taken)  # type: ignore[arg-type]
    handlers = taken.handlers
    for name in ENCODED_STREAMS:
        handlers[name] = handlers[name]._replace(response_serializer=_send_bytes)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(taken.service, handlers),))
    server.add_registered_method_handlers(taken.service, handlers)
