"""IngestService (placeholder: every RPC answers UNIMPLEMENTED until it is built)."""

from __future__ import annotations

from typing import Any

import grpc

from flowtrack.api.base import Servicer, unimplemented
from flowtrack.v1 import ingest_pb2_grpc


class IngestServicer(Servicer, ingest_pb2_grpc.IngestServiceServicer):
    async def RecordStatusEvent(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await unimplemented(context, "RecordStatusEvent")

    async def RecordClickEvent(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await unimplemented(context, "RecordClickEvent")

    async def StreamEvents(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await unimplemented(context, "StreamEvents")
        yield  # pragma: no cover
