"""The report schedule use cases: schedules, their runs and the runs' files
(the runs themselves are made by delivery/runner.py with core/export.py).
Each takes a `Call` (core/calls.py) and domain values, and returns the
store's named rows (`Schedule`, `Run`, re-exported here as the results) or
raises domain errors. A schedule's export filters are stored as the bytes
the face gives (the gRPC face: a serialized ExportReportRequest)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from flowtrack.core.calls import Call
from flowtrack.core.export import CHUNK_BYTES
from flowtrack.domain import errors
from flowtrack.domain import schedules as rules
from flowtrack.store import schedules as sschedules
from flowtrack.store.base import Store
from flowtrack.store.schedules import Run, Schedule

__all__ = ["LinkedFile", "Run", "Schedule", "Schedules"]


@dataclass(frozen=True)
class LinkedFile:
    """The file a signed download link leads to."""

    path: Path
    content_type: str
    file_name: str


def checked_id(value: str, field: str) -> str:
    if not value:
        raise errors.invalid(field, "is required", "REQUIRED")
    if len(value) > 64:
        raise errors.invalid(field, "is longer than 64 characters", "TOO_LONG")
    return value


class Schedules:
    def __init__(self, store: Store, reports_dir: Path) -> None:
        self.store = store
        self.reports_dir = reports_dir

    async def create(
        self, call: Call, draft: rules.ScheduleDraft, kind: int, fmt: int, filters: bytes, layout: int
    ) -> Schedule:
        """A schedule checked by the face (rules.check, the export's kind,
        format, layout and filters), stored for the caller's business."""
        return await self.store.write(sschedules.create(call.business_id, draft, kind, fmt, filters, layout))

    async def get(self, call: Call, schedule_id: str) -> Schedule:
        schedule_id = checked_id(schedule_id, "schedule_id")
        return await self.store.read(sschedules.get, call.business_id, schedule_id)

    async def list_all(self, call: Call) -> list[Schedule]:
        return await self.store.read(sschedules.list_schedules, call.business_id)

    async def delete(self, call: Call, schedule_id: str) -> None:
        """The schedule, its runs, and the runs' files."""
        schedule_id = checked_id(schedule_id, "schedule_id")
        paths = await self.store.write(sschedules.delete(call.business_id, schedule_id))
        for path in paths:
            await asyncio.to_thread((self.reports_dir / path).unlink, missing_ok=True)

    async def latest_runs(self, call: Call, kind: int) -> list[tuple[Schedule, Run | None]]:
        return await self.store.read(sschedules.latest_runs, call.business_id, kind)

    async def run(self, call: Call, run_id: str) -> tuple[Run, Schedule]:
        """A run of the caller's and its schedule (NOT_FOUND, REPORT_RUN_NOT_FOUND)."""
        run_id = checked_id(run_id, "run_id")
        found = await self.store.read(sschedules.run, run_id, call.business_id)
        if found is None:
            raise errors.NotFound(f"report run {run_id!r} does not exist", reason="REPORT_RUN_NOT_FOUND")
        schedule = await self.store.read(sschedules.get, call.business_id, found.schedule_id)
        return found, schedule

    async def download(self, call: Call, run_id: str) -> tuple[Run, AsyncIterator[bytes]]:
        """A completed run and its file in chunks of at most CHUNK_BYTES (the
        first may be empty for an empty file; the file is open until the
        chunks end or are closed)."""
        run, _ = await self.run(call, run_id)
        if run.status != rules.COMPLETED:
            raise errors.FailedPrecondition(
                f"report run {run.run_id!r} is not completed" + (f": {run.error}" if run.error else ""),
                reason="REPORT_RUN_NOT_COMPLETED",
            )
        try:
            file = await asyncio.to_thread(open, self.reports_dir / run.path, "rb")
        except FileNotFoundError:
            raise errors.NotFound(f"the file of report run {run.run_id!r} is gone", reason="REPORT_FILE_GONE") from None

        async def chunks() -> AsyncIterator[bytes]:
            try:
                first = True
                while True:
                    chunk = await asyncio.to_thread(file.read, CHUNK_BYTES)
                    if chunk or first:
                        yield chunk
                    first = False
                    if not chunk:
                        break
            finally:
                file.close()

        return run, chunks()

    async def by_link(self, link_key: bytes, run_id: str, expires: str, sig: str, now: float) -> LinkedFile | str:
        """The file a signed link (run id, expiry, signature) leads to, or why
        not: "altered" (the signature does not match), "expired", or "gone"
        (the run, its schedule or its file was deleted). No credential: the
        link is the permission."""
        why = rules.verify(link_key, run_id, expires, sig, now)
        if why is not None:
            return why
        run = await self.store.read(sschedules.run, run_id)
        path = self.reports_dir / run.path if run is not None and run.path else None
        if run is None or run.status != rules.COMPLETED or path is None or not path.is_file():
            return "gone"
        return LinkedFile(path, run.content_type or "application/octet-stream", run.file_name)
