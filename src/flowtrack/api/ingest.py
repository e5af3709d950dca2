"""IngestService over gRPC: events in, results out after commit.

Conversion and validation happen here, on the event loop, before anything
is queued: an invalid event gets its violations back and never reaches the
writer, so it cannot disturb the valid events of its batch. Valid events go
to the core (core/ingest.py): one writer job per batch, and unary calls of
a business joined into one job; concurrent jobs share commits.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc

from flowtrack.api.base import Servicer
from flowtrack.api.context import call_of
from flowtrack.api.errors import handle_errors, to_status
from flowtrack.core.calls import Call
from flowtrack.core.ingest import Ingest
from flowtrack.domain import engagement as deng
from flowtrack.domain import errors
from flowtrack.domain.ingest import Options, Outcome, Result
from flowtrack.domain.model import EVENT_STATUSES, STATUSES_WITH_REASON, ClickEvent, EngagementEvent, Event, StatusEvent
from flowtrack.domain.times import MIN_EVENT_TIME_US, now_us, timestamp_us
from flowtrack.domain.validation import LIMITS, PRINTABLE_ID, Checker, engagement_fields, engagement_kind
from flowtrack.v1 import common_pb2, ingest_pb2, ingest_pb2_grpc
from flowtrack.wire.texts import may_hold_nul, nul_violations


def status_from_proto(message: ingest_pb2.StatusEvent, check: Checker, now: int, skew_us: int) -> StatusEvent:
    """A StatusEvent from its proto; every violation goes to `check`."""
    plain = _plain_status(message, now, skew_us)
    if plain is not None:
        return plain
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


_STATUS_BY_NUMBER = {int(s): s for s in EVENT_STATUSES}
# StatusEvent is a frozen dataclass: its __init__ sets each of its 14 fields
# through object.__setattr__ (a method looked up and bound per field: a
# third of the conversion's instructions). Its slots' own setters set them
# at half the cost; the event is the same (tests/test_input_rules.py).
_NEW_EVENT = object.__new__
_STATUS_SETTERS = tuple(StatusEvent.__dict__[f.name].__set__ for f in dataclasses.fields(StatusEvent))


def _status_event(*values: object) -> StatusEvent:
    """StatusEvent(*values), every field given, in order."""
    event = _NEW_EVENT(StatusEvent)
    for set_field, value in zip(_STATUS_SETTERS, values, strict=True):
        set_field(event, value)
    return event


def _plain_status(message: ingest_pb2.StatusEvent, now: int, skew_us: int) -> StatusEvent | None:
    """The StatusEvent of a message that breaks none of the rules below (the
    Checker's, field by field), built as status_from_proto builds it, at a
    third of the cost (no call per field); None when one may be broken: then
    status_from_proto's checks find which. Most events take this way."""
    status = _STATUS_BY_NUMBER.get(message.status)
    if status is None or not message.HasField("occurred_at"):
        return None
    event_id, campaign_id, recipient = message.event_id, message.campaign_id, message.recipient
    channel, variant = message.channel, message.variant
    provider_message_id, session_id = message.provider_message_id, message.session_id
    reason = message.failure_reason
    code, text = reason.code, reason.message
    attempt = message.attempt
    time = message.occurred_at
    occurred_at = timestamp_us(time.seconds, time.nanos)
    if not (
        event_id
        and len(event_id) <= LIMITS.id_chars
        and PRINTABLE_ID.fullmatch(event_id)
        and campaign_id
        and len(campaign_id) <= LIMITS.id_chars
        and recipient
        and len(recipient) <= LIMITS.recipient_chars
        and occurred_at is not None
        and MIN_EVENT_TIME_US <= occurred_at <= now + skew_us
        and 0 <= attempt <= LIMITS.max_attempt
        and len(channel) <= LIMITS.channel_chars
        and len(variant) <= LIMITS.variant_chars
        and len(provider_message_id) <= LIMITS.ref_chars
        and len(session_id) <= LIMITS.ref_chars
    ):
        return None
    if status in STATUSES_WITH_REASON:
        if not code or len(code) > LIMITS.code_chars or len(text) > LIMITS.message_chars:
            return None
    elif (code or text) and message.HasField("failure_reason"):
        return None
    inputs, outputs = message.input_variables, message.output_variables
    if (inputs and not _plain_variables(inputs)) or (outputs and not _plain_variables(outputs)):
        return None
    return _status_event(
        event_id,
        campaign_id,
        recipient,
        status,
        occurred_at,
        attempt or 1,
        code,
        text,
        channel,
        variant,
        provider_message_id,
        session_id,
        dict(inputs) if inputs else {},  # dict() of an empty upb map still costs ~5,000 instructions
        dict(outputs) if outputs else {},
    )


def _plain_variables(values: Mapping[str, str]) -> bool:
    """Whether a map of variables breaks none of Checker.variables' rules."""
    if len(values) > LIMITS.vars_entries:
        return False
    return all(
        key and len(key) <= LIMITS.var_key_chars and len(value) <= LIMITS.var_value_chars
        for key, value in values.items()
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


class IngestServicer(Servicer, ingest_pb2_grpc.IngestServiceServicer):
    # Told every answered event as {(kind, EventOutcome number): count}, once
    # per call or batch (server.py points it at the metrics).
    count_events: Callable[[Mapping[tuple[str, int], int]], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        options = Options(strict_campaigns=self.settings.strict_campaigns, store_ip=self.settings.store_ip)
        self.core = Ingest(self.store, options, max_write_wait=self.settings.max_write_wait)

    @property
    def _skew_us(self) -> int:
        return int(self.settings.max_future_skew * 1_000_000)

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
            result, sequence = await self.core.record_one(call_of(context), event)
        except (errors.NotFound, errors.FailedPrecondition):
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

    async def _batch(self, call: Call, request: ingest_pb2.StreamEventsRequest) -> ingest_pb2.StreamEventsResponse:
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
            # No NUL in its texts (domain/text.py), as the gate checks requests. A
            # string holding U+0000 is a 0x00 byte on the wire, in its event's bytes
            # and so in the request's: a request without any (most of them; one
            # serialisation, 0.1 us an event) needs no test of its events. In one
            # with a 0x00 (a double, an empty message), each event's bytes are
            # tested, and only the few with one walked.
            clean = not may_hold_nul(request.SerializeToString())
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
                if kind and not clean and may_hold_nul(item.SerializeToString()):
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
            stored, sequence = await self.core.record(call, valid)
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
        call = call_of(context)
        pending: asyncio.Queue[asyncio.Task[ingest_pb2.StreamEventsResponse] | None] = asyncio.Queue(
            maxsize=self.settings.max_inflight_batches
        )

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await pending.put(asyncio.ensure_future(self._batch(call, request)))
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
