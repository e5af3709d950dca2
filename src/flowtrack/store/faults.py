"""Storage faults in words a person understands.

`storage_error(error)` turns a `sqlite3.Error` met while writing into the
domain error the client gets: RESOURCE_EXHAUSTED when the disk (or the
database's size limit) is full, UNAVAILABLE for everything else the world can
do to a database (another process holding the lock, a file that became
read-only, an I/O error). Both are retryable: nothing of the failed write was
stored.
"""

from __future__ import annotations

from flowtrack.domain.errors import FlowtrackError, ResourceExhausted, Unavailable

# Primary result codes (the low byte of the extended code).
_FULL = 13
_BUSY, _LOCKED = 5, 6
_READONLY = 8
_IOERR, _CORRUPT, _CANTOPEN, _NOTADB = 10, 11, 14, 26
_AUTH = 23

# The codes that mean "nothing can be written now" rather than "this one
# write went wrong": they turn health to NOT_SERVING until a write succeeds.
STORAGE_CODES = frozenset({_FULL, _BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT, _CANTOPEN, _NOTADB})


def sqlite_code(error: BaseException) -> int | None:
    """The primary SQLite result code of `error`, or None if it has none."""
    code = getattr(error, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def is_storage_fault(error: BaseException) -> bool:
    """Whether `error` says the database cannot be written at all (disk full,
    locked by another process, read-only, I/O error)."""
    return sqlite_code(error) in STORAGE_CODES


def storage_error(error: BaseException) -> FlowtrackError:
    """The client's error for a write that failed with `error` (nothing stored)."""
    if isinstance(error, FlowtrackError):
        return error
    code = sqlite_code(error)
    if code == _FULL:
        return ResourceExhausted(
            "the server's disk is full (or the database reached its size limit): nothing can be stored until"
            " space is freed; retry later",
            reason="STORAGE_FULL",
        )
    if code in (_BUSY, _LOCKED):
        return Unavailable(
            "the database is locked by another process (a backup, the sqlite3 shell, VACUUM?): nothing was"
            " stored; retry with backoff",
            reason="DATABASE_LOCKED",
        )
    if code == _READONLY:
        return Unavailable(
            "the database has become read-only (its file, its folder or the file system): nothing was stored;"
            " retry once it is writable again",
            reason="DATABASE_READ_ONLY",
        )
    if code in (_IOERR, _CORRUPT, _CANTOPEN, _NOTADB):
        return Unavailable(
            f"the disk failed to read or write the database ({error}): nothing was stored; retry later",
            reason="STORAGE_IO_ERROR",
        )
    return Unavailable(f"the write failed in the database ({error}) and was rolled back; retry", reason="WRITE_FAILED")
