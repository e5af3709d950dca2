"""The one place where the HTTP face's failures become responses.

Every error of the JSON API (`/api/...`, `/openapi.json`) is a problem
document, `application/problem+json` (RFC 9457):

    {"type": "urn:flowtrack:problem:NOT_FOUND", "title": "Not found",
     "status": 404, "detail": "campaign 'x' not found",
     "code": "NOT_FOUND", "reason": "CAMPAIGN_NOT_FOUND", "violations": [],
     "instance": "/api/campaigns/x"}

`code` is the gRPC status a gRPC client gets for the same request, `type`
and `title` follow from it; `status` is the HTTP status (as Google's
HTTP/JSON mapping pairs them); `reason` is the ErrorInfo reason (UPPER_SNAKE,
"" when there is none) and `violations` the BadRequest field violations
(`field`, `description`, `reason`) of an INVALID_ARGUMENT; a
RESOURCE_EXHAUSTED that names a quota adds `quota`, its QuotaFailure
violations (`subject`, `description`). `detail` is one line. Outside /api
(the pages, signed links) a refusal is one line of text.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from google.rpc import error_details_pb2
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from flowtrack.domain import errors
from flowtrack.web.calls import HTTP_STATUS, CallError

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:flowtrack:problem:"

TITLES: dict[str, str] = {
    "INVALID_ARGUMENT": "Invalid argument",
    "FAILED_PRECONDITION": "Failed precondition",
    "OUT_OF_RANGE": "Out of range",
    "UNAUTHENTICATED": "Unauthenticated",
    "PERMISSION_DENIED": "Permission denied",
    "NOT_FOUND": "Not found",
    "ALREADY_EXISTS": "Already exists",
    "ABORTED": "Aborted",
    "RESOURCE_EXHAUSTED": "Resource exhausted",
    "CANCELLED": "Cancelled",
    "UNIMPLEMENTED": "Unimplemented",
    "UNAVAILABLE": "Unavailable",
    "DEADLINE_EXCEEDED": "Deadline exceeded",
    "INTERNAL": "Internal error",
    "UNKNOWN": "Unknown error",
}
# A Starlette HTTPException (no route, wrong method, ...) as a gRPC code.
_CODE_OF_HTTP: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    409: "ABORTED",
    413: "RESOURCE_EXHAUSTED",
    429: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
}


def body(
    code: str,
    detail: str,
    *,
    status: int | None = None,
    reason: str = "",
    violations: list[dict[str, str]] | None = None,
    quota: list[dict[str, str]] | None = None,
    instance: str | None = None,
) -> dict[str, Any]:
    """A problem document (a dict, ready for JSON)."""
    grpc_code = getattr(grpc.StatusCode, code, None)
    if status is not None:
        http_status = status
    else:
        http_status = HTTP_STATUS.get(grpc_code, 500) if isinstance(grpc_code, grpc.StatusCode) else 500
    out: dict[str, Any] = {
        "type": TYPE_PREFIX + code,
        "title": TITLES.get(code, code.replace("_", " ").capitalize()),
        "status": http_status,
        "detail": " ".join(detail.split()),  # one line
        "code": code,
        "reason": reason,
        "violations": violations or [],
    }
    if quota:
        out["quota"] = quota
    if instance is not None:
        out["instance"] = instance
    return out


def of_call(error: CallError, instance: str | None = None) -> dict[str, Any]:
    """The problem of a failed in-process call (its google.rpc.Status details)."""
    reason = ""
    violations: list[dict[str, str]] = []
    quota: list[dict[str, str]] = []
    for packed in error.details.details if error.details is not None else ():
        info = error_details_pb2.ErrorInfo()
        bad = error_details_pb2.BadRequest()
        failure = error_details_pb2.QuotaFailure()
        if packed.Is(info.DESCRIPTOR) and packed.Unpack(info):
            reason = reason or info.reason
        elif packed.Is(bad.DESCRIPTOR) and packed.Unpack(bad):
            violations.extend(
                {"field": v.field, "description": v.description, "reason": v.reason} for v in bad.field_violations
            )
        elif packed.Is(failure.DESCRIPTOR) and packed.Unpack(failure):
            quota.extend({"subject": v.subject, "description": v.description} for v in failure.violations)
    return body(
        error.code.name,
        error.message,
        status=error.http_status,
        reason=reason,
        violations=violations,
        quota=quota,
        instance=instance,
    )


def of_domain(error: errors.FlowtrackError, instance: str | None = None) -> dict[str, Any]:
    return of_call(CallError.of(error), instance)


def reply(problem: dict[str, Any]) -> Response:
    return JSONResponse(problem, status_code=problem["status"], media_type=MEDIA_TYPE)


def _is_api(request: Request) -> bool:
    path = request.url.path
    return path.startswith("/api/") or path in ("/api", "/openapi.json")


async def http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route, method not allowed): a
    problem under /api, one line of text elsewhere."""
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if not _is_api(request):
        return PlainTextResponse(f"{exc.detail}\n", status_code=exc.status_code, headers=headers)
    code = _CODE_OF_HTTP.get(exc.status_code, "INVALID_ARGUMENT" if exc.status_code < 500 else "INTERNAL")
    detail = str(exc.detail)
    if exc.status_code == 404:
        detail = f"no such resource: {request.url.path}"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed here (allowed: {headers.get('Allow', 'GET')})"
    response = reply(body(code, detail, status=exc.status_code, reason=code, instance=request.url.path))
    response.headers.update(headers)
    return response


async def server_error(request: Request, exc: Exception) -> Response:
    """A fault of ours: logged with its traceback, answered without it."""
    log.error("HTTP %s %s failed", request.method, request.url.path, exc_info=exc)
    if not _is_api(request):
        return PlainTextResponse("internal error: see the server's log\n", status_code=500)
    return reply(body("INTERNAL", "internal error: see the server's log", status=500, reason="INTERNAL"))


EXCEPTION_HANDLERS: dict[Any, Any] = {HTTPException: http_exception, Exception: server_error}

__all__ = ["EXCEPTION_HANDLERS", "MEDIA_TYPE", "body", "of_call", "of_domain", "reply"]
