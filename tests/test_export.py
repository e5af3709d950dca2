"""ExportReport over real gRPC: the message CSV's columns and values for a
campaign fed through IngestService, filters, XLSX, chunk sizes, cancellation,
errors, and `flowtrack export` writing a file."""

from __future__ import annotations

import csv
import io
import json
import re
import tempfile
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner

from flowtrack.cli import cli
from flowtrack.domain import times
from flowtrack.domain.records import EventRecord, MessageRecord
from flowtrack.export import columns
from flowtrack.export.xlsx import XlsxWriter
from flowtrack.store import reports as sreports
from flowtrack.v1 import campaign_pb2, common_pb2, ingest_pb2, report_pb2
from tests.conftest import Client, ServerThread, error_details
from tests.report_helpers import BASE_US, click_event, seed_job, send_events, ts
from tests.test_reports import Probe

R = report_pb2
ROOT = Path(__file__).resolve().parent.parent
S = common_pb2
MIN = 60_000_000
CSV, XLSX = R.EXPORT_FORMAT_CSV, R.EXPORT_FORMAT_XLSX
MESSAGES, CLICKS, FAILURES = R.EXPORT_KIND_MESSAGES, R.EXPORT_KIND_CLICKS, R.EXPORT_KIND_FAILURE_REASONS


def at(minutes: int) -> int:
    return BASE_US + minutes * MIN + 123_456  # sub-millisecond part: the export shows milliseconds


def iso(us: int) -> str:
    """The documented format, computed independently of the code under test."""
    return datetime.fromtimestamp(us // 1_000_000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{us // 1000 % 1000:03d}Z"


def event(eid: str, rec: str, status: int, minutes: int, **kw: Any) -> ingest_pb2.Event:
    reason = kw.pop("reason", None)
    ev = ingest_pb2.StatusEvent(
        event_id=eid, campaign_id="exp", recipient=rec, status=status, occurred_at=ts(at(minutes)), **kw
    )
    if reason:
        ev.failure_reason.CopyFrom(common_pb2.FailureReason(code=reason[0], message=reason[1]))
    return ingest_pb2.Event(status=ev)


def clicked(eid: str, rec: str, link: str, variable: str, minutes: int, country: str) -> ingest_pb2.Event:
    ev = click_event(eid, "exp", rec, link, at(minutes), (country, "", ""))
    ev.click.link_variable = variable
    return ev


@pytest.fixture
def campaign(client: Client) -> Client:
    """A campaign with every status, a retry, clicks and variables, fed through
    CampaignService and IngestService."""
    client.campaigns.CreateCampaign(
        campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id="exp", name="Spring, offer")), timeout=10
    )
    audience = [("r1", "whatsapp", "A"), ("r2", "sms", "B"), ("r3", "sms", "A"), ("r4", "rcs", "B")]
    audience += [("r5", "whatsapp", "A"), ("r6", "email", "B"), ("r7", "sms", "A")]
    client.campaigns.AddRecipients(
        iter(
            [
                campaign_pb2.AddRecipientsRequest(
                    campaign_id="exp",
                    recipients=[campaign_pb2.Recipient(recipient=r, channel=c, variant=v) for r, c, v in audience],
                )
            ]
        ),
        timeout=10,
    )
    events = [
        event("e1", "r1", S.MESSAGE_STATUS_SUBMITTED, 1, session_id="sess-1"),
        event("e2", "r1", S.MESSAGE_STATUS_DELIVERY_NOT_CONFIRMED, 2),
        event(
            "e3",
            "r1",
            S.MESSAGE_STATUS_SUCCESS,
            3,
            input_variables={"name": "Ana", "city": "São Paulo"},
            output_variables={"answer": 'yes, "sure"'},
        ),
        clicked("c1", "r1", "promo", "Body variable 1", 5, "BR"),
        clicked("c2", "r1", "help", "Body variable 2", 4, "DE"),  # arrives after c1, happened before
        # r2: attempt 1 fails, attempt 2 succeeds.
        event("e4", "r2", S.MESSAGE_STATUS_SUBMITTED, 1),
        event("e5", "r2", S.MESSAGE_STATUS_FAILED, 2, reason=("RATE_LIMITED", "too many")),
        event("e6", "r2", S.MESSAGE_STATUS_SUBMITTED, 10, attempt=2),
        event("e7", "r2", S.MESSAGE_STATUS_SUCCESS, 11, attempt=2, session_id="sess-2"),
        event("e8", "r3", S.MESSAGE_STATUS_NOT_SUBMITTED, 1, reason=("TEMPLATE_REJECTED", '=bad, "template"')),
        event("e9", "r4", S.MESSAGE_STATUS_SUBMITTED, 1, channel="rcs"),
        event("e10", "r5", S.MESSAGE_STATUS_DELIVERY_NOT_CONFIRMED, 2),
        event("e11", "r5", S.MESSAGE_STATUS_SUBMITTED, 1),  # late: never moves it back
        event("e12", "r7", S.MESSAGE_STATUS_FAILED, 2, reason=("BLOCKED_BY_USER", "blocked")),
        event("e13", "r7", S.MESSAGE_STATUS_FAILED, 20, attempt=2, reason=("RATE_LIMITED", "too many")),
        clicked("c3", "r4", "promo", "Body variable 1", 6, "BR"),
    ]
    results = send_events(client, events)
    assert [r.outcome for r in results] == [ingest_pb2.EVENT_OUTCOME_ACCEPTED] * len(events), results
    return client


