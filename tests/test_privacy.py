"""Erasing a recipient (issue 21, item 2) on a real server, both backends.

A business holds a recipient in two campaigns, with every kind of personal
datum (identifier, audience and event variables, session and provider ids,
event ids that carry the number, a reply text, a click's IP, user agent,
city and coordinates, a URL with the number in it), beside thousands of
other recipients (enough rows that pages split). After EraseRecipient:

- no byte of the identifier (nor of the reply text, the IP, the user agent,
  the variables) is left in the SQLite database and WAL files, or in any
  row of any PostgreSQL table; PostgreSQL's raw pages are looked at too;
- stats, breakdowns and failure reasons are identical;
- the erasure is recorded (who, when, rows per table; not the identifier);
- later events naming the recipient are refused (RECIPIENT_ERASED), its
  AddRecipients too, and a second EraseRecipient returns the same record;
- another business holding the same identifier keeps everything.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner

from flowtrack.cli import cli
from flowtrack.delivery.setup import reports_dir
from flowtrack.store.privacy import STEP_ROWS
from flowtrack.v1 import campaign_pb2, common_pb2, delivery_pb2, ingest_pb2, privacy_pb2, privacy_pb2_grpc, report_pb2
from tests.conftest import Client, ServerThread, connect_db, error_details, make_client, start_server
from tests.report_helpers import fill_encodings
from tests.tenants import code_of, rows, start_tenants

S = common_pb2
NOW = int(time.time())
WHO = "+4930555123456"  # the recipient erased; no other recipient contains it
REPLY = "ring me on my home phone, said Ada"
IP = "203.0.113.77"
AGENT = "AdasPhone/7.1 (SecretModel)"
CITY = "Quedlinburg"
SECRET_VAR = "Ada Lovelace-Byron"
OTHERS = 2500


def _ts(seconds: float) -> Any:
    from google.protobuf import timestamp_pb2

    return timestamp_pb2.Timestamp(seconds=int(seconds))


def _privacy(client: Client) -> privacy_pb2_grpc.PrivacyServiceStub:
    return privacy_pb2_grpc.PrivacyServiceStub(client.channel)


def _erase(client: Client, recipient: str = WHO) -> privacy_pb2.Erasure:
    request = privacy_pb2.EraseRecipientRequest(recipient=recipient)
    return _privacy(client).EraseRecipient(request, timeout=300).erasure


def _status(event_id: str, recipient: str, campaign: str, state: int, **fields: Any) -> ingest_pb2.Event:
    return ingest_pb2.Event(
        status=ingest_pb2.StatusEvent(
            event_id=event_id, campaign_id=campaign, recipient=recipient, status=state, occurred_at=_ts(NOW - 90),
            **fields,
        )
    )  # fmt: skip


def _send(client: Client, events: list[ingest_pb2.Event]) -> list[ingest_pb2.EventResult]:
    def requests() -> Any:
        for at in range(0, len(events), 500):
            yield ingest_pb2.StreamEventsRequest(events=events[at : at + 500])

    return [r for reply in client.ingest.StreamEvents(requests(), timeout=120) for r in reply.results]


def _audience(client: Client, campaign: str, who: list[str]) -> campaign_pb2.AddRecipientsResponse:
    def requests() -> Any:
        for at in range(0, len(who), 1000):
            yield campaign_pb2.AddRecipientsRequest(
                campaign_id=campaign,
                recipients=[
                    campaign_pb2.Recipient(
                        recipient=r, channel="whatsapp" if i % 3 else "sms", variant="a" if i % 2 else "b",
                        input_variables={"name": SECRET_VAR if r == WHO else f"n{i}"},
                    )
                    for i, r in enumerate(who[at : at + 1000], start=at)
                ],
            )  # fmt: skip

    return client.campaigns.AddRecipients(requests(), timeout=120)


def _seed(client: Client, recipient: str = WHO, others: int = OTHERS) -> None:
    """Two campaigns; `recipient` in both, with every personal datum; others around it."""
    people = [f"+1555{i:07d}" for i in range(others)]
    for campaign in ("spring", "summer"):
        client.campaigns.CreateCampaign(
            campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id=campaign)), timeout=10
        )
        mine = people[: others // 2] if campaign == "summer" else people
        _audience(client, campaign, [*mine[: len(mine) // 2], recipient, *mine[len(mine) // 2 :]])
    events: list[ingest_pb2.Event] = []
    for campaign in ("spring", "summer"):
        for i, person in enumerate(people if campaign == "spring" else people[: others // 2]):
            events.append(_status(f"{campaign}-{i}-s", person, campaign, S.MESSAGE_STATUS_SUBMITTED))
            if i % 5 == 0:
                reason = S.FailureReason(code="BLOCKED", message="blocked by user")
                events.append(_status(f"{campaign}-{i}-f", person, campaign, S.MESSAGE_STATUS_FAILED,
                                      failure_reason=reason))  # fmt: skip
            else:
                events.append(_status(f"{campaign}-{i}-d", person, campaign, S.MESSAGE_STATUS_SUCCESS))
            if i % 4 == 0:
                events.append(_click(f"{campaign}-{i}-c", person, campaign, "10.0.0.1", "Mozilla/5.0", "Berlin"))
    # The recipient: its event ids carry its number (as a provider's ids may).
    for campaign in ("spring", "summer"):
        events += [
            _status(f"wamid.{recipient}.{campaign}.1", recipient, campaign, S.MESSAGE_STATUS_SUBMITTED,
                    provider_message_id=f"wamid.{recipient}", session_id=f"session-of-{recipient}",
                    input_variables={"name": SECRET_VAR}, output_variables={"answer": SECRET_VAR}),
            _status(f"wamid.{recipient}.{campaign}.2", recipient, campaign,
                    S.MESSAGE_STATUS_FAILED if campaign == "summer" else S.MESSAGE_STATUS_SUCCESS,
                    **({"failure_reason": S.FailureReason(code="BLOCKED", message="blocked by user")}
                       if campaign == "summer" else {})),
            _click(f"click.{recipient}.{campaign}", recipient, campaign, IP, AGENT, CITY),
            _engaged(f"reply.{recipient}.{campaign}", recipient, campaign, ingest_pb2.ENGAGEMENT_KIND_REPLIED,
                     text=REPLY),
            _engaged(f"tap.{recipient}.{campaign}", recipient, campaign, ingest_pb2.ENGAGEMENT_KIND_BUTTON_CLICKED,
                     button_id="yes", button_name="Yes"),
            _engaged(f"exit.{recipient}.{campaign}", recipient, campaign, ingest_pb2.ENGAGEMENT_KIND_EXITED_FLOW,
                     exit_reason="done"),
        ]  # fmt: skip
    results = _send(client, events)
    assert {r.outcome for r in results} == {ingest_pb2.EVENT_OUTCOME_ACCEPTED}


def _click(event_id: str, recipient: str, campaign: str, ip: str, agent: str, city: str) -> ingest_pb2.Event:
    return ingest_pb2.Event(
        click=ingest_pb2.ClickEvent(
            event_id=event_id, campaign_id=campaign, recipient=recipient, link_id="Ab12",
            url=f"https://shop.example/offer?to={recipient}", occurred_at=_ts(NOW - 60),
            location=S.Location(country_code="DE", region="Sachsen-Anhalt", city=city, latitude=51.79,
                                longitude=11.14),
            user_agent=agent, ip_address=ip,
        )
    )  # fmt: skip


def _engaged(event_id: str, recipient: str, campaign: str, kind: int, **fields: Any) -> ingest_pb2.Event:
    return ingest_pb2.Event(
        engagement=ingest_pb2.EngagementEvent(
            event_id=event_id, campaign_id=campaign, recipient=recipient, kind=kind, occurred_at=_ts(NOW - 30),
            **fields,
        )
    )  # fmt: skip


def _figures(client: Client) -> list[Any]:
    """Everything a business sees in numbers: stats with every breakdown,
    failure reasons (without their sample recipients), click breakdowns by
    link, country and region."""
    out: list[Any] = []
    for campaign in ("spring", "summer"):
        stats = client.reports.GetCampaignStats(report_pb2.GetCampaignStatsRequest(campaign_id=campaign), timeout=10)
        stats.stats.ClearField("sequence")
        out.append(stats.stats)
        request = report_pb2.StreamFailureReasonsRequest(campaign_id=campaign)
        for page in client.reports.StreamFailureReasons(request, timeout=30):
            for reason in page.reasons:
                reason.ClearField("sample_recipients")
                out.append(reason)
        clicks = client.reports.GetClickBreakdown(report_pb2.GetClickBreakdownRequest(campaign_id=campaign))
        out += [clicks.clicks, clicks.unique_clickers, list(clicks.by_link), list(clicks.by_country)]
        out.append(list(clicks.by_region))
    return out


PERSONAL = (WHO, REPLY, IP, AGENT, CITY, SECRET_VAR)


def _sqlite_files(database: str) -> bytes:
    raw = Path(database).read_bytes()
    wal = Path(database + "-wal")
    return raw + (wal.read_bytes() if wal.exists() else b"")


def _pg_rows(database: str) -> str:
    """Every row of every table, as text."""
    conn = connect_db(database)
    try:
        tables = [t for (t,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        return repr([row for t in tables for row in conn.execute(f"SELECT {t}::text FROM {t}").fetchall()])
    finally:
        conn.close()


def _pg_raw_hits(database: str, needle: str) -> dict[str, int]:
    """Relations (tables, their TOAST and indexes) whose raw pages hold `needle`'s bytes."""
    conn = connect_db(database)
    try:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
        relations = conn.execute(
            "SELECT c.oid::regclass::text, pg_relation_size(c.oid) / current_setting('block_size')::int"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname IN ('public', 'pg_toast') AND c.relkind IN ('r', 'i', 't')"
            " AND (n.nspname = 'public' OR c.relname LIKE 'pg_toast_%')"
        ).fetchall()
        hits: dict[str, int] = {}
        for name, pages in relations:
            found = 0
            for page in range(int(pages)):
                data = bytes(conn.execute(f"SELECT get_raw_page('{name}', {page})").fetchone()[0])
                found += data.count(needle.encode())
            if found:
                hits[name] = found
        return hits
    finally:
        conn.close()


