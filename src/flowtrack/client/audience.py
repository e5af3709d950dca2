"""Audiences on the command line: named segments as report filters, and
audience files read for AddRecipients (`flowtrack campaigns add-recipients`).

An audience file is CSV with a header row naming its columns: `recipient`
(required), and any of `channel`, `variant` and `input_variables` (a JSON
object of strings). It is what `flowtrack export CAMPAIGN --layout audience`
writes (a segment of a campaign, e.g. `--segment failed`), taken as it is: the
leading `'` that the export's formula neutralisation puts before a cell
starting with `=`, `+`, `-`, `@`, a tab or CR is taken off again.
"""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO

from flowtrack.domain.segments import SEGMENTS
from flowtrack.v1 import campaign_pb2, report_pb2

BATCH = 1000  # recipients per AddRecipients message
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class AudienceError(ValueError):
    """An audience file that cannot be read (line and why)."""


def set_segment(message_filter: report_pb2.MessageFilter, name: str) -> None:
    """Set a named segment's statuses and engaged segments on a report filter."""
    flt = SEGMENTS[name]
    message_filter.statuses.extend(flt.statuses)  # type: ignore[arg-type]
    for field, did in flt.segments().items():
        setattr(message_filter, field, did)


def _cell(value: str | None) -> str:
    value = value or ""
    if value.startswith("'") and value[1:].startswith(_FORMULA_STARTS):
        return value[1:]
    return value


def recipients(handle: IO[str]) -> Iterator[campaign_pb2.Recipient]:
    """The recipients of an audience file, in order."""
    reader = csv.DictReader(handle)
    if reader.fieldnames is None or "recipient" not in reader.fieldnames:
        raise AudienceError("line 1: the header must name a `recipient` column")
    for row in reader:
        recipient = campaign_pb2.Recipient(
            recipient=_cell(row.get("recipient")),
            channel=_cell(row.get("channel")),
            variant=_cell(row.get("variant")),
        )
        raw = row.get("input_variables") or ""
        if raw:
            try:
                found = json.loads(raw)
            except ValueError:
                found = None
            if not isinstance(found, dict) or not all(isinstance(v, str) for v in found.values()):
                raise AudienceError(f"line {reader.line_num}: input_variables is not a JSON object of strings")
            recipient.input_variables.update(found)
        yield recipient


@contextlib.contextmanager
def rereadable(handle: IO[str]) -> Iterator[IO[str]]:
    """`handle`, or for a stream that cannot seek (standard input, a pipe)
    a temporary file holding a copy of it: an audience file is read twice
    (checked whole, then sent a batch at a time), and never held in memory."""
    if handle.seekable():
        yield handle
        return
    with tempfile.TemporaryFile("w+", encoding="utf-8", newline="") as copy:
        shutil.copyfileobj(handle, copy)
        copy.seek(0)
        yield copy


def requests(campaign_id: str, found: Iterable[campaign_pb2.Recipient]) -> Iterator[campaign_pb2.AddRecipientsRequest]:
    """AddRecipients messages of at most BATCH recipients (the first names the campaign)."""
    batch: list[campaign_pb2.Recipient] = []
    first = True
    for recipient in found:
        batch.append(recipient)
        if len(batch) == BATCH:
            yield campaign_pb2.AddRecipientsRequest(campaign_id=campaign_id if first else "", recipients=batch)
            batch, first = [], False
    if batch or first:
        yield campaign_pb2.AddRecipientsRequest(campaign_id=campaign_id if first else "", recipients=batch)