def export(client: Client, **kw: Any) -> tuple[bytes, list[report_pb2.ExportReportResponse]]:
    messages = list(client.reports.ExportReport(R.ExportReportRequest(campaign_id="exp", **kw), timeout=30))
    return b"".join(m.chunk for m in messages), messages


def csv_rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))


EXPECTED_HEADER = (
    "customer_external_id,business_id,campaign_name,sendout_id,cnt_session_id,sent_at,delivered_at,read_at,"
    "opt_out_at,error_code,error_msg,button_clicks,link_clicks,input_variables,output_variables,status,"
    "delivery_not_confirmed_at,failed_at,not_submitted_at,attempt,channel,variant,clicks,"
    "replied_at,replies,button_taps,entered_at,exited_at,exit_reason,goal_at,goal_id"
)


def test_message_csv_columns_and_values(campaign: Client) -> None:
    data, messages = export(campaign)
    assert data.startswith(EXPECTED_HEADER.encode() + b"\r\n")
    first, last = messages[0], messages[-1]
    assert (first.file_name, first.content_type) == ("exp-messages.csv", "text/csv")
    assert all(not m.file_name for m in messages[1:])
    assert last.rows_written == last.rows_estimate == first.rows_estimate == 7
    rows = {r["customer_external_id"]: r for r in csv_rows(data)}
    assert list(rows) == ["r1", "r2", "r3", "r4", "r5", "r6", "r7"]
    for r in rows.values():
        assert (r["business_id"], r["campaign_name"], r["sendout_id"]) == ("default", "Spring, offer", "exp")
        assert r["read_at"] == r["opt_out_at"] == r["button_clicks"] == ""

    r1 = rows["r1"]
    assert r1["status"] == "SUCCESS" and r1["attempt"] == "1" and r1["cnt_session_id"] == "sess-1"
    assert (r1["sent_at"], r1["delivery_not_confirmed_at"], r1["delivered_at"]) == (iso(at(1)), iso(at(2)), iso(at(3)))
    assert r1["failed_at"] == r1["not_submitted_at"] == r1["error_code"] == r1["error_msg"] == ""
    assert json.loads(r1["link_clicks"]) == [
        {"id": "help", "name": "Body variable 2", "ts": iso(at(4))},
        {"id": "promo", "name": "Body variable 1", "ts": iso(at(5))},
    ]
    assert r1["clicks"] == "2" and r1["channel"] == "whatsapp" and r1["variant"] == "A"
    assert json.loads(r1["input_variables"]) == {"name": "Ana", "city": "São Paulo"}
    assert "São Paulo" in r1["input_variables"]  # readable, not \u escaped
    assert json.loads(r1["output_variables"]) == {"answer": 'yes, "sure"'}

    r2 = rows["r2"]  # retried: the second attempt's success; the first attempt's failure time stays
    assert (r2["status"], r2["attempt"], r2["cnt_session_id"]) == ("SUCCESS", "2", "sess-2")
    assert (r2["sent_at"], r2["failed_at"], r2["delivered_at"]) == (iso(at(1)), iso(at(2)), iso(at(11)))
    assert r2["error_code"] == r2["error_msg"] == "" and r2["link_clicks"] == "" and r2["clicks"] == "0"

    r3 = rows["r3"]
    assert (r3["status"], r3["error_code"]) == ("NOT_SUBMITTED", "TEMPLATE_REJECTED")
    assert r3["error_msg"] == '\'=bad, "template"'  # neutralised: see test_export_safety.py
    assert r3["not_submitted_at"] == iso(at(1)) and r3["sent_at"] == ""
    assert rows["r4"]["status"] == "SUBMITTED" and rows["r4"]["channel"] == "rcs"
    assert json.loads(rows["r4"]["link_clicks"]) == [{"id": "promo", "name": "Body variable 1", "ts": iso(at(6))}]
    r5 = rows["r5"]
    assert (r5["status"], r5["sent_at"], r5["delivery_not_confirmed_at"]) == (
        "DELIVERY_NOT_CONFIRMED",
        iso(at(1)),
        iso(at(2)),
    )
    r6 = rows["r6"]
    assert (r6["status"], r6["attempt"], r6["channel"], r6["variant"]) == ("PENDING", "0", "email", "B")
    assert all(r6[c] == "" for c in ("sent_at", "delivered_at", "failed_at", "link_clicks", "input_variables"))
    r7 = rows["r7"]
    assert (r7["status"], r7["attempt"], r7["error_code"], r7["failed_at"]) == (
        "FAILED",
        "2",
        "RATE_LIMITED",
        iso(at(2)),
    )


