"""Live stats for the page: server-sent events fed by WatchCampaignStats's
use case.

`GET /api/campaigns/ID/live` runs core/reports.Reports.watch_stats (the
same coalesced per-campaign feed as gRPC watchers, core/live.py: a new
snapshot within about 0.25 s of a commit that changed the campaign) and
sends each snapshot as an SSE `stats` event whose data is the proto3 JSON
of WatchCampaignStatsResponse. Every CHECK_SECONDS without a change, a
comment line goes out (so proxies keep the connection) and the caller's
credentials are checked again. The stream ends when the client leaves, the
campaign is deleted (event `deleted`), the caller's session or key is no
longer valid (event `signed-out`: the page goes to the sign-in page), the
watch fails (event `failed`, the JSON error), or the
server starts stopping (event `bye`: the browser's EventSource reconnects by
itself).

Each stream holds one of its key's `--max-streams-per-key` open streams
(counted with the key's gRPC streams, api/auth.StreamQuota) until it ends;
past the cap the request is 429, reason TOO_MANY_STREAMS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute
from starlette.types import Receive, Scope, Send

from flowtrack.domain import errors
from flowtrack.domain.keys import Principal
from flowtrack.domain.stats import CampaignStats
from flowtrack.v1 import report_pb2
from flowtrack.web import problems
from flowtrack.web.paths import RawRoute
from flowtrack.web.routes_api import REPORTS, api, reading, to_json
from flowtrack.web.state import WebState
from flowtrack.wire.reports import stats_to_proto

CHECK_SECONDS = 5.0


def _event(name: str, data: str) -> bytes:
    return f"event: {name}\ndata: {data}\n\n".encode()


class HeldStream(StreamingResponse):
    """A streaming response that gives its slot of the key's stream quota
    back when it ends, however it ends (even if its body never started)."""

    def __init__(self, *args: Any, give_back: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.give_back = give_back

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.give_back()


def _stats_json(stats: CampaignStats) -> str:
    return to_json(report_pb2.WatchCampaignStatsResponse(stats=stats_to_proto(stats)))


async def live(request: Request, state: WebState, principal: Principal) -> Response:
    give_back = state.streams.take(principal)  # 429 TOO_MANY_STREAMS past --max-streams-per-key
    call = None
    try:
        call = reading(principal, REPORTS + "WatchCampaignStats")
        replies = state.reports.watch_stats(call, request.path_params["campaign_id"])
        head = _stats_json(await anext(replies))  # NOT_FOUND and friends answer as JSON, before the stream starts
    except BaseException:
        if call is not None:
            call.end()
        give_back()
        raise

    async def events() -> AsyncIterator[bytes]:
        async with contextlib.aclosing(replies):  # type: ignore[type-var]
            yield b"retry: 2000\n" + _event("stats", head)
            stop: asyncio.Future[Any] = asyncio.ensure_future(state.stopping.wait())
            following: asyncio.Future[Any] | None = None
            checked = time.monotonic()
            try:
                while True:
                    if following is None:
                        following = asyncio.ensure_future(anext(replies))
                    done, _ = await asyncio.wait(
                        {following, stop}, timeout=CHECK_SECONDS, return_when=asyncio.FIRST_COMPLETED
                    )
                    if stop in done:
                        yield _event("bye", '"the server is stopping"')
                        return
                    if time.monotonic() - checked >= CHECK_SECONDS:
                        checked = time.monotonic()
                        try:
                            await state.access.principal(request)
                        except errors.FlowtrackError as error:
                            yield _event("signed-out", json.dumps(problems.of_domain(error)))
                            return
                    if following not in done:
                        yield b": keepalive\n\n"
                        continue
                    try:
                        reply = following.result()
                    except StopAsyncIteration:
                        yield _event("deleted", '"the campaign was deleted"')
                        return
                    except errors.FlowtrackError as error:
                        name = "signed-out" if isinstance(error, errors.Unauthenticated) else "failed"
                        yield _event(name, json.dumps(problems.of_domain(error)))
                        return
                    following = None
                    yield _event("stats", _stats_json(reply))
            finally:
                call.end()
                stop.cancel()
                if following is not None and not following.done():
                    following.cancel()
                    with contextlib.suppress(BaseException):
                        await following

    return HeldStream(
        events(),
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        give_back=give_back,
    )


def routes() -> list[BaseRoute]:
    return [RawRoute("/api/campaigns/{campaign_id:path}/live", api(live))]
