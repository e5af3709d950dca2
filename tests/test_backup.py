"""`flowtrack backup` while a server ingests: the copy passes
integrity_check, holds every event acknowledged before the backup started,
is consistent (counters equal a recount of its events, sequences without
holes), is one self-contained file, and a server restored from it carries on
from its last sequence."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from flowtrack.store import check
from flowtrack.v1 import ingest_pb2, ingest_pb2_grpc
from tests.conftest import make_client
from tests.serving import Feeder, Serve, flowtrack
from tests.test_ingest import status

# slow: backups during ingest, with processes (the quick loop, `pytest -m "not slow"`, leaves it out)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.sqlite_only("`flowtrack backup` copies a SQLite file; PostgreSQL is backed up with its own tools"),
]


def test_a_backup_taken_during_ingest_holds_every_acknowledged_event(tmp_path: Path) -> None:
    database = tmp_path / "flowtrack.db"
    out = tmp_path / "copies" / "backup.db"
    out.parent.mkdir()
    server = Serve(database)
    feeder = Feeder(server.address, size=50)
    feeder.start()
    try:
        feeder.wait_for(500)
        before = feeder.acknowledged()  # acknowledged before the backup started
        done = flowtrack("backup", "--database", str(database), str(out))
        assert done.returncode == 0, done.stderr
        assert "integrity_check ok" in done.stderr
        during = len(feeder.acknowledged())
        feeder.wait_for(during + 100)  # the server went on ingesting
    finally:
        feeder.stop()
        server.stop()

    assert sorted(p.name for p in out.parent.iterdir()) == ["backup.db"]  # one file, no -wal, no leftovers
    conn = sqlite3.connect(out)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    stored = {row[0] for row in conn.execute("SELECT event_id FROM events")}
    assert set(before) <= stored
    count, last = conn.execute("SELECT count(*), max(seq) FROM events").fetchone()
    assert count == last >= len(before)  # sequences 1..last, no holes
    [(business_id, cid)] = conn.execute(
        "SELECT business_id, cid FROM campaigns WHERE campaign_id = 'backup'"
    ).fetchall()
    assert check.problems(conn, business_id, cid) == []  # one snapshot: counters agree with its events
    conn.close()

    # Restore as the README says: the server stopped, the copy put in place of the database.
    restored = tmp_path / "restored" / "flowtrack.db"
    restored.parent.mkdir()
    shutil.copyfile(out, restored)
    again = Serve(restored)
    try:
        client = make_client(again.address)
        reply = ingest_pb2_grpc.IngestServiceStub(client.channel).RecordStatusEvent(
            ingest_pb2.RecordStatusEventRequest(
                event=status("after-restore", recipient="+15559999999", campaign="backup")
            ),
            timeout=30,
        )
        assert reply.result.sequence == last + 1
        client.channel.close()
    finally:
        again.stop()


def test_a_backup_refuses_in_one_line(tmp_path: Path) -> None:
    missing = flowtrack("backup", "--database", str(tmp_path / "none.db"), str(tmp_path / "out.db"))
    assert missing.returncode == 1 and missing.stderr == f"flowtrack: no database at {tmp_path / 'none.db'}\n"
    remote = flowtrack("backup", "--database", "postgresql://postgres@127.0.0.1:5432/x", str(tmp_path / "out.db"))
    assert remote.returncode == 1 and "pg_dump" in remote.stderr and len(remote.stderr.splitlines()) == 1
    database = tmp_path / "flowtrack.db"
    Serve(database).stop()
    nowhere = flowtrack("backup", "--database", str(database), str(tmp_path / "no" / "out.db"))
    assert nowhere.returncode == 1
    assert (
        nowhere.stderr
        == f"flowtrack: cannot write {tmp_path / 'no' / 'out.db'}: folder {tmp_path / 'no'} does not exist\n"
    )
    itself = flowtrack("backup", "--database", str(database), str(database))
    assert itself.returncode == 1 and "is the database itself" in itself.stderr
    # A stopped server's database backs up too.
    copied = flowtrack("backup", "--database", str(database), str(tmp_path / "out.db"))
    assert copied.returncode == 0, copied.stderr
