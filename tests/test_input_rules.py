"""Input rules kept to the letter (issue 10, item 8), on a real server:

- a value that is too long is refused, not cut (a stream's batch_id);
- what DUPLICATE compares after normalising, as ingest.proto documents it:
  times to the microsecond, attempt 0 as 1, country case, map order, and
  nothing else (a microsecond, a region's case are a CONFLICT);
- field paths in violations follow one convention (domain.errors.Violation):
  map entries as `field[key]` (also for an empty key), indexes as sent;
- variables are stored in one JSON encoding, whoever wrote them.

Timestamps outside their defined range on every RPC are in test_fuzz.py.
"""

from __future__ import annotations

import sqlite3

import grpc
import pytest
from google.protobuf import timestamp_pb2

from flowtrack.domain import jsonvars, times
from flowtrack.v1 import campaign_pb2, common_pb2, ingest_pb2, report_pb2
from tests.conftest import Client, ServerThread, connect_db, error_details
from tests.test_ingest import NOW, batch, click, record, status

ACCEPTED = ingest_pb2.EVENT_OUTCOME_ACCEPTED
DUPLICATE = ingest_pb2.EVENT_OUTCOME_DUPLICATE
CONFLICT = ingest_pb2.EVENT_OUTCOME_CONFLICT
INVALID = ingest_pb2.EVENT_OUTCOME_INVALID


def db(server: ServerThread) -> sqlite3.Connection:
    return connect_db(server.settings.database)


def add(client: Client, recipient: campaign_pb2.Recipient) -> campaign_pb2.AddRecipientsResponse:
    """AddRecipients of one recipient to campaign "spring" (created first if need be)."""
    try:
        campaign = campaign_pb2.Campaign(id="spring")
        client.campaigns.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=campaign), timeout=10)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS  # type: ignore[attr-defined]
    request = campaign_pb2.AddRecipientsRequest(campaign_id="spring", recipients=[recipient])
    reply: campaign_pb2.AddRecipientsResponse = client.campaigns.AddRecipients(iter([request]), timeout=10)
    return reply


# -- too long is refused, not cut ------------------------------------------------------


def test_a_batch_id_too_long_refuses_its_batch_and_is_not_cut(server: ServerThread, client: Client) -> None:
    longest, too_long = "b" * 128, "b" * 129
    requests = [
        batch(status("e1"), click("k1"), batch_id=too_long),
        batch(status("e2"), batch_id=longest),
        batch(status("e1"), batch_id="again"),  # the refused events were not stored: e1 is new
    ]
    refused, ok, again = list(client.ingest.StreamEvents(iter(requests), timeout=30))
    assert [r.outcome for r in refused.results] == [INVALID, INVALID]
    for result in refused.results:
        assert [(v.field, v.reason) for v in result.violations] == [("batch_id", "TOO_LONG")]
    assert refused.batch_id == "" and (refused.accepted, refused.refused) == (0, 2)
    assert ok.batch_id == longest and [r.outcome for r in ok.results] == [ACCEPTED]
    assert again.batch_id == "again" and [r.outcome for r in again.results] == [ACCEPTED]
    stored = {row[0] for row in db(server).execute("SELECT event_id FROM events")}
    assert stored == {"e1", "e2"}


# -- what DUPLICATE compares -------------------------------------------------------------


