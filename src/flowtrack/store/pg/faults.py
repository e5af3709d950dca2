"""PostgreSQL's errors in the client's words: what a failed write means."""

from __future__ import annotations

import psycopg
from psycopg import errors as pgerrors

from flowtrack.domain.errors import FlowtrackError, ResourceExhausted, Unavailable

# Refused by the server for now, rolled back: the writer runs the batch again.
RETRYABLE = (pgerrors.DeadlockDetected, pgerrors.SerializationFailure, pgerrors.LockNotAvailable)


def storage_fault(error: BaseException) -> FlowtrackError | None:
    """The client's error when `error` means the database cannot be written
    now (unreachable, full, read-only, shutting down); None otherwise."""
    if isinstance(error, pgerrors.DiskFull | pgerrors.OutOfMemory | pgerrors.InsufficientResources):
        return ResourceExhausted(
            f"the database server is out of space or memory ({error}): nothing was stored; retry later",
            reason="STORAGE_FULL",
        )
    if isinstance(error, pgerrors.ReadOnlySqlTransaction):
        return Unavailable(
            "the database is read-only (a standby, or default_transaction_read_only): nothing was stored;"
            " retry once it accepts writes",
            reason="DATABASE_READ_ONLY",
        )
    if isinstance(error, psycopg.OperationalError | pgerrors.AdminShutdown | pgerrors.CannotConnectNow):
        return Unavailable(
            f"the database cannot be reached ({str(error).strip() or type(error).__name__}): nothing was stored;"
            " retry with backoff",
            reason="DATABASE_UNAVAILABLE",
        )
    return None


def write_error(error: BaseException) -> FlowtrackError:
    """The client's error for a write that failed with `error` (nothing stored)."""
    if isinstance(error, FlowtrackError):
        return error
    fault = storage_fault(error)
    if fault is not None:
        return fault
    return Unavailable(f"the write failed in the database ({error}) and was rolled back; retry", reason="WRITE_FAILED")