def test_erase_leaves_no_byte_and_the_same_figures(served: tuple[ServerThread, Client]) -> None:
    server, client = served
    database = server.settings.database
    _seed(client)
    assert fill_encodings(server) > 0  # the rows' stored encodings hold the recipient too
    before = _figures(client)
    states = "SELECT cid, status, attempt, success_at, failed_at FROM messages WHERE recipient {} ORDER BY cid"
    held = rows(database, states.format("= ?"), WHO)
    erasure = _erase(client)

    assert erasure.id.startswith("er_") and erasure.HasField("complete_time") and erasure.campaigns == 2
    assert dict(erasure.rows) == {
        "messages": 2, "events": 12, "engagement": 2, "replies": 2, "button_clicks": 2, "link_clickers": 2,
    }  # fmt: skip
    assert _figures(client) == before
    # Its rows are there, under its pseudonym, with their statuses.
    assert len(held) == 2 and rows(database, states.format("LIKE 'erased:%'")) == held
    assert len(set(rows(database, "SELECT recipient FROM messages WHERE recipient LIKE 'erased:%'"))) == 1
    listed = _privacy(client).ListErasures(privacy_pb2.ListErasuresRequest(), timeout=10).erasures
    assert [e.id for e in listed] == [erasure.id]
    if database.startswith("postgresql://"):
        text = _pg_rows(database)
        for datum in PERSONAL:
            assert datum not in text, datum
        # What plain VACUUM leaves (store/pg/vacuum.py): the bytes of dead
        # versions in the pages' free space; a rewrite drops them.
        leftover = _pg_raw_hits(database, WHO)
        print(f"after the erasure and its VACUUM, raw pages holding the identifier: {leftover}")
        conn = connect_db(database)
        conn.execute("VACUUM FULL")
        conn.close()
        for datum in PERSONAL:
            assert _pg_raw_hits(database, datum) == {}, datum
    else:
        raw = _sqlite_files(database)
        assert len(raw) > 1_000_000  # enough rows that pages split
        for datum in PERSONAL:
            assert datum.encode() not in raw, datum
        # Checkpointed and truncated: what the WAL holds is the record's completion.
        assert Path(database + "-wal").stat().st_size < 3 * 4096


