"""The report side of engagement (SPEC §5, issue 11 items 3 and 4) over real
gRPC: the message report's engagement fields, the engaged-segment filters
(against an independent computation, bound into resume tokens), the
StreamReplies stream (paging, byte-capped pages, resume, filters), the
timeline's engagement counts, and the exports: flowtrack's layout filling
read_at / opt_out_at / button_clicks, and the Connectly layout's exact header
and cell formats, in CSV and XLSX, from the API, the CLI and a simulated
campaign."""

from __future__ import annotations

import csv
import html
import io
import itertools
import json
import random
import re
import time
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner

from flowtrack.cli import cli
from flowtrack.client import simulate as sim
from flowtrack.domain import stats as dstats
from flowtrack.domain.keys import Scope
from flowtrack.store import engaged_reports as sengaged
from flowtrack.store import reports as sreports
from flowtrack.store.writer import Tx
from flowtrack.v1 import campaign_pb2, common_pb2, ingest_pb2, report_pb2
from tests.conftest import Client, ServerThread, checks, database_of, error_details, make_client, planting, start_server
from tests.report_helpers import add_recipients, click_event, seed_job, send_events, status_event, ts
from tests.tenants import code_of, create_key, keyed_client, revoke_key, start_tenants
from tests.test_read_bounds import checkpoint_completes, wait_for

R = report_pb2
G = ingest_pb2
CAMPAIGN = "engrep"
NOW_US = (int(time.time()) - 3600) * 1_000_000
BASE = NOW_US - NOW_US % 60_000_000  # a minute boundary, an hour ago
CONNECTLY_HEADER = (
    "customer_external_id,business_id,campaign_name,sendout_id,cnt_session_id,sent_at,delivered_at,read_at,"
    "opt_out_at,error_code,error_msg,button_clicks,link_clicks,input_variables,output_variables"
)
CONNECTLY_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}$")
SEGMENTS = dstats.ENGAGED_SEGMENTS


def at(minutes: float) -> int:
    return BASE + int(minutes * 60_000_000)


def connectly_time(us: int) -> str:
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def engaged(eid: str, rec: str, kind: int, minutes: float, campaign: str = CAMPAIGN, **kw: Any) -> G.Event:
    return G.Event(
        engagement=G.EngagementEvent(
            event_id=eid, campaign_id=campaign, recipient=rec, kind=kind, occurred_at=ts(at(minutes)), **kw
        )
    )


@dataclass
class Model:
    """What was sent per recipient, kept independently of the server."""

    read: dict[str, int] = field(default_factory=dict)  # earliest READ
    replied: dict[str, int] = field(default_factory=dict)
    replies: Counter[str] = field(default_factory=Counter)
    opted_out: dict[str, int] = field(default_factory=dict)
    taps: dict[str, list[tuple[str, str, int]]] = field(default_factory=dict)
    clicks: dict[str, list[tuple[str, str, int]]] = field(default_factory=dict)  # (link, url, at)
    goal: dict[str, tuple[int, str]] = field(default_factory=dict)
    exited: dict[str, tuple[int, str]] = field(default_factory=dict)
    entered: dict[str, int] = field(default_factory=dict)
    kinds_at: Counter[tuple[int, int]] = field(default_factory=Counter)  # (minute bucket start, kind) -> events

    def did(self, rec: str) -> dict[str, bool]:
        return {
            "read": rec in self.read,
            "replied": rec in self.replied,
            "opted_out": rec in self.opted_out,
            "clicked_link": rec in self.clicks,
            "clicked_button": rec in self.taps,
            "reached_goal": rec in self.goal,
        }


RECIPIENTS = [f"+1555000{i:04d}" for i in range(40)]


def _earliest(found: dict[str, int], rec: str, us: int) -> None:
    found[rec] = min(found.get(rec, us), us)


