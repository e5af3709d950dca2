"""ReportService (placeholder: every RPC answers UNIMPLEMENTED until it is built)."""

from __future__ import annotations

from typing import Any

import grpc

from flowtrack.api.base import Servicer, unimplemented
from flowtrack.v1 import report_pb2_grpc


class ReportServicer(Servicer, report_pb2_grpc.ReportServiceServicer):
    async def GetCampaignStats(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await unimplemented(context, "GetCampaignStats")

    async def WatchCampaignStats(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await unimplemented(context, "WatchCampaignStats")
        yield  # pragma: no cover

    async def StreamMessageReport(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await unimplemented(context, "StreamMessageReport")
        yield  # pragma: no cover

    async def StreamMessageHistory(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await unimplemented(context, "StreamMessageHistory")
        yield  # pragma: no cover

    async def StreamFailureReasons(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await unimplemented(context, "StreamFailureReasons")
        yield  # pragma: no cover

    async def StreamClickReport(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await unimplemented(context, "StreamClickReport")
        yield  # pragma: no cover

    async def GetClickBreakdown(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await unimplemented(context, "GetClickBreakdown")

    async def GetCampaignTimeline(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await unimplemented(context, "GetCampaignTimeline")

    async def ExportReport(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await unimplemented(context, "ExportReport")
        yield  # pragma: no cover

    async def SubscribeEvents(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await unimplemented(context, "SubscribeEvents")
        yield  # pragma: no cover
