"""Validation rules for events: what is required, the caps, the ranges.

`Checker` collects every violation of one event (not just the first), so a
client learns everything wrong with it at once. Field paths are relative to
the event ("failure_reason.code", "input_variables[key]"); the api layer
nests them under the event's path in the request ("event.", or
"events[3].status."), the convention of `domain.errors.Violation`.

A value is never cut or normalised silently: too long is TOO_LONG, out of
range is OUT_OF_RANGE. The only normalisations are documented ones that
`fingerprint` sees after they are applied (see its docstring).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from flowtrack.domain import engagement
from flowtrack.domain.errors import Violation, map_entry
from flowtrack.domain.model import (
    EVENT_STATUSES,
    STATUSES_WITH_REASON,
    ClickEvent,
    EngagementEvent,
    EngagementKind,
    Status,
    StatusEvent,
)
from flowtrack.domain.times import MIN_EVENT_TIME_US, TIMESTAMP_RANGE, timestamp_us


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps on event fields (documented on each field in ingest.proto)."""

    id_chars: int = 128
    recipient_chars: int = 256
    code_chars: int = 128
    message_chars: int = 1024
    channel_chars: int = 32
    variant_chars: int = 64
    ref_chars: int = 256  # provider message id, session id
    vars_entries: int = 64
    var_key_chars: int = 128
    var_value_chars: int = 4096
    link_chars: int = 128
    url_chars: int = 2048
    place_chars: int = 128
    user_agent_chars: int = 512
    ip_chars: int = 45
    max_attempt: int = 1000


LIMITS = Limits()
_COUNTRY = re.compile(r"[A-Z]{2}")
PRINTABLE_ID = re.compile(r"[\x21-\x7e]+")


class TimestampLike(Protocol):
    """What the domain reads of a google.protobuf.Timestamp."""

    @property
    def seconds(self) -> int: ...

    @property
    def nanos(self) -> int: ...


class Checker:
    """Collects violations while the api layer reads an event's fields."""

    __slots__ = ("violations",)

    def __init__(self) -> None:
        self.violations: list[Violation] = []

    def add(self, field: str, description: str, reason: str) -> None:
        self.violations.append(Violation(field, description, reason))

    def text(self, field: str, value: str, max_chars: int, *, required: bool = False) -> str:
        if not value:
            if required:
                self.add(field, "is required", "REQUIRED")
        elif len(value) > max_chars:
            self.add(field, f"is longer than {max_chars} characters", "TOO_LONG")
        return value

    def event_id(self, field: str, value: str) -> str:
        self.text(field, value, LIMITS.id_chars, required=True)
        if value and len(value) <= LIMITS.id_chars and not PRINTABLE_ID.fullmatch(value):
            self.add(field, "must be printable ASCII without spaces", "BAD_FORMAT")
        return value

    def variables(self, field: str, values: Mapping[str, str]) -> dict[str, str]:
        if not values:
            return {}
        if len(values) > LIMITS.vars_entries:
            self.add(field, f"has more than {LIMITS.vars_entries} entries", "TOO_MANY")
        for key, value in values.items():
            entry = map_entry(field, key)
            if not key:
                self.add(entry, "has an empty key", "REQUIRED")
            elif len(key) > LIMITS.var_key_chars:
                self.add(entry, f"key is longer than {LIMITS.var_key_chars} characters", "TOO_LONG")
            if len(value) > LIMITS.var_value_chars:
                self.add(entry, f"value is longer than {LIMITS.var_value_chars} characters", "TOO_LONG")
        return dict(values)

    def timestamp(self, field: str, value: TimestampLike | None, now_us: int, max_future_us: int) -> int:
        """An event's time (required: None means unset) as microseconds: a
        Timestamp outside its defined range, before 2000-01-01 or more than
        `max_future_us` ahead of `now_us` is OUT_OF_RANGE. Sub-microsecond
        nanos are dropped (the stored precision)."""
        if value is None:
            self.add(field, "is required", "REQUIRED")
            return 0
        us = timestamp_us(value.seconds, value.nanos)
        if us is None:
            self.add(field, f"is not a valid timestamp ({TIMESTAMP_RANGE})", "OUT_OF_RANGE")
            return 0
        if us < MIN_EVENT_TIME_US:
            self.add(field, "is before 2000-01-01", "OUT_OF_RANGE")
        elif us > now_us + max_future_us:
            self.add(field, f"is more than {max_future_us // 1_000_000} s in the future", "OUT_OF_RANGE")
        return us

    def status(self, field: str, value: int) -> Status:
        if value not in _EVENT_STATUS_NUMBERS:
            self.add(field, "must be NOT_SUBMITTED, SUBMITTED, DELIVERY_NOT_CONFIRMED, FAILED or SUCCESS", "BAD_ENUM")
            return Status.SUBMITTED  # placeholder; the event is refused anyway
        return _EVENT_STATUSES[value]

    def attempt(self, field: str, value: int) -> int:
        if value < 0 or value > LIMITS.max_attempt:
            self.add(field, f"must be from 1 to {LIMITS.max_attempt} (0 means 1)", "OUT_OF_RANGE")
        return value or 1

    def reason(self, status: Status, has_reason: bool, code: str, message: str) -> None:
        """A failure reason is required for FAILED and NOT_SUBMITTED, and
        meaningless (so refused) for the other statuses."""
        if status in STATUSES_WITH_REASON:
            self.text("failure_reason.code", code, LIMITS.code_chars, required=True)
            self.text("failure_reason.message", message, LIMITS.message_chars)
        elif has_reason and (code or message):
            self.add("failure_reason", "is only allowed with FAILED or NOT_SUBMITTED", "NOT_ALLOWED")

    def country(self, field: str, value: str) -> str:
        """An ISO 3166-1 alpha-2 code; lower case is accepted and stored upper case."""
        value = value.upper()
        if value and not _COUNTRY.fullmatch(value):
            self.add(field, "must be an ISO 3166-1 alpha-2 code, e.g. BR", "BAD_FORMAT")
        return value

    def coordinate(self, field: str, value: float | None, limit: float) -> float | None:
        if value is not None and not (-limit <= value <= limit):  # also refuses NaN
            self.add(field, f"must be from {-limit:g} to {limit:g}", "OUT_OF_RANGE")
        return value


