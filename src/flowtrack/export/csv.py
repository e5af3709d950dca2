"""CSV that streams: rows in, UTF-8 bytes out, a page at a time.

RFC 4180: comma-separated, fields quoted only when they hold a comma, a quote
or a line break (quotes doubled), CRLF line ends, header row first, no BOM.
A blank cell (None) is an empty field. Memory holds one page.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence

from flowtrack.export.columns import Cell

CONTENT_TYPE = "text/csv"
EXTENSION = "csv"


class CsvEncoder:
    """Encodes rows to CSV bytes: `header()` once, then `write(rows)` per page."""

    def __init__(self, header: Sequence[str]) -> None:
        self._header = header
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\r\n")

    def _take(self) -> bytes:
        text = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate()
        return text.encode("utf-8")

    def header(self) -> bytes:
        self._writer.writerow(self._header)
        return self._take()

    def write(self, rows: Iterable[Sequence[Cell]]) -> bytes:
        self._writer.writerows(rows)
        return self._take()
