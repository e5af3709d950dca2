"""The page's JSON: `/api/...`, each the proto3 JSON mapping of one gRPC
response message: the route reads its query into domain values, calls the
use case of that RPC in the core (core/reports.py, core/campaigns.py,
core/export.py) with the caller's `Call`, and builds the RPC's response
message with the gRPC face's own conversions (wire/).

| path | RPC (response message) |
|---|---|
| GET /api/campaigns?filter=&page_size=&page_token= | ListCampaigns |
| GET /api/campaigns/ID | GetCampaign |
| GET /api/campaigns/ID/stats | GetCampaignStats |
| GET /api/campaigns/ID/failures?page_size=&sample_size= | StreamFailureReasons (first page) |
| GET /api/campaigns/ID/clicks | GetClickBreakdown |
| GET /api/campaigns/ID/click-report?link_id=&country_code=&page_size=&resume_token= | StreamClickReport (one page) |
| GET /api/campaigns/ID/timeline?width=minute|hour|day | GetCampaignTimeline |
| GET /api/campaigns/ID/messages?status=&channel=&variant=&recipient=&failure_code=&page_size=&resume_token= |
|   StreamMessageReport (one page); engaged segments: read=, replied=, opted_out=, clicked_link=, |
|   clicked_button=, reached_goal= (true or false, absent: either) |
| GET /api/campaigns/ID/replies?recipient=&page_size=&resume_token= | StreamReplies (one page) |
| GET /api/campaigns/ID/live | WatchCampaignStats, as server-sent events (routes_live.py) |
| GET /api/campaigns/ID/export?kind=&format=&layout=&(filters) | ExportReport, as a file download |

Every route needs the `read` scope (as its RPC does over gRPC). Errors
are problem documents (`application/problem+json`, RFC 9457, made from the
domain errors in problems.py) naming the gRPC status a gRPC client gets. The routes, their
query parameters and bounds are described by the OpenAPI document at
`/openapi.json` (openapi.py). ID is one path segment, percent-encoded
(paths.RawRoute): any valid campaign id, '/' included.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from flowtrack.core.calls import Call, require
from flowtrack.core.export import export_report
from flowtrack.domain import errors, text
from flowtrack.domain import stats as dstats
from flowtrack.domain.keys import Principal, Scope
from flowtrack.v1 import campaign_pb2, common_pb2, report_pb2
from flowtrack.web import problems
from flowtrack.web.paths import RawRoute
from flowtrack.web.state import WebState
from flowtrack.wire import campaigns as campaign_wire
from flowtrack.wire import reports as wire

T = TypeVar("T")

REPORTS = "/flowtrack.v1.ReportService/"
CAMPAIGNS = "/flowtrack.v1.CampaignService/"
JSON_TYPE = "application/json"
# The map draws at most this many clicks (pages of the click report, merged).
MAP_PAGES = 5


def to_json(message: Message) -> str:
    """The proto3 JSON mapping of `message`, every field included (zeros too)."""
    return json_format.MessageToJson(message, always_print_fields_with_no_presence=True, indent=None)


def json_reply(message: Message) -> Response:
    return Response(to_json(message), media_type=JSON_TYPE)


# Integer query parameters are int32 in the request messages; 0 means the default.
INT32_MAX = 2**31 - 1


Handler = Callable[[Request, WebState, Principal], Awaitable[Response]]


def api(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint: finds the caller, runs `handler`, turns domain errors into
    problem documents (the one mapping, problems.of_domain)."""

    async def endpoint(request: Request) -> Response:
        state: WebState = request.app.state.web
        try:
            principal = await state.access.principal(request)
            # No text a request carries may hold a NUL (domain/text.py), as over gRPC.
            text.refuse_nul([*request.path_params.items(), *request.query_params.multi_items()])
            return await handler(request, state, principal)
        except errors.FlowtrackError as error:
            return problems.reply(problems.of_domain(error, request.url.path))

    return endpoint


def reading(principal: Principal, rpc: str) -> Call:
    """The Call of a route that reads what RPC `rpc` reads (its scope: read);
    the route ends it."""
    require(principal, Scope.READ, rpc)
    return Call(principal)


