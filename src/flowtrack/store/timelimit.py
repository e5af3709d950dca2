"""A time limit for reads, in the way Datasette's `sqlite_timelimit` does it.

SQLite calls a connection's progress handler every `_STEPS` virtual machine
instructions; the handler returns true once the read's deadline has passed,
and SQLite then stops the statement with SQLITE_INTERRUPT. `TimeLimit(conn)`
installs it and `.limited(seconds)` sets the deadline for one read; `ReadTimeLimit` is what the caller
sees when it passed (RESOURCE_EXHAUSTED over gRPC, reason READ_TIME_LIMIT).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator

from flowtrack.domain.errors import ResourceExhausted

# Instructions between two looks at the clock: a few hundred µs of work.
_STEPS = 10_000


class ReadTimeLimit(ResourceExhausted):
    reason = "READ_TIME_LIMIT"


class TimeLimit:
    """The deadline of one connection's current read (none between reads)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.at: float | None = None
        conn.set_progress_handler(self.passed, _STEPS)

    def passed(self) -> bool:
        return self.at is not None and time.monotonic() > self.at

    @contextlib.contextmanager
    def limited(self, seconds: float) -> Iterator[None]:
        """Run the block's statements with a deadline `seconds` from now (0:
        no limit). A statement stopped by it raises ReadTimeLimit."""
        if seconds <= 0:
            yield
            return
        self.at = time.monotonic() + seconds
        try:
            yield
        except sqlite3.OperationalError as error:
            if self.passed() and "interrupt" in str(error):
                raise ReadTimeLimit(
                    f"the read ran longer than the read time limit ({seconds:g} s, --read-time-limit): "
                    "narrow it with a filter or a smaller page_size"
                ) from error
            raise
        finally:
            self.at = None
