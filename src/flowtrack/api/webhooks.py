"""WebhookService: a business's webhook endpoints and their delivery log.

Thin: the rules are in domain/webhooks.py, the rows in store/webhooks.py,
the target checks in core/targets.py, the sending in delivery/worker.py
(which server.py wires in: `wake_sender`).
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from flowtrack.api.base import Servicer
from flowtrack.api.context import business_of
from flowtrack.api.errors import handle_errors
from flowtrack.config import Settings
from flowtrack.core.targets import refused_target
from flowtrack.domain import errors, tokens
from flowtrack.domain import webhooks as rules
from flowtrack.store import webhooks as swebhooks
from flowtrack.store.base import Store
from flowtrack.v1 import delivery_pb2, delivery_pb2_grpc
from flowtrack.wire.convert import us_to_duration, us_to_ts

DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 500
_TOKEN_KIND = "webhook-deliveries"


def endpoint_to_proto(e: swebhooks.Endpoint) -> delivery_pb2.WebhookEndpoint:
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
    )


def delivery_to_proto(m: swebhooks.Message, attempts: list[swebhooks.Attempt]) -> delivery_pb2.WebhookDelivery:
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
        self.wake_sender = wake_sender  # the delivery worker's wake(): a redelivery is due

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
        )
        rules.check_endpoint(draft)
        refused = await refused_target(draft.url, self.settings.webhook_allow_private)
        if refused is not None:
            raise errors.InvalidArgument(
                [errors.Violation("endpoint.url", f"{refused} (see --webhook-allow-private)", "PRIVATE_TARGET")]
            )
        secret = rules.new_secret()
        endpoint = await self.store.write(swebhooks.create_endpoint(business_of(context), draft, secret))
        return delivery_pb2.CreateWebhookEndpointResponse(endpoint=endpoint_to_proto(endpoint), secret=secret)

    @handle_errors
    async def ListWebhookEndpoints(
        self, request: delivery_pb2.ListWebhookEndpointsRequest, context: grpc.aio.ServicerContext
    ) -> delivery_pb2.ListWebhookEndpointsResponse:
        found = await self.store.read(swebhooks.list_endpoints, business_of(context))
        return delivery_pb2.ListWebhookEndpointsResponse(endpoints=[endpoint_to_proto(e) for e in found])

    @handle_errors
    async def DeleteWebhookEndpoint(
        self, request: delivery_pb2.DeleteWebhookEndpointRequest, context: grpc.aio.ServicerContext
    ) -> delivery_pb2.DeleteWebhookEndpointResponse:
        if not request.endpoint_id:
            raise errors.invalid("endpoint_id", "is required", "REQUIRED")
        await self.store.write(swebhooks.delete_endpoint(business_of(context), request.endpoint_id))
        return delivery_pb2.DeleteWebhookEndpointResponse()

    @handle_errors
    async def ListWebhookDeliveries(
        self, request: delivery_pb2.ListWebhookDeliveriesRequest, context: grpc.aio.ServicerContext
    ) -> delivery_pb2.ListWebhookDeliveriesResponse:
        business_id = business_of(context)
        if request.page_size < 0:
            raise errors.invalid("page_size", "must not be negative", "OUT_OF_RANGE")
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        bound = f"{business_id}\x00{request.endpoint_id}"
        before = None
        if request.page_token:
            position = tokens.decode(self.store.token_key, _TOKEN_KIND, bound, request.page_token, field="page_token")
            after = position.get("a")
            if not (isinstance(after, list) and len(after) == 2):
                raise errors.invalid("page_token", "not a token returned by this server", "BAD_TOKEN")
            before = (int(after[0]), str(after[1]))
        rows = await self.store.read(swebhooks.list_messages, business_id, request.endpoint_id, before, size + 1)
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            last = rows[-1][0]
            token = tokens.encode(self.store.token_key, _TOKEN_KIND, bound, {"a": [last.create_time, last.message_id]})
        return delivery_pb2.ListWebhookDeliveriesResponse(
            deliveries=[delivery_to_proto(m, a) for m, a in rows], next_page_token=token
        )

    @handle_errors
    async def RedeliverWebhook(
        self, request: delivery_pb2.RedeliverWebhookRequest, context: grpc.aio.ServicerContext
    ) -> delivery_pb2.RedeliverWebhookResponse:
        if not request.delivery_id:
            raise errors.invalid("delivery_id", "is required", "REQUIRED")
        await self.store.write(swebhooks.redeliver(business_of(context), request.delivery_id))
        self.wake_sender()
        return delivery_pb2.RedeliverWebhookResponse()