async def single(call: Call, pages: AsyncIterator[T]) -> T:
    """The first page of a report stream (which always sends one, or fails);
    the stream is closed and the call ended after it."""
    try:
        async with contextlib.aclosing(pages):  # type: ignore[type-var]
            async for page in pages:
                return page
    finally:
        call.end()
    raise RuntimeError("the stream ended without a page")


def _int(request: Request, name: str, default: int = 0, low: int = 0, high: int = INT32_MAX) -> int:
    """An integer query parameter within [low, high] (the bounds /openapi.json states)."""
    text = request.query_params.get(name, "").strip()
    if not text:
        return default
    if not text.isascii() or len(text) > 20:
        raise errors.invalid(name, f"must be an integer from {low} to {high}", "NOT_A_NUMBER")
    try:
        value = int(text)
    except ValueError:
        raise errors.invalid(name, f"must be an integer from {low} to {high}", "NOT_A_NUMBER") from None
    if not low <= value <= high:
        raise errors.invalid(name, f"must be an integer from {low} to {high}, not {value}", "OUT_OF_RANGE")
    return value


def _statuses(request: Request) -> list[int]:
    out: list[int] = []
    for value in request.query_params.getlist("status"):
        for name in value.split(","):
            name = name.strip().upper()
            if not name:
                continue
            full = name if name.startswith("MESSAGE_STATUS_") else f"MESSAGE_STATUS_{name}"
            try:
                out.append(int(common_pb2.MessageStatus.Value(full)))
            except ValueError:
                raise errors.invalid("status", f"unknown status {name!r}", "UNKNOWN_VALUE") from None
    return out


# The engaged segments of MessageFilter: tri-state, absent or empty means either.
ENGAGEMENT_FILTERS = ("read", "replied", "opted_out", "clicked_link", "clicked_button", "reached_goal")
_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _tristate(request: Request, name: str) -> bool | None:
    """`true`/`false` (also 1/0, yes/no) of a tri-state filter; None when absent or empty."""
    text = request.query_params.get(name, "").strip().lower()
    if not text:
        return None
    if text not in _BOOLS:
        raise errors.invalid(name, "must be true or false", "NOT_A_BOOLEAN")
    return _BOOLS[text]


def message_filter(request: Request) -> report_pb2.MessageFilter:
    q = request.query_params
    flt = report_pb2.MessageFilter(
        statuses=_statuses(request),  # type: ignore[arg-type]
        channel=q.get("channel", ""),
        variant=q.get("variant", ""),
        recipient=q.get("recipient", ""),
        failure_code=q.get("failure_code", ""),
    )
    for name in ENGAGEMENT_FILTERS:
        value = _tristate(request, name)
        if value is not None:
            setattr(flt, name, value)
    return flt


def click_filter(request: Request) -> report_pb2.ClickFilter:
    q = request.query_params
    return report_pb2.ClickFilter(link_id=q.get("link_id", ""), country_code=q.get("country_code", ""))


async def list_campaigns(request: Request, state: WebState, principal: Principal) -> Response:
    q = request.query_params
    page_size = _int(request, "page_size")
    call = reading(principal, CAMPAIGNS + "ListCampaigns")
    try:
        found, token = await state.campaigns.list_page(call, q.get("filter", ""), page_size, q.get("page_token", ""))
    finally:
        call.end()
    return json_reply(campaign_wire.list_response(found, token))


async def get_campaign(request: Request, state: WebState, principal: Principal) -> Response:
    call = reading(principal, CAMPAIGNS + "GetCampaign")
    try:
        campaign = await state.campaigns.get(call, request.path_params["campaign_id"])
    finally:
        call.end()
    return json_reply(campaign_pb2.GetCampaignResponse(campaign=campaign_wire.campaign_to_proto(campaign)))


async def stats(request: Request, state: WebState, principal: Principal) -> Response:
    call = reading(principal, REPORTS + "GetCampaignStats")
    try:
        found = await state.reports.sourced_stats(call, request.path_params["campaign_id"])
    finally:
        call.end()
    return json_reply(wire.stats_response(found))


