"""Recounting a campaign from its stored events, to check the maintained
state: every message's current state and every counter must equal what a
fold over the stored events gives. Used by the tests and the crash test;
`flowtrack check` could expose it later."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter, defaultdict

from flowtrack.domain.model import MessageState, Status, fold
from flowtrack.store import engagement
from flowtrack.store.ingest import message_events


def recount(conn: sqlite3.Connection, cid: int) -> dict[tuple[str, str], int]:
    """The counters of campaign `cid` computed from scratch: (scope, name) -> value."""
    counts: Counter[tuple[str, str]] = Counter()
    clicks_by_recipient: Counter[str] = Counter()
    clickers_by_link: defaultdict[str, set[str]] = defaultdict(set)
    for recipient, link_id in conn.execute("SELECT recipient, link_id FROM events WHERE cid = ? AND kind = 2", (cid,)):
        clicks_by_recipient[recipient] += 1
        clickers_by_link[link_id].add(recipient)
    rows = conn.execute("SELECT recipient, aud_channel, aud_variant, aud_input FROM messages WHERE cid = ?", (cid,))
    scopes: dict[str, tuple[str, str]] = {}
    for recipient, aud_channel, aud_variant, aud_input in rows.fetchall():
        state = expected_state(conn, cid, recipient, aud_channel, aud_variant, aud_input)
        scopes[recipient] = (state.channel, state.variant)
        for scope in ("", "c:" + state.channel, "v:" + state.variant):
            counts[(scope, state.status.bucket)] += 1
            if clicks_by_recipient[recipient]:
                counts[(scope, "clicks")] += clicks_by_recipient[recipient]
                counts[(scope, "unique_clickers")] += 1
    for link_id, clickers in clickers_by_link.items():
        counts[("l:" + link_id, "unique_clickers")] = len(clickers)
    for (link_id,) in conn.execute("SELECT link_id FROM events WHERE cid = ? AND kind = 2", (cid,)):
        counts[("l:" + link_id, "clicks")] += 1
    counts.update(engagement.recount(conn, cid, scopes))
    return {key: value for key, value in counts.items() if value}


def expected_state(
    conn: sqlite3.Connection, cid: int, recipient: str, aud_channel: str, aud_variant: str, aud_input: str | None
) -> MessageState:
    base = MessageState(
        channel=aud_channel, variant=aud_variant, input_variables=json.loads(aud_input) if aud_input else {}
    )
    return fold(base, message_events(conn, cid, recipient))


def stored_counters(conn: sqlite3.Connection, cid: int) -> dict[tuple[str, str], int]:
    rows = conn.execute("SELECT scope, name, value FROM counters WHERE cid = ? AND value != 0", (cid,))
    return {(scope, name): value for scope, name, value in rows}


def problems(conn: sqlite3.Connection, cid: int) -> list[str]:
    """Every difference between the maintained state of `cid` and a recount.
    Empty means consistent."""
    found = []
    stored, expected = stored_counters(conn, cid), recount(conn, cid)
    for key in sorted(set(stored) | set(expected)):
        if stored.get(key, 0) != expected.get(key, 0):
            found.append(f"counter {key}: stored {stored.get(key, 0)}, recounted {expected.get(key, 0)}")
    rows = conn.execute(
        "SELECT recipient, aud_channel, aud_variant, aud_input, status, attempt, cur_event_id, channel, variant,"
        " reason_code, clicks FROM messages WHERE cid = ?",
        (cid,),
    ).fetchall()
    clicks = Counter(r for (r,) in conn.execute("SELECT recipient FROM events WHERE cid = ? AND kind = 2", (cid,)))
    for recipient, aud_channel, aud_variant, aud_input, status, attempt, event_id, channel, variant, code, n in rows:
        state = expected_state(conn, cid, recipient, aud_channel, aud_variant, aud_input)
        got = (Status(status), attempt, event_id, channel, variant, code, n)
        want = (
            state.status,
            state.attempt,
            state.event_id,
            state.channel,
            state.variant,
            state.reason_code,
            clicks[recipient],
        )
        if got != want:
            found.append(f"message {recipient!r}: stored {got}, recomputed {want}")
    return found + engagement.problems(conn, cid)
