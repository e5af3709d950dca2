"""`GET /openapi.json`: the OpenAPI 3.1 document of the JSON API.

Every route under /api, its path and query parameters with their types and
bounds (the bounds routes_api.py enforces), its answer and the error shape
(problems.py). Served without credentials: it holds no data.
`tests/test_openapi.py` checks that every /api route of the app is here and
fuzzes each with schemathesis against a running server (no 5xx).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from flowtrack.domain import stats as dstats
from flowtrack.domain.campaigns import ID_CHARS
from flowtrack.web.problems import MEDIA_TYPE as PROBLEM
from flowtrack.web.routes_api import INT32_MAX, JSON_TYPE

VERSION = "1"
STATUS_NAMES = ["PENDING", "NOT_SUBMITTED", "SUBMITTED", "DELIVERY_NOT_CONFIRMED", "SUCCESS", "FAILED"]


def _query(name: str, schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description, **extra}


def _size(name: str, default: int, cap: int, what: str) -> dict[str, Any]:
    return _query(
        name,
        {"type": "integer", "format": "int32", "minimum": 0, "maximum": INT32_MAX},
        f"{what}: 0 or absent means {default}; values above {cap} are served as {cap}.",
    )


def _text(name: str, description: str, max_chars: int | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if max_chars is not None:
        schema["maxLength"] = max_chars
    return _query(name, schema, description)


CAMPAIGN_ID = {
    "name": "campaign_id",
    "in": "path",
    "required": True,
    "description": (
        "The campaign id as one path segment, percent-encoded (encodeURIComponent): an id may hold any "
        "printable ASCII, '/' included (campaigns made by an event), so a '/' in it is sent as %2F."
    ),
    "schema": {"type": "string", "minLength": 1, "maxLength": ID_CHARS},
}
PAGE_TOKEN = _text("page_token", "The next_page_token of the previous page.")
RESUME = _text("resume_token", "The resume_token of the previous page (opaque).")
STATUS = _query(
    "status",
    {"type": "array", "items": {"type": "string", "enum": STATUS_NAMES}},
    "Message statuses to keep (repeat, or separate with commas); MESSAGE_STATUS_ prefix optional.",
    style="form",
    explode=True,
)
MESSAGE_FILTER = [
    STATUS,
    _text("channel", "Only this channel.", dstats.FILTER_CAPS["channel"]),
    _text("variant", "Only this A/B variant.", dstats.FILTER_CAPS["variant"]),
    _text("recipient", "Only this recipient.", dstats.FILTER_CAPS["recipient"]),
    _text("failure_code", "Only this failure code.", dstats.FILTER_CAPS["failure_code"]),
    *(
        _query(
            name,
            {"type": "string", "enum": ["", "true", "false"]},
            f"Engaged segment ({what}): true keeps those who did, false those who did not; absent means either.",
        )
        for name, what in (
            ("read", "read the message"),
            ("replied", "replied"),
            ("opted_out", "opted out"),
            ("clicked_link", "clicked a tracked link"),
            ("clicked_button", "tapped a button"),
            ("reached_goal", "reached the flow's goal"),
        )
    ),
]
CLICK_FILTER = [
    _text("link_id", "Only this link.", dstats.FILTER_CAPS["link_id"]),
    _text("country_code", "Only this ISO 3166-1 alpha-2 country (two capital letters).", 2),
]


def _enum(name: str, values: list[str], description: str) -> dict[str, Any]:
    return _query(name, {"type": "string", "enum": ["", *values]}, description)


# (path under /api, summary, gRPC method whose response is the body, query parameters, media type of a 200)
ROUTES: list[tuple[str, str, str, list[dict[str, Any]], str]] = [
    (
        "/api/campaigns",
        "The campaigns of the caller's business, one page",
        "CampaignService.ListCampaigns",
        [
            _text("filter", "ListCampaigns filter, e.g. `state=RUNNING labels.team=growth name:spring`."),
            _size("page_size", 50, 500, "Campaigns per page"),
            PAGE_TOKEN,
        ],
        JSON_TYPE,
    ),
    ("/api/campaigns/{campaign_id}", "One campaign", "CampaignService.GetCampaign", [], JSON_TYPE),
    (
        "/api/campaigns/{campaign_id}/stats",
        "The campaign's stats, with its A/B test (`stats.abTest`: each pair of variants, and each against the rest, "
        "per rate: difference, 95% interval, p-value, verdict) and, for a campaign made from a segment of another, "
        "`source` and `sourceStats`",
        "ReportService.GetCampaignStats",
        [],
        JSON_TYPE,
    ),
    (
        "/api/campaigns/{campaign_id}/failures",
        "Failure reasons, most frequent first (the first page)",
        "ReportService.StreamFailureReasons",
        [
            _size("page_size", dstats.DEFAULT_REASONS_PAGE_SIZE, dstats.MAX_PAGE_SIZE, "Reasons per page"),
            _size("sample_size", dstats.DEFAULT_SAMPLE_SIZE, dstats.MAX_SAMPLE_SIZE, "Sample recipients per reason"),
        ],
        JSON_TYPE,
    ),
    (
        "/api/campaigns/{campaign_id}/clicks",
        "Clicks by link, country, region and city",
        "ReportService.GetClickBreakdown",
        [],
        JSON_TYPE,
    ),
    (
        "/api/campaigns/{campaign_id}/click-report",
        "Clicks one by one: one page when page_size is given, else up to 5 full pages merged",
        "ReportService.StreamClickReport",
        [
            *CLICK_FILTER,
            _size("page_size", dstats.DEFAULT_PAGE_SIZE, dstats.MAX_PAGE_SIZE, "Clicks per page"),
            RESUME,
        ],
        JSON_TYPE,
    ),
    (
        "/api/campaigns/{campaign_id}/timeline",
        "Events per minute, hour or day",
        "ReportService.GetCampaignTimeline",
        [_enum("width", ["minute", "hour", "day"], "The bucket width; absent or empty lets the server choose.")],
        JSON_TYPE,
    ),
    (
        "/api/campaigns/{campaign_id}/messages",
        "The message report, one page",
        "ReportService.StreamMessageReport",
        [*MESSAGE_FILTER, _size("page_size", 50, dstats.MAX_PAGE_SIZE, "Rows per page"), RESUME],
        JSON_TYPE,
    ),
    (
        "/api/campaigns/{campaign_id}/replies",
        "The replies, in the order they were stored, one page",
        "ReportService.StreamReplies",
        [
            _text("recipient", "Only this recipient's replies.", dstats.FILTER_CAPS["recipient"]),
            _size("page_size", 50, dstats.MAX_PAGE_SIZE, "Replies per page"),
            RESUME,
        ],
        JSON_TYPE,
    ),
    (
        "/api/campaigns/{campaign_id}/export",
        "The ExportReport file, as a download (CSV or XLSX)",
        "ReportService.ExportReport",
        [
            _enum("kind", ["messages", "clicks", "failure-reasons"], "What to export; absent means messages."),
            _enum("format", ["csv", "xlsx"], "The file format; absent means csv."),
            _enum(
                "layout",
                ["flowtrack", "connectly", "audience"],
                "The columns of a messages export (docs/exports.md, Layouts); absent means flowtrack."
                " audience: the file `flowtrack campaigns add-recipients` takes (csv only).",
            ),
            *MESSAGE_FILTER,
            *CLICK_FILTER,
        ],
        "application/octet-stream",
    ),
    (
        "/api/campaigns/{campaign_id}/live",
        "Live stats as server-sent events: `stats` (WatchCampaignStatsResponse JSON), then `deleted`, "
        "`signed-out`, `failed` (a problem document) or `bye`",
        "ReportService.WatchCampaignStats",
        [],
        "text/event-stream",
    ),
]

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "An error (RFC 9457 problem details) naming the gRPC status a gRPC client gets.",
    "required": ["type", "title", "status", "detail", "code", "reason", "violations"],
    "properties": {
        "type": {"type": "string", "description": "urn:flowtrack:problem:<code>"},
        "title": {"type": "string"},
        "status": {"type": "integer", "description": "The HTTP status."},
        "detail": {"type": "string", "description": "One line: what is wrong."},
        "code": {"type": "string", "description": "The gRPC status name, e.g. INVALID_ARGUMENT, NOT_FOUND."},
        "reason": {"type": "string", "description": "The ErrorInfo reason, e.g. CAMPAIGN_NOT_FOUND; may be empty."},
        "violations": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "description", "reason"],
                "properties": {
                    "field": {"type": "string"},
                    "description": {"type": "string"},
                    "reason": {"type": "string"},
                },
            },
        },
        "quota": {
            "type": "array",
            "description": "RESOURCE_EXHAUSTED: the quota that was reached (its QuotaFailure violations).",
            "items": {
                "type": "object",
                "required": ["subject", "description"],
                "properties": {"subject": {"type": "string"}, "description": {"type": "string"}},
            },
        },
        "instance": {"type": "string", "description": "The path of the request."},
    },
}


def _responses(media: str, method: str) -> dict[str, Any]:
    problem = {"content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
    ok_schema: dict[str, Any] = (
        {"type": "object", "description": f"The proto3 JSON of the {method} response."}
        if media == JSON_TYPE
        else {"type": "string"}
    )
    return {
        "200": {"description": f"The answer of {method}.", "content": {media: {"schema": ok_schema}}},
        "400": {"description": "A parameter is invalid (INVALID_ARGUMENT, with violations).", **problem},
        "401": {"description": "No valid credentials (UNAUTHENTICATED).", **problem},
        "403": {"description": "The key lacks the scope (PERMISSION_DENIED).", **problem},
        "404": {"description": "No such campaign for this business (NOT_FOUND).", **problem},
        "default": {"description": "Any other error, same shape.", **problem},
    }


def document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for path, summary, method, params, media in ROUTES:
        parameters = ([CAMPAIGN_ID] if "{campaign_id}" in path else []) + params
        operation_id = method.split(".")[1][0].lower() + method.split(".")[1][1:]
        if path.endswith("/click-report"):
            operation_id = "clickReport"
        paths[path] = {
            "get": {
                "operationId": operation_id,
                "summary": summary,
                "description": f"Runs {method} as the caller (its scope and business).",
                "parameters": parameters,
                "responses": _responses(media, method),
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "flowtrack HTTP JSON API",
            "version": VERSION,
            "description": (
                "The campaign page's JSON: each answer is the proto3 JSON mapping of a gRPC response of the "
                "same server; each error an application/problem+json document naming its gRPC status."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": {"Problem": PROBLEM_SCHEMA},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An API key (scope read or admin)."},
                "session": {"type": "apiKey", "in": "cookie", "name": "flowtrack_session"},
            },
        },
        "security": [{"bearer": []}, {"session": []}],
    }


async def openapi(request: Request) -> Response:
    return JSONResponse(document(), headers={"cache-control": "no-cache"})


def routes() -> list[BaseRoute]:
    return [Route("/openapi.json", openapi, methods=["GET"])]
