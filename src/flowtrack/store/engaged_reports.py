"""The report side of engagement (reads, replies, taps, opt-outs, the funnel): what the message report, its
export and the Replies tab read besides store/reports.py.

- The message report joins each message to its `engagement` row (0006,
  `MESSAGES_JOINED`): the engagement fields of domain.records.MessageRecord
  come from it, NULL when the recipient has no engagement, and
  `segment_conditions` turns a filter's engaged segments into SQL conditions
  on that join.
- `link_clicks` / `button_taps`: the clicks and taps of a page's recipients
  (one query per page over a (business_id, cid, recipient) index, at most `cap` each).
- `replies_sql`: the campaign's replies in sequence order (the `replies`
  table), as domain.records.ReplyRecord rows, for StreamReplies.

Every function runs inside a stream's Snapshot, so it reads at the stream's
sequence. No value is ever interpolated into SQL: only fixed fragments.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Join, and_, bindparam, func, not_, select
from sqlalchemy.sql.elements import ClauseElement, ColumnElement

from flowtrack.domain.ingest import KIND_CLICK
from flowtrack.domain.records import ButtonTap, LinkClick, ReplyRecord
from flowtrack.store import sql
from flowtrack.store.schema import button_clicks, engagement, events, messages, replies

__all__ = ["ButtonTap", "LinkClick", "button_taps", "link_clicks", "messages", "replies_sql", "segment_conditions"]

_SHAPES = 256


def messages_joined() -> Join:
    """The join of the message report: every message, with its engagement if any."""
    return messages.outerjoin(
        engagement,
        and_(
            engagement.c.business_id == messages.c.business_id,
            engagement.c.cid == messages.c.cid,
            engagement.c.recipient == messages.c.recipient,
        ),
    )


def message_columns(fields: Iterable[str]) -> list[ColumnElement[Any]]:
    """The column of each field on the join: the message's own, else its
    engagement's (the names are unique across the two tables but for the key)."""
    return [messages.c[name] if name in messages.c else engagement.c[name] for name in fields]


# What "did it" means per engaged segment, on the joined row.
_DID: dict[str, ColumnElement[bool]] = {
    "read": engagement.c.read_at.is_not(None),
    "replied": engagement.c.replied_at.is_not(None),
    "opted_out": engagement.c.opted_out_at.is_not(None),
    "clicked_link": messages.c.clicks > 0,
    "clicked_button": func.coalesce(engagement.c.button_clicks, 0) > 0,
    "reached_goal": engagement.c.goal_at.is_not(None),
}


def segment_conditions(segments: Iterable[tuple[str, bool]]) -> list[ColumnElement[bool]]:
    """Conditions (on `messages_joined`) for a filter's engaged segments
    ((name, did) pairs: MessageFilter.segments().items())."""
    return [_DID[name] if did else not_(_DID[name]) for name, did in segments]


def _first_per_recipient(source: Any, columns: list[Any], tie: Any, where: list[Any]) -> Any:
    """A page's recipients' rows of `source`: (recipient, *columns) of the
    earliest `cap` of each (by occurred_at, then `tie`), in recipient order,
    then that order. One window per recipient: a recipient with a million
    clicks costs `cap` rows, not a million. `columns` end with occurred_at."""
    ranked = (
        select(
            source.c.recipient,
            *columns,
            tie,
            func.row_number().over(partition_by=source.c.recipient, order_by=(source.c.occurred_at, tie)).label("n"),
        )
        .where(
            source.c.business_id == bindparam("business_id"),
            source.c.cid == bindparam("cid"),
            source.c.recipient.in_(bindparam("recipients", expanding=True)),
            *where,
        )
        .subquery("w")
    )
    return (
        select(ranked.c.recipient, *(ranked.c[c.name] for c in columns))
        .where(ranked.c.n <= bindparam("cap"))
        .order_by(ranked.c.recipient, ranked.c.occurred_at, ranked.c[tie.name])
    )


_LINK_CLICKS = _first_per_recipient(
    events,
    [
        events.c.link_id,
        func.coalesce(events.c.link_variable, "").label("link_variable"),
        func.coalesce(events.c.url, "").label("url"),
        events.c.occurred_at,
    ],
    events.c.id,
    [events.c.kind == KIND_CLICK],
)
_BUTTON_TAPS = _first_per_recipient(
    button_clicks,
    [button_clicks.c.button_id, button_clicks.c.button_name, button_clicks.c.occurred_at],
    button_clicks.c.seq,
    [],
)


def link_clicks(
    conn: Any, business_id: str, cid: int, recipients: Sequence[str], cap: int
) -> dict[str, list[LinkClick]]:
    """The link clicks of each of `recipients` (the earliest `cap`), in click
    time order (then arrival)."""
    found: dict[str, list[LinkClick]] = {}
    if not recipients:
        return found
    values = {"business_id": business_id, "cid": cid, "recipients": list(recipients), "cap": cap}
    for recipient, link, variable, url, at in sql.run(conn, _LINK_CLICKS, values):
        found.setdefault(recipient, []).append(LinkClick(link, variable, url, at))
    return found


def button_taps(
    conn: Any, business_id: str, cid: int, recipients: Sequence[str], cap: int
) -> dict[str, list[ButtonTap]]:
    """The button taps of each of `recipients` (the earliest `cap`), in tap
    time order (then sequence)."""
    found: dict[str, list[ButtonTap]] = {}
    if not recipients:
        return found
    values = {"business_id": business_id, "cid": cid, "recipients": list(recipients), "cap": cap}
    for recipient, button_id, name, at in sql.run(conn, _BUTTON_TAPS, values):
        found.setdefault(recipient, []).append(ButtonTap(button_id, name, at))
    return found


@functools.lru_cache(maxsize=_SHAPES)
def _replies(recipient: bool, after: bool, before: bool) -> ClauseElement:
    where = [
        replies.c.business_id == bindparam("business_id"),
        replies.c.cid == bindparam("cid"),
        replies.c.seq > bindparam("after"),
    ]
    if recipient:
        where.append(replies.c.recipient == bindparam("recipient"))
    if after:
        where.append(replies.c.occurred_at >= bindparam("oa"))
    if before:
        where.append(replies.c.occurred_at < bindparam("ob"))
    return select(*(replies.c[name] for name in ReplyRecord._fields)).where(*where).order_by(replies.c.seq)


def replies_sql(
    business_id: str, cid: int, recipient: str, occurred_after: int | None, occurred_before: int | None, after_seq: int
) -> tuple[ClauseElement, dict[str, Any]]:
    """The campaign's replies after sequence `after_seq`, in sequence order,
    of one recipient if `recipient`, in [occurred_after, occurred_before)."""
    values: dict[str, Any] = {"business_id": business_id, "cid": cid, "after": after_seq}
    if recipient:
        values["recipient"] = recipient
    if occurred_after is not None:
        values["oa"] = occurred_after
    if occurred_before is not None:
        values["ob"] = occurred_before
    statement = _replies(bool(recipient), occurred_after is not None, occurred_before is not None)
    return statement, values
