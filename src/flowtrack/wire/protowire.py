"""Protocol buffer wire bytes straight from rows, without a message object.

Building one Python protobuf object per report row costs more than reading
the row; `compile_encoder` makes, once per message type, a plain Python
function that writes the wire bytes of a message from a row (a tuple or a
named tuple), as `SerializeToString(deterministic=True)` of the message
built from that row would give them.

Everything about the message comes from its descriptor: field numbers,
types, which fields have presence, nested and map types. What the encoder is
told is where each field's value comes from: by default the row's column of
the same name; `sources` maps a field to a Python expression over the row's
columns (as local names; `_row` is the whole row, plus any extra parameters
named in `params`), `None` meaning "never set". A field with no source is an
error when the encoder is compiled, so a field added to the proto later is
encoded at once if the row has a column of its name, and is refused loudly
(at import) if not: it is never silently left out.

Values, by field type:

- scalars: the Python value; None, or the default (0, "", False) for a field
  without presence, is not written — as protobuf omits defaults;
- `google.protobuf.Timestamp`: µs since the epoch (an int); None is absent,
  any int (0 too) is present;
- `map<string, string>`: a dict, or JSON text of an object; written sorted as
  upb's deterministic serialization sorts keys;
- another message: a row for the encoder given in `nested` (present whenever
  the value is not None, even if every field of it is empty); repeated: an
  iterable of rows, or of bytes already encoded when `nested[name]` is
  `ENCODED` (a page's rows).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

Encoder = Callable[..., bytes]

# `nested[name] = ENCODED`: the field's values are bytes already encoded.
ENCODED: Encoder = bytes


def _varint_slow(v: int) -> bytes:
    out = bytearray()
    while v > 0x7F:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


# The varint of every v < 2**14, and the low 14 bits of a longer one (both
# bytes with the continuation bit): a varint is then a few table look-ups.
_V: list[bytes] = [_varint_slow(v) for v in range(1 << 14)]
_LO: list[bytes] = [bytes((v & 0x7F | 0x80, v >> 7 | 0x80)) for v in range(1 << 14)]


def varint(v: int) -> bytes:
    """The varint of an integer (a negative one as its 64-bit two's complement)."""
    if v < 0:
        v += 1 << 64
    if v < 0x4000:
        return _V[v]
    if v < 0x10000000:
        return _LO[v & 0x3FFF] + _V[v >> 14]
    if v < 0x40000000000:
        return _LO[v & 0x3FFF] + _LO[v >> 14 & 0x3FFF] + _V[v >> 28]
    return _varint_slow(v)


def _tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


_TS = timestamp_pb2.Timestamp.DESCRIPTOR
_TS_SECONDS = _tag(_TS.fields_by_name["seconds"].number, 0)
_TS_NANOS = _tag(_TS.fields_by_name["nanos"].number, 0)


def timestamp(tag: bytes, us: int) -> tuple[bytes, ...]:
    """A Timestamp field's pieces (tag, length, body), from µs since the
    epoch: pieces, not one bytes object, because joining a row's pieces
    once costs far less than concatenating them as they come."""
    seconds, micros = divmod(us, 1_000_000)
    if micros:
        nanos = micros * 1000
        if nanos >= 0x10000000:
            tail: tuple[bytes, ...] = (_TS_NANOS, _LO[nanos & 0x3FFF], _LO[nanos >> 14 & 0x3FFF], _V[nanos >> 28])
            size = 6
        elif nanos >= 0x4000:
            high = _V[nanos >> 14]
            tail, size = (_TS_NANOS, _LO[nanos & 0x3FFF], high), 3 + len(high)
        else:
            tail, size = (_TS_NANOS, _V[nanos]), 2 if nanos < 0x80 else 3
    else:
        tail, size = (), 0
    if 0x10000000 <= seconds < 0x800000000:  # 1978-2059: five bytes
        return (
            tag,
            _V[size + 6],
            _TS_SECONDS,
            _LO[seconds & 0x3FFF],
            _LO[seconds >> 14 & 0x3FFF],
            _V[seconds >> 28],
            *tail,
        )
    if seconds:
        head = _TS_SECONDS + varint(seconds)
        return (tag, _V[size + len(head)], head, *tail)
    return (tag, _V[size], *tail)


_loads = json.JSONDecoder().decode


def string_map(value: str | Mapping[str, str]) -> Iterable[tuple[bytes, bytes]]:
    """A map<string, string>'s entries as UTF-8 pairs, in the order upb's
    deterministic serialization writes them: by the keys' bytes, a key before
    any key it is a prefix of... reversed (a longer key first), which is the
    order of the keys' bytes each followed by 0xFF (never in UTF-8)."""
    items = _loads(value).items() if isinstance(value, str) else value.items()
    pairs = [(k.encode(), v.encode()) for k, v in items]
    if len(pairs) > 1:
        pairs.sort(key=_map_order)
    return pairs


def _map_order(pair: tuple[bytes, bytes]) -> bytes:
    return pair[0] + b"\xff"


class _MapField:
    """Writes a map<string, string> field: its entries, each as a message of
    key and value (both always written, as upb does), sorted (`string_map`).
    What a short JSON text gives is kept (many rows carry the same variables),
    at most _MAP_CACHE texts at a time."""

    def __init__(self, tag: bytes, key_tag: bytes, value_tag: bytes) -> None:
        self.tag, self.key_tag, self.value_tag = tag, key_tag, value_tag
        self.cache: dict[str, bytes] = {}

    def __call__(self, value: str | Mapping[str, str]) -> bytes:
        cacheable = isinstance(value, str) and len(value) <= _MAP_CACHE_TEXT
        if cacheable:
            found = self.cache.get(value)  # type: ignore[arg-type]
            if found is not None:
                return found
        tag, kt, vt = self.tag, self.key_tag, self.value_tag
        out: list[bytes] = []
        for k, x in string_map(value):
            kl, xl = varint(len(k)), varint(len(x))
            out += (tag, varint(len(kt) + len(kl) + len(k) + len(vt) + len(xl) + len(x)), kt, kl, k, vt, xl, x)
        encoded = b"".join(out)
        if cacheable:
            if len(self.cache) >= _MAP_CACHE:
                self.cache.clear()
            self.cache[value] = encoded  # type: ignore[index]
        return encoded


_MAP_CACHE = 1024
_MAP_CACHE_TEXT = 512

_STRUCTS = {
    FieldDescriptor.TYPE_DOUBLE: ("<d", 1),
    FieldDescriptor.TYPE_FLOAT: ("<f", 5),
    FieldDescriptor.TYPE_FIXED64: ("<Q", 1),
    FieldDescriptor.TYPE_SFIXED64: ("<q", 1),
    FieldDescriptor.TYPE_FIXED32: ("<I", 5),
    FieldDescriptor.TYPE_SFIXED32: ("<i", 5),
}
_VARINTS = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_ENUM,
}


