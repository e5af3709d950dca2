"""Time as the domain keeps it: integer microseconds since the Unix epoch, UTC."""

from __future__ import annotations

import time
from datetime import UTC, datetime

MIN_EVENT_TIME_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z

# google.protobuf.Timestamp's defined range: 0001-01-01T00:00:00Z to
# 9999-12-31T23:59:59.999999999Z, nanos 0 to 999,999,999 (never normalised).
MIN_TIMESTAMP_SECONDS = -62_135_596_800
MAX_TIMESTAMP_SECONDS = 253_402_300_799
MAX_TIMESTAMP_NANOS = 999_999_999
TIMESTAMP_RANGE = "0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z, nanos 0 to 999999999"


def timestamp_us(seconds: int, nanos: int) -> int | None:
    """A google.protobuf.Timestamp's (seconds, nanos) as microseconds since
    the epoch (sub-microsecond nanos are dropped), or None when it is outside
    the Timestamp's defined range. The one conversion of a client's time:
    every Timestamp a request carries goes through it."""
    if not (MIN_TIMESTAMP_SECONDS <= seconds <= MAX_TIMESTAMP_SECONDS and 0 <= nanos <= MAX_TIMESTAMP_NANOS):
        return None
    return seconds * 1_000_000 + nanos // 1000


def now_us() -> int:
    return time.time_ns() // 1000


def to_datetime(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC)


def iso(us: int | None) -> str:
    """ISO 8601 in UTC with milliseconds and a Z, or '' for no time."""
    if us is None:
        return ""
    return to_datetime(us).strftime("%Y-%m-%dT%H:%M:%S.") + f"{(us // 1000) % 1000:03d}Z"