def seed(client: Client) -> Model:
    """40 recipients: status events for all, and, seeded at random, reads,
    replies, opt-outs, button taps, link clicks and the funnel, sent in a
    shuffled order."""
    rng = random.Random(7)
    model = Model()
    add_recipients(
        client, CAMPAIGN, [(r, "whatsapp" if i % 3 else "sms", "AB"[i % 2]) for i, r in enumerate(RECIPIENTS)]
    )
    events: list[G.Event] = []
    n = itertools.count()
    K = G

    def add(kind: int, rec: str, minutes: float, **kw: Any) -> None:
        events.append(engaged(f"e{next(n)}", rec, kind, minutes, **kw))
        us = at(minutes)
        model.kinds_at[(us - us % 60_000_000, kind)] += 1
        if kind in (K.ENGAGEMENT_KIND_ENTERED_FLOW, K.ENGAGEMENT_KIND_EXITED_FLOW, K.ENGAGEMENT_KIND_GOAL_ACHIEVED):
            _earliest(model.entered, rec, us)

    for i, rec in enumerate(RECIPIENTS):
        events.append(status_event(f"s{i}a", CAMPAIGN, rec, common_pb2.MESSAGE_STATUS_SUBMITTED, at(1)))
        if i % 7 == 3:
            events.append(
                status_event(f"s{i}b", CAMPAIGN, rec, common_pb2.MESSAGE_STATUS_FAILED, at(2), reason=("E1", "bad"))
            )
            continue
        events.append(status_event(f"s{i}b", CAMPAIGN, rec, common_pb2.MESSAGE_STATUS_SUCCESS, at(2)))
        if rng.random() < 0.6:
            for _ in range(rng.randint(1, 2)):
                minutes = 3 + rng.randint(0, 20)
                add(K.ENGAGEMENT_KIND_READ, rec, minutes)
                _earliest(model.read, rec, at(minutes))
        if rng.random() < 0.4:
            for j in range(rng.randint(1, 3)):
                minutes = 5 + rng.randint(0, 30)
                add(K.ENGAGEMENT_KIND_REPLIED, rec, minutes, text=f"reply {j} from {rec}")
                _earliest(model.replied, rec, at(minutes))
                model.replies[rec] += 1
        if rng.random() < 0.2:
            add(K.ENGAGEMENT_KIND_OPTED_OUT, rec, 40)
            model.opted_out[rec] = at(40)
        if rng.random() < 0.45:
            for j in range(rng.randint(1, 3)):
                tapped = 6 + j * 2 + rng.random()
                button = rng.choice([("yes", "Yes, please"), ("no", "No thanks"), ("later", "")])
                add(K.ENGAGEMENT_KIND_BUTTON_CLICKED, rec, tapped, button_id=button[0], button_name=button[1])
                model.taps.setdefault(rec, []).append((button[0], button[1], at(tapped)))
        if rng.random() < 0.45:
            for j in range(rng.randint(1, 2)):
                minutes = 7 + j * 3
                link = rng.choice(["promo", "help"])
                events.append(click_event(f"c{next(n)}", CAMPAIGN, rec, link, at(minutes), ("BR", "SP", "São Paulo")))
                model.clicks.setdefault(rec, []).append((link, f"https://example.com/{link}", at(minutes)))
        if rng.random() < 0.5:
            add(K.ENGAGEMENT_KIND_ENTERED_FLOW, rec, 2.5)
            if rng.random() < 0.5:
                add(K.ENGAGEMENT_KIND_GOAL_ACHIEVED, rec, 30, goal_id="purchase")
                model.goal[rec] = (at(30), "purchase")
            elif rng.random() < 0.6:
                add(K.ENGAGEMENT_KIND_EXITED_FLOW, rec, 25, exit_reason="timeout")
                model.exited[rec] = (at(25), "timeout")
    for taps in model.taps.values():
        taps.sort(key=lambda t: t[2])
    for clicks in model.clicks.values():
        clicks.sort(key=lambda c: c[2])
    rng.shuffle(events)
    results = send_events(client, events, batch=50)
    assert {r.outcome for r in results} == {G.EVENT_OUTCOME_ACCEPTED}
    # Every segment, and its negation, is non-empty: the filters are really tested.
    for name in SEGMENTS:
        assert {model.did(r)[name] for r in RECIPIENTS} == {True, False}, name
    return model


@pytest.fixture
def model(client: Client) -> Model:
    client.campaigns.CreateCampaign(
        campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id=CAMPAIGN, name="Engaged, really")),
        timeout=10,
    )
    return seed(client)


def report(client: Client, **flt: Any) -> list[R.MessageRow]:
    rows: list[R.MessageRow] = []
    for page in client.reports.StreamMessageReport(
        R.StreamMessageReportRequest(campaign_id=CAMPAIGN, filter=R.MessageFilter(**flt), page_size=7), timeout=30
    ):
        rows.extend(page.rows)
    return rows


def us(t: Any) -> int:
    return int(t.seconds) * 1_000_000 + t.nanos // 1000


def opt(row: Any, name: str) -> int | None:
    return us(getattr(row, name)) if row.HasField(name) else None


# -- the message report --------------------------------------------------------------


def test_report_rows_carry_the_engagement_that_was_sent(client: Client, model: Model) -> None:
    rows = report(client)
    assert [r.recipient for r in rows] == sorted(RECIPIENTS)
    for row in rows:
        rec = row.recipient
        assert opt(row, "read_time") == model.read.get(rec), rec
        assert opt(row, "replied_time") == model.replied.get(rec)
        assert row.replies == model.replies[rec]
        assert opt(row, "opted_out_time") == model.opted_out.get(rec)
        taps = model.taps.get(rec, [])
        assert row.button_clicks == len(taps)
        assert [(b.button_id, b.button_name, us(b.occurred_at)) for b in row.buttons] == taps
        clicks = model.clicks.get(rec, [])
        assert row.clicks == len(clicks)
        assert [(c.link_id, c.url, us(c.occurred_at)) for c in row.link_clicks] == clicks
        assert all(c.link_variable == "Body variable 1" for c in row.link_clicks)
        assert opt(row, "goal_time") == (model.goal[rec][0] if rec in model.goal else None)
        assert row.goal_id == (model.goal[rec][1] if rec in model.goal else "")
        assert opt(row, "exited_time") == (model.exited[rec][0] if rec in model.exited else None)
        assert row.exit_reason == (model.exited[rec][1] if rec in model.exited else "")
        assert opt(row, "entered_time") == model.entered.get(rec)


