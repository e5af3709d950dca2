"""The scheduler tasks: one completes quiet campaigns, one makes report runs.

Every `tick` seconds the first completes the campaigns whose quiet period
passed (core/background.py). The second, every tick and when woken after a
commit, takes or renews the `reports` lease in the database and, only while
it holds it, enqueues the due cron runs, makes the processing runs, and drops
runs past their schedule's retention with their files. The lease lasts three
ticks, at least 10 s; a dead holder's lease lapses and another server takes
over.

Each run is also claimed in a write before it is made (core/schedules.py
`claim_run`: an owner and an expiry, the lease's length), the claim is renewed
every third of it while the file is written, and only the claim's owner
finishes the run. So when a slow run outlives the lease and another server
takes over, that server does not make the same run again, and
report.completed is emitted once; a maker that finds its claim gone (the run
or its campaign deleted, or the claim lapsed and was taken) stops and
deletes its own file.

A run is the export of its schedule's request, made by the same use case as
ExportReport (core/export.py, called as the run's business), written chunk by chunk to `<run>-<holder>.part` in the
reports folder (a name of this server's own: two makers never write one
file), flushed and renamed: a run streams to disk in constant memory, and a
half-written file is never served. A run that fails records why.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from flowtrack.core import background
from flowtrack.core import schedules as cschedules
from flowtrack.core import webhooks as cwebhooks
from flowtrack.core.calls import Call
from flowtrack.core.export import export_report
from flowtrack.core.reports import Reports
from flowtrack.domain import schedules as rules
from flowtrack.domain.errors import FlowtrackError
from flowtrack.domain.keys import ALL_SCOPES, Principal
from flowtrack.domain.times import iso
from flowtrack.store.base import Store
from flowtrack.v1 import report_pb2
from flowtrack.wire.reports import export_request

log = logging.getLogger(__name__)

LEASE = "reports"
RUNS_PER_TICK = 4


class _ClaimLost(Exception):
    """The run's claim is no longer this server's (see the module)."""


def business_folder(business_id: str) -> str:
    """A business's folder name in the reports folder (a hash: no path tricks)."""
    return hashlib.sha256(business_id.encode()).hexdigest()[:16]