def test_filters_apply_to_every_kind(campaign: Client) -> None:
    failed = R.MessageFilter(statuses=[S.MESSAGE_STATUS_FAILED, S.MESSAGE_STATUS_NOT_SUBMITTED])
    data, messages = export(campaign, message_filter=failed)
    assert [r["customer_external_id"] for r in csv_rows(data)] == ["r3", "r7"]
    assert messages[-1].rows_estimate == messages[-1].rows_written == 2  # from the counters
    data, messages = export(campaign, message_filter=R.MessageFilter(channel="sms", failure_code="RATE_LIMITED"))
    assert [r["customer_external_id"] for r in csv_rows(data)] == ["r7"]
    assert messages[0].rows_estimate == 1  # counted, as the counters cannot say
    data, _ = export(campaign, message_filter=R.MessageFilter(updated_after=ts(BASE_US + 10**15)))
    assert csv_rows(data) == []

    data, messages = export(campaign, kind=CLICKS)
    rows = csv_rows(data)
    assert messages[0].file_name == "exp-clicks.csv"
    assert tuple(rows[0]) == columns.CLICK_HEADER
    assert [(r["customer_external_id"], r["link_id"], r["clicked_at"]) for r in rows] == [
        ("r1", "promo", iso(at(5))),
        ("r1", "help", iso(at(4))),
        ("r4", "promo", iso(at(6))),
    ]
    assert rows[0]["link_variable"] == "Body variable 1" and rows[0]["url"] == "https://example.com/promo"
    assert messages[-1].rows_written == messages[0].rows_estimate == 3
    data, messages = export(campaign, kind=CLICKS, click_filter=R.ClickFilter(link_id="promo", country_code="br"))
    assert [r["customer_external_id"] for r in csv_rows(data)] == ["r1", "r4"]
    data, _ = export(campaign, kind=CLICKS, click_filter=R.ClickFilter(occurred_before=ts(at(5))))
    assert [r["link_id"] for r in csv_rows(data)] == ["help"]

    data, messages = export(campaign, kind=FAILURES)
    rows = csv_rows(data)
    assert messages[0].file_name == "exp-failure-reasons.csv"
    assert [(r["error_code"], r["count"], r["failed"], r["not_submitted"]) for r in rows] == [
        ("RATE_LIMITED", "1", "1", "0"),
        ("TEMPLATE_REJECTED", "1", "0", "1"),
    ]
    assert float(rows[0]["share_of_failed"]) == 1.0 and float(rows[0]["share_of_not_submitted"]) == 0.0
    assert json.loads(rows[1]["sample_recipients"]) == ["r3"]


def sheet_xml(data: bytes, sheet: int = 1) -> str:
    with zipfile.ZipFile(io.BytesIO(data)) as book:
        return book.read(f"xl/worksheets/sheet{sheet}.xml").decode("utf-8")


