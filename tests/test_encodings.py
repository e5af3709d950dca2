"""The message rows' stored encodings (store/encodings.py, revision 0011;
docs/performance.md): StreamMessageReport's pages and the CSV export are
byte for byte the same whether the rows' encodings are stored, absent,
partly stored or claimed by a fill job, after random sequences of what
changes a row (status events, clicks, engagement, taps, bot rules, erasure,
retention); every invalidating path makes the row's stored forms go; a fill
job is bounded and never stores what a writer changed after its read."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from google.protobuf import duration_pb2
from sqlalchemy import bindparam, select, update
from sqlalchemy import func as sql_func

from flowtrack.cli import cli
from flowtrack.core.encodings import Filler, encoder
from flowtrack.core.reports import ROW_CLICKS_CAP
from flowtrack.store import encodings, pruning, sql
from flowtrack.store.schema import FORGET, campaigns, messages
from flowtrack.v1 import (
    campaign_pb2,
    ingest_pb2,
    privacy_pb2,
    privacy_pb2_grpc,
    report_pb2,
    retention_pb2,
    retention_pb2_grpc,
    settings_pb2,
    settings_pb2_grpc,
)
from flowtrack.v1 import common_pb2 as C
from flowtrack.wire.encoded import message_row
from tests.conftest import Client, ServerThread, make_client, start_server
from tests.report_helpers import (
    add_recipients,
    click_event,
    fill_encodings,
    seed_job,
    send_events,
    status_event,
    ts,
)

DAY_US = 86_400 * 1_000_000
NOW_US = int(time.time()) * 1_000_000
CAMPAIGN = "enc"
STATUSES = [
    C.MESSAGE_STATUS_SUBMITTED,
    C.MESSAGE_STATUS_SUCCESS,
    C.MESSAGE_STATUS_FAILED,
    C.MESSAGE_STATUS_NOT_SUBMITTED,
    C.MESSAGE_STATUS_DELIVERY_NOT_CONFIRMED,
]
ENGAGEMENTS = [
    ingest_pb2.ENGAGEMENT_KIND_READ,
    ingest_pb2.ENGAGEMENT_KIND_REPLIED,
    ingest_pb2.ENGAGEMENT_KIND_BUTTON_CLICKED,
    ingest_pb2.ENGAGEMENT_KIND_OPTED_OUT,
    ingest_pb2.ENGAGEMENT_KIND_ENTERED_FLOW,
    ingest_pb2.ENGAGEMENT_KIND_EXITED_FLOW,
    ingest_pb2.ENGAGEMENT_KIND_GOAL_ACHIEVED,
]
ENCODE = encoder(message_row)


def filler_of(server: ServerThread) -> Filler:
    delivery = server.running.delivery
    assert delivery is not None and delivery.filler is not None
    return delivery.filler


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[ServerThread, Client]]:
    server = start_server(tmp_path, scheduler_tick=3600.0)  # no background fill: the tests decide
    client = make_client(server.address)
    yield server, client
    client.channel.close()
    server.stop()


# -- what the client gets ------------------------------------------------------------


def report_pages(client: Client, campaign: str = CAMPAIGN, **request: Any) -> list[bytes]:
    """StreamMessageReport's pages as the server sent them (unparsed)."""
    call = client.channel.unary_stream(
        "/flowtrack.v1.ReportService/StreamMessageReport",
        request_serializer=report_pb2.StreamMessageReportRequest.SerializeToString,
        response_deserializer=None,
    )
    return list(call(report_pb2.StreamMessageReportRequest(campaign_id=campaign, **request), timeout=60))


def csv_file(client: Client, campaign: str = CAMPAIGN, layout: int = 0) -> bytes:
    request = report_pb2.ExportReportRequest(
        campaign_id=campaign, kind=report_pb2.EXPORT_KIND_MESSAGES, format=report_pb2.EXPORT_FORMAT_CSV
    )
    if layout:
        request.layout = layout  # type: ignore[assignment]
    return b"".join(chunk.chunk for chunk in client.reports.ExportReport(request, timeout=60))


def observed(client: Client) -> tuple[list[bytes], list[bytes], bytes, bytes]:
    return (
        report_pages(client),
        report_pages(client, page_size=7),
        csv_file(client),
        csv_file(client, layout=report_pb2.EXPORT_LAYOUT_CONNECTLY),
    )


# -- the stored forms, moved by hand ----------------------------------------------------


