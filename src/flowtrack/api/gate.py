"""The one server interceptor: every call passes through `Gate` before its servicer.

Per call, it does only what has to be done per call: check the caller's API
key and scope (api/auth.py), count a server stream against its key's
quota (`StreamQuota`), count the call against its concurrency pool, and
bind the caller for `business_of(context)`. The method handler it hands to
grpc was prepared once per method, the first time the method was called:

- a request that does not parse is INVALID_ARGUMENT, not grpc's UNKNOWN
  (`guard_decoding`);
- long-lived streams end promptly when the server starts stopping (`Drain`);
- with metrics on (flowtrack/metrics.py), the call is counted and timed
  (`instrument`), with its label children resolved here, once.

(These were three interceptors, each wrapping the handler again on every
call; on a unary call that wrapping cost more event-loop time than the
servicer itself: see docs/ingest-benchmarks.md.)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from flowtrack.api.auth import Limiter, required_scope
from flowtrack.api.context import set_principal
from flowtrack.api.errors import to_status
from flowtrack.core.auth import Authenticator, StreamQuota
from flowtrack.domain import errors
from flowtrack.domain.keys import Scope, allows
from flowtrack.metrics import Metrics
from flowtrack.wire.texts import may_hold_nul, refuse_nul

log = logging.getLogger("flowtrack")

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


class Drain:
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

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """`handler` (of `method`), ended early on shutdown if it is a long-lived stream."""
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


def guard_decoding(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """`handler`, answering a request whose bytes do not parse as its message
    (corrupt wire format, a string that is not UTF-8) with INVALID_ARGUMENT,
    reason UNDECODABLE_REQUEST.

    grpc.aio answers a deserializer's exception with UNKNOWN; here the
    deserializer returns a marker instead, and the handler (or, for client
    streams, the request iterator) ends the call with the proper status
    before the servicer sees it."""
    if handler.request_deserializer is None:
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
            message = deserializer(data)
        except Exception as error:  # google.protobuf.message.DecodeError, and whatever else parsing raises
            return _Undecodable(error)
        if may_hold_nul(data):  # no text may hold a NUL (domain/text.py)
            try:
                refuse_nul(message)
            except errors.InvalidArgument as refused:
                return _Undecodable(refused)
        return message

    return deserialize


def _undecodable(item: _Undecodable) -> errors.InvalidArgument:
    if isinstance(item.error, errors.InvalidArgument):  # a rule every request's texts obey
        return item.error
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

    if not request_streaming:  # the common case, kept to one coroutine per call

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Undecodable):
                await context.abort_with_status(to_status(_undecodable(request)))
            return await behaviour(request, context)

        return unary

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behaviour(await first(request, context), context)
        except errors.InvalidArgument as error:
            await context.abort_with_status(to_status(error))

    return call


def _grpc_type(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming:
        return "bidi_stream" if handler.response_streaming else "client_stream"
    return "server_stream" if handler.response_streaming else "unary"


def _code_name(context: grpc.aio.ServicerContext) -> str:
    """The status code an aborted (or failed) call ends with."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if isinstance(code, int):  # grpc.aio keeps the number of the code it was aborted with
        return next((c.name for c in grpc.StatusCode if c.value[0] == code), "UNKNOWN")
    return "UNKNOWN"


class _Labelled:
    """The metric children of one method, resolved once."""

    def __init__(self, metrics: Metrics, method: str, handler: grpc.RpcMethodHandler) -> None:
        service, _, name = method.lstrip("/").partition("/")
        labels = (_grpc_type(handler), service, name)
        self.labels = labels
        self.metrics = metrics
        self.started = metrics.started.labels(*labels)
        self.handling = metrics.handling.labels(*labels)
        self.received = metrics.received.labels(*labels)
        self.sent = metrics.sent.labels(*labels)
        self.open = metrics.streams.labels(service, name)
        self._handled: dict[str, Any] = {}

    def handled(self, code: str) -> Any:
        child = self._handled.get(code)
        if child is None:
            child = self._handled[code] = self.metrics.handled.labels(*self.labels, code)
        return child

    def refused(self, status: grpc.Status) -> None:
        """A call the gate ended before its handler ran (key, scope, concurrency)."""
        self.started.inc()
        self.handled(status.code.name).inc()
        self.handling.observe(0.0)


