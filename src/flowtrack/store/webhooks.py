"""Webhook endpoints, the outbox of their messages, and delivery attempts.

`emit` is called inside writer jobs and pre-commit hooks: the outbox rows
commit with the change that caused them, or not at all.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import and_, bindparam, func, insert, null, select, tuple_, update
from sqlalchemy import delete as delete_from
from sqlalchemy.sql.elements import BindParameter

from flowtrack.domain import webhooks as rules
from flowtrack.domain.errors import FailedPrecondition, NotFound, ResourceExhausted
from flowtrack.store import sql
from flowtrack.store.schema import webhook_attempts, webhook_endpoints, webhook_messages, webhook_thresholds
from flowtrack.store.writer import Job, Tx


@dataclass(frozen=True, slots=True)
class Endpoint:
    endpoint_id: str
    business_id: str
    url: str
    description: str
    events: tuple[str, ...]
    failure_rate: float | None
    min_submitted: int
    create_time: int
    disabled_at: int | None
    disabled_reason: str
    failures: int
    format: int = rules.STANDARD  # see list_targets


@dataclass(frozen=True, slots=True)
class Attempt:
    attempt: int
    time: int
    status_code: int
    latency_us: int
    error: str


@dataclass(frozen=True, slots=True)
class Message:
    message_id: str
    business_id: str
    endpoint_id: str
    type: str
    body: str
    create_time: int
    state: int
    attempts: int
    next_attempt_at: int | None
    last_error: str


@dataclass(frozen=True, slots=True)
class Due:
    """A message to send now, with what sending needs."""

    message: Message
    url: str
    secret: str
    format: int = rules.STANDARD  # see claim_targets


class _EndpointRow(NamedTuple):
    endpoint_id: str
    business_id: str
    url: str
    description: str
    events: str  # JSON array
    failure_rate: float | None
    min_submitted: int
    create_time: int
    disabled_at: int | None
    disabled_reason: str
    failures: int


class _MessageRow(NamedTuple):
    message_id: str
    business_id: str
    endpoint_id: str
    type: str
    body: str
    create_time: int
    state: int
    attempts: int
    next_attempt_at: int | None
    last_error: str


class _DueRow(NamedTuple):
    message_id: str
    business_id: str
    endpoint_id: str
    type: str
    body: str
    create_time: int
    state: int
    attempts: int
    next_attempt_at: int | None
    last_error: str
    url: str
    secret: str


class _AttemptRow(NamedTuple):
    attempt: int
    time: int
    status_code: int
    latency_us: int
    error: str


class _Sent(NamedTuple):
    """What record_attempt reads of a message."""

    attempts: int
    window_start: int  # its retry window began: at its creation, or at its latest redelivery
    endpoint_id: str
    state: int
    retry_offset: int


class _Redeliverable(NamedTuple):
    disabled_at: int | None  # its endpoint's


class _Old(NamedTuple):
    business_id: str
    message_id: str


E, M, A, T = webhook_endpoints.c, webhook_messages.c, webhook_attempts.c, webhook_thresholds.c
_ENDPOINT = (
    E.endpoint_id, E.business_id, E.url, E.description, E.events, E.failure_rate, E.min_submitted, E.create_time,
    E.disabled_at, E.disabled_reason, E.failures,
)  # fmt: skip
_MESSAGE = (
    M.message_id, M.business_id, M.endpoint_id, M.type, M.body, M.create_time, M.state, M.attempts,
    M.next_attempt_at, M.last_error,
)  # fmt: skip


def _endpoint(row: _EndpointRow) -> Endpoint:
    return Endpoint(**{**row._asdict(), "events": tuple(json.loads(row.events))})


def _message(row: _MessageRow) -> Message:
    return Message(*row)


_BUSINESS: BindParameter[str] = bindparam("business_id")
_THE_ENDPOINT = and_(E.business_id == _BUSINESS, E.endpoint_id == bindparam("endpoint_id"))
_THE_MESSAGE = and_(M.business_id == _BUSINESS, M.message_id == bindparam("message_id"))
_OF_ENDPOINT = and_(M.business_id == _BUSINESS, M.endpoint_id == bindparam("endpoint_id"))
# A message joins its endpoint on the business too (co-located on Citus).
_ENDPOINT_OF_MESSAGE = and_(E.business_id == M.business_id, E.endpoint_id == M.endpoint_id)

_COUNT = select(func.count()).select_from(webhook_endpoints).where(E.business_id == _BUSINESS)
_INSERT_ENDPOINT = insert(webhook_endpoints).values(
    {
        name: bindparam(name)
        for name in (
            "endpoint_id", "business_id", "url", "description", "events", "secret", "failure_rate",
            "min_submitted", "create_time",
        )
    }
)  # fmt: skip
_LIST = select(*_ENDPOINT).where(E.business_id == _BUSINESS).order_by(E.create_time, E.endpoint_id)
_DELETE_ENDPOINT = delete_from(webhook_endpoints).where(_THE_ENDPOINT)
_DELETE_ENDPOINT_ATTEMPTS = delete_from(webhook_attempts).where(
    A.business_id == _BUSINESS, A.message_id.in_(select(M.message_id).where(_OF_ENDPOINT))
)
_DELETE_ENDPOINT_MESSAGES = delete_from(webhook_messages).where(_OF_ENDPOINT)
_DELETE_ENDPOINT_THRESHOLDS = delete_from(webhook_thresholds).where(
    T.business_id == _BUSINESS, T.endpoint_id == bindparam("endpoint_id")
)
_FIRST_TIME = sql.insert_on_both(
    lambda insert: (
        insert(webhook_thresholds)
        .values({name: bindparam(name) for name in ("business_id", "endpoint_id", "cid", "type")})
        .on_conflict_do_nothing()
    )
)
_EMIT = insert(webhook_messages).values(
    {
        name: bindparam(name)
        for name in (
            "message_id", "business_id", "endpoint_id", "type", "body", "create_time", "state", "next_attempt_at",
        )
    }
)  # fmt: skip
# The delivery worker's look over every business (tests/citus.py ALLOWED).
_DUE = (
    select(*_MESSAGE, E.url, E.secret)
    .select_from(webhook_messages.join(webhook_endpoints, _ENDPOINT_OF_MESSAGE))
    .where(M.state == rules.PENDING, M.next_attempt_at <= bindparam("now"))
    .order_by(M.next_attempt_at)
    .limit(bindparam("limit"))
)
_CLAIM = (
    update(webhook_messages)
    .where(_THE_MESSAGE, M.state == rules.PENDING, M.next_attempt_at <= bindparam("now"))
    .values(next_attempt_at=bindparam("hold_until"))
)
_NEXT_DUE = select(func.min(M.next_attempt_at)).where(M.state == rules.PENDING)  # every business: ALLOWED
_SENT = select(
    M.attempts,
    func.coalesce(M.retry_since, M.create_time).label("window_start"),
    M.endpoint_id,
    M.state,
    M.retry_offset,
).where(_THE_MESSAGE)


def _record(insert: Any) -> Any:
    statement = insert(webhook_attempts).values(
        {
            name: bindparam(name)
            for name in ("business_id", "message_id", "attempt", "time", "status_code", "latency_us", "error")
        }
    )
    new = statement.excluded
    return statement.on_conflict_do_update(
        index_elements=[A.business_id, A.message_id, A.attempt],
        set_={"time": new.time, "status_code": new.status_code, "latency_us": new.latency_us, "error": new.error},
    )


_RECORD = sql.insert_on_both(_record)
_DELIVERED = (
    update(webhook_messages)
    .where(_THE_MESSAGE)
    .values(state=rules.DELIVERED, attempts=bindparam("attempts"), next_attempt_at=null(), last_error="")
)
_ENDPOINT_OK = update(webhook_endpoints).where(_THE_ENDPOINT).values(failures=0, failing_since=null())
_NOT_DELIVERED = (
    update(webhook_messages)
    .where(_THE_MESSAGE)
    .values(
        state=bindparam("state"),
        attempts=bindparam("attempts"),
        next_attempt_at=bindparam("next_attempt_at"),
        last_error=bindparam("last_error"),
    )
)
_ENDPOINT_FAILED = (
    update(webhook_endpoints)
    .where(_THE_ENDPOINT)
    .values(failures=E.failures + 1, failing_since=func.coalesce(E.failing_since, bindparam("now")))
)
_FAILURES = select(E.failures).where(_THE_ENDPOINT)
_DISABLE = (
    update(webhook_endpoints)
    .where(_THE_ENDPOINT, E.disabled_at.is_(None))
    .values(disabled_at=func.coalesce(E.disabled_at, bindparam("now")), disabled_reason=bindparam("reason"))
)
# A disabled endpoint gets nothing more: its pending messages fail.
_FAIL_PENDING = (
    update(webhook_messages)
    .where(_OF_ENDPOINT, M.state == rules.PENDING)
    .values(state=rules.FAILED, next_attempt_at=null(), last_error=bindparam("last_error"))
)


def _messages(by_endpoint: bool, after: bool) -> Any:
    where = [M.business_id == _BUSINESS]
    if by_endpoint:
        where.append(M.endpoint_id == bindparam("endpoint_id"))
    if after:
        where.append(tuple_(M.create_time, M.message_id) < tuple_(bindparam("before_time"), bindparam("before_id")))
    return select(*_MESSAGE).where(*where).order_by(M.create_time.desc(), M.message_id.desc()).limit(bindparam("limit"))


_MESSAGES = {(e, a): _messages(e, a) for e in (False, True) for a in (False, True)}
_ATTEMPTS = (
    select(A.attempt, A.time, A.status_code, A.latency_us, A.error)
    .where(A.business_id == _BUSINESS, A.message_id == bindparam("message_id"))
    .order_by(A.attempt)
)
_REDELIVERABLE = (
    select(E.disabled_at)
    .select_from(webhook_messages.join(webhook_endpoints, _ENDPOINT_OF_MESSAGE))
    .where(_THE_MESSAGE)
)
_REDELIVER = (
    update(webhook_messages)
    .where(_THE_MESSAGE)
    .values(
        state=rules.PENDING,
        next_attempt_at=bindparam("now"),
        retry_since=bindparam("now"),
        retry_offset=M.attempts,
    )
)
# Clean-up of old deliveries over every business (tests/citus.py ALLOWED).
_OLD = (
    select(M.business_id, M.message_id)
    .where(M.create_time < bindparam("before"), M.state != rules.PENDING)
    .limit(bindparam("limit"))
)
_FORGET_ATTEMPTS = delete_from(webhook_attempts).where(
    A.business_id == _BUSINESS, A.message_id == bindparam("message_id")
)
_FORGET_MESSAGE = delete_from(webhook_messages).where(_THE_MESSAGE)


def _not_found(what: str, ident: str) -> NotFound:
    return NotFound(f"{what} {ident!r} does not exist", reason=f"{what.upper().replace(' ', '_')}_NOT_FOUND")


# -- endpoints -------------------------------------------------------------------------
def create_endpoint(business_id: str, draft: rules.EndpointDraft, secret: str) -> Job[Endpoint]:
    """Writer job of CreateWebhookEndpoint (the draft already checked)."""

    def job(tx: Tx) -> Endpoint:
        tx.lock_business(business_id)  # the bound holds across replicas
        if sql.scalar(tx.conn, _COUNT, {"business_id": business_id}) >= rules.MAX_ENDPOINTS:
            raise ResourceExhausted(
                f"a business has at most {rules.MAX_ENDPOINTS} webhook endpoints; delete one first",
                reason="TOO_MANY_ENDPOINTS",
            )
        endpoint_id = rules.new_id("ep")
        values = {
            "endpoint_id": endpoint_id,
            "business_id": business_id,
            "url": draft.url,
            "description": draft.description,
            "events": json.dumps(list(draft.events)),
            "secret": secret,
            "failure_rate": draft.failure_rate,
            "min_submitted": draft.min_submitted,
            "create_time": tx.now_us,
        }
        sql.run(tx.conn, _INSERT_ENDPOINT, values)
        return Endpoint(
            endpoint_id, business_id, draft.url, draft.description, draft.events,
            draft.failure_rate, draft.min_submitted, tx.now_us, None, "", 0,
        )  # fmt: skip

    return job


def list_endpoints(conn: Any, business_id: str) -> list[Endpoint]:
    """A business's endpoints, oldest first (at most MAX_ENDPOINTS)."""
    return [_endpoint(row) for row in sql.records(conn, _LIST, {"business_id": business_id}, _EndpointRow)]