def _matches(model: Model, rec: str, flt: dict[str, bool]) -> bool:
    did = model.did(rec)
    return all(did[name] == value for name, value in flt.items())


def test_segment_filters_against_an_independent_computation(client: Client, model: Model) -> None:
    rng = random.Random(3)
    combos: list[dict[str, bool]] = [{"clicked_link": True, "replied": False}, {"clicked_button": True, "read": False}]
    combos += [{name: value} for name in SEGMENTS for value in (True, False)]
    for _ in range(12):
        names = rng.sample(SEGMENTS, rng.randint(2, 4))
        combos.append({name: rng.random() < 0.5 for name in names})
    for flt in combos:
        got = [r.recipient for r in report(client, **flt)]
        assert got == sorted(r for r in RECIPIENTS if _matches(model, r, flt)), flt
    # Combined with a status filter: FAILED messages have no engagement here.
    assert report(client, statuses=[common_pb2.MESSAGE_STATUS_FAILED], read=True) == []
    assert len(report(client, statuses=[common_pb2.MESSAGE_STATUS_FAILED], read=False)) == 6


def test_clicked_but_not_replied_from_the_cli_and_the_export(
    server: ServerThread, client: Client, model: Model
) -> None:
    want = sorted(r for r in RECIPIENTS if _matches(model, r, {"clicked_link": True, "replied": False}))
    result = run_cli(server, "report", CAMPAIGN, "--clicked-link", "--not-replied", "--json")
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["recipient"] for line in result.stdout.splitlines()] == want
    flt = R.MessageFilter(clicked_link=True, replied=False)
    data, messages = export(client, message_filter=flt)
    assert [r["customer_external_id"] for r in csv_rows(data)] == want
    assert messages[-1].rows_written == messages[0].rows_estimate == len(want)


