"""Stats maths: buckets from counters, rates, reconciliation, report filters.

No grpc, no SQL. The store hands over counter rows `(scope, name, value)` as
the writer maintains them (the `counters` table of store/schema.py); this
module turns them into the status buckets (total = pending + not submitted
+ submitted; submitted = awaiting + delivery not confirmed + success +
failed) and the rates of report.proto.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields

from flowtrack.domain.engagement import COUNTERS as ENGAGEMENT_COUNTERS
from flowtrack.domain.errors import InvalidArgument, Violation
from flowtrack.domain.model import Status
from flowtrack.domain.text import nul_violation

# The six current-status buckets, as counter names.
BUCKETS = ("pending", "not_submitted", "awaiting", "delivery_not_confirmed", "failed", "success")

CHANNEL_SCOPE = "c:"
VARIANT_SCOPE = "v:"
LINK_SCOPE = "l:"

# Caps of the report knobs (report.proto).
DEFAULT_PAGE_SIZE = 500
MAX_PAGE_SIZE = 1000
DEFAULT_REASONS_PAGE_SIZE = 100
DEFAULT_SAMPLE_SIZE = 3
MAX_SAMPLE_SIZE = 20

# Field caps a filter value may not exceed (the same caps as the events).
FILTER_CAPS = {"channel": 32, "variant": 64, "recipient": 256, "failure_code": 128, "link_id": 128}


def filter_text(field: str, value: str, name: str) -> Violation | None:
    """The violation of a report filter's text `value` (FILTER_CAPS[name]
    characters at most, no NUL: the rule of every text, domain/text.py),
    reported at `field`; None if it is fine."""
    cap = FILTER_CAPS[name]
    if len(value) > cap:
        return Violation(field, f"at most {cap} characters", "TOO_LONG")
    return nul_violation(field, value)


@dataclass(frozen=True, slots=True)
class Counts:
    """Messages per current status: total = pending + not submitted + submitted."""

    pending: int = 0
    not_submitted: int = 0
    awaiting: int = 0
    delivery_not_confirmed: int = 0
    failed: int = 0
    success: int = 0

    @property
    def submitted(self) -> int:
        return self.awaiting + self.delivery_not_confirmed + self.success + self.failed

    @property
    def total(self) -> int:
        return self.pending + self.not_submitted + self.submitted

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(getattr(self, name) + getattr(other, name) for name in BUCKETS))


@dataclass(frozen=True, slots=True)
class Rates:
    """Fractions from 0 to 1; None where the denominator is zero."""

    success_rate: float | None = None
    failure_rate: float | None = None
    delivery_not_confirmed_rate: float | None = None
    click_through_rate: float | None = None
    not_submitted_rate: float | None = None
    delivery_rate: float | None = None
    read_rate: float | None = None
    reply_rate: float | None = None
    link_click_rate: float | None = None
    opt_out_rate: float | None = None
    button_click_rate: float | None = None
    goal_rate: float | None = None


@dataclass(frozen=True, slots=True)
class Engaged:
    """Engagement counts of one slice: distinct recipients per kind,
    and totals of the kinds that repeat (replies, button_clicks)."""

    read: int = 0
    replied: int = 0
    replies: int = 0
    opted_out: int = 0
    button_clickers: int = 0
    button_clicks: int = 0
    entered: int = 0
    exited: int = 0
    goal_achieved: int = 0

    @property
    def in_flow(self) -> int:
        """Recipients in the flow: entered - exited (never negative: an exit
        implies an entry, see domain/engagement.py)."""
        return self.entered - self.exited

    @property
    def conversations_initiated(self) -> int:
        """Conversations the campaign started: recipients with at least one
        reply (so the same number as `replied`)."""
        return self.replied

    def __add__(self, other: Engaged) -> Engaged:
        return Engaged(*(getattr(self, name) + getattr(other, name) for name in ENGAGEMENT_COUNTERS))


def ratio(numerator: int, denominator: int) -> float | None:
    """numerator / denominator, or None when the denominator is zero."""
    return numerator / denominator if denominator else None


def rates(
    counts: Counts, unique_clickers: int, engaged: Engaged | None = None, unique_human_clickers: int | None = None
) -> Rates:
    """The rates of report.proto: success, failure and delivery-not-confirmed
    over submitted; click-through = unique clickers / submitted; not-submitted
    over the messages that have any status (total - pending). And the engagement
    rates: delivery = success, read = read, reply = replied, link click = unique
    human clickers (bots left out: domain/bots.py; unique clickers if not
    given), opt-out = opted out, button click = button clickers, each over
    submitted; goal = goal achieved / entered."""
    submitted = counts.submitted
    e = engaged or Engaged()
    return Rates(
        success_rate=ratio(counts.success, submitted),
        failure_rate=ratio(counts.failed, submitted),
        delivery_not_confirmed_rate=ratio(counts.delivery_not_confirmed, submitted),
        click_through_rate=ratio(unique_clickers, submitted),
        not_submitted_rate=ratio(counts.not_submitted, counts.total - counts.pending),
        delivery_rate=ratio(counts.success, submitted),
        read_rate=ratio(e.read, submitted),
        reply_rate=ratio(e.replied, submitted),
        link_click_rate=ratio(unique_clickers if unique_human_clickers is None else unique_human_clickers, submitted),
        opt_out_rate=ratio(e.opted_out, submitted),
        button_click_rate=ratio(e.button_clickers, submitted),
        goal_rate=ratio(e.goal_achieved, e.entered),
    )


@dataclass(frozen=True, slots=True)
class Bucket:
    """The stats of one slice: the whole campaign, a channel or a variant."""

    key: str
    counts: Counts
    clicks: int = 0
    unique_clickers: int = 0
    engaged: Engaged = Engaged()
    human_clicks: int = 0
    unique_human_clickers: int = 0

    @property
    def bot_clicks(self) -> int:
        """Clicks classified bot (domain/bots.py)."""
        return self.clicks - self.human_clicks

    @property
    def rates(self) -> Rates:
        return rates(self.counts, self.unique_clickers, self.engaged, self.unique_human_clickers)


def bucket_of(key: str, values: Mapping[str, int]) -> Bucket:
    """A slice's Bucket from its counters by name (missing ones are 0)."""
    counts = Counts(*(values.get(name, 0) for name in BUCKETS))
    engaged = Engaged(*(values.get(name, 0) for name in ENGAGEMENT_COUNTERS))
    return Bucket(
        key,
        counts,
        values.get("clicks", 0),
        values.get("unique_clickers", 0),
        engaged,
        values.get("human_clicks", 0),
        values.get("unique_human_clickers", 0),
    )


