"""PrivacyService over gRPC: a thin face over core/privacy.py."""

from __future__ import annotations

from pathlib import Path

import grpc

from flowtrack.api.base import Servicer
from flowtrack.api.context import call_of
from flowtrack.api.errors import handle_errors
from flowtrack.config import Settings
from flowtrack.core.privacy import Privacy
from flowtrack.store.base import Store
from flowtrack.v1 import privacy_pb2, privacy_pb2_grpc
from flowtrack.wire.privacy import erasure_to_proto


class PrivacyServicer(Servicer, privacy_pb2_grpc.PrivacyServiceServicer):
    def __init__(self, store: Store, settings: Settings, *, reports_dir: Path | None = None) -> None:
        super().__init__(store, settings)
        self.core = Privacy(store, reports_dir=reports_dir)

    @handle_errors
    async def EraseRecipient(
        self, request: privacy_pb2.EraseRecipientRequest, context: grpc.aio.ServicerContext
    ) -> privacy_pb2.EraseRecipientResponse:
        erasure = await self.core.erase(call_of(context), request.recipient)
        return privacy_pb2.EraseRecipientResponse(erasure=erasure_to_proto(erasure))

    @handle_errors
    async def ListErasures(
        self, request: privacy_pb2.ListErasuresRequest, context: grpc.aio.ServicerContext
    ) -> privacy_pb2.ListErasuresResponse:
        found, token = await self.core.list_page(call_of(context), request.page_size, request.page_token)
        return privacy_pb2.ListErasuresResponse(erasures=[erasure_to_proto(e) for e in found], next_page_token=token)
