"""Fuzzing every RPC of the three services with hypothesis, on a real server.

Three kinds of input reach every method path:

- random request messages built from the request's descriptor: every field
  maybe set, strings empty/huge/odd/SQL-ish/known ids, integers negative and
  extreme, doubles NaN and infinite, enums with unknown numbers, nested
  messages (timestamps with any seconds and nanos), repeated fields and maps;
- valid requests with random bytes flipped, cut or appended;
- random bytes.

The server must never answer UNKNOWN or INTERNAL (nor crash: UNAVAILABLE,
nor hang: DEADLINE_EXCEEDED), must not log an unexpected servicer error, and
health must still say SERVING afterwards. Each test is bounded by
max_examples, so the file runs in well under a minute.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as D
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowtrack.v1 import campaign_pb2, ingest_pb2, privacy_pb2, report_pb2, retention_pb2
from tests.conftest import Backend, ServerThread, connect_db, start_server
from tests.test_ingest import batch, click, status

# slow: hypothesis on every RPC (the quick loop, `pytest -m "not slow"`, leaves it out)
pytestmark = pytest.mark.slow

METHODS: list[D.MethodDescriptor] = [
    method
    for module, name in (
        (campaign_pb2, "CampaignService"),
        (ingest_pb2, "IngestService"),
        (report_pb2, "ReportService"),
        (retention_pb2, "RetentionService"),
        (privacy_pb2, "PrivacyService"),
    )
    for method in module.DESCRIPTOR.services_by_name[name].methods
]
IDS = [m.name for m in METHODS]
# Streams that never end by themselves: read a little, then cancel.
ENDLESS = {"WatchCampaignStats", "SubscribeEvents"}
BAD = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
TIMEOUT = 15.0

FUZZ = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


class Errors(logging.Handler):
    """Collects ERROR records (grpc logs 'Unexpected ... raised by servicer method' there)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def server(backend: Backend) -> Iterator[ServerThread]:
    with tempfile.TemporaryDirectory() as directory:
        running = start_server(Path(directory), max_receive_message_bytes=4 * 1024 * 1024)
        errors = Errors()
        logging.getLogger().addHandler(errors)
        channel = grpc.insecure_channel(running.address)
        try:
            _seed(channel)
            yield running
            assert _serving(channel), "health is not SERVING after the fuzzing"
            unexpected = [r.getMessage()[:500] for r in errors.records]
            assert not unexpected, unexpected
        finally:
            logging.getLogger().removeHandler(errors)
            channel.close()
            running.stop()


@pytest.fixture(scope="module")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as c:
        yield c


def _seed(channel: grpc.Channel) -> None:
    """A campaign with an audience, status events and clicks, so fuzzed
    requests naming it reach the deeper paths."""
    create = channel.unary_unary(
        "/flowtrack.v1.CampaignService/CreateCampaign",
        request_serializer=campaign_pb2.CreateCampaignRequest.SerializeToString,
        response_deserializer=campaign_pb2.CreateCampaignResponse.FromString,
    )
    create(campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id="spring", name="Spring")), timeout=10)
    events = channel.stream_stream(
        "/flowtrack.v1.IngestService/StreamEvents",
        request_serializer=ingest_pb2.StreamEventsRequest.SerializeToString,
        response_deserializer=ingest_pb2.StreamEventsResponse.FromString,
    )
    seeded = batch(
        status("f1"),
        status("f2", recipient="+15550002", state=5, channel="sms"),
        click("f3"),
        click("f4", recipient="+15550002", link="Zz99"),
    )
    [reply] = list(events(iter([seeded]), timeout=10))
    assert reply.accepted == 4


def _serving(channel: grpc.Channel) -> bool:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


# -- strategies over descriptors --------------------------------------------------

STRINGS = st.one_of(
    st.sampled_from(["", "spring", "+15550001", "sms", "Ab12", "f1", "BR", "state=RUNNING", "name:spring"]),
    st.sampled_from(
        ["'; DROP TABLE events; --", "%", "_", "\\", '"', "\x00", "labels.", "\u00e9t\u00e9", "\U0001f600"]
    ),
    st.text(max_size=40),
    st.builds(lambda c, n: c * n, st.sampled_from("x\u00e9\U0001f600"), st.sampled_from([129, 257, 4097, 100_000])),
)
INT32 = st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, -1, 1, 500, 1000, 1001, 2**31 - 1, -(2**31)]))
INT64 = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, -1, 1, 2**63 - 1, -(2**63), 253402300799, 253402300800, -62135596800, -62135596801]),
)
UINT32 = st.integers(0, 2**32 - 1)
UINT64 = st.integers(0, 2**64 - 1)
DOUBLES = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([math.nan, math.inf, -math.inf]))

