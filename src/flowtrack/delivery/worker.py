"""The webhook delivery worker: an asyncio task that sends due outbox
messages (core/webhooks.py) and records every attempt.

It wakes when a commit may have written messages (`wake()`, called from the
writer's commit listener) or when the next retry is due, sends up to
`CONCURRENCY` messages at once with one httpx.AsyncClient (a slow endpoint
holds one slot, not the others), and records each
attempt in a writer job (which schedules the retry or gives up). Messages
live in the database: a server killed with deliveries pending sends them
after it restarts. An attempt in flight when the server dies is made again
(at least once; receivers deduplicate on webhook-id, as Standard Webhooks
asks).

Each attempt looks the endpoint's host up once, checks every address
(domain/webhooks.refused_address) and connects to the checked ones, never
resolving the name again (a resolver that answers differently the second
time, DNS rebinding, gets nowhere); TLS still sends and checks the host
name. An attempt reads at most MAX_RESPONSE_BYTES of the answer's body and
ends, whatever the endpoint does, within its timeout (--webhook-timeout),
well before its claim lapses and another server may make it again.

A Slack endpoint's attempt is the same POST (same address checks and
limits) of the message rendered for Slack (domain/notifications.py), not
signed; an email endpoint's is an SMTP attempt through the --smtp relay
(delivery/mail.py), recorded the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from standardwebhooks import Webhook

from flowtrack.config import SmtpServer
from flowtrack.core import background
from flowtrack.core import webhooks as cwebhooks
from flowtrack.core.targets import check_target
from flowtrack.delivery import mail
from flowtrack.domain import notifications
from flowtrack.domain import webhooks as rules
from flowtrack.domain.times import now_us
from flowtrack.store.base import Store

if TYPE_CHECKING:  # imported when the first message is sent (below): not for every server's start
    import httpx

log = logging.getLogger(__name__)

CONCURRENCY = 8
IDLE_SECONDS = 30.0  # the longest sleep without a wake-up
# A claimed message is due again after this long if its attempt is never
# recorded (the server died mid-attempt): at least once, never twice at once.
# Every attempt ends within its timeout (RESPONSE_TIMEOUT by default), well
# before its claim lapses.
CLAIM_SECONDS = rules.claim_seconds(rules.RESPONSE_TIMEOUT)
USER_AGENT = "flowtrack-webhooks/1"


class ResponseTooLarge(Exception):
    pass


def pinned_request(
    client: httpx.AsyncClient, url: str, address: str | None, content: bytes, headers: dict[str, str]
) -> httpx.Request:
    """A POST of `content` to `url` whose connection goes to `address` (the
    checked one) when given: the URL names the address, the Host header the
    URL's host, and TLS's SNI and certificate check use the host too (the
    `sni_hostname` extension of httpcore)."""
    import httpx

    target = httpx.URL(url)
    extensions: dict[str, str] = {}
    if address is not None:
        headers = {**headers, "host": target.netloc.decode("ascii")}
        if target.scheme == "https":
            extensions["sni_hostname"] = target.raw_host.decode("ascii")
        target = target.copy_with(host=address)
    return client.build_request("POST", target, content=content, headers=headers, extensions=extensions)


async def read_capped(response: httpx.Response, limit: int) -> int:
    """Read the body of `response` as it came (not decompressed), at most
    `limit` bytes (ResponseTooLarge past it); return how many."""
    size = 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > limit:
            raise ResponseTooLarge(f"the answer's body is longer than {limit} bytes")
    return size


class _Client:
    """The worker's one httpx.AsyncClient, made (and httpx imported, with
    the rich and pygments of its command line: 12% of a server's imports,
    docs/performance.md) when the first message is sent, not at every
    server's start. No proxies from the environment (a proxy would resolve
    the name itself), no redirects, no kept-alive connections (a connection
    to a pinned address is not reused for another host name on it)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._client: httpx.AsyncClient | None = None

    def get(self) -> httpx.AsyncClient:
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(
                timeout=self.timeout,
                follow_redirects=False,
                trust_env=False,
                limits=httpx.Limits(max_keepalive_connections=0),
                headers={"user-agent": USER_AGENT},
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


class DeliveryWorker:
    def __init__(
        self,
        store: Store,
        *,
        allow_private: bool,
        retry_base: float,
        retry_window: float,
        disable_after: int,
        timeout: float = rules.RESPONSE_TIMEOUT,
        smtp: SmtpServer | None = None,
        page_url: Callable[[], str] = str,
    ) -> None:
        self.store = store
        self.smtp = smtp  # --smtp: where email endpoints' messages go
        self.page_url = page_url  # the HTTP listener's URL, for links to campaign pages ("" without one)
        self._mail_threads: ThreadPoolExecutor | None = None
        self.timeout = min(timeout, rules.MAX_WEBHOOK_TIMEOUT)
        self.claim_us = int(rules.claim_seconds(self.timeout) * 1_000_000)
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
        await background.cancelled(self._task)
        if self._mail_threads is not None:
            self._mail_threads.shutdown(wait=False, cancel_futures=True)

    async def _run(self) -> None:
        inflight: dict[str, asyncio.Task[None]] = {}
        client = _Client(self.timeout)
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
            await client.aclose()

    async def _round(self, client: _Client, inflight: dict[str, asyncio.Task[None]]) -> float:
        """Start sending the due messages not in flight (at most CONCURRENCY
        at once: a slow endpoint holds one slot, not the others); return how
        long to wait before looking again (a finished send wakes the loop)."""
        try:
            room = CONCURRENCY - len(inflight)
            waiting = await cwebhooks.due(self.store, now_us(), 1) if room > 0 else []
            if waiting:
                # Claimed in a write (moved claim_us ahead): a server
                # sharing the database does not send the same messages.
                found = await cwebhooks.claim_sends(self.store, room, self.claim_us)
                fresh = [d for d in found if d.message.message_id not in inflight]
                for due in fresh:
                    message_id = due.message.message_id
                    task = asyncio.create_task(self._send(client.get(), due), name=f"webhook-{message_id}")
                    inflight[message_id] = task
                    task.add_done_callback(functools.partial(self._done, inflight, message_id))
                if len(found) >= room:
                    return IDLE_SECONDS  # full: a finished send wakes the loop
            if inflight:
                return 1.0  # retries coming due meanwhile are looked at within a second
            next_at = await cwebhooks.next_due(self.store)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("webhook delivery round failed; retrying shortly")
            return 1.0
        return IDLE_SECONDS if next_at is None else min(IDLE_SECONDS, max(0.0, (next_at - now_us()) / 1e6))

    async def _post(self, client: httpx.AsyncClient, due: cwebhooks.Due) -> tuple[int, str]:
        """Check the target and send one attempt: (status code, error)."""
        message = due.message
        if due.format == rules.EMAIL:
            return await self._mail(due)
        target = await check_target(due.url, self.allow_private)
        if target.refused is not None:
            return 0, f"refused: {target.refused}"
        if due.format == rules.SLACK:  # Slack's incoming webhooks have no signature: the URL is the secret
            notice = notifications.notice(message.body, self.page_url())
            body = notifications.slack_body(notice).encode()
            headers = {"content-type": "application/json", "webhook-id": message.message_id}
        else:
            sent_at = datetime.now(tz=UTC)
            signature = Webhook(due.secret).sign(message.message_id, sent_at, message.body)
            headers = {
                "content-type": "application/json",
                "webhook-id": message.message_id,
                "webhook-timestamp": str(int(sent_at.timestamp())),
                "webhook-signature": signature,
            }
            body = message.body.encode()
        import httpx

        addresses: tuple[str | None, ...] = target.addresses or (None,)
        for i, address in enumerate(addresses):
            request = pinned_request(client, due.url, address, body, headers)
            try:
                response = await client.send(request, stream=True)
                try:
                    await read_capped(response, rules.MAX_RESPONSE_BYTES)
                finally:
                    await response.aclose()
            except httpx.ConnectError as failure:
                if i + 1 < len(addresses):
                    continue  # the name's next checked address
                return 0, _error(failure)
            except httpx.HTTPError as failure:
                return 0, _error(failure)
            except ResponseTooLarge as failure:  # a failed attempt, whatever its status code
                return 0, f"HTTP {response.status_code}, but {failure}"
            status = response.status_code
            return status, "" if rules.is_success(status) else f"HTTP {status}"
        raise AssertionError("unreachable")

    async def _mail(self, due: cwebhooks.Due) -> tuple[int, str]:
        """One email attempt through the relay: (SMTP reply code, error)."""
        server = self.smtp
        if server is None:
            return 0, "this server sends no email: start it with --smtp"
        recipients = rules.mail_recipients(due.url)
        if recipients is None:
            return 0, f"not a mailto: target flowtrack sends to: {due.url}"
        message = notifications.email_message(
            notifications.notice(due.message.body, self.page_url()),
            message_id=due.message.message_id,
            sender=server.sender,
            recipients=recipients,
            date=datetime.now(tz=UTC),
        )
        if self._mail_threads is None:  # its own threads: a stuck relay never holds the loop's default pool
            self._mail_threads = ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="flowtrack-smtp")
        return await mail.send(server, message, recipients, self.timeout, self._mail_threads)

    def _done(self, inflight: dict[str, asyncio.Task[None]], message_id: str, _task: asyncio.Task[None]) -> None:
        inflight.pop(message_id, None)
        self._wake.set()

    async def _send(self, client: httpx.AsyncClient, due: cwebhooks.Due) -> None:
        try:
            await self._attempt(client, due)
        except asyncio.CancelledError:
            raise
        except Exception:  # the attempt stays due: made again after a pause
            log.exception("webhook attempt of %s failed", due.message.message_id)
            await asyncio.sleep(1.0)

    async def _attempt(self, client: httpx.AsyncClient, due: cwebhooks.Due) -> None:
        message = due.message
        started = time.monotonic()
        try:
            # The whole attempt (look-up, connect, send, answer) within the
            # timeout: httpx's own is per read, which a dripping endpoint
            # could stretch past the claim.
            async with asyncio.timeout(self.timeout):
                status, error = await self._post(client, due)
        except TimeoutError:
            status, error = 0, f"no complete answer within {self.timeout:g} s"
        latency_us = int((time.monotonic() - started) * 1_000_000)
        self.attempts += 1
        await cwebhooks.record_attempt(
            self.store,
            message.message_id,
            status,
            latency_us,
            error,
            business_id=message.business_id,
            retry_base=self.retry_base,
            retry_window_us=self.retry_window_us,
            disable_after=self.disable_after,
        )


def _error(failure: Exception) -> str:
    return f"{type(failure).__name__}: {failure}"[:500] or type(failure).__name__
