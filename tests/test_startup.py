"""Storage faults that can be known at start-up are refused then, by a real
`flowtrack serve` process, with exit code 2 and one line a person
understands: no traceback, no server half up.

How each fault is planted, for real: the tests run as root, for whom chmod
does not stop a write, so a read-only file or folder is made immutable with
`chattr +i` (which stops root too; chmod is used when not root, and the test
is skipped if neither makes the path refuse a real write). A full disk: the
server's --min-free-bytes is set above the free space that statvfs reports
for the real disk. A disk that fails writes: the server runs under
RLIMIT_FSIZE, so the kernel refuses SQLite's writes past a few KB (EFBIG,
which SQLite reports as a disk I/O error)."""

from __future__ import annotations

import os
import resource
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.serving import Serve


def serve(database: Path, *args: str, limit_file_size: int | None = None) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        if limit_file_size is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))

    return subprocess.run(
        [sys.executable, "-m", "flowtrack", "serve", "--listen", "127.0.0.1:0", "--database", str(database), *args],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The refusal: exit 2, exactly one line on stderr, nothing on stdout."""
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output and done.stdout == "", output
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("flowtrack: cannot open database "), lines[0]
    return lines[0]


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make `path` refuse writes even to root; undone on exit."""
    if os.geteuid() == 0:
        if not shutil.which("chattr"):
            pytest.skip("running as root without chattr: cannot make a path read-only for root")
        made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        if made.returncode != 0:
            pytest.skip(f"chattr +i failed here: {made.stderr.strip()}")
        undo = ["chattr", "-i", str(path)]
    else:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        undo = []
    try:
        probe = path / ".probe" if path.is_dir() else path
        try:
            with open(probe, "ab"):
                pass
        except OSError:
            pass
        else:
            pytest.skip(f"{path} still accepts writes")
        yield
    finally:
        if undo:
            subprocess.run(undo, check=True)
        else:
            path.chmod(mode)


def test_a_missing_folder(tmp_path: Path) -> None:
    line = one_line(serve(tmp_path / "nowhere" / "flowtrack.db"))
    assert line.endswith(f"folder {tmp_path / 'nowhere'} does not exist")


def test_a_folder_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a folder")
    line = one_line(serve(tmp_path / "data" / "flowtrack.db"))
    assert line.endswith(f"{tmp_path / 'data'} is not a folder")


def test_a_database_path_that_is_a_folder(tmp_path: Path) -> None:
    (tmp_path / "flowtrack.db").mkdir()
    assert one_line(serve(tmp_path / "flowtrack.db")).endswith("it is a folder, not a file")


def test_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    database = tmp_path / "flowtrack.db"
    database.write_bytes(b"these are not the pages you are looking for" * 100)
    assert "the file is not a SQLite database" in one_line(serve(database))


def test_a_read_only_database_file(tmp_path: Path) -> None:
    database = tmp_path / "flowtrack.db"
    Serve(database).stop()  # a real database, cleanly closed
    with read_only(database):
        line = one_line(serve(database))
    assert "the file is not writable" in line, line
    Serve(database).stop()  # writable again: it starts


@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_a_read_only_folder(tmp_path: Path, existing: bool) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    database = folder / "flowtrack.db"
    if existing:
        Serve(database).stop()
    with read_only(folder):
        line = one_line(serve(database))
    assert f"folder {folder} is not writable" in line and "flowtrack.db-wal" in line, line
    assert not existing or sqlite3.connect(database).execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_full_disk(tmp_path: Path) -> None:
    stats = os.statvfs(tmp_path)
    needed = stats.f_bavail * stats.f_frsize + 1  # one byte more than the disk has free
    line = one_line(serve(tmp_path / "flowtrack.db", "--min-free-bytes", str(needed)))
    assert "disk full" in line and "--min-free-bytes" in line, line
    assert not (tmp_path / "flowtrack.db").exists()


def test_writes_refused_by_the_disk(tmp_path: Path) -> None:
    line = one_line(serve(tmp_path / "flowtrack.db", limit_file_size=16 * 1024))
    assert "disk I/O error" in line or "disk full" in line, line
