"""Engagement and the flow funnel: what a recipient did with its message.

An engagement event (model.EngagementEvent) never changes the delivery
status (folded from status events alone, in any order). Per message it folds into an `Engagement`: the earliest time
of each kind, counts of the kinds that repeat (replies, button taps), and for
the exit and the goal the reason / goal id of the earliest such event. Every
part is a minimum, a count or a flag, so the fold is commutative: any arrival
order of the same events gives the same state (the permutation test holds
the store to that).

`contribution` says what one message adds to the counters of its scopes
(campaign, channel, variant); stats.py turns counters into the figures.

No grpc, no SQL.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowtrack.domain.model import EngagementEvent, EngagementKind

# Caps of the engagement fields (documented on each field in ingest.proto).
REPLY_TEXT_CHARS = 4096  # the longest WhatsApp text message
BUTTON_ID_CHARS = 128
BUTTON_NAME_CHARS = 256
EXIT_REASON_CHARS = 128
GOAL_ID_CHARS = 128

# The fields that belong to one kind only: set on another kind, they are refused.
KIND_FIELDS: dict[str, EngagementKind] = {
    "text": EngagementKind.REPLIED,
    "discard_text": EngagementKind.REPLIED,
    "button_id": EngagementKind.BUTTON_CLICKED,
    "button_name": EngagementKind.BUTTON_CLICKED,
    "exit_reason": EngagementKind.EXITED_FLOW,
    "goal_id": EngagementKind.GOAL_ACHIEVED,
}

# Counter names an engaged message contributes to, in every scope it counts in.
COUNTERS = (
    "read",
    "replied",
    "replies",
    "opted_out",
    "button_clickers",
    "button_clicks",
    "entered",
    "exited",
    "goal_achieved",
)

# The kinds that imply the recipient entered the flow.
_FUNNEL = frozenset({EngagementKind.ENTERED_FLOW, EngagementKind.EXITED_FLOW, EngagementKind.GOAL_ACHIEVED})


@dataclass(slots=True)
class Engagement:
    """One message's engagement, folded from its engagement events.

    `entered_at` is the earliest ENTERED_FLOW, EXITED_FLOW or GOAL_ACHIEVED
    time: a recipient that left the flow or reached its goal entered it, even
    if the engine's ENTERED_FLOW event is missing. `exit_reason` and `goal_id`
    come from the earliest exit / goal event by (occurred_at, event_id)."""

    read_at: int | None = None
    replied_at: int | None = None
    replies: int = 0
    opted_out_at: int | None = None
    first_button_at: int | None = None
    button_clicks: int = 0
    entered_at: int | None = None
    exited_at: int | None = None
    exit_event_id: str | None = None
    exit_reason: str = ""
    goal_at: int | None = None
    goal_event_id: str | None = None
    goal_id: str = ""


def _earliest(seen: int | None, at: int) -> int:
    return at if seen is None or at < seen else seen


def _before(at: int, event_id: str, seen_at: int | None, seen_id: str | None) -> bool:
    """Whether (at, event_id) comes before the kept (seen_at, seen_id), or none is kept."""
    return seen_at is None or (at, event_id) < (seen_at, seen_id or "")


def apply(state: Engagement, event: EngagementEvent) -> None:
    """Fold `event` into `state` in place (commutative: see the module doc)."""
    at, kind = event.occurred_at, event.kind
    if kind is EngagementKind.READ:
        state.read_at = _earliest(state.read_at, at)
    elif kind is EngagementKind.REPLIED:
        state.replied_at = _earliest(state.replied_at, at)
        state.replies += 1
    elif kind is EngagementKind.OPTED_OUT:
        state.opted_out_at = _earliest(state.opted_out_at, at)
    elif kind is EngagementKind.BUTTON_CLICKED:
        state.first_button_at = _earliest(state.first_button_at, at)
        state.button_clicks += 1
    elif kind is EngagementKind.EXITED_FLOW:
        if _before(at, event.event_id, state.exited_at, state.exit_event_id):
            state.exited_at, state.exit_event_id, state.exit_reason = at, event.event_id, event.exit_reason
    elif kind is EngagementKind.GOAL_ACHIEVED and _before(at, event.event_id, state.goal_at, state.goal_event_id):
        state.goal_at, state.goal_event_id, state.goal_id = at, event.event_id, event.goal_id
    if kind in _FUNNEL:
        state.entered_at = _earliest(state.entered_at, at)


def fold(events: list[EngagementEvent]) -> Engagement:
    """The engagement of a message from all of its engagement events."""
    state = Engagement()
    for event in events:
        apply(state, event)
    return state


def contribution(state: Engagement) -> dict[str, int]:
    """What a message with this engagement adds to each counter of COUNTERS
    (in the campaign's scope and in its channel's and variant's); the names
    it adds nothing to are left out."""
    values = {
        "read": int(state.read_at is not None),
        "replied": int(state.replies > 0),
        "replies": state.replies,
        "opted_out": int(state.opted_out_at is not None),
        "button_clickers": int(state.button_clicks > 0),
        "button_clicks": state.button_clicks,
        "entered": int(state.entered_at is not None),
        "exited": int(state.exited_at is not None),
        "goal_achieved": int(state.goal_at is not None),
    }
    return {name: value for name, value in values.items() if value}


def fingerprint_parts(event: EngagementEvent) -> tuple[object, ...]:
    """The payload that decides DUPLICATE vs CONFLICT (validation.fingerprint)."""
    return (
        "g",
        event.event_id,
        event.campaign_id,
        event.recipient,
        int(event.kind),
        event.occurred_at,
        event.text,
        event.discard_text,
        event.button_id,
        event.button_name,
        event.exit_reason,
        event.goal_id,
    )