def delete_endpoint(business_id: str, endpoint_id: str) -> Job[None]:
    """Writer job of DeleteWebhookEndpoint: the endpoint and its messages go."""

    def job(tx: Tx) -> None:
        tx.lock_business(business_id)
        values = {"business_id": business_id, "endpoint_id": endpoint_id}
        if not sql.run(tx.conn, _DELETE_ENDPOINT, values).rowcount:
            raise _not_found("webhook endpoint", endpoint_id)
        sql.run(tx.conn, _DELETE_ENDPOINT_ATTEMPTS, values)
        sql.run(tx.conn, _DELETE_ENDPOINT_MESSAGES, values)
        sql.run(tx.conn, _DELETE_ENDPOINT_THRESHOLDS, values)

    return job


def threshold_endpoints(conn: Any, business_id: str) -> list[Endpoint]:
    """A business's enabled endpoints that want campaign.failure_rate."""
    return [
        e
        for e in list_endpoints(conn, business_id)
        if e.disabled_at is None and rules.CAMPAIGN_FAILURE_RATE in e.events and e.failure_rate is not None
    ]


def first_time(tx: Tx, endpoint_id: str, cid: int, event_type: str, *, business_id: str) -> bool:
    """Record that `endpoint_id` (of `business_id`) got `event_type` for
    campaign `cid`; False if it already had."""
    values = {"business_id": business_id, "endpoint_id": endpoint_id, "cid": cid, "type": event_type}
    return bool(sql.run(tx.conn, _FIRST_TIME, values).rowcount == 1)


