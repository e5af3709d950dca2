"""Scopes and concurrency limits of the gRPC face, applied to every call by
the server's interceptor (api/gate.py) with the core's key checks
(core/auth.py: `Authenticator`, `StreamQuota`).

For each call the interceptor

1. lets health and reflection through without a key (they show no data),
   counted against their own small concurrency cap;
2. reads the API key from `authorization: Bearer KEY` or `x-api-key: KEY`,
   checks it (constant time, see domain/keys.py) and the scope the RPC needs
   (`SCOPES`); failures end the call with UNAUTHENTICATED or
   PERMISSION_DENIED and an ErrorInfo reason, before the request is even
   parsed;
3. counts the call against `max_concurrent_rpcs` (over it: RESOURCE_EXHAUSTED
   at once, reason TOO_MANY_CONCURRENT_RPCS);
4. runs the servicer method with the caller bound for `business_of(context)`.

Open mode: while the api_keys table is empty *and* the server listens on a
loopback address, a call without a key runs as business "default" with
every scope. The first key created (even if later revoked) ends open mode
within `key_cache_seconds`, without a restart.

Checked keys are cached for `key_cache_seconds` (default 5 s): that is the
longest a revoked key still opens new calls. Key look-ups run on the store's
own small key pool (`Store.read_keys`), never behind long report reads.

Open read streams (WatchCampaignStats, SubscribeEvents, the report streams
and ExportReport: `ends_when_revoked`) end with UNAUTHENTICATED, reason
REVOKED_API_KEY, within about `key_cache_seconds` of their key's
revocation: while such streams are open, their keys are looked up again
every `key_cache_seconds`. A unary call or an ingest stream authorised before
the revocation runs to its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, cast

from flowtrack.core.auth import current_key
from flowtrack.domain import errors
from flowtrack.domain.keys import Scope

log = logging.getLogger(__name__)

# Services anyone may call: they hold no business data.
PUBLIC_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)

# The scope each flowtrack RPC needs. A method of a flowtrack service that is
# not listed needs `admin` (fail closed).
SCOPES: dict[str, Scope] = {
    "/flowtrack.v1.IngestService/RecordStatusEvent": Scope.INGEST,
    "/flowtrack.v1.IngestService/RecordClickEvent": Scope.INGEST,
    "/flowtrack.v1.IngestService/RecordEngagementEvent": Scope.INGEST,
    "/flowtrack.v1.IngestService/StreamEvents": Scope.INGEST,
    "/flowtrack.v1.CampaignService/GetCampaign": Scope.READ,
    "/flowtrack.v1.CampaignService/ListCampaigns": Scope.READ,
    "/flowtrack.v1.CampaignService/CreateCampaign": Scope.ADMIN,
    "/flowtrack.v1.CampaignService/UpdateCampaign": Scope.ADMIN,
    "/flowtrack.v1.CampaignService/DeleteCampaign": Scope.ADMIN,
    "/flowtrack.v1.CampaignService/AddRecipients": Scope.ADMIN,
    # Reports delivered: reading schedules and runs is `read`; every change,
    # and all of WebhookService (its endpoints hold signing secrets), `admin`.
    "/flowtrack.v1.ReportScheduleService/GetReportSchedule": Scope.READ,
    "/flowtrack.v1.ReportScheduleService/ListReportSchedules": Scope.READ,
    "/flowtrack.v1.ReportScheduleService/ListReports": Scope.READ,
    "/flowtrack.v1.ReportScheduleService/GetReportRun": Scope.READ,
    "/flowtrack.v1.ReportScheduleService/DownloadReportRun": Scope.READ,
    # A business's settings: reading is `read`, changing `admin`.
    "/flowtrack.v1.SettingsService/GetSettings": Scope.READ,
    "/flowtrack.v1.SettingsService/UpdateSettings": Scope.ADMIN,
    # Retention: reading it is `read`; setting and applying it `admin` (the rest of the service).
    "/flowtrack.v1.RetentionService/GetRetention": Scope.READ,
    # Privacy: erasing is `admin`; the record of erasures is `read`.
    "/flowtrack.v1.PrivacyService/EraseRecipient": Scope.ADMIN,
    "/flowtrack.v1.PrivacyService/ListErasures": Scope.READ,
}
_SERVICE_SCOPES = {"flowtrack.v1.IngestService": Scope.INGEST, "flowtrack.v1.ReportService": Scope.READ}


def service_of(method: str) -> str:
    """`/pkg.Service/Method` -> `pkg.Service`."""
    return method.lstrip("/").split("/", 1)[0]


def required_scope(method: str) -> Scope | None:
    """The scope `method` needs; None for the public services."""
    service = service_of(method)
    if service in PUBLIC_SERVICES:
        return None
    return SCOPES.get(method) or _SERVICE_SCOPES.get(service, Scope.ADMIN)


def is_loopback(listen: str) -> bool:
    """Whether a listen address (HOST:PORT) only accepts connections from this machine."""
    if listen.startswith(("unix:", "unix-abstract:", "vsock:")):
        return False  # not a loopback IP: keys are required (file permissions are not checked)
    for prefix in ("ipv4:", "ipv6:", "dns:"):
        listen = listen.removeprefix(prefix)
    host = listen.rsplit(":", 1)[0] if ":" in listen else listen
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Limiter:
    """Counts running RPCs in two pools: flowtrack's and health/reflection's."""

    def __init__(self, max_rpcs: int, max_public_rpcs: int) -> None:
        self.limits = {False: max_rpcs, True: max_public_rpcs}
        self.running = {False: 0, True: 0}

    def enter(self, public: bool) -> bool:
        """Count the current call until its task ends; False if its pool is full.

        grpc.aio runs the interceptor in the task that then runs the whole
        RPC, so the count is released when that task is done, however the RPC
        ends (even if the handler never starts)."""
        limit = self.limits[public]
        if limit and self.running[public] >= limit:
            return False
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - grpc.aio always runs interceptors in a task
            return True
        self.running[public] += 1

        def release(_task: object) -> None:
            self.running[public] -= 1

        task.add_done_callback(release)
        return True


def ends_when_revoked(method: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    """A server-streaming servicer method that ends with UNAUTHENTICATED
    (REVOKED_API_KEY) once the caller's API key is revoked, within about the
    key cache time (see `Authenticator.watching`). Calls without a key (open
    mode) run as they are. Put it under `handle_errors`."""

    @functools.wraps(method)
    async def stream(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
        caller = current_key()
        replies = cast(AsyncGenerator[Any, None], method(self, request, context))
        if caller is None:
            async for reply in replies:
                yield reply
            return
        authenticator, key_id = caller
        with authenticator.watching(key_id) as revoked:
            waiting = asyncio.ensure_future(revoked.wait())
            following: asyncio.Future[Any] | None = None
            try:
                while True:
                    following = asyncio.ensure_future(replies.__anext__())
                    await asyncio.wait({following, waiting}, return_when=asyncio.FIRST_COMPLETED)
                    if not following.done():
                        raise errors.Unauthenticated(
                            f"the API key {key_id} was revoked while this stream was open", reason="REVOKED_API_KEY"
                        )
                    try:
                        reply = following.result()
                    except StopAsyncIteration:
                        return
                    following = None
                    yield reply
            finally:
                waiting.cancel()
                if following is not None and not following.done():
                    following.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await following
                await replies.aclose()

    return stream
