"""The one place where the HTTP face's failures become responses.

Every error of the JSON API (`/api/...`, `/openapi.json`) is a problem
document, `application/problem+json` (RFC 9457):

    {"type": "urn:flowtrack:problem:NOT_FOUND", "title": "Not found",
     "status": 404, "detail": "campaign 'x' not found",
     "code": "NOT_FOUND", "reason": "CAMPAIGN_NOT_FOUND", "violations": [],
     "instance": "/api/campaigns/x"}

Domain errors (domain/errors.py) become problems here directly, in
`of_domain`: `code` is the gRPC status a gRPC client gets for the same
request (api/errors.py maps the same errors the same way), `type` and
`title` follow from it; `status` is the HTTP status (as Google's HTTP/JSON
mapping pairs them: always a 4xx for a domain error but UNAVAILABLE's 503);
`reason` is the ErrorInfo reason (UPPER_SNAKE, "" when there is none) and `violations` the BadRequest field violations
(`field`, `description`, `reason`) of an INVALID_ARGUMENT; a
RESOURCE_EXHAUSTED that names a quota adds `quota`, its QuotaFailure
violations (`subject`, `description`). `detail` is one line. Outside /api
(the pages, signed links) a refusal is one line of text.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from flowtrack.domain import errors

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:flowtrack:problem:"

# The HTTP status of each gRPC code (as Google's HTTP/JSON mapping does).
HTTP_STATUS: dict[str, int] = {
    "OK": 200,
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
# The gRPC code of each domain error (the same as api/errors.py's).
_CODES: list[tuple[type[errors.FlowtrackError], str]] = [
    (errors.InvalidArgument, "INVALID_ARGUMENT"),
    (errors.NotFound, "NOT_FOUND"),
    (errors.AlreadyExists, "ALREADY_EXISTS"),
    (errors.FailedPrecondition, "FAILED_PRECONDITION"),
    (errors.ResourceExhausted, "RESOURCE_EXHAUSTED"),
    (errors.Unavailable, "UNAVAILABLE"),
    (errors.Unauthenticated, "UNAUTHENTICATED"),
    (errors.PermissionDenied, "PERMISSION_DENIED"),
]

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
    http_status = status if status is not None else HTTP_STATUS.get(code, 500)
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


def code_of(error: errors.FlowtrackError) -> str:
    """The gRPC code name of a domain error."""
    return next((code for kind, code in _CODES if isinstance(error, kind)), "FAILED_PRECONDITION")


def of_domain(error: errors.FlowtrackError, instance: str | None = None) -> dict[str, Any]:
    """The problem of a domain error: the code, reason, field violations and
    quota a gRPC client reads in the same error's status."""
    violations: list[dict[str, str]] = []
    if isinstance(error, errors.InvalidArgument):
        violations = [{"field": v.field, "description": v.description, "reason": v.reason} for v in error.violations]
    quota: list[dict[str, str]] = []
    if isinstance(error, errors.QuotaExceeded):
        quota = [{"subject": error.subject, "description": error.description}]
    return body(
        code_of(error), error.message, reason=error.reason, violations=violations, quota=quota, instance=instance
    )


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


async def client_gone(request: Request, exc: Exception) -> Response:
    """The client went away while its request's body was read (or the body
    did not arrive in time: web/listener.py answered 408): nobody reads an
    answer, and it is no server error."""
    log.debug("HTTP %s %s: the client went away while sending its body", request.method, request.url.path)
    return PlainTextResponse("the request's body did not arrive", status_code=400)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    HTTPException: http_exception,
    ClientDisconnect: client_gone,
    Exception: server_error,
}

__all__ = ["EXCEPTION_HANDLERS", "HTTP_STATUS", "MEDIA_TYPE", "body", "code_of", "of_domain", "reply"]
