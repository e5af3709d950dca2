"""Routes whose path parameters may hold '/': campaign ids.

A campaign made implicitly by an event has the event's campaign id, any
printable ASCII (domain/validation.py), '/' included. Starlette matches
routes on the *decoded* path, where `/api/campaigns/a%2Fstats` (campaign
"a/stats") and `/api/campaigns/a/stats` (the stats of campaign "a") are the
same string. `RawRoute` matches on the raw path instead (as the client sent
it, still percent-encoded), so the route's fixed parts ('/stats', '/live')
are only ever the client's literal slashes, then percent-decodes each
parameter: a client encodes an id as one path segment (encodeURIComponent,
urllib.parse.quote(id, safe="")) and any valid id is addressable. An id
whose '/' is sent unencoded still works where it is not ambiguous.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

from starlette.routing import Match, Route
from starlette.types import Scope


class RawRoute(Route):
    """A Route matched on `scope["raw_path"]`, its parameters percent-decoded (UTF-8)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        raw = scope.get("raw_path")
        if scope["type"] != "http" or not isinstance(raw, bytes):
            return super().matches(scope)
        path = raw.decode("latin-1")
        root = quote(scope.get("root_path", ""))
        if root and path.startswith(root + "/"):
            path = path[len(root) :]
        match, child = super().matches({**scope, "path": path, "root_path": ""})
        if match != Match.NONE:
            params = dict(child["path_params"])
            for name in self.param_convertors:
                value = params.get(name)
                if isinstance(value, str):
                    params[name] = unquote(value, encoding="utf-8", errors="replace")
            child["path_params"] = params
        return match, child


def segment(value: str) -> str:
    """`value` as one path segment (every '/' and '%' encoded)."""
    return quote(value, safe="")


__all__ = ["RawRoute", "segment"]
