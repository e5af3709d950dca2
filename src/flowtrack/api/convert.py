"""Conversions between protos and domain types that several servicers share.
Servicer-specific conversions live beside their servicer."""

from __future__ import annotations

from google.protobuf import timestamp_pb2


def ts_to_us(ts: timestamp_pb2.Timestamp) -> int:
    """A Timestamp as integer microseconds since the epoch."""
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def us_to_ts(us: int | None) -> timestamp_pb2.Timestamp | None:
    """Microseconds since the epoch as a Timestamp (None stays None, so that
    the field is left unset)."""
    if us is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.seconds, micros = divmod(us, 1_000_000)
    ts.nanos = micros * 1000
    return ts
