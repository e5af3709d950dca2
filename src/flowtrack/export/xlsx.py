"""XLSX that streams: rows in, an Excel workbook file out, in constant memory.

xlsxwriter in `constant_memory` mode writes each row to a temporary file as
soon as the next one starts, with inline strings (no shared-string table), so
memory does not grow with the rows. Strings are written as strings, never as
formulas, numbers or links (`strings_to_formulas`, `strings_to_numbers` and
`strings_to_urls` off): a recipient such as `+5511...` or a value starting
with `=` stays text. Numbers (attempt, counts, shares, coordinates) are
numbers. A blank cell is left empty.

A sheet holds at most 1,048,576 rows (Excel's limit); rows beyond continue on
another sheet with the same header ("messages 2", ...).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from flowtrack.export.columns import Cell

CONTENT_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
EXTENSION = "xlsx"
MAX_SHEET_ROWS = 1_048_576

WORKBOOK_OPTIONS = {
    "constant_memory": True,
    "strings_to_urls": False,
    "strings_to_formulas": False,
    "strings_to_numbers": False,
}


class XlsxWriter:
    """Writes rows to a workbook at `path`; `close()` finishes the file."""

    def __init__(
        self,
        path: str,
        sheet_name: str,
        header: Sequence[str],
        *,
        tmpdir: str | None = None,
        max_sheet_rows: int = MAX_SHEET_ROWS,
    ) -> None:
        options: dict[str, object] = dict(WORKBOOK_OPTIONS)
        if tmpdir is not None:
            options["tmpdir"] = tmpdir
        import xlsxwriter  # here, not at every server's and command's start (docs/performance.md)

        self._workbook = xlsxwriter.Workbook(path, options)
        self._bold = self._workbook.add_format({"bold": True})
        self._name = sheet_name
        self._header = header
        self._max = max_sheet_rows
        self._sheets = 0
        self._row = 0
        self._new_sheet()

    def _new_sheet(self) -> None:
        self._sheets += 1
        name = self._name if self._sheets == 1 else f"{self._name} {self._sheets}"
        sheet = self._workbook.add_worksheet(name)
        sheet.freeze_panes(1, 0)
        for col, title in enumerate(self._header):
            sheet.write_string(0, col, title, self._bold)
        self._string = sheet.write_string
        self._number = sheet.write_number
        self._row = 1

    @property
    def sheets(self) -> int:
        return self._sheets

    def write(self, rows: Iterable[Sequence[Cell]]) -> bytes:
        """Write rows; returns b"" (the file is only readable after close)."""
        string, number, row, limit = self._string, self._number, self._row, self._max
        for cells in rows:
            if row >= limit:
                self._row = row
                self._new_sheet()
                string, number, row = self._string, self._number, self._row
            for col, value in enumerate(cells):
                if value is None:
                    continue
                if type(value) is str:
                    string(row, col, value)
                else:
                    number(row, col, value)
            row += 1
        self._row = row
        return b""

    def close(self) -> None:
        """Finish the workbook: assemble the .xlsx (zip) file at `path`."""
        self._workbook.close()
