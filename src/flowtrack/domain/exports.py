"""What a report export asks for and what it answers, as the core takes and
gives them (core/export.py). The numbers are those of report.proto's
ExportKind, ExportFormat and ExportLayout (0 there means the default)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from flowtrack.domain.stats import ClickFilter, MessageFilter


class ExportKind(IntEnum):
    MESSAGES = 1
    CLICKS = 2
    FAILURE_REASONS = 3


class ExportFormat(IntEnum):
    CSV = 1
    XLSX = 2


class ExportLayout(IntEnum):
    FLOWTRACK = 1
    CONNECTLY = 2
    AUDIENCE = 3


@dataclass(frozen=True)
class ExportRequest:
    """A checked export: the filter of the other kind is empty."""

    campaign_id: str
    kind: ExportKind
    format: ExportFormat
    layout: ExportLayout
    message_filter: MessageFilter
    click_filter: ClickFilter


@dataclass(frozen=True)
class ExportChunk:
    """One piece of an export as it streams: the first says the file's name
    and type; every one says rows written so far and the estimate."""

    chunk: bytes = b""
    rows_written: int = 0
    rows_estimate: int = 0
    file_name: str = ""
    content_type: str = ""