def test_segment_filter_is_bound_into_the_resume_token(client: Client, model: Model) -> None:
    flt = R.MessageFilter(read=True, opted_out=False)
    want = sorted(r for r in RECIPIENTS if _matches(model, r, {"read": True, "opted_out": False}))
    first = next(
        iter(
            client.reports.StreamMessageReport(
                R.StreamMessageReportRequest(campaign_id=CAMPAIGN, filter=flt, page_size=3)
            )
        )
    )
    assert [r.recipient for r in first.rows] == want[:3]
    rest: list[str] = []
    for page in client.reports.StreamMessageReport(
        R.StreamMessageReportRequest(campaign_id=CAMPAIGN, filter=flt, page_size=3, resume_token=first.resume_token)
    ):
        rest.extend(r.recipient for r in page.rows)
    assert rest == want[3:]
    for other in (R.MessageFilter(read=True), R.MessageFilter(read=True, opted_out=True), R.MessageFilter()):
        with pytest.raises(grpc.RpcError) as caught:
            list(
                client.reports.StreamMessageReport(
                    R.StreamMessageReportRequest(campaign_id=CAMPAIGN, filter=other, resume_token=first.resume_token)
                )
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_details(caught.value).violation_reasons == {"resume_token": "TOKEN_MISMATCH"}


# -- replies -------------------------------------------------------------------------


def replies(client: Client, **kw: Any) -> list[R.StreamRepliesResponse]:
    return list(client.reports.StreamReplies(R.StreamRepliesRequest(campaign_id=CAMPAIGN, **kw), timeout=30))


def test_replies_stream_pages_resumes_and_filters(client: Client, model: Model) -> None:
    pages = replies(client, page_size=4)
    rows = [r for p in pages for r in p.rows]
    assert all(len(p.rows) == 4 for p in pages[:-1]) and 1 <= len(pages[-1].rows) <= 4
    assert len({p.sequence for p in pages}) == 1
    assert len(rows) == sum(model.replies.values())
    sequences = [r.sequence for r in rows]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    assert Counter(r.recipient for r in rows) == model.replies
    assert all(r.text.endswith(f"from {r.recipient}") for r in rows)
    firsts: dict[str, int] = {}
    for r in rows:
        _earliest(firsts, r.recipient, us(r.occurred_at))
    assert firsts == model.replied
    # Resume after the second page: the rest, with no gap and no repeat.
    resumed = [r for p in replies(client, page_size=4, resume_token=pages[1].resume_token) for r in p.rows]
    assert [r.sequence for r in resumed] == sequences[8:]
    # Filters: one recipient; a time range.
    rec = model.replies.most_common(1)[0][0]
    assert [r.sequence for p in replies(client, filter=R.ReplyFilter(recipient=rec)) for r in p.rows] == [
        r.sequence for r in rows if r.recipient == rec
    ]
    window = R.ReplyFilter(occurred_after=ts(at(10)), occurred_before=ts(at(20)))
    assert [r.sequence for p in replies(client, filter=window) for r in p.rows] == [
        r.sequence for r in rows if at(10) <= us(r.occurred_at) < at(20)
    ]
    # A token is bound to its filter; bad requests name the field.
    with pytest.raises(grpc.RpcError) as caught:
        replies(client, filter=R.ReplyFilter(recipient=rec), resume_token=pages[0].resume_token)
    assert error_details(caught.value).violation_reasons == {"resume_token": "TOKEN_MISMATCH"}
    with pytest.raises(grpc.RpcError) as caught:
        replies(client, filter=R.ReplyFilter(occurred_after=ts(at(20)), occurred_before=ts(at(10))))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(error_details(caught.value).violations) == ["filter.occurred_before"]
    with pytest.raises(grpc.RpcError) as caught:
        replies(client, page_size=-1)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as caught:
        list(client.reports.StreamReplies(R.StreamRepliesRequest(campaign_id="nope"), timeout=10))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_replies_pages_stop_at_a_byte_cap_and_discarded_texts_stay_empty(client: Client) -> None:
    """100 replies of 4,096 three-byte characters (12 KiB each, 1.2 MiB in
    all) asked in one page of 1,000: the server splits them so that no
    message carries much more than 1 MiB of text, and every split page's
    token continues right after it."""
    long_text = "€" * 4096
    events = [
        engaged(f"long{i}", f"+1666{i:04d}", G.ENGAGEMENT_KIND_REPLIED, 1 + i / 100, text=long_text) for i in range(100)
    ]
    events.append(
        engaged("secret", "+16660000", G.ENGAGEMENT_KIND_REPLIED, 5, text="my card is 1234", discard_text=True)
    )
    assert {r.outcome for r in send_events(client, events)} == {G.EVENT_OUTCOME_ACCEPTED}
    pages = replies(client, page_size=1000)
    assert len(pages) >= 2
    cap = 1 << 20
    for page in pages:
        assert sum(len(r.text.encode()) for r in page.rows) <= cap + 4096 * 3
        assert page.ByteSize() < 2 * cap
    rows = [r for p in pages for r in p.rows]
    assert len(rows) == 101 and [r.text for r in rows[:100]] == [long_text] * 100
    assert rows[100].recipient == "+16660000" and rows[100].text == ""
    after_first = [r.sequence for p in replies(client, resume_token=pages[0].resume_token) for r in p.rows]
    assert after_first == [r.sequence for r in rows[len(pages[0].rows) :]]


def test_replies_cli(server: ServerThread, client: Client, model: Model) -> None:
    rec = model.replies.most_common(1)[0][0]
    result = run_cli(server, "replies", CAMPAIGN, "--recipient", rec, "--json")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == model.replies[rec] and {line["recipient"] for line in lines} == {rec}
    table = run_cli(server, "replies", CAMPAIGN, "--limit", "3")
    assert table.exit_code == 0 and "3 replies at sequence" in table.stderr


# -- timeline --------------------------------------------------------------------------


def test_timeline_counts_engagement_per_bucket(client: Client, model: Model) -> None:
    timeline = client.reports.GetCampaignTimeline(
        R.GetCampaignTimelineRequest(campaign_id=CAMPAIGN, width=R.TIMELINE_BUCKET_WIDTH_MINUTE), timeout=10
    )
    fields = {
        G.ENGAGEMENT_KIND_READ: "read",
        G.ENGAGEMENT_KIND_REPLIED: "replied",
        G.ENGAGEMENT_KIND_OPTED_OUT: "opted_out",
        G.ENGAGEMENT_KIND_BUTTON_CLICKED: "button_clicks",
        G.ENGAGEMENT_KIND_ENTERED_FLOW: "entered_flow",
        G.ENGAGEMENT_KIND_EXITED_FLOW: "exited_flow",
        G.ENGAGEMENT_KIND_GOAL_ACHIEVED: "goal_achieved",
    }
    got: Counter[tuple[int, int]] = Counter()
    for bucket in timeline.buckets:
        for kind, name in fields.items():
            if getattr(bucket, name):
                got[(us(bucket.start_time), kind)] = getattr(bucket, name)
    assert got == model.kinds_at
    # Status events still count as before, beside the engagement.
    assert sum(b.success + b.failed for b in timeline.buckets) == len(RECIPIENTS)


# -- exports ---------------------------------------------------------------------------


def export(client: Client, campaign: str = CAMPAIGN, **kw: Any) -> tuple[bytes, list[R.ExportReportResponse]]:
    messages = list(client.reports.ExportReport(R.ExportReportRequest(campaign_id=campaign, **kw), timeout=60))
    return b"".join(m.chunk for m in messages), messages


def csv_rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))


