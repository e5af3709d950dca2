"""Calling the gRPC servicers in-process, as the caller of an HTTP request.

The HTTP handlers answer with the very response messages of the gRPC API,
produced by the same servicer methods: the request is checked against the
scope its RPC needs (api/auth.required_scope, as the gRPC gate does), the
caller's principal is bound for `business_of(context)`, and the servicer
method runs with a `LocalContext` standing in for grpc's ServicerContext.
A domain error becomes the same google.rpc.Status as over gRPC (the
servicer's `handle_errors` aborts with it), raised here as `CallError`.

Why in-process rather than a gRPC channel to our own port: no second TLS
client (with mutual TLS the server has no client certificate to present),
no serialization round trip, and streams (exports, live stats) end as soon
as the HTTP client goes away (`LocalContext.finish` interrupts their
snapshot like a cancelled RPC).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.rpc import status_pb2

from flowtrack.api.auth import required_scope
from flowtrack.api.context import reset_principal, set_principal
from flowtrack.api.texts import refuse_nul
from flowtrack.domain import errors
from flowtrack.domain.keys import Principal, allows

R = TypeVar("R")

# The HTTP status of each gRPC code (as Google's HTTP/JSON mapping does).
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class CallError(Exception):
    """An in-process call ended with a non-OK status."""

    def __init__(self, code: grpc.StatusCode, message: str, details: status_pb2.Status | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    @classmethod
    def of(cls, error: errors.FlowtrackError) -> CallError:
        from flowtrack.api.errors import to_status

        return cls.from_status(to_status(error))

    @classmethod
    def from_status(cls, status: grpc.Status) -> CallError:
        rich = None
        for key, value in status.trailing_metadata or ():
            if key == "grpc-status-details-bin":
                rich = status_pb2.Status.FromString(value)
        return cls(status.code, status.details, rich)

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)


class LocalContext:
    """What the servicers use of grpc.aio.ServicerContext, for an in-process call."""

    def __init__(self) -> None:
        self._done = False
        self._callbacks: list[Callable[[Any], None]] = []

    def done(self) -> bool:
        return self._done

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._done:
            callback(self)
        else:
            self._callbacks.append(callback)

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def time_remaining(self) -> None:
        return None

    async def abort_with_status(self, status: grpc.Status) -> None:
        raise CallError.from_status(status)

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        raise CallError(code, details)

    def finish(self) -> None:
        """The call is over (answered, failed, or its HTTP client left)."""
        if self._done:
            return
        self._done = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)


def _admit(principal: Principal, rpc: str) -> None:
    scope = required_scope(rpc)
    if not allows(principal.scopes, scope):
        have = ", ".join(sorted(s.value for s in principal.scopes)) or "none"
        need = scope.value if scope is not None else "none"
        raise CallError.of(
            errors.PermissionDenied(
                f"{rpc} needs an API key with scope {need} (or admin); this key has: {have}",
                reason="MISSING_SCOPE",
            )
        )


def _texts(request: Any) -> None:
    """The rule every request's texts obey (no NUL: domain/text.py), as the gRPC gate applies it."""
    try:
        refuse_nul(request)
    except errors.InvalidArgument as error:
        raise CallError.of(error) from error


async def unary(principal: Principal, rpc: str, method: Callable[[Any, Any], Awaitable[R]], request: Any) -> R:
    """`method(request)` as `principal`; `rpc` is its full name (for the scope)."""
    _admit(principal, rpc)
    _texts(request)
    context = LocalContext()
    token = set_principal(principal)
    try:
        return await method(request, context)
    except errors.FlowtrackError as error:  # a method without handle_errors
        raise CallError.of(error) from error
    finally:
        context.finish()
        with contextlib.suppress(ValueError):  # bound in another context: nothing to undo here
            reset_principal(token)


async def stream(
    principal: Principal, rpc: str, method: Callable[[Any, Any], AsyncIterator[R]], request: Any
) -> AsyncGenerator[R, None]:
    """The messages of server stream `method(request)` as `principal`. Closing
    the iterator early ends the call as a cancelled RPC would. The principal
    stays bound in the task that iterates (each HTTP request has its own)."""
    _admit(principal, rpc)
    _texts(request)
    context = LocalContext()
    set_principal(principal)
    replies = method(request, context)
    try:
        async for reply in replies:
            yield reply
    finally:
        context.finish()
        await replies.aclose()  # type: ignore[attr-defined]


async def first(replies: AsyncGenerator[R, None]) -> R:
    """The first message of a stream (which always sends one, or fails); the
    stream is closed after it."""
    try:
        async for reply in replies:
            return reply
    finally:
        await replies.aclose()
    raise CallError(grpc.StatusCode.INTERNAL, "the stream ended without a message")
