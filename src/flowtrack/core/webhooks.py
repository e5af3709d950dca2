"""The webhook use cases: a business's endpoints and their delivery log
(delivered reports). Each takes a `Call` (core/calls.py) and domain
values, and returns the store's named rows (`Endpoint`, `Message`,
`Attempt`, re-exported here as the results) or raises domain errors. The
sending itself is delivery/worker.py's, through the claim and record
operations at the end of this module; `wake_sender` tells it a
redelivery is due."""

from __future__ import annotations

from collections.abc import Callable

from flowtrack.core.background import bookkeeping
from flowtrack.core.calls import Call
from flowtrack.core.targets import refused_target
from flowtrack.domain import errors, tokens
from flowtrack.domain import webhooks as rules
from flowtrack.store import webhooks as swebhooks
from flowtrack.store.base import Store
from flowtrack.store.webhooks import Attempt, Due, Endpoint, Message

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "Attempt",
    "Due",
    "Endpoint",
    "Message",
    "Webhooks",
    "claim_sends",
    "due",
    "next_due",
    "prune",
    "record_attempt",
]

DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 500
_TOKEN_KIND = "webhook-deliveries"


class Webhooks:
    def __init__(
        self, store: Store, *, allow_private: bool, wake_sender: Callable[[], None], email: bool = False
    ) -> None:
        self.store = store
        self.allow_private = allow_private  # --webhook-allow-private
        self.wake_sender = wake_sender
        self.email = email  # the server has an SMTP relay (--smtp): mailto: targets are taken

    async def create_endpoint(self, call: Call, draft: rules.EndpointDraft) -> tuple[Endpoint, str]:
        """The new endpoint and its signing secret (shown once; "" for a
        Slack or email endpoint, whose deliveries are not signed)."""
        rules.check_endpoint(draft)
        draft = draft.resolved()
        if draft.format == rules.EMAIL:
            # The relay is the operator's: a mailto: target names no host to check.
            if not self.email:
                raise errors.FailedPrecondition(
                    "this server sends no email: start it with --smtp smtp[s]://HOST:PORT", reason="SMTP_NOT_CONFIGURED"
                )
        else:
            refused = await refused_target(draft.url, self.allow_private)
            if refused is not None:
                raise errors.InvalidArgument(
                    [errors.Violation("endpoint.url", f"{refused} (see --webhook-allow-private)", "PRIVATE_TARGET")]
                )
        secret = rules.new_secret() if draft.format == rules.STANDARD else ""
        endpoint = await self.store.write(swebhooks.create_target(call.business_id, draft, secret))
        return endpoint, secret

    async def list_endpoints(self, call: Call) -> list[Endpoint]:
        return await self.store.read(swebhooks.list_targets, call.business_id)

    async def delete_endpoint(self, call: Call, endpoint_id: str) -> None:
        if not endpoint_id:
            raise errors.invalid("endpoint_id", "is required", "REQUIRED")
        await self.store.write(swebhooks.delete_endpoint(call.business_id, endpoint_id))

    async def list_deliveries(
        self, call: Call, endpoint_id: str, page_size: int, page_token: str
    ) -> tuple[list[tuple[Message, list[Attempt]]], str]:
        """A page of deliveries (newest first) with their attempts, and the next page's token."""
        business_id = call.business_id
        if page_size < 0:
            raise errors.invalid("page_size", "must not be negative", "OUT_OF_RANGE")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        bound = f"{business_id}\x00{endpoint_id}"
        before = None
        if page_token:
            position = tokens.decode(self.store.token_key, _TOKEN_KIND, bound, page_token, field="page_token")
            after = position.get("a")
            if not (isinstance(after, list) and len(after) == 2):
                raise errors.invalid("page_token", "not a token returned by this server", "BAD_TOKEN")
            before = (int(after[0]), str(after[1]))
        rows = await self.store.read(swebhooks.list_messages, business_id, endpoint_id, before, size + 1)
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            last = rows[-1][0]
            token = tokens.encode(self.store.token_key, _TOKEN_KIND, bound, {"a": [last.create_time, last.message_id]})
        return rows, token

    async def redeliver(self, call: Call, delivery_id: str) -> None:
        if not delivery_id:
            raise errors.invalid("delivery_id", "is required", "REQUIRED")
        await self.store.write(swebhooks.redeliver(call.business_id, delivery_id))
        self.wake_sender()


# -- the outbox sends (delivery/worker.py) and the log's prune --------------------------------
async def due(store: Store, now_us: int, limit: int) -> list[Due]:
    """Pending messages whose next attempt is due at `now_us`, oldest due first (a read)."""
    return await store.read(swebhooks.due, now_us, limit)


async def claim_sends(store: Store, limit: int, hold_us: int) -> list[Due]:
    """Up to `limit` due messages (each with its endpoint's format), held
    `hold_us` for this server: no other server sharing the database sends
    them meanwhile."""
    return await bookkeeping(store, swebhooks.claim_targets(limit, hold_us))


async def next_due(store: Store) -> int | None:
    """When the next pending message is due (µs), or None."""
    return await store.read(swebhooks.next_due)


async def record_attempt(
    store: Store,
    message_id: str,
    status_code: int,
    latency_us: int,
    error: str,
    *,
    business_id: str,
    retry_base: float,
    retry_window_us: int = rules.RETRY_WINDOW_US,
    disable_after: int = rules.DISABLE_AFTER_FAILURES,
) -> int:
    """One attempt of a message and its outcome (delivered; or retried
    later, or failed and its endpoint disabled past the retry window); the
    message's state."""
    return await bookkeeping(
        store,
        swebhooks.record_attempt(
            message_id,
            status_code,
            latency_us,
            error,
            business_id=business_id,
            retry_base=retry_base,
            retry_window_us=retry_window_us,
            disable_after=disable_after,
        ),
    )


async def prune(store: Store) -> int:
    """Forget a batch of delivered or failed messages past the log's retention; how many."""
    return await bookkeeping(store, swebhooks.prune())
