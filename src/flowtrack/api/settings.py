"""SettingsService: a business's settings (core/settings.py)."""

from __future__ import annotations

import grpc

from flowtrack.api.base import Servicer
from flowtrack.api.context import call_of
from flowtrack.api.errors import handle_errors
from flowtrack.config import Settings as ServerSettings
from flowtrack.core.settings import BusinessSettings, Settings, SettingsChange
from flowtrack.domain.bots import check_threshold
from flowtrack.store.base import Store
from flowtrack.v1 import settings_pb2, settings_pb2_grpc
from flowtrack.wire.convert import duration_to_us, us_to_duration, us_to_ts


def settings_to_proto(s: BusinessSettings) -> settings_pb2.Settings:
    return settings_pb2.Settings(
        bot_clicks=settings_pb2.BotClickRules(
            threshold=us_to_duration(s.rules.threshold_us),
            crawler_user_agent_is_bot=s.rules.crawler_ua_is_bot,
            no_user_agent_is_bot=s.rules.no_ua_is_bot,
        ),
        update_time=us_to_ts(s.update_time),
    )


def change_of(request: settings_pb2.UpdateSettingsRequest) -> SettingsChange:
    """The change a request asks for (its threshold checked)."""
    threshold = None
    if request.HasField("bot_click_threshold"):
        threshold = check_threshold(duration_to_us(request.bot_click_threshold), "bot_click_threshold")
    return SettingsChange(
        threshold_us=threshold,
        crawler_ua_is_bot=(
            request.crawler_user_agent_is_bot if request.HasField("crawler_user_agent_is_bot") else None
        ),
        no_ua_is_bot=request.no_user_agent_is_bot if request.HasField("no_user_agent_is_bot") else None,
    )


class SettingsServicer(Servicer, settings_pb2_grpc.SettingsServiceServicer):
    def __init__(self, store: Store, settings: ServerSettings, core: Settings) -> None:
        super().__init__(store, settings)
        self.core = core

    @handle_errors
    async def GetSettings(
        self, request: settings_pb2.GetSettingsRequest, context: grpc.aio.ServicerContext
    ) -> settings_pb2.GetSettingsResponse:
        found = await self.core.get(call_of(context))
        going_on = found.reclassifying
        return settings_pb2.GetSettingsResponse(
            settings=settings_to_proto(found),
            reclassification=None
            if going_on is None
            else settings_pb2.Reclassification(
                request_time=us_to_ts(going_on.requested_at), reclassified_clicks=going_on.changed
            ),
        )

    @handle_errors
    async def UpdateSettings(
        self, request: settings_pb2.UpdateSettingsRequest, context: grpc.aio.ServicerContext
    ) -> settings_pb2.UpdateSettingsResponse:
        found, changed = await self.core.update(call_of(context), change_of(request))
        return settings_pb2.UpdateSettingsResponse(settings=settings_to_proto(found), reclassified_clicks=changed)