class Runner:
    def __init__(
        self,
        store: Store,
        reports: Reports,  # the report use cases: runs are their exports
        *,
        reports_dir: Path,
        link_key: bytes,
        base_url: Callable[[], str],
        default_quiet_us: int,
        tick: float,
        outbox_written: Callable[[], None],
    ) -> None:
        self.store = store
        self.reports = reports
        self.reports_dir = reports_dir
        self.link_key = link_key
        self.base_url = base_url
        self.default_quiet_us = default_quiet_us
        self.tick = tick
        self.outbox_written = outbox_written
        self.holder = secrets.token_hex(8)
        self.lease_us = int(max(3 * tick, 10.0) * 1_000_000)
        self.claim_us = self.lease_us  # how long a run's claim lasts unless renewed
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._tasks: list[asyncio.Task[None]] = []
        self.runs_made = 0
        self.ticks = 0  # rounds done (tests wait on it instead of sleeping)
        self.leased = False  # whether the last round held the lease
        self._renewed = 0.0  # time.monotonic() of the last take or renewal

    def wake(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._wake.set)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._sweep(), name="flowtrack-quiet-campaigns"),
            asyncio.create_task(self._run(), name="flowtrack-reports"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._tasks:
            with contextlib.suppress(Exception):
                await cschedules.release_lease(self.store, LEASE, self.holder)

    def signed_url(self, run_id: str, ttl_us: int) -> tuple[str, int]:
        """A fresh link to a run and when it expires (Unix seconds)."""
        expires = int(time.time() + ttl_us / 1_000_000)
        return rules.link(self.link_key, self.base_url(), run_id, expires), expires

    async def _sweep(self) -> None:
        """Complete quiet campaigns and prune the delivery log every tick
        (apart from runs, which may take long)."""
        while True:
            try:
                if await background.sweep_quiet(self.store, self.default_quiet_us):
                    self.outbox_written()
                    self.wake()
                await cwebhooks.prune(self.store)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("quiet campaign sweep failed")
            await asyncio.sleep(self.tick)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                # Renew a held lease once a third of it has passed (one small write, not one per tick).
                if not self.leased or time.monotonic() - self._renewed > self.lease_us / 3e6:
                    self.leased = await cschedules.acquire_lease(self.store, LEASE, self.holder, self.lease_us)
                    self._renewed = time.monotonic()
                if self.leased:
                    await cschedules.enqueue_due(self.store)
                    for _ in range(RUNS_PER_TICK):
                        if not await self._still_leased():
                            break
                        claimed = await cschedules.claim_run(self.store, self.holder, self.claim_us)
                        if claimed is None:
                            break
                        await self._make(*claimed)
                    for path in await cschedules.expire_runs(self.store):
                        self._remove(path)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("report scheduler tick failed")
            self.ticks += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tick)

    async def _still_leased(self) -> bool:
        """Renew the lease between runs once a third of it has passed."""
        if time.monotonic() - self._renewed > self.lease_us / 3e6:
            self.leased = await cschedules.acquire_lease(self.store, LEASE, self.holder, self.lease_us)
            self._renewed = time.monotonic()
        return self.leased

    async def _keep_claim(self, run_id: str, business_id: str, lost: asyncio.Event) -> None:
        """Renew the claim on `run_id` every third of its length while the
        run is made; set `lost` once it is not this server's any more."""
        while True:
            await asyncio.sleep(self.claim_us / 3e6)
            try:
                kept = await cschedules.renew_claim(
                    self.store, run_id, self.holder, self.claim_us, business_id=business_id
                )
            except asyncio.CancelledError:
                raise
            except Exception:  # the database is away: the claim may still hold; try again
                log.warning("cannot renew the claim on report run %s", run_id, exc_info=True)
                continue
            if not kept:
                lost.set()
                return

    def _remove(self, relative: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.reports_dir / relative).unlink()

    async def _make(self, run: cschedules.Run, schedule: cschedules.Schedule) -> None:
        request = report_pb2.ExportReportRequest.FromString(schedule.filters)
        request.campaign_id = run.campaign_id
        request.kind = schedule.kind  # type: ignore[assignment]
        request.format = schedule.format  # type: ignore[assignment]
        request.layout = schedule.layout  # type: ignore[assignment]
        relative = f"{business_folder(run.business_id)}/{run.run_id}-{self.holder}"
        target = self.reports_dir / relative
        part = target.with_name(target.name + ".part")
        lost = asyncio.Event()
        keeper = asyncio.create_task(self._keep_claim(run.run_id, run.business_id, lost), name="flowtrack-run-claim")
        try:
            await self._write(run, schedule, request, relative, target, part, lost)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    async def _write(
        self,
        run: cschedules.Run,
        schedule: cschedules.Schedule,
        request: report_pb2.ExportReportRequest,
        relative: str,
        target: Path,
        part: Path,
        lost: asyncio.Event,
    ) -> None:
        call = Call(Principal(run.business_id, ALL_SCOPES, None))
        file_name = content_type = ""
        rows = size = 0
        error = ""
        try:
            await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
            with open(part, "wb") as out:
                async for response in export_report(self.reports, export_request(request), call):
                    if lost.is_set():
                        raise _ClaimLost
                    if response.file_name:
                        file_name, content_type = response.file_name, response.content_type
                    if response.chunk:
                        await asyncio.to_thread(out.write, response.chunk)
                        size += len(response.chunk)
                    rows = max(rows, response.rows_written)
                await asyncio.to_thread(out.flush)
                await asyncio.to_thread(os.fsync, out.fileno())
            if lost.is_set():
                raise _ClaimLost
            await asyncio.to_thread(os.replace, part, target)
        except (asyncio.CancelledError, _ClaimLost) as stopped:
            with contextlib.suppress(OSError):
                part.unlink()
            if isinstance(stopped, asyncio.CancelledError):
                raise
            log.warning("report run %s is no longer this server's to make (deleted, or claimed by another)", run.run_id)
            return
        except FlowtrackError as failure:
            if failure.reason == "TOO_MANY_STREAMS":  # clients' streams fill --max-report-streams: later
                with contextlib.suppress(OSError):
                    part.unlink()
                log.info("report run %s waits: %s", run.run_id, failure)
                return  # still processing; made again once its claim lapses
            error = str(failure) or type(failure).__name__
        except OSError as failure:
            error = f"cannot write the report file: {failure.strerror or failure}"
        except Exception as failure:  # the run says why instead of staying processing
            log.exception("report run %s failed", run.run_id)
            error = f"internal error: {type(failure).__name__}: {failure}"
        finally:
            call.end()
        if error:
            with contextlib.suppress(OSError):
                part.unlink()
            await cschedules.finish_run(
                self.store, run.run_id, self.holder, business_id=run.business_id, error=error[:500]
            )
            return
        url, expires = self.signed_url(run.run_id, schedule.link_ttl_us)
        event: dict[str, object] = {
            "schedule_id": schedule.schedule_id,
            "run_id": run.run_id,
            "campaign_id": run.campaign_id,
            "kind": report_pb2.ExportKind.Name(schedule.kind),  # type: ignore[arg-type]
            "format": report_pb2.ExportFormat.Name(schedule.format),  # type: ignore[arg-type]
            "file_name": file_name,
            "content_type": content_type,
            "rows": rows,
            "bytes": size,
            "url": url,
            "expires_at": iso(expires * 1_000_000),
        }
        kept = await cschedules.finish_run(
            self.store,
            run.run_id,
            self.holder,
            business_id=run.business_id,
            file_name=file_name,
            content_type=content_type,
            path=relative,
            size=size,
            rows=rows,
            event=event,
        )
        if not kept:  # the run was deleted meanwhile, or is not this server's to finish
            self._remove(relative)
            return
        self.outbox_written()  # report.completed is waiting
        self.runs_made += 1
