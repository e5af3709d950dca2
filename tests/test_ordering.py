"""Rule 2: the current status is the maximum of (attempt, rank, occurred_at,
event_id) over a message's events, whatever order they arrive in, and rule 1:
a resent event changes nothing. The same for engagement events (SPEC §5):
their fold (earliest times, counts, the earliest exit and goal) and their
counters, in whatever channel and variant the status events end with, do not
depend on the arrival order either.

Each example feeds every permutation of a message's events (up to 5, with
duplicates mixed in) through the real writer into a real SQLite file, each
permutation as its own business, and asserts identical message state,
identical engagement state and identical counters, equal to a recount from
the stored events."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowtrack.domain.ingest import Options, Outcome
from flowtrack.domain.model import (
    STATUSES_WITH_REASON,
    ClickEvent,
    EngagementEvent,
    EngagementKind,
    Event,
    MessageState,
    Status,
    StatusEvent,
    fold,
)
from flowtrack.store import campaigns, check, db
from flowtrack.store.ingest import record_events
from flowtrack.store.writer import Tx, Writer
from tests.conftest import Backend, checks

T0 = 1_700_000_000_000_000

statuses = st.sampled_from([s for s in Status if s is not Status.PENDING])


@st.composite
def status_events(draw: st.DrawFn, index: int) -> StatusEvent:
    status = draw(statuses)
    return StatusEvent(
        event_id=f"e{index}",
        campaign_id="c",
        recipient="+15550001",
        status=status,
        occurred_at=T0 + draw(st.integers(0, 3)) * 1_000_000,  # few values: ties are likely
        attempt=draw(st.integers(1, 2)),
        reason_code=draw(st.sampled_from(["BLOCKED", "RATE_LIMITED"])) if status in STATUSES_WITH_REASON else "",
        channel=draw(st.sampled_from(["", "sms", "whatsapp"])),
        variant=draw(st.sampled_from(["", "A", "B"])),
        provider_message_id=draw(st.sampled_from(["", "pm-1", "pm-2"])),
        output_variables=draw(st.sampled_from([{}, {"answer": "yes"}, {"answer": "no"}])),
    )


@st.composite
def engagement_events(draw: st.DrawFn, index: int) -> EngagementEvent:
    kind = draw(st.sampled_from(list(EngagementKind)))
    return EngagementEvent(
        event_id=f"g{index}",
        campaign_id="c",
        recipient="+15550001",
        kind=kind,
        occurred_at=T0 + draw(st.integers(0, 2)) * 1_000_000,  # ties between two exits are likely
        text="hi" if kind is EngagementKind.REPLIED else "",
        button_id=draw(st.sampled_from(["b1", "b2"])) if kind is EngagementKind.BUTTON_CLICKED else "",
        exit_reason=draw(st.sampled_from(["done", "timeout"])) if kind is EngagementKind.EXITED_FLOW else "",
        goal_id=draw(st.sampled_from(["", "buy"])) if kind is EngagementKind.GOAL_ACHIEVED else "",
    )


@st.composite
def histories(draw: st.DrawFn) -> list[Event]:
    count = draw(st.integers(1, 4))
    events: list[Event] = [draw(status_events(i)) for i in range(count)]
    if len(events) < 5 and draw(st.booleans()):
        # A person's user agent, 2.5 s after T0: a bot's click (too soon) or not
        # depending on the SUCCESS times drawn (domain/bots.py), in any order.
        events.append(ClickEvent("k0", "c", "+15550001", "L1", T0 + 2_500_000, user_agent="Mozilla/5.0 (X11)"))
    # Engagement events, which may come before any status event (the message
    # has no channel yet) and must then move to the channel a status gives it.
    for i in range(draw(st.integers(0, 5 - len(events)))):
        events.append(draw(engagement_events(i)))
    # A resent event (same id, same payload) mixed in: at most 5 in all.
    if len(events) < 5 and draw(st.booleans()):
        events.append(draw(st.sampled_from(events)))
    return events


@pytest.fixture(scope="module")
def writer(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[Writer]:
    """The store's writer on a database of its own: SQLite, or PostgreSQL
    (the same jobs and checks through the PostgreSQL writer and adapter)."""
    folder = Path(tmp_path_factory.mktemp("ordering"))
    if backend.postgres:
        from flowtrack.store.pg.store import PgWriter

        w: Writer = PgWriter(backend.database(folder))
    else:
        w = Writer(db.open_database(folder / "ordering.db"))
    yield w
    w.close()


_runs = itertools.count()


def _message(tx: Tx, business: str) -> tuple[Any, ...]:
    cid = campaigns.lookup(tx.conn, business, "c")
    assert cid is not None
    cursor = checks(tx.conn).execute("SELECT * FROM messages WHERE business_id = ? AND cid = ?", (business, cid))
    names = [d[0] for d in cursor.description]
    row = cursor.fetchone()
    counters = check.stored_counters(tx.conn, business, cid)
    problems = check.problems(tx.conn, business, cid)
    engaged = (
        checks(tx.conn)
        .execute("SELECT * FROM engagement WHERE business_id = ? AND cid = ?", (business, cid))
        .fetchone()
    )
    # Every column by name but the keys, the server-clock columns and the stored encodings (filled in
    # the background, revision 0011); attr_keys and human_clicks included: they must not depend on the order either.
    state = tuple((name, value) for name, value in zip(names, row, strict=True) if name not in _NOT_STATE)
    return state, tuple(sorted(counters.items())), tuple(problems), engaged and engaged[3:]


_NOT_STATE = {"business_id", "cid", "recipient", "added_at", "updated_at", "row_pb", "csv_tail"}


# 60 histories on each backend, in SHARDS runs of their own (each its own
# random draw) that pytest-xdist spreads over its workers: on PostgreSQL, at
# ~4 ms a transaction, one run of all 60 takes ~90 s on a quiet machine.
HISTORIES, SHARDS = 60, 6


@pytest.mark.slow
@pytest.mark.timeout(300)  # a part is ~15 s on a quiet machine; a busy one stretches it past the default 120 s
@pytest.mark.parametrize("shard", range(SHARDS))
@settings(max_examples=HISTORIES // SHARDS, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=histories())
def test_every_arrival_order_gives_the_same_state_and_counters(
    writer: Writer, backend: Backend, shard: int, events: list[Event]
) -> None:
    run = next(_runs)
    outcomes = []
    results = []
    for number, order in enumerate(itertools.permutations(events)):
        business = f"run{run}-perm{number}"
        # Half of the permutations arrive one event per transaction, half in one batch.
        if number % 2:
            stored = writer.run_sync(lambda tx, b=business, o=order: record_events(tx, b, list(o), Options())[0])
        else:
            stored = [
                writer.run_sync(lambda tx, b=business, e=e: record_events(tx, b, [e], Options())[0][0]) for e in order
            ]
        outcomes.append(sorted(r.outcome for r in stored))
        results.append(writer.run_sync(lambda tx, b=business: _message(tx, b)))
    first = results[0]
    assert first[2] == (), f"maintained state differs from a recount: {first[2]}"
    assert all(r == first for r in results), "arrival order changed the state or the counters"
    distinct = len({e.event_id for e in events})
    assert all(o.count(Outcome.ACCEPTED) == distinct for o in outcomes)
    assert all(o.count(Outcome.DUPLICATE) == len(events) - distinct for o in outcomes)
    # And the state is the rule's: the event with the greatest key.
    statuses_only = [e for e in events if isinstance(e, StatusEvent)]
    best = max(statuses_only, key=lambda e: e.key)
    row = dict(first[0])
    assert (row["status"], row["attempt"], row["cur_event_id"]) == (int(best.status), best.attempt, best.event_id)
    # Engagement never changes the delivery status, and is kept iff sent.
    assert (first[3] is not None) == any(isinstance(e, EngagementEvent) for e in events)


def test_late_submitted_never_moves_a_message_back() -> None:
    success = StatusEvent("s", "c", "r", Status.SUCCESS, T0 + 5)
    submitted = StatusEvent("u", "c", "r", Status.SUBMITTED, T0 + 9)  # later clock, lower rank
    state = fold(MessageState(), [success, submitted])
    assert state.status is Status.SUCCESS
    assert state.submitted_at == T0 + 9 and state.success_at == T0 + 5


def test_a_newer_attempt_supersedes_an_older_one() -> None:
    failed = StatusEvent("f", "c", "r", Status.FAILED, T0 + 9, attempt=1, reason_code="BLOCKED")
    retry = StatusEvent("s", "c", "r", Status.SUBMITTED, T0 + 1, attempt=2)
    state = fold(MessageState(), [retry, failed])
    assert (state.status, state.attempt, state.reason_code) == (Status.SUBMITTED, 2, "")


def test_attributes_come_from_the_greatest_event_that_carries_them() -> None:
    base = MessageState(channel="email", variant="A")
    early = StatusEvent("a", "c", "r", Status.SUBMITTED, T0, channel="sms", provider_message_id="pm-1")
    late = StatusEvent("b", "c", "r", Status.SUCCESS, T0 + 1, output_variables={"k": "v"})
    for order in ([early, late], [late, early]):
        state = fold(base, order)
        assert (state.channel, state.variant, state.provider_message_id) == ("sms", "A", "pm-1")
        assert state.output_variables == {"k": "v"}


@pytest.mark.sqlite_only("drives the SQLite writer on a file of its own")
def test_older_events_newest_first_fold_in_constant_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """2,000 status events of one recipient arriving newest first, each with
    attributes that differ from the current ones: before, every one of them
    re-read and re-folded all the message's stored events (about 2 million
    events read, 8 s of the single writer). Now no event is read back, one
    event per transaction or all in one batch, and the state is the fold's."""
    import flowtrack.store.ingest as ingest

    read_back = 0
    real = ingest.message_events

    def counting(conn: Any, business_id: str, cid: int, recipient: str) -> list[StatusEvent]:
        nonlocal read_back
        found = real(conn, business_id, cid, recipient)
        read_back += len(found)
        return found

    monkeypatch.setattr(ingest, "message_events", counting)
    w = Writer(db.open_database(tmp_path / "fold.db", durability="normal"))
    n = 2000
    ranks = [Status.SUBMITTED, Status.DELIVERY_NOT_CONFIRMED, Status.SUCCESS, Status.FAILED]
    events = [
        StatusEvent(
            event_id=f"e{i:05d}",
            campaign_id="c",
            recipient="+15550001",
            status=ranks[i % 4],
            occurred_at=T0 + i * 1000,
            reason_code="BLOCKED" if ranks[i % 4] is Status.FAILED else "",
            channel=["sms", "whatsapp"][i % 2],
            provider_message_id=f"pm-{i}",
            output_variables={"step": str(i)},
        )
        for i in reversed(range(n))
    ]
    try:
        for e in events[: n // 2]:  # one per transaction, newest first
            w.run_sync(lambda tx, e=e: record_events(tx, "one", [e], Options()))
        w.run_sync(lambda tx: record_events(tx, "one", events[n // 2 :], Options()))  # the older half at once
        assert read_back == 0, f"{read_back} stored events read back to fold {n} events"

        def state(tx: Tx) -> tuple[tuple[Any, ...], list[str]]:
            cid = campaigns.lookup(tx.conn, "one", "c")
            assert cid is not None
            row = (
                checks(tx.conn)
                .execute(
                    "SELECT status, cur_event_id, channel, provider_message_id, output_vars, submitted_at, success_at"
                    " FROM messages WHERE business_id = ? AND cid = ?",
                    ("one", cid),
                )
                .fetchone()
            )
            return tuple(row), check.problems(tx.conn, "one", cid)

        row, problems = w.run_sync(state)
        assert problems == []
        expected = fold(MessageState(), events)
        assert row[:4] == (int(expected.status), expected.event_id, expected.channel, expected.provider_message_id)
        assert json.loads(row[4]) == expected.output_variables == {"step": "1998"}  # the greatest: a SUCCESS
        assert (row[5], row[6]) == (expected.submitted_at, expected.success_at) == (T0, T0 + 2000)
    finally:
        w.close()


@pytest.mark.sqlite_only("drives the SQLite writer on a file of its own")
def test_a_message_stored_without_attribute_keys_is_refolded_once(tmp_path: Path) -> None:
    """A message stored before attr_keys existed (NULL) is recomputed from
    its events the first time an older event could change it, and from then
    on folds in O(1) like any other."""
    w = Writer(db.open_database(tmp_path / "legacy.db", durability="normal"))
    newest = StatusEvent("n", "c", "r", Status.SUCCESS, T0 + 10, provider_message_id="pm-new")
    older = StatusEvent("o", "c", "r", Status.SUBMITTED, T0 + 5, channel="sms", provider_message_id="pm-old")
    oldest = StatusEvent("x", "c", "r", Status.SUBMITTED, T0 + 1, channel="whatsapp", variant="B")
    try:
        w.run_sync(lambda tx: record_events(tx, "b", [newest], Options()))
        w.run_sync(lambda tx: checks(tx.conn).execute("UPDATE messages SET attr_keys = NULL"))
        w.run_sync(lambda tx: record_events(tx, "b", [older], Options()))
        keys = w.run_sync(lambda tx: checks(tx.conn).execute("SELECT attr_keys FROM messages").fetchone()[0])
        assert keys is not None, "the re-fold did not store the keys"
        w.run_sync(lambda tx: record_events(tx, "b", [oldest], Options()))
        row = w.run_sync(
            lambda tx: checks(tx.conn).execute("SELECT channel, variant, provider_message_id FROM messages").fetchone()
        )
        assert row == ("sms", "B", "pm-new")
    finally:
        w.close()
