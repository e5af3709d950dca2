"""The one place where domain errors become gRPC statuses.

Each domain error maps to a canonical code and a google.rpc.Status whose
details hold one ErrorInfo (UPPER_SNAKE reason, domain "flowtrack") and, for
INVALID_ARGUMENT, a BadRequest with the field violations; for a quota used up
(QuotaExceeded, RESOURCE_EXHAUSTED), a QuotaFailure naming whose and which.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from flowtrack.domain import errors

log = logging.getLogger(__name__)

ERROR_DOMAIN = "flowtrack"

_CODES: list[tuple[type[errors.FlowtrackError], int]] = [
    (errors.InvalidArgument, code_pb2.INVALID_ARGUMENT),
    (errors.NotFound, code_pb2.NOT_FOUND),
    (errors.AlreadyExists, code_pb2.ALREADY_EXISTS),
    (errors.FailedPrecondition, code_pb2.FAILED_PRECONDITION),
    (errors.ResourceExhausted, code_pb2.RESOURCE_EXHAUSTED),
    (errors.Unavailable, code_pb2.UNAVAILABLE),
    (errors.Unauthenticated, code_pb2.UNAUTHENTICATED),
    (errors.PermissionDenied, code_pb2.PERMISSION_DENIED),
]


def to_status(error: errors.FlowtrackError) -> grpc.Status:
    """The gRPC status (code, message, rich details) of a domain error."""
    code = next((c for kind, c in _CODES if isinstance(error, kind)), code_pb2.FAILED_PRECONDITION)
    details = []
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN)
    details.append(_pack(info))
    if isinstance(error, errors.InvalidArgument):
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description, reason=v.reason)
                for v in error.violations
            ]
        )
        details.append(_pack(bad))
    if isinstance(error, errors.QuotaExceeded):
        quota = error_details_pb2.QuotaFailure(
            violations=[error_details_pb2.QuotaFailure.Violation(subject=error.subject, description=error.description)]
        )
        details.append(_pack(quota))
    return rpc_status.to_status(status_pb2.Status(code=code, message=error.message, details=details))


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


Handler = TypeVar("Handler", bound=Callable[..., Any])


def handle_errors(method: Handler) -> Handler:
    """Decorate a servicer method (async unary, or async generator for server
    streams) so that a domain error aborts the RPC with its status."""
    if _is_async_gen(method):

        @functools.wraps(method)
        async def stream_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for item in method(self, request, context):
                    yield item
            except errors.FlowtrackError as error:
                await context.abort_with_status(to_status(error))

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(method)
    async def unary_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except errors.FlowtrackError as error:
            await context.abort_with_status(to_status(error))

    return unary_wrapper  # type: ignore[return-value]


def _is_async_gen(function: Callable[..., Any]) -> bool:
    import inspect

    return inspect.isasyncgenfunction(function)