def write(server: ServerThread, job: Any) -> Any:
    return server._call(server.store.write(job, admitted=True))


def fill_all(server: ServerThread) -> int:
    return fill_encodings(server)


def forget_all(server: ServerThread) -> None:
    write(server, encodings.forget_all())


_SET = update(messages).where(
    messages.c.business_id == "default", messages.c.recipient.in_(bindparam("recipients", expanding=True))
)


def set_some(server: ServerThread, recipients: list[str], **values: Any) -> None:
    def job(tx: Any) -> None:
        sql.run(tx.conn, _SET.values(**values), {"recipients": recipients}, cache=False)

    write(server, job)


_STORED = (
    select(messages.c.recipient, messages.c.row_pb, messages.c.csv_tail)
    .where(messages.c.business_id == "default")
    .order_by(messages.c.recipient)
)


def stored(server: ServerThread) -> dict[str, tuple[Any, Any]]:
    def job(tx: Any) -> dict[str, tuple[Any, Any]]:
        return {str(r): (None if pb is None else bytes(pb), tail) for r, pb, tail in sql.run(tx.conn, _STORED)}

    return write(server, job)  # type: ignore[no-any-return]


# -- events ----------------------------------------------------------------------------


def engaged(event_id: str, recipient: str, kind: int, at: int, **fields: Any) -> ingest_pb2.Event:
    event = ingest_pb2.EngagementEvent(
        event_id=event_id, campaign_id=CAMPAIGN, recipient=recipient, kind=kind, occurred_at=ts(at), **fields
    )
    return ingest_pb2.Event(engagement=event)


def random_events(rng: random.Random, recipients: list[str], tag: str, n: int, base: int) -> list[ingest_pb2.Event]:
    out: list[ingest_pb2.Event] = []
    for i in range(n):
        r = rng.choice(recipients)
        at = base + rng.randrange(0, 3_600) * 1_000_000
        e = f"{tag}-{i}"
        kind = rng.random()
        if kind < 0.4:
            status = rng.choice(STATUSES)
            reason = (
                ("E1", 'blocked, "hard"')
                if status in (C.MESSAGE_STATUS_FAILED, C.MESSAGE_STATUS_NOT_SUBMITTED)
                else None
            )
            out.append(
                status_event(e, CAMPAIGN, r, status, at, attempt=rng.choice([1, 1, 2]), reason=reason,
                             channel=rng.choice(["whatsapp", "sms", ""]), variant=rng.choice(["A", "B", ""]))
            )  # fmt: skip
        elif kind < 0.65:
            out.append(click_event(e, CAMPAIGN, r, rng.choice(["L1", "L2", "=L3"]), at, ("PT", "Lisboa", "Lisboa")))
        else:
            k = rng.choice(ENGAGEMENTS)
            fields: dict[str, Any] = {}
            if k == ingest_pb2.ENGAGEMENT_KIND_REPLIED:
                fields["text"] = "yes, " + r
            elif k == ingest_pb2.ENGAGEMENT_KIND_BUTTON_CLICKED:
                fields["button_id"], fields["button_name"] = rng.choice([("b1", "Yes"), ("b2", "No, thanks")])
            elif k == ingest_pb2.ENGAGEMENT_KIND_EXITED_FLOW:
                fields["exit_reason"] = rng.choice(["done", "timeout"])
            elif k == ingest_pb2.ENGAGEMENT_KIND_GOAL_ACHIEVED:
                fields["goal_id"] = rng.choice(["g1", "g2"])
            out.append(engaged(e, r, k, at, **fields))
    return out


def start_campaign(client: Client, recipients: list[str]) -> None:
    request = campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id=CAMPAIGN, name='Enc, "one"'))
    client.campaigns.CreateCampaign(request, timeout=30)
    add_recipients(client, CAMPAIGN, [(r, "whatsapp", "AB"[i % 2]) for i, r in enumerate(recipients)])


def send(client: Client, events: list[ingest_pb2.Event]) -> None:
    results = send_events(client, events, batch=100)
    assert all(r.outcome != ingest_pb2.EVENT_OUTCOME_REJECTED or r.reason for r in results)


def bots(client: Client, seconds: int, no_agent_is_bot: bool = True) -> None:
    api = settings_pb2_grpc.SettingsServiceStub(client.channel)
    request = settings_pb2.UpdateSettingsRequest(
        bot_click_threshold=duration_pb2.Duration(seconds=seconds), no_user_agent_is_bot=no_agent_is_bot
    )
    api.UpdateSettings(request, timeout=120)