def _zigzag32(v: int) -> int:
    return (v << 1) ^ (v >> 31)


def _zigzag64(v: int) -> int:
    return (v << 1) ^ (v >> 63)


def _nonzero_float(v: float) -> bool:
    """Whether an implicit-presence float is written (-0.0 is: its bits are not zero)."""
    return v != 0.0 or math.copysign(1.0, v) < 0


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _message_type(field: FieldDescriptor) -> Descriptor:
    found = field.message_type
    if found is None:  # pragma: no cover - a message field has one
        raise ValueError(f"{field.full_name} is not a message field")
    return found


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and bool(_message_type(field).GetOptions().map_entry)


def compile_encoder(
    descriptor: Descriptor,
    columns: Sequence[str],
    sources: Mapping[str, str | None] | None = None,
    nested: Mapping[str, Encoder] | None = None,
    params: Sequence[str] = (),
) -> Encoder:
    """A function `encode(row, *params) -> bytes`: the wire bytes of a
    `descriptor` message from a row of `columns` (see the module)."""
    sources = dict(sources or {})
    nested = dict(nested or {})
    unknown = set(sources) - set(descriptor.fields_by_name)
    if unknown:
        raise ValueError(f"{descriptor.full_name} has no field {sorted(unknown)}")
    env: dict[str, Any] = {
        "_V": _V,
        "_varint": varint,
        "_timestamp": timestamp,
        "_string_map": string_map,
        "_nonzero_float": _nonzero_float,
        "_zigzag32": _zigzag32,
        "_zigzag64": _zigzag64,
        "_frame": frame,
    }
    bad = [c for c in columns if not c.isidentifier() or c.startswith("_")]
    if bad:
        raise ValueError(f"columns must be names not starting with '_': {bad}")
    names = ", ".join(columns)
    lines = [f"def encode(_row{''.join(f', {p}=()' for p in params)}):"]
    if columns:
        lines.append(f"    ({names},) = _row")
    lines.append("    out = []")
    for field in sorted(descriptor.fields, key=lambda f: f.number):
        if field.name in sources:
            expr = sources[field.name]
        elif field.name in columns:
            expr = field.name
        else:
            raise ValueError(
                f"{descriptor.full_name}.{field.name}: no column of that name and no source "
                "(give one in `sources`, or None for a field never set)"
            )
        if expr is None:
            continue
        lines.append(f"    _v = {expr}")
        lines.extend("    " + line for line in _field_code(field, nested, env))
    lines.append("    return b''.join(out)")
    code = "\n".join(lines)
    exec(compile(code, f"<encoder {descriptor.full_name}>", "exec"), env)  # the code is ours, made from the descriptor
    encode: Encoder = env["encode"]
    encode.__doc__ = f"The wire bytes of a {descriptor.full_name} from a row.\n\n{code}"
    return encode


