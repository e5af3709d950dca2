"""The pages: sign-in, the campaign list, a campaign, and /metrics.

The HTML files are static (src/flowtrack/web/static); their script fetches
the JSON of routes_api.py. A request without credentials gets nothing but
the sign-in page (and the static files it needs, which hold no data).

/metrics needs no key: it holds no business data (no label names a business
or a campaign), it is what a Prometheus scraper reads, and scrapers are
usually configured without credentials. Put the HTTP listener where only
your operators and Prometheus reach it if the server-wide totals are too
much to show.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from flowtrack.domain import errors
from flowtrack.web.access import COOKIE
from flowtrack.web.state import WebState

STATIC = Path(__file__).parent / "static"
# The sign-in form's body: a key and little else.
MAX_FORM_BYTES = 4096


def _page(name: str) -> Response:
    return FileResponse(STATIC / name, media_type="text/html; charset=utf-8", headers={"cache-control": "no-store"})


async def _signed_in(request: Request) -> bool:
    state: WebState = request.app.state.web
    try:
        await state.access.principal(request)
    except errors.FlowtrackError:
        return False
    return True


def _to_signin(request: Request, reason: str = "") -> Response:
    target = "/signin" + (f"?error={quote(reason)}" if reason else "")
    response = RedirectResponse(target, status_code=303)
    if request.cookies.get(COOKIE):
        response.delete_cookie(COOKIE, path="/")
    return response


async def index(request: Request) -> Response:
    return _page("index.html") if await _signed_in(request) else _to_signin(request)


async def campaign(request: Request) -> Response:
    return _page("campaign.html") if await _signed_in(request) else _to_signin(request)


async def signin_page(request: Request) -> Response:
    return _page("signin.html")


def _same_origin(request: Request) -> bool:
    """A form post from our own page: its Origin (when the browser sends one) is ours."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1] == host


async def signin(request: Request) -> Response:
    state: WebState = request.app.state.web
    if not _same_origin(request):
        return Response("cross-site sign-in refused\n", status_code=403, media_type="text/plain")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return Response("the form is too large\n", status_code=413, media_type="text/plain")
    from urllib.parse import parse_qs

    key = (parse_qs(body.decode(errors="replace")).get("key") or [""])[0]
    try:
        _, cookie = await state.access.sign_in(key)
    except errors.FlowtrackError as error:
        return RedirectResponse(f"/signin?error={quote(error.reason)}", status_code=303)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=int(state.access.sessions.seconds),
        path="/",
        httponly=True,
        samesite="strict",
        secure=state.tls,
    )
    return response


async def signout(request: Request) -> Response:
    """End the session on the server (every copy of the cookie, every
    replica), then drop the cookie. Refused cross-site, as sign-in is."""
    state: WebState = request.app.state.web
    if not _same_origin(request):
        return Response("cross-site sign-out refused\n", status_code=403, media_type="text/plain")
    try:
        await state.access.sign_out(request.cookies.get(COOKIE))
    except errors.FlowtrackError as error:  # the database could not take it (full queue, storage fault)
        return Response(f"sign-out failed, try again: {error.message}\n", status_code=503, media_type="text/plain")
    response = RedirectResponse("/signin", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


async def metrics(request: Request) -> Response:
    state: WebState = request.app.state.web
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def favicon(request: Request) -> Response:
    return Response(status_code=204, headers={"cache-control": "max-age=86400"})


def routes() -> list[BaseRoute]:
    return [
        Route("/", index),
        Route("/favicon.ico", favicon),
        Route("/campaigns/{campaign_id:path}", campaign),
        Route("/signin", signin_page, methods=["GET"]),
        Route("/signin", signin, methods=["POST"]),
        Route("/signout", signout, methods=["POST"]),
        Route("/metrics", metrics),
    ]
