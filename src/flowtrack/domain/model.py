"""The domain's types: statuses, events, a message's state, campaigns.

Times are integers: microseconds since the Unix epoch, UTC. The numbers of
`Status` and `CampaignState` are those of the protos, so converting is a cast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class Status(IntEnum):
    """A message's status. For event statuses the number is the rank."""

    PENDING = 1
    NOT_SUBMITTED = 2
    SUBMITTED = 3
    DELIVERY_NOT_CONFIRMED = 4
    FAILED = 5
    SUCCESS = 6

    @property
    def bucket(self) -> str:
        """The stats bucket (counter name) of a message currently in this status."""
        return _BUCKETS[self]


_BUCKETS = {
    Status.PENDING: "pending",
    Status.NOT_SUBMITTED: "not_submitted",
    Status.SUBMITTED: "awaiting",
    Status.DELIVERY_NOT_CONFIRMED: "delivery_not_confirmed",
    Status.FAILED: "failed",
    Status.SUCCESS: "success",
}
EVENT_STATUSES = frozenset(Status) - {Status.PENDING}
STATUSES_WITH_REASON = frozenset({Status.FAILED, Status.NOT_SUBMITTED})


class CampaignState(IntEnum):
    SCHEDULED = 1
    RUNNING = 2
    COMPLETED = 3
    CANCELLED = 4


Vars = dict[str, str]


@dataclass(frozen=True, slots=True)
class StatusEvent:
    event_id: str
    campaign_id: str
    recipient: str
    status: Status
    occurred_at: int
    attempt: int = 1
    reason_code: str = ""
    reason_message: str = ""
    channel: str = ""
    variant: str = ""
    provider_message_id: str = ""
    session_id: str = ""
    input_variables: Vars = field(default_factory=dict)
    output_variables: Vars = field(default_factory=dict)

    @property
    def key(self) -> tuple[int, int, int, str]:
        """The ordering key of a message's statuses: the greatest key is the
        current status, whatever order the events arrive in."""
        return (self.attempt, int(self.status), self.occurred_at, self.event_id)


@dataclass(frozen=True, slots=True)
class ClickEvent:
    event_id: str
    campaign_id: str
    recipient: str
    link_id: str
    occurred_at: int
    link_variable: str = ""
    url: str = ""
    country_code: str = ""
    region: str = ""
    city: str = ""
    latitude: float | None = None
    longitude: float | None = None
    user_agent: str = ""
    ip_address: str = ""


class EngagementKind(IntEnum):
    """What a recipient did, or how far it went in the flow. The numbers are
    those of the proto's EngagementKind."""

    READ = 1
    REPLIED = 2
    OPTED_OUT = 3
    BUTTON_CLICKED = 4
    ENTERED_FLOW = 5
    EXITED_FLOW = 6
    GOAL_ACHIEVED = 7


@dataclass(frozen=True, slots=True)
class EngagementEvent:
    """An engagement or funnel event. Only the fields of its kind are set:
    `text` and `discard_text` (REPLIED; the text is already empty when
    discarded), `button_id` and `button_name` (BUTTON_CLICKED), `exit_reason`
    (EXITED_FLOW), `goal_id` (GOAL_ACHIEVED)."""

    event_id: str
    campaign_id: str
    recipient: str
    kind: EngagementKind
    occurred_at: int
    text: str = ""
    discard_text: bool = False
    button_id: str = ""
    button_name: str = ""
    exit_reason: str = ""
    goal_id: str = ""


Event = StatusEvent | ClickEvent | EngagementEvent


# The attributes a status event may carry that the message takes from the
# greatest-key event carrying them (the audience's values count as lowest).
ATTRIBUTES = (
    "channel",
    "variant",
    "provider_message_id",
    "session_id",
    "input_variables",
    "output_variables",
)

# Per-status "first reached" time columns of a message.
STATUS_TIME_FIELD = {
    Status.NOT_SUBMITTED: "not_submitted_at",
    Status.SUBMITTED: "submitted_at",
    Status.DELIVERY_NOT_CONFIRMED: "delivery_not_confirmed_at",
    Status.SUCCESS: "success_at",
    Status.FAILED: "failed_at",
}


Key = tuple[int, int, int, str]  # (attempt, rank, occurred_at, event_id): the status order


