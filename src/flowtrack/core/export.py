"""The export use case: a report as a file (CSV or XLSX), streamed in chunks.

The glue between the report queries (store/reports.py, read through a
ReportStream of core/paging.py: one snapshot, the read time limit and the
snapshot's time cap; message and click exports go on from their last row on
a new snapshot when it expires, a failure reasons export ends with
SNAPSHOT_EXPIRED) and the pure writers
(export/). Every page is read, turned into cells and written in a reader
thread (`await store.read(...)`), the next page while the current chunk is
sent, so the event loop is never blocked and memory holds about one page and
one chunk whatever the campaign's size (memory never grows with it).

- CSV: the header goes out in the first message; then a chunk whenever
  1 MiB of rows is ready, and the rest at the end.
- XLSX: rows are written (xlsxwriter, constant_memory) to a file in a temporary
  directory; the workbook is finished when the rows end, then the file is
  streamed in 1 MiB chunks and deleted. Until then the stream carries
  progress messages with an empty chunk.

Every chunk (domain/exports.ExportChunk; the gRPC face sends each as an
ExportReportResponse, the HTTP face its bytes, a report run writes them to
its file) says rows_written and rows_estimate; the first one also says
file_name and content_type. While rows are being read, a message goes out at
least every PROGRESS_SECONDS even with no bytes to send, so a client can
show progress. When the call ends early (an RPC cancelled or past its deadline, an HTTP
client gone, a run stopped) the query is
interrupted, no further page is read, and the temporary directory is removed
once the page in hand is done.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from flowtrack.core import encodings as cencodings
from flowtrack.core.calls import Call
from flowtrack.core.reports import Reports
from flowtrack.domain import stats as dstats
from flowtrack.domain.exports import ExportChunk, ExportFormat, ExportKind, ExportLayout, ExportRequest
from flowtrack.domain.records import EventRecord, MessageRecord
from flowtrack.domain.stats import ReasonRow
from flowtrack.export import audience, columns, connectly, csvlines
from flowtrack.export import csv as csv_export
from flowtrack.export import xlsx as xlsx_export
from flowtrack.store import encodings as sencodings
from flowtrack.store import engaged_reports as sengaged
from flowtrack.store import export as sexport
from flowtrack.store import reports as sreports

T = TypeVar("T")

CHUNK_BYTES = 1 << 20  # at most 1 MiB of file per message (report.proto)
PAGE_ROWS = 1000
PROGRESS_SECONDS = 0.25
STORED_TAIL = "csv_tail"  # the column of a row's stored CSV line tail (store/encodings.py)
_COMPUTED_LAYOUTS = (ExportLayout.CONNECTLY, ExportLayout.AUDIENCE)  # not stored: computed per row
FAILURE_SAMPLES = dstats.DEFAULT_SAMPLE_SIZE

_SLUGS: dict[int, str] = {
    ExportKind.MESSAGES: "messages",
    ExportKind.CLICKS: "clicks",
    ExportKind.FAILURE_REASONS: "failure-reasons",
}
_SHEETS: dict[int, str] = {
    ExportKind.MESSAGES: "messages",
    ExportKind.CLICKS: "clicks",
    ExportKind.FAILURE_REASONS: "failure reasons",
}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

# Background clean-ups of exports that ended early (kept referenced until done).
_cleanups: set[asyncio.Future[None]] = set()


def file_name(campaign_id: str, kind: int, extension: str) -> str:
    """A safe suggested file name, e.g. `spring-2026-messages.csv`."""
    stem = _UNSAFE.sub("_", campaign_id).strip("._") or "campaign"
    return f"{stem}-{_SLUGS[kind]}.{extension}"


def _in_thread(_conn: Any, fn: Callable[..., T], *args: Any) -> T:
    """Run fn(*args) in a reader thread (without its own connection)."""
    return fn(*args)


class _Work:
    """The export's thread-side state: one job at a time; once closed, no job
    runs again and the temporary directory is removed (after a running job)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self.tmpdir: str | None = None

    def run(self, fn: Callable[[], T]) -> T:
        with self._lock:
            if self._closed:
                raise asyncio.CancelledError("export ended")
            return fn()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self.tmpdir is not None:
                shutil.rmtree(self.tmpdir, ignore_errors=True)


