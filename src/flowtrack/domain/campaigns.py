"""Campaign rules: what a valid campaign and recipient are, how a campaign's
state may move, what an update changes, and the ListCampaigns filter.

Everything here is pure: no grpc, no SQL. Field paths in violations are the
request's ("campaign.labels[team]", "requests[2].recipients[5].channel").
"""

from __future__ import annotations

import base64
import dataclasses
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from flowtrack.domain import completion, times
from flowtrack.domain.errors import FailedPrecondition, InvalidArgument, Violation, invalid, map_entry
from flowtrack.domain.model import Campaign, CampaignSource, CampaignState, Recipient
from flowtrack.domain.segments import check_source

# -- limits (documented on the fields of campaign.proto) ---------------------
ID_CHARS = 128
NAME_CHARS = 256
FLOW_ID_CHARS = 128
CHANNELS = 16
CHANNEL_CHARS = 32
LABELS = 32
LABEL_KEY_CHARS = 63
LABEL_VALUE_CHARS = 256

RECIPIENT_CHARS = 256
RECIPIENT_CHANNEL_CHARS = 32
VARIANT_CHARS = 64
INPUT_VARIABLES = 64
INPUT_KEY_CHARS = 128
INPUT_VALUE_CHARS = 4096
RECIPIENTS_PER_BATCH = 10_000
MAX_VIOLATIONS = 100

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500

_ID = re.compile(r"[A-Za-z0-9._:-]+")

FINAL_STATES = frozenset({CampaignState.COMPLETED, CampaignState.CANCELLED})
# Moves allowed besides staying in the same state.
TRANSITIONS: dict[CampaignState, frozenset[CampaignState]] = {
    CampaignState.SCHEDULED: frozenset({CampaignState.RUNNING, CampaignState.CANCELLED}),
    CampaignState.RUNNING: frozenset({CampaignState.COMPLETED, CampaignState.CANCELLED}),
    CampaignState.COMPLETED: frozenset(),
    CampaignState.CANCELLED: frozenset(),
}
_STATE_NUMBERS = frozenset(int(s) for s in CampaignState)
UPDATABLE = ("name", "flow_id", "channels", "labels", "schedule_time", "state", "quiet_period")
OUTPUT_ONLY = (
    "id",
    "create_time",
    "start_time",
    "complete_time",
    "update_time",
    "implicit",
    "recipient_count",
    "source",
)


@dataclass(frozen=True, slots=True)
class CampaignDraft:
    """A campaign as a client sends it, before validation. `state` is the raw
    enum number (0 = unspecified, possibly out of range); `schedule_time` is
    (seconds, nanos) as in a Timestamp, or None when unset."""

    campaign_id: str = ""
    name: str = ""
    flow_id: str = ""
    channels: tuple[str, ...] = ()
    state: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    schedule_time: tuple[int, int] | None = None
    quiet_period_us: int | None = None
    source: CampaignSource | None = None  # on create only: a segment of another campaign


def generate_id() -> str:
    """A fresh campaign id: "cmp_" and 20 random base32 characters (100 bits)."""
    return "cmp_" + base64.b32encode(secrets.token_bytes(15)).decode().lower()[:20]


# -- validation ---------------------------------------------------------------
def check_id(value: str, path: str) -> list[Violation]:
    """The rules of a campaign id a client chooses."""
    if not value:
        return [Violation(path, "is required", "REQUIRED")]
    if len(value) > ID_CHARS:
        return [Violation(path, f"is longer than {ID_CHARS} characters", "TOO_LONG")]
    if not _ID.fullmatch(value):
        return [Violation(path, "may only hold letters, digits, '.', '_', ':' and '-'", "BAD_FORMAT")]
    return []


def require_id(value: str, path: str) -> str:
    """An id naming an existing campaign: required and at most 128 characters
    (no charset check, so that implicit campaigns stay reachable)."""
    if not value:
        raise invalid(path, "is required", "REQUIRED")
    if len(value) > ID_CHARS:
        raise invalid(path, f"is longer than {ID_CHARS} characters", "TOO_LONG")
    return value


def _text(out: list[Violation], path: str, value: str, limit: int) -> None:
    if len(value) > limit:
        out.append(Violation(path, f"is longer than {limit} characters", "TOO_LONG"))