def test_xlsx_export_is_a_workbook_with_the_rows(campaign: Client) -> None:
    data, messages = export(campaign, format=XLSX)
    assert messages[0].file_name == "exp-messages.xlsx"
    assert messages[0].content_type == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    assert data[:2] == b"PK" and messages[-1].rows_written == 7
    xml = sheet_xml(data)
    assert len(re.findall(r"<row ", xml)) == 8  # header + 7 rows
    strings = re.findall(r"<t[^>]*>([^<]*)</t>", xml)
    assert strings[: len(columns.MESSAGE_HEADER)] == list(columns.MESSAGE_HEADER)
    assert "=bad, &quot;template&quot;" in xml or '=bad, "template"' in xml
    assert "<f>" not in xml  # a value starting with = is text, never a formula
    assert "São Paulo" in xml
    # attempt and clicks are numbers: r1's row ends with attempt 1, channel, variant, clicks 2.
    assert re.search(r'<c r="W2"[^>]*><v>2</v></c>', xml), xml[:2000]


def test_xlsx_rows_beyond_a_sheet_continue_on_the_next(tmp_path: Path) -> None:
    path = tmp_path / "x.xlsx"
    writer = XlsxWriter(str(path), "messages", ("a", "b"), max_sheet_rows=3)
    writer.write([["1", 1], ["2", 2], ["3", None], ["4", 4.5]])
    writer.close()
    data = path.read_bytes()
    assert writer.sheets == 2
    assert len(re.findall(r"<row ", sheet_xml(data, 1))) == 3 and len(re.findall(r"<row ", sheet_xml(data, 2))) == 3
    with zipfile.ZipFile(io.BytesIO(data)) as book:
        assert 'name="messages 2"' in book.read("xl/workbook.xml").decode()


@pytest.mark.slow
def test_big_exports_come_in_chunks_of_at_most_1_mib(server: ServerThread, client: Client) -> None:
    server.store.writer.run_sync(seed_job("default", "big", 20_000, seed=3, click_share=0.2))
    for fmt in (CSV, XLSX):
        messages = list(client.reports.ExportReport(R.ExportReportRequest(campaign_id="big", format=fmt), timeout=60))
        sizes = [len(m.chunk) for m in messages]
        assert max(sizes) <= 1 << 20 and sum(sizes) > (1 << 20) + 1000, sizes
        full = [s for s in sizes if s]
        assert all(s == 1 << 20 for s in full[1:-1]), sizes  # every chunk but the first and last is full
        written = [m.rows_written for m in messages]
        assert written == sorted(written) and written[-1] == 20_000
        assert {m.rows_estimate for m in messages} == {20_000}
        data = b"".join(m.chunk for m in messages)
        if fmt == CSV:
            rows = csv_rows(data)
            assert len(rows) == 20_000 and sum(1 for r in rows if r["link_clicks"]) > 1000
        else:
            assert len(re.findall(r"<row ", sheet_xml(data))) == 20_001


