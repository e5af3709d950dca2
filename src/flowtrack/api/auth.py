"""Authentication, scopes and concurrency limits, applied to every call by
the server's interceptor (api/gate.py).

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
import collections
import contextlib
import functools
import ipaddress
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, cast

from flowtrack.api.context import DEFAULT_BUSINESS
from flowtrack.domain import errors
from flowtrack.domain.keys import ALL_SCOPES, KeyRecord, Principal, Scope, key_id_of
from flowtrack.domain.times import now_us
from flowtrack.store import keys as stored_keys
from flowtrack.store.base import Store

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
}
_SERVICE_SCOPES = {"flowtrack.v1.IngestService": Scope.INGEST, "flowtrack.v1.ReportService": Scope.READ}

# Stop caching more keys than this (a flood of made-up key ids): start over.
_MAX_CACHED = 10_000
# Keys with open streams are looked up again at most this often, even with
# key_cache_seconds 0 (which checks every new call).
_MIN_RECHECK_SECONDS = 0.1
# last_used_at is written at most this often per key, in µs.
_TOUCH_EVERY_US = 60_000_000


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


def credentials_of(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """The API key a call carries, or None. Two different keys, or a malformed
    header, are UNAUTHENTICATED."""
    found: set[str] = set()
    for key, value in metadata or ():
        if key not in ("authorization", "x-api-key"):
            continue
        text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        text = text.strip()
        if key == "authorization":
            scheme, _, token = text.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise errors.Unauthenticated(
                    "the authorization header must be 'Bearer <API key>'", reason="MALFORMED_CREDENTIALS"
                )
            text = token.strip()
        found.add(text)
    if len(found) > 1:
        raise errors.Unauthenticated("the call carries more than one API key", reason="MALFORMED_CREDENTIALS")
    return found.pop() if found else None


@dataclass
class _Watched:
    """A key with open streams: set `revoked` ends them."""

    revoked: asyncio.Event = field(default_factory=asyncio.Event)
    streams: int = 0


# The authenticator and key of the current call (set by `authenticate` in the
# call's task, like the principal), for `ends_when_revoked`.
_caller: ContextVar[tuple[Authenticator, str] | None] = ContextVar("flowtrack_caller_key", default=None)


@dataclass
class _Cached:
    expires: float  # time.monotonic()
    record: KeyRecord | None


class Authenticator:
    """Checks API keys against the database, with a short cache."""

    def __init__(self, store: Store, *, loopback: bool, cache_seconds: float) -> None:
        self.store = store
        self.loopback = loopback
        self.cache_seconds = cache_seconds
        self._keys: dict[str, _Cached] = {}
        self._loading: dict[str, asyncio.Task[KeyRecord | None]] = {}
        self._keys_exist: bool | None = None
        self._keys_checked = 0.0
        self._background: set[asyncio.Task[None]] = set()
        self._watched: dict[str, _Watched] = {}
        self._rechecker: asyncio.Task[None] | None = None
        self.open_mode = False

    async def start(self) -> str:
        """Decide the mode; returns the line to log."""
        self._keys_exist = await self.store.read_keys(stored_keys.any_keys)
        self._keys_checked = time.monotonic()
        self.open_mode = self.loopback and not self._keys_exist
        if self.open_mode:
            return (
                "OPEN MODE: no API keys exist and the server listens on loopback, so calls without a key run as "
                f"business {DEFAULT_BUSINESS!r} with every scope; `flowtrack keys create` ends open mode"
            )
        if not self._keys_exist:
            return (
                "API keys required, but none exist yet: every call except health and reflection is refused "
                "until you run `flowtrack keys create`"
            )
        return "API keys required"

    async def _any_keys(self) -> bool:
        if self._keys_exist:
            return True  # keys are never deleted, only revoked
        if time.monotonic() - self._keys_checked > self.cache_seconds:
            self._keys_exist = await self.store.read_keys(stored_keys.any_keys)
            self._keys_checked = time.monotonic()
            if self._keys_exist and self.open_mode:
                self.open_mode = False
                log.warning("open mode ended: API keys exist now, every call needs one")
        return bool(self._keys_exist)

    async def authenticate(self, metadata: Sequence[tuple[str, Any]] | None) -> Principal:
        token = credentials_of(metadata)
        if token is None:
            if self.loopback and not await self._any_keys():
                return Principal(DEFAULT_BUSINESS, ALL_SCOPES, None)
            raise errors.Unauthenticated(
                "an API key is required: send 'authorization: Bearer <key>' or 'x-api-key: <key>'",
                reason="NO_CREDENTIALS",
            )
        key_id = key_id_of(token)
        record = await self._record(key_id) if key_id else None
        if record is None or not record.matches(token):
            raise errors.Unauthenticated("the API key is not valid", reason="INVALID_API_KEY")
        if record.revoked_at is not None:
            raise errors.Unauthenticated(f"the API key {record.key_id} was revoked", reason="REVOKED_API_KEY")
        _caller.set((self, record.key_id))
        return Principal(record.business_id, record.scopes, record.key_id)

    # -- open streams of a key ------------------------------------------------------
    @contextlib.contextmanager
    def watching(self, key_id: str) -> Any:
        """While the block runs, look `key_id` up every `cache_seconds`; the
        event it yields is set once the key is revoked (or gone)."""
        watched = self._watched.setdefault(key_id, _Watched())
        watched.streams += 1
        if self._rechecker is None or self._rechecker.done():
            self._rechecker = asyncio.get_running_loop().create_task(self._recheck())
        try:
            yield watched.revoked
        finally:
            watched.streams -= 1
            if watched.streams == 0 and self._watched.get(key_id) is watched:
                del self._watched[key_id]

    async def _recheck(self) -> None:
        """Look the watched keys up again, every `cache_seconds` (at least
        _MIN_RECHECK_SECONDS), while any are."""
        while self._watched:
            await asyncio.sleep(max(self.cache_seconds, _MIN_RECHECK_SECONDS))
            for key_id, watched in list(self._watched.items()):
                try:
                    record = await self.store.read_keys(stored_keys.get, key_id)
                except Exception as error:  # the database is busy or gone: try again next round
                    log.warning("cannot check API key %s again: %s", key_id, error)
                    continue
                self._keys[key_id] = _Cached(time.monotonic() + self.cache_seconds, record)
                if record is None or record.revoked_at is not None:
                    watched.revoked.set()

    async def _record(self, key_id: str) -> KeyRecord | None:
        cached = self._keys.get(key_id)
        if cached is not None and cached.expires > time.monotonic():
            return cached.record
        # One read per key id however many calls wait for it; the read runs in
        # its own task so that one caller giving up does not fail the others.
        task = self._loading.get(key_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(key_id))
            self._loading[key_id] = task
            task.add_done_callback(lambda _task: self._loading.pop(key_id, None))
        try:
            return await asyncio.shield(task)
        except Exception as error:
            log.warning("cannot check API key %s: %s", key_id, error)
            raise errors.Unavailable("cannot check the API key right now; retry", reason="AUTH_UNAVAILABLE") from error

    async def _load(self, key_id: str) -> KeyRecord | None:
        record = await self.store.read_keys(stored_keys.get, key_id)
        if len(self._keys) >= _MAX_CACHED:
            self._keys.clear()
        self._keys[key_id] = _Cached(time.monotonic() + self.cache_seconds, record)
        if record is not None and record.revoked_at is None:
            self._touch(record)
        return record

    def _touch(self, record: KeyRecord) -> None:
        """Record when the key was used (at most once a minute, in the background)."""
        now = now_us()
        if record.last_used_at is not None and now - record.last_used_at < _TOUCH_EVERY_US:
            return

        async def touch() -> None:
            try:
                await self.store.write(lambda tx: stored_keys.touch(tx.conn, record.key_id, tx.now_us))
            except Exception:  # shutting down, or the database is busy: last_used_at is best effort
                log.debug("could not record last use of key %s", record.key_id, exc_info=True)

        task = asyncio.get_running_loop().create_task(touch())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        if self._rechecker is not None:
            self._rechecker.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


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


class StreamQuota:
    """Open server streams per API key (per business for calls without a
    key, in open mode), over gRPC and the HTTP listener's live stats
    together, so that one key cannot take every stream the server holds."""

    def __init__(self, limit: int) -> None:
        self.limit = limit  # 0: no cap
        self.open: collections.Counter[str] = collections.Counter()

    @staticmethod
    def holder(principal: Principal) -> str:
        if principal.key_id is not None:
            return f"api_key:{principal.key_id}"
        return f"business:{principal.business_id}"

    def take(self, principal: Principal) -> Callable[..., None]:
        """Count one more open stream of `principal`'s key; returns the
        function that gives it back (once, however often it is called).
        QuotaExceeded (RESOURCE_EXHAUSTED, reason TOO_MANY_STREAMS) if the
        key holds `limit` already."""
        holder = self.holder(principal)
        if self.limit and self.open[holder] >= self.limit:
            whose = f"API key {principal.key_id}" if principal.key_id else f"business {principal.business_id!r}"
            raise errors.QuotaExceeded(
                f"the {whose} holds {self.limit} open streams, the most one key may hold"
                " (--max-streams-per-key): close one first",
                subject=holder,
                description=f"open streams per API key: at most {self.limit}",
                reason="TOO_MANY_STREAMS",
            )
        self.open[holder] += 1
        given_back = False

        def give_back(*_: object) -> None:
            nonlocal given_back
            if given_back:
                return
            given_back = True
            self.open[holder] -= 1
            if self.open[holder] <= 0:
                del self.open[holder]

        return give_back

    def take_for_task(self, principal: Principal) -> None:
        """`take`, given back when the running task ends (a gRPC call's task)."""
        give_back = self.take(principal)
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - grpc.aio always runs interceptors in a task
            give_back()
            return
        task.add_done_callback(give_back)


def ends_when_revoked(method: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    """A server-streaming servicer method that ends with UNAUTHENTICATED
    (REVOKED_API_KEY) once the caller's API key is revoked, within about the
    key cache time (see `Authenticator.watching`). Calls without a key (open
    mode) run as they are. Put it under `handle_errors`."""

    @functools.wraps(method)
    async def stream(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
        caller = _caller.get()
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