_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    D.FieldDescriptor.TYPE_STRING: STRINGS,
    D.FieldDescriptor.TYPE_BYTES: st.binary(max_size=64),
    D.FieldDescriptor.TYPE_BOOL: st.booleans(),
    D.FieldDescriptor.TYPE_INT32: INT32,
    D.FieldDescriptor.TYPE_SINT32: INT32,
    D.FieldDescriptor.TYPE_SFIXED32: INT32,
    D.FieldDescriptor.TYPE_INT64: INT64,
    D.FieldDescriptor.TYPE_SINT64: INT64,
    D.FieldDescriptor.TYPE_SFIXED64: INT64,
    D.FieldDescriptor.TYPE_UINT32: UINT32,
    D.FieldDescriptor.TYPE_FIXED32: UINT32,
    D.FieldDescriptor.TYPE_UINT64: UINT64,
    D.FieldDescriptor.TYPE_FIXED64: UINT64,
    D.FieldDescriptor.TYPE_DOUBLE: DOUBLES,
    D.FieldDescriptor.TYPE_FLOAT: st.floats(allow_nan=True, allow_infinity=True, width=32),
}


def _repeated(field: D.FieldDescriptor) -> bool:
    return bool(field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED)  # type: ignore[attr-defined]


def _value(field: D.FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.type == D.FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-3, 100), st.sampled_from([2**31 - 1, -(2**31)]))
    if field.type == D.FieldDescriptor.TYPE_MESSAGE:
        return messages(field.message_type, depth + 1)
    return _SCALARS[field.type]


@st.composite
def messages(draw: st.DrawFn, descriptor: D.Descriptor, depth: int = 0) -> Message:
    """A message of `descriptor` with a random subset of its fields set."""
    message = GetMessageClass(descriptor)()
    if depth > 3:
        return message
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        target = getattr(message, field.name) if _repeated(field) else None
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            entries = draw(st.dictionaries(_SCALARS[key.type], _value(value, depth), max_size=4))
            assert target is not None
            target.update(entries)
        elif _repeated(field):
            assert target is not None
            values = draw(st.lists(_value(field, depth), max_size=3))
            for v in values:
                if field.type == D.FieldDescriptor.TYPE_MESSAGE:
                    target.add().CopyFrom(v)
                else:
                    target.append(v)
        elif field.type == D.FieldDescriptor.TYPE_MESSAGE:
            getattr(message, field.name).CopyFrom(draw(_value(field, depth)))
        else:
            setattr(message, field.name, draw(_value(field, depth)))
    return message


@st.composite
def mutated(draw: st.DrawFn, descriptor: D.Descriptor) -> bytes:
    """A serialized request with a few random bytes flipped, cut or added."""
    data = bytearray(draw(messages(descriptor)).SerializeToString())
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "cut", "add"]))
        if action == "flip" and data:
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
        elif action == "cut" and data:
            del data[draw(st.integers(0, len(data) - 1)) :]
        else:
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


# -- calling any method with raw bytes ------------------------------------------------


