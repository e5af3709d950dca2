"""Time as the domain keeps it: integer microseconds since the Unix epoch, UTC."""

from __future__ import annotations

import time
from datetime import UTC, datetime

MIN_EVENT_TIME_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z


def now_us() -> int:
    return time.time_ns() // 1000


def to_datetime(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC)


def iso(us: int | None) -> str:
    """ISO 8601 in UTC with milliseconds and a Z, or '' for no time."""
    if us is None:
        return ""
    return to_datetime(us).strftime("%Y-%m-%dT%H:%M:%S.") + f"{(us // 1000) % 1000:03d}Z"
