"""CampaignService (placeholder: every RPC answers UNIMPLEMENTED until it is built)."""

from __future__ import annotations

from typing import Any

import grpc

from flowtrack.api.base import Servicer, unimplemented
from flowtrack.v1 import campaign_pb2_grpc


class CampaignServicer(Servicer, campaign_pb2_grpc.CampaignServiceServicer):
    async def CreateCampaign(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await unimplemented(context, "CreateCampaign")

    async def GetCampaign(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await unimplemented(context, "GetCampaign")

    async def UpdateCampaign(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await unimplemented(context, "UpdateCampaign")

    async def DeleteCampaign(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await unimplemented(context, "DeleteCampaign")

    async def ListCampaigns(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await unimplemented(context, "ListCampaigns")

    async def AddRecipients(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await unimplemented(context, "AddRecipients")
