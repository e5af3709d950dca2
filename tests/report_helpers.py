"""Helpers for the report tests and the report benchmark.

`seed_job` writes a campaign straight into the tables (messages, events,
counters, link_clickers) as one writer job: it goes through the writer's Tx,
so sequences, counters and commit notifications stay those of the real
writer. It is how the benchmark fills a 1M-recipient campaign in seconds and
how early tests exercised the queries before ingest existed; the consistency
tests feed data through the real IngestService instead.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from sqlalchemy import bindparam, insert

from flowtrack.domain.model import CampaignState, Status
from flowtrack.store import sql
from flowtrack.store.schema import campaigns, events, link_clickers, messages
from flowtrack.store.writer import Tx
from flowtrack.v1 import campaign_pb2, common_pb2, ingest_pb2, report_pb2

BASE_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
STATUSES = [
    Status.PENDING,
    Status.NOT_SUBMITTED,
    Status.SUBMITTED,
    Status.DELIVERY_NOT_CONFIRMED,
    Status.FAILED,
    Status.SUCCESS,
]
CHANNELS = ["whatsapp", "sms", "rcs", ""]
VARIANTS = ["A", "B", ""]
REASONS = [("INVALID_NUMBER", "number does not exist"), ("NOT_ON_CHANNEL", "not on whatsapp"), ("131026", "")]
COUNTRIES = [("BR", "SP", "São Paulo"), ("BR", "RJ", "Rio"), ("DE", "BE", "Berlin"), ("", "", "")]


def recipient_name(i: int) -> str:
    return f"+5511{i:08d}"


def seed_job(
    business_id: str, campaign_id: str, n: int, *, seed: int = 0, click_share: float = 0.1
) -> Callable[[Tx], dict[str, Any]]:
    """A writer job that creates `campaign_id` with `n` recipients in random
    current states (one status event each), some clicks, and the counters
    the writer keeps. Returns what it wrote, for checks."""

    def job(tx: Tx) -> dict[str, Any]:
        rng = random.Random(seed)
        conn = tx.conn
        now = tx.now_us
        made = {"business_id": business_id, "campaign_id": campaign_id, "create_time": now, "update_time": now}
        cid = int(sql.scalar(conn, _NEW_CAMPAIGN, made))
        messages: list[tuple[Any, ...]] = []
        events: list[tuple[Any, ...]] = []
        counts: Counter[tuple[str, str]] = Counter()
        clickers: set[tuple[str, str]] = set()
        first = last = None
        for i in range(n):
            rec = recipient_name(i)
            channel, variant = rng.choice(CHANNELS), rng.choice(VARIANTS)
            status = rng.choice(STATUSES)
            row: dict[str, Any] = {"status": int(status), "attempt": 0, "code": "", "msg": ""}
            at = BASE_US + rng.randrange(0, 86_400_000_000)
            times: dict[str, int | None] = dict.fromkeys(
                ("not_submitted_at", "submitted_at", "delivery_not_confirmed_at", "success_at", "failed_at")
            )
            if status != Status.PENDING:
                row["attempt"] = 1
                if status in (Status.FAILED, Status.NOT_SUBMITTED):
                    row["code"], row["msg"] = rng.choice(REASONS)
                name = {2: "not_submitted_at", 3: "submitted_at", 4: "delivery_not_confirmed_at"}.get(int(status))
                name = name or {5: "failed_at", 6: "success_at"}[int(status)]
                times[name] = at
                seq = tx.next_sequence(business_id)
                events.append(
                    (
                        business_id,
                        seq,
                        f"{campaign_id}-s-{i}",
                        b"",
                        cid,
                        rec,
                        1,
                        at,
                        now,
                        int(status),
                        1,
                        row["code"],
                        row["msg"],
                        channel,
                        variant,
                        f"wamid.{i}",
                        f"session-{i}",
                        None,
                        None,
                        None,
                        None,
                        None,
                        None,
                        None,
                        None,
                    )
                )
                first = at if first is None else min(first, at)
                last = at if last is None else max(last, at)
            bucket = status.bucket
            for scope in ("", f"c:{channel}", f"v:{variant}"):
                counts[(scope, bucket)] += 1
            clicks = 0
            first_click = None
            if status != Status.PENDING and rng.random() < click_share:
                clicks = rng.randint(1, 3)
                for k in range(clicks):
                    link = rng.choice(["promo", "help"])
                    country, region, city = rng.choice(COUNTRIES)
                    click_at = at + (k + 1) * 1_000_000
                    first_click = click_at if first_click is None else min(first_click, click_at)
                    seq = tx.next_sequence(business_id)
                    events.append(
                        (
                            business_id,
                            seq,
                            f"{campaign_id}-c-{i}-{k}",
                            b"",
                            cid,
                            rec,
                            2,
                            click_at,
                            now,
                            None,
                            None,
                            None,
                            None,
                            None,
                            None,
                            None,
                            None,
                            None,
                            None,
                            link,
                            "Body variable 1",
                            f"https://example.com/{link}",
                            country or None,
                            region or None,
                            city or None,
                        )
                    )
                    last = max(last or click_at, click_at)
                    for scope in ("", f"c:{channel}", f"v:{variant}", f"l:{link}"):
                        counts[(scope, "clicks")] += 1
                    if (link, rec) not in clickers:
                        clickers.add((link, rec))
                        counts[(f"l:{link}", "unique_clickers")] += 1
                for scope in ("", f"c:{channel}", f"v:{variant}"):
                    counts[(scope, "unique_clickers")] += 1
            inp = json.dumps({"name": f"n{i}"}) if i % 2 else None
            messages.append(
                (
                    cid,
                    rec,
                    channel,
                    variant,
                    inp,
                    row["status"],
                    row["attempt"],
                    row["code"],
                    row["msg"],
                    channel,
                    variant,
                    f"wamid.{i}" if row["attempt"] else "",
                    f"session-{i}" if row["attempt"] else "",
                    inp,
                    *times.values(),
                    at if row["attempt"] else None,
                    clicks,
                    first_click,
                    now,
                    now,
                    business_id,
                )
            )
            if len(messages) >= 20_000:
                _flush(conn, messages, events)
        _flush(conn, messages, events)
        sql.run_many(
            conn,
            _CLICKER,
            [{"business_id": business_id, "cid": cid, "link_id": link, "recipient": rec} for link, rec in clickers],
        )
        for (scope, name), value in counts.items():
            tx.count(business_id, cid, scope, name, value)
        tx.touch_campaign(business_id, cid, first, tx.last_sequence(business_id))
        if last is not None:
            tx.touch_campaign(business_id, cid, last, tx.last_sequence(business_id))
        return {"cid": cid, "counts": dict(counts)}

    return job


_NEW_CAMPAIGN = (
    insert(campaigns)
    .values(
        {
            **{name: bindparam(name) for name in ("business_id", "campaign_id", "create_time", "update_time")},
            "state": int(CampaignState.RUNNING),
        }
    )
    .returning(campaigns.c.cid)
)
_CLICKER = sql.insert_on_both(
    lambda insert: (
        insert(link_clickers)
        .values({name: bindparam(name) for name in ("business_id", "cid", "link_id", "recipient")})
        .on_conflict_do_nothing()
    )
)
_MESSAGE_COLUMNS = (
    "cid", "recipient", "aud_channel", "aud_variant", "aud_input", "status", "attempt", "reason_code",
    "reason_message", "channel", "variant", "provider_message_id", "session_id", "input_vars", "not_submitted_at",
    "submitted_at", "delivery_not_confirmed_at", "success_at", "failed_at", "last_event_at", "clicks",
    "first_click_at", "added_at", "updated_at", "business_id",
)  # fmt: skip
_EVENT_COLUMNS = (
    "business_id", "seq", "event_id", "fingerprint", "cid", "recipient", "kind", "occurred_at", "received_at",
    "status", "attempt", "reason_code", "reason_message", "channel", "variant", "provider_message_id", "session_id",
    "input_vars", "output_vars", "link_id", "link_variable", "url", "country_code", "region", "city",
)  # fmt: skip


_MESSAGES = insert(messages).values({name: bindparam(name) for name in _MESSAGE_COLUMNS})
_EVENTS = insert(events).values({name: bindparam(name) for name in _EVENT_COLUMNS})


def _flush(conn: Any, rows: list[tuple[Any, ...]], happened: list[tuple[Any, ...]]) -> None:
    sql.run_many(conn, _MESSAGES, [dict(zip(_MESSAGE_COLUMNS, r, strict=True)) for r in rows])
    sql.run_many(conn, _EVENTS, [dict(zip(_EVENT_COLUMNS, r, strict=True)) for r in happened])
    rows.clear()
    happened.clear()


# -- through the public API -------------------------------------------------------


def ts(us: int) -> Any:
    from google.protobuf import timestamp_pb2

    t = timestamp_pb2.Timestamp()
    t.seconds, micros = divmod(us, 1_000_000)
    t.nanos = micros * 1000
    return t


def add_recipients(client: Any, campaign_id: str, recipients: Iterable[tuple[str, str, str]], batch: int = 1000) -> Any:
    """Add (recipient, channel, variant) to the audience with AddRecipients."""
    items = list(recipients)

    def requests() -> Iterator[campaign_pb2.AddRecipientsRequest]:
        for i in range(0, len(items), batch):
            yield campaign_pb2.AddRecipientsRequest(
                campaign_id=campaign_id,
                recipients=[
                    campaign_pb2.Recipient(recipient=r, channel=c, variant=v) for r, c, v in items[i : i + batch]
                ],
            )

    return client.campaigns.AddRecipients(requests(), timeout=60)


def send_events(client: Any, events: list[ingest_pb2.Event], batch: int = 1000) -> list[ingest_pb2.EventResult]:
    """Send events on one StreamEvents stream in batches; every result."""

    def requests() -> Iterator[ingest_pb2.StreamEventsRequest]:
        for i in range(0, len(events), batch):
            yield ingest_pb2.StreamEventsRequest(batch_id=str(i), events=events[i : i + batch])

    results: list[ingest_pb2.EventResult] = []
    for response in client.ingest.StreamEvents(requests(), timeout=120):
        results.extend(response.results)
    return results


def status_event(
    event_id: str,
    campaign_id: str,
    recipient: str,
    status: int,
    at: int,
    *,
    attempt: int = 1,
    reason: tuple[str, str] | None = None,
    channel: str = "",
    variant: str = "",
) -> ingest_pb2.Event:
    ev = ingest_pb2.StatusEvent(
        event_id=event_id,
        campaign_id=campaign_id,
        recipient=recipient,
        status=status,  # type: ignore[arg-type]
        occurred_at=ts(at),
        attempt=attempt,
        channel=channel,
        variant=variant,
    )
    if reason is not None:
        ev.failure_reason.CopyFrom(common_pb2.FailureReason(code=reason[0], message=reason[1]))
    return ingest_pb2.Event(status=ev)


def click_event(
    event_id: str, campaign_id: str, recipient: str, link: str, at: int, location: tuple[str, str, str]
) -> ingest_pb2.Event:
    country, region, city = location
    return ingest_pb2.Event(
        click=ingest_pb2.ClickEvent(
            event_id=event_id,
            campaign_id=campaign_id,
            recipient=recipient,
            link_id=link,
            link_variable="Body variable 1",
            url=f"https://example.com/{link}",
            occurred_at=ts(at),
            location=common_pb2.Location(country_code=country, region=region, city=city),
        )
    )


def all_report_rows(client: Any, campaign_id: str, **kwargs: Any) -> tuple[list[report_pb2.MessageRow], set[int]]:
    """Every row of a message report and the sequences its pages named."""
    rows: list[report_pb2.MessageRow] = []
    seqs: set[int] = set()
    for page in client.reports.StreamMessageReport(
        report_pb2.StreamMessageReportRequest(campaign_id=campaign_id, **kwargs), timeout=60
    ):
        rows.extend(page.rows)
        seqs.add(page.sequence)
    return rows, seqs


def fill_encodings(server: Any) -> int:
    """Fill every message row's stored encodings (store/encodings.py) on a
    test server (a ServerThread), as its background job would; how many."""
    from flowtrack.core.encodings import encoder
    from flowtrack.core.reports import ROW_CLICKS_CAP
    from flowtrack.store import encodings
    from flowtrack.wire.encoded import message_row

    encode, after, total = encoder(message_row), encodings.START, 0
    while after is not None:
        job = encodings.fill_job(encode, ROW_CLICKS_CAP, after)
        filled = server._call(server.store.write(job, admitted=True))
        total, after = total + filled.encoded, filled.after
    return total