# -- the outbox --------------------------------------------------------------------------
def emit(
    tx: Tx, business_id: str, event_type: str, data: dict[str, object], endpoint_ids: set[str] | None = None
) -> int:
    """Write one outbox message of `event_type` for each enabled endpoint of
    the business that wants it (only those of `endpoint_ids` if given), due
    at once. Returns how many."""
    rows = []
    for endpoint in list_endpoints(tx.conn, business_id):
        if endpoint.disabled_at is not None or event_type not in endpoint.events:
            continue
        if endpoint_ids is not None and endpoint.endpoint_id not in endpoint_ids:
            continue
        rows.append(
            {
                "message_id": rules.new_id("msg"),
                "business_id": business_id,
                "endpoint_id": endpoint.endpoint_id,
                "type": event_type,
                "body": rules.body(event_type, tx.now_us, data),
                "create_time": tx.now_us,
                "state": rules.PENDING,
                "next_attempt_at": tx.now_us,
            }
        )
    if rows:
        sql.run_many(tx.conn, _EMIT, rows)
    return len(rows)


def due(conn: Any, now_us: int, limit: int) -> list[Due]:
    """Pending messages whose next attempt is due, oldest due first."""
    return [
        Due(Message(*(getattr(row, name) for name in _MessageRow._fields)), row.url, row.secret)
        for row in sql.records(conn, _DUE, {"now": now_us, "limit": limit}, _DueRow)
    ]


