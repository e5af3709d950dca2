"""The read time limit on PostgreSQL."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from psycopg import errors as pgerrors

from flowtrack.store.pg.conn import SESSION_OPTIONS
from flowtrack.store.timelimit import ReadTimeLimit


class PgTimeLimit:
    """The read time limit on PostgreSQL: the connection's statement_timeout
    (set when it is opened) stops a statement; this names the error."""

    def __init__(self) -> None:
        self.at: float | None = None

    @contextlib.contextmanager
    def limited(self, seconds: float) -> Iterator[None]:
        if seconds <= 0:
            yield
            return
        try:
            yield
        except pgerrors.QueryCanceled as error:
            if "statement timeout" in str(error):
                raise ReadTimeLimit(
                    f"the read ran longer than the read time limit ({seconds:g} s, --read-time-limit): "
                    "narrow it with a filter or a smaller page_size"
                ) from error
            raise


def session_options(read_time_limit: float) -> str:
    timeout = f" -c statement_timeout={int(read_time_limit * 1000)}" if read_time_limit > 0 else ""
    return SESSION_OPTIONS + timeout
