"""Conversions between protos and domain types that several servicers share.
Servicer-specific conversions live beside their servicer."""

from __future__ import annotations

from google.protobuf import duration_pb2, timestamp_pb2

from flowtrack.domain import errors

# The range a Timestamp may hold: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
MIN_SECONDS, MAX_SECONDS = -62_135_596_800, 253_402_300_799


def ts_to_us(ts: timestamp_pb2.Timestamp) -> int:
    """A Timestamp as integer microseconds since the epoch."""
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def checked_ts_to_us(ts: timestamp_pb2.Timestamp, field: str) -> int:
    """ts_to_us of a Timestamp from a request: one outside the valid range
    (year 1 to 9999, nanos 0 to 999,999,999) is INVALID_ARGUMENT on `field`
    (it would not even fit SQLite's 64-bit integers)."""
    if not (MIN_SECONDS <= ts.seconds <= MAX_SECONDS and 0 <= ts.nanos <= 999_999_999):
        raise errors.invalid(field, "not a valid timestamp (years 1 to 9999, nanos 0 to 999999999)", "OUT_OF_RANGE")
    return ts_to_us(ts)


def us_to_ts(us: int | None) -> timestamp_pb2.Timestamp | None:
    """Microseconds since the epoch as a Timestamp (None stays None, so that
    the field is left unset)."""
    if us is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.seconds, micros = divmod(us, 1_000_000)
    ts.nanos = micros * 1000
    return ts


def us_to_duration(us: int) -> duration_pb2.Duration:
    """Microseconds as a Duration."""
    d = duration_pb2.Duration()
    d.seconds, micros = divmod(us, 1_000_000)
    d.nanos = micros * 1000
    return d


def duration_to_us(d: duration_pb2.Duration) -> int:
    """A Duration as integer microseconds (nanos truncated)."""
    return d.seconds * 1_000_000 + int(d.nanos / 1000)