def run_cli(server: ServerThread, *args: str) -> Any:
    env = {"FLOWTRACK_ADDRESS": server.address, "COLUMNS": "200"}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_flowtrack_layout_fills_read_opt_out_and_button_clicks(client: Client, model: Model) -> None:
    data, _ = export(client)
    rows = {r["customer_external_id"]: r for r in csv_rows(data)}
    assert set(rows) == set(RECIPIENTS)
    for rec, r in rows.items():
        assert (r["read_at"] != "") == (rec in model.read)
        assert (r["opt_out_at"] != "") == (rec in model.opted_out)
        assert (r["button_clicks"] != "") == (rec in model.taps)
        assert int(r["replies"]) == model.replies[rec] and int(r["button_taps"]) == len(model.taps.get(rec, []))
        assert (r["replied_at"] != "") == (rec in model.replied)
        assert r["goal_id"] == (model.goal[rec][1] if rec in model.goal else "")
        if rec in model.taps:
            taps = json.loads(r["button_clicks"])
            assert [(t["id"], t["name"]) for t in taps] == [(b, n) for b, n, _ in model.taps[rec]]
            assert all(t["ts"].endswith("Z") for t in taps)


def check_connectly_row(r: dict[str, str], model: Model, business: str = "default") -> None:
    rec = r["customer_external_id"]
    assert (r["business_id"], r["campaign_name"], r["sendout_id"]) == (business, "Engaged, really", CAMPAIGN)
    for name in ("sent_at", "delivered_at", "read_at", "opt_out_at"):
        assert r[name] == "" or CONNECTLY_TIME.match(r[name]), (name, r[name])
    assert r["sent_at"] == connectly_time(at(1))
    failed = r["error_code"] != ""
    assert r["delivered_at"] == ("" if failed else connectly_time(at(2)))
    assert (r["error_code"], r["error_msg"]) == (("E1", "bad") if failed else ("", ""))
    assert r["read_at"] == (connectly_time(model.read[rec]) if rec in model.read else "")
    assert r["opt_out_at"] == (connectly_time(model.opted_out[rec]) if rec in model.opted_out else "")
    if rec in model.taps:
        assert json.loads(r["button_clicks"]) == [
            {"id": b, "name": n, "ts": connectly_time(t)} for b, n, t in model.taps[rec]
        ]
    else:
        assert r["button_clicks"] == ""
    if rec in model.clicks:
        assert json.loads(r["link_clicks"]) == [
            {"link_id": link, "link_variable": "Body variable 1", "url": url, "ts": connectly_time(t)}
            for link, url, t in model.clicks[rec]
        ]
    else:
        assert r["link_clicks"] == ""


def test_connectly_layout_csv_exact_header_and_cells(client: Client, model: Model) -> None:
    data, messages = export(client, layout=R.EXPORT_LAYOUT_CONNECTLY)
    assert data.startswith(CONNECTLY_HEADER.encode() + b"\r\n")
    rows = csv_rows(data)
    assert [r["customer_external_id"] for r in rows] == sorted(RECIPIENTS)
    assert messages[-1].rows_written == len(RECIPIENTS)
    for r in rows:
        check_connectly_row(r, model)
    # With a segment filter, too.
    data, _ = export(client, layout=R.EXPORT_LAYOUT_CONNECTLY, message_filter=R.MessageFilter(opted_out=True))
    assert [r["customer_external_id"] for r in csv_rows(data)] == sorted(model.opted_out)


def xlsx_rows(data: bytes) -> list[list[str]]:
    """The rows of the first sheet (inline strings and numbers) as text."""
    with zipfile.ZipFile(io.BytesIO(data)) as book:
        xml = book.read("xl/worksheets/sheet1.xml").decode("utf-8")
    out: list[list[str]] = []
    for row in re.findall(r"<row [^>]*>(.*?)</row>", xml, re.S):
        cells: list[str] = []
        for ref, body in re.findall(r'<c r="([A-Z]+)\d+"[^>]*?(?:/>|>(.*?)</c>)', row, re.S):
            col = 0
            for ch in ref:
                col = col * 26 + ord(ch) - 64
            cells += [""] * (col - 1 - len(cells))
            found = re.search(r"<t[^>]*>(.*?)</t>", body, re.S) or re.search(r"<v>(.*?)</v>", body, re.S)
            cells.append(html.unescape(found.group(1)) if found else "")
        out.append(cells)
    return out