async def failures(request: Request, state: WebState, principal: Principal) -> Response:
    page_size, sample_size = _int(request, "page_size"), _int(request, "sample_size")
    call = reading(principal, REPORTS + "StreamFailureReasons")
    pages = state.reports.failure_reasons(
        call, request.path_params["campaign_id"], page_size, sample_size, wire.REASON_PAGES
    )
    return json_reply(await single(call, pages))


async def click_breakdown(request: Request, state: WebState, principal: Principal) -> Response:
    call = reading(principal, REPORTS + "GetClickBreakdown")
    try:
        data, seq = await state.reports.click_breakdown(call, request.path_params["campaign_id"])
    finally:
        call.end()
    return json_reply(wire.breakdown(data, seq))


async def click_report(request: Request, state: WebState, principal: Principal) -> Response:
    """Pages of the click report merged into one message: one page when
    page_size is given, else up to MAP_PAGES full pages (for the map)."""
    page_size = _int(request, "page_size")
    call = reading(principal, REPORTS + "StreamClickReport")
    campaign_id = dstats.require_campaign_id(request.path_params["campaign_id"])
    dstats.page_size(page_size)
    flt = wire.click_filter(click_filter(request))
    pages = 1 if page_size else MAP_PAGES
    merged = report_pb2.StreamClickReportResponse()
    replies = state.reports.click_report(
        call, campaign_id, flt, page_size, request.query_params.get("resume_token", ""), wire.CLICK_PAGES
    )
    try:
        async with contextlib.aclosing(replies):  # type: ignore[type-var]
            async for page in replies:
                merged.rows.extend(page.rows)
                merged.resume_token = page.resume_token
                pages -= 1
                if pages <= 0:
                    break
    finally:
        call.end()
    return json_reply(merged)


_WIDTHS = {
    "": report_pb2.TIMELINE_BUCKET_WIDTH_UNSPECIFIED,
    "minute": report_pb2.TIMELINE_BUCKET_WIDTH_MINUTE,
    "hour": report_pb2.TIMELINE_BUCKET_WIDTH_HOUR,
    "day": report_pb2.TIMELINE_BUCKET_WIDTH_DAY,
}


async def timeline(request: Request, state: WebState, principal: Principal) -> Response:
    width = request.query_params.get("width", "").lower()
    if width not in _WIDTHS:
        raise errors.invalid("width", "one of minute, hour, day", "UNKNOWN_VALUE")
    call = reading(principal, REPORTS + "GetCampaignTimeline")
    campaign_id = dstats.require_campaign_id(request.path_params["campaign_id"])
    try:
        rows, seq = await state.reports.timeline(call, campaign_id, wire.timeline_width(_WIDTHS[width]), None, None)
    finally:
        call.end()
    return json_reply(wire.timeline(rows, seq))


async def messages(request: Request, state: WebState, principal: Principal) -> Response:
    """One page of the message report; its resume_token asks for the next."""
    proto_filter = message_filter(request)
    page_size = _int(request, "page_size", 50)
    call = reading(principal, REPORTS + "StreamMessageReport")
    campaign_id = dstats.require_campaign_id(request.path_params["campaign_id"])
    dstats.page_size(page_size)
    flt = wire.message_filter(proto_filter)
    pages = state.reports.message_report(
        call, campaign_id, flt, page_size, request.query_params.get("resume_token", ""), wire.MESSAGE_PAGES
    )
    return json_reply(await single(call, pages))


async def replies(request: Request, state: WebState, principal: Principal) -> Response:
    """One page of the replies (StreamReplies), in sequence order; its
    resume_token asks for the next (empty at the end)."""
    q = request.query_params
    page_size = _int(request, "page_size", 50)
    call = reading(principal, REPORTS + "StreamReplies")
    campaign_id = dstats.require_campaign_id(request.path_params["campaign_id"])
    dstats.page_size(page_size)
    recipient, after, before = wire.reply_filter(report_pb2.ReplyFilter(recipient=q.get("recipient", "")))
    pages = state.reports.replies(
        call, campaign_id, recipient, after, before, page_size, q.get("resume_token", ""), wire.REPLY_PAGES
    )
    return json_reply(await single(call, pages))


