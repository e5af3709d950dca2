"""Builds the gRPC server: services, reflection, health, graceful stop.

`create_server(settings)` is shared by `flowtrack serve` and the tests: it
opens the store, registers every service, binds the address (port 0 picks a
free port) and returns the server with the port it got.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from flowtrack.api.auth import Authenticator, AuthInterceptor, Limiter, is_loopback
from flowtrack.api.errors import to_status
from flowtrack.api.reflection import add_reflection
from flowtrack.config import Settings
from flowtrack.domain import errors
from flowtrack.store.store import Store
from flowtrack.v1 import (
    campaign_pb2,
    campaign_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    report_pb2,
    report_pb2_grpc,
)

log = logging.getLogger("flowtrack")

SERVICE_NAMES = (
    campaign_pb2.DESCRIPTOR.services_by_name["CampaignService"].full_name,
    ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name,
    report_pb2.DESCRIPTOR.services_by_name["ReportService"].full_name,
)


# Streams that only end when the client cancels: on shutdown they end at once
# (UNAVAILABLE) instead of holding the drain for the whole grace period.
ENDLESS_STREAMS = frozenset(
    {
        "/flowtrack.v1.ReportService/WatchCampaignStats",
        "/flowtrack.v1.ReportService/SubscribeEvents",
        "/grpc.health.v1.Health/Watch",
    }
)
# Bidirectional ingest: on shutdown the server stops reading new batches,
# acknowledges the ones it has (after their commit), then ends the stream.
INGEST_STREAMS = frozenset({"/flowtrack.v1.IngestService/StreamEvents"})
SHUTTING_DOWN = "the server is shutting down: reconnect (to another server, or after the restart)"


class StartupError(Exception):
    """A problem that stops the server from starting, said in one line."""


class Drain(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Ends long-lived streams promptly once the server starts stopping.

    Without it, `server.stop(grace)` waits the whole grace for streams that
    never end by themselves (a stats watch, an event subscription, a flow
    engine's StreamEvents fed without pause) and then cuts them, dropping the
    acks of batches already read. With it, on `start()`:

    - endless streams (ENDLESS_STREAMS) end at once with UNAVAILABLE;
    - StreamEvents stops reading, answers every batch it has read (after
      commit, as always), then ends with UNAVAILABLE, whose message says that
      every acknowledged batch is stored and the rest must be resent;
    - everything else (unary calls, finite report streams) finishes within
      the grace as before.
    """

    def __init__(self) -> None:
        self.stopping = asyncio.Event()

    def start(self) -> None:
        self.stopping.set()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        if method in INGEST_STREAMS and handler.request_streaming and handler.response_streaming:
            return handler._replace(stream_stream=self._ingest(handler.stream_stream))
        if method in ENDLESS_STREAMS and handler.response_streaming and not handler.request_streaming:
            return handler._replace(unary_stream=self._endless(handler.unary_stream))
        return handler

    async def _until_stopping(self, pending: asyncio.Future[Any]) -> bool:
        """Wait for `pending` or for the drain; True if `pending` is done."""
        if not pending.done():
            stop = asyncio.ensure_future(self.stopping.wait())
            try:
                await asyncio.wait({pending, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
        return pending.done()

    async def _items(self, iterator: AsyncIterator[Any], cut: list[bool]) -> AsyncIterator[Any]:
        """The items of `iterator` until it ends, or until the drain starts
        (then `cut` gets True). Whatever way it ends, no read of `iterator`
        is left running."""
        following: asyncio.Future[Any] | None = None
        try:
            while not self.stopping.is_set():
                following = asyncio.ensure_future(iterator.__anext__())
                if not await self._until_stopping(following):
                    break
                try:
                    item = following.result()
                except StopAsyncIteration:
                    return
                following = None
                yield item
            cut.append(True)
        finally:
            if following is not None and not following.done():
                following.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await following

    def _endless(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        if not inspect.isasyncgenfunction(behaviour):  # writes with context.write (grpc's health Watch)

            async def writer(request: Any, context: grpc.aio.ServicerContext) -> None:
                running = asyncio.ensure_future(behaviour(request, context))
                try:
                    if await self._until_stopping(running):
                        running.result()
                        return
                finally:
                    if not running.done():
                        running.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await running
                await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)

            return writer

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            cut: list[bool] = []
            replies = behaviour(request, context)
            try:
                async for reply in self._items(replies.__aiter__(), cut):
                    yield reply
            finally:
                await replies.aclose()
            if cut:
                await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)

        return stream

    def _ingest(self, behaviour: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def stream(request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            cut: list[bool] = []
            async for reply in behaviour(self._items(request_iterator.__aiter__(), cut), context):
                yield reply
            if cut:
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    f"{SHUTTING_DOWN}; every acknowledged batch is stored, resend the batches sent after the last ack",
                )

        return stream


class _Undecodable:
    """What a request that is not a valid protobuf message deserializes to."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class DecodeGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """A request whose bytes do not parse as its message (corrupt wire format,
    a string that is not UTF-8) is INVALID_ARGUMENT, reason UNDECODABLE_REQUEST.

    grpc.aio answers a deserializer's exception with UNKNOWN; here the
    deserializer returns a marker instead, and the handler (or, for client
    streams, the request iterator) ends the call with the proper status
    before the servicer sees it."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        kind = (
            ("stream" if handler.request_streaming else "unary")
            + "_"
            + ("stream" if handler.response_streaming else "unary")
        )
        behaviour = getattr(handler, kind)
        if not (inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour)):
            return handler
        return handler._replace(
            request_deserializer=_lenient(handler.request_deserializer),
            **{kind: _checked(behaviour, handler.request_streaming)},
        )


