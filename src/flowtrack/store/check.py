"""Recounting a campaign from its stored events, to check the maintained
state: every message's current state and every counter must equal what a
fold over the stored events gives. Used by the tests and the crash test;
`flowtrack check` could expose it later.

A campaign whose history was partly pruned by retention (an event of it is
older than its business's `pruned_before`) cannot be recounted: `problems`
says so in one line instead of reporting differences that are not."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any, NamedTuple

from sqlalchemy import bindparam, select

from flowtrack.domain.bots import HUMAN, classify
from flowtrack.domain.ingest import KIND_CLICK
from flowtrack.domain.model import MessageState, Status, fold
from flowtrack.domain.privacy import is_pseudonym
from flowtrack.store import bots, engagement, retention, sql
from flowtrack.store.ingest import message_events
from flowtrack.store.schema import campaigns, counters, events, messages

_CLICKS = select(
    events.c.recipient, events.c.link_id, events.c.occurred_at, events.c.user_agent, events.c.bot_reason
).where(events.c.business_id == bindparam("business_id"), events.c.cid == bindparam("cid"), events.c.kind == KIND_CLICK)
_COUNTERS = select(counters.c.scope, counters.c.name, counters.c.value).where(
    counters.c.business_id == bindparam("business_id"), counters.c.cid == bindparam("cid"), counters.c.value != 0
)


class _Message(NamedTuple):
    recipient: str
    aud_channel: str
    aud_variant: str
    aud_input: str | None
    status: int
    attempt: int
    cur_event_id: str | None
    channel: str
    variant: str
    reason_code: str
    clicks: int


_MESSAGES = select(*(messages.c[name] for name in _Message._fields)).where(
    messages.c.business_id == bindparam("business_id"), messages.c.cid == bindparam("cid")
)


def _clicks(conn: Any, business_id: str, cid: int) -> list[tuple[str, str, int, str | None, int | None]]:
    """(recipient, link_id, occurred_at, user_agent, bot_reason) of every click of campaign `cid`."""
    return [tuple(row) for row in sql.run(conn, _CLICKS, {"business_id": business_id, "cid": cid})]  # type: ignore[misc]


def recount(conn: Any, business_id: str, cid: int) -> dict[tuple[str, str], int]:
    """The counters of campaign `cid` of `business_id` computed from scratch:
    (scope, name) -> value; each click classified from scratch too (the
    business's rules, its message's delivery as the fold gives it)."""
    counts: Counter[tuple[str, str]] = Counter()
    clicks_by_recipient: Counter[str] = Counter()
    human_by_recipient: Counter[str] = Counter()
    clickers_by_link: defaultdict[str, set[str]] = defaultdict(set)
    human_by_link: defaultdict[str, set[str]] = defaultdict(set)
    rules = bots.rules_of(conn, business_id)
    states: dict[str, MessageState] = {}
    for row in list(sql.records(conn, _MESSAGES, {"business_id": business_id, "cid": cid}, _Message)):
        states[row.recipient] = expected_state(
            conn, business_id, cid, row.recipient, row.aud_channel, row.aud_variant, row.aud_input
        )
    for recipient, link_id, at, agent, stored in _clicks(conn, business_id, cid):
        clicks_by_recipient[recipient] += 1
        clickers_by_link[link_id].add(recipient)
        counts[("l:" + link_id, "clicks")] += 1
        found = states.get(recipient)
        if is_pseudonym(recipient):  # erased: its user agent is gone, its class stays
            reason = HUMAN if stored is None else stored
        else:
            reason = classify(rules, agent, at, found.success_at if found else None)
        if reason == HUMAN:
            human_by_recipient[recipient] += 1
            human_by_link[link_id].add(recipient)
            counts[("l:" + link_id, "human_clicks")] += 1
    scopes: dict[str, tuple[str, str]] = {}
    for recipient, state in states.items():
        scopes[recipient] = (state.channel, state.variant)
        for scope in ("", "c:" + state.channel, "v:" + state.variant):
            counts[(scope, state.status.bucket)] += 1
            if clicks_by_recipient[recipient]:
                counts[(scope, "clicks")] += clicks_by_recipient[recipient]
                counts[(scope, "unique_clickers")] += 1
            if human_by_recipient[recipient]:
                counts[(scope, "human_clicks")] += human_by_recipient[recipient]
                counts[(scope, "unique_human_clickers")] += 1
    for link_id, clickers in clickers_by_link.items():
        counts[("l:" + link_id, "unique_clickers")] = len(clickers)
    for link_id, clickers in human_by_link.items():
        counts[("l:" + link_id, "unique_human_clickers")] = len(clickers)
    counts.update(engagement.recount(conn, business_id, cid, scopes))
    return {key: value for key, value in counts.items() if value}


def expected_state(
    conn: Any, business_id: str, cid: int, recipient: str, aud_channel: str, aud_variant: str, aud_input: str | None
) -> MessageState:
    base = MessageState(
        channel=aud_channel, variant=aud_variant, input_variables=json.loads(aud_input) if aud_input else {}
    )
    return fold(base, message_events(conn, business_id, cid, recipient))


def stored_counters(conn: Any, business_id: str, cid: int) -> dict[tuple[str, str], int]:
    values = {"business_id": business_id, "cid": cid}
    return {(scope, name): value for scope, name, value in sql.run(conn, _COUNTERS, values)}


_CAMPAIGN_EVENTS_FROM = select(campaigns.c.first_event_at).where(
    campaigns.c.business_id == bindparam("business_id"), campaigns.c.cid == bindparam("cid")
)


def pruned(conn: Any, business_id: str, cid: int) -> bool:
    """Whether retention pruned some of campaign `cid`'s history."""
    first = sql.scalar(conn, _CAMPAIGN_EVENTS_FROM, {"business_id": business_id, "cid": cid})
    if first is None:
        return False
    before = retention.get(conn, business_id).pruned_before
    return before is not None and first < before


def problems(conn: Any, business_id: str, cid: int) -> list[str]:
    """Every difference between the maintained state of campaign `cid` of
    `business_id` and a recount. Empty means consistent."""
    if pruned(conn, business_id, cid):
        return [f"campaign {cid}: its history was pruned (retention), it cannot be recounted from its events"]
    found = []
    stored, expected = stored_counters(conn, business_id, cid), recount(conn, business_id, cid)
    for key in sorted(set(stored) | set(expected)):
        if stored.get(key, 0) != expected.get(key, 0):
            found.append(f"counter {key}: stored {stored.get(key, 0)}, recounted {expected.get(key, 0)}")
    rows = list(sql.records(conn, _MESSAGES, {"business_id": business_id, "cid": cid}, _Message))
    clicks = Counter(click[0] for click in _clicks(conn, business_id, cid))
    for row in rows:
        state = expected_state(conn, business_id, cid, row.recipient, row.aud_channel, row.aud_variant, row.aud_input)
        got = (Status(row.status), row.attempt, row.cur_event_id, row.channel, row.variant, row.reason_code, row.clicks)
        want = (
            state.status,
            state.attempt,
            state.event_id,
            state.channel,
            state.variant,
            state.reason_code,
            clicks[row.recipient],
        )
        if got != want:
            found.append(f"message {row.recipient!r}: stored {got}, recomputed {want}")
    return found + engagement.problems(conn, business_id, cid)