def figures(b: Bucket) -> dict[str, int | float]:
    """A bucket's figures as one flat mapping, each named as its field of
    report.proto's StatsBucket (its `counts` and `rates` fields at the top):
    the status counts and totals, clicks, the engagement and funnel figures,
    and the rates, a rate whose denominator is zero left out (as the API
    leaves it unset), never 0.0. What a campaign.completed webhook carries."""
    c, e, r = b.counts, b.engaged, b.rates
    out: dict[str, int | float] = {"total": c.total, "submitted": c.submitted}
    out.update((name, getattr(c, name)) for name in BUCKETS)
    out.update(clicks=b.clicks, unique_clickers=b.unique_clickers)
    out.update(human_clicks=b.human_clicks, bot_clicks=b.bot_clicks, unique_human_clickers=b.unique_human_clickers)
    out.update((name, getattr(e, name)) for name in ENGAGEMENT_COUNTERS)
    out.update(in_flow=e.in_flow, conversations_initiated=e.conversations_initiated)
    for rate in fields(Rates):
        value = getattr(r, rate.name)
        if value is not None:
            out[rate.name] = value
    return out


@dataclass(frozen=True, slots=True)
class CampaignStats:
    campaign_id: str
    overall: Bucket
    by_channel: tuple[Bucket, ...]
    by_variant: tuple[Bucket, ...]
    first_event_at: int | None
    last_event_at: int | None
    sequence: int
    state: int = 0  # CampaignState number; 0 when not read
    complete_time: int | None = None


def stats_from_counters(
    campaign_id: str,
    rows: Iterable[tuple[str, str, int]],
    *,
    first_event_at: int | None,
    last_event_at: int | None,
    sequence: int,
) -> CampaignStats:
    """Build a campaign's stats from its counter rows (scope, name, value).
    Rows of other scopes (links) and unknown names are ignored; a channel or
    variant whose every counter is zero is left out."""
    slices: dict[str, dict[str, int]] = {}
    for scope, name, value in rows:
        if scope == "" or scope.startswith((CHANNEL_SCOPE, VARIANT_SCOPE)):
            slices.setdefault(scope, {})[name] = int(value)

    def bucket(scope: str, key: str) -> Bucket:
        return bucket_of(key, slices.get(scope, {}))

    def by(prefix: str) -> tuple[Bucket, ...]:
        found = [
            bucket(scope, scope[len(prefix) :])
            for scope, values in slices.items()
            if scope.startswith(prefix) and any(values.values())
        ]
        return tuple(sorted(found, key=lambda b: b.key))

    return CampaignStats(
        campaign_id=campaign_id,
        overall=bucket("", ""),
        by_channel=by(CHANNEL_SCOPE),
        by_variant=by(VARIANT_SCOPE),
        first_event_at=first_event_at,
        last_event_at=last_event_at,
        sequence=sequence,
    )