def _channels(out: list[Violation], path: str, channels: tuple[str, ...]) -> None:
    if len(channels) > CHANNELS:
        out.append(Violation(path, f"has more than {CHANNELS} entries", "TOO_MANY"))
    seen: set[str] = set()
    for i, channel in enumerate(channels):
        if not channel:
            out.append(Violation(f"{path}[{i}]", "is empty", "REQUIRED"))
        elif len(channel) > CHANNEL_CHARS:
            out.append(Violation(f"{path}[{i}]", f"is longer than {CHANNEL_CHARS} characters", "TOO_LONG"))
        elif channel in seen:
            out.append(Violation(f"{path}[{i}]", f"repeats {channel!r}", "DUPLICATE"))
        seen.add(channel)


def _labels(out: list[Violation], path: str, labels: Mapping[str, str]) -> None:
    if len(labels) > LABELS:
        out.append(Violation(path, f"has more than {LABELS} entries", "TOO_MANY"))
    for key, value in labels.items():
        shown = map_entry(path, key)
        if not key:
            out.append(Violation(shown, "has an empty key", "REQUIRED"))
        elif len(key) > LABEL_KEY_CHARS:
            out.append(Violation(shown, f"key is longer than {LABEL_KEY_CHARS} characters", "TOO_LONG"))
        if len(value) > LABEL_VALUE_CHARS:
            out.append(Violation(shown, f"value is longer than {LABEL_VALUE_CHARS} characters", "TOO_LONG"))


def _time(out: list[Violation], path: str, value: tuple[int, int] | None) -> int | None:
    if value is None:
        return None
    us = times.timestamp_us(*value)
    if us is None:
        out.append(Violation(path, f"is not a valid timestamp ({times.TIMESTAMP_RANGE})", "OUT_OF_RANGE"))
    return us


def _quiet(out: list[Violation], path: str, value: int | None) -> None:
    low, high = completion.MIN_QUIET_PERIOD_US, completion.MAX_QUIET_PERIOD_US
    if value is not None and not low <= value <= high:
        out.append(Violation(path, "must be from 1 s to 90 days", "OUT_OF_RANGE"))


def _state(out: list[Violation], path: str, value: int) -> CampaignState | None:
    if value == 0:
        return None
    if value not in _STATE_NUMBERS:
        out.append(Violation(path, f"{value} is not a CampaignState", "BAD_ENUM"))
        return None
    return CampaignState(value)


def new_campaign(business_id: str, draft: CampaignDraft, *, now_us: int, campaign_id: str) -> Campaign:
    """The campaign CreateCampaign stores for `draft` (its id already checked
    or generated). Raises InvalidArgument with every violation at once."""
    out: list[Violation] = []
    _text(out, "campaign.name", draft.name, NAME_CHARS)
    _text(out, "campaign.flow_id", draft.flow_id, FLOW_ID_CHARS)
    _channels(out, "campaign.channels", draft.channels)
    _labels(out, "campaign.labels", draft.labels)
    schedule_time = _time(out, "campaign.schedule_time", draft.schedule_time)
    _quiet(out, "campaign.quiet_period", draft.quiet_period_us)
    state = _state(out, "campaign.state", draft.state) or CampaignState.SCHEDULED
    if state in FINAL_STATES:
        out.append(Violation("campaign.state", "a new campaign is SCHEDULED or RUNNING", "NOT_ALLOWED"))
    if out:
        raise InvalidArgument(out)
    return Campaign(
        business_id=business_id,
        campaign_id=campaign_id,
        name=draft.name,
        flow_id=draft.flow_id,
        channels=draft.channels,
        state=state,
        labels=dict(draft.labels),
        create_time=now_us,
        schedule_time=schedule_time,
        start_time=now_us if state is CampaignState.RUNNING else None,
        update_time=now_us,
        quiet_period_us=draft.quiet_period_us,
        source=draft.source,
    )


def check_create(draft: CampaignDraft) -> None:
    """Every violation of a CreateCampaign request, at once (the id only if
    the client chose one)."""
    out = check_id(draft.campaign_id, "campaign.id") if draft.campaign_id else []
    try:
        new_campaign("", draft, now_us=0, campaign_id=draft.campaign_id)
    except InvalidArgument as error:
        out.extend(error.violations)
    if draft.source is not None:
        out.extend(check_source(draft.source))
    if out:
        raise InvalidArgument(out)


