"""The webhook delivery worker: an asyncio task that sends due outbox
messages (store/webhooks.py) and records every attempt.

It wakes when a commit may have written messages (`wake()`, called from the
writer's commit listener) or when the next retry is due, sends up to
`CONCURRENCY` messages at once with one httpx.AsyncClient (a slow endpoint
holds one slot, not the others), and records each
attempt in a writer job (which schedules the retry or gives up). Messages
live in the database: a server killed with deliveries pending sends them
after it restarts. An attempt in flight when the server dies is made again
(at least once; receivers deduplicate on webhook-id, as Standard Webhooks
asks).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import time
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx
from standardwebhooks import Webhook

from flowtrack.delivery import bookkeeping as _bookkeeping
from flowtrack.domain import webhooks as rules
from flowtrack.domain.times import now_us
from flowtrack.store import webhooks as swebhooks
from flowtrack.store.base import Store

log = logging.getLogger(__name__)

CONCURRENCY = 8
IDLE_SECONDS = 30.0  # the longest sleep without a wake-up
# A claimed message is due again after this long if its attempt is never
# recorded (the server died mid-attempt): at least once, never twice at once.
CLAIM_SECONDS = 2 * rules.RESPONSE_TIMEOUT + 30.0
USER_AGENT = "flowtrack-webhooks/1"


async def refused_target(url: str, allow_private: bool) -> str | None:
    """Why `url` must not be called (its host resolves to a private,
    loopback or reserved address, or does not resolve), or None."""
    if allow_private:
        return None
    host = urlsplit(url).hostname or ""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as error:
        return f"cannot resolve {host}: {error.strerror or error}"
    bad = rules.refused_address(str(info[4][0]) for info in infos)
    return None if bad is None else f"{host} resolves to {bad}, a private or reserved address"


class DeliveryWorker:
    def __init__(
        self,
        store: Store,
        *,
        allow_private: bool,
        retry_base: float,
        retry_window: float,
        disable_after: int,
    ) -> None:
        self.store = store
        self.allow_private = allow_private
        self.retry_base = retry_base
        self.retry_window_us = int(retry_window * 1_000_000)
        self.disable_after = disable_after
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[None] | None = None
        self.attempts = 0

    def wake(self) -> None:
        """Look for due messages now (safe from any thread)."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._wake.set)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="flowtrack-webhooks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        inflight: dict[str, asyncio.Task[None]] = {}
        async with httpx.AsyncClient(
            timeout=rules.RESPONSE_TIMEOUT, follow_redirects=False, headers={"user-agent": USER_AGENT}
        ) as client:
            try:
                while True:
                    self._wake.clear()
                    wait = await self._round(client, inflight)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), wait)
            finally:
                for task in inflight.values():
                    task.cancel()
                await asyncio.gather(*inflight.values(), return_exceptions=True)

    async def _round(self, client: httpx.AsyncClient, inflight: dict[str, asyncio.Task[None]]) -> float:
        """Start sending the due messages not in flight (at most CONCURRENCY
        at once: a slow endpoint holds one slot, not the others); return how
        long to wait before looking again (a finished send wakes the loop)."""
        try:
            room = CONCURRENCY - len(inflight)
            waiting: list[swebhooks.Due] = await self.store.read(swebhooks.due, now_us(), 1) if room > 0 else []
            if waiting:
                # Claimed in a write (moved CLAIM_SECONDS ahead): a server
                # sharing the database does not send the same messages.
                found = await _bookkeeping(self.store, swebhooks.claim(room, int(CLAIM_SECONDS * 1_000_000)))
                fresh = [d for d in found if d.message.message_id not in inflight]
                for due in fresh:
                    message_id = due.message.message_id
                    task = asyncio.create_task(self._send(client, due), name=f"webhook-{message_id}")
                    inflight[message_id] = task
                    task.add_done_callback(functools.partial(self._done, inflight, message_id))
                if len(found) >= room:
                    return IDLE_SECONDS  # full: a finished send wakes the loop
            if inflight:
                return 1.0  # retries coming due meanwhile are looked at within a second
            next_at = await self.store.read(swebhooks.next_due)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("webhook delivery round failed; retrying shortly")
            return 1.0
        return IDLE_SECONDS if next_at is None else min(IDLE_SECONDS, max(0.0, (next_at - now_us()) / 1e6))

    def _done(self, inflight: dict[str, asyncio.Task[None]], message_id: str, _task: asyncio.Task[None]) -> None:
        inflight.pop(message_id, None)
        self._wake.set()

    async def _send(self, client: httpx.AsyncClient, due: swebhooks.Due) -> None:
        try:
            await self._attempt(client, due)
        except asyncio.CancelledError:
            raise
        except Exception:  # the attempt stays due: made again after a pause
            log.exception("webhook attempt of %s failed", due.message.message_id)
            await asyncio.sleep(1.0)

    async def _attempt(self, client: httpx.AsyncClient, due: swebhooks.Due) -> None:
        message = due.message
        status, error = 0, ""
        started = time.monotonic()
        refused = await refused_target(due.url, self.allow_private)
        if refused is not None:
            error = f"refused: {refused}"
        else:
            sent_at = datetime.now(tz=UTC)
            signature = Webhook(due.secret).sign(message.message_id, sent_at, message.body)
            headers = {
                "content-type": "application/json",
                "webhook-id": message.message_id,
                "webhook-timestamp": str(int(sent_at.timestamp())),
                "webhook-signature": signature,
            }
            try:
                response = await client.post(due.url, content=message.body.encode(), headers=headers)
                status = response.status_code
                if not rules.is_success(status):
                    error = f"HTTP {status}"
            except httpx.HTTPError as failure:
                error = f"{type(failure).__name__}: {failure}"[:500] or type(failure).__name__
        latency_us = int((time.monotonic() - started) * 1_000_000)
        self.attempts += 1
        await _bookkeeping(
            self.store,
            swebhooks.record_attempt(
                message.message_id,
                status,
                latency_us,
                error,
                retry_base=self.retry_base,
                retry_window_us=self.retry_window_us,
                disable_after=self.disable_after,
            ),
        )
