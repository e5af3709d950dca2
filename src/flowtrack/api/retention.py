"""RetentionService: a business's retention and its sweep (core/retention.py)."""

from __future__ import annotations

import grpc

from flowtrack.api.base import Servicer
from flowtrack.api.context import call_of
from flowtrack.api.errors import handle_errors
from flowtrack.config import Settings
from flowtrack.core.retention import Retention, RetentionCore
from flowtrack.domain import retention as rules
from flowtrack.store.base import Store
from flowtrack.v1 import retention_pb2, retention_pb2_grpc
from flowtrack.wire.convert import us_to_ts


def retention_to_proto(kept: Retention) -> retention_pb2.Retention:
    return retention_pb2.Retention(
        history_days=kept.history_days or 0,
        campaign_days=kept.campaign_days or 0,
        pruned_before=us_to_ts(kept.pruned_before),
        update_time=us_to_ts(kept.update_time),
    )


class RetentionServicer(Servicer, retention_pb2_grpc.RetentionServiceServicer):
    def __init__(self, store: Store, settings: Settings, core: RetentionCore) -> None:
        super().__init__(store, settings)
        self.core = core

    @handle_errors
    async def GetRetention(
        self, request: retention_pb2.GetRetentionRequest, context: grpc.aio.ServicerContext
    ) -> retention_pb2.GetRetentionResponse:
        kept = await self.core.get(call_of(context))
        return retention_pb2.GetRetentionResponse(retention=retention_to_proto(kept))

    @handle_errors
    async def SetRetention(
        self, request: retention_pb2.SetRetentionRequest, context: grpc.aio.ServicerContext
    ) -> retention_pb2.SetRetentionResponse:
        wanted = request.retention
        kept = await self.core.set(call_of(context), wanted.history_days, wanted.campaign_days)
        return retention_pb2.SetRetentionResponse(retention=retention_to_proto(kept))

    @handle_errors
    async def ApplyRetention(
        self, request: retention_pb2.ApplyRetentionRequest, context: grpc.aio.ServicerContext
    ) -> retention_pb2.ApplyRetentionResponse:
        applied = await self.core.apply(call_of(context))
        return retention_pb2.ApplyRetentionResponse(
            pruned=[retention_pb2.PrunedRows(table=table, rows=applied.rows[table]) for table in rules.TABLES],
            history_horizon=us_to_ts(applied.horizon),
        )