_EVENT_STATUS_NUMBERS = frozenset(int(s) for s in EVENT_STATUSES)
_EVENT_STATUSES = {int(s): s for s in EVENT_STATUSES}  # a dict look-up: Status(n) costs ~0.5 us
_ENGAGEMENT_KIND_NUMBERS = frozenset(int(k) for k in EngagementKind)


def engagement_kind(check: Checker, field: str, value: int) -> EngagementKind:
    """The kind of an engagement event; UNSPECIFIED or unknown is a violation."""
    if value not in _ENGAGEMENT_KIND_NUMBERS:
        names = ", ".join(k.name for k in EngagementKind)
        check.add(field, f"must be one of {names}", "BAD_ENUM")
        return EngagementKind.READ  # placeholder; the event is refused anyway
    return EngagementKind(value)


def engagement_fields(check: Checker, kind: EngagementKind, present: dict[str, object]) -> None:
    """Refuse the fields of another kind that `present` (field name -> value)
    sets, and require a button id on BUTTON_CLICKED."""
    for name, value in present.items():
        owner = engagement.KIND_FIELDS[name]
        if value and owner is not kind:
            check.add(name, f"is only allowed with {owner.name}", "NOT_ALLOWED")
    if kind is EngagementKind.BUTTON_CLICKED and not present.get("button_id"):
        check.add("button_id", "is required", "REQUIRED")


def fingerprint(event: StatusEvent | ClickEvent | EngagementEvent) -> bytes:
    """A digest of an event's payload: equal for a resend of the same event,
    different for any change. DUPLICATE vs CONFLICT is decided on it."""
    if isinstance(event, StatusEvent):
        parts: tuple[object, ...] = (
            "s",
            event.event_id,
            event.campaign_id,
            event.recipient,
            int(event.status),
            event.occurred_at,
            event.attempt,
            event.reason_code,
            event.reason_message,
            event.channel,
            event.variant,
            event.provider_message_id,
            event.session_id,
            sorted(event.input_variables.items()),
            sorted(event.output_variables.items()),
        )
    elif isinstance(event, EngagementEvent):
        parts = engagement.fingerprint_parts(event)
    else:
        parts = (
            "c",
            event.event_id,
            event.campaign_id,
            event.recipient,
            event.link_id,
            event.occurred_at,
            event.link_variable,
            event.url,
            event.country_code,
            event.region,
            event.city,
            event.latitude,
            event.longitude,
            event.user_agent,
            event.ip_address,
        )
    return hashlib.blake2b(repr(parts).encode(), digest_size=16).digest()