def instrument(metrics: Metrics, method: str, handler: grpc.RpcMethodHandler) -> tuple[grpc.RpcMethodHandler, Any]:
    """`handler`, counted and timed in the gRPC server metrics; and the
    method's labelled children (for calls refused before the handler).

    Per call this costs a few counter increments and one histogram
    observation; stream messages are counted one by one (a report page, an
    ingest batch: never a row)."""
    m = _Labelled(metrics, method, handler)
    kind = (
        ("stream" if handler.request_streaming else "unary")
        + "_"
        + ("stream" if handler.response_streaming else "unary")
    )
    behaviour = getattr(handler, kind)
    streaming = handler.request_streaming or handler.response_streaming

    def finish(start: float, code: str) -> None:
        m.handled(code).inc()
        m.handling.observe(time.perf_counter() - start)
        if streaming:
            m.open.dec()

    async def counted(iterator: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for item in iterator:
            m.received.inc()
            yield item

    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            m.started.inc()
            m.open.inc()
            start = time.perf_counter()
            code = "OK"
            try:
                async for reply in behaviour(counted(request) if handler.request_streaming else request, context):
                    m.sent.inc()
                    yield reply
            except (asyncio.CancelledError, GeneratorExit):
                code = "CANCELLED"
                raise
            except BaseException:
                code = _code_name(context)
                raise
            finally:
                finish(start, code)

        return handler._replace(**{kind: stream}), m

    if inspect.iscoroutinefunction(behaviour):

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            m.started.inc()
            if streaming:
                m.open.inc()
            start = time.perf_counter()
            code = "OK"
            try:
                return await behaviour(counted(request) if handler.request_streaming else request, context)
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except BaseException:
                code = _code_name(context)
                raise
            finally:
                finish(start, code)

        return handler._replace(**{kind: call}), m
    return handler, m


class Gate(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(
        self,
        authenticator: Authenticator,
        limiter: Limiter,
        metrics: Metrics | None = None,
        streams: StreamQuota | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.limiter = limiter
        self.drain = Drain()
        self.metrics = metrics
        # Open server streams per key (shared with the HTTP listener's live stats).
        self.streams = streams if streams is not None else StreamQuota(0)
        # method -> (prepared handler, scope it needs or None for public services,
        # its metric children or None, whether it is a server stream)
        self._prepared: dict[str, tuple[grpc.RpcMethodHandler, Scope | None, Any, bool]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        prepared = self._prepared.get(method)
        if prepared is None:
            handler = await continuation(handler_call_details)
            if handler is None:  # unknown method: UNIMPLEMENTED, nothing to protect (and nothing cached)
                return None
            handler = self.drain.wrap(method, guard_decoding(handler))
            labelled = None
            if self.metrics is not None:
                handler, labelled = instrument(self.metrics, method, handler)
            server_stream = handler.response_streaming and not handler.request_streaming
            prepared = self._prepared[method] = (handler, required_scope(method), labelled, server_stream)
        handler, scope, labelled, server_stream = prepared
        if scope is None:
            if not self.limiter.enter(public=True):
                return _refuse(handler, _too_many("health and reflection"), labelled)
            return handler
        try:
            principal = await self.authenticator.authenticate(handler_call_details.invocation_metadata)
            if not allows(principal.scopes, scope):
                have = ", ".join(sorted(principal.scopes)) or "none"
                raise errors.PermissionDenied(
                    f"{method} needs an API key with scope {scope.value} (or admin); this key has: {have}",
                    reason="MISSING_SCOPE",
                )
            if server_stream:  # held until the call's task ends, however it ends
                self.streams.take_for_task(principal)
        except errors.FlowtrackError as error:
            log.info("refused %s: %s (%s)", method, error.reason, error.message)
            return _refuse(handler, error, labelled)
        if not self.limiter.enter(public=False):
            return _refuse(handler, _too_many("flowtrack"), labelled)
        # grpc.aio runs the interceptor and then the handler in the call's own
        # task: the binding holds for the whole call and for the tasks it starts.
        set_principal(principal)
        return handler


def _too_many(pool: str) -> errors.ResourceExhausted:
    return errors.ResourceExhausted(
        f"too many concurrent {pool} RPCs on this server; retry with backoff", reason="TOO_MANY_CONCURRENT_RPCS"
    )


def _refuse(
    handler: grpc.RpcMethodHandler, error: errors.FlowtrackError, labelled: Any = None
) -> grpc.RpcMethodHandler:
    """A handler of the same shape that ends the call with `error`'s status
    without parsing the request (counted as handled with that code)."""
    status = to_status(error)
    if labelled is not None:
        labelled.refused(status)

    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort_with_status(status)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)
