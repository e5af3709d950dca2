"""WebhookService: a business's webhook endpoints and their delivery log.

Thin: the use cases are core/webhooks.py (rules in domain/webhooks.py,
target checks in core/targets.py); the sending is delivery/worker.py's
(server.py wires its wake in: `wake_sender`).
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from flowtrack.api.base import Servicer
from flowtrack.api.context import call_of
from flowtrack.api.errors import handle_errors
from flowtrack.config import Settings
from flowtrack.core.webhooks import Attempt, Endpoint, Message, Webhooks
from flowtrack.domain import webhooks as rules
from flowtrack.store.base import Store
from flowtrack.v1 import delivery_pb2, delivery_pb2_grpc
from flowtrack.wire.convert import us_to_duration, us_to_ts


def endpoint_to_proto(e: Endpoint) -> delivery_pb2.WebhookEndpoint:
    return delivery_pb2.WebhookEndpoint(
        id=e.endpoint_id,
        url=e.url,
        events=list(e.events),
        description=e.description,
        failure_rate=e.failure_rate or 0.0,
        min_submitted=e.min_submitted,
        create_time=us_to_ts(e.create_time),
        disable_time=us_to_ts(e.disabled_at),
        disabled_reason=e.disabled_reason,
        format=e.format,  # type: ignore[arg-type]
    )


def delivery_to_proto(m: Message, attempts: list[Attempt]) -> delivery_pb2.WebhookDelivery:
    return delivery_pb2.WebhookDelivery(
        id=m.message_id,
        endpoint_id=m.endpoint_id,
        type=m.type,
        body=m.body,
        create_time=us_to_ts(m.create_time),
        state=m.state,  # type: ignore[arg-type]
        next_attempt_time=us_to_ts(m.next_attempt_at),
        attempts=[
            delivery_pb2.WebhookAttempt(
                attempt=a.attempt,
                time=us_to_ts(a.time),
                status_code=a.status_code,
                latency=us_to_duration(a.latency_us),
                error=a.error,
            )
            for a in attempts
        ],
    )


class WebhookServicer(Servicer, delivery_pb2_grpc.WebhookServiceServicer):
    def __init__(self, store: Store, settings: Settings, wake_sender: Callable[[], None]) -> None:
        super().__init__(store, settings)
        self.core = Webhooks(
            store,
            allow_private=settings.webhook_allow_private,
            wake_sender=wake_sender,
            email=settings.smtp is not None,
        )

    @handle_errors
    async def CreateWebhookEndpoint(
        self, request: delivery_pb2.CreateWebhookEndpointRequest, context: grpc.aio.ServicerContext
    ) -> delivery_pb2.CreateWebhookEndpointResponse:
        e = request.endpoint
        draft = rules.EndpointDraft(
            url=e.url.strip(),
            events=rules.events_of(e.events),
            description=e.description,
            failure_rate=e.failure_rate if rules.CAMPAIGN_FAILURE_RATE in e.events else None,
            min_submitted=e.min_submitted,
            format=e.format,
        )
        endpoint, secret = await self.core.create_endpoint(call_of(context), draft)
        return delivery_pb2.CreateWebhookEndpointResponse(endpoint=endpoint_to_proto(endpoint), secret=secret)

    @handle_errors
    async def ListWebhookEndpoints(
        self, request: delivery_pb2.ListWebhookEndpointsRequest, context: grpc.aio.ServicerContext
    ) -> delivery_pb2.ListWebhookEndpointsResponse:
        found = await self.core.list_endpoints(call_of(context))
        return delivery_pb2.ListWebhookEndpointsResponse(endpoints=[endpoint_to_proto(e) for e in found])

    @handle_errors
    async def DeleteWebhookEndpoint(
        self, request: delivery_pb2.DeleteWebhookEndpointRequest, context: grpc.aio.ServicerContext
    ) -> delivery_pb2.DeleteWebhookEndpointResponse:
        await self.core.delete_endpoint(call_of(context), request.endpoint_id)
        return delivery_pb2.DeleteWebhookEndpointResponse()

    @handle_errors
    async def ListWebhookDeliveries(
        self, request: delivery_pb2.ListWebhookDeliveriesRequest, context: grpc.aio.ServicerContext
    ) -> delivery_pb2.ListWebhookDeliveriesResponse:
        rows, token = await self.core.list_deliveries(
            call_of(context), request.endpoint_id, request.page_size, request.page_token
        )
        return delivery_pb2.ListWebhookDeliveriesResponse(
            deliveries=[delivery_to_proto(m, a) for m, a in rows], next_page_token=token
        )

    @handle_errors
    async def RedeliverWebhook(
        self, request: delivery_pb2.RedeliverWebhookRequest, context: grpc.aio.ServicerContext
    ) -> delivery_pb2.RedeliverWebhookResponse:
        await self.core.redeliver(call_of(context), request.delivery_id)
        return delivery_pb2.RedeliverWebhookResponse()
