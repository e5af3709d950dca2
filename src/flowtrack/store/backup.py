"""A consistent copy of a live database, for `flowtrack backup`.

SQLite's online backup API copies every page of the source in one step,
inside one read transaction: in WAL mode that is a snapshot of one commit,
taken while the server goes on writing (the writer is never blocked; only
checkpoints wait until the copy is done, so the WAL may grow meanwhile). The
copy is written under a temporary name beside the target, switched to
rollback-journal mode so that it is one self-contained file, checked with
`PRAGMA integrity_check`, flushed to disk and only then renamed into place:
the target is either the previous file or a complete, checked copy.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from flowtrack.store import sql
from flowtrack.store.db import StorageError, explain
from flowtrack.store.schema import events


@dataclass(frozen=True)
class Copied:
    """What a backup holds."""

    target: Path
    bytes: int
    events: int
    checked: bool


def backup(source: Path, target: Path, *, check: bool = True) -> Copied:
    """Copy the database `source` to `target` (replaced if it exists).
    StorageError, in one line, when either side is not usable or the copy
    fails its integrity check."""
    if not source.is_file():
        raise StorageError(f"no database at {source}")
    folder = target.parent
    if not folder.is_dir():
        raise StorageError(f"cannot write {target}: folder {folder} does not exist")
    if target.exists() and target.samefile(source):
        raise StorageError(f"{target} is the database itself: back it up to another file")
    part = folder / f".{target.name}.{os.getpid()}.part"
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        try:
            src.execute("PRAGMA busy_timeout=10000")
            dst = sqlite3.connect(part, isolation_level=None)
            try:
                src.backup(dst)  # pages=-1: all pages in one step, one snapshot
                dst.execute("PRAGMA journal_mode=DELETE")
                if check:
                    result = dst.execute("PRAGMA integrity_check").fetchall()
                    if result != [("ok",)]:
                        problems = "; ".join(str(row[0]) for row in result[:3])
                        raise StorageError(f"the copy of {source} fails its integrity check: {problems}")
                events = _count_events(dst)
            finally:
                dst.close()
        finally:
            src.close()
        with open(part, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(part, target)
        _fsync_folder(folder)
    except sqlite3.Error as error:
        raise StorageError(f"cannot back up {source}: {explain(error)}") from error
    except OSError as error:
        if isinstance(error, StorageError):
            raise
        raise StorageError(f"cannot back up {source} to {target}: {error.strerror or error}") from error
    finally:
        with contextlib.suppress(OSError):
            part.unlink()
    return Copied(target, target.stat().st_size, events, check)


_EVENTS = select(func.count()).select_from(events)


def _count_events(conn: sqlite3.Connection) -> int:
    try:
        return int(sql.scalar(conn, _EVENTS))
    except sqlite3.OperationalError:  # not a flowtrack database (yet): no events table
        return 0


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable (POSIX: the folder's entry is data too)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