_KINDS = {
    "": report_pb2.EXPORT_KIND_MESSAGES,
    "messages": report_pb2.EXPORT_KIND_MESSAGES,
    "clicks": report_pb2.EXPORT_KIND_CLICKS,
    "failure-reasons": report_pb2.EXPORT_KIND_FAILURE_REASONS,
}
_FORMATS = {
    "": report_pb2.EXPORT_FORMAT_CSV,
    "csv": report_pb2.EXPORT_FORMAT_CSV,
    "xlsx": report_pb2.EXPORT_FORMAT_XLSX,
}

_LAYOUTS = {
    "": report_pb2.EXPORT_LAYOUT_UNSPECIFIED,
    "flowtrack": report_pb2.EXPORT_LAYOUT_FLOWTRACK,
    "connectly": report_pb2.EXPORT_LAYOUT_CONNECTLY,
    "audience": report_pb2.EXPORT_LAYOUT_AUDIENCE,
}


async def export(request: Request, state: WebState, principal: Principal) -> Response:
    """The file of ExportReport, streamed as it is produced (same bytes)."""
    q = request.query_params
    kind, fmt = q.get("kind", "").lower(), q.get("format", "").lower()
    if kind not in _KINDS:
        raise errors.invalid("kind", "one of messages, clicks, failure-reasons", "UNKNOWN_VALUE")
    if fmt not in _FORMATS:
        raise errors.invalid("format", "one of csv, xlsx", "UNKNOWN_VALUE")
    layout = q.get("layout", "").lower()
    if layout not in _LAYOUTS:
        raise errors.invalid("layout", "one of flowtrack, connectly, audience", "UNKNOWN_VALUE")
    message = report_pb2.ExportReportRequest(
        campaign_id=request.path_params["campaign_id"],
        kind=_KINDS[kind],
        format=_FORMATS[fmt],
        layout=_LAYOUTS[layout],
    )
    if message.kind == report_pb2.EXPORT_KIND_MESSAGES:
        message.message_filter.CopyFrom(message_filter(request))
    elif message.kind == report_pb2.EXPORT_KIND_CLICKS:
        message.click_filter.CopyFrom(click_filter(request))
    call = reading(principal, REPORTS + "ExportReport")
    try:
        dstats.require_campaign_id(message.campaign_id)
        chunks = export_report(state.reports, wire.export_request(message), call)
        head = await anext(chunks)  # fails here (as JSON) for an unknown campaign or a bad filter
    except BaseException:
        call.end()
        raise

    async def body() -> AsyncIterator[bytes]:
        try:
            async with contextlib.aclosing(chunks):  # type: ignore[type-var]
                if head.chunk:
                    yield head.chunk
                async for chunk in chunks:
                    if chunk.chunk:
                        yield chunk.chunk
        finally:
            call.end()

    name = head.file_name.replace('"', "")
    return StreamingResponse(
        body(),
        media_type=head.content_type,
        headers={"content-disposition": f'attachment; filename="{name}"', "cache-control": "no-store"},
    )


def routes() -> list[BaseRoute]:
    c = "/api/campaigns/{campaign_id:path}"
    return [
        Route("/api/campaigns", api(list_campaigns)),
        RawRoute(c + "/stats", api(stats)),
        RawRoute(c + "/failures", api(failures)),
        RawRoute(c + "/clicks", api(click_breakdown)),
        RawRoute(c + "/click-report", api(click_report)),
        RawRoute(c + "/timeline", api(timeline)),
        RawRoute(c + "/messages", api(messages)),
        RawRoute(c + "/replies", api(replies)),
        RawRoute(c + "/export", api(export)),
        RawRoute(c, api(get_campaign)),
    ]


__all__ = ["api", "json_reply", "routes", "to_json"]
