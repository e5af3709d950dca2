"""One server per database (store/owner.py): a second `flowtrack serve` on a
file that a running server owns refuses to start with one line naming the
owner; a SIGKILLed owner does not block a restart; `flowtrack keys` works
beside a running server, which sees its changes, and corrupts nothing."""

from __future__ import annotations

import fcntl
import socket
import sqlite3
import threading
from pathlib import Path

import grpc
import pytest

from flowtrack.server import StartupError, create_server
from flowtrack.store import check, db
from flowtrack.store.owner import owner_path
from flowtrack.v1 import campaign_pb2, campaign_pb2_grpc
from tests.conftest import start_server
from tests.serving import Feeder, Serve, flowtrack

# slow: `flowtrack serve` processes on one file (the quick loop, `pytest -m "not slow"`, leaves it out)
pytestmark = [
    pytest.mark.sqlite_only("the owner lock of a SQLite file (PostgreSQL serves many replicas)"),
    pytest.mark.slow,
]


def test_a_second_server_on_an_owned_database_is_refused_in_one_line(tmp_path: Path) -> None:
    database = tmp_path / "flowtrack.db"
    first = Serve(database)
    try:
        second = flowtrack("serve", "--listen", "127.0.0.1:0", "--database", str(database))
        assert second.returncode == 2, second.stdout + second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        [line] = lines
        assert line.startswith(f"flowtrack: database {database} is already served by pid {first.process.pid}"), line
        assert f"on host {socket.gethostname()}" in line and f"listening on {first.address}" in line, line
        assert "Traceback" not in second.stdout + second.stderr
        assert first.process.poll() is None  # the owner carries on
    finally:
        first.stop()


def test_a_killed_owner_does_not_block_a_restart(tmp_path: Path) -> None:
    database = tmp_path / "flowtrack.db"
    first = Serve(database)
    feeder = Feeder(first.address, size=20)
    feeder.start()
    feeder.wait_for(100)
    first.kill()  # SIGKILL: no clean stop, the kernel drops the lock
    feeder.join(timeout=60)
    acked = feeder.acknowledged()
    restarted = Serve(database)  # starts: nothing blocks it
    try:
        conn = sqlite3.connect(database)
        stored = {row[0] for row in conn.execute("SELECT event_id FROM events")}
        assert set(acked) <= stored
        conn.close()
    finally:
        assert restarted.stop() == 0
    # A clean stop empties the sidecar; a new server takes it again.
    assert owner_path(database).read_text() == ""
    Serve(database).stop()


def test_two_servers_in_one_process_are_refused_and_a_stop_releases(tmp_path: Path) -> None:
    first = start_server(tmp_path)
    try:
        with pytest.raises(StartupError, match=r"already served by pid \d+ on host .*listening on 127\.0\.0\.1:\d+"):
            first._call(create_server(first.settings))
    finally:
        first.stop()
    second = start_server(tmp_path)  # the stopped server let go
    second.stop()


