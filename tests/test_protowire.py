"""The wire encoder of report rows (wire/protowire.py, wire/encoded.py)
against protobuf's own serialization of the same messages.

- every field type protobuf has (a message made here for the test, in a pool
  of its own), with and without presence, random values: the encoder's bytes
  are `SerializeToString(deterministic=True)` of the message built from the
  same values, defaults left out as protobuf leaves them out;
- a field added to a message is encoded from the row's column of its name,
  with no change to the encoder; one without a column fails at compile time;
- the message report's rows: random store rows give the bytes of the protos
  that wire/reports.py builds from them (with link clicks and button taps),
  and the pages are the bytes of the same responses.
"""

from __future__ import annotations

import json
import math
import string
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from flowtrack.domain.records import ButtonTap, LinkClick, MessageRecord
from flowtrack.v1 import report_pb2
from flowtrack.wire import encoded, protowire
from flowtrack.wire import reports as wire

pytestmark = pytest.mark.sqlite_only("no database: encoding only")

F = descriptor_pb2.FieldDescriptorProto
SCALARS: dict[str, tuple[int, Any]] = {
    # name: (type, strategy of its values)
    "f_double": (F.TYPE_DOUBLE, st.floats(allow_nan=False, width=64) | st.sampled_from([0.0, -0.0, math.inf])),
    "f_float": (F.TYPE_FLOAT, st.floats(allow_nan=False, width=32) | st.sampled_from([0.0, -0.0])),
    "f_int32": (F.TYPE_INT32, st.integers(-(2**31), 2**31 - 1)),
    "f_int64": (F.TYPE_INT64, st.integers(-(2**63), 2**63 - 1)),
    "f_uint32": (F.TYPE_UINT32, st.integers(0, 2**32 - 1)),
    "f_uint64": (F.TYPE_UINT64, st.integers(0, 2**64 - 1)),
    "f_sint32": (F.TYPE_SINT32, st.integers(-(2**31), 2**31 - 1)),
    "f_sint64": (F.TYPE_SINT64, st.integers(-(2**63), 2**63 - 1)),
    "f_fixed32": (F.TYPE_FIXED32, st.integers(0, 2**32 - 1)),
    "f_fixed64": (F.TYPE_FIXED64, st.integers(0, 2**64 - 1)),
    "f_sfixed32": (F.TYPE_SFIXED32, st.integers(-(2**31), 2**31 - 1)),
    "f_sfixed64": (F.TYPE_SFIXED64, st.integers(-(2**63), 2**63 - 1)),
    "f_bool": (F.TYPE_BOOL, st.booleans()),
    "f_string": (F.TYPE_STRING, st.text(max_size=20) | st.text(min_size=200, max_size=300)),
    "f_bytes": (F.TYPE_BYTES, st.binary(max_size=20) | st.binary(min_size=20_000, max_size=20_000)),
}
SMALL_INTS = st.integers(0, 200) | st.integers(16_000, 17_000) | st.integers(2**27, 2**29)


