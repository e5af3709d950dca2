"""IngestService: events in, results out after commit.

Validation happens here, on the event loop, before anything is queued: an
invalid event gets its violations back and never reaches the writer, so it
cannot disturb the valid events of its batch. Valid events go to the writer
as one job per batch (or per unary call); concurrent jobs share commits.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc

from flowtrack.api.base import Servicer
from flowtrack.api.context import business_of
from flowtrack.api.errors import handle_errors, to_status
from flowtrack.api.texts import may_hold_nul, nul_violations
from flowtrack.domain import engagement as deng
from flowtrack.domain import errors
from flowtrack.domain.ingest import Options, Outcome, Result
from flowtrack.domain.model import ClickEvent, EngagementEvent, Event, StatusEvent
from flowtrack.domain.times import now_us
from flowtrack.domain.validation import LIMITS, Checker, engagement_fields, engagement_kind
from flowtrack.store.ingest import record_events
from flowtrack.v1 import common_pb2, ingest_pb2, ingest_pb2_grpc


def status_from_proto(message: ingest_pb2.StatusEvent, check: Checker, now: int, skew_us: int) -> StatusEvent:
    """A StatusEvent from its proto; every violation goes to `check`."""
    status = check.status("status", message.status)
    reason = message.failure_reason
    check.reason(status, message.HasField("failure_reason"), reason.code, reason.message)
    return StatusEvent(
        event_id=check.event_id("event_id", message.event_id),
        campaign_id=check.text("campaign_id", message.campaign_id, LIMITS.id_chars, required=True),
        recipient=check.text("recipient", message.recipient, LIMITS.recipient_chars, required=True),
        status=status,
        occurred_at=check.timestamp(
            "occurred_at", message.occurred_at if message.HasField("occurred_at") else None, now, skew_us
        ),
        attempt=check.attempt("attempt", message.attempt),
        reason_code=reason.code,
        reason_message=reason.message,
        channel=check.text("channel", message.channel, LIMITS.channel_chars),
        variant=check.text("variant", message.variant, LIMITS.variant_chars),
        provider_message_id=check.text("provider_message_id", message.provider_message_id, LIMITS.ref_chars),
        session_id=check.text("session_id", message.session_id, LIMITS.ref_chars),
        input_variables=check.variables("input_variables", message.input_variables),
        output_variables=check.variables("output_variables", message.output_variables),
    )


def click_from_proto(message: ingest_pb2.ClickEvent, check: Checker, now: int, skew_us: int) -> ClickEvent:
    """A ClickEvent from its proto; every violation goes to `check`."""
    place = message.location
    return ClickEvent(
        event_id=check.event_id("event_id", message.event_id),
        campaign_id=check.text("campaign_id", message.campaign_id, LIMITS.id_chars, required=True),
        recipient=check.text("recipient", message.recipient, LIMITS.recipient_chars, required=True),
        link_id=check.text("link_id", message.link_id, LIMITS.link_chars, required=True),
        occurred_at=check.timestamp(
            "occurred_at", message.occurred_at if message.HasField("occurred_at") else None, now, skew_us
        ),
        link_variable=check.text("link_variable", message.link_variable, LIMITS.link_chars),
        url=check.text("url", message.url, LIMITS.url_chars),
        country_code=check.country("location.country_code", place.country_code),
        region=check.text("location.region", place.region, LIMITS.place_chars),
        city=check.text("location.city", place.city, LIMITS.place_chars),
        latitude=check.coordinate("location.latitude", place.latitude if place.HasField("latitude") else None, 90),
        longitude=check.coordinate("location.longitude", place.longitude if place.HasField("longitude") else None, 180),
        user_agent=check.text("user_agent", message.user_agent, LIMITS.user_agent_chars),
        ip_address=check.text("ip_address", message.ip_address, LIMITS.ip_chars),
    )


def engagement_from_proto(
    message: ingest_pb2.EngagementEvent, check: Checker, now: int, skew_us: int
) -> EngagementEvent:
    """An EngagementEvent from its proto; every violation goes to `check`. A
    reply sent with discard_text loses its text here, before anything (the
    fingerprint included) sees it."""
    kind = engagement_kind(check, "kind", message.kind)
    engagement_fields(
        check,
        kind,
        {
            "text": message.text,
            "discard_text": message.discard_text,
            "button_id": message.button_id,
            "button_name": message.button_name,
            "exit_reason": message.exit_reason,
            "goal_id": message.goal_id,
        },
    )
    text = check.text("text", message.text, deng.REPLY_TEXT_CHARS)
    return EngagementEvent(
        event_id=check.event_id("event_id", message.event_id),
        campaign_id=check.text("campaign_id", message.campaign_id, LIMITS.id_chars, required=True),
        recipient=check.text("recipient", message.recipient, LIMITS.recipient_chars, required=True),
        kind=kind,
        occurred_at=check.timestamp(
            "occurred_at", message.occurred_at if message.HasField("occurred_at") else None, now, skew_us
        ),
        text="" if message.discard_text else text,
        discard_text=message.discard_text,
        button_id=check.text("button_id", message.button_id, deng.BUTTON_ID_CHARS),
        button_name=check.text("button_name", message.button_name, deng.BUTTON_NAME_CHARS),
        exit_reason=check.text("exit_reason", message.exit_reason, deng.EXIT_REASON_CHARS),
        goal_id=check.text("goal_id", message.goal_id, deng.GOAL_ID_CHARS),
    )


def _result(index: int, event_id: str, result: Result) -> ingest_pb2.EventResult:
    return ingest_pb2.EventResult(
        index=index,
        event_id=event_id,
        outcome=ingest_pb2.EventOutcome.ValueType(result.outcome),
        sequence=result.sequence,
        reason=result.reason,
    )


def _invalid(index: int, event_id: str, check: Checker) -> ingest_pb2.EventResult:
    return ingest_pb2.EventResult(
        index=index,
        event_id=event_id,
        outcome=ingest_pb2.EVENT_OUTCOME_INVALID,
        violations=[
            common_pb2.FieldViolation(field=v.field, description=v.description, reason=v.reason)
            for v in check.violations
        ],
    )


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


class IngestServicer(Servicer, ingest_pb2_grpc.IngestServiceServicer):
    # Told every answered event as {(kind, EventOutcome number): count}, once
    # per call or batch (server.py points it at the metrics).
    count_events: Callable[[Mapping[tuple[str, int], int]], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._joined: dict[str, _Joined] = {}

    @property
    def _options(self) -> Options:
        return Options(strict_campaigns=self.settings.strict_campaigns, store_ip=self.settings.store_ip)

    @property
    def _skew_us(self) -> int:
        return int(self.settings.max_future_skew * 1_000_000)

    async def _record_one(self, business_id: str, event: Event) -> tuple[Result, int]:
        """Store one event of a unary call. Concurrent calls of a business join
        the same writer job (see _Joined), so they cost what a small batch
        costs instead of a job, a savepoint and a wake-up each.

        Each call first holds one row of the writer's bounded queue, waiting
        at most max_write_wait seconds (else RESOURCE_EXHAUSTED); the rows are
        given back when the job is answered, whatever its outcome. A job that
        failed (or never ran) is forgotten at once: the next call opens a new one."""
        writer = self.store.writer
        await writer.admit(1, self.settings.max_write_wait)
        try:
            joined = self._joined.get(business_id)
            index = joined.add(event) if joined is not None else None
            if joined is None or index is None:
                joined = self._joined[business_id] = _Joined()
                index = joined.add(event)
                assert index is not None
                take = joined.take
                joined.done = asyncio.ensure_future(
                    self.store.write(lambda tx: record_events(tx, business_id, take(), self._options), admitted=True)
                )
                joined.done.add_done_callback(functools.partial(self._finished, business_id, joined))
        except BaseException:
            writer.release(1)
            raise
        assert joined.done is not None
        results, sequence = await asyncio.shield(joined.done)
        result = results[index]
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

    async def _record_unary(
        self, event: Event, check: Checker, context: grpc.aio.ServicerContext
    ) -> tuple[ingest_pb2.EventResult, int]:
        """A unary call's event, already converted: refused with its violations
        (under `event`), or stored; its result and the committed sequence."""
        kind = "status"
        if isinstance(event, ClickEvent):
            kind = "click"
        elif isinstance(event, EngagementEvent):
            kind = "engagement"
        if check.violations:
            if self.count_events is not None:
                self.count_events({(kind, ingest_pb2.EVENT_OUTCOME_INVALID): 1})
            raise errors.InvalidArgument([v.under("event") for v in check.violations])
        try:
            result, sequence = await self._record_one(business_of(context), event)
        except errors.NotFound:
            if self.count_events is not None:
                self.count_events({(kind, ingest_pb2.EVENT_OUTCOME_REJECTED): 1})
            raise
        if self.count_events is not None:
            self.count_events({(kind, int(result.outcome)): 1})
        return _result(0, event.event_id, result), sequence

    @handle_errors
    async def RecordStatusEvent(
        self, request: ingest_pb2.RecordStatusEventRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.RecordStatusEventResponse:
        check = Checker()
        event = status_from_proto(request.event, check, now_us(), self._skew_us)
        result, sequence = await self._record_unary(event, check, context)
        return ingest_pb2.RecordStatusEventResponse(result=result, committed_sequence=sequence)

    @handle_errors
    async def RecordClickEvent(
        self, request: ingest_pb2.RecordClickEventRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.RecordClickEventResponse:
        check = Checker()
        event = click_from_proto(request.event, check, now_us(), self._skew_us)
        result, sequence = await self._record_unary(event, check, context)
        return ingest_pb2.RecordClickEventResponse(result=result, committed_sequence=sequence)

    @handle_errors
    async def RecordEngagementEvent(
        self, request: ingest_pb2.RecordEngagementEventRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.RecordEngagementEventResponse:
        check = Checker()
        event = engagement_from_proto(request.event, check, now_us(), self._skew_us)
        result, sequence = await self._record_unary(event, check, context)
        return ingest_pb2.RecordEngagementEventResponse(result=result, committed_sequence=sequence)

    async def _batch(
        self, business_id: str, request: ingest_pb2.StreamEventsRequest
    ) -> ingest_pb2.StreamEventsResponse:
        """Validate one batch, store its valid events in one writer job, and
        build its response (after the commit)."""
        results: list[ingest_pb2.EventResult | None] = [None] * len(request.events)
        valid: list[Event] = []
        refused = Checker()  # what is wrong with the batch as a whole refuses each of its events
        if len(request.events) > self.settings.max_batch_events:
            refused.add("events", f"a batch holds at most {self.settings.max_batch_events} events", "TOO_MANY")
        if len(request.batch_id) > LIMITS.id_chars:
            refused.add("batch_id", f"is longer than {LIMITS.id_chars} characters", "TOO_LONG")
        if refused.violations:
            for index, item in enumerate(request.events):
                results[index] = _invalid(index, _event_id(item), refused)
        else:
            now, skew = now_us(), self._skew_us
            suspect = may_hold_nul(request.SerializeToString())  # most batches: no event to walk for a NUL
            for index, item in enumerate(request.events):
                check = Checker()
                kind = item.WhichOneof("kind")
                event: Event
                if kind == "status":
                    event = status_from_proto(item.status, check, now, skew)
                elif kind == "click":
                    event = click_from_proto(item.click, check, now, skew)
                elif kind == "engagement":
                    event = engagement_from_proto(item.engagement, check, now, skew)
                else:
                    check.add("", "must hold a status, a click or an engagement event", "REQUIRED")
                if suspect and kind:  # no NUL in its texts (domain/text.py), as the gate checks requests
                    check.violations += nul_violations(getattr(item, kind))
                if check.violations:
                    prefix = f"events[{index}]" + (f".{kind}" if kind else "")
                    check.violations[:] = [v.under(prefix) for v in check.violations]
                    results[index] = _invalid(index, _event_id(item), check)
                else:
                    valid.append(event)
        sequence = 0
        stored: list[Result] = []
        if valid:
            stored, sequence = await self.store.write(
                lambda tx: record_events(tx, business_id, valid, self._options), rows=len(valid)
            )
        echo = request.batch_id if len(request.batch_id) <= LIMITS.id_chars else ""  # a refused one is not echoed
        response = ingest_pb2.StreamEventsResponse(batch_id=echo, committed_sequence=sequence)
        # Results added in place (results.add): building each and copying it
        # in cost 3x as much, ~2 us an event on the event loop.
        add, append = response.results.add, response.results.append
        outcomes = iter(zip(valid, stored, strict=True))
        counts = [0] * 6  # by outcome
        for index, invalid in enumerate(results):
            if invalid is not None:
                append(invalid)
                counts[Outcome.INVALID] += 1
                continue
            event, result = next(outcomes)
            add(
                index=index,
                event_id=event.event_id,
                outcome=result.outcome,
                sequence=result.sequence,
                reason=result.reason,
            )
            counts[result.outcome] += 1
        response.accepted = counts[Outcome.ACCEPTED]
        response.duplicates = counts[Outcome.DUPLICATE]
        response.refused = len(results) - response.accepted - response.duplicates
        if self.count_events is not None:
            tally: dict[tuple[str, int], int] = {}
            for item, answer in zip(request.events, response.results, strict=True):
                key = (item.WhichOneof("kind") or "unknown", answer.outcome)
                tally[key] = tally.get(key, 0) + 1
            self.count_events(tally)
        return response

    async def StreamEvents(
        self, request_iterator: AsyncIterator[ingest_pb2.StreamEventsRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ingest_pb2.StreamEventsResponse]:
        """Pipelined: up to max_inflight_batches batches are validated and
        queued for commit while earlier ones commit; past that the reader
        waits, so the server stops reading the stream (HTTP/2 flow control
        pushes back on the sender) and memory stays bounded."""
        business_id = business_of(context)
        pending: asyncio.Queue[asyncio.Task[ingest_pb2.StreamEventsResponse] | None] = asyncio.Queue(
            maxsize=self.settings.max_inflight_batches
        )

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await pending.put(asyncio.ensure_future(self._batch(business_id, request)))
            finally:
                await pending.put(None)

        reader = asyncio.create_task(read())
        try:
            while (task := await pending.get()) is not None:
                try:
                    response = await task
                except errors.FlowtrackError as error:  # e.g. the writer stopped: UNAVAILABLE
                    await context.abort_with_status(to_status(error))
                yield response
            await reader  # re-raise a failure of the request stream
        finally:
            reader.cancel()
            while not pending.empty():
                leftover = pending.get_nowait()
                if leftover is not None:
                    # Their events may already be committed; the client did
                    # not get the ack and must resend them (idempotently).
                    leftover.cancel()


def _event_id(item: ingest_pb2.Event) -> str:
    kind = item.WhichOneof("kind")
    if kind == "status":
        return item.status.event_id
    if kind == "click":
        return item.click.event_id
    if kind == "engagement":
        return item.engagement.event_id
    return ""