def test_later_events_are_refused_and_the_erasure_is_idempotent(served: tuple[ServerThread, Client]) -> None:
    server, client = served
    _seed(client, others=20)
    first = _erase(client)
    assert _erase(client) == first
    late = [
        _status("late-1", WHO, "spring", S.MESSAGE_STATUS_SUCCESS),
        _status("late-2", "+15550000001", "spring", S.MESSAGE_STATUS_SUCCESS),
        _status("late-3", WHO, "autumn", S.MESSAGE_STATUS_SUBMITTED),  # a new campaign too
        _click("late-4", WHO, "spring", IP, AGENT, CITY),
        _engaged("late-5", WHO, "spring", ingest_pb2.ENGAGEMENT_KIND_REPLIED, text=REPLY),
        # A resend of an event stored before the erasure: refused too.
        _status(f"wamid.{WHO}.spring.1", WHO, "spring", S.MESSAGE_STATUS_SUBMITTED),
    ]
    results = _send(client, late)
    outcomes = [(r.outcome, r.reason) for r in results]
    refused = (ingest_pb2.EVENT_OUTCOME_REJECTED, "RECIPIENT_ERASED")
    assert outcomes == [refused, (ingest_pb2.EVENT_OUTCOME_ACCEPTED, ""), refused, refused, refused, refused]
    # A unary call: FAILED_PRECONDITION, reason RECIPIENT_ERASED.
    unary = ingest_pb2.RecordStatusEventRequest(event=_status("late-6", WHO, "spring", S.MESSAGE_STATUS_SUCCESS).status)
    with pytest.raises(grpc.RpcError) as raised:
        client.ingest.RecordStatusEvent(unary, timeout=10)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert error_details(raised.value).reason == "RECIPIENT_ERASED"
    added = _audience(client, "spring", ["+15550009999", WHO])
    assert (added.added, added.invalid) == (1, 1)
    assert [v.reason for v in added.violations] == ["RECIPIENT_ERASED"]
    assert rows(server.settings.database, "SELECT count(*) FROM messages WHERE recipient = ?", WHO) == [(0,)]
    with pytest.raises(grpc.RpcError) as raised:
        _erase(client, "+15559999999")
    assert error_details(raised.value).reason == "RECIPIENT_NOT_FOUND"
    with pytest.raises(grpc.RpcError) as raised:
        _erase(client, "")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