def test_connectly_layout_xlsx_has_the_same_rows(client: Client, model: Model) -> None:
    data, _ = export(client, layout=R.EXPORT_LAYOUT_CONNECTLY, format=R.EXPORT_FORMAT_XLSX)
    rows = xlsx_rows(data)
    assert ",".join(rows[0]) == CONNECTLY_HEADER
    header = rows[0]
    csv_data, _ = export(client, layout=R.EXPORT_LAYOUT_CONNECTLY)
    from_csv = csv_rows(csv_data)
    assert len(rows) == len(from_csv) + 1
    for cells, expected in zip(rows[1:], from_csv, strict=True):
        r = dict(zip(header, cells + [""] * (len(header) - len(cells)), strict=True))
        assert r == expected
        check_connectly_row(r, model)


def test_layout_only_for_messages(client: Client, model: Model) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        export(client, kind=R.EXPORT_KIND_CLICKS, layout=R.EXPORT_LAYOUT_CONNECTLY)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(caught.value).violation_reasons == {"layout": "NOT_APPLICABLE"}
    with pytest.raises(grpc.RpcError) as caught:
        export(client, layout=99)  # type: ignore[arg-type]
    assert list(error_details(caught.value).violations) == ["layout"]


def test_cli_export_layout_connectly(server: ServerThread, client: Client, model: Model, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = out / "FILE.csv"
    result = run_cli(server, "export", CAMPAIGN, "--layout", "connectly", "-o", str(target))
    assert result.exit_code == 0, result.output
    data = target.read_bytes()
    assert data.split(b"\r\n", 1)[0].decode() == CONNECTLY_HEADER
    for r in csv_rows(data):
        check_connectly_row(r, model)
    xlsx = out / "FILE.xlsx"
    result = run_cli(server, "export", CAMPAIGN, "--layout", "connectly", "--format", "xlsx", "-o", str(xlsx))
    assert result.exit_code == 0, result.output
    assert ",".join(xlsx_rows(xlsx.read_bytes())[0]) == CONNECTLY_HEADER


# -- a simulated campaign ------------------------------------------------------------------


def _simulated(client: Client) -> sim.Simulation:
    s = sim.generate(sim.SimConfig(campaign_id="simulated", recipients=300, seed=5, end_time=time.time() - 60))
    client.campaigns.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=s.campaign), timeout=10)
    add_recipients(client, "simulated", [(r.recipient, r.channel, r.variant) for r in s.audience])
    send_events(client, s.events)
    return s


def test_simulated_campaign_in_the_connectly_layout(client: Client) -> None:
    s = _simulated(client)
    expected: dict[str, dict[str, int]] = {}
    taps: Counter[str] = Counter()
    seen: set[str] = set()
    for event in s.events:
        if not event.HasField("engagement") or event.engagement.event_id in seen:
            continue  # (duplicates are delivered twice)
        seen.add(event.engagement.event_id)
        e = event.engagement
        kinds = expected.setdefault(e.recipient, {})
        name = {G.ENGAGEMENT_KIND_READ: "read_at", G.ENGAGEMENT_KIND_OPTED_OUT: "opt_out_at"}.get(e.kind)
        if name:
            kinds[name] = min(kinds.get(name, us(e.occurred_at)), us(e.occurred_at))
        if e.kind == G.ENGAGEMENT_KIND_BUTTON_CLICKED:
            taps[e.recipient] += 1
    data, _ = export(client, "simulated", layout=R.EXPORT_LAYOUT_CONNECTLY)
    assert data.split(b"\r\n", 1)[0].decode() == CONNECTLY_HEADER
    rows = csv_rows(data)
    assert len(rows) == len(s.audience)
    filled = Counter[str]()
    for r in rows:
        rec = r["customer_external_id"]
        for name in ("read_at", "opt_out_at"):
            want = expected.get(rec, {}).get(name)
            assert r[name] == ("" if want is None else connectly_time(want)), (rec, name)
            filled[name] += r[name] != ""
        assert len(json.loads(r["button_clicks"])) == taps[rec] if r["button_clicks"] else taps[rec] == 0
        filled["button_clicks"] += r["button_clicks"] != ""
    assert all(filled[name] > 0 for name in ("read_at", "opt_out_at", "button_clicks")), filled


# -- tenants ---------------------------------------------------------------------------