def reconcile(stats: CampaignStats) -> list[str]:
    """What does not add up in `stats` (empty when everything does): every
    channel's and every variant's buckets, clicks and engagement sum to the
    campaign's; in every slice each distinct-recipient figure is at most the
    slice's audience and its total (replies >= replied, button clicks >=
    button clickers, clicks >= unique clickers), and the funnel holds:
    exited <= entered, so in_flow = entered - exited >= 0."""
    problems = []
    for name, slices in (("channel", stats.by_channel), ("variant", stats.by_variant)):
        if not slices:
            continue
        summed, engaged = Counts(), Engaged()
        clicks = unique = human = unique_human = 0
        for b in slices:
            summed, engaged = summed + b.counts, engaged + b.engaged
            clicks, unique = clicks + b.clicks, unique + b.unique_clickers
            human, unique_human = human + b.human_clicks, unique_human + b.unique_human_clickers
        if summed != stats.overall.counts:
            problems.append(f"per-{name} counts {summed} != overall {stats.overall.counts}")
        if engaged != stats.overall.engaged:
            problems.append(f"per-{name} engagement {engaged} != overall {stats.overall.engaged}")
        if (clicks, unique) != (stats.overall.clicks, stats.overall.unique_clickers):
            problems.append(f"per-{name} clicks {(clicks, unique)} != overall")
        if (human, unique_human) != (stats.overall.human_clicks, stats.overall.unique_human_clickers):
            problems.append(f"per-{name} human clicks {(human, unique_human)} != overall")
    for b in (stats.overall, *stats.by_channel, *stats.by_variant):
        e, total = b.engaged, b.counts.total
        where = f"bucket {b.key!r}"
        for figure in ("read", "replied", "opted_out", "button_clickers", "entered", "goal_achieved"):
            if getattr(e, figure) > total:
                problems.append(f"{where}: {figure} {getattr(e, figure)} > total {total}")
        if e.replies < e.replied or e.button_clicks < e.button_clickers or b.clicks < b.unique_clickers:
            problems.append(f"{where}: a total is below its distinct recipients: {e}")
        if not (0 <= b.human_clicks <= b.clicks and b.unique_human_clickers <= min(b.human_clicks, b.unique_clickers)):
            problems.append(f"{where}: human clicks do not fit in the clicks: {b}")
        if e.exited > e.entered:
            problems.append(f"{where}: exited {e.exited} > entered {e.entered}")
    return problems


# -- report knobs and filters -------------------------------------------------


def page_size(value: int, *, field: str = "page_size", default: int = DEFAULT_PAGE_SIZE) -> int:
    """0 means the default; capped at MAX_PAGE_SIZE; negative is invalid."""
    if value < 0:
        raise InvalidArgument([Violation(field, "must not be negative (0 means the default)", "OUT_OF_RANGE")])
    return min(value or default, MAX_PAGE_SIZE)


def sample_size(value: int) -> int:
    if value < 0:
        raise InvalidArgument([Violation("sample_size", "must not be negative (0 means 3)", "OUT_OF_RANGE")])
    return min(value or DEFAULT_SAMPLE_SIZE, MAX_SAMPLE_SIZE)


def require_campaign_id(campaign_id: str) -> str:
    if not campaign_id:
        raise InvalidArgument([Violation("campaign_id", "is required", "REQUIRED")])
    if len(campaign_id) > 128:
        raise InvalidArgument([Violation("campaign_id", "at most 128 characters", "TOO_LONG")])
    return campaign_id


@dataclass(frozen=True, slots=True)
class MessageFilter:
    """Which messages a report includes; every set part must hold. `statuses`
    is a sorted tuple of status numbers (0, UNSPECIFIED, matches nothing)."""

    statuses: tuple[int, ...] = ()
    channel: str = ""
    variant: str = ""
    recipient: str = ""
    failure_code: str = ""
    updated_after: int | None = None
    updated_before: int | None = None
    # Engaged segments (ENGAGED_SEGMENTS): None either, True did it, False did not.
    read: bool | None = None
    replied: bool | None = None
    opted_out: bool | None = None
    clicked_link: bool | None = None
    clicked_button: bool | None = None
    reached_goal: bool | None = None

    def segments(self) -> dict[str, bool]:
        """The engaged-segment conditions that are set, by name."""
        found = {name: getattr(self, name) for name in ENGAGED_SEGMENTS}
        return {name: value for name, value in found.items() if value is not None}

    def bound(self) -> tuple[object, ...]:
        """A canonical form, what a resume token is bound to (the engaged
        segments only when one is set, so older tokens stay valid)."""
        base: tuple[object, ...] = (
            list(self.statuses),
            self.channel,
            self.variant,
            self.recipient,
            self.failure_code,
            self.updated_after,
            self.updated_before,
        )
        segments = self.segments()
        return (*base, segments) if segments else base


