"""The CSV lines of the message export, written straight from the store's rows.

The cells of a row (export/columns.message_cells, export/connectly.cells)
written by `csv.writer` cost two passes over every row (a list of cells, then
the writer's per-character loop) and a search of every page for formula
starts. The functions here write each line at once from the row: a text cell
through `field` (neutralised and quoted exactly as export/csv.py's
`CsvEncoder` writes it), the cells that can hold neither a separator, a quote,
a line break nor a formula start (times, counts, status names) as they are.
The lines are byte for byte what `CsvEncoder.write` makes of the same cells
(tests/test_csvlines.py holds them to it, on random rows); XLSX and the other
exports keep the cells.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from flowtrack.domain.model import Status
from flowtrack.domain.records import ButtonTap, Click, LinkClick, MessageRecord
from flowtrack.export import columns, connectly
from flowtrack.export.columns import Context, iso, variables
from flowtrack.export.csv import FORMULA_STARTS, CsvEncoder, neutralise

# A field that csv.writer (QUOTE_MINIMAL, CRLF line ends) quotes.
_QUOTED = re.compile('[,"\r\n]').search
_REASON_STATUSES = frozenset({int(Status.FAILED), int(Status.NOT_SUBMITTED)})


def field(value: str | None) -> str:
    """A text cell as CSV: empty for None or '', neutralised (export/csv.py)
    and quoted (quotes doubled) when it holds a comma, a quote or a line break."""
    if not value:
        return ""
    if value.startswith(FORMULA_STARTS):
        value = neutralise(value)
    if _QUOTED(value) is None:
        return value
    return '"' + value.replace('"', '""') + '"'


class _Fields(dict[str, str]):
    """`field` of the values of a column that few values fill (channel,
    variant, reasons, exit reasons, goals, output variables), kept: a hit is
    one look-up. At most _KEPT values at a time, each at most _KEPT_LENGTH
    characters long."""

    def __missing__(self, value: str) -> str:
        cell = field(value)
        if len(value) <= _KEPT_LENGTH:
            if len(self) >= _KEPT:
                self.clear()
            self[value] = cell
        return cell


_KEPT = 4096
_KEPT_LENGTH = 256
_few = _Fields()


def context(ctx: Context) -> str:
    """The cells every row of an export shares: business_id, campaign_name, sendout_id."""
    return f"{field(ctx.business_id)},{field(ctx.campaign_name)},{field(ctx.campaign_id)}"


_STATUS_FIELDS = {int(s): field(s.name) for s in Status}


def message_line(
    row: MessageRecord, shared: str, clicks: Sequence[Click] | None, taps: Sequence[ButtonTap] | None = None
) -> str:
    """The CSV line of `columns.message_cells(row, ctx, clicks, taps)`, with
    `shared` = `context(ctx)`."""
    status = row.status
    failed = status in _REASON_STATUSES
    sb, sc, dnc, fl, ns = (
        row.submitted_at,
        row.success_at,
        row.delivery_not_confirmed_at,
        row.failed_at,
        row.not_submitted_at,
    )
    read, opted, replied = row.read_at, row.opted_out_at, row.replied_at
    entered, exited, goal = row.entered_at, row.exited_at, row.goal_at
    inp, outp, nclicks, ntaps, attempt = row.input_vars, row.output_vars, row.clicks, row.button_clicks, row.attempt
    return (
        f"{field(row.recipient)},{shared},{field(row.session_id) if row.session_id else ''},"
        f"{'' if sb is None else iso(sb)},{'' if sc is None else iso(sc)},"
        f"{'' if read is None else iso(read)},{'' if opted is None else iso(opted)},"
        f"{_few[row.reason_code or ''] if failed else ''},{_few[row.reason_message or ''] if failed else ''},"
        f"{field(columns.button_clicks(taps)) if ntaps else ''},"
        f"{field(columns.link_clicks(clicks)) if nclicks else ''},"
        f"{field(variables(inp)) if inp else ''},{_few[variables(outp) or ''] if outp else ''},"
        f"{_STATUS_FIELDS.get(status) or field(str(status))},"
        f"{'' if dnc is None else iso(dnc)},{'' if fl is None else iso(fl)},{'' if ns is None else iso(ns)},"
        f"{'' if attempt is None else attempt},{_few[row.channel or '']},{_few[row.variant or '']},"
        f"{'' if nclicks is None else nclicks},{'' if replied is None else iso(replied)},"
        f"{row.replies or 0},{ntaps or 0},"
        f"{'' if entered is None else iso(entered)},{'' if exited is None else iso(exited)},"
        f"{_few[row.exit_reason or '']},"
        f"{'' if goal is None else iso(goal)},{_few[row.goal_id or '']}\r\n"
    )


def connectly_line(
    row: MessageRecord, shared: str, clicks: Sequence[LinkClick] | None, taps: Sequence[ButtonTap] | None
) -> str:
    """The CSV line of `connectly.cells(row, ctx, clicks, taps)`, with
    `shared` = `context(ctx)`."""
    failed = row.status in _REASON_STATUSES
    stamp = connectly.timestamp
    sb, sc, read, opted = row.submitted_at, row.success_at, row.read_at, row.opted_out_at
    inp, outp = row.input_vars, row.output_vars
    return (
        f"{field(row.recipient)},{shared},{field(row.session_id)},"
        f"{'' if sb is None else stamp(sb)},{'' if sc is None else stamp(sc)},"
        f"{'' if read is None else stamp(read)},{'' if opted is None else stamp(opted)},"
        f"{_few[row.reason_code or ''] if failed else ''},{_few[row.reason_message or ''] if failed else ''},"
        f"{field(connectly.button_clicks(taps)) if taps else ''},"
        f"{field(connectly.link_clicks(clicks)) if clicks else ''},"
        f"{field(variables(inp)) if inp else ''},{field(variables(outp)) if outp else ''}\r\n"
    )


class LineEncoder:
    """CsvEncoder's counterpart for pages of lines made here: `header()`
    once, then `write(lines)` per page."""

    def __init__(self, header: Sequence[str]) -> None:
        self._header = CsvEncoder(header).header()

    def header(self) -> bytes:
        return self._header

    def write(self, lines: list[str]) -> bytes:
        """A page of lines as UTF-8 bytes."""
        return "".join(lines).encode("utf-8")
