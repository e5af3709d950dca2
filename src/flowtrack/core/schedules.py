"""The report schedule use cases: schedules, their runs and the runs' files
(the runs themselves are made by delivery/runner.py with core/export.py,
through the lease, claim and finish operations at the end of this module).
Each takes a `Call` (core/calls.py) and domain values, and returns the
store's named rows (`Schedule`, `Run`, re-exported here as the results) or
raises domain errors. A schedule's export filters are stored as the bytes
the face gives (the gRPC face: a serialized ExportReportRequest)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from flowtrack.core.background import bookkeeping
from flowtrack.core.calls import Call
from flowtrack.core.export import CHUNK_BYTES
from flowtrack.domain import errors
from flowtrack.domain import schedules as rules
from flowtrack.store import schedules as sschedules
from flowtrack.store.base import Store
from flowtrack.store.schedules import Run, Schedule

__all__ = [
    "LinkedFile",
    "Run",
    "Schedule",
    "Schedules",
    "acquire_lease",
    "claim_run",
    "enqueue_due",
    "expire_runs",
    "finish_run",
    "link_key",
    "release_lease",
    "renew_claim",
]


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


# -- the report runs (delivery/runner.py): the lease, the runs' claims, the link key -------
async def link_key(store: Store) -> bytes:
    """The key that signs download links (created on first use)."""
    return await bookkeeping(store, lambda tx: sschedules.link_key(tx.conn))


async def acquire_lease(store: Store, name: str, holder: str, ttl_us: int) -> bool:
    """Take or renew the lease `name` for `holder` until now + ttl; whether it is `holder`'s."""
    return await bookkeeping(store, sschedules.acquire(name, holder, ttl_us))


async def release_lease(store: Store, name: str, holder: str) -> None:
    """Give the lease `name` up if `holder` has it."""
    await bookkeeping(store, sschedules.release(name, holder))


async def enqueue_due(store: Store) -> int:
    """A run of each cron schedule that is due (a batch of them); how many."""
    return await bookkeeping(store, sschedules.enqueue_due())


async def claim_run(store: Store, holder: str, ttl_us: int) -> tuple[Run, Schedule] | None:
    """The oldest processing run nobody holds, claimed for `holder` until now + ttl, or None."""
    return await bookkeeping(store, sschedules.claim(holder, ttl_us))


async def renew_claim(store: Store, run_id: str, holder: str, ttl_us: int, *, business_id: str) -> bool:
    """Extend `holder`'s claim on a run; False once it is not `holder`'s any more."""
    return await bookkeeping(store, sschedules.renew(run_id, holder, ttl_us, business_id=business_id))


async def finish_run(
    store: Store,
    run_id: str,
    holder: str,
    *,
    business_id: str,
    error: str = "",
    file_name: str = "",
    content_type: str = "",
    path: str = "",
    size: int = 0,
    rows: int = 0,
    event: dict[str, object] | None = None,
) -> bool:
    """A run `holder` claimed, completed (its file, and report.completed
    with `event`) or failed (`error`); False if it is not `holder`'s to
    finish (deleted, or claimed by another since)."""
    return await bookkeeping(
        store,
        sschedules.finish(
            run_id,
            holder,
            business_id=business_id,
            error=error,
            file_name=file_name,
            content_type=content_type,
            path=path,
            size=size,
            rows=rows,
            event=event,
        ),
    )


async def expire_runs(store: Store) -> list[str]:
    """Drop the runs past their schedule's retention (a batch of them); their files' paths."""
    return await bookkeeping(store, sschedules.expire())
