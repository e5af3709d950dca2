"""ReportScheduleService: report schedules, their runs and signed links.

A schedule's filters are an ExportReport request's, checked the same way
(wire/reports.export_request, the layout included) and stored as that request (the layout
in its own column); runs are made by
delivery/runner.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc

from flowtrack.api.base import Servicer
from flowtrack.api.context import call_of
from flowtrack.api.errors import handle_errors
from flowtrack.config import Settings
from flowtrack.core.schedules import Run, Schedule, Schedules
from flowtrack.domain import errors
from flowtrack.domain import schedules as rules
from flowtrack.domain.campaigns import require_id
from flowtrack.store.base import Store
from flowtrack.v1 import delivery_pb2, delivery_pb2_grpc, report_pb2
from flowtrack.wire.convert import duration_to_us, us_to_duration, us_to_ts
from flowtrack.wire.reports import export_request

Signer = Callable[[str, int], tuple[str, int]]  # (run_id, ttl µs) -> (url, expires unix s)


def schedule_to_proto(s: Schedule) -> delivery_pb2.ReportSchedule:
    filters = report_pb2.ExportReportRequest.FromString(s.filters)
    return delivery_pb2.ReportSchedule(
        id=s.schedule_id,
        name=s.name,
        kind=s.kind,  # type: ignore[arg-type]
        format=s.format,  # type: ignore[arg-type]
        campaign_id=s.campaign_id,
        message_filter=filters.message_filter if filters.HasField("message_filter") else None,
        click_filter=filters.click_filter if filters.HasField("click_filter") else None,
        cron=s.cron,
        time_zone=s.time_zone if s.cron else "",
        on_complete=s.on_complete,
        link_ttl=us_to_duration(s.link_ttl_us),
        retention=us_to_duration(s.retention_us),
        next_run_time=us_to_ts(s.next_run_at),
        create_time=us_to_ts(s.create_time),
        layout=s.layout,  # type: ignore[arg-type]
    )


def run_to_proto(r: Run, schedule_ttl_us: int, sign: Signer) -> delivery_pb2.ReportRun:
    proto = delivery_pb2.ReportRun(
        id=r.run_id,
        schedule_id=r.schedule_id,
        campaign_id=r.campaign_id,
        status=r.status,  # type: ignore[arg-type]
        create_time=us_to_ts(r.create_time),
        complete_time=us_to_ts(r.complete_time),
        error=r.error,
        file_name=r.file_name,
        content_type=r.content_type,
        rows=r.rows,
        bytes=r.bytes,
    )
    if r.status == rules.COMPLETED:
        url, expires = sign(r.run_id, schedule_ttl_us)
        proto.url = url
        proto.expires_at.FromSeconds(expires)
    return proto


class ScheduleServicer(Servicer, delivery_pb2_grpc.ReportScheduleServiceServicer):
    def __init__(self, store: Store, settings: Settings, sign: Signer, reports_dir: Path) -> None:
        super().__init__(store, settings)
        self.sign = sign
        self.core = Schedules(store, reports_dir)

    @handle_errors
    async def CreateReportSchedule(
        self, request: delivery_pb2.CreateReportScheduleRequest, context: grpc.aio.ServicerContext
    ) -> delivery_pb2.CreateReportScheduleResponse:
        s = request.schedule
        draft = rules.ScheduleDraft(
            name=s.name,
            campaign_id=s.campaign_id,
            cron=s.cron.strip(),
            time_zone=s.time_zone,
            on_complete=s.on_complete,
            link_ttl_us=duration_to_us(s.link_ttl) if s.HasField("link_ttl") else None,
            retention_us=duration_to_us(s.retention) if s.HasField("retention") else None,
        )
        export = report_pb2.ExportReportRequest(
            kind=s.kind,
            format=s.format,
            layout=s.layout,
            message_filter=s.message_filter,
            click_filter=s.click_filter,
        )
        violations: list[errors.Violation] = []
        kind = fmt = 0
        try:
            checked = export_request(export)
            kind, fmt = int(checked.kind), int(checked.format)
        except errors.InvalidArgument as bad:
            violations.extend(errors.Violation(f"schedule.{v.field}", v.description, v.reason) for v in bad.violations)
        try:
            rules.check(draft)
        except errors.InvalidArgument as bad:
            violations.extend(bad.violations)
        if s.campaign_id:
            try:
                require_id(s.campaign_id, "schedule.campaign_id")
            except errors.InvalidArgument as bad:
                violations.extend(bad.violations)
        if violations:
            raise errors.InvalidArgument(violations)
        filters = report_pb2.ExportReportRequest()
        if s.HasField("message_filter"):
            filters.message_filter.CopyFrom(s.message_filter)
        if s.HasField("click_filter"):
            filters.click_filter.CopyFrom(s.click_filter)
        schedule = await self.core.create(
            call_of(context), draft, kind, fmt, filters.SerializeToString(deterministic=True), int(s.layout)
        )
        return delivery_pb2.CreateReportScheduleResponse(schedule=schedule_to_proto(schedule))

    @handle_errors
    async def GetReportSchedule(
        self, request: delivery_pb2.GetReportScheduleRequest, context: grpc.aio.ServicerContext
    ) -> delivery_pb2.GetReportScheduleResponse:
        schedule = await self.core.get(call_of(context), request.schedule_id)
        return delivery_pb2.GetReportScheduleResponse(schedule=schedule_to_proto(schedule))

    @handle_errors
    async def ListReportSchedules(
        self, request: delivery_pb2.ListReportSchedulesRequest, context: grpc.aio.ServicerContext
    ) -> delivery_pb2.ListReportSchedulesResponse:
        found = await self.core.list_all(call_of(context))
        return delivery_pb2.ListReportSchedulesResponse(schedules=[schedule_to_proto(s) for s in found])

    @handle_errors
    async def DeleteReportSchedule(
        self, request: delivery_pb2.DeleteReportScheduleRequest, context: grpc.aio.ServicerContext
    ) -> delivery_pb2.DeleteReportScheduleResponse:
        await self.core.delete(call_of(context), request.schedule_id)
        return delivery_pb2.DeleteReportScheduleResponse()

    @handle_errors
    async def ListReports(
        self, request: delivery_pb2.ListReportsRequest, context: grpc.aio.ServicerContext
    ) -> delivery_pb2.ListReportsResponse:
        if request.kind not in report_pb2.ExportKind.values():
            raise errors.invalid("kind", f"unknown kind {request.kind}", "UNKNOWN_VALUE")
        found = await self.core.latest_runs(call_of(context), int(request.kind))
        return delivery_pb2.ListReportsResponse(
            reports=[
                delivery_pb2.Report(
                    schedule=schedule_to_proto(s),
                    latest_run=None if r is None else run_to_proto(r, s.link_ttl_us, self.sign),
                )
                for s, r in found
            ]
        )

    @handle_errors
    async def GetReportRun(
        self, request: delivery_pb2.GetReportRunRequest, context: grpc.aio.ServicerContext
    ) -> delivery_pb2.GetReportRunResponse:
        run, schedule = await self.core.run(call_of(context), request.run_id)
        return delivery_pb2.GetReportRunResponse(run=run_to_proto(run, schedule.link_ttl_us, self.sign))

    @handle_errors
    async def DownloadReportRun(
        self, request: delivery_pb2.DownloadReportRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[delivery_pb2.DownloadReportRunResponse]:
        run, chunks = await self.core.download(call_of(context), request.run_id)
        first = True
        async with contextlib.aclosing(chunks):  # type: ignore[type-var]
            async for chunk in chunks:
                if first:
                    yield delivery_pb2.DownloadReportRunResponse(
                        chunk=chunk, file_name=run.file_name, content_type=run.content_type, size=run.bytes
                    )
                    first = False
                else:
                    yield delivery_pb2.DownloadReportRunResponse(chunk=chunk)