# The engaged-segment filters of a MessageFilter, in proto order.
ENGAGED_SEGMENTS = ("read", "replied", "opted_out", "clicked_link", "clicked_button", "reached_goal")


def message_filter(
    *,
    statuses: Iterable[int] = (),
    channel: str = "",
    variant: str = "",
    recipient: str = "",
    failure_code: str = "",
    updated_after: int | None = None,
    updated_before: int | None = None,
    segments: dict[str, bool] | None = None,
    prefix: str = "filter",
) -> MessageFilter:
    """A checked MessageFilter; InvalidArgument names every bad part.
    `segments` holds the engaged-segment conditions by name (ENGAGED_SEGMENTS)."""
    violations: list[Violation] = []
    known = {0} | {int(s) for s in Status}
    sent = list(statuses)
    wanted = sorted(set(sent))
    for i, s in enumerate(sent):  # the index as sent, as every field path has it
        if s not in known:
            violations.append(Violation(f"{prefix}.statuses[{i}]", f"unknown status {s}", "UNKNOWN_VALUE"))
    for name, value in (
        ("channel", channel),
        ("variant", variant),
        ("recipient", recipient),
        ("failure_code", failure_code),
    ):
        wrong = filter_text(f"{prefix}.{name}", value, name)
        if wrong is not None:
            violations.append(wrong)
    if updated_after is not None and updated_before is not None and updated_before <= updated_after:
        violations.append(Violation(f"{prefix}.updated_before", "must be after updated_after", "EMPTY_RANGE"))
    if violations:
        raise InvalidArgument(violations)
    return MessageFilter(
        tuple(wanted), channel, variant, recipient, failure_code, updated_after, updated_before, **(segments or {})
    )


# A click filter's class (report.proto ClickClass): every click, human, bot.
CLICK_CLASSES = (0, 1, 2)
CLICK_CLASS_HUMAN = 1
CLICK_CLASS_BOT = 2


@dataclass(frozen=True, slots=True)
class ClickFilter:
    link_id: str = ""
    country_code: str = ""
    occurred_after: int | None = None
    occurred_before: int | None = None
    click_class: int = 0  # CLICK_CLASSES; 0: every click

    def bound(self) -> tuple[object, ...]:
        """A canonical form (the class only when set, so older tokens stay valid)."""
        base = (self.link_id, self.country_code, self.occurred_after, self.occurred_before)
        return (*base, self.click_class) if self.click_class else base


def click_filter(
    *,
    link_id: str = "",
    country_code: str = "",
    occurred_after: int | None = None,
    occurred_before: int | None = None,
    click_class: int = 0,
    prefix: str = "filter",
) -> ClickFilter:
    violations: list[Violation] = []
    if click_class not in CLICK_CLASSES:
        violations.append(Violation(f"{prefix}.click_class", f"unknown class {click_class}", "UNKNOWN_VALUE"))
    wrong = filter_text(f"{prefix}.link_id", link_id, "link_id")
    if wrong is not None:
        violations.append(wrong)
    if country_code and not (len(country_code) == 2 and country_code.isascii() and country_code.isalpha()):
        violations.append(Violation(f"{prefix}.country_code", "an ISO 3166-1 alpha-2 code, e.g. BR", "INVALID"))
    if occurred_after is not None and occurred_before is not None and occurred_before <= occurred_after:
        violations.append(Violation(f"{prefix}.occurred_before", "must be after occurred_after", "EMPTY_RANGE"))
    if violations:
        raise InvalidArgument(violations)
    return ClickFilter(link_id, country_code.upper(), occurred_after, occurred_before, click_class)


# -- failure reasons -----------------------------------------------------------


@dataclass(slots=True)
class ReasonRow:
    code: str
    message: str
    failed: int
    not_submitted: int
    samples: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return self.failed + self.not_submitted


def reason_order(row: ReasonRow) -> tuple[int, str, str]:
    """Most frequent first, ties by code then message."""
    return (-row.count, row.code, row.message)


# -- timeline ------------------------------------------------------------------

MINUTE_US = 60_000_000
HOUR_US = 60 * MINUTE_US
DAY_US = 24 * HOUR_US
MAX_TIMELINE_BUCKETS = 100_000


def bucket_start(us: int, width_us: int) -> int:
    """The UTC start of the bucket holding `us` (epoch-aligned, so days start at
    UTC midnight)."""
    return us - us % width_us
