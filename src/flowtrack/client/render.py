"""Rich renderings of what the server answers: campaigns, stats, report rows,
failure reasons, clicks and events. Pure functions from protos to renderables
(or JSON lines); printing is the caller's.

Long listings are printed a page at a time by `PagedTable`: every page is its
own table with the same fixed column widths, the header on the first page
only, so the output reads as one table and memory holds one page.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message
from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Column, Table
from rich.text import Text

from flowtrack.v1 import campaign_pb2, common_pb2, ingest_pb2, report_pb2

# -- consoles -----------------------------------------------------------------------


def console(stderr: bool = False) -> Console:
    """A console for stdout (or stderr). Piped output gets a wide fixed width
    (unless COLUMNS says otherwise) so tables in files are not squeezed to 80."""
    found = Console(stderr=stderr)
    if not found.is_terminal and "COLUMNS" not in os.environ:
        return Console(stderr=stderr, width=200)
    return found


# -- values -------------------------------------------------------------------------

STATUS_NAMES: dict[int, str] = {
    value: name.removeprefix("MESSAGE_STATUS_").lower()
    for name, value in common_pb2.MessageStatus.items()
    if value != common_pb2.MESSAGE_STATUS_UNSPECIFIED
}
STATUS_BY_NAME = {name: value for value, name in STATUS_NAMES.items()}
STATUS_STYLES = {
    "pending": "dim",
    "not_submitted": "magenta",
    "submitted": "cyan",
    "delivery_not_confirmed": "yellow",
    "failed": "red",
    "success": "green",
}
STATE_NAMES: dict[int, str] = {
    value: name.removeprefix("CAMPAIGN_STATE_").lower()
    for name, value in campaign_pb2.CampaignState.items()
    if value != campaign_pb2.CAMPAIGN_STATE_UNSPECIFIED
}
STATE_BY_NAME = {name: value for value, name in STATE_NAMES.items()}


def when(message: Message, field: str) -> str:
    """A Timestamp field as 'YYYY-MM-DD HH:MM:SS' UTC, or '' when unset."""
    if not message.HasField(field):
        return ""
    ts: timestamp_pb2.Timestamp = getattr(message, field)
    return timestamp(ts)


def timestamp(ts: timestamp_pb2.Timestamp) -> str:
    moment = datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def status_text(status: int) -> Text:
    name = STATUS_NAMES.get(status, str(status))
    return Text(name, style=STATUS_STYLES.get(name, ""))


def percent(message: Message, field: str) -> str:
    """An optional rate as a percentage, '-' when absent (zero denominator)."""
    if not message.HasField(field):
        return "-"
    value: float = getattr(message, field)
    return f"{value * 100:.1f}%"


def count(value: int) -> str:
    return f"{value:,}"


def mapping(values: Any) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(values.items()))


def json_data(message: Message) -> dict[str, Any]:
    """A proto as the canonical proto3 JSON mapping: lowerCamelCase names
    (`campaignId`, `failureReason`), enums by name, 64-bit integers as
    strings, times in RFC 3339, fields at their default (zero, empty) left
    out. Every `--json` of the CLI prints this."""
    return json_format.MessageToDict(message)


def json_line(message: Message) -> str:
    """A proto as one line of its canonical proto3 JSON (json_data)."""
    return json.dumps(json_data(message), separators=(",", ":"), ensure_ascii=False)


def json_object_line(key: str, message: Message) -> str:
    """A proto as one JSON line under one key, {"key": {...}}, for streams that mix kinds."""
    return json.dumps({key: json_data(message)}, separators=(",", ":"), ensure_ascii=False)


# -- paged tables -------------------------------------------------------------------


@dataclass(frozen=True)
class Col:
    """A column: its header, its width, and how narrow it may get on a
    narrow console (`least`; None: never narrower, as times and counts)."""

    header: str
    width: int
    justify: str = "left"
    least: int | None = None


def fit_widths(columns: Sequence[Col], console_width: int) -> list[int]:
    """Column widths that fit `console_width` (two spaces between columns):
    the columns that may shrink give way in proportion to how much each
    may, never below its `least`; the others keep their width."""
    widths = [c.width for c in columns]
    excess = sum(widths) + 2 * (len(columns) - 1) - console_width
    room = [c.width - c.least if c.least is not None else 0 for c in columns]
    if excess <= 0 or not any(room):
        return widths
    excess = min(excess, sum(room))
    cuts = [excess * r // sum(room) for r in room]
    # What the rounding left, one column at a time, the roomiest first.
    for i in sorted(range(len(columns)), key=lambda i: room[i] - cuts[i], reverse=True):
        if sum(cuts) >= excess:
            break
        if cuts[i] < room[i]:
            cuts[i] += 1
    return [w - cut for w, cut in zip(widths, cuts, strict=True)]


class PagedTable:
    """Prints rows a page at a time under one header, with fixed widths. On
    a console too narrow for every column at its width, the columns that may
    shrink (Col.least) do, and their cells wrap; times and counts keep theirs."""

    def __init__(self, out: Console, columns: Sequence[Col], cells: Callable[[Any], Sequence[RenderableType]]) -> None:
        self.out = out
        self.columns = columns
        self.cells = cells
        self.rows = 0
        self.widths = fit_widths(columns, out.width)

    def page(self, rows: Sequence[Any]) -> None:
        if not rows and self.rows:
            return
        table = Table(
            *[
                Column(
                    c.header,
                    width=width,
                    no_wrap=width == c.width,
                    overflow="ellipsis" if width == c.width else "fold",
                    justify=c.justify,  # type: ignore[arg-type]
                )
                for c, width in zip(self.columns, self.widths, strict=True)
            ],
            box=None,
            show_header=self.rows == 0,
            header_style="bold underline",
            pad_edge=False,
        )
        for row in rows:
            table.add_row(*self.cells(row))
        self.rows += len(rows)
        self.out.print(table)


# -- campaigns ----------------------------------------------------------------------

CAMPAIGN_COLUMNS = [
    Col("id", 24),
    Col("name", 28),
    Col("state", 10),
    Col("channels", 22),
    Col("recipients", 10, "right"),
    Col("created (UTC)", 19),
    Col("labels", 30),
]


def campaign_cells(c: campaign_pb2.Campaign) -> list[RenderableType]:
    return [
        c.id,
        c.name,
        STATE_NAMES.get(c.state, str(c.state)),
        ",".join(c.channels),
        count(c.recipient_count),
        when(c, "create_time"),
        mapping(c.labels),
    ]


def campaign_detail(c: campaign_pb2.Campaign) -> Table:
    table = Table(box=box.SIMPLE, show_header=False, title=f"campaign {c.id}", title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    fields: list[tuple[str, str]] = [
        ("id", c.id),
        ("name", c.name),
        ("flow id", c.flow_id),
        ("state", STATE_NAMES.get(c.state, str(c.state))),
        ("channels", ", ".join(c.channels)),
        ("labels", mapping(c.labels)),
        ("recipients", count(c.recipient_count)),
        ("implicit", "yes (created by its first event)" if c.implicit else "no"),
        ("created", when(c, "create_time")),
        ("scheduled", when(c, "schedule_time")),
        ("started", when(c, "start_time")),
        ("completed", when(c, "complete_time")),
        ("updated", when(c, "update_time")),
    ]
    if c.HasField("source"):
        fields.append(("source", f"segment {c.source.segment} of campaign {c.source.campaign_id}"))
    for name, value in fields:
        table.add_row(name, value)
    return table


# -- stats --------------------------------------------------------------------------

_COUNT_ROWS = [
    ("total", "total"),
    ("pending", "pending"),
    ("not submitted", "not_submitted"),
    ("submitted", "submitted"),
    ("  awaiting", "awaiting"),
    ("  delivery not confirmed", "delivery_not_confirmed"),
    ("  success", "success"),
    ("  failed", "failed"),
]
_RATE_ROWS = [
    ("success rate", "success_rate"),
    ("failure rate", "failure_rate"),
    ("delivery-not-confirmed rate", "delivery_not_confirmed_rate"),
    ("not-submitted rate", "not_submitted_rate"),
    ("click-through rate", "click_through_rate"),
    ("read rate", "read_rate"),
    ("reply rate", "reply_rate"),
    ("link click rate", "link_click_rate"),
    ("button click rate", "button_click_rate"),
    ("opt-out rate", "opt_out_rate"),
    ("goal rate (of entered)", "goal_rate"),
]
# Engagement: recipients, but for the totals replies and button clicks.
_ENGAGEMENT_ROWS = [
    ("read", "read"),
    ("replied", "replied"),
    ("  replies", "replies"),
    ("opted out", "opted_out"),
    ("button clickers", "button_clickers"),
    ("  button clicks", "button_clicks"),
]
# The flow funnel.
_FUNNEL_ROWS = [
    ("entered flow", "entered"),
    ("  in flow", "in_flow"),
    ("  exited", "exited"),
    ("goal achieved", "goal_achieved"),
    ("conversations initiated", "conversations_initiated"),
]


def stats_json(stats: report_pb2.CampaignStats) -> str:
    """The stats as one line of the canonical proto3 JSON (lowerCamelCase
    names: `optedOut`, `inFlow`, `goalAchieved`; zeros left out)."""
    return json_line(stats)


def stats_view(stats: report_pb2.CampaignStats, width: int | None = None) -> RenderableType:
    """Every bucket of the campaign, then rates, clicks, engagement and the
    flow funnel; columns: the whole campaign, each channel, each A/B variant,
    side by side. On a console `width` columns wide, labels are shortened
    before numbers."""
    buckets: list[tuple[str, report_pb2.StatsBucket]] = [("all", stats.overall)]
    buckets += [(f"{b.key or '(none)'}\n[dim]chan[/dim]", b) for b in stats.by_channel]
    buckets += [(f"{b.key or '(none)'}\n[dim]var[/dim]", b) for b in stats.by_variant]
    table = Table(
        title=f"campaign [bold]{stats.campaign_id}[/bold] · sequence {stats.sequence}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    rows: list[tuple[Text, list[str]]] = []
    for label, field in _COUNT_ROWS:
        style = STATUS_STYLES.get(field, "bold" if field in ("total", "submitted") else "")
        rows.append((Text(label, style=style), [count(getattr(b.counts, field)) for _, b in buckets]))
    for label, field in _RATE_ROWS:
        rows.append((Text(label), [percent(b.rates, field) for _, b in buckets]))
    rows.append((Text("clicks"), [count(b.clicks) for _, b in buckets]))
    rows.append((Text("unique clickers"), [count(b.unique_clickers) for _, b in buckets]))
    rows.append((Text("human clicks"), [count(b.human_clicks) for _, b in buckets]))
    rows.append((Text("bot clicks"), [count(b.bot_clicks) for _, b in buckets]))
    rows.append((Text("unique human clickers"), [count(b.unique_human_clickers) for _, b in buckets]))
    for label, field in _ENGAGEMENT_ROWS + _FUNNEL_ROWS:
        rows.append((Text(label), [count(getattr(b, field)) for _, b in buckets]))
    # Numbers never shrink: on a narrow terminal the labels give way first.
    widths = [
        max(
            max(len(cells[i]) for _, cells in rows), *(len(line) for line in Text.from_markup(header).plain.split("\n"))
        )
        for i, (header, _) in enumerate(buckets)
    ]
    label_width = max(len(text.plain) for text, _ in rows)
    if width is not None:
        # Each column costs its width, a space of padding either side and a separator.
        label_width = max(8, min(label_width, width - sum(w + 3 for w in widths) - 5))
    table.add_column("", no_wrap=True, overflow="ellipsis", width=label_width)
    for (header, _), w in zip(buckets, widths, strict=True):
        table.add_column(header, justify="right", no_wrap=True, min_width=w)
    clicks_end = len(_COUNT_ROWS) + len(_RATE_ROWS) + 2
    sections = {len(_COUNT_ROWS), clicks_end - 2, clicks_end, clicks_end + len(_ENGAGEMENT_ROWS)}
    for index, (text, cells) in enumerate(rows):
        if index in sections:
            table.add_section()
        table.add_row(text, *cells)
    first, last = when(stats, "first_event_time"), when(stats, "last_event_time")
    span = f"events from {first} to {last} UTC" if first else "no events yet"
    return Group(table, Text(span, style="dim"))


# -- message report -----------------------------------------------------------------

# On a narrow console the text columns wrap (down to `least`); the times never shrink.
REPORT_COLUMNS = [
    Col("recipient", 26, least=16),
    Col("status", 22, least=10),
    Col("att", 3, "right"),
    Col("channel", 9, least=5),
    Col("var", 4, least=3),
    Col("failure", 20, least=8),
    Col("submitted (UTC)", 19),
    Col("outcome (UTC)", 19),
    Col("clicks", 6, "right"),
    Col("read (UTC)", 19),
    Col("engaged", 28, least=8),
]


def engaged_summary(row: report_pb2.MessageRow) -> str:
    """What the recipient did besides reading, in a few words."""
    parts = []
    if row.replies:
        parts.append(f"{row.replies} repl{'y' if row.replies == 1 else 'ies'}")
    if row.button_clicks:
        parts.append(f"{row.button_clicks} tap{'' if row.button_clicks == 1 else 's'}")
    if row.HasField("opted_out_time"):
        parts.append("opted out")
    if row.HasField("goal_time"):
        parts.append("goal")
    elif row.HasField("exited_time"):
        parts.append("exited")
    return ", ".join(parts)


def report_cells(row: report_pb2.MessageRow) -> list[RenderableType]:
    outcome = when(row, "success_time") or when(row, "failed_time") or when(row, "delivery_not_confirmed_time")
    if row.status == common_pb2.MESSAGE_STATUS_NOT_SUBMITTED:
        outcome = when(row, "not_submitted_time")
    return [
        row.recipient,
        status_text(row.status),
        str(row.attempt) if row.attempt else "",
        row.channel,
        row.variant,
        row.failure_reason.code,
        when(row, "submitted_time"),
        outcome,
        count(row.clicks) if row.clicks else "",
        when(row, "read_time"),
        engaged_summary(row),
    ]


# -- replies ------------------------------------------------------------------------

REPLY_COLUMNS = [
    Col("replied (UTC)", 19),
    Col("recipient", 26),
    Col("text", 60),
]


def reply_cells(row: report_pb2.ReplyRow) -> list[RenderableType]:
    # The text is the recipient's: shown as plain text (no markup), on one line.
    return [when(row, "occurred_at"), row.recipient, Text(" ".join(row.text.split()))]


# -- failure reasons ----------------------------------------------------------------

FAILURE_COLUMNS = [
    Col("code", 22, least=12),
    Col("message", 48, least=16),
    Col("count", 8, "right"),
    Col("failed", 8, "right"),
    Col("not sub.", 8, "right"),
    Col("% failed", 8, "right"),
    Col("% not sub.", 10, "right"),
    Col("sample recipients", 40, least=16),
]


def failure_cells(row: report_pb2.FailureReasonRow) -> list[RenderableType]:
    return [
        row.code,
        row.message,
        count(row.count),
        count(row.failed),
        count(row.not_submitted),
        percent(row, "share_of_failed"),
        percent(row, "share_of_not_submitted"),
        ", ".join(row.sample_recipients),
    ]


# -- clicks -------------------------------------------------------------------------

CLICK_COLUMNS = [
    Col("seq", 8, "right"),
    Col("recipient", 26, least=16),
    Col("link", 10, least=6),
    Col("variable", 16, least=8),
    Col("country", 7),
    Col("region", 18, least=8),
    Col("city", 16, least=8),
    Col("clicked (UTC)", 19),
    Col("class", 24, least=5),
    Col("url", 40, least=12),
]

_BOT_REASONS = {
    report_pb2.BOT_REASON_CRAWLER_USER_AGENT: "crawler user agent",
    report_pb2.BOT_REASON_NO_USER_AGENT: "no user agent",
    report_pb2.BOT_REASON_TOO_SOON: "too soon",
}


def click_cells(row: report_pb2.ClickRow) -> list[RenderableType]:
    loc = row.location
    return [
        str(row.sequence),
        row.recipient,
        row.link_id,
        row.link_variable,
        loc.country_code,
        loc.region,
        loc.city,
        when(row, "occurred_at"),
        "human" if row.click_class == report_pb2.CLICK_CLASS_HUMAN else f"bot: {_BOT_REASONS.get(row.bot_reason, '')}",
        row.url,
    ]


def breakdown_view(breakdown: report_pb2.GetClickBreakdownResponse) -> RenderableType:
    """Clicks per country and per link, beside the totals."""
    by_country = Table(title="clicks by country", title_justify="left", box=box.SIMPLE_HEAD)
    for header in ("country", "clicks", "unique", "share"):
        by_country.add_column(header, justify="left" if header == "country" else "right")
    for b in breakdown.by_country:
        share = f"{b.clicks / breakdown.clicks * 100:.1f}%" if breakdown.clicks else "-"
        by_country.add_row(b.country_code or "(unknown)", count(b.clicks), count(b.unique_clickers), share)
    by_link = Table(title="clicks by link", title_justify="left", box=box.SIMPLE_HEAD)
    for header in ("link", "clicks", "unique", "human", "bot", "unique human"):
        by_link.add_column(header, justify="left" if header == "link" else "right")
    for b in breakdown.by_link:
        by_link.add_row(
            b.link_id,
            count(b.clicks),
            count(b.unique_clickers),
            count(b.human_clicks),
            count(b.bot_clicks),
            count(b.unique_human_clickers),
        )
    total = Text(
        f"{count(breakdown.clicks)} clicks by {count(breakdown.unique_clickers)} recipients"
        f" ({count(breakdown.human_clicks)} human by {count(breakdown.unique_human_clickers)},"
        f" {count(breakdown.bot_clicks)} bot)"
        f" · sequence {breakdown.sequence}",
        style="bold",
    )
    return Group(total, by_country, by_link)


# -- events -------------------------------------------------------------------------


def event_line(stored: report_pb2.StoredEvent) -> Text:
    """One stored event on one line: sequence, time, campaign, recipient, what."""
    event = stored.event
    line = Text()
    line.append(f"{stored.sequence:>8} ", style="dim")
    if event.HasField("status"):
        s: ingest_pb2.StatusEvent = event.status
        line.append(f"{when(s, 'occurred_at')}  {s.campaign_id}  {s.recipient}  ")
        line.append_text(status_text(s.status))
        if s.attempt > 1:
            line.append(f" attempt {s.attempt}")
        if s.channel:
            line.append(f" via {s.channel}")
        if s.variant:
            line.append(f" variant {s.variant}")
        if s.failure_reason.code:
            line.append(f"  {s.failure_reason.code}: {s.failure_reason.message}", style="red")
    elif event.HasField("click"):
        c: ingest_pb2.ClickEvent = event.click
        line.append(f"{when(c, 'occurred_at')}  {c.campaign_id}  {c.recipient}  ")
        line.append("click", style="bold blue")
        line.append(f" {c.link_id}")
        place = ", ".join(p for p in (c.location.city, c.location.region, c.location.country_code) if p)
        if place:
            line.append(f" from {place}")
    elif event.HasField("engagement"):
        g: ingest_pb2.EngagementEvent = event.engagement
        line.append(f"{when(g, 'occurred_at')}  {g.campaign_id}  {g.recipient}  ")
        kind = ingest_pb2.EngagementKind.Name(g.kind).removeprefix("ENGAGEMENT_KIND_").lower()
        line.append(kind, style="bold magenta")
        detail = {
            ingest_pb2.ENGAGEMENT_KIND_REPLIED: repr(g.text)
            if g.text
            else ("(text discarded)" if g.discard_text else ""),
            ingest_pb2.ENGAGEMENT_KIND_BUTTON_CLICKED: f"{g.button_id} {g.button_name!r}"
            if g.button_name
            else g.button_id,
            ingest_pb2.ENGAGEMENT_KIND_EXITED_FLOW: g.exit_reason,
            ingest_pb2.ENGAGEMENT_KIND_GOAL_ACHIEVED: g.goal_id,
        }.get(g.kind, "")
        if detail:
            line.append(f" {detail}")
    return line