def _field_code(field: FieldDescriptor, nested: Mapping[str, Encoder], env: dict[str, Any]) -> list[str]:
    """The lines that write field `field` from `v`."""
    n = field.number
    kind = field.type
    if _is_map(field):
        entry = _message_type(field)
        key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
        if key.type != FieldDescriptor.TYPE_STRING or value.type != FieldDescriptor.TYPE_STRING:
            raise NotImplementedError(f"{field.full_name}: only map<string, string> is encoded")
        env[f"_map{n}"] = _MapField(_tag(n, 2), _tag(key.number, 2), _tag(value.number, 2))
        return ["if _v:", f"    out.append(_map{n}(_v))"]
    repeated = _is_repeated(field)
    if kind == FieldDescriptor.TYPE_MESSAGE:
        env[f"_T{n}"] = _tag(n, 2)
        if _message_type(field).full_name == _TS.full_name:
            write = [f"out += _timestamp(_T{n}, _x)"]
        else:
            sub = nested.get(field.name)
            if sub is None:
                raise ValueError(f"{field.full_name}: a message field needs its encoder in `nested`")
            if sub is ENCODED:
                write = [f"out += (_T{n}, _varint(len(_x)), _x)"]
            else:
                env[f"_enc{n}"] = sub
                write = [f"_b = _enc{n}(_x)", f"out += (_T{n}, _varint(len(_b)), _b)"]
        if repeated:  # joined apart: a long list would be copied over and over
            if sub is ENCODED:
                return ["if _v:", f"    out.append(_frame(_T{n}, _v))"]
            if _message_type(field).full_name != _TS.full_name:
                return ["if _v:", f"    out.append(_frame(_T{n}, map(_enc{n}, _v)))"]
            return ["if _v:", "    for _x in _v:", *("        " + w for w in write)]
        return ["if _v is not None:", "    _x = _v", *("    " + w for w in write)]
    if repeated:
        raise NotImplementedError(f"{field.full_name}: repeated scalars are not encoded yet")
    present = "if _v is not None:" if field.has_presence else "if _v:"
    if kind in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        env[f"_T{n}"] = _tag(n, 2)
        encoded = "_v.encode()" if kind == FieldDescriptor.TYPE_STRING else "bytes(_v)"
        return [
            present,
            f"    _b = {encoded}",
            "    _n = len(_b)",
            f"    out += (_T{n}, _V[_n] if _n < 16384 else _varint(_n), _b)",
        ]
    if kind in _VARINTS:
        env[f"_T{n}"] = _tag(n, 0)
        return [present, f"    out += (_T{n}, _V[_v] if 0 <= _v < 16384 else _varint(_v))"]
    if kind in (FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64):
        env[f"_T{n}"] = _tag(n, 0)
        zigzag = "_zigzag32" if kind == FieldDescriptor.TYPE_SINT32 else "_zigzag64"
        return [present, f"    out += (_T{n}, _varint({zigzag}(_v)))"]
    if kind == FieldDescriptor.TYPE_BOOL:
        env[f"_T{n}"] = _tag(n, 0) + b"\x01"
        env[f"_F{n}"] = _tag(n, 0) + b"\x00"
        if field.has_presence:
            return [present, f"    out.append(_T{n} if _v else _F{n})"]
        return [present, f"    out.append(_T{n})"]
    if kind in _STRUCTS:
        fmt, wire_type = _STRUCTS[kind]
        env[f"_T{n}"] = _tag(n, wire_type)
        env[f"_pack{n}"] = struct.Struct(fmt).pack
        if not field.has_presence and kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            present = "if _v is not None and _nonzero_float(_v):"
        return [present, f"    out += (_T{n}, _pack{n}(_v))"]
    raise NotImplementedError(f"{field.full_name}: field type {kind} is not encoded")


def frame(tag: bytes, items: Iterable[bytes]) -> bytes:
    """Items already encoded, as one repeated message field (tag, length, bytes each)."""
    out: list[bytes] = []
    for b in items:
        n = len(b)
        out += (tag, _V[n] if n < 16384 else varint(n), b)
    return b"".join(out)