def _path(method: D.MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def call(channel: grpc.Channel, method: D.MethodDescriptor, requests: list[bytes]) -> grpc.StatusCode:
    """Send raw request bytes to `method`; its status code. Streams of replies
    are read to their end (endless ones: a few replies, then cancelled)."""
    path = _path(method)
    reply_type = GetMessageClass(method.output_type)
    if not method.client_streaming and not method.server_streaming:
        invoke: Any = channel.unary_unary(path, response_deserializer=reply_type.FromString)
    elif method.client_streaming and not method.server_streaming:
        invoke = channel.stream_unary(path, response_deserializer=reply_type.FromString)
    elif not method.client_streaming:
        invoke = channel.unary_stream(path, response_deserializer=reply_type.FromString)
    else:
        invoke = channel.stream_stream(path, response_deserializer=reply_type.FromString)
    request: Any = iter(requests) if method.client_streaming else requests[0]
    try:
        reply = invoke(request, timeout=TIMEOUT)
        if method.server_streaming:
            try:
                for n, message in enumerate(reply):
                    if method.name in ENDLESS and (n >= 2 or getattr(message, "caught_up", True)):
                        break
            finally:
                reply.cancel()
    except grpc.RpcError as error:
        return error.code()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK


def _assert_fine(code: grpc.StatusCode, method: D.MethodDescriptor, sent: Any) -> None:
    assert code not in BAD, f"{method.name} answered {code} to {sent!r:.500}"


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_random_requests(channel: grpc.Channel, method: D.MethodDescriptor) -> None:
    requests = st.lists(messages(method.input_type), min_size=1, max_size=3 if method.client_streaming else 1)

    @FUZZ
    @given(requests)
    def check(sent: list[Message]) -> None:
        _assert_fine(call(channel, method, [m.SerializeToString() for m in sent]), method, sent)

    check()


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_mutated_and_random_bytes(channel: grpc.Channel, method: D.MethodDescriptor) -> None:
    raw = st.one_of(mutated(method.input_type), st.binary(max_size=256))
    requests = st.lists(raw, min_size=1, max_size=3 if method.client_streaming else 1)

    @FUZZ
    @given(requests)
    def check(sent: list[bytes]) -> None:
        _assert_fine(call(channel, method, sent), method, sent)

    check()


def test_undecodable_request_is_invalid_argument(channel: grpc.Channel) -> None:
    """Bytes that do not parse (here: a string that is not UTF-8) are
    INVALID_ARGUMENT with reason UNDECODABLE_REQUEST, on every kind of RPC."""
    from tests.conftest import error_details

    tried = 0
    for method in METHODS:
        strings = [f for f in method.input_type.fields if f.type == D.FieldDescriptor.TYPE_STRING]
        if not strings:
            continue
        tried += 1
        not_utf8 = bytes([strings[0].number << 3 | 2, 2, 0xFF, 0xFE])  # a string field holding bytes that are not UTF-8
        invoke: Any = getattr(
            channel,
            ("stream" if method.client_streaming else "unary")
            + "_"
            + ("stream" if method.server_streaming else "unary"),
        )(_path(method))
        request: Any = iter([not_utf8]) if method.client_streaming else not_utf8
        with pytest.raises(grpc.RpcError) as raised:
            reply = invoke(request, timeout=TIMEOUT)
            if method.server_streaming:
                list(reply)
        details = error_details(raised.value)
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT, (method.name, details)
        assert details.violation_reasons == {"": "UNDECODABLE_REQUEST"}, (method.name, details)
        assert "not a valid protobuf message" in details.message
    assert tried >= 15


# Valid seconds (a minute ago) with nanos outside 0..999,999,999: once silently
# normalised into the seconds (1.5e9 nanos = 1.5 s later), now refused.
_RECENT = int(time.time()) - 60


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [
        (2**62, 0),
        (-(2**62), 0),
        (2**63 - 1, 0),
        (253402300800, 0),
        (-62135596801, 0),
        (_RECENT, -1),
        (_RECENT, 10**9),
        (_RECENT, 1_500_000_000),
    ],
    # The same test ids in every process (pytest-xdist workers collect apart,
    # and must collect the same tests): "recent", not a clock's reading.
    ids=lambda value: "recent" if value == _RECENT else str(value),
)
def test_timestamps_out_of_range_are_invalid_argument_on_every_rpc(
    server: ServerThread, channel: grpc.Channel, seconds: int, nanos: int
) -> None:
    """Every Timestamp a request can carry, on every RPC that takes one: out of
    its defined range (years 1 to 9999, nanos 0 to 999,999,999) is refused,
    OUT_OF_RANGE, with the field's full path, and nothing is stored. (Found by
    the fuzzer first: a filter time beyond year 9999 overflowed SQLite's
    integers and was answered UNKNOWN.)"""
    from google.protobuf import field_mask_pb2, timestamp_pb2

    from flowtrack.v1 import campaign_pb2_grpc, ingest_pb2_grpc, report_pb2_grpc
    from tests.conftest import error_details

    t = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
    R, C = report_pb2, campaign_pb2
    messages, clicks = R.MessageFilter, R.ClickFilter
    reports = report_pb2_grpc.ReportServiceStub(channel)
    campaigns = campaign_pb2_grpc.CampaignServiceStub(channel)
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)
    bad_status, bad_click = status("ts-bad-1"), click("ts-bad-2")
    bad_status.occurred_at.CopyFrom(t)
    bad_click.occurred_at.CopyFrom(t)
    schedule = C.Campaign(id="ts-new", schedule_time=t)
    update = C.UpdateCampaignRequest(
        campaign=C.Campaign(id="spring", schedule_time=t), update_mask=field_mask_pb2.FieldMask(paths=["schedule_time"])
    )
    calls: list[tuple[Any, Any, str]] = [
        (reports.GetCampaignTimeline, R.GetCampaignTimelineRequest(start_time=t), "start_time"),
        (reports.GetCampaignTimeline, R.GetCampaignTimelineRequest(end_time=t), "end_time"),
        (reports.StreamMessageReport, R.StreamMessageReportRequest(filter=messages(updated_after=t)),
         "filter.updated_after"),
        (reports.StreamMessageReport, R.StreamMessageReportRequest(filter=messages(updated_before=t)),
         "filter.updated_before"),
        (reports.StreamClickReport, R.StreamClickReportRequest(filter=clicks(occurred_after=t)),
         "filter.occurred_after"),
        (reports.StreamClickReport, R.StreamClickReportRequest(filter=clicks(occurred_before=t)),
         "filter.occurred_before"),
        (reports.StreamReplies, R.StreamRepliesRequest(filter=R.ReplyFilter(occurred_after=t)),
         "filter.occurred_after"),
        (reports.StreamReplies, R.StreamRepliesRequest(filter=R.ReplyFilter(occurred_before=t)),
         "filter.occurred_before"),
        (reports.ExportReport, R.ExportReportRequest(message_filter=messages(updated_after=t)),
         "message_filter.updated_after"),
        (reports.ExportReport, R.ExportReportRequest(kind=2, click_filter=clicks(occurred_before=t)),
         "click_filter.occurred_before"),
        (campaigns.CreateCampaign, C.CreateCampaignRequest(campaign=schedule), "campaign.schedule_time"),
        (campaigns.UpdateCampaign, update, "campaign.schedule_time"),
        (ingest.RecordStatusEvent, ingest_pb2.RecordStatusEventRequest(event=bad_status), "event.occurred_at"),
        (ingest.RecordClickEvent, ingest_pb2.RecordClickEventRequest(event=bad_click), "event.occurred_at"),
    ]  # fmt: skip
    for rpc, request, field in calls:
        if hasattr(request, "campaign_id"):
            request.campaign_id = "spring"
        with pytest.raises(grpc.RpcError) as raised:
            reply = rpc(request, timeout=TIMEOUT)
            if hasattr(reply, "__iter__"):
                list(reply)
        details = error_details(raised.value)
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT, (field, details)
        assert details.violation_reasons == {field: "OUT_OF_RANGE"}, (field, details)
        assert "not a valid timestamp" in details.violations[field]
    # On a stream, each such event is INVALID with its path in the batch; the
    # valid event between them is stored.
    ok = f"ts-ok-{seconds}-{nanos}"
    [reply] = list(ingest.StreamEvents(iter([batch(bad_status, status(ok), bad_click)]), timeout=TIMEOUT))
    assert [r.outcome for r in reply.results] == [
        ingest_pb2.EVENT_OUTCOME_INVALID,
        ingest_pb2.EVENT_OUTCOME_ACCEPTED,
        ingest_pb2.EVENT_OUTCOME_INVALID,
    ]
    assert [(v.field, v.reason) for v in reply.results[0].violations] == [
        ("events[0].status.occurred_at", "OUT_OF_RANGE")
    ]
    assert [(v.field, v.reason) for v in reply.results[2].violations] == [
        ("events[2].click.occurred_at", "OUT_OF_RANGE")
    ]
    with connect_db(server.settings.database) as conn:
        stored = {row[0] for row in conn.execute("SELECT event_id FROM events WHERE event_id LIKE 'ts-%'")}
        assert ok in stored and not stored & {"ts-bad-1", "ts-bad-2"}
        assert conn.execute("SELECT count(*) FROM campaigns WHERE campaign_id = 'ts-new'").fetchone() == (0,)
        assert conn.execute("SELECT schedule_time FROM campaigns WHERE campaign_id = 'spring'").fetchone() == (None,)
