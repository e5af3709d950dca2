"""A deleted campaign leaves nothing behind (issue 10, item 3).

The defect: counter changes of a campaign's events were written at COMMIT,
after a DeleteCampaign in the same commit had removed its rows; the next
campaign got the same internal id (cid) and inherited them: a new campaign
with one message reported total 2, success 1. Now the delete drops the
pending changes, and internal ids are never reused (AUTOINCREMENT, with a
migration that keeps existing databases and clears what earlier deletes left)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from flowtrack.store import db
from flowtrack.v1 import campaign_pb2, common_pb2, ingest_pb2, report_pb2
from tests.conftest import Client, ServerThread, connect_db, error_details
from tests.schema_helpers import build_legacy
from tests.test_faults import DEADLINE, _hold, wait_for
from tests.test_ingest import status


def _in_thread(fn: Callable[[], Any], answers: list[Any]) -> threading.Thread:
    def run() -> None:
        try:
            answers.append(fn())
        except Exception as error:
            answers.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _orphans(server: ServerThread) -> int:
    conn = connect_db(server.settings.database)
    try:
        return int(
            conn.execute(
                "SELECT (SELECT count(*) FROM counters WHERE cid NOT IN (SELECT cid FROM campaigns))"
                " + (SELECT count(*) FROM messages WHERE cid NOT IN (SELECT cid FROM campaigns))"
                " + (SELECT count(*) FROM link_clickers WHERE cid NOT IN (SELECT cid FROM campaigns))"
            ).fetchone()[0]
        )
    finally:
        conn.close()


def _cid(server: ServerThread, campaign_id: str) -> int:
    conn = connect_db(server.settings.database)
    try:
        return int(conn.execute("SELECT cid FROM campaigns WHERE campaign_id = ?", (campaign_id,)).fetchone()[0])
    finally:
        conn.close()


def test_a_delete_in_the_same_commit_as_the_campaigns_events_leaves_nothing(
    served: tuple[ServerThread, Client],
) -> None:
    server, client = served
    # Campaign "old": one message delivered, with a click.
    ok = common_pb2.MESSAGE_STATUS_SUCCESS
    client.ingest.RecordStatusEvent(ingest_pb2.RecordStatusEventRequest(event=status("o1", campaign="old", state=ok)))
    old_cid = _cid(server, "old")
    writer = server.store.writer
    gate, holder = _hold(writer)
    answers: list[Any] = []
    queued = writer._queue.qsize()
    # Another event of "old", then its deletion: both wait behind the held
    # job, so they share one commit, the event first.
    second = status("o2", recipient="+15550002", campaign="old", state=ok)
    threads = [
        _in_thread(
            lambda: client.ingest.RecordStatusEvent(
                ingest_pb2.RecordStatusEventRequest(event=second), timeout=DEADLINE
            ),
            answers,
        )
    ]
    wait_for(lambda: writer._queue.qsize() == queued + 1, "the event queued")
    threads.append(
        _in_thread(
            lambda: client.campaigns.DeleteCampaign(
                campaign_pb2.DeleteCampaignRequest(campaign_id="old"), timeout=DEADLINE
            ),
            answers,
        )
    )
    wait_for(lambda: writer._queue.qsize() == queued + 2, "the delete queued behind it")
    commits = writer.commits
    gate.set()
    holder.join(DEADLINE)
    for thread in threads:
        thread.join(DEADLINE)
    assert writer.commits == commits + 2  # the held job's, then one for the event and the delete
    deleted = next(a for a in answers if isinstance(a, campaign_pb2.DeleteCampaignResponse))
    assert (deleted.deleted_recipients, deleted.deleted_events) == (2, 2)
    assert _orphans(server) == 0, "rows of the deleted campaign survived the commit"

    # A new campaign gets a new internal id and starts from nothing.
    client.campaigns.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id="new")))
    client.campaigns.AddRecipients(
        iter(
            [
                campaign_pb2.AddRecipientsRequest(
                    campaign_id="new", recipients=[campaign_pb2.Recipient(recipient="+15559999")]
                )
            ]
        ),
        timeout=DEADLINE,
    )
    assert _cid(server, "new") > old_cid
    stats = client.reports.GetCampaignStats(report_pb2.GetCampaignStatsRequest(campaign_id="new")).stats
    assert (stats.overall.counts.total, stats.overall.counts.pending, stats.overall.counts.success) == (1, 1, 0)
    assert stats.overall.clicks == 0
    # "old" again, as a new campaign: nothing of the deleted one either.
    client.ingest.RecordStatusEvent(ingest_pb2.RecordStatusEventRequest(event=status("o3", campaign="old")))
    again = client.reports.GetCampaignStats(report_pb2.GetCampaignStatsRequest(campaign_id="old")).stats
    assert (again.overall.counts.total, again.overall.counts.success) == (1, 0)


def test_a_watcher_of_a_deleted_campaign_never_sees_the_next_one(server: ServerThread, client: Client) -> None:
    client.ingest.RecordStatusEvent(ingest_pb2.RecordStatusEventRequest(event=status("w1", campaign="watched")))
    watch = client.reports.WatchCampaignStats(
        report_pb2.WatchCampaignStatsRequest(campaign_id="watched"), timeout=DEADLINE
    )
    first = next(watch)
    assert first.stats.overall.counts.total == 1
    client.campaigns.DeleteCampaign(campaign_pb2.DeleteCampaignRequest(campaign_id="watched"))
    # Before, this one took the deleted campaign's internal id (the watcher's key).
    for i in range(3):
        client.ingest.RecordStatusEvent(
            ingest_pb2.RecordStatusEventRequest(event=status(f"n{i}", recipient=f"+1555000{i}", campaign="next"))
        )
    rest: list[Any] = []
    try:
        rest.extend(watch)  # ends (OK) once the feed finds the campaign gone
    except grpc.RpcError as error:
        assert error.code() != grpc.StatusCode.DEADLINE_EXCEEDED, "the watch of a deleted campaign did not end"
        assert error_details(error).code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OK)
    assert all(r.stats.campaign_id == "watched" and r.stats.overall.counts.total <= 1 for r in rest), rest


def test_the_migration_keeps_campaigns_and_never_reuses_an_id(tmp_path: Path) -> None:
    """A database of schema version 2 with what an earlier delete left behind
    (counters of a cid that no campaign has, above every campaign's cid)."""
    path = tmp_path / "old.db"
    build_legacy(str(path), upto=2)  # the previous release's SQL migrations 1-2
    conn = db.connect(path)
    conn.execute(
        "INSERT INTO campaigns (cid, business_id, campaign_id, name, state, create_time, update_time)"
        " VALUES (1, 'b', 'kept', 'Kept', 2, 10, 11)"
    )
    conn.execute("INSERT INTO counters VALUES (1, '', 'pending', 4), (3, '', 'success', 1), (3, '', 'pending', 1)")
    conn.close()

    conn = db.open_database(path)  # migrates
    try:
        assert conn.execute("SELECT cid, campaign_id, name, create_time FROM campaigns").fetchall() == [
            (1, "kept", "Kept", 10)
        ]
        assert conn.execute("SELECT cid, value FROM counters").fetchall() == [(1, 4)]
        conn.execute(
            "INSERT INTO campaigns (business_id, campaign_id, state, create_time, update_time)"
            " VALUES ('b', 'fresh', 2, 20, 20)"
        )
        (fresh,) = conn.execute("SELECT cid FROM campaigns WHERE campaign_id = 'fresh'").fetchone()
        assert fresh > 3, "a new campaign took an id that rows of a deleted one still named"
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