def update_paths(paths: Iterable[str]) -> tuple[str, ...]:
    """The fields an update_mask names (all of UPDATABLE when empty); InvalidArgument
    for unknown or output-only paths."""
    given = list(paths)
    if not given:
        return UPDATABLE
    out: list[Violation] = []
    for i, path in enumerate(given):
        if path in OUTPUT_ONLY:
            out.append(Violation(f"update_mask.paths[{i}]", f"{path!r} cannot be changed", "NOT_UPDATABLE"))
        elif path not in UPDATABLE:
            out.append(
                Violation(f"update_mask.paths[{i}]", f"{path!r} is not one of {', '.join(UPDATABLE)}", "UNKNOWN_FIELD")
            )
    if out:
        raise InvalidArgument(out)
    return tuple(dict.fromkeys(given))


def check_update(draft: CampaignDraft, paths: tuple[str, ...], *, explicit_mask: bool) -> None:
    """Every violation of an UpdateCampaign request's values, at once. Only
    the fields in `paths` are checked (the others are ignored)."""
    out: list[Violation] = []
    if not draft.campaign_id:
        out.append(Violation("campaign.id", "is required", "REQUIRED"))
    elif len(draft.campaign_id) > ID_CHARS:
        out.append(Violation("campaign.id", f"is longer than {ID_CHARS} characters", "TOO_LONG"))
    if "name" in paths:
        _text(out, "campaign.name", draft.name, NAME_CHARS)
    if "flow_id" in paths:
        _text(out, "campaign.flow_id", draft.flow_id, FLOW_ID_CHARS)
    if "channels" in paths:
        _channels(out, "campaign.channels", draft.channels)
    if "labels" in paths:
        _labels(out, "campaign.labels", draft.labels)
    if "schedule_time" in paths:
        _time(out, "campaign.schedule_time", draft.schedule_time)
    if "quiet_period" in paths:
        _quiet(out, "campaign.quiet_period", draft.quiet_period_us)
    if "state" in paths:
        state = _state(out, "campaign.state", draft.state)
        if state is None and draft.state == 0 and explicit_mask:
            out.append(Violation("campaign.state", "is required when update_mask names it", "REQUIRED"))
    if out:
        raise InvalidArgument(out)


def check_transition(current: CampaignState, new: CampaignState) -> None:
    """FailedPrecondition unless `current` may move to `new` (staying is allowed)."""
    if new is current or new in TRANSITIONS[current]:
        return
    moves = TRANSITIONS[current]
    why = f"it may only become {' or '.join(s.name for s in sorted(moves))}" if moves else f"{current.name} is final"
    raise FailedPrecondition(
        f"a {current.name} campaign cannot become {new.name}: {why}",
        reason="ILLEGAL_STATE_TRANSITION",
    )


def apply_update(current: Campaign, draft: CampaignDraft, paths: tuple[str, ...], *, now_us: int) -> Campaign:
    """`current` changed by an (already checked) update. Entering RUNNING sets
    start_time, entering COMPLETED or CANCELLED sets complete_time; update_time
    is always now. An unspecified state leaves the state as it is."""
    changes: dict[str, object] = {"update_time": now_us}
    if "name" in paths:
        changes["name"] = draft.name
    if "flow_id" in paths:
        changes["flow_id"] = draft.flow_id
    if "channels" in paths:
        changes["channels"] = draft.channels
    if "labels" in paths:
        changes["labels"] = dict(draft.labels)
    if "schedule_time" in paths:
        changes["schedule_time"] = _time([], "", draft.schedule_time)
    if "quiet_period" in paths:
        changes["quiet_period_us"] = draft.quiet_period_us
    if "state" in paths and draft.state:
        new = CampaignState(draft.state)
        check_transition(current.state, new)
        if new is not current.state:
            changes["state"] = new
            if new is CampaignState.RUNNING:
                changes["start_time"] = now_us
            else:
                changes["complete_time"] = now_us
    return dataclasses.replace(current, **changes)  # type: ignore[arg-type]


def check_recipient(recipient: Recipient) -> list[Violation]:
    """Every violation of one recipient of AddRecipients, with field paths
    relative to the recipient ("channel", "input_variables[key]")."""
    out: list[Violation] = []
    if not recipient.recipient:
        out.append(Violation("recipient", "is required", "REQUIRED"))
    else:
        _text(out, "recipient", recipient.recipient, RECIPIENT_CHARS)
    _text(out, "channel", recipient.channel, RECIPIENT_CHANNEL_CHARS)
    _text(out, "variant", recipient.variant, VARIANT_CHARS)
    variables = recipient.input_variables
    if len(variables) > INPUT_VARIABLES:
        out.append(Violation("input_variables", f"has more than {INPUT_VARIABLES} entries", "TOO_MANY"))
    for key, value in variables.items():
        shown = map_entry("input_variables", key)
        if not key:
            out.append(Violation(shown, "has an empty key", "REQUIRED"))
        elif len(key) > INPUT_KEY_CHARS:
            out.append(Violation(shown, f"key is longer than {INPUT_KEY_CHARS} characters", "TOO_LONG"))
        if len(value) > INPUT_VALUE_CHARS:
            out.append(Violation(shown, f"value is longer than {INPUT_VALUE_CHARS} characters", "TOO_LONG"))
    return out


