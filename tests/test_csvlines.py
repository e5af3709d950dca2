"""The message export's CSV lines written straight from the rows
(export/csvlines.py) are byte for byte what export/csv.py's CsvEncoder makes
of the same rows' cells (export/columns.message_cells, export/connectly.cells),
on random rows full of what CSV must quote and what a spreadsheet would run
as a formula."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowtrack.domain.records import ButtonTap, Click, LinkClick, MessageRecord
from flowtrack.export import columns, connectly, csvlines
from flowtrack.export.csv import CsvEncoder

pytestmark = pytest.mark.sqlite_only("no database: CSV formatting only")

# Text that CSV quotes or a spreadsheet runs: separators, quotes, line
# breaks, formula starts, numbers and phone numbers (left as they are).
tricky = st.sampled_from(
    ["", "a", "=1+2", "+5511999990000", "-12.5", "-x", "@me", "\tx", "\rx", "a,b", 'say "hi"', "l1\nl2", "é€", "1e3"]
)
text = tricky | st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8)
times = st.none() | st.integers(0, 2**52) | st.sampled_from([0, 1_779_992_197_670_507])
variables = (
    st.none()
    | st.sampled_from(["", "{}", '{"a":"\\u00e9"}'])
    | st.dictionaries(text, text, max_size=3).map(lambda d: json.dumps(d, ensure_ascii=False, separators=(",", ":")))
)
records = st.builds(
    MessageRecord,
    recipient=text,
    status=st.integers(0, 7),
    attempt=st.integers(0, 3),
    channel=text,
    variant=text,
    reason_code=text,
    reason_message=text,
    provider_message_id=text,
    session_id=text,
    input_vars=variables,
    output_vars=variables,
    not_submitted_at=times,
    submitted_at=times,
    delivery_not_confirmed_at=times,
    success_at=times,
    failed_at=times,
    updated_at=times,
    clicks=st.integers(0, 3),
    first_click_at=times,
    last_event_at=times,
    read_at=times,
    replied_at=times,
    replies=st.none() | st.integers(0, 3),
    opted_out_at=times,
    button_clicks=st.none() | st.integers(0, 3),
    entered_at=times,
    exited_at=times,
    exit_reason=st.none() | text,
    goal_at=times,
    goal_id=st.none() | text,
)
contexts = st.builds(columns.Context, text, text, text)
stamps = st.integers(0, 2**52)
clicks = st.none() | st.lists(st.builds(Click, text, st.none() | text, stamps), max_size=2)
links = st.none() | st.lists(st.builds(LinkClick, text, text, text, stamps), max_size=2)
taps = st.none() | st.lists(st.builds(ButtonTap, text, text, stamps), max_size=2)


def by_cells(header: Any, rows: list[list[Any]]) -> bytes:
    return CsvEncoder(header).write(rows)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(records, clicks, taps), min_size=1, max_size=4), contexts)
def test_message_lines_are_the_encoders_bytes(rows: list[Any], ctx: columns.Context) -> None:
    shared = csvlines.context(ctx)
    want = by_cells(columns.MESSAGE_HEADER, [columns.message_cells(r, ctx, c, t) for r, c, t in rows])
    got = csvlines.LineEncoder(columns.MESSAGE_HEADER).write(
        [csvlines.message_line(r, shared, c, t) for r, c, t in rows]
    )
    assert got == want


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(records, links, taps), min_size=1, max_size=4), contexts)
def test_connectly_lines_are_the_encoders_bytes(rows: list[Any], ctx: columns.Context) -> None:
    shared = csvlines.context(ctx)
    want = by_cells(connectly.HEADER, [connectly.cells(r, ctx, c, t) for r, c, t in rows])
    got = csvlines.LineEncoder(connectly.HEADER).write([csvlines.connectly_line(r, shared, c, t) for r, c, t in rows])
    assert got == want


def test_the_header_is_the_encoders() -> None:
    assert csvlines.LineEncoder(columns.MESSAGE_HEADER).header() == CsvEncoder(columns.MESSAGE_HEADER).header()


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        (None, ""),
        ("", ""),
        ("plain", "plain"),
        ("=SUM(A1)", "'=SUM(A1)"),
        ("+5511999990000", "+5511999990000"),
        ("-12.5", "-12.5"),
        ('=a,"b"', '"\'=a,""b"""'),
        ("\rx", '"\'\rx"'),
        ("a\nb", '"a\nb"'),
    ],
)
def test_a_field(value: str | None, cell: str) -> None:
    assert csvlines.field(value) == cell
