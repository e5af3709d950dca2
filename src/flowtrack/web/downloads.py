"""Signed download links of report runs, as Starlette routes.

`GET /reports/runs/{run_id}?expires=UNIX&sig=HEX` serves a completed run's
file to anyone holding a valid link (no other credential: curl and browsers
work), and reveals nothing else. Refusals are one line of text:

- 403 `link altered`: the signature does not match (any changed character);
- 410 `link expired`: past `expires`;
- 410 `report run deleted`: the run, its schedule or its file is gone.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Route

from flowtrack.core.schedules import LinkedFile, Schedules
from flowtrack.domain import schedules as rules


def routes(schedules: Schedules, link_key: bytes) -> list[Route]:
    """The download route, for the HTTP listener's app."""

    async def download(request: Request) -> Response:
        q = request.query_params
        found = await schedules.by_link(
            link_key, request.path_params["run_id"], q.get("expires", ""), q.get("sig", ""), time.time()
        )
        if found == "altered":
            return PlainTextResponse("link altered: its signature does not match\n", status_code=403)
        if found == "expired":
            return PlainTextResponse("link expired: ask for a fresh one (ListReports)\n", status_code=410)
        if not isinstance(found, LinkedFile):
            return PlainTextResponse("report run deleted: this link no longer leads anywhere\n", status_code=410)
        return FileResponse(
            found.path,
            media_type=found.content_type,
            filename=found.file_name or None,
            headers={"cache-control": "private, no-store", "x-content-type-options": "nosniff"},
        )

    return [Route(rules.LINK_PATH + "{run_id}", download, methods=["GET", "HEAD"])]
