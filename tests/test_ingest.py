"""IngestService over real gRPC: outcomes, validation, strict campaigns, IP
storage, batch caps, back-pressure, and the counters agreeing with a recount."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from flowtrack.domain.model import ClickEvent
from flowtrack.domain.validation import fingerprint
from flowtrack.store import check
from flowtrack.v1 import common_pb2, ingest_pb2
from tests.conftest import Backend, Client, ServerThread, connect_db, error_details, make_client, start_server

S = common_pb2
NOW = int(time.time())


def ts(seconds: float) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=int(seconds), nanos=int((seconds % 1) * 1e9))


def status(
    event_id: str,
    recipient: str = "+15550001",
    state: int = S.MESSAGE_STATUS_SUBMITTED,
    campaign: str = "spring",
    at: float = NOW - 60,
    **fields: Any,
) -> ingest_pb2.StatusEvent:
    if state in (S.MESSAGE_STATUS_FAILED, S.MESSAGE_STATUS_NOT_SUBMITTED) and "failure_reason" not in fields:
        fields["failure_reason"] = S.FailureReason(code="BLOCKED", message="blocked by user")
    return ingest_pb2.StatusEvent(
        event_id=event_id, campaign_id=campaign, recipient=recipient, status=state, occurred_at=ts(at), **fields
    )


def click(
    event_id: str, recipient: str = "+15550001", link: str = "Ab12", campaign: str = "spring", **fields: Any
) -> ingest_pb2.ClickEvent:
    return ingest_pb2.ClickEvent(
        event_id=event_id, campaign_id=campaign, recipient=recipient, link_id=link, occurred_at=ts(NOW - 30), **fields
    )


def batch(
    *events: ingest_pb2.StatusEvent | ingest_pb2.ClickEvent, batch_id: str = ""
) -> ingest_pb2.StreamEventsRequest:
    wrapped = [
        ingest_pb2.Event(status=e) if isinstance(e, ingest_pb2.StatusEvent) else ingest_pb2.Event(click=e)
        for e in events
    ]
    return ingest_pb2.StreamEventsRequest(batch_id=batch_id, events=wrapped)


def db(server: ServerThread) -> sqlite3.Connection:
    return connect_db(server.settings.database)


def cid_of(conn: sqlite3.Connection, campaign: str = "spring") -> int:
    return int(conn.execute("SELECT cid FROM campaigns WHERE campaign_id = ?", (campaign,)).fetchone()[0])


def business_and_cid(conn: sqlite3.Connection, campaign: str = "spring") -> tuple[str, int]:
    business_id, cid = conn.execute(
        "SELECT business_id, cid FROM campaigns WHERE campaign_id = ?", (campaign,)
    ).fetchone()
    return str(business_id), int(cid)


def record(client: Client, event: ingest_pb2.StatusEvent) -> ingest_pb2.RecordStatusEventResponse:
    return client.ingest.RecordStatusEvent(ingest_pb2.RecordStatusEventRequest(event=event), timeout=10)


def test_unary_accepted_duplicate_conflict(server: ServerThread, client: Client) -> None:
    first = record(client, status("e1", channel="sms"))
    assert first.result.outcome == ingest_pb2.EVENT_OUTCOME_ACCEPTED
    assert first.result.sequence == 1 and first.committed_sequence == 1
    again = record(client, status("e1", channel="sms"))
    assert again.result.outcome == ingest_pb2.EVENT_OUTCOME_DUPLICATE and again.result.sequence == 1
    changed = record(client, status("e1", channel="whatsapp"))
    assert changed.result.outcome == ingest_pb2.EVENT_OUTCOME_CONFLICT
    assert changed.result.reason == "EVENT_ID_REUSED"
    conn = db(server)
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 1
    assert conn.execute("SELECT channel FROM messages").fetchone()[0] == "sms"
    # The event id space is shared by clicks: a click reusing it conflicts.
    reused = client.ingest.RecordClickEvent(ingest_pb2.RecordClickEventRequest(event=click("e1")), timeout=10)
    assert reused.result.outcome == ingest_pb2.EVENT_OUTCOME_CONFLICT


def test_unknown_campaign_is_created_implicitly_and_recipient_joins(server: ServerThread, client: Client) -> None:
    record(client, status("e1", campaign="auto-1", recipient="+15550009"))
    conn = db(server)
    implicit, state = conn.execute("SELECT implicit, state FROM campaigns WHERE campaign_id = 'auto-1'").fetchone()
    assert implicit == 1 and state == 2  # RUNNING: events are arriving
    assert conn.execute("SELECT recipient, status FROM messages").fetchall() == [
        ("+15550009", S.MESSAGE_STATUS_SUBMITTED)
    ]
    assert check.problems(conn, *business_and_cid(conn, "auto-1")) == []


def test_strict_campaigns_refuse_unknown_campaigns(tmp_path: Path) -> None:
    server = start_server(tmp_path, strict_campaigns=True)
    client = make_client(server.address)
    try:
        with pytest.raises(grpc.RpcError) as raised:
            record(client, status("e1", campaign="nope"))
        details = error_details(raised.value)
        assert details.code == grpc.StatusCode.NOT_FOUND and details.reason == "UNKNOWN_CAMPAIGN"
        [reply] = list(client.ingest.StreamEvents(iter([batch(status("e2", campaign="nope"))]), timeout=10))
        assert reply.results[0].outcome == ingest_pb2.EVENT_OUTCOME_REJECTED
        assert reply.results[0].reason == "UNKNOWN_CAMPAIGN" and reply.refused == 1
        assert db(server).execute("SELECT count(*) FROM events").fetchone()[0] == 0
    finally:
        client.channel.close()
        server.stop()


BAD_STATUS_EVENTS = [
    ({"event_id": ""}, "event.event_id", "REQUIRED"),
    ({"event_id": "has space"}, "event.event_id", "BAD_FORMAT"),
    ({"event_id": "x" * 129}, "event.event_id", "TOO_LONG"),
    ({"campaign_id": ""}, "event.campaign_id", "REQUIRED"),
    ({"recipient": ""}, "event.recipient", "REQUIRED"),
    ({"recipient": "1" * 257}, "event.recipient", "TOO_LONG"),
    ({"status": S.MESSAGE_STATUS_UNSPECIFIED}, "event.status", "BAD_ENUM"),
    ({"status": S.MESSAGE_STATUS_PENDING}, "event.status", "BAD_ENUM"),
    ({"status": 42}, "event.status", "BAD_ENUM"),
    ({"occurred_at": None}, "event.occurred_at", "REQUIRED"),
    ({"occurred_at": ts(946_684_799)}, "event.occurred_at", "OUT_OF_RANGE"),
    ({"occurred_at": ts(NOW + 7200)}, "event.occurred_at", "OUT_OF_RANGE"),
    ({"attempt": -1}, "event.attempt", "OUT_OF_RANGE"),
    ({"attempt": 1001}, "event.attempt", "OUT_OF_RANGE"),
    ({"status": S.MESSAGE_STATUS_FAILED, "failure_reason": S.FailureReason()}, "event.failure_reason.code", "REQUIRED"),
    ({"status": S.MESSAGE_STATUS_NOT_SUBMITTED, "failure_reason": None}, "event.failure_reason.code", "REQUIRED"),
    ({"failure_reason": S.FailureReason(code="X")}, "event.failure_reason", "NOT_ALLOWED"),
    ({"channel": "c" * 33}, "event.channel", "TOO_LONG"),
    ({"variant": "v" * 65}, "event.variant", "TOO_LONG"),
    ({"input_variables": {f"k{i}": "v" for i in range(65)}}, "event.input_variables", "TOO_MANY"),
    ({"output_variables": {"k": "v" * 4097}}, "event.output_variables[k]", "TOO_LONG"),
]


@pytest.fixture(scope="module")
def refusing(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[tuple[ServerThread, Client]]:
    """One server for the events that must be refused: each case checks that
    its server stored no event, so all of them together store none."""
    server = start_server(tmp_path_factory.mktemp("refusing"))
    client = make_client(server.address)
    yield server, client
    client.channel.close()
    server.stop()


@pytest.mark.parametrize(("change", "field", "reason"), BAD_STATUS_EVENTS)
def test_invalid_status_event_is_refused_with_its_field(
    refusing: tuple[ServerThread, Client], change: dict[str, Any], field: str, reason: str
) -> None:
    server, client = refusing
    event = status("e1")
    for name, value in change.items():
        if value is None:
            event.ClearField(name)
        elif isinstance(value, dict):
            getattr(event, name).update(value)
        elif hasattr(value, "CopyFrom"):
            getattr(event, name).CopyFrom(value)
        else:
            setattr(event, name, value)
    with pytest.raises(grpc.RpcError) as raised:
        record(client, event)
    details = error_details(raised.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "INVALID_ARGUMENT"
    assert details.violation_reasons.get(field) == reason, details.violations
    assert db(server).execute("SELECT count(*) FROM events").fetchone()[0] == 0


def test_every_violation_of_an_event_is_reported_at_once(client: Client) -> None:
    event = ingest_pb2.StatusEvent(recipient="r")
    with pytest.raises(grpc.RpcError) as raised:
        record(client, event)
    assert set(error_details(raised.value).violations) == {
        "event.event_id",
        "event.campaign_id",
        "event.status",
        "event.occurred_at",
    }


BAD_CLICKS = [
    ({"link_id": ""}, "link_id", "REQUIRED"),
    ({"url": "u" * 2049}, "url", "TOO_LONG"),
    ({"location": S.Location(country_code="Brazil")}, "location.country_code", "BAD_FORMAT"),
    ({"location": S.Location(latitude=91)}, "location.latitude", "OUT_OF_RANGE"),
    ({"location": S.Location(longitude=-180.5)}, "location.longitude", "OUT_OF_RANGE"),
    ({"location": S.Location(latitude=float("nan"))}, "location.latitude", "OUT_OF_RANGE"),
    ({"user_agent": "a" * 513}, "user_agent", "TOO_LONG"),
]


@pytest.mark.parametrize(("fields", "field", "reason"), BAD_CLICKS)
def test_invalid_click_in_a_stream_fails_alone(
    server: ServerThread, client: Client, fields: dict[str, Any], field: str, reason: str
) -> None:
    bad = click("k-bad")
    for name, value in fields.items():
        if hasattr(value, "CopyFrom"):
            getattr(bad, name).CopyFrom(value)
        else:
            setattr(bad, name, value)
    [reply] = list(client.ingest.StreamEvents(iter([batch(status("e1"), bad, click("k-ok"))]), timeout=10))
    outcomes = [r.outcome for r in reply.results]
    assert outcomes == [
        ingest_pb2.EVENT_OUTCOME_ACCEPTED,
        ingest_pb2.EVENT_OUTCOME_INVALID,
        ingest_pb2.EVENT_OUTCOME_ACCEPTED,
    ]
    [violation] = reply.results[1].violations
    assert (violation.field, violation.reason) == (f"events[1].click.{field}", reason)
    assert (reply.accepted, reply.duplicates, reply.refused) == (2, 0, 1)
    stored = {row[0] for row in db(server).execute("SELECT event_id FROM events")}
    assert stored == {"e1", "k-ok"}


def test_stream_answers_each_batch_in_order_with_results_per_event(server: ServerThread, client: Client) -> None:
    batches = [
        batch(status("a1"), status("a2", recipient="+15550002"), batch_id="one"),
        batch(status("a1"), status("a3", state=S.MESSAGE_STATUS_SUCCESS), click("c1"), batch_id="two"),
        batch(ingest_pb2.StatusEvent(), batch_id="three"),  # an invalid event alone
        batch(status("a2", channel="other"), batch_id="four"),  # conflict
    ]
    replies = list(client.ingest.StreamEvents(iter(batches), timeout=10))
    assert [r.batch_id for r in replies] == ["one", "two", "three", "four"]
    assert [[r.outcome for r in reply.results] for reply in replies] == [
        [1, 1],
        [2, 1, 1],
        [4],
        [3],
    ]
    assert [r.committed_sequence for r in replies[:2]] == [2, 4]
    assert [r.sequence for r in replies[1].results] == [1, 3, 4]
    conn = db(server)
    assert check.problems(conn, *business_and_cid(conn)) == []


def test_same_event_twice_in_one_batch_is_stored_once(server: ServerThread, client: Client) -> None:
    [reply] = list(client.ingest.StreamEvents(iter([batch(status("d1"), status("d1"))]), timeout=10))
    assert [r.outcome for r in reply.results] == [ingest_pb2.EVENT_OUTCOME_ACCEPTED, ingest_pb2.EVENT_OUTCOME_DUPLICATE]
    assert db(server).execute("SELECT count(*) FROM events").fetchone()[0] == 1


def test_too_many_events_in_a_batch_refuses_the_batch_only(tmp_path: Path) -> None:
    server = start_server(tmp_path, max_batch_events=3)
    client = make_client(server.address)
    try:
        big = batch(*(status(f"b{i}", recipient=f"r{i}") for i in range(4)))
        small = batch(status("s1"))
        replies = list(client.ingest.StreamEvents(iter([big, small]), timeout=10))
        assert {r.outcome for r in replies[0].results} == {ingest_pb2.EVENT_OUTCOME_INVALID}
        assert replies[0].results[0].violations[0].reason == "TOO_MANY"
        assert replies[1].results[0].outcome == ingest_pb2.EVENT_OUTCOME_ACCEPTED
    finally:
        client.channel.close()
        server.stop()


@pytest.mark.parametrize("store_ip", [False, True])
def test_ip_address_is_stored_only_when_configured(tmp_path: Path, store_ip: bool) -> None:
    server = start_server(tmp_path, store_ip=store_ip)
    client = make_client(server.address)
    try:
        event = click(
            "k1",
            ip_address="203.0.113.9",
            url="https://example.com/x",
            link_variable="Body variable 1",
            user_agent="Mozilla/5.0",
            location=S.Location(country_code="br", region="SP", city="São Paulo", latitude=-23.55, longitude=-46.63),
        )
        reply = client.ingest.RecordClickEvent(ingest_pb2.RecordClickEventRequest(event=event), timeout=10)
        assert reply.result.outcome == ingest_pb2.EVENT_OUTCOME_ACCEPTED
        row = (
            db(server)
            .execute(
                "SELECT ip_address, country_code, region, city, latitude, longitude, url, link_variable, user_agent"
                " FROM events"
            )
            .fetchone()
        )
        assert row == (
            "203.0.113.9" if store_ip else None,
            "BR",
            "SP",
            "São Paulo",
            -23.55,
            -46.63,
            "https://example.com/x",
            "Body variable 1",
            "Mozilla/5.0",
        )
    finally:
        client.channel.close()
        server.stop()


@pytest.mark.parametrize("store_ip", [False, True])
def test_a_discarded_ip_is_not_part_of_the_event(tmp_path: Path, store_ip: bool) -> None:
    """Without --store-ip the address is gone for good, fingerprint included:
    a resend from another address is a DUPLICATE. With it, the address is
    part of the payload, so another address is a CONFLICT."""
    server = start_server(tmp_path, store_ip=store_ip)
    client = make_client(server.address)
    try:
        for ip in ("203.0.113.9", "198.51.100.7"):
            reply = client.ingest.RecordClickEvent(
                ingest_pb2.RecordClickEventRequest(event=click("k1", ip_address=ip)), timeout=10
            )
        expected = ingest_pb2.EVENT_OUTCOME_CONFLICT if store_ip else ingest_pb2.EVENT_OUTCOME_DUPLICATE
        assert reply.result.outcome == expected
        (stored,) = db(server).execute("SELECT fingerprint FROM events").fetchone()
        without_ip = fingerprint(ClickEvent("k1", "spring", "+15550001", "Ab12", (NOW - 30) * 1_000_000))
        assert (bytes(stored) == without_ip) is not store_ip
    finally:
        client.channel.close()
        server.stop()


def test_a_stopped_writer_answers_unavailable(server: ServerThread, client: Client) -> None:
    server.store.writer.close()
    with pytest.raises(grpc.RpcError) as raised:
        record(client, status("late"))
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as raised:
        list(client.ingest.StreamEvents(iter([batch(status("late-2"))]), timeout=10))
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_clicks_and_unique_clickers_are_counted(server: ServerThread, client: Client) -> None:
    events = [
        status("s1", recipient="a", channel="sms", variant="A"),
        click("k1", recipient="a", link="L1"),
        click("k2", recipient="a", link="L1"),
        click("k3", recipient="a", link="L2"),
        click("k4", recipient="b", link="L1"),
    ]
    list(client.ingest.StreamEvents(iter([batch(*events)]), timeout=10))
    conn = db(server)
    counters = check.stored_counters(conn, *business_and_cid(conn))
    assert counters[("", "clicks")] == 4 and counters[("", "unique_clickers")] == 2
    assert counters[("l:L1", "clicks")] == 3 and counters[("l:L1", "unique_clickers")] == 2
    assert counters[("l:L2", "unique_clickers")] == 1
    assert counters[("c:sms", "clicks")] == 3 and counters[("v:A", "unique_clickers")] == 1
    # A later event moving "a" to another channel takes its clicks along.
    record(client, status("s2", recipient="a", channel="whatsapp", state=S.MESSAGE_STATUS_SUCCESS))
    counters = check.stored_counters(conn, *business_and_cid(conn))
    assert ("c:sms", "clicks") not in counters and counters[("c:whatsapp", "clicks")] == 3
    assert check.problems(conn, *business_and_cid(conn)) == []


def test_concurrent_unary_calls_share_commits_and_jobs(server: ServerThread) -> None:
    writer = server.store.writer
    commits_before, jobs_before = writer.commits, writer.jobs
    errors: list[BaseException] = []

    def send(worker: int) -> None:
        client = make_client(server.address)
        try:
            for i in range(25):
                record(client, status(f"w{worker}-{i}", recipient=f"r{worker}-{i}"))
        except BaseException as error:
            errors.append(error)
        finally:
            client.channel.close()

    threads = [threading.Thread(target=send, args=(w,)) for w in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    conn = db(server)
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 400
    assert sorted(r[0] for r in conn.execute("SELECT seq FROM events")) == list(range(1, 401))
    assert writer.commits - commits_before < 400, "every unary call paid its own commit"
    assert writer.jobs - jobs_before < 400, "every unary call paid its own writer job"


def test_one_event_sent_by_two_concurrent_callers_is_stored_once(server: ServerThread) -> None:
    barrier = threading.Barrier(8)
    outcomes: list[int] = []

    def send() -> None:
        client = make_client(server.address)
        try:
            barrier.wait()
            outcomes.append(record(client, status("same", channel="sms")).result.outcome)
        finally:
            client.channel.close()

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == [ingest_pb2.EVENT_OUTCOME_ACCEPTED] + [ingest_pb2.EVENT_OUTCOME_DUPLICATE] * 7
    assert db(server).execute("SELECT count(*) FROM events").fetchone()[0] == 1


@pytest.mark.slow
def test_a_sender_faster_than_the_disk_is_held_back(tmp_path: Path) -> None:
    """Back-pressure: while commits cannot keep up (here the writer is stalled,
    like a slow disk), the server stops reading the stream once
    max_inflight_batches await commit; the sender is held by HTTP/2 flow
    control and what the server holds stays bounded."""
    server = start_server(tmp_path, max_inflight_batches=2)
    client = make_client(server.address)
    stall, stalled = threading.Event(), threading.Event()

    def block(tx: object) -> None:
        stalled.set()
        stall.wait(120)  # released by the test; the bound only keeps a failing test from hanging

    blocker = threading.Thread(target=server.store.writer.run_sync, args=(block,))
    blocker.start()
    assert stalled.wait(30)
    pulled = 0
    payload = "x" * 2000
    total = 300

    def requests() -> Iterator[ingest_pb2.StreamEventsRequest]:
        nonlocal pulled
        for b in range(total):
            pulled += 1
            yield batch(
                *(status(f"p{b}-{i}", recipient=f"r{i}", input_variables={"blob": payload}) for i in range(100))
            )

    replies = client.ingest.StreamEvents(requests(), timeout=120)
    try:
        # Wait until the sender is held (nothing pulled for a second), with a
        # generous deadline; a server that kept reading would let it pull all.
        held, deadline = -1, time.monotonic() + 30
        while pulled != held and pulled < total and time.monotonic() < deadline:
            held = pulled
            time.sleep(1)
        assert pulled < total // 3, f"{pulled} batches of ~200 KB were taken in while nothing could commit"
        stall.set()
        answered = [r.accepted for r in replies]
        assert answered == [100] * total
    finally:
        stall.set()
        blocker.join()
        replies.cancel()
        client.channel.close()
        server.stop()


@pytest.mark.parametrize("fields", [{"channel": "s\x00ms"}, {"recipient": "+1555\x000001"}])
def test_a_nul_character_is_refused_on_both_backends(
    server: ServerThread, client: Client, fields: dict[str, str]
) -> None:
    """No text may hold U+0000 (domain/text.py), whatever the backend (SQLite
    could store it, PostgreSQL cannot): a unary call is INVALID_ARGUMENT
    (NUL_CHARACTER, naming the field); in a batch that event is INVALID and
    the others are stored, as any invalid event; the next call works."""
    event = status("n1", **fields)
    with pytest.raises(grpc.RpcError) as failed:
        record(client, event)
    details = error_details(failed.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.violation_reasons == {f"event.{next(iter(fields))}": "NUL_CHARACTER"}
    assert db(server).execute("SELECT count(*) FROM events").fetchone()[0] == 0
    field = next(iter(fields))
    [reply] = list(client.ingest.StreamEvents(iter([batch(status("n2"), status("n3", **fields))]), timeout=10))
    assert [r.outcome for r in reply.results] == [ingest_pb2.EVENT_OUTCOME_ACCEPTED, ingest_pb2.EVENT_OUTCOME_INVALID]
    assert [(v.field, v.reason) for v in reply.results[1].violations] == [
        (f"events[1].status.{field}", "NUL_CHARACTER")
    ]
    assert db(server).execute("SELECT event_id FROM events").fetchall() == [("n2",)]
    assert record(client, status("n4", recipient="+15550009")).result.outcome == ingest_pb2.EVENT_OUTCOME_ACCEPTED


def test_a_nul_is_found_in_a_batch_whose_other_bytes_hold_zeros(server: ServerThread, client: Client) -> None:
    """The servicer tests a batch's events for a NUL only when the request's
    bytes hold a 0x00; a batch holding one for another reason (a latitude's
    double) still has each event tested: the NUL one is INVALID, the others,
    the click with its zero bytes included, are stored."""
    place = common_pb2.Location(latitude=1.0, longitude=2.0)  # doubles of 0x00 bytes
    assert b"\x00" in click("z0", location=place).SerializeToString()
    request = batch(click("z1", location=place), status("z2", channel="s\x00ms"), status("z3"))
    [reply] = list(client.ingest.StreamEvents(iter([request]), timeout=10))
    assert [r.outcome for r in reply.results] == [
        ingest_pb2.EVENT_OUTCOME_ACCEPTED,
        ingest_pb2.EVENT_OUTCOME_INVALID,
        ingest_pb2.EVENT_OUTCOME_ACCEPTED,
    ]
    assert [(v.field, v.reason) for v in reply.results[1].violations] == [("events[1].status.channel", "NUL_CHARACTER")]
    # A request without a 0x00 anywhere: none of its events is walked, all are stored.
    clean = batch(status("z4"), click("z5"))
    assert b"\x00" not in clean.SerializeToString()
    [reply] = list(client.ingest.StreamEvents(iter([clean]), timeout=10))
    assert reply.accepted == 2
    stored = {row[0] for row in db(server).execute("SELECT event_id FROM events WHERE event_id LIKE 'z%'")}
    assert stored == {"z1", "z3", "z4", "z5"}
