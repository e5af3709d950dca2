"""The texts of a request message, with their field paths, for the rules
every text obeys (domain/text.py): the gRPC gate applies them to each
decoded request (the HTTP face checks its query and path texts itself,
web/routes_api.api)."""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from flowtrack.domain import text
from flowtrack.domain.errors import Violation, map_entry

# Fields whose items the servicer checks one by one (an event with a NUL is
# that event's INVALID result, the others of its batch go on: the rules of
# ingest), left out of the request-wide check.
PER_ITEM: dict[str, frozenset[str]] = {"flowtrack.v1.StreamEventsRequest": frozenset({"events"})}


def texts(message: Message, prefix: str = "", skip: frozenset[str] = frozenset()) -> Iterator[tuple[str, str]]:
    """(path, text) of every string in `message`: fields, repeated fields
    (`events[3].recipient`), map keys and values (`labels[team]`), nested;
    not those of the top-level fields `skip`."""
    for field, value in message.ListFields():
        if field.name in skip:
            continue
        path = prefix + field.name
        if field.type == FieldDescriptor.TYPE_STRING:
            if field.is_repeated:
                for i, item in enumerate(value):
                    yield f"{path}[{i}]", item
            else:
                yield path, value
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            entry = field.message_type
            if entry is not None and entry.GetOptions().map_entry:
                key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
                for key, item in value.items():
                    shown = map_entry(path, str(key))
                    if key_field.type == FieldDescriptor.TYPE_STRING:
                        yield shown, key
                    if value_field.type == FieldDescriptor.TYPE_STRING:
                        yield shown, item
                    elif value_field.type == FieldDescriptor.TYPE_MESSAGE:
                        yield from texts(item, shown + ".")
            elif field.is_repeated:
                for i, item in enumerate(value):
                    yield from texts(item, f"{path}[{i}].")
            else:
                yield from texts(value, path + ".")


def refuse_nul(message: Message) -> None:
    """InvalidArgument (reason NUL_CHARACTER per field) if a text of `message` holds a NUL."""
    text.refuse_nul(texts(message, skip=PER_ITEM.get(message.DESCRIPTOR.full_name, frozenset())))


def nul_violations(message: Message) -> list[Violation]:
    """The NUL violations of `message` (one item of a PER_ITEM field), paths relative to it."""
    return [v for path, value in texts(message) if (v := text.nul_violation(path, value)) is not None]


def may_hold_nul(data: bytes) -> bool:
    """Whether a request's wire bytes may carry a NUL in a string: a string
    holding U+0000 is a 0x00 byte on the wire, so bytes without one (most
    requests) need no walk."""
    return b"\x00" in data