def claim(limit: int, hold_us: int) -> Job[list[Due]]:
    """Writer job of the delivery worker: up to `limit` due messages, each
    moved to be due again `hold_us` later, so that no other server sharing
    the database (PostgreSQL replicas) sends it meanwhile; the attempt's
    record_attempt then sets its real next attempt. A message another
    server claimed first (its conditional UPDATE changed no row) is left out."""

    def job(tx: Tx) -> list[Due]:
        now = tx.now_us
        claimed = []
        for found in due(tx.conn, now, limit):
            values = {
                "business_id": found.message.business_id,
                "message_id": found.message.message_id,
                "now": now,
                "hold_until": now + hold_us,
            }
            if sql.run(tx.conn, _CLAIM, values).rowcount:
                claimed.append(found)
        return claimed

    return job


def next_due(conn: Any) -> int | None:
    """When the next pending message is due (µs), or None."""
    found = sql.scalar(conn, _NEXT_DUE)
    return None if found is None else int(found)


def record_attempt(
    message_id: str,
    status_code: int,
    latency_us: int,
    error: str,
    *,
    business_id: str,
    retry_base: float,
    retry_window_us: int = rules.RETRY_WINDOW_US,
    disable_after: int = rules.DISABLE_AFTER_FAILURES,
) -> Job[int]:
    """Writer job: one attempt of a message (of `business_id`) and its
    outcome. A success marks the message delivered and resets its
    endpoint's failures; a failure schedules the next attempt (backoff with
    jitter), or, past the retry window, marks the message failed and
    disables the endpoint. Returns the message's state."""

    def job(tx: Tx) -> int:
        conn = tx.conn
        the_message = {"business_id": business_id, "message_id": message_id}
        sent = next(sql.records(conn, _SENT, the_message, _Sent), None)
        if sent is None:  # its endpoint was deleted meanwhile
            return rules.FAILED
        # The retry window and the backoff run from the message's creation,
        # or from its latest redelivery (retry_since, retry_offset).
        attempts, window_start, state = int(sent.attempts) + 1, int(sent.window_start), int(sent.state)
        in_window = attempts - int(sent.retry_offset)
        the_endpoint = {"business_id": business_id, "endpoint_id": str(sent.endpoint_id)}
        now = tx.now_us
        attempt = {"attempt": attempts, "time": now, "status_code": status_code, "latency_us": latency_us}
        sql.run(conn, _RECORD, {**the_message, **attempt, "error": error})
        if rules.is_success(status_code):
            sql.run(conn, _DELIVERED, {**the_message, "attempts": attempts})
            sql.run(conn, _ENDPOINT_OK, the_endpoint)
            return rules.DELIVERED
        why = error or f"HTTP {status_code}"
        next_at = now + int(rules.retry_delay(in_window, retry_base) * 1_000_000)
        within = next_at - window_start <= retry_window_us
        new_state = rules.PENDING if within and state == rules.PENDING else rules.FAILED
        values = {
            **the_message,
            "state": new_state,
            "attempts": attempts,
            "next_attempt_at": next_at if new_state == rules.PENDING else None,
            "last_error": why,
        }
        sql.run(conn, _NOT_DELIVERED, values)
        sql.run(conn, _ENDPOINT_FAILED, {**the_endpoint, "now": now})
        count = int(sql.scalar(conn, _FAILURES, the_endpoint) or 0)
        reason = ""
        if new_state == rules.FAILED:
            reason = f"message {message_id} failed for its whole retry window; last error: {why}"
        elif count >= disable_after:
            reason = f"{count} failed attempts in a row; last error: {why}"
        if reason:
            sql.run(conn, _DISABLE, {**the_endpoint, "now": now, "reason": reason})
            sql.run(conn, _FAIL_PENDING, {**the_endpoint, "last_error": f"endpoint disabled: {reason}"})
            new_state = rules.FAILED
        return new_state

    return job