@pytest.mark.slow
@pytest.mark.parametrize("fmt", [CSV, XLSX])
def test_cancel_stops_reading_and_removes_the_temporary_file(
    server: ServerThread, client: Client, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fmt: int
) -> None:
    """The server reads 3 pages and is held in the 4th (of 30) when the client
    cancels; once released it reads no further page, closes the snapshot and
    removes the workbook's folder. Conditions with a 30 s deadline, no sleep."""
    server.store.writer.run_sync(seed_job("default", "slow", 30_000, seed=4))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    held_at = 4
    probe = Probe(monkeypatch, hold_after=held_at - 1)
    stream = client.reports.ExportReport(R.ExportReportRequest(campaign_id="slow", format=fmt))
    try:
        assert next(stream).file_name
        assert probe.held.wait(30), "the export did not read its pages"
        if fmt == XLSX:
            assert list(scratch.iterdir())  # the workbook is being written there
        stream.cancel()
    finally:
        probe.release.set()
    assert probe.closed.wait(30), "the snapshot was not closed after the cancel"
    deadline = time.monotonic() + 30
    while list(scratch.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not list(scratch.iterdir())
    # The held read may end its page; no other starts (one may have passed
    # its check just before the cancel and then finds the snapshot closed).
    assert probe.fetches <= held_at + 1


def test_unknown_campaign_is_not_found(client: Client) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        list(client.reports.ExportReport(R.ExportReportRequest(campaign_id="nope"), timeout=10))
    details = error_details(caught.value)
    assert details.code == grpc.StatusCode.NOT_FOUND and details.reason == "CAMPAIGN_NOT_FOUND"


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (R.ExportReportRequest(campaign_id="exp", message_filter=R.MessageFilter(statuses=[99])), ["statuses[0]"]),  # type: ignore[list-item]
        (R.ExportReportRequest(campaign_id="exp", kind=CLICKS, click_filter=R.ClickFilter(country_code="BRA")), []),
        (R.ExportReportRequest(campaign_id="exp", click_filter=R.ClickFilter(link_id="promo")), ["click_filter"]),
        (R.ExportReportRequest(campaign_id="exp", kind=FAILURES, message_filter=R.MessageFilter(channel="x")), []),
        (R.ExportReportRequest(campaign_id="exp", kind=7, format=5), ["kind", "format"]),
        (R.ExportReportRequest(campaign_id=""), ["campaign_id"]),
    ],
)
def test_bad_requests_are_invalid_argument(campaign: Client, request_: Any, fields: list[str]) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        list(campaign.reports.ExportReport(request_, timeout=10))
    details = error_details(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT, details
    named = {
        "statuses[0]": "message_filter.statuses[0]",
        "click_filter": "click_filter",
        "kind": "kind",
        "format": "format",
        "campaign_id": "campaign_id",
    }
    for f in fields:
        assert named[f] in details.violations, details
    if request_.kind == CLICKS:
        assert "click_filter.country_code" in details.violations
    if request_.kind == FAILURES:
        assert "message_filter" in details.violations


# -- the CLI ----------------------------------------------------------------------


def run_cli(server: ServerThread, *args: str) -> Any:
    env = {"FLOWTRACK_ADDRESS": server.address, "COLUMNS": "200"}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_cli_export_writes_the_file(server: ServerThread, campaign: Client, tmp_path: Path) -> None:
    tmp_path = tmp_path / "out"  # the server's database is beside
    tmp_path.mkdir()
    out = tmp_path / "failed.csv"
    result = run_cli(server, "export", "exp", "--status", "failed", "--status", "not_submitted", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert [r["customer_external_id"] for r in csv_rows(out.read_bytes())] == ["r3", "r7"]
    assert "exported 2 rows to" in result.stderr
    book = tmp_path / "clicks.xlsx"
    args = ("--kind", "clicks", "--format", "xlsx", "--country", "de", "-o", str(book))
    result = run_cli(server, "export", "exp", *args)
    assert result.exit_code == 0, result.output
    assert len(re.findall(r"<row ", sheet_xml(book.read_bytes()))) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clicks.xlsx", "failed.csv"]  # no temporary file left


def test_cli_export_leaves_no_file_on_error(server: ServerThread, campaign: Client, tmp_path: Path) -> None:
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    out = tmp_path / "x.csv"
    result = run_cli(server, "export", "nope", "-o", str(out))
    assert result.exit_code == 1 and "NOT_FOUND" in result.stderr
    result = run_cli(server, "export", "exp", "--kind", "clicks", "--status", "failed", "-o", str(out))
    assert result.exit_code == 1 and "message_filter" in result.stderr
    assert list(tmp_path.iterdir()) == []


# -- columns, formats and docs ----------------------------------------------------


def test_report_queries_select_the_named_rows() -> None:
    """The store builds its SELECTs from the record fields, so a row's names
    are the columns' names: no positional index crosses a layer."""
    from flowtrack.domain.stats import ClickFilter, MessageFilter
    from flowtrack.store import sql

    messages = sreports.message_report_sql("b", 1, MessageFilter(statuses=(5,), read=True), "a")[0]
    clicks = sreports.click_report_sql("b", 1, ClickFilter(link_id="l"), 0)[0]
    history = sreports.history_sql("b", 1, "", 0)[0]
    for dialect in (sql.SQLITE, sql.POSTGRESQL):
        assert sql.compile_for(messages, dialect).columns == MessageRecord._fields
        assert sql.compile_for(clicks, dialect).columns == EventRecord._fields
        assert sql.compile_for(history, dialect).columns == EventRecord._fields


def test_time_format_is_domain_iso() -> None:
    for us in (BASE_US, BASE_US + 999, at(7), 1_999_999_999_999_999, BASE_US + 86_399_999_999):
        assert columns.iso(us) == times.iso(us) == iso(us)
    assert columns.iso(None) is None


def test_every_column_is_documented() -> None:
    doc = (ROOT / "docs" / "exports.md").read_text(encoding="utf-8")
    for name in (*columns.MESSAGE_HEADER, *columns.CLICK_HEADER, *columns.FAILURE_HEADER):
        assert re.search(rf"^\| `{name}` \|", doc, re.M), f"{name} is not documented in docs/exports.md"
