"""Conversions between well-known protos (Timestamp, Duration) and domain
values, shared by every face that speaks protos; a service's own messages
convert in wire/<service>.py (or, until they move, beside their servicer).

Every google.protobuf.Timestamp a request carries is read through
`checked_ts_to_us` / `optional_ts_to_us` (or, for events, the domain's
`Checker.timestamp`), all three on `domain.times.timestamp_us`: a Timestamp
outside its defined range (years 1 to 9999, nanos 0 to 999,999,999) is
INVALID_ARGUMENT, never normalised.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2

from flowtrack.domain import errors, times


def field_path(prefix: str, name: str) -> str:
    """`name` under `prefix` in the field-path convention of violations
    ("filter" + "updated_after" -> "filter.updated_after")."""
    return f"{prefix}.{name}" if prefix else name


def ts_to_us(ts: timestamp_pb2.Timestamp) -> int:
    """A Timestamp that this server built (always in range) as integer
    microseconds since the epoch. A request's Timestamps go through
    `checked_ts_to_us` instead."""
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def checked_ts_to_us(ts: timestamp_pb2.Timestamp, field: str) -> int:
    """A Timestamp from a request as microseconds since the epoch; one outside
    the valid range (years 1 to 9999, nanos 0 to 999,999,999) is
    INVALID_ARGUMENT on `field` (reason OUT_OF_RANGE)."""
    us = times.timestamp_us(ts.seconds, ts.nanos)
    if us is None:
        raise errors.invalid(field, f"is not a valid timestamp ({times.TIMESTAMP_RANGE})", "OUT_OF_RANGE")
    return us


def optional_ts_to_us(message: Any, name: str, prefix: str = "") -> int | None:
    """`checked_ts_to_us` of the Timestamp field `name` of `message`, or None
    when it is unset; a violation names `prefix.name` (the path of `message`
    in the request, e.g. "filter")."""
    if not message.HasField(name):
        return None
    return checked_ts_to_us(getattr(message, name), field_path(prefix, name))


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