def list_messages(
    conn: Any, business_id: str, endpoint_id: str, before: tuple[int, str] | None, limit: int
) -> list[tuple[Message, list[Attempt]]]:
    """A business's messages (of one endpoint if `endpoint_id`), newest first,
    after the (create_time, message_id) `before`, each with every attempt."""
    values: dict[str, object] = {"business_id": business_id, "endpoint_id": endpoint_id, "limit": limit}
    if before is not None:
        values["before_time"], values["before_id"] = before
    statement = _MESSAGES[(bool(endpoint_id), before is not None)]
    out = []
    for row in list(sql.records(conn, statement, values, _MessageRow)):
        the_message = {"business_id": business_id, "message_id": row.message_id}
        attempts = [Attempt(*a) for a in sql.records(conn, _ATTEMPTS, the_message, _AttemptRow)]
        out.append((_message(row), attempts))
    return out


def redeliver(business_id: str, message_id: str) -> Job[None]:
    """Writer job of RedeliverWebhook: the message is pending again, due now,
    with the same webhook-id (its earlier attempts stay listed), and starts a
    new retry window: it is retried for the window from now, the backoff
    from its first delay, however old the message is. A disabled endpoint
    must be re-created first (FAILED_PRECONDITION)."""

    def job(tx: Tx) -> None:
        the_message = {"business_id": business_id, "message_id": message_id}
        found = next(sql.records(tx.conn, _REDELIVERABLE, the_message, _Redeliverable), None)
        if found is None:
            raise _not_found("webhook delivery", message_id)
        if found.disabled_at is not None:
            raise FailedPrecondition("its endpoint is disabled", reason="ENDPOINT_DISABLED")
        sql.run(tx.conn, _REDELIVER, {**the_message, "now": tx.now_us})

    return job