def _lenient(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as error:  # google.protobuf.message.DecodeError, and whatever else parsing raises
            return _Undecodable(error)

    return deserialize


def _undecodable(item: _Undecodable) -> errors.InvalidArgument:
    text = f"the request is not a valid protobuf message: {item.error}"
    return errors.InvalidArgument([errors.Violation("", text, "UNDECODABLE_REQUEST")], message=text)


def _checked(behaviour: Callable[..., Any], request_streaming: bool) -> Callable[..., Any]:
    """`behaviour`, refusing an undecodable request. A client stream's bad
    message is raised (as InvalidArgument) where the servicer reads it, and the
    call is ended here, in the handler's own task: aborting from whichever task
    reads the requests could collide with a reply being sent."""

    async def requests(iterator: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for item in iterator:
            if isinstance(item, _Undecodable):
                raise _undecodable(item)
            yield item

    async def first(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request_streaming:
            return requests(request)
        if isinstance(request, _Undecodable):
            await context.abort_with_status(to_status(_undecodable(request)))
        return request

    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for reply in behaviour(await first(request, context), context):
                    yield reply
            except errors.InvalidArgument as error:
                await context.abort_with_status(to_status(error))

        return stream

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behaviour(await first(request, context), context)
        except errors.InvalidArgument as error:
            await context.abort_with_status(to_status(error))

    return call


@dataclass
class Running:
    server: grpc.aio.Server
    port: int
    store: Store
    health: health_aio.HealthServicer
    settings: Settings
    authenticator: Authenticator
    drain: Drain

    async def stop(self, grace: float | None = None) -> None:
        """Drain: health NOT_SERVING, end endless streams and stop reading
        ingest streams (see Drain), refuse new RPCs, let in-flight ones finish
        within `grace` seconds, then commit what is queued and close the store."""
        await self.health.enter_graceful_shutdown()
        await asyncio.sleep(0.05)  # let health watchers send NOT_SERVING before their stream ends
        self.drain.start()
        await self.server.stop(self.settings.grace if grace is None else grace)
        await self.authenticator.close()
        await asyncio.to_thread(self.store.close)


async def create_server(settings: Settings) -> Running:
    # Imported here so that a servicer module may import server-level names.
    from flowtrack.api.campaigns import CampaignServicer
    from flowtrack.api.ingest import IngestServicer
    from flowtrack.api.reports import ReportServicer

    try:
        store = Store(
            settings.database,
            durability=settings.durability,
            max_commit_rows=settings.max_commit_rows,
        )
    except (OSError, Exception) as error:  # sqlite3.Error included
        raise StartupError(f"cannot open database {settings.database}: {error}") from error
    try:
        credentials = server_credentials(settings)
    except (OSError, ValueError) as error:
        store.close()
        raise StartupError(str(error)) from error
    authenticator = Authenticator(
        store, loopback=is_loopback(settings.listen), cache_seconds=settings.key_cache_seconds
    )
    limiter = Limiter(settings.max_concurrent_rpcs, settings.max_concurrent_health_rpcs)
    drain = Drain()
    server = grpc.aio.server(
        interceptors=[AuthInterceptor(authenticator, limiter), drain, DecodeGuard()],
        options=server_options(settings),
        maximum_concurrent_rpcs=grpc_concurrency_cap(settings),
    )
    campaign_pb2_grpc.add_CampaignServiceServicer_to_server(CampaignServicer(store, settings), server)
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(IngestServicer(store, settings), server)
    report_pb2_grpc.add_ReportServiceServicer_to_server(ReportServicer(store, settings), server)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    add_reflection((*SERVICE_NAMES, health.SERVICE_NAME), server)
    try:
        if credentials is None:
            port = server.add_insecure_port(settings.listen)
        else:
            port = server.add_secure_port(settings.listen, credentials)
    except RuntimeError as error:
        store.close()
        raise StartupError(f"cannot listen on {settings.listen}: {error}") from error
    if port == 0:
        store.close()
        raise StartupError(f"cannot listen on {settings.listen}: address in use or not available")
    mode = await authenticator.start()
    await server.start()
    for name in (*SERVICE_NAMES, ""):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    (log.warning if authenticator.open_mode else log.info)("%s", mode)
    if credentials is None and not authenticator.loopback:
        log.warning("listening on %s without TLS: API keys and data cross the network in clear", settings.listen)
    return Running(server, port, store, health_servicer, settings, authenticator, drain)


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """Channel arguments of the server: message size and keepalive enforcement."""

    def ms(seconds: float) -> int:
        return int(seconds * 1000)

    options = [
        ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.so_reuseport", 0),
        # The server's own pings: find dead peers of idle connections.
        ("grpc.keepalive_time_ms", ms(settings.keepalive_time)),
        ("grpc.keepalive_timeout_ms", ms(settings.keepalive_timeout)),
        # Client pings: allowed without calls in flight, but no more often than
        # min_ping_interval; after max_ping_strikes bad pings, GOAWAY.
        ("grpc.keepalive_permit_without_calls", 1),
        # (GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS)
        ("grpc.http2.min_ping_interval_without_data_ms", ms(settings.min_ping_interval)),
        ("grpc.http2.max_ping_strikes", 2),
    ]
    if settings.max_connection_idle > 0:
        options.append(("grpc.max_connection_idle_ms", ms(settings.max_connection_idle)))
    if settings.max_connection_age > 0:
        options.append(("grpc.max_connection_age_ms", ms(settings.max_connection_age)))
        options.append(("grpc.max_connection_age_grace_ms", ms(settings.grace)))
    return options


def grpc_concurrency_cap(settings: Settings) -> int | None:
    """grpc's own cap on running RPCs, a backstop above flowtrack's two pools.

    grpc.aio counts every RPC, health checks included, and refuses the ones
    over its cap after the interceptors ran. The interceptor's pools keep
    flowtrack RPCs under max_concurrent_rpcs and health/reflection under
    max_concurrent_health_rpcs, so this cap (their sum plus room for calls
    being refused) is only reached by calls that are being turned away."""
    if not settings.max_concurrent_rpcs:
        return None
    return settings.max_concurrent_rpcs + settings.max_concurrent_health_rpcs + 100


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from the PEM files of the settings (None: plaintext).
    With tls_client_ca, clients must present a certificate signed by it."""
    if not settings.tls_cert and not settings.tls_key:
        if settings.tls_client_ca:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (settings.tls_cert and settings.tls_key):
        raise ValueError("TLS needs both --tls-cert and --tls-key")

    def read(path: str, what: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as error:
            raise OSError(f"cannot read {what} {path}: {error.strerror or error}") from error

    cert = read(settings.tls_cert, "TLS certificate")
    key = read(settings.tls_key, "TLS key")
    client_ca = read(settings.tls_client_ca, "TLS client CA") if settings.tls_client_ca else None
    for name, data in (("certificate", cert), ("key", key), ("client CA", client_ca)):
        if data is not None and b"-----BEGIN" not in data:
            raise ValueError(f"TLS {name} file is not PEM")
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


async def serve(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM, then stop gracefully."""
    running = await create_server(settings)
    host = settings.listen.rsplit(":", 1)[0]
    log.info(
        "flowtrack serving on %s:%d, database %s (durability %s)",
        host,
        running.port,
        settings.database,
        settings.durability,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: draining for up to %.1f s", settings.grace)
    await running.stop()
    log.info("stopped")