def _at(seconds: int, nanos: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def test_duplicate_compares_after_the_documented_normalisation(server: ServerThread, client: Client) -> None:
    when = NOW - 60
    first = status("n1", attempt=0, input_variables={"b": "2", "a": "1"})
    first.occurred_at.CopyFrom(_at(when, 123_456_789))
    assert record(client, first).result.outcome == ACCEPTED

    # attempt 0 is 1; nanos below a microsecond are dropped; map order is no order.
    same = status("n1", attempt=1, input_variables={"a": "1", "b": "2"})
    same.occurred_at.CopyFrom(_at(when, 123_456_000))
    assert record(client, same).result.outcome == DUPLICATE

    # Anything else differs: one microsecond later, or a variable's case.
    later = status("n1", attempt=1, input_variables={"a": "1", "b": "2"})
    later.occurred_at.CopyFrom(_at(when, 123_457_000))
    assert record(client, later).result.outcome == CONFLICT
    cased = status("n1", attempt=1, input_variables={"a": "1", "B": "2"})
    cased.occurred_at.CopyFrom(_at(when, 123_456_789))
    assert record(client, cased).result.outcome == CONFLICT

    # Clicks: the country's case is normalised, a region's is not.
    place = common_pb2.Location(country_code="br", region="São Paulo")
    sent = client.ingest.RecordClickEvent(
        ingest_pb2.RecordClickEventRequest(event=click("c1", location=place)), timeout=10
    )
    assert sent.result.outcome == ACCEPTED
    upper = common_pb2.Location(country_code="BR", region="São Paulo")
    resent = client.ingest.RecordClickEvent(
        ingest_pb2.RecordClickEventRequest(event=click("c1", location=upper)), timeout=10
    )
    assert resent.result.outcome == DUPLICATE
    region = common_pb2.Location(country_code="BR", region="SÃO PAULO")
    changed = client.ingest.RecordClickEvent(
        ingest_pb2.RecordClickEventRequest(event=click("c1", location=region)), timeout=10
    )
    assert changed.result.outcome == CONFLICT
    assert db(server).execute("SELECT occurred_at FROM events WHERE event_id = 'n1'").fetchone() == (
        when * 1_000_000 + 123_456,
    )


# -- one convention for field paths ------------------------------------------------------


@pytest.mark.parametrize(
    ("variables", "field", "reason"),
    [
        ({"": "x"}, "event.input_variables[]", "REQUIRED"),
        ({"k" * 129: "x"}, "event.input_variables[" + "k" * 32 + "]", "TOO_LONG"),
        ({"key": "x" * 4097}, "event.input_variables[key]", "TOO_LONG"),
    ],
)
def test_map_entries_are_named_alike_in_events_and_audiences(
    client: Client, variables: dict[str, str], field: str, reason: str
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        record(client, status("m1", input_variables=variables))
    assert error_details(raised.value).violation_reasons == {field: reason}
    # The same map of an audience recipient: the same path under its own parent.
    reply = add(client, campaign_pb2.Recipient(recipient="+1", input_variables=variables))
    expected = "requests[0].recipients[0]." + field.removeprefix("event.")
    assert [(v.field, v.reason) for v in reply.violations] == [(expected, reason)]


def test_a_repeated_field_is_indexed_as_sent(client: Client) -> None:
    request = report_pb2.StreamMessageReportRequest(
        campaign_id="spring",
        filter=report_pb2.MessageFilter(statuses=[6, 99, 3]),  # type: ignore[list-item]
    )
    with pytest.raises(grpc.RpcError) as raised:
        list(client.reports.StreamMessageReport(request, timeout=10))
    assert error_details(raised.value).violation_reasons == {"filter.statuses[1]": "UNKNOWN_VALUE"}


# -- one JSON encoding of variables ------------------------------------------------------


def test_variables_are_stored_in_one_encoding_whoever_wrote_them(server: ServerThread, client: Client) -> None:
    variables = {"nome": "João", "b": "2", "a": "1"}
    assert add(client, campaign_pb2.Recipient(recipient="+15550009", input_variables=variables)).added == 1
    record(client, status("v1", recipient="+15550008", input_variables=variables))
    expected = '{"a":"1","b":"2","nome":"João"}'
    assert jsonvars.dumps_vars(variables) == expected
    conn = db(server)
    assert conn.execute("SELECT aud_input FROM messages WHERE recipient = '+15550009'").fetchone() == (expected,)
    assert conn.execute("SELECT input_vars FROM events WHERE event_id = 'v1'").fetchone() == (expected,)
    assert conn.execute("SELECT input_vars FROM messages WHERE recipient = '+15550008'").fetchone() == (expected,)
    assert jsonvars.dumps_vars({}) is None and jsonvars.loads_vars(None) == {}
    assert jsonvars.loads_vars('{"nome":"Jo\\u00e3o"}') == {"nome": "João"}  # rows written before still read


def test_the_timestamp_range_is_exactly_the_defined_one() -> None:
    assert times.timestamp_us(-62_135_596_800, 0) == -62_135_596_800_000_000  # 0001-01-01T00:00:00Z
    assert times.timestamp_us(253_402_300_799, 999_999_999) == 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z
    assert times.timestamp_us(-62_135_596_801, 0) is None
    assert times.timestamp_us(253_402_300_800, 0) is None
    assert times.timestamp_us(0, -1) is None
    assert times.timestamp_us(0, 1_000_000_000) is None


def test_a_plain_status_event_is_converted_as_the_checker_converts_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The servicer converts a status event that breaks no rule without a
    Checker call per field, and builds it without StatusEvent's __init__
    (api/ingest._plain_status, _status_event): on seeded random events, near
    and over every limit, each event it takes is one the Checker finds
    valid, and equal to the Checker's, field by field."""
    import dataclasses
    import random

    from flowtrack.api import ingest as api_ingest
    from flowtrack.domain.model import StatusEvent
    from flowtrack.domain.validation import LIMITS, Checker

    assert not hasattr(StatusEvent, "__post_init__")  # _status_event would skip it
    rng = random.Random(23)
    now, skew = times.now_us(), 300_000_000

    def text(limit: int) -> str:
        if rng.random() < 0.95:
            return rng.choice(["", "a", "é\u2028", " id ", "x" * limit])
        return "y" * (limit + 1)

    taken = 0
    for _ in range(3000):
        message = ingest_pb2.StatusEvent(
            event_id=rng.choice(["e1", "e2", "e3", "", "e 1", "x" * LIMITS.id_chars, "x" * (LIMITS.id_chars + 1)]),
            campaign_id=text(LIMITS.id_chars),
            recipient=text(LIMITS.recipient_chars),
            status=rng.choice([3, 3, 6, 6, 4, 2, 5, 1, 0, 9]),
            attempt=rng.choice([0, 1, 2, 0, 1, LIMITS.max_attempt, LIMITS.max_attempt + 1, -1]),
            channel=text(LIMITS.channel_chars),
            variant=text(LIMITS.variant_chars),
            provider_message_id=text(LIMITS.ref_chars),
            session_id=text(LIMITS.ref_chars),
            input_variables=rng.choice([{}, {"a": "1"}, {"": "x"}, {"k": "v" * (LIMITS.var_value_chars + 1)}]),
            output_variables=rng.choice([{}, {"b": "2"}]),
        )
        if rng.random() < 0.9:
            seconds = rng.choice([NOW - 60] * 6 + [NOW + 3600, 0, -1, NOW - 86400 * 365 * 60])
            message.occurred_at.CopyFrom(timestamp_pb2.Timestamp(seconds=int(seconds), nanos=rng.choice([0, 5000])))
        if rng.random() < 0.5:
            reason = common_pb2.FailureReason(code=text(LIMITS.code_chars), message=text(LIMITS.message_chars))
            message.failure_reason.CopyFrom(reason)
        fast = api_ingest._plain_status(message, now, skew)
        if fast is None:
            continue
        taken += 1
        check = Checker()
        with monkeypatch.context() as patched:
            patched.setattr(api_ingest, "_plain_status", lambda *args: None)
            slow = api_ingest.status_from_proto(message, check, now, skew)
        assert check.violations == []
        assert type(fast) is StatusEvent and fast == slow
        for field in dataclasses.fields(StatusEvent):
            assert type(getattr(fast, field.name)) is type(getattr(slow, field.name)), field.name
    assert taken > 50
