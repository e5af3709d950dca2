"""CampaignService over gRPC: a thin face over core/campaigns.py.

Each method reads its request into domain values (wire/campaigns.py), calls
the core with the RPC's `Call`, and writes the answer; domain errors become
rich statuses in `handle_errors`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from flowtrack.api.base import Servicer
from flowtrack.api.context import call_of
from flowtrack.api.errors import handle_errors
from flowtrack.config import Settings
from flowtrack.core.campaigns import Campaigns
from flowtrack.domain.errors import invalid
from flowtrack.domain.model import Recipient
from flowtrack.store.base import Store
from flowtrack.v1 import campaign_pb2, campaign_pb2_grpc
from flowtrack.wire import campaigns as wire


class CampaignServicer(Servicer, campaign_pb2_grpc.CampaignServiceServicer):
    def __init__(
        self, store: Store, settings: Settings, *, reports_dir: Path | None = None, core: Campaigns | None = None
    ) -> None:
        super().__init__(store, settings)
        self.core = core or Campaigns(store, reports_dir=reports_dir)

    @handle_errors
    async def CreateCampaign(
        self, request: campaign_pb2.CreateCampaignRequest, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.CreateCampaignResponse:
        if not request.HasField("campaign"):
            raise invalid("campaign", "is required", "REQUIRED")
        campaign = await self.core.create(call_of(context), wire.draft_of(request.campaign))
        return campaign_pb2.CreateCampaignResponse(campaign=wire.campaign_to_proto(campaign))

    @handle_errors
    async def GetCampaign(
        self, request: campaign_pb2.GetCampaignRequest, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.GetCampaignResponse:
        campaign = await self.core.get(call_of(context), request.campaign_id)
        return campaign_pb2.GetCampaignResponse(campaign=wire.campaign_to_proto(campaign))

    @handle_errors
    async def UpdateCampaign(
        self, request: campaign_pb2.UpdateCampaignRequest, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.UpdateCampaignResponse:
        if not request.HasField("campaign"):
            raise invalid("campaign", "is required", "REQUIRED")
        draft = wire.draft_of(request.campaign)
        campaign = await self.core.update(call_of(context), draft, list(request.update_mask.paths))
        return campaign_pb2.UpdateCampaignResponse(campaign=wire.campaign_to_proto(campaign))

    @handle_errors
    async def DeleteCampaign(
        self, request: campaign_pb2.DeleteCampaignRequest, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.DeleteCampaignResponse:
        deleted = await self.core.delete(call_of(context), request.campaign_id)
        return campaign_pb2.DeleteCampaignResponse(deleted_recipients=deleted.recipients, deleted_events=deleted.events)

    @handle_errors
    async def ListCampaigns(
        self, request: campaign_pb2.ListCampaignsRequest, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.ListCampaignsResponse:
        campaigns, token = await self.core.list_page(
            call_of(context), request.filter, request.page_size, request.page_token
        )
        return wire.list_response(campaigns, token)

    @handle_errors
    async def AddRecipients(
        self, request_iterator: AsyncIterator[campaign_pb2.AddRecipientsRequest], context: grpc.aio.ServicerContext
    ) -> campaign_pb2.AddRecipientsResponse:
        async def batches() -> AsyncIterator[tuple[str, list[Recipient]]]:
            async for request in request_iterator:
                yield request.campaign_id, [wire.recipient_of(m) for m in request.recipients]

        added = await self.core.add_recipients(call_of(context), batches())
        return campaign_pb2.AddRecipientsResponse(
            added=added.added,
            already_present=added.already_present,
            total=added.total,
            invalid=added.invalid,
            violations=wire.field_violations(added.violations),
        )
