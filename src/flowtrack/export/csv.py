"""CSV that streams: rows in, UTF-8 bytes out, a page at a time.

RFC 4180: comma-separated, fields quoted only when they hold a comma, a quote
or a line break (quotes doubled), CRLF line ends, header row first, no BOM.
A blank cell (None) is an empty field. Memory holds one page.

Safe to open in a spreadsheet (OWASP "CSV injection"): a text cell that a
spreadsheet would run as a formula, one starting with `=`, `+`, `-`, `@`, a
tab or a carriage return, is written with a single quote `'` in front, unless
it is plainly a number (`-12.5`, `1e3`) or an E.164 phone number
(`+5511999990000`), which are written as they are. Every text cell is
covered: recipients, variables, failure reasons, and what anonymous clickers
control (user agent, URL, region, city). Numbers (counts, attempts, shares,
coordinates) are never changed.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence

from flowtrack.export.columns import Cell

CONTENT_TYPE = "text/csv"
EXTENSION = "csv"

# What a spreadsheet takes as the start of a formula (OWASP's list).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_BODY = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_PLAIN_NUMBER = re.compile(rf"[+-]?{_BODY}")  # E.164 (+ and up to 15 digits) is one too
# An encoded page that may hold a field to neutralise. A formula character
# other than CR counts where a field starts: after a quote (a quoted field:
# numbers never are quoted), or after a separator, a line end or at the start
# of the page (an unquoted field, whole up to its separator, so that "+" or
# "-" followed by a number and the separator is plainly a number). A field
# starting with CR is always quoted. It may also match inside a quoted field
# (",=" in a message): then the page is encoded again cell by cell for nothing.
_SUSPECT = re.compile(rf"[=@\t+\-](?:(?<=\".)|(?<![^,\n].)(?:(?<=[=@\t])|(?!{_BODY}(?:,|\r\n|\Z))))")


def _suspect(text: str) -> bool:
    """Whether an encoded page may hold a cell that `neutralise` changes
    (never False when it does)."""
    return _SUSPECT.search(text) is not None or ',"\r' in text or '\n"\r' in text or text.startswith('"\r')


def neutralise(value: str) -> str:
    """`value` as a CSV cell that no spreadsheet runs as a formula: with a
    single quote in front if it starts with a formula character and is not
    plainly a number or an E.164 phone number."""
    if value.startswith(FORMULA_STARTS) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


class CsvEncoder:
    """Encodes rows to CSV bytes: `header()` once, then `write(rows)` per page."""

    def __init__(self, header: Sequence[str]) -> None:
        self._header = header
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\r\n")

    def _take(self) -> str:
        text = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate()
        return text

    def header(self) -> bytes:
        self._writer.writerow(self._header)
        return self._take().encode("utf-8")

    def write(self, rows: Iterable[Sequence[Cell]]) -> bytes:
        """One page of rows as CSV bytes, every text cell `neutralise`d. The
        page is encoded as it is and searched for suspect fields (one pass of
        a regular expression, about half the cost of encoding); only a page
        that has one is encoded again cell by cell, so a page of harmless rows
        costs no Python per cell."""
        page = rows if isinstance(rows, list) else list(rows)
        self._writer.writerows(page)
        text = self._take()
        if _suspect(text):
            starts = FORMULA_STARTS
            self._writer.writerows(
                [[neutralise(c) if c.__class__ is str and c.startswith(starts) else c for c in row] for row in page]
            )
            text = self._take()
        return text.encode("utf-8")
