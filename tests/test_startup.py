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
import socket
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.serving import Serve

# slow: a `flowtrack serve` process for each start-up failure (the quick loop, `pytest -m "not slow"`, leaves it out)
pytestmark = [pytest.mark.sqlite_only("start-up checks of a SQLite file's path and disk"), pytest.mark.slow]


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
    # One byte more than the whole disk holds: never met, however much other
    # processes free meanwhile (free + 1 was met, and the server then ran on).
    needed = stats.f_blocks * stats.f_frsize + 1
    line = one_line(serve(tmp_path / "flowtrack.db", "--min-free-bytes", str(needed)))
    assert "disk full" in line and "--min-free-bytes" in line, line
    assert not (tmp_path / "flowtrack.db").exists()


def test_writes_refused_by_the_disk(tmp_path: Path) -> None:
    line = one_line(serve(tmp_path / "flowtrack.db", limit_file_size=16 * 1024))
    assert "disk I/O error" in line or "disk full" in line, line


# -- addresses, schemes, and a failed start that leaves nothing behind --------------


def flowtrack_serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowtrack", "serve", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def refusal(done: subprocess.CompletedProcess[str]) -> str:
    """Exit 2 and one `flowtrack: ...` line on stderr, no traceback."""
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output and done.stdout == "", output
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("flowtrack: "), line
    return line


@pytest.mark.parametrize("flag", ["--listen", "--http"])
@pytest.mark.parametrize("port", ["99999", "65536", "-5", "+70000"])
def test_a_port_out_of_range_is_one_usage_line(tmp_path: Path, flag: str, port: str) -> None:
    """Was: --http :99999 an OverflowError traceback; --listen :99999 listened
    on 34463 (the port modulo 65536), :65536 on a random port, :-5 on 65531."""
    other = "--http" if flag == "--listen" else "--listen"
    done = flowtrack_serve(flag, f"127.0.0.1:{port}", other, "127.0.0.1:0", "--database", str(tmp_path / "f.db"))
    line = refusal(done)
    assert line == (
        f"flowtrack: {flag} 127.0.0.1:{port}: the port must be 1-65535 (0 picks a free one), not {int(port)}"
    ), line
    assert list(tmp_path.iterdir()) == []


def test_an_unsupported_database_scheme_says_so(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flowtrack", "serve", "--listen", "127.0.0.1:0", "--database", "mysql://u:secret@h/db"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    line = refusal(done)
    assert "unsupported scheme 'mysql'" in line and "postgresql://" in line and "secret" not in line, line
    assert list(tmp_path.iterdir()) == []


def _taken_port() -> socket.socket:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    return taken


@pytest.mark.parametrize("listener", ["gRPC", "HTTP"])
def test_an_address_in_use_says_in_use_and_creates_nothing(tmp_path: Path, listener: str) -> None:
    with _taken_port() as taken:
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        listen, http = (address, "127.0.0.1:0") if listener == "gRPC" else ("127.0.0.1:0", address)
        line = refusal(flowtrack_serve("--listen", listen, "--http", http, "--database", str(tmp_path / "f.db")))
    assert line == f"flowtrack: cannot listen on {address} ({listener}): Address already in use", line
    # No new database, no -wal/-shm, no .owner sidecar, no reports folder.
    assert list(tmp_path.iterdir()) == []


def test_a_failed_start_leaves_what_existed_as_it_was(tmp_path: Path) -> None:
    """An existing database (with its .owner sidecar and reports folder) is
    not removed by a start that fails; a file that is not SQLite stays too."""
    database = tmp_path / "flowtrack.db"
    Serve(database).stop()
    kept = {"flowtrack.db", "flowtrack.db.owner", "flowtrack.db.reports"}
    assert kept <= {p.name for p in tmp_path.iterdir()}
    with _taken_port() as taken:
        refusal(flowtrack_serve("--listen", f"127.0.0.1:{taken.getsockname()[1]}", "--database", str(database)))
    # (SQLite itself may fold and remove the -wal/-shm files when the failed start closes the database.)
    assert kept <= {p.name for p in tmp_path.iterdir()}
    assert sqlite3.connect(database).execute("PRAGMA integrity_check").fetchone() == ("ok",)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    assert "not a SQLite database" in refusal(flowtrack_serve("--listen", "127.0.0.1:0", "--database", str(junk)))
    assert junk.read_bytes() == b"not a database" * 100
    assert not any(p.name.startswith("junk.db") and p != junk for p in tmp_path.iterdir())


def test_a_bad_tls_file_creates_nothing(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("not a certificate")
    folder = tmp_path / "data"
    folder.mkdir()
    args = ("--listen", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(cert))
    line = refusal(flowtrack_serve(*args, "--database", str(folder / "f.db")))
    assert "not PEM" in line, line
    assert list(folder.iterdir()) == []


def test_serve_shows_the_page_by_default_and_gives_it_up_when_its_port_is_taken(tmp_path: Path) -> None:
    """`flowtrack serve` alone serves the page on 127.0.0.1:8080; a second
    server on the machine (the port taken) starts without it, saying so in
    one line that names --http. (Given explicitly, a taken --http is an
    error: test_an_address_in_use_says_in_use_and_creates_nothing.)"""
    default = {"FLOWTRACK_HTTP": ""}  # as a user's shell: no FLOWTRACK_HTTP (conftest turns it off for tests)
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 8080))
        holder.listen()
    except OSError:  # someone else on this machine has it: the same case for the server
        holder.close()
        holder = None  # type: ignore[assignment]
    try:
        second = Serve(tmp_path / "second.db", env=default)
        try:
            log = second.log.read_text()
            [warning] = [line for line in log.splitlines() if "no campaign page" in line]
            assert "127.0.0.1:8080" in warning and "in use" in warning and "--http" in warning, warning
            assert "campaign page at" not in log.split("serving on", 1)[1]
        finally:
            assert second.stop() == 0
    finally:
        if holder is not None:
            holder.close()
    if holder is None:
        pytest.skip("127.0.0.1:8080 is taken on this machine: the page's default could not be shown")
    first = Serve(tmp_path / "first.db", env=default)
    try:
        assert "campaign page at http://127.0.0.1:8080/" in first.log.read_text()
        with urllib.request.urlopen("http://127.0.0.1:8080/", timeout=30) as page:
            assert page.status == 200 and "text/html" in page.headers["content-type"]
    finally:
        assert first.stop() == 0
