"""One server per database file: an exclusive lock on a sidecar file.

Two `flowtrack serve` processes on one SQLite file would each keep their own
idea of the next `sequence` and hand out the same numbers to different
events. So a server takes `<database>.owner` (e.g. `flowtrack.db.owner`)
with an exclusive `flock` before it opens its write connection, and writes
who it is there (pid, host, listen address, start time, as JSON). A second
server finds the lock taken, reads that file, and refuses to start with one
line naming the owner.

The lock belongs to the open file: it goes when the server closes it on stop,
and when the process dies in any way (the kernel drops it, even after
SIGKILL), so a crashed owner never blocks a restart. The sidecar file itself
is left in place (emptied on a clean stop). The one exception is a start-up
that failed after creating it: `Owner.remove()` deletes it while still
holding the lock, and `acquire` checks, once it holds a lock, that the file
it locked is still the one at the path (else it opens the path again), so two
processes never lock two different files of the same name.

`flowtrack keys` and `flowtrack backup` do not take the lock: they work
beside a running server through SQLite's own locking.

flock works on local file systems; on NFS, Linux emulates it with POSIX
locks, which need a working lock manager.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DatabaseOwned(Exception):
    """Another live process serves this database; the message names it."""


def owner_path(database: str | Path) -> Path:
    """The sidecar lock file of a database: `<database>.owner`."""
    return Path(f"{database}.owner")


def describe(owner: dict[str, Any]) -> str:
    """'pid 123 on host h, listening on 127.0.0.1:50051, since 2026-...' from the sidecar's JSON."""
    parts = [f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}"]
    if owner.get("listen"):
        parts.append(f"listening on {owner['listen']}")
    if owner.get("started_at"):
        parts.append(f"since {owner['started_at']}")
    return ", ".join(parts)


@dataclass
class Owner:
    """The held lock of one database; `release()` lets it go."""

    database: str
    path: Path
    _fd: int | None
    # Whether this process created the sidecar (a failed start removes it).
    created: bool = False

    def record(self, listen: str) -> None:
        """Write who holds the lock (this process, listening on `listen`)."""
        if self._fd is None:
            return
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "listen": listen,
            "database": str(Path(self.database).resolve()),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        data = (json.dumps(info) + "\n").encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def remove(self) -> None:
        """Delete the sidecar (under the lock, so a process that opened it
        meanwhile sees it is gone), then drop the lock. For a start-up that
        failed after creating it."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        self.release()

    def release(self) -> None:
        """Empty the sidecar and drop the lock (idempotent)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the only descriptor of the open file drops the flock


def acquire(database: str | Path, listen: str) -> Owner:
    """Take the database's lock for this process, or raise DatabaseOwned
    naming the process that holds it. OSError when the sidecar cannot be
    created (for example a read-only folder)."""
    path = owner_path(database)
    while True:
        created = True
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            created = False
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:  # removed meanwhile by a failed start: again
                continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            who = describe(holder) if holder else "another process (it is still starting)"
            raise DatabaseOwned(
                f"database {database} is already served by {who}; stop that server first "
                "(only one `flowtrack serve` may own a database; "
                "`flowtrack keys` and `flowtrack backup` work beside it)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, path):
            break
        os.close(fd)  # a failed start removed the file we locked: lock the one at the path now
    owner = Owner(str(database), path, fd, created)
    try:
        owner.record(listen)
    except BaseException:
        owner.release()
        raise
    return owner


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open file `fd` is still the file at `path`."""
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (at_path.st_dev, at_path.st_ino)


def _read(fd: int) -> dict[str, Any]:
    """The holder's JSON, or {} if it is not written (yet) or unreadable."""
    with contextlib.suppress(OSError, ValueError):
        data = os.pread(fd, 4096, 0)
        value = json.loads(data.decode()) if data.strip() else {}
        if isinstance(value, dict):
            return value
    return {}