def test_another_business_keeps_the_same_identifier(tmp_path: Path) -> None:
    world = start_tenants(tmp_path)
    try:
        a, b = world.client(world.a.admin), world.client(world.b.admin)
        for c in (a, b):
            _seed(c, others=30)
        b_before = _figures(b)
        b_rows = rows(world.database, "SELECT count(*) FROM events WHERE business_id = ? AND recipient = ?",
                      world.b.business, WHO)  # fmt: skip
        erasure = _erase(a)
        assert erasure.key_id and erasure.key_id in world.a.admin
        assert _figures(b) == b_before
        assert rows(world.database, "SELECT count(*) FROM events WHERE business_id = ? AND recipient = ?",
                    world.b.business, WHO) == b_rows != [(0,)]  # fmt: skip
        assert rows(world.database, "SELECT count(*) FROM events WHERE business_id = ? AND recipient = ?",
                    world.a.business, WHO) == [(0,)]  # fmt: skip
        # B's events for the same identifier are still taken; A's are refused.
        assert [r.outcome for r in _send(b, [_status("b-late", WHO, "spring", S.MESSAGE_STATUS_SUCCESS)])] == [
            ingest_pb2.EVENT_OUTCOME_ACCEPTED
        ]
        assert [r.reason for r in _send(a, [_status("a-late", WHO, "spring", S.MESSAGE_STATUS_SUCCESS)])] == [
            "RECIPIENT_ERASED"
        ]
        # B sees none of A's erasures; B cannot erase for A (it erases its own).
        assert list(_privacy(b).ListErasures(privacy_pb2.ListErasuresRequest(), timeout=10).erasures) == []
        # Erasing needs admin; the record can be read with read.
        reader = world.client(world.a.read)
        assert code_of(lambda: _erase(reader)) == grpc.StatusCode.PERMISSION_DENIED
        listed = _privacy(reader).ListErasures(privacy_pb2.ListErasuresRequest(), timeout=10).erasures
        assert [e.id for e in listed] == [erasure.id]
    finally:
        world.close()


@pytest.mark.sqlite_only("the CLI's wording; the server's work is covered on both backends above")
def test_the_command_refuses_without_yes(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        client = make_client(server.address)
        _seed(client, others=4)
        address = ["--address", server.address]
        refused = CliRunner().invoke(cli, ["recipients", "erase", WHO, *address])
        assert refused.exit_code == 1 and "--yes" in refused.output and "would erase" in refused.output
        assert rows(server.settings.database, "SELECT count(*) FROM erasures") == [(0,)]
        done = CliRunner().invoke(cli, ["recipients", "erase", WHO, "--yes", *address])
        assert done.exit_code == 0, done.output
        assert (
            done.output.startswith("er_") and "erased in 2 campaign(s)" in done.output and "messages 2" in done.output
        )
        listed = CliRunner().invoke(cli, ["recipients", "erasures", *address])
        assert listed.exit_code == 0 and "done" in listed.output and WHO not in listed.output
        client.channel.close()
    finally:
        server.stop()


@pytest.mark.sqlite_only("SQLite's free list: pages a deleted campaign left, with their old content")
def test_free_pages_are_scrubbed_too(served: tuple[ServerThread, Client]) -> None:
    server, client = served
    database = server.settings.database
    # A campaign of the recipient, deleted: its pages go to the free list as they were.
    client.campaigns.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id="old")))
    people = [f"+1666{i:07d}" for i in range(3000)]
    _audience(client, "old", [*people[:1500], WHO, *people[1500:]])
    events = [_status(f"old-{i}", p, "old", S.MESSAGE_STATUS_SUBMITTED) for i, p in enumerate(people)]
    events += [_click(f"old.{WHO}.{i}", WHO, "old", IP, AGENT, CITY) for i in range(50)]
    _send(client, events)
    client.campaigns.DeleteCampaign(campaign_pb2.DeleteCampaignRequest(campaign_id="old"), timeout=60)
    _seed(client, others=200)
    conn = sqlite3.connect(database)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    conn.close()
    assert free > 100 and WHO.encode() in _sqlite_files(database)
    _erase(client)
    raw = _sqlite_files(database)
    for datum in PERSONAL:
        assert datum.encode() not in raw, datum
    assert rows(database, "SELECT count(*) FROM server_settings WHERE key LIKE 'flowtrack.scrub.%'") == [(0,)]