def erase(client: Client, recipient: str) -> None:
    api = privacy_pb2_grpc.PrivacyServiceStub(client.channel)
    api.EraseRecipient(privacy_pb2.EraseRecipientRequest(recipient=recipient), timeout=120)


def retention(client: Client, days: int) -> None:
    api = retention_pb2_grpc.RetentionServiceStub(client.channel)
    wanted = retention_pb2.Retention(history_days=days)
    api.SetRetention(retention_pb2.SetRetentionRequest(retention=wanted), timeout=30)
    api.ApplyRetention(retention_pb2.ApplyRetentionRequest(), timeout=120)


# -- the tests ---------------------------------------------------------------------------


def test_reports_are_the_same_whatever_is_stored(world: tuple[ServerThread, Client]) -> None:
    """Rounds of random changes; before each every row is encoded (a stale
    one would show); after it the report and the exports are compared with
    every row computed, half of them stored, and some claimed by a job."""
    server, client = world
    rng = random.Random(23)
    recipients = [f"+1555{i:07d}" for i in range(60)] + ["=cmd|' /C calc'!A0", 'quote "me", twice']
    start_campaign(client, recipients)
    send(client, random_events(rng, recipients, "old", 300, NOW_US - 60 * DAY_US))
    for round_ in range(8):
        assert fill_all(server) > 0 or round_ > 0
        assert [r for r, (pb, _) in stored(server).items() if not pb] == [], round_
        what = ["events", "events", "bots", "erase", "retention", "events", "bots", "events"][round_]
        if what == "events":
            send(client, random_events(rng, recipients, f"r{round_}", 120, NOW_US - rng.randrange(1, 5) * DAY_US))
        elif what == "bots":
            bots(client, rng.choice([0, 1, 3600]))
        elif what == "erase":
            gone = rng.choice(recipients)
            recipients.remove(gone)
            erase(client, gone)
        else:
            retention(client, 30)
        served = observed(client)
        forget_all(server)
        assert observed(client) == served, what
        half = rng.sample(sorted(stored(server)), len(recipients) // 2)
        fill_all(server)
        set_some(server, half, **FORGET)
        assert observed(client) == served, what
        set_some(server, half[: len(half) // 2], row_pb=encodings.CLAIMED)
        assert observed(client) == served, what
        set_some(server, half[: len(half) // 2], **FORGET)  # (a claim never outlives its job)


def _one(server: ServerThread, recipient: str) -> tuple[Any, Any]:
    return stored(server)[recipient]


def test_every_path_that_changes_a_row_forgets_its_encodings(world: tuple[ServerThread, Client]) -> None:
    server, client = world
    recipients = [f"+1666{i:07d}" for i in range(6)]
    start_campaign(client, recipients)
    a, b, c, d, e, f = recipients
    send(client, [status_event("s-a", CAMPAIGN, a, C.MESSAGE_STATUS_SUBMITTED, NOW_US - 60 * DAY_US)])
    send(client, [click_event("c-b", CAMPAIGN, b, "L1", NOW_US - 60 * DAY_US, ("PT", "", ""))])
    send(client, [engaged("t-c", c, ingest_pb2.ENGAGEMENT_KIND_BUTTON_CLICKED, NOW_US - 60 * DAY_US, button_id="b")])

    def changed(do: Any, *who: str) -> None:
        fill_all(server)
        before = observed(client)
        do()
        for r in who:
            assert _one(server, r) == (None, None), r
        assert all(pb for pb, _ in stored(server).values()) or who
        after = observed(client)
        forget_all(server)
        assert observed(client) == after
        assert after != before

    changed(lambda: send(client, [status_event("s2-a", CAMPAIGN, a, C.MESSAGE_STATUS_SUCCESS, NOW_US)]), a)
    changed(lambda: send(client, [click_event("c2-d", CAMPAIGN, d, "L2", NOW_US, ("", "", ""))]), d)
    changed(lambda: send(client, [engaged("r-e", e, ingest_pb2.ENGAGEMENT_KIND_READ, NOW_US)]), e)
    changed(
        lambda: send(client, [engaged("t2-f", f, ingest_pb2.ENGAGEMENT_KIND_BUTTON_CLICKED, NOW_US, button_id="x")]), f
    )
    # retention: the old click of b and the old tap of c go from their rows
    changed(lambda: retention(client, 30), b, c)
    # erasure: the erased row keeps nothing stored (it named the recipient)
    fill_all(server)
    erase(client, a)
    assert a not in stored(server)
    assert [v for r, v in stored(server).items() if r.startswith("~") or r not in recipients] == [(None, None)]


def test_bot_reclassification_forgets_the_rows_it_changes(world: tuple[ServerThread, Client]) -> None:
    """A click 1 s after delivery: human under a 0 s threshold, a bot's
    under 1 h; the re-classification rewrites its row and forgets its
    encodings (which do not show the class today: forgotten all the same)."""
    server, client = world
    recipients = ["+17770000001", "+17770000002"]
    start_campaign(client, recipients)
    bots(client, 0, no_agent_is_bot=False)
    send(client, [status_event("ok", CAMPAIGN, recipients[0], C.MESSAGE_STATUS_SUCCESS, NOW_US - 10_000_000)])
    send(client, [click_event("c1", CAMPAIGN, recipients[0], "L1", NOW_US - 9_000_000, ("", "", ""))])
    fill_all(server)
    before = observed(client)
    bots(client, 3600, no_agent_is_bot=False)
    assert _one(server, recipients[0]) == (None, None)
    assert _one(server, recipients[1])[0]
    assert observed(client) == before


def test_a_fill_job_is_bounded(world: tuple[ServerThread, Client]) -> None:
    server, client = world
    recipients = [f"+1888{i:07d}" for i in range(40)]
    start_campaign(client, recipients)
    filled = write(server, encodings.fill_job(ENCODE, ROW_CLICKS_CAP, encodings.START, limit=7, scan=100))
    assert (filled.encoded, filled.scanned) == (7, 7)
    assert sum(1 for pb, _ in stored(server).values() if pb) == 7
    filled = write(server, encodings.fill_job(ENCODE, ROW_CLICKS_CAP, filled.after, limit=100, scan=10))
    assert (filled.encoded, filled.scanned) == (10, 10) and filled.after is not None
    assert fill_all(server) == 40 - 17
    filled = write(server, encodings.fill_job(ENCODE, ROW_CLICKS_CAP, encodings.START))
    assert (filled.encoded, filled.after) == (0, None)


_UNSTORED = select(sql_func.count()).where(
    messages.c.business_id == bindparam("business_id"), messages.c.row_pb.is_(None)
)
BUSINESSES = ("default", "acme", "zeta", "big", "small", "busy")


def unstored(server: ServerThread) -> dict[str, int]:
    """Rows without encodings, per business (of BUSINESSES) that has any."""

    def job(tx: Any) -> dict[str, int]:
        counts = {b: int(sql.scalar(tx.conn, _UNSTORED, {"business_id": b})) for b in BUSINESSES}
        return {b: n for b, n in counts.items() if n}

    return write(server, job)  # type: ignore[no-any-return]


def test_a_fill_job_within_a_business_stops_at_its_last_row(world: tuple[ServerThread, Client]) -> None:
    server, _ = world
    server.store.writer.run_sync(seed_job("acme", "one", 30, seed=1))
    server.store.writer.run_sync(seed_job("zeta", "two", 20, seed=2))
    assert unstored(server) == {"acme": 30, "zeta": 20}
    filled = write(server, encodings.fill_job(ENCODE, ROW_CLICKS_CAP, encodings.business_start("zeta"), within=True))
    assert (filled.encoded, filled.scanned, filled.after) == (20, 20, None)
    assert unstored(server) == {"acme": 30}


def test_the_filler_goes_over_the_businesses_that_changed_only(tmp_path: Path) -> None:
    """At start-up a pass over the whole table; then, with nothing
    committed, no pass at all; after a commit in one business, a pass over
    that business's rows, not the others' (the work of a pass is bounded by
    what changed, not by the size of the database)."""
    server = start_server(tmp_path, scheduler_tick=3600.0)
    filler = Filler(server.store, message_row, interval=0.05, rest=3600.0, duty=1.0, settle=0.1)

    async def start() -> None:
        filler.start()

    def settle(deadline: float = 60.0) -> None:
        until = time.monotonic() + deadline
        while unstored(server):
            assert time.monotonic() < until, unstored(server)
            time.sleep(0.05)

    try:
        server.store.writer.run_sync(seed_job("big", "all", 400, seed=1))
        server.store.writer.run_sync(seed_job("small", "few", 20, seed=2))
        server._call(start())
        settle()
        time.sleep(0.3)  # the start-up pass ends
        scanned = filler.scanned
        assert scanned >= 420
        time.sleep(0.5)
        assert filler.scanned == scanned  # nothing changed: nothing looked at
        server.store.writer.run_sync(seed_job("small", "more", 10, seed=3))
        settle()
        time.sleep(0.3)
        assert 30 <= filler.scanned - scanned <= 60  # "small"'s 30 rows (and no pass over "big"'s 400)
    finally:
        server._call(filler.stop())
        server.stop()


def keep_writing(server: ServerThread, *, seconds: float, every: float, rows: int) -> int:
    """An ingest in progress: a commit of `rows` new messages to business
    "busy" every `every` seconds for `seconds`; how many commits."""
    until = time.monotonic() + seconds
    n = 0
    while time.monotonic() < until:
        server.store.writer.run_sync(seed_job("busy", f"c{n}", rows, seed=n))
        n += 1
        time.sleep(every)
    return n


def test_a_business_still_being_written_to_is_filled_once_it_settles(tmp_path: Path) -> None:
    """While commits keep coming to a business (an ingest in progress), no
    pass goes over it: its rows would change again, and the writer is the
    ingest's; once nothing was committed to it for `settle` seconds, its
    rows are filled."""
    server = start_server(tmp_path, scheduler_tick=3600.0)
    filler = Filler(server.store, message_row, interval=0.05, rest=3600.0, duty=1.0, settle=1.0)

    async def start() -> None:
        filler.start()

    try:
        server._call(start())
        time.sleep(0.3)  # the start-up pass over the empty table
        scanned = filler.scanned
        n = keep_writing(server, seconds=2.5, every=0.2, rows=5)
        assert filler.scanned == scanned, "a pass went over a business still being written to"
        deadline = time.monotonic() + 30
        while unstored(server):
            assert time.monotonic() < deadline, unstored(server)
            time.sleep(0.05)
        assert filler.scanned - scanned == 5 * n
    finally:
        server._call(filler.stop())
        server.stop()


def test_a_pass_over_a_large_table_yields_the_writer_to_an_ingest(tmp_path: Path) -> None:
    """A server started on a table of unfilled rows while an ingest goes on:
    the start-up pass's jobs are spaced so that it takes at most `duty` of
    the writer (here 1%: a few seconds between two jobs) instead of taking
    every idle moment between the ingest's batches; once the ingest stops,
    the rest is filled at once."""
    server = start_server(tmp_path, scheduler_tick=3600.0)
    filler = Filler(server.store, message_row, interval=0.05, rest=3600.0, duty=0.01, settle=1.0)
    big = 8 * encodings.FILL_BATCH

    async def start() -> None:
        filler.start()

    try:
        server.store.writer.run_sync(seed_job("big", "all", big, seed=1))
        server._call(start())
        keep_writing(server, seconds=2.0, every=0.05, rows=2)
        during = filler.encoded
        assert during <= 3 * encodings.FILL_BATCH, f"{during} of {big} rows filled while the ingest went on"
        deadline = time.monotonic() + 60
        while unstored(server):
            assert time.monotonic() < deadline, unstored(server)
            time.sleep(0.05)
        assert filler.encoded >= big
    finally:
        server._call(filler.stop())
        server.stop()


def test_a_row_changed_between_a_fill_jobs_read_and_write_stays_unstored(world: tuple[ServerThread, Client]) -> None:
    """The job's steps run as separate writer jobs with a change planted
    between its read and its write: the changed row is not stored (a
    report computes it), the others are."""
    server, client = world
    recipients = [f"+1999{i:07d}" for i in range(5)]
    start_campaign(client, recipients)

    def read(tx: Any) -> Any:
        keys, _, _ = encodings.missing(tx.conn, encodings.START, 100, 100)
        return encodings.read_claimed(tx.conn, encodings.claim(tx.conn, keys), ROW_CLICKS_CAP)

    claimed = write(server, read)
    assert {pb for pb, _ in stored(server).values()} == {encodings.CLAIMED}
    # a second job finds nothing to claim while the first holds them
    assert write(server, encodings.fill_job(ENCODE, ROW_CLICKS_CAP)).encoded == 0
    send(client, [status_event("late", CAMPAIGN, recipients[2], C.MESSAGE_STATUS_SUCCESS, NOW_US)])

    def store(tx: Any) -> int:
        return sum(
            encodings.store(tx.conn, business_id, cid, records, ENCODE(records, links, taps))
            for business_id, cid, records, links, taps in claimed
        )

    write(server, store)
    now = stored(server)
    assert now[recipients[2]] == (None, None)
    assert all(now[r][0] for r in recipients if r != recipients[2])
    served = observed(client)
    forget_all(server)
    assert observed(client) == served


def test_the_server_fills_them_in_the_background(tmp_path: Path) -> None:
    """A server runs a Filler (on by default: `encode_rows`); one with a
    short interval between passes fills a new campaign's rows, after the
    commit that made them, while the writer is idle."""
    server = start_server(tmp_path, scheduler_tick=3600.0, encode_rows=True)
    assert isinstance(filler_of(server), Filler)
    server.stop()
    server = start_server(tmp_path, scheduler_tick=3600.0)
    client = make_client(server.address)
    filler = Filler(server.store, message_row, interval=0.2, rest=30.0)

    async def start() -> None:
        filler.start()

    try:
        server._call(start())
        recipients = [f"+1444{i:07d}" for i in range(30)]
        start_campaign(client, recipients)
        deadline = time.monotonic() + 60
        while not all(pb for pb, _ in stored(server).values()):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert filler.encoded >= 30 and filler.passes >= 1
    finally:
        server._call(filler.stop())
        client.channel.close()
        server.stop()


def test_flowtrack_db_encode_fills_and_rebuilds(tmp_path: Path) -> None:
    server = start_server(tmp_path, scheduler_tick=3600.0)
    client = make_client(server.address)
    recipients = [f"+1333{i:07d}" for i in range(12)]
    try:
        start_campaign(client, recipients)
        send(client, [click_event("c", CAMPAIGN, recipients[0], "L1", NOW_US, ("", "", ""))])
        served = observed(client)
    finally:
        client.channel.close()
        server.stop()
    database = server.settings.database
    runner = CliRunner()
    result = runner.invoke(cli, ["db", "encode", "--database", database])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "encoded 12 message rows"
    result = runner.invoke(cli, ["db", "encode", "--database", database, "--rebuild"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["forgot 12 stored encodings", "encoded 12 message rows"]
    server = start_server(tmp_path, scheduler_tick=3600.0)
    client = make_client(server.address)
    try:
        assert all(pb for pb, _ in stored(server).values())
        assert observed(client) == served
    finally:
        client.channel.close()
        server.stop()


def test_a_completed_campaigns_deletion_forgets_the_rows_it_leaves_for_later(
    world: tuple[ServerThread, Client],
) -> None:
    """Retention deletes a completed campaign in batches (its events, then
    its messages with their taps): a row whose click or tap went in one
    batch while the row waits for a later one is not served stale."""
    server, client = world
    recipients = [f"+1222{i:07d}" for i in range(6)]
    start_campaign(client, recipients)
    send(client, [click_event(f"c{i}", CAMPAIGN, r, "L1", NOW_US, ("", "", "")) for i, r in enumerate(recipients)])
    taps = [
        engaged(f"t{i}", r, ingest_pb2.ENGAGEMENT_KIND_BUTTON_CLICKED, NOW_US, button_id="b")
        for i, r in enumerate(reversed(recipients))  # taps go by sequence: the last recipients' first
    ]
    send(client, taps)
    cid = write(server, lambda tx: sql.scalar(tx.conn, _CID, {}))
    fill_all(server)
    write(server, pruning.prune_campaign_events("default", cid, limit=3))  # some clicks (and taps' events) go
    gone = {r for r, (pb, _) in stored(server).items() if pb is None}
    assert gone and all(stored(server)[r][0] for r in recipients if r not in gone)
    served = observed(client)
    forget_all(server)
    assert observed(client) == served
    fill_all(server)
    write(server, pruning.prune_campaign_rows("default", cid, limit=2))  # 2 messages, 2 taps go
    left = stored(server)
    assert sorted(left) == recipients[2:]
    assert [r for r, (pb, _) in left.items() if pb is None] == recipients[4:]  # their taps went
    served = observed(client)
    forget_all(server)
    assert observed(client) == served


_CID = select(campaigns.c.cid).where(campaigns.c.business_id == "default", campaigns.c.campaign_id == CAMPAIGN)
