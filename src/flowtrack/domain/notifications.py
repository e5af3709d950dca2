"""Notifications for people: an event of the outbox (a Standard Webhooks
body) told as a Slack message or an email.

`notice(body, page_url)` reads the event once into a `Notice`: a title, the
headline numbers (label, value) and one link (report.completed: the signed
download link of the report; campaign.completed and campaign.failure_rate:
the campaign's page, when the server has an HTTP address). `slack_body`
and `email_message` render it. Pure functions of the stored body: a retry
or a redelivery renders the same message again.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any
from urllib.parse import quote

from flowtrack.domain import webhooks as rules

SLACK_FIELDS = 10  # Slack's most fields in one section block
_TEXT_CHARS = 150  # of a name in a title
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass(frozen=True, slots=True)
class Notice:
    event_type: str
    title: str
    facts: tuple[tuple[str, str], ...]  # the headline numbers, (label, value)
    link: str  # "" when there is none to give
    link_text: str
    note: str = ""  # one more line (when the link expires)


def _plain(value: object, limit: int = _TEXT_CHARS) -> str:
    """One line of text: control characters (a header's end) as spaces, cut at `limit`."""
    text = _CONTROL.sub(" ", str(value)).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _count(value: object) -> str:
    return f"{int(value):,}" if isinstance(value, int | float) else "—"  # type: ignore[arg-type]


def _rate(value: object) -> str:
    """A fraction as a percentage; '—' when the rate is absent (its denominator was zero)."""
    return f"{float(value) * 100:.1f}%" if isinstance(value, int | float) else "—"  # type: ignore[arg-type]


def _with_rate(count: object, rate: object) -> str:
    return f"{_count(count)} ({_rate(rate)})" if isinstance(rate, int | float) else _count(count)


def _size(value: object) -> str:
    if not isinstance(value, int):
        return "—"
    size = float(value)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{value:,} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value:,} bytes"


def campaign_page(page_url: str, campaign_id: str) -> str:
    """The campaign's page on the HTTP listener, or "" without one."""
    return f"{page_url.rstrip('/')}/campaigns/{quote(campaign_id, safe='')}" if page_url and campaign_id else ""


def notice(body: str, page_url: str = "") -> Notice:
    """The event of a Standard Webhooks body (domain/webhooks.body) as a Notice."""
    event: dict[str, Any] = json.loads(body)
    kind = str(event.get("type", ""))
    data: dict[str, Any] = event.get("data") or {}
    campaign_id = str(data.get("campaign_id", ""))
    page = campaign_page(page_url, campaign_id)
    if kind == rules.REPORT_COMPLETED:
        report_kind = str(data.get("kind", "")).removeprefix("EXPORT_KIND_").replace("_", " ").lower()
        file_format = str(data.get("format", "")).removeprefix("EXPORT_FORMAT_")
        facts: tuple[tuple[str, str], ...] = (
            ("Campaign", _plain(campaign_id)),
            ("Report", f"{report_kind} ({file_format})"),
            ("Rows", _count(data.get("rows"))),
            ("Size", _size(data.get("bytes"))),
            ("File", _plain(data.get("file_name", ""))),
        )
        expires = str(data.get("expires_at", ""))
        return Notice(
            kind,
            f"Report ready: {report_kind} of campaign {_plain(campaign_id)}",
            facts,
            str(data.get("url", "")),
            f"Download {_plain(data.get('file_name', '') or 'the report')}",
            f"The link works without signing in until {expires}." if expires else "",
        )
    if kind == rules.CAMPAIGN_COMPLETED:
        s: dict[str, Any] = data.get("stats") or {}
        facts = (
            ("Recipients", _count(s.get("total"))),
            ("Submitted", _count(s.get("submitted"))),
            ("Delivered", _with_rate(s.get("success"), s.get("success_rate"))),
            ("Failed", _with_rate(s.get("failed"), s.get("failure_rate"))),
            ("Read", _with_rate(s.get("read"), s.get("read_rate"))),
            ("Replied", _with_rate(s.get("replied"), s.get("reply_rate"))),
            ("Clicked a link", _with_rate(s.get("unique_clickers"), s.get("link_click_rate"))),
            ("Reached the goal", _with_rate(s.get("goal_achieved"), s.get("goal_rate"))),
            ("Completed", _plain(f"{data.get('complete_time', '')} ({data.get('reason', '')})")),
        )
        name = _plain(data.get("name") or campaign_id)
        note = "Delivered, failed, read, replied and clicked: rates over submitted messages; the goal's over entered."
        return Notice(kind, f"Campaign completed: {name}", facts, page, "Open the campaign page", note)
    if kind == rules.CAMPAIGN_FAILURE_RATE:
        facts = (
            ("Failure rate", _rate(data.get("failure_rate"))),
            ("Limit", _rate(data.get("limit"))),
            ("Failed", _count(data.get("failed"))),
            ("Submitted", _count(data.get("submitted"))),
        )
        title = f"Failure rate above {_rate(data.get('limit'))}: campaign {_plain(campaign_id)}"
        return Notice(kind, title, facts, page, "Open the campaign page")
    facts = tuple((_plain(k), _plain(v)) for k, v in sorted(data.items()) if not isinstance(v, dict | list))
    return Notice(kind, _plain(kind or "event"), facts[:SLACK_FIELDS], "", "")


