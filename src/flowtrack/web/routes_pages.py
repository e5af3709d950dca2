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
from urllib.parse import parse_qs, quote, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from flowtrack.domain import errors
from flowtrack.domain.keys import Principal
from flowtrack.web.access import COOKIE
from flowtrack.web.paths import RawRoute
from flowtrack.web.routes_api import CAMPAIGNS, reading
from flowtrack.web.state import WebState

STATIC = Path(__file__).parent / "static"
# The sign-in form's body: a key and little else.
MAX_FORM_BYTES = 4096
# The page to go back to after sign-in (`next`): a local path of at most this many characters.
MAX_NEXT_CHARS = 2048


def _page(name: str, status_code: int = 200) -> Response:
    return FileResponse(
        STATIC / name,
        status_code=status_code,
        media_type="text/html; charset=utf-8",
        headers={"cache-control": "no-store"},
    )


async def _principal(request: Request) -> Principal | None:
    state: WebState = request.app.state.web
    try:
        return await state.access.principal(request)
    except errors.FlowtrackError:
        return None


def local_path(target: str) -> str | None:
    """`target` if it is a path on this server ("/campaigns/x?y"), else None:
    never another origin ("//evil", "/\\evil", "https://..."), so that
    `next` cannot make the sign-in an open redirect."""
    if not target or len(target) > MAX_NEXT_CHARS or not target.isascii() or not target.startswith("/"):
        return None
    if target.startswith("//") or "\\" in target or any(c.isspace() or ord(c) < 0x20 or c == "\x7f" for c in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/"):
        return None
    return target


def _signin_url(reason: str = "", next_path: str | None = None) -> str:
    query = []
    if reason:
        query.append(f"error={quote(reason, safe='')}")
    if next_path and next_path != "/":
        query.append(f"next={quote(next_path, safe='')}")
    return "/signin" + ("?" + "&".join(query) if query else "")


def _here(request: Request) -> str:
    """The path of `request` as the client sent it (still percent-encoded), with its query."""
    raw = request.scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes) else quote(request.url.path)
    query = request.scope.get("query_string", b"").decode("latin-1")
    return path + (f"?{query}" if query else "")


def _to_signin(request: Request, reason: str = "") -> Response:
    response = RedirectResponse(_signin_url(reason, local_path(_here(request))), status_code=303)
    if request.cookies.get(COOKIE):
        response.delete_cookie(COOKIE, path="/")
    return response


async def index(request: Request) -> Response:
    return _page("index.html") if await _principal(request) is not None else _to_signin(request)


async def campaign(request: Request) -> Response:
    """The campaign's page; 404 (a page saying so) for a campaign the caller
    cannot see or that does not exist."""
    principal = await _principal(request)
    if principal is None:
        return _to_signin(request)
    state: WebState = request.app.state.web
    try:
        call = reading(principal, CAMPAIGNS + "GetCampaign")
        try:
            await state.campaigns.get(call, request.path_params["campaign_id"])
        finally:
            call.end()
    except (errors.NotFound, errors.InvalidArgument):
        return _page("notfound.html", status_code=404)
    except errors.FlowtrackError:
        pass  # anything else (e.g. a key without the read scope) is the page's to show
    return _page("campaign.html")


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
    form = parse_qs(body.decode(errors="replace"))
    key = (form.get("key") or [""])[0]
    next_path = local_path((form.get("next") or [""])[0])
    try:
        _, cookie = await state.access.sign_in(key)
    except errors.FlowtrackError as error:
        return RedirectResponse(_signin_url(error.reason, next_path), status_code=303)
    response = RedirectResponse(next_path or "/", status_code=303)
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
        RawRoute("/campaigns/{campaign_id:path}", campaign),
        Route("/signin", signin_page, methods=["GET"]),
        Route("/signin", signin, methods=["POST"]),
        Route("/signout", signout, methods=["POST"]),
        Route("/metrics", metrics),
    ]
