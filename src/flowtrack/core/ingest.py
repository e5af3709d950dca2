"""The ingest use case: checked events in, results out after the commit.

The face converts and checks each event (domain/validation.py) before it
comes here: an invalid event never reaches the writer. `record` stores a
batch's valid events in one writer job; `record_one` stores the event of a
unary call, joining the other unary calls of the same business that wait
for the same job (see `_Joined`), so they cost what a small batch costs
instead of a job, a savepoint and a wake-up each. Concurrent jobs share
commits (store/writer.py).
"""

from __future__ import annotations

import asyncio
import functools
import threading

from flowtrack.core.calls import Call
from flowtrack.domain import errors
from flowtrack.domain.ingest import Options, Outcome, Result
from flowtrack.domain.model import Event
from flowtrack.domain.privacy import REASON_ERASED
from flowtrack.domain.retention import OUTSIDE_RETENTION
from flowtrack.store.base import Store
from flowtrack.store.ingest import record_events


class _Joined:
    """Unary events of one business waiting for one writer job. The job takes
    them when the writer starts it; a call arriving after that (or after the
    job ended without running) opens the next one. The lock is shared by the
    event loop (add, close) and the writer (take)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.lock = threading.Lock()
        self.taken = False
        self.done: asyncio.Future[tuple[list[Result], int]] | None = None

    def add(self, event: Event) -> int | None:
        """The event's position in the job, or None if the job already started or ended."""
        with self.lock:
            if self.taken or (self.done is not None and self.done.done()):
                return None
            self.events.append(event)
            return len(self.events) - 1

    def take(self) -> list[Event]:
        with self.lock:
            self.taken = True
            return self.events

    def close(self) -> int:
        """No more events join; how many did."""
        with self.lock:
            self.taken = True
            return len(self.events)


class Ingest:
    def __init__(self, store: Store, options: Options, *, max_write_wait: float) -> None:
        self.store = store
        self.options = options
        self.max_write_wait = max_write_wait  # --max-write-wait
        self._joined: dict[str, _Joined] = {}

    async def record(self, call: Call, events: list[Event]) -> tuple[list[Result], int]:
        """Store checked events in one writer job: a result per event, in
        order, and the committed sequence."""
        business_id, options = call.business_id, self.options
        return await self.store.write(lambda tx: record_events(tx, business_id, events, options), rows=len(events))

    async def record_one(self, call: Call, event: Event) -> tuple[Result, int]:
        """Store one checked event of a unary call; NOT_FOUND if the server
        refuses unknown campaigns and its campaign is one, FAILED_PRECONDITION
        (RECIPIENT_ERASED) if its recipient was erased.

        Each call first holds one row of the writer's bounded queue, waiting
        at most max_write_wait seconds (else RESOURCE_EXHAUSTED); the rows are
        given back when the job is answered, whatever its outcome. A job that
        failed (or never ran) is forgotten at once: the next call opens a new one."""
        business_id = call.business_id
        writer = self.store.writer
        await writer.admit(1, self.max_write_wait)
        try:
            joined = self._joined.get(business_id)
            index = joined.add(event) if joined is not None else None
            if joined is None or index is None:
                joined = self._joined[business_id] = _Joined()
                index = joined.add(event)
                assert index is not None
                take, options = joined.take, self.options
                joined.done = asyncio.ensure_future(
                    self.store.write(lambda tx: record_events(tx, business_id, take(), options), admitted=True)
                )
                joined.done.add_done_callback(functools.partial(self._finished, business_id, joined))
        except BaseException:
            writer.release(1)
            raise
        assert joined.done is not None
        results, sequence = await asyncio.shield(joined.done)
        result = results[index]
        if result.outcome == Outcome.REJECTED and result.reason == OUTSIDE_RETENTION:
            raise errors.FailedPrecondition(
                f"event {event.event_id!r} occurred before the business's retention horizon: its history is"
                " not kept that long (and an event that old may have been pruned), so it is not stored",
                reason=result.reason,
            )
        if result.outcome == Outcome.REJECTED and result.reason == REASON_ERASED:
            raise errors.FailedPrecondition(
                "the event's recipient was erased (PrivacyService): its events are refused", reason=REASON_ERASED
            )
        if result.outcome == Outcome.REJECTED:
            raise errors.NotFound(
                f"campaign {event.campaign_id!r} does not exist (the server refuses unknown campaigns)",
                reason=result.reason,
            )
        return result, sequence

    def _finished(self, business_id: str, joined: _Joined, _done: object = None) -> None:
        """A unary job was answered (committed or failed): later calls open a
        new one, and its events give back their room in the writer's queue."""
        if self._joined.get(business_id) is joined:
            del self._joined[business_id]
        self.store.writer.release(joined.close())