# -- Slack ---------------------------------------------------------------------------------
def _mrkdwn(text: str) -> str:
    """Text escaped for Slack's mrkdwn: &, < and > as entities (no link, mention or markup)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_link(url: str, text: str) -> str:
    """Slack's `<url|text>`: the URL's &, < and > as entities, as Slack writes them
    (Slack reads them back), and no '|' in the text."""
    return f"<{_mrkdwn(url)}|{_mrkdwn(text.replace('|', '/'))}>"


def slack_body(n: Notice) -> str:
    """The JSON a Slack-compatible incoming webhook renders: `text` (the
    notification's words) and `blocks` (a title, the headline numbers as
    section fields, the link)."""
    link = slack_link(n.link, n.link_text) if n.link else ""
    text = _mrkdwn(n.title) + (f": {link}" if link else "")
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": f"*{_mrkdwn(n.title)}*"}}]
    if n.facts:
        fields = [
            {"type": "mrkdwn", "text": f"*{_mrkdwn(label)}*\n{_mrkdwn(value)}"}
            for label, value in n.facts[:SLACK_FIELDS]
        ]
        blocks.append({"type": "section", "fields": fields})
    if link:
        line = link + (f"\n{_mrkdwn(n.note)}" if n.note else "")
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": line}})
    return json.dumps({"text": text, "blocks": blocks}, separators=(",", ":"), ensure_ascii=False)


# -- email ---------------------------------------------------------------------------------
def email_text(n: Notice) -> str:
    width = max((len(label) for label, _ in n.facts), default=0)
    lines = [n.title, "", *(f"{label + ':':<{width + 1}} {value}" for label, value in n.facts)]
    if n.link:
        lines += ["", f"{n.link_text}:", n.link]
    if n.note:
        lines += ["", n.note]
    lines += ["", "-- ", f"flowtrack, event {n.event_type}"]
    return "\n".join(lines) + "\n"


def email_html(n: Notice) -> str:
    e = html.escape
    rows = "".join(
        f'<tr><th align="left" style="padding:2px 12px 2px 0">{e(label)}</th><td>{e(value)}</td></tr>'
        for label, value in n.facts
    )
    link = f'<p><a href="{e(n.link, quote=True)}">{e(n.link_text)}</a></p>' if n.link else ""
    note = f'<p style="color:#555">{e(n.note)}</p>' if n.note else ""
    return (
        '<!DOCTYPE html><html><body style="font-family:sans-serif">'
        f"<h2>{e(n.title)}</h2><table>{rows}</table>{link}{note}"
        f'<p style="color:#888">flowtrack, event {e(n.event_type)}</p></body></html>\n'
    )


def email_message(
    n: Notice, *, message_id: str, sender: str, recipients: tuple[str, ...], date: datetime
) -> EmailMessage:
    """A multipart/alternative email: the plain-text body and the HTML one.
    Its Message-ID is the delivery's id (the same on every retry, as
    webhook-id is), so a mail client shows a redelivery as the same message."""
    message = EmailMessage()
    message["Subject"] = _plain(n.title, 200)
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = format_datetime(date)
    domain = sender.rpartition("@")[2].strip("> ") or "flowtrack.invalid"
    message["Message-ID"] = f"<{message_id}@{domain}>"
    message["X-Flowtrack-Event"] = n.event_type
    message.set_content(email_text(n))
    message.add_alternative(email_html(n), subtype="html")
    return message