@dataclass(slots=True)
class MessageState:
    """The current state of one recipient's message, as derived from its status
    events (and its audience entry for the attributes no event carried).

    `attribute_keys` holds, per attribute taken from an event, the key of that
    event (an attribute absent from it still has its audience value). With
    it, and the per-status times kept as running minima, an event older than
    the current one folds in O(1). None means unknown (a message stored
    before these keys were kept): then an older event that could change an
    attribute needs a full `fold`."""

    status: Status = Status.PENDING
    attempt: int = 0
    occurred_at: int | None = None
    event_id: str | None = None
    reason_code: str = ""
    reason_message: str = ""
    channel: str = ""
    variant: str = ""
    provider_message_id: str = ""
    session_id: str = ""
    input_variables: Vars = field(default_factory=dict)
    output_variables: Vars = field(default_factory=dict)
    not_submitted_at: int | None = None
    submitted_at: int | None = None
    delivery_not_confirmed_at: int | None = None
    success_at: int | None = None
    failed_at: int | None = None
    last_event_at: int | None = None
    attribute_keys: dict[str, Key] | None = field(default_factory=dict)

    @property
    def key(self) -> tuple[int, int, int, str] | None:
        if self.event_id is None or self.occurred_at is None:
            return None
        return (self.attempt, int(self.status), self.occurred_at, self.event_id)


def apply(state: MessageState, event: StatusEvent) -> bool:
    """Fold `event` into `state` in place, in O(1), in any arrival order.

    The current status (and its reason) comes from the event with the greatest
    key; each attribute from the greatest-key event that carries it (see
    `attribute_keys`); the per-status times are minima. Returns True: the
    result is exactly what `fold` over all the message's events gives.
    Returns False only when the state's attribute keys are unknown and the
    event is older than the current one and carries an attribute value that
    differs from the state's: the caller then recomputes with `fold`.
    """
    _apply_times(state, event)
    current = state.key
    key = event.key
    newer = current is None or key > current
    if newer:
        state.status = event.status
        state.attempt = event.attempt
        state.occurred_at = event.occurred_at
        state.event_id = event.event_id
        state.reason_code = event.reason_code
        state.reason_message = event.reason_message
    elif key == current:
        return True
    keys = state.attribute_keys
    if keys is None:
        if newer:
            for name in ATTRIBUTES:
                value = getattr(event, name)
                if value:
                    setattr(state, name, value)
            return True
        return all(not getattr(event, name) or getattr(event, name) == getattr(state, name) for name in ATTRIBUTES)
    for name in ATTRIBUTES:
        value = getattr(event, name)
        if value:
            seen = keys.get(name)
            if seen is None or key > seen:
                setattr(state, name, value)
                keys[name] = key
    return True


def _apply_times(state: MessageState, event: StatusEvent) -> None:
    name = STATUS_TIME_FIELD[event.status]
    seen = getattr(state, name)
    if seen is None or event.occurred_at < seen:
        setattr(state, name, event.occurred_at)
    if state.last_event_at is None or event.occurred_at > state.last_event_at:
        state.last_event_at = event.occurred_at


def fold(base: MessageState, events: list[StatusEvent]) -> MessageState:
    """The state of a message from its audience entry `base` (only its
    attributes are used) and all of its status events, in any order."""
    state = MessageState(
        channel=base.channel,
        variant=base.variant,
        provider_message_id=base.provider_message_id,
        session_id=base.session_id,
        input_variables=dict(base.input_variables),
        output_variables=dict(base.output_variables),
    )
    for event in sorted(events, key=lambda e: e.key):
        apply(state, event)
    return state


@dataclass(frozen=True, slots=True)
class Campaign:
    business_id: str
    campaign_id: str
    name: str = ""
    flow_id: str = ""
    channels: tuple[str, ...] = ()
    state: CampaignState = CampaignState.SCHEDULED
    labels: dict[str, str] = field(default_factory=dict)
    create_time: int = 0
    schedule_time: int | None = None
    start_time: int | None = None
    complete_time: int | None = None
    update_time: int = 0
    implicit: bool = False
    recipient_count: int = 0
    quiet_period_us: int | None = None  # None: the server's default (domain/completion.py)
    source: CampaignSource | None = None  # made from a segment of another campaign


@dataclass(frozen=True, slots=True)
class CampaignSource:
    """Where a campaign's audience came from: a named segment
    (domain/segments.py) of another campaign of the same business."""

    campaign_id: str
    segment: str


@dataclass(frozen=True, slots=True)
class Recipient:
    recipient: str
    channel: str = ""
    variant: str = ""
    input_variables: Vars = field(default_factory=dict)
