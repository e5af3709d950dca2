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
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Route

from flowtrack.domain import schedules as rules
from flowtrack.store import schedules as sschedules
from flowtrack.store.base import Store


def routes(store: Store, link_key: bytes, reports_dir: Path) -> list[Route]:
    """The download route, for the HTTP listener's app."""

    async def download(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        why = rules.verify(
            link_key, run_id, request.query_params.get("expires", ""), request.query_params.get("sig", ""), time.time()
        )
        if why == "altered":
            return PlainTextResponse("link altered: its signature does not match\n", status_code=403)
        if why == "expired":
            return PlainTextResponse("link expired: ask for a fresh one (ListReports)\n", status_code=410)
        run = await store.read(sschedules.run, run_id)
        path = reports_dir / run.path if run is not None and run.path else None
        if run is None or run.status != rules.COMPLETED or path is None or not path.is_file():
            return PlainTextResponse("report run deleted: this link no longer leads anywhere\n", status_code=410)
        return FileResponse(
            path,
            media_type=run.content_type or "application/octet-stream",
            filename=run.file_name or None,
            headers={"cache-control": "private, no-store", "x-content-type-options": "nosniff"},
        )

    return [Route(rules.LINK_PATH + "{run_id}", download, methods=["GET", "HEAD"])]