async def export_report(reports: Reports, request: ExportRequest, call: Call) -> AsyncIterator[ExportChunk]:
    """The file of `request`, in chunks (see the module); the caller's business only."""
    business_id = call.business_id
    campaign_id = dstats.require_campaign_id(request.campaign_id)
    kind, fmt, layout = request.kind, request.format, request.layout
    mflt, cflt = request.message_filter, request.click_filter
    store = reports.store
    work = _Work()

    async def run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await store.read(_in_thread, work.run, lambda: fn(*args, **kwargs))

    stream = reports.stream(call, campaign_id)
    try:
        ref = await stream.open()
        ctx = columns.Context(business_id, campaign_id, await stream.call(sexport.campaign_name, business_id, ref.cid))
        convert: Callable[[list[Any]], list[list[columns.Cell]]]
        # A CSV of messages (flowtrack and connectly layouts) is written as
        # lines straight from the rows (export/csvlines.py), not as cells.
        lines: Callable[[list[MessageRecord]], list[str]] | None = None
        shared = csvlines.context(ctx)
        # The flowtrack layout's CSV reads the line tails the store keeps
        # (store/encodings.py): rows are (recipient, tail), a NULL tail's row
        # read and written as before.
        stored = kind == ExportKind.MESSAGES and fmt == ExportFormat.CSV and layout not in _COMPUTED_LAYOUTS
        if kind == ExportKind.MESSAGES:
            header: tuple[str, ...] = columns.MESSAGE_HEADER
            statement, values = sreports.message_report_sql(business_id, ref.cid, mflt, None)
            estimate = await stream.call(sexport.message_estimate, business_id, ref.cid, mflt, statement, values)
            tails = STORED_TAIL if stored else None
            await stream.start(
                lambda position: sreports.message_report_sql(business_id, ref.cid, mflt, position, tails),
                None if stored else MessageRecord._make,
                resume=lambda r: r[0],
            )
            cap = columns.LINK_CLICKS_CAP

            def taps_of(rows: list[MessageRecord]) -> dict[str, list[sengaged.ButtonTap]]:
                tapped = [r.recipient for r in rows if r.button_clicks]
                return stream.call_sync(sengaged.button_taps, business_id, ref.cid, tapped, cap) if tapped else {}

            if layout == ExportLayout.AUDIENCE:
                header = audience.HEADER

                def convert(rows: list[MessageRecord]) -> list[list[columns.Cell]]:
                    return [audience.cells(r) for r in rows]

            elif layout == ExportLayout.CONNECTLY:
                header = connectly.HEADER

                def convert(rows: list[MessageRecord]) -> list[list[columns.Cell]]:
                    clicked = [r.recipient for r in rows if r.clicks]
                    found = (
                        stream.call_sync(sengaged.link_clicks, business_id, ref.cid, clicked, cap) if clicked else {}
                    )
                    taps = taps_of(rows)
                    cells = connectly.cells
                    return [cells(r, ctx, found.get(r.recipient), taps.get(r.recipient)) for r in rows]

                def lines(rows: list[MessageRecord]) -> list[str]:
                    clicked = [r.recipient for r in rows if r.clicks]
                    found = (
                        stream.call_sync(sengaged.link_clicks, business_id, ref.cid, clicked, cap) if clicked else {}
                    )
                    taps = taps_of(rows)
                    line = csvlines.connectly_line
                    return [line(r, shared, found.get(r.recipient), taps.get(r.recipient)) for r in rows]

            else:

                def convert(rows: list[MessageRecord]) -> list[list[columns.Cell]]:
                    clicked = [r.recipient for r in rows if r.clicks]
                    found = stream.call_sync(sexport.link_clicks, business_id, ref.cid, clicked, cap) if clicked else {}
                    taps = taps_of(rows)
                    cells = columns.message_cells
                    return [cells(r, ctx, found.get(r.recipient), taps.get(r.recipient)) for r in rows]

                def computed(rows: list[MessageRecord]) -> list[str]:
                    clicked = [r.recipient for r in rows if r.clicks]
                    found = stream.call_sync(sexport.link_clicks, business_id, ref.cid, clicked, cap) if clicked else {}
                    taps = taps_of(rows)
                    line = csvlines.message_line
                    if not found and not taps:
                        return [line(r, shared, None, None) for r in rows]
                    return [line(r, shared, found.get(r.recipient), taps.get(r.recipient)) for r in rows]

                def lines(rows: list[Any]) -> list[str]:
                    absent = [r[0] for r in rows if r[1] is None]
                    if not absent:
                        return cencodings.tail_lines(rows, shared)
                    records = stream.call_sync(sencodings.rows_of, business_id, ref.cid, absent)
                    made = dict(zip([r.recipient for r in records], computed(records), strict=True))
                    field = csvlines.field
                    return [made[r] if t is None else f"{field(r)},{shared}{t}" for r, t in rows]

        elif kind == ExportKind.CLICKS:
            header = columns.CLICK_HEADER
            statement, values = sreports.click_report_sql(business_id, ref.cid, cflt, 0)
            estimate = await stream.call(sexport.click_estimate, business_id, ref.cid, cflt, statement, values)
            await stream.start(
                lambda position: sreports.click_report_sql(business_id, ref.cid, cflt, position or 0),
                EventRecord._make,
                resume=lambda r: r.id,
            )

            def convert(rows: list[EventRecord]) -> list[list[columns.Cell]]:
                return [columns.click_cells(r, ctx) for r in rows]

        else:
            header = columns.FAILURE_HEADER
            reasons_sql = sreports.failure_reasons_sql(business_id, ref.cid, FAILURE_SAMPLES)
            failed, not_submitted = await stream.call(sreports.failure_totals, business_id, ref.cid)
            estimate = await stream.call(sexport.count_rows, *reasons_sql)
            await stream.start(lambda _position: reasons_sql, sreports.reason_row)

            def convert(reasons: list[ReasonRow]) -> list[list[columns.Cell]]:
                return [columns.failure_cells(r, failed, not_submitted) for r in reasons]

        xlsx_path = ""
        writer: csv_export.CsvEncoder | csvlines.LineEncoder | xlsx_export.XlsxWriter
        if fmt == ExportFormat.XLSX:
            work.tmpdir = tempfile.mkdtemp(prefix="flowtrack-export-")
            xlsx_path = os.path.join(work.tmpdir, "export.xlsx")
            writer = await run(xlsx_export.XlsxWriter, xlsx_path, _SHEETS[kind], header, tmpdir=work.tmpdir)
            extension, content_type, first_bytes = xlsx_export.EXTENSION, xlsx_export.CONTENT_TYPE, b""
        elif lines is not None:
            writer, convert = csvlines.LineEncoder(header), lines  # type: ignore[assignment]
            extension, content_type, first_bytes = csv_export.EXTENSION, csv_export.CONTENT_TYPE, writer.header()
        else:
            writer = csv_export.CsvEncoder(header)
            extension, content_type, first_bytes = csv_export.EXTENSION, csv_export.CONTENT_TYPE, writer.header()

        yield ExportChunk(
            chunk=first_bytes,
            file_name=file_name(campaign_id, kind, extension),
            content_type=content_type,
            rows_estimate=estimate,
        )

        def page() -> tuple[bytes, int, bool]:
            rows = stream.rows_sync(PAGE_ROWS)
            if not rows:
                return b"", 0, stream.more
            stream.advance(rows[-1])  # before convert: a new snapshot goes on after these rows
            return writer.write(convert(rows)), len(rows), stream.more  # type: ignore[arg-type]

        written = 0
        buffer = bytearray()
        sent_at = time.monotonic()
        pending: asyncio.Future[tuple[bytes, int, bool]] | None = asyncio.ensure_future(run(page))
        try:
            while pending is not None:
                data, n, more = await pending
                pending = None
                if more and not call.done():
                    pending = asyncio.ensure_future(run(page))
                written += n
                buffer += data
                while len(buffer) >= CHUNK_BYTES:
                    chunk = bytes(buffer[:CHUNK_BYTES])
                    del buffer[:CHUNK_BYTES]
                    yield ExportChunk(chunk=chunk, rows_written=written, rows_estimate=estimate)
                    sent_at = time.monotonic()
                if pending is not None and time.monotonic() - sent_at >= PROGRESS_SECONDS:
                    yield ExportChunk(rows_written=written, rows_estimate=estimate)
                    sent_at = time.monotonic()
        finally:
            if pending is not None:
                pending.cancel()

        if isinstance(writer, xlsx_export.XlsxWriter):
            await run(writer.close)
            with open(xlsx_path, "rb") as file:
                while True:
                    chunk = await run(file.read, CHUNK_BYTES)
                    if not chunk:
                        break
                    yield ExportChunk(chunk=chunk, rows_written=written, rows_estimate=estimate)
        else:
            # The rest of the file, and the final count.
            yield ExportChunk(chunk=bytes(buffer), rows_written=written, rows_estimate=estimate)
    finally:
        stream.close()
        cleanup = asyncio.get_running_loop().run_in_executor(None, work.close)
        _cleanups.add(cleanup)
        cleanup.add_done_callback(_cleanups.discard)