def page_size(value: int) -> int:
    """ListCampaigns' page size: 0 means 50, capped at 500, negative refused."""
    if value < 0:
        raise invalid("page_size", "must not be negative", "OUT_OF_RANGE")
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


# -- the ListCampaigns filter -------------------------------------------------
@dataclass(frozen=True, slots=True)
class CampaignFilter:
    """Terms that must all hold. `names` are case-folded substrings."""

    states: tuple[CampaignState, ...] = ()
    names: tuple[str, ...] = ()
    label_equals: tuple[tuple[str, str], ...] = ()
    label_present: tuple[str, ...] = ()

    def canonical(self) -> str:
        """The same text for every spelling of the same filter (tokens bind to it)."""
        return repr((sorted(self.states), sorted(self.names), sorted(self.label_equals), sorted(self.label_present)))


def fold(text: str) -> str:
    """Case folding for name:TEXT (Unicode-aware, unlike SQL's lower())."""
    return text.casefold()


def _terms(text: str) -> list[tuple[str, list[bool]]]:
    """Split on unquoted whitespace. Each term comes with, per character,
    whether it was quoted (so that a quoted '=' or ':' is not an operator).
    Inside double quotes, \\" and \\\\ are a quote and a backslash."""
    terms: list[tuple[str, list[bool]]] = []
    chars: list[str] = []
    quoted: list[bool] = []
    in_quotes = False
    started = False
    i = 0
    while i < len(text):
        c = text[i]
        if in_quotes:
            if c == "\\" and i + 1 < len(text) and text[i + 1] in '"\\':
                chars.append(text[i + 1])
                quoted.append(True)
                i += 2
                continue
            if c == '"':
                in_quotes = False
            else:
                chars.append(c)
                quoted.append(True)
        elif c == '"':
            in_quotes = started = True
        elif c.isspace():
            if started:
                terms.append(("".join(chars), quoted))
            chars, quoted, started = [], [], False
        else:
            chars.append(c)
            quoted.append(False)
            started = True
        i += 1
    if in_quotes:
        raise _bad_filter("has an unterminated quote")
    if started:
        terms.append(("".join(chars), quoted))
    return terms


def _bad_filter(description: str) -> InvalidArgument:
    return invalid(
        "filter",
        description + "; terms are state=RUNNING, name:TEXT, labels.KEY=VALUE or labels.KEY, separated by spaces",
        "BAD_FILTER",
    )


def _operator(term: str, quoted: list[bool], ops: str) -> int:
    return next((i for i, c in enumerate(term) if c in ops and not quoted[i]), -1)


def parse_filter(text: str) -> CampaignFilter:
    """Parse ListCampaigns' filter (see ListCampaignsRequest.filter).
    Values may be double-quoted to hold spaces, '=' or ':'."""
    states: list[CampaignState] = []
    names: list[str] = []
    equals: list[tuple[str, str]] = []
    present: list[str] = []
    for term, quoted in _terms(text):
        at = _operator(term, quoted, "=:")
        head = term if at < 0 else term[:at]
        op = "" if at < 0 else term[at]
        value = term[at + 1 :]
        head_quoted = any(quoted[: len(head)])
        if head == "state" and op == "=" and not head_quoted:
            name = value.upper().removeprefix("CAMPAIGN_STATE_")
            if name not in CampaignState.__members__:
                raise _bad_filter(f"{value!r} is not a campaign state (SCHEDULED, RUNNING, COMPLETED, CANCELLED)")
            states.append(CampaignState[name])
        elif head == "name" and op == ":" and not head_quoted:
            if not value:
                raise _bad_filter("name: needs the text to look for")
            names.append(fold(value))
        elif term.startswith("labels.") and not any(quoted[:7]) and op in ("=", ""):
            key = head[7:]
            if not key:
                raise _bad_filter(f"{term!r} names no label key")
            if op == "=":
                equals.append((key, value))
            else:
                present.append(key)
        else:
            raise _bad_filter(f"{term!r} is not a filter term")
    return CampaignFilter(tuple(states), tuple(names), tuple(equals), tuple(present))