def test_report_runs_of_its_campaigns_are_deleted_with_their_files(tmp_path: Path) -> None:
    from tests.test_delivered import FAST, Api, completed_run, finish_all, http_get, latest, make_campaign

    server = start_server(tmp_path, http="127.0.0.1:0", **FAST)
    try:
        api = Api(server.address)
        schedule = delivery_pb2.ReportSchedule(on_complete=True)
        api.schedules.CreateReportSchedule(delivery_pb2.CreateReportScheduleRequest(schedule=schedule))
        make_campaign(api, "done", 3)
        finish_all(api, "done", 3)
        run = completed_run(api)
        status, body, _ = http_get(run.url)
        assert status == 200 and b"+15550000001" in body
        files = [p for p in reports_dir(server.settings).rglob("*") if p.is_file()]
        assert len(files) == 1
        erasure = _erase(api.client, "+15550000001")
        assert erasure.rows["report_runs"] == 1
        assert not files[0].exists()
        assert http_get(run.url)[0] == 410
        assert latest(api) is None  # the schedule stays
        # The campaign's figures stay.
        stats = api.client.reports.GetCampaignStats(report_pb2.GetCampaignStatsRequest(campaign_id="done"))
        assert (stats.stats.overall.counts.total, stats.stats.overall.counts.success) == (3, 3)
        api.client.channel.close()
    finally:
        server.stop()


def test_a_large_recipient_is_erased_in_bounded_steps(
    served: tuple[ServerThread, Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    """1,200 clicks of one recipient in one campaign: more than a step's rows
    (store.privacy.STEP_ROWS), so the campaign is continued step after step
    (the steps counted as the writer runs them, not from the log)."""
    from flowtrack.store import privacy as queries

    server, client = served
    ran: list[int] = []
    step = queries.step

    def counted(*args: Any, **kwargs: Any) -> Any:
        job = step(*args, **kwargs)

        def run(tx: Any) -> Any:
            ran.append(1)
            return job(tx)

        return run

    monkeypatch.setattr(queries, "step", counted)
    _seed(client, others=10)
    _send(client, [_click(f"many.{i}", WHO, "spring", IP, AGENT, CITY) for i in range(1200)])
    before = _figures(client)
    erasure = _erase(client)
    assert erasure.rows["events"] == 1212 and erasure.campaigns == 2
    assert _figures(client) == before
    assert len(ran) >= 1212 // STEP_ROWS, ran
    assert rows(server.settings.database, "SELECT count(*) FROM events WHERE recipient = ?", WHO) == [(0,)]


@pytest.mark.own_backend("PostgreSQL only: two replicas on one database")
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_another_replica_refuses_the_erased_recipient_at_once(tmp_path: Path) -> None:
    """The erasure commits through one replica; the very next event for the
    recipient through another is refused (both lock the business's row)."""
    first, second = start_server(tmp_path), start_server(tmp_path)
    one, two = make_client(first.address), make_client(second.address)
    try:
        _seed(one, others=10)
        # The other replica has written for this business before (its state is warm).
        assert [
            r.outcome for r in _send(two, [_status("warm", "+15550000001", "spring", S.MESSAGE_STATUS_SUBMITTED)])
        ] == [ingest_pb2.EVENT_OUTCOME_ACCEPTED]
        _erase(one)
        results = _send(two, [_status("after", WHO, "summer", S.MESSAGE_STATUS_SUCCESS)])
        assert [(r.outcome, r.reason) for r in results] == [(ingest_pb2.EVENT_OUTCOME_REJECTED, "RECIPIENT_ERASED")]
    finally:
        for c in (one, two):
            c.channel.close()
        first.stop()
        second.stop()