def prune(retention_us: int = rules.LOG_RETENTION_US, limit: int = 1000) -> Job[int]:
    """Writer job: forget up to `limit` delivered or failed messages (with
    their attempts) older than `retention_us`. Returns how many."""

    def job(tx: Tx) -> int:
        values = {"before": tx.now_us - retention_us, "limit": limit}
        old = [row._asdict() for row in sql.records(tx.conn, _OLD, values, _Old)]
        if old:
            sql.run_many(tx.conn, _FORGET_ATTEMPTS, old)
            sql.run_many(tx.conn, _FORGET_MESSAGE, old)
        return len(old)

    return job


# -- formats (Slack and email targets) ---------------------------------------------------------
_SET_FORMAT = (
    update(webhook_endpoints)
    .where(
        webhook_endpoints.c.business_id == bindparam("business_id"),
        webhook_endpoints.c.endpoint_id == bindparam("endpoint_id"),
    )
    .values(format=bindparam("format"))
)
_FORMATS = select(webhook_endpoints.c.endpoint_id, webhook_endpoints.c.format).where(
    webhook_endpoints.c.business_id == bindparam("business_id"),
    webhook_endpoints.c.endpoint_id.in_(bindparam("ids", expanding=True)),
)


def _formats(conn: Any, business_id: str, endpoint_ids: set[str]) -> dict[str, int]:
    if not endpoint_ids:
        return {}
    values = {"business_id": business_id, "ids": sorted(endpoint_ids)}
    return {str(e): int(f) for e, f in sql.run(conn, _FORMATS, values)}


def create_target(business_id: str, draft: rules.EndpointDraft, secret: str) -> Job[Endpoint]:
    """Writer job of CreateWebhookEndpoint for any format (the draft checked
    and its format resolved): the endpoint, then its format, in one transaction."""
    make = create_endpoint(business_id, draft, secret)

    def job(tx: Tx) -> Endpoint:
        endpoint = make(tx)
        if draft.format != rules.STANDARD:
            values = {"business_id": business_id, "endpoint_id": endpoint.endpoint_id, "format": draft.format}
            sql.run(tx.conn, _SET_FORMAT, values)
        return dataclasses.replace(endpoint, format=draft.format)

    return job


def list_targets(conn: Any, business_id: str) -> list[Endpoint]:
    """list_endpoints with each endpoint's format."""
    found = list_endpoints(conn, business_id)
    formats = _formats(conn, business_id, {e.endpoint_id for e in found})
    return [dataclasses.replace(e, format=formats.get(e.endpoint_id, rules.STANDARD)) for e in found]


def claim_targets(limit: int, hold_us: int) -> Job[list[Due]]:
    """claim, each message with its endpoint's format (how it is sent)."""
    take = claim(limit, hold_us)

    def job(tx: Tx) -> list[Due]:
        claimed = take(tx)
        formats: dict[str, int] = {}
        for business_id in {d.message.business_id for d in claimed}:
            mine = {d.message.endpoint_id for d in claimed if d.message.business_id == business_id}
            formats.update(_formats(tx.conn, business_id, mine))
        return [dataclasses.replace(d, format=formats.get(d.message.endpoint_id, rules.STANDARD)) for d in claimed]

    return job