def test_replies_segments_and_connectly_rows_are_sealed_per_business(tmp_path: Path) -> None:
    """Two businesses, the same campaign id and recipient: each one's replies,
    segments and Connectly rows hold its own engagement only."""
    world = start_tenants(tmp_path)
    try:
        for tenant, word in ((world.a, "acme"), (world.b, "globex")):
            ingest = world.client(tenant.ingest)
            events = [
                engaged(f"{word}-r", "+15550001", G.ENGAGEMENT_KIND_REPLIED, 3, text=f"hello from {word}"),
                engaged(f"{word}-b", "+15550001", G.ENGAGEMENT_KIND_BUTTON_CLICKED, 4, button_id=f"btn-{word}"),
            ]
            if word == "acme":
                events.append(engaged("acme-read", "+15550001", G.ENGAGEMENT_KIND_READ, 2))
            assert {r.outcome for r in send_events(ingest, events)} == {G.EVENT_OUTCOME_ACCEPTED}
        for tenant, word, other in ((world.a, "acme", "globex"), (world.b, "globex", "acme")):
            reader = world.client(tenant.read)
            rows = [r for p in replies(reader) for r in p.rows]
            assert [(r.recipient, r.text, r.sequence) for r in rows] == [("+15550001", f"hello from {word}", 1)]
            read = [r.recipient for r in report(reader, read=True)]
            assert read == (["+15550001"] if word == "acme" else [])
            data, _ = export(reader, layout=R.EXPORT_LAYOUT_CONNECTLY)
            (row,) = csv_rows(data)
            assert json.loads(row["button_clicks"])[0]["id"] == f"btn-{word}"
            assert other not in data.decode() and row["business_id"] == tenant.business
        # An ingest key does not read replies.
        ingest_only = world.client(world.a.ingest)
        assert code_of(lambda: replies(ingest_only)) == grpc.StatusCode.PERMISSION_DENIED
    finally:
        world.close()


def test_connectly_time_format() -> None:
    from flowtrack.export import connectly

    for value in (0, 1, 999_999, BASE, BASE + 123_456, 1_999_999_999_999_999, -1):
        assert connectly.timestamp(value) == connectly_time(value)
    assert connectly.timestamp(None) is None
    assert connectly.timestamp(1_790_000_000_000_001) == "2026-09-21 14:13:20.000001"
    assert ",".join(connectly.HEADER) == CONNECTLY_HEADER


# -- read bounds (core/paging.py) on the engagement streams -------------------------------


def test_message_report_byte_cap_counts_button_taps(client: Client) -> None:
    """20 recipients with 100 button taps each, names of 256 three-byte
    characters (about 100 KB of buttons per row, 2 MB in all) asked in one
    page of 1,000: the taps are read before the byte cap is applied, so the
    rows are split into pages of at most 1 MiB of rows, each row whole (its
    100 buttons, in tap order) and every recipient once."""
    recipients = [f"+1777000{i:04d}" for i in range(20)]
    name = "語" * 256
    events = [
        engaged(
            f"tap-{r}-{j}",
            r,
            G.ENGAGEMENT_KIND_BUTTON_CLICKED,
            1 + j / 1000,
            button_id=f"button-{j:03d}-" + "x" * 100,
            button_name=name,
        )
        for r in recipients
        for j in range(100)
    ]
    assert {r.outcome for r in send_events(client, events, batch=500)} == {G.EVENT_OUTCOME_ACCEPTED}
    pages = list(
        client.reports.StreamMessageReport(
            R.StreamMessageReportRequest(campaign_id=CAMPAIGN, page_size=1000), timeout=60
        )
    )
    assert len(pages) >= 2
    for page in pages:
        assert sum(row.ByteSize() + 6 for row in page.rows) <= 1 << 20, [len(p.rows) for p in pages]
    rows = [row for page in pages for row in page.rows]
    assert [row.recipient for row in rows] == recipients
    for row in rows:
        assert row.button_clicks == 100
        assert [b.button_id[:10] for b in row.buttons] == [f"button-{j:03d}" for j in range(100)]
        assert all(b.button_name == name for b in row.buttons)
    # Each page's token continues right after it.
    rest = client.reports.StreamMessageReport(
        R.StreamMessageReportRequest(campaign_id=CAMPAIGN, page_size=1000, resume_token=pages[0].resume_token),
        timeout=60,
    )
    assert [row.recipient for page in rest for row in page.rows] == recipients[len(pages[0].rows) :]


def _plant_replies(running: ServerThread, campaign_id: str, n: int, size: int) -> None:
    """`n` replies of `size` bytes each in the campaign's Replies tab (rows
    of the `replies` table, as the writer keeps them)."""

    def job(tx: Tx) -> None:
        business_id, cid = (
            checks(tx.conn)
            .execute("SELECT business_id, cid FROM campaigns WHERE campaign_id = ?", (campaign_id,))
            .fetchone()
        )
        checks(tx.conn).executemany(
            "INSERT INTO replies (business_id, cid, seq, recipient, occurred_at, text) VALUES (?, ?, ?, ?, ?, ?)",
            [(business_id, cid, i + 1, f"+1888{i:06d}", BASE + i, f"{i:06d}" + "x" * (size - 6)) for i in range(n)],
        )

    with planting():
        running.store.writer.run_sync(job)