def _pool_with_test_messages(extra: bool = False) -> Any:
    """The test's messages in a pool of their own: `AllTypes` (every scalar
    type, implicit and explicit presence, an enum, a nested message, a
    repeated one, a map, a Timestamp); with `extra`, one more field."""
    pool = descriptor_pool.DescriptorPool()
    ts = descriptor_pb2.FileDescriptorProto()
    timestamp_pb2.DESCRIPTOR.CopyToProto(ts)
    pool.Add(ts)
    f = descriptor_pb2.FileDescriptorProto(
        name="wiretest.proto", package="wiretest", syntax="proto3", dependency=["google/protobuf/timestamp.proto"]
    )
    color = f.enum_type.add(name="Color")
    for i, name in enumerate(["COLOR_UNSPECIFIED", "COLOR_RED", "COLOR_BIG"]):
        color.value.add(name=name, number=[0, 1, 300][i])
    inner = f.message_type.add(name="Inner")
    inner.field.add(name="a", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    inner.field.add(name="b", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    m = f.message_type.add(name="AllTypes")
    number = 1
    for name, (kind, _) in SCALARS.items():
        m.field.add(name=name, number=number, type=kind, label=F.LABEL_OPTIONAL)
        number += 1
    # explicit presence (proto3 `optional`: a synthetic oneof each)
    for name, kind in (("o_double", F.TYPE_DOUBLE), ("o_int32", F.TYPE_INT32), ("o_string", F.TYPE_STRING)):
        m.oneof_decl.add(name="_" + name)
        m.field.add(
            name=name,
            number=number,
            type=kind,
            label=F.LABEL_OPTIONAL,
            proto3_optional=True,
            oneof_index=len(m.oneof_decl) - 1,
        )
        number += 1
    m.field.add(name="color", number=number, type=F.TYPE_ENUM, type_name=".wiretest.Color", label=F.LABEL_OPTIONAL)
    m.field.add(name="inner", number=number + 1, type=F.TYPE_MESSAGE, type_name=".wiretest.Inner")
    m.field.add(
        name="inners", number=number + 2, type=F.TYPE_MESSAGE, type_name=".wiretest.Inner", label=F.LABEL_REPEATED
    )
    m.field.add(name="at", number=number + 3, type=F.TYPE_MESSAGE, type_name=".google.protobuf.Timestamp")
    entry = m.nested_type.add(name="VarsEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    m.field.add(name="vars", number=number + 4, type=F.TYPE_MESSAGE, type_name=".wiretest.AllTypes.VarsEntry", label=3)
    # a field number past 15 (two-byte tag) and one past 2047 (three bytes)
    m.field.add(name="far", number=3000, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    if extra:
        m.field.add(name="added", number=40, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    pool.Add(f)
    return pool


POOL = _pool_with_test_messages()
ALL: Any = message_factory.GetMessageClass(POOL.FindMessageTypeByName("wiretest.AllTypes"))
INNER = POOL.FindMessageTypeByName("wiretest.Inner")
COLUMNS = tuple(f.name for f in ALL.DESCRIPTOR.fields)
encode_inner = protowire.compile_encoder(INNER, ("a", "b"))
encode_all = protowire.compile_encoder(ALL.DESCRIPTOR, COLUMNS, nested={"inner": encode_inner, "inners": encode_inner})

keys = st.text(max_size=4) | st.sampled_from(["", "a", "ab", "abc", "b", "é", "\x00", "a\x00"])
inners = st.tuples(st.text(max_size=5), SMALL_INTS | st.integers(-5, 0))
rows = st.fixed_dictionaries(
    {
        **{name: st.none() | strategy for name, (_, strategy) in SCALARS.items()},
        "o_double": st.none() | st.sampled_from([0.0, -0.0, 1.5]),
        "o_int32": st.none() | st.sampled_from([0, -1, 7]),
        "o_string": st.none() | st.sampled_from(["", "x"]),
        "color": st.none() | st.sampled_from([0, 1, 300]),
        "inner": st.none() | inners,
        "inners": st.none() | st.lists(inners, max_size=3),
        "at": st.none() | st.integers(-(2**40), 2**52) | st.sampled_from([0, 1, 999_999, 1_000_000, -1]),
        "vars": st.none() | st.dictionaries(keys, st.text(max_size=3), max_size=6),
        "far": st.none() | st.text(max_size=3),
    }
)


def built(values: dict[str, Any]) -> Any:
    """The AllTypes protobuf builds from `values` (None: not set)."""
    m: Any = ALL()
    for name, value in values.items():
        if value is None:
            continue
        if name in ("inner",):
            getattr(m, name).a, getattr(m, name).b = value
        elif name == "inners":
            for a, b in value:
                m.inners.add(a=a, b=b)
        elif name == "at":
            wire.set_ts(m.at, value)
        elif name == "vars":
            m.vars.update(value)
        else:
            setattr(m, name, value)
    return m


@settings(max_examples=100, deadline=None)
@given(rows)
def test_every_field_type_gives_protobufs_bytes(values: dict[str, Any]) -> None:
    row = tuple(values[name] for name in COLUMNS)
    got = encode_all(row)
    want = built(values)
    assert got == want.SerializeToString(deterministic=True)
    assert ALL.FromString(got) == want


def test_defaults_are_left_out_and_presence_is_kept() -> None:
    empty = {name: None for name in COLUMNS}
    assert encode_all(tuple(empty[n] for n in COLUMNS)) == b""
    zero: dict[int, Any] = {F.TYPE_STRING: "", F.TYPE_BYTES: b""}
    defaults = {**empty, **{name: zero.get(kind, 0) for name, (kind, _) in SCALARS.items()}}
    defaults["f_bool"] = False
    assert encode_all(tuple(defaults[n] for n in COLUMNS)) == b""
    # -0.0 has bits set: written, as protobuf writes it
    assert encode_all(tuple({**empty, "f_double": -0.0}[n] for n in COLUMNS)) == ALL(f_double=-0.0).SerializeToString()
    # explicit presence: a default value set is written; a message set empty is present
    present = {**empty, "o_int32": 0, "o_string": "", "o_double": 0.0, "inner": ("", 0), "at": 0}
    got = encode_all(tuple(present[n] for n in COLUMNS))
    assert got == built(present).SerializeToString()
    parsed = ALL.FromString(got)
    for name in ("o_int32", "o_string", "o_double", "inner", "at"):
        assert parsed.HasField(name)


def test_a_map_is_written_in_protobufs_deterministic_order() -> None:
    empty = {name: None for name in COLUMNS}
    for text_or_dict in ('{"b":"1","a":"","ab":"x","":"e"}', {"z": "", "é": "1", "e": "2"}):
        values = {**empty, "vars": text_or_dict}
        got = encode_all(tuple(values[n] for n in COLUMNS))
        as_dict = json.loads(text_or_dict) if isinstance(text_or_dict, str) else text_or_dict
        assert got == built({**values, "vars": as_dict}).SerializeToString(deterministic=True)
        assert encode_all(tuple(values[n] for n in COLUMNS)) == got  # the second time from the cache


def test_a_field_added_to_the_message_is_encoded_from_its_column() -> None:
    """A proto that gains a field: the encoder compiled from the new
    descriptor writes it from the row's column of that name, with no
    change to what the encoder was told."""
    pool = _pool_with_test_messages(extra=True)
    grown: Any = message_factory.GetMessageClass(pool.FindMessageTypeByName("wiretest.AllTypes"))
    inner = protowire.compile_encoder(pool.FindMessageTypeByName("wiretest.Inner"), ("a", "b"))
    columns = (*COLUMNS, "added")
    encode = protowire.compile_encoder(grown.DESCRIPTOR, columns, nested={"inner": inner, "inners": inner})
    values = dict.fromkeys(columns)
    values.update(f_string="x", added=2**40)
    assert encode(tuple(values[n] for n in columns)) == grown(f_string="x", added=2**40).SerializeToString()
    # a row without that column: refused when the encoder is made, never left out
    with pytest.raises(ValueError, match=r"wiretest\.AllTypes\.added: no column"):
        protowire.compile_encoder(grown.DESCRIPTOR, COLUMNS, nested={"inner": inner, "inners": inner})
    with pytest.raises(ValueError, match="has no field"):
        protowire.compile_encoder(INNER, ("a", "b"), {"c": "a"})
    # an explicit None: a field this row never sets
    encode = protowire.compile_encoder(grown.DESCRIPTOR, COLUMNS, {"added": None}, {"inner": inner, "inners": inner})
    assert encode(tuple(values[n] for n in COLUMNS)) == grown(f_string="x").SerializeToString()


@pytest.mark.parametrize("v", [0, 1, 127, 128, 16383, 16384, 2**28 - 1, 2**28, 2**35, 2**42, 2**63, -1, -(2**63)])
def test_varint(v: int) -> None:
    """A varint is what protobuf writes for a uint64 (a negative int64: its two's complement)."""
    m = ALL(o_int32=0, f_uint64=v % 2**64)  # f_uint64 is field 6, o_int32 17 (present though 0)
    assert m.SerializeToString() == (b"\x30" + protowire.varint(v) if v else b"") + b"\x88\x01\x00"


# -- the report rows ------------------------------------------------------------------

text = st.text(alphabet=string.ascii_letters + "é€\U0001f600 ", max_size=8)
maybe_text = st.none() | text
times = st.none() | st.integers(0, 2**52) | st.sampled_from([0, 1_779_992_197_670_507, 1_779_992_197_000_000])
counts = st.integers(0, 3) | st.sampled_from([200, 20_000])
variables = st.none() | st.sampled_from(["", "{}"]) | st.dictionaries(text, text, max_size=3).map(json.dumps)

# A row without an engagement row (replies None) has every engagement column
# None (the store's LEFT JOIN; domain/records.MessageRecord).
ENGAGEMENT = MessageRecord._fields[MessageRecord._fields.index("read_at") :]
message_records = st.builds(
    MessageRecord,
    recipient=text,
    status=st.integers(1, 6),
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
    clicks=counts,
    first_click_at=times,
    last_event_at=times,
    read_at=times,
    replied_at=times,
    replies=st.none() | counts,
    opted_out_at=times,
    button_clicks=st.none() | counts,
    entered_at=times,
    exited_at=times,
    exit_reason=maybe_text,
    goal_at=times,
    goal_id=maybe_text,
).map(lambda r: r if r.replies is not None else r._replace(**dict.fromkeys(ENGAGEMENT)))
link_clicks = st.lists(st.builds(LinkClick, text, text, text, st.integers(0, 2**52)), max_size=3)
taps = st.lists(st.builds(ButtonTap, text, text, st.integers(0, 2**52)), max_size=3)


@settings(max_examples=100, deadline=None)
@given(message_records, link_clicks, taps)
def test_a_message_row_is_the_bytes_of_the_proto_built_from_it(r: MessageRecord, links: Any, tapped: Any) -> None:
    want = wire.message_row(r)
    assert encoded.message_row(r) == want.SerializeToString(deterministic=True)
    wire.add_clicks_and_taps(want, links, tapped)
    got = encoded.MESSAGE_PAGES.engaged(r, links, tapped)
    assert got == want.SerializeToString(deterministic=True)
    assert report_pb2.MessageRow.FromString(got) == want


@settings(max_examples=30, deadline=None)
@given(st.lists(message_records, max_size=5), text, st.integers(0, 2**40))
def test_pages_are_the_bytes_of_the_responses(ms: list[MessageRecord], token: str, seq: int) -> None:
    items = [encoded.MESSAGE_PAGES.item(r) for r in ms]
    page = encoded.MESSAGE_PAGES.page(items, seq, token)
    want = wire.MESSAGE_PAGES.page([wire.message_row(r) for r in ms], seq, token)
    assert page == want.SerializeToString(deterministic=True)
    # the page byte cap counts the same sizes
    assert [encoded.MESSAGE_PAGES.size(b) for b in items] == [wire.MESSAGE_PAGES.size(r) for r in want.rows]