def test_keys_beside_a_running_server(tmp_path: Path) -> None:
    """keys create, list and revoke while a server runs and ingests: the
    server sees the new key at once and the revocation (cache 0) at once;
    nothing is lost or corrupted."""
    database = tmp_path / "flowtrack.db"
    server = Serve(database, "--key-cache-seconds", "0")
    # A batch every 20 ms: events still stream in while each command runs
    # (wait_for below), without the server ingesting flat out for the whole
    # test (12.6 s of its 17 s of CPU before, docs/performance.md).
    feeder = Feeder(server.address, size=20, pause=0.02)
    feeder.start()
    try:
        feeder.wait_for(100)  # open mode: no key yet
        made = []
        for n in range(5):  # while events stream in
            created = flowtrack(
                "keys", "create", "--business", "default", "--scope", "admin", "--name", f"k{n}",
                "--database", str(database),
            )  # fmt: skip
            assert created.returncode == 0, created.stderr
            made.append(created.stdout.strip())
        listed = flowtrack("keys", "list", "--json", "--database", str(database))
        assert listed.returncode == 0 and listed.stdout.count("\n") == 5, listed.stdout + listed.stderr

        with grpc.insecure_channel(server.address) as channel:
            stub = campaign_pb2_grpc.CampaignServiceStub(channel)
            request = campaign_pb2.ListCampaignsRequest()
            with pytest.raises(grpc.RpcError) as refused:
                stub.ListCampaigns(request, timeout=30)  # keys exist: open mode ended
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            key = made[0]
            reply = stub.ListCampaigns(request, metadata=[("x-api-key", key)], timeout=30)
            assert [c.id for c in reply.campaigns] == ["backup"]  # the feeder's campaign, as business default
            revoked = flowtrack("keys", "revoke", key.split("_")[1], "--database", str(database))
            assert revoked.returncode == 0 and "revoked" in revoked.stdout, revoked.stderr
            with pytest.raises(grpc.RpcError) as gone:
                stub.ListCampaigns(request, metadata=[("x-api-key", key)], timeout=30)
            assert gone.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert stub.ListCampaigns(request, metadata=[("x-api-key", made[1])], timeout=30).campaigns
    finally:
        feeder.stop()
        assert server.stop() == 0
    conn = sqlite3.connect(database)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    stored = {row[0] for row in conn.execute("SELECT event_id FROM events")}
    assert set(feeder.acknowledged()) <= stored
    [(business_id, cid)] = conn.execute(
        "SELECT business_id, cid FROM campaigns WHERE campaign_id = 'backup'"
    ).fetchall()
    assert check.problems(conn, business_id, cid) == []
    assert conn.execute("SELECT count(*) FROM api_keys").fetchone() == (5,)


def test_migrations_started_together_apply_once(tmp_path: Path) -> None:
    """A server and `flowtrack keys` opening a new file at the same moment:
    the schema is made once, neither fails."""
    path = tmp_path / "race.db"
    start = threading.Barrier(4)
    results: list[object] = []

    def open_and_migrate() -> None:
        conn = db.connect(path)
        start.wait()
        try:
            results.append(db.migrate(conn))
        except Exception as error:  # collected, asserted below
            results.append(error)
        finally:
            conn.close()

    threads = [threading.Thread(target=open_and_migrate) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(isinstance(r, list) for r in results), results
    from flowtrack.store import upgrade

    applied = sorted(v for r in results if isinstance(r, list) for v in r)
    assert applied == upgrade.revisions()  # by one of them; the others found it done


def test_keys_create_refuses_a_missing_database_unless_asked(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    refused = flowtrack("keys", "create", "--business", "acme", "--scope", "read", "--database", str(missing))
    assert refused.returncode == 1 and not missing.exists()
    assert refused.stderr.strip().splitlines() == [
        f"Error: no database at {missing}: pass --database (or set FLOWTRACK_DATABASE) to the server's file, "
        "or --create-database to make a new one"
    ]
    made = flowtrack(
        "keys", "create", "--business", "acme", "--scope", "read", "--create-database", "--database", str(missing)
    )
    assert made.returncode == 0 and made.stdout.startswith("ftk_") and missing.is_file(), made.stderr


def test_a_sidecar_removed_by_a_failed_start_is_never_locked_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start that fails removes the `.owner` it created (under its lock).
    A process that opened that file just before locks a file no longer at
    the path: it must notice and lock the one at the path, or two servers
    would each hold "the" lock. Planted: the file is removed between a
    process's open and its flock."""
    from flowtrack.store import owner as ownership

    database = tmp_path / "flowtrack.db"
    failed = ownership.acquire(database, "127.0.0.1:1")
    assert failed.created
    real_flock = fcntl.flock
    calls: list[int] = []

    def flock(fd: int, operation: int) -> None:
        if not calls:  # the failed start removes its sidecar now, between our open and our flock
            failed.remove()
        calls.append(fd)
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    first = ownership.acquire(database, "127.0.0.1:2")
    monkeypatch.setattr(fcntl, "flock", real_flock)
    try:
        assert len(calls) == 2 and owner_path(database).exists()
        with pytest.raises(ownership.DatabaseOwned, match=r"127\.0\.0\.1:2"):
            ownership.acquire(database, "127.0.0.1:3")
    finally:
        first.release()