@pytest.mark.sqlite_only("waits for a WAL checkpoint past the stream's snapshot")
def test_replies_go_on_after_their_snapshot_expires(tmp_path: Path) -> None:
    """A replies stream whose client stops reading lets its snapshot go after
    `snapshot_seconds` (a checkpoint then completes past it), and then goes
    on right after its last reply on a new snapshot: every reply once, in
    order, later pages at a newer sequence."""
    running = start_server(tmp_path, snapshot_seconds=0.2)
    database = Path(running.settings.database)
    client = make_client(running.address)
    try:
        running.store.writer.run_sync(seed_job("default", "held", 10))
        _plant_replies(running, "held", 6000, 4000)  # 24 MB: far more than the transport buffers
        stream = client.reports.StreamReplies(R.StreamRepliesRequest(campaign_id="held", page_size=50), timeout=120)
        first = next(stream)
        running.store.writer.run_sync(seed_job("default", "later", 100))
        wait_for(checkpoint_completes(database), "a checkpoint past the stream's snapshot")
        rest = list(stream)
        texts = [r.text[:6] for p in [first, *rest] for r in p.rows]
        assert texts == [f"{i:06d}" for i in range(6000)]
        assert rest[-1].sequence > first.sequence  # read on a newer snapshot
    finally:
        client.channel.close()
        running.stop()


def test_replies_stream_ends_when_its_key_is_revoked(tmp_path: Path) -> None:
    database = database_of(tmp_path)
    key = create_key(database, "acme", Scope.INGEST, Scope.READ)
    running = start_server(tmp_path, key_cache_seconds=0.3)
    client = keyed_client(running.address, key)
    try:
        running.store.writer.run_sync(seed_job("acme", "watched", 10))
        _plant_replies(running, "watched", 6000, 4000)
        stream = client.reports.StreamReplies(R.StreamRepliesRequest(campaign_id="watched", page_size=50), timeout=60)
        assert len(next(stream).rows) == 50
        # A stream that only a revocation ends: once it has, the key's open
        # streams have all seen it (one watch per key), so no timing is guessed.
        watch = client.reports.WatchCampaignStats(R.WatchCampaignStatsRequest(campaign_id="watched"), timeout=60)
        assert next(watch).stats.overall.counts.total == 10
        revoke_key(database, key)
        for open_stream in (watch, stream):
            with pytest.raises(grpc.RpcError) as raised:
                for _ in open_stream:
                    pass
            details = error_details(raised.value)
            assert details.code == grpc.StatusCode.UNAUTHENTICATED and details.reason == "REVOKED_API_KEY", details
    finally:
        client.channel.close()
        running.stop()


def test_reply_filter_times_are_checked(client: Client, model: Model) -> None:
    """Filter times go through the checked Timestamp conversion: out of range
    is INVALID_ARGUMENT naming each field, never normalised."""
    bad = R.ReplyFilter()
    bad.occurred_after.seconds, bad.occurred_after.nanos = 0, 1_500_000_000
    bad.occurred_before.seconds = 400_000_000_000  # after the year 9999
    with pytest.raises(grpc.RpcError) as caught:
        replies(client, filter=bad)
    details = error_details(caught.value)
    assert details.violation_reasons == {
        "filter.occurred_after": "OUT_OF_RANGE",
        "filter.occurred_before": "OUT_OF_RANGE",
    }, details


def test_message_report_taps_read_across_a_snapshot_renewal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The snapshot expires while a page's button taps are being read (the
    read is held until it has): the stream takes a new snapshot, reads that
    page's rows again from its position and goes on: every recipient comes
    once, in order, with its tap (without the re-read, that page's rows came
    twice)."""
    running = start_server(tmp_path, snapshot_seconds=1.0)
    client = make_client(running.address)
    recipients = [f"+1999000{i:04d}" for i in range(100)]
    calls: list[bool] = []

    def holding(original: Any) -> Any:
        def held_call(snapshot: Any, fn: Any, *args: Any) -> Any:
            if fn is sengaged.button_taps:
                calls.append(snapshot.expired)
                if len(calls) == 2:  # the second page's taps: wait for the snapshot's time cap
                    deadline = time.monotonic() + 30
                    while not snapshot.expired and time.monotonic() < deadline:
                        time.sleep(0.01)
                    assert snapshot.expired, "the snapshot did not expire"
            return original(snapshot, fn, *args)

        return held_call

    try:
        events = [engaged(f"tap-{r}", r, G.ENGAGEMENT_KIND_BUTTON_CLICKED, 1, button_id=f"b-{r}") for r in recipients]
        assert {r.outcome for r in send_events(client, events)} == {G.EVENT_OUTCOME_ACCEPTED}
        from flowtrack.store.pg.store import PgSnapshot

        for cls in (sreports.Snapshot, PgSnapshot):  # the SQLite and the PostgreSQL snapshot
            monkeypatch.setattr(cls, "call", holding(cls.call))
        first, *rest = client.reports.StreamMessageReport(
            R.StreamMessageReportRequest(campaign_id=CAMPAIGN, page_size=10), timeout=60
        )
        rows = [row for page in [first, *rest] for row in page.rows]
        assert [row.recipient for row in rows] == recipients
        assert [[b.button_id for b in row.buttons] for row in rows] == [[f"b-{r}"] for r in recipients]
        assert len(calls) > len(rest) + 1  # the held page's taps were read again, on the new snapshot
    finally:
        client.channel.close()
        running.stop()
