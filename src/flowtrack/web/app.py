"""The Starlette app of the HTTP listener.

`build_app(state, extra_routes=[...])` assembles the routes of every concern
(pages and metrics, the JSON API, live stats, static files) and wraps them
in `Guard`: security headers on every response and a cap on request bodies.
Another module contributes routes by passing them in `extra_routes` (they
come first, so they may claim their own paths); `state.web` is available to
them as `request.app.state.web`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flowtrack.web import openapi, problems, routes_api, routes_live, routes_pages
from flowtrack.web.state import WebState

# No inline script or style, nothing from another origin, never in a frame.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class Guard:
    """ASGI middleware: security headers on every response (streams too), and
    413 for a request whose declared body is over `max_body_bytes`."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, tls: bool) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.headers = list(SECURITY_HEADERS)
        if tls:
            self.headers.append((b"strict-transport-security", b"max-age=31536000"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = self.headers

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_body_bytes
                except ValueError:
                    too_big = True
                if too_big:
                    await self._too_large(scope, send_with_headers)
                    return
        await self.app(scope, receive, send_with_headers)

    async def _too_large(self, scope: Scope, send: Send) -> None:
        detail = f"request body too large (at most {self.max_body_bytes} bytes)"
        if str(scope.get("path", "")).startswith("/api/"):
            problem = problems.body("RESOURCE_EXHAUSTED", detail, status=413, reason="BODY_TOO_LARGE")
            kind, body = problems.MEDIA_TYPE.encode(), json.dumps(problem, separators=(",", ":")).encode()
        else:
            kind, body = b"text/plain; charset=utf-8", f"{detail}\n".encode()
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", kind)]})
        await send({"type": "http.response.body", "body": body})


def build_app(state: WebState, extra_routes: Sequence[BaseRoute] = ()) -> ASGIApp:
    routes: list[BaseRoute] = [
        *extra_routes,
        *routes_live.routes(),
        *routes_api.routes(),
        *openapi.routes(),
        *routes_pages.routes(),
        Mount("/static", StaticFiles(directory=routes_pages.STATIC), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers=problems.EXCEPTION_HANDLERS)
    app.state.web = state
    return Guard(app, max_body_bytes=state.settings.http_max_body_bytes, tls=state.tls)
