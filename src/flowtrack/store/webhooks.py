"""Webhook endpoints, the outbox of their messages, and delivery attempts.

`emit` is called inside writer jobs and pre-commit hooks: the outbox rows
commit with the change that caused them, or not at all.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select, update

from flowtrack.domain import webhooks as rules
from flowtrack.domain.errors import FailedPrecondition, NotFound, ResourceExhausted
from flowtrack.store import sql
from flowtrack.store.schema import webhook_endpoints
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


_ENDPOINT = (
    "endpoint_id, business_id, url, description, events, failure_rate, min_submitted, create_time,"
    " disabled_at, disabled_reason, failures"
)
_MESSAGE = "message_id, business_id, endpoint_id, type, body, create_time, state, attempts, next_attempt_at, last_error"


def _endpoint(row: tuple[object, ...]) -> Endpoint:
    values = list(row)
    values[4] = tuple(json.loads(str(values[4])))
    return Endpoint(*values)  # type: ignore[arg-type]


def _message(row: tuple[object, ...]) -> Message:
    return Message(*row)  # type: ignore[arg-type]


def _not_found(what: str, ident: str) -> NotFound:
    return NotFound(f"{what} {ident!r} does not exist", reason=f"{what.upper().replace(' ', '_')}_NOT_FOUND")


# -- endpoints -------------------------------------------------------------------------
def create_endpoint(business_id: str, draft: rules.EndpointDraft, secret: str) -> Job[Endpoint]:
    """Writer job of CreateWebhookEndpoint (the draft already checked)."""

    def job(tx: Tx) -> Endpoint:
        tx.lock_business(business_id)  # the bound holds across replicas
        (count,) = tx.conn.execute(
            "SELECT count(*) FROM webhook_endpoints WHERE business_id = ?", (business_id,)
        ).fetchone()
        if count >= rules.MAX_ENDPOINTS:
            raise ResourceExhausted(
                f"a business has at most {rules.MAX_ENDPOINTS} webhook endpoints; delete one first",
                reason="TOO_MANY_ENDPOINTS",
            )
        endpoint_id = rules.new_id("ep")
        tx.conn.execute(
            "INSERT INTO webhook_endpoints (endpoint_id, business_id, url, description, events, secret,"
            " failure_rate, min_submitted, create_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                endpoint_id,
                business_id,
                draft.url,
                draft.description,
                json.dumps(list(draft.events)),
                secret,
                draft.failure_rate,
                draft.min_submitted,
                tx.now_us,
            ),
        )
        return Endpoint(
            endpoint_id, business_id, draft.url, draft.description, draft.events,
            draft.failure_rate, draft.min_submitted, tx.now_us, None, "", 0,
        )  # fmt: skip

    return job


def list_endpoints(conn: sqlite3.Connection, business_id: str) -> list[Endpoint]:
    """A business's endpoints, oldest first (at most MAX_ENDPOINTS)."""
    return [
        _endpoint(row)
        for row in conn.execute(
            f"SELECT {_ENDPOINT} FROM webhook_endpoints WHERE business_id = ? ORDER BY create_time, endpoint_id",
            (business_id,),
        )
    ]


def delete_endpoint(business_id: str, endpoint_id: str) -> Job[None]:
    """Writer job of DeleteWebhookEndpoint: the endpoint and its messages go."""

    def job(tx: Tx) -> None:
        tx.lock_business(business_id)
        deleted = tx.conn.execute(
            "DELETE FROM webhook_endpoints WHERE business_id = ? AND endpoint_id = ?", (business_id, endpoint_id)
        ).rowcount
        if not deleted:
            raise _not_found("webhook endpoint", endpoint_id)
        tx.conn.execute(
            "DELETE FROM webhook_attempts WHERE message_id IN"
            " (SELECT message_id FROM webhook_messages WHERE business_id = ? AND endpoint_id = ?)",
            (business_id, endpoint_id),
        )
        tx.conn.execute(
            "DELETE FROM webhook_messages WHERE business_id = ? AND endpoint_id = ?", (business_id, endpoint_id)
        )
        tx.conn.execute("DELETE FROM webhook_thresholds WHERE endpoint_id = ?", (endpoint_id,))

    return job


def threshold_endpoints(conn: sqlite3.Connection, business_id: str) -> list[Endpoint]:
    """A business's enabled endpoints that want campaign.failure_rate."""
    return [
        e
        for e in list_endpoints(conn, business_id)
        if e.disabled_at is None and rules.CAMPAIGN_FAILURE_RATE in e.events and e.failure_rate is not None
    ]


def first_time(tx: Tx, endpoint_id: str, cid: int, event_type: str) -> bool:
    """Record that `endpoint_id` got `event_type` for campaign `cid`; False if it already had."""
    cursor = tx.conn.execute(
        "INSERT OR IGNORE INTO webhook_thresholds (endpoint_id, cid, type) VALUES (?, ?, ?)",
        (endpoint_id, cid, event_type),
    )
    return cursor.rowcount == 1


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
            (
                rules.new_id("msg"),
                business_id,
                endpoint.endpoint_id,
                event_type,
                rules.body(event_type, tx.now_us, data),
                tx.now_us,
                rules.PENDING,
                tx.now_us,
            )
        )
    tx.conn.executemany(
        "INSERT INTO webhook_messages (message_id, business_id, endpoint_id, type, body, create_time, state,"
        " next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    return len(rows)


def due(conn: sqlite3.Connection, now_us: int, limit: int) -> list[Due]:
    """Pending messages whose next attempt is due, oldest due first."""
    return [
        Due(_message(row[:10]), row[10], row[11])
        for row in conn.execute(
            f"SELECT {', '.join('m.' + c.strip() for c in _MESSAGE.split(','))}, e.url, e.secret"
            " FROM webhook_messages m JOIN webhook_endpoints e USING (endpoint_id)"
            " WHERE m.state = 1 AND m.next_attempt_at <= ? ORDER BY m.next_attempt_at LIMIT ?",
            (now_us, limit),
        )
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
            moved = tx.conn.execute(
                "UPDATE webhook_messages SET next_attempt_at = ?"
                " WHERE business_id = ? AND message_id = ? AND state = 1 AND next_attempt_at <= ?",
                (now + hold_us, found.message.business_id, found.message.message_id, now),
            ).rowcount
            if moved:
                claimed.append(found)
        return claimed

    return job


def next_due(conn: sqlite3.Connection) -> int | None:
    """When the next pending message is due (µs), or None."""
    row = conn.execute("SELECT min(next_attempt_at) FROM webhook_messages WHERE state = 1").fetchone()
    return None if row is None or row[0] is None else int(row[0])


def record_attempt(
    message_id: str,
    status_code: int,
    latency_us: int,
    error: str,
    *,
    retry_base: float,
    retry_window_us: int = rules.RETRY_WINDOW_US,
    disable_after: int = rules.DISABLE_AFTER_FAILURES,
) -> Job[int]:
    """Writer job: one attempt of a message and its outcome. A success marks
    the message delivered and resets its endpoint's failures; a failure
    schedules the next attempt (backoff with jitter), or, past the retry
    window, marks the message failed and disables the endpoint. Returns the
    message's state."""

    def job(tx: Tx) -> int:
        conn = tx.conn
        row = conn.execute(
            "SELECT attempts, coalesce(retry_since, create_time), endpoint_id, state, retry_offset"
            " FROM webhook_messages WHERE message_id = ?",
            (message_id,),
        ).fetchone()
        if row is None:  # its endpoint was deleted meanwhile
            return rules.FAILED
        # The retry window and the backoff run from the message's creation,
        # or from its latest redelivery (retry_since, retry_offset).
        attempts, window_start, endpoint_id, state = int(row[0]) + 1, int(row[1]), str(row[2]), int(row[3])
        in_window = attempts - int(row[4])
        now = tx.now_us
        conn.execute(
            "INSERT INTO webhook_attempts (message_id, attempt, time, status_code, latency_us, error)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (message_id, attempt) DO UPDATE SET time = excluded.time,"
            " status_code = excluded.status_code, latency_us = excluded.latency_us, error = excluded.error",
            (message_id, attempts, now, status_code, latency_us, error),
        )
        if rules.is_success(status_code):
            conn.execute(
                "UPDATE webhook_messages SET state = 2, attempts = ?, next_attempt_at = NULL, last_error = ''"
                " WHERE message_id = ?",
                (attempts, message_id),
            )
            conn.execute(
                "UPDATE webhook_endpoints SET failures = 0, failing_since = NULL WHERE endpoint_id = ?", (endpoint_id,)
            )
            return rules.DELIVERED
        why = error or f"HTTP {status_code}"
        next_at = now + int(rules.retry_delay(in_window, retry_base) * 1_000_000)
        within = next_at - window_start <= retry_window_us
        new_state = rules.PENDING if within and state == rules.PENDING else rules.FAILED
        conn.execute(
            "UPDATE webhook_messages SET state = ?, attempts = ?, next_attempt_at = ?, last_error = ?"
            " WHERE message_id = ?",
            (new_state, attempts, next_at if new_state == rules.PENDING else None, why, message_id),
        )
        conn.execute(
            "UPDATE webhook_endpoints SET failures = failures + 1, failing_since = coalesce(failing_since, ?)"
            " WHERE endpoint_id = ?",
            (now, endpoint_id),
        )
        failures = conn.execute("SELECT failures FROM webhook_endpoints WHERE endpoint_id = ?", (endpoint_id,))
        (count,) = failures.fetchone() or (0,)
        reason = ""
        if new_state == rules.FAILED:
            reason = f"message {message_id} failed for its whole retry window; last error: {why}"
        elif count >= disable_after:
            reason = f"{count} failed attempts in a row; last error: {why}"
        if reason:
            conn.execute(
                "UPDATE webhook_endpoints SET disabled_at = coalesce(disabled_at, ?), disabled_reason = ?"
                " WHERE endpoint_id = ? AND disabled_at IS NULL",
                (now, reason, endpoint_id),
            )
            # A disabled endpoint gets nothing more: its pending messages fail.
            conn.execute(
                "UPDATE webhook_messages SET state = 3, next_attempt_at = NULL,"
                " last_error = 'endpoint disabled: ' || ? WHERE endpoint_id = ? AND state = 1",
                (reason, endpoint_id),
            )
            new_state = rules.FAILED
        return new_state

    return job


def list_messages(
    conn: sqlite3.Connection, business_id: str, endpoint_id: str, before: tuple[int, str] | None, limit: int
) -> list[tuple[Message, list[Attempt]]]:
    """A business's messages (of one endpoint if `endpoint_id`), newest first,
    after the (create_time, message_id) `before`, each with every attempt."""
    sql = [f"SELECT {_MESSAGE} FROM webhook_messages WHERE business_id = ?"]
    args: list[object] = [business_id]
    if endpoint_id:
        sql.append("AND endpoint_id = ?")
        args.append(endpoint_id)
    if before is not None:
        sql.append("AND (create_time, message_id) < (?, ?)")
        args.extend(before)
    sql.append("ORDER BY create_time DESC, message_id DESC LIMIT ?")
    args.append(limit)
    out = []
    for row in conn.execute(" ".join(sql), args).fetchall():
        message = _message(row)
        attempts = [
            Attempt(*a)
            for a in conn.execute(
                "SELECT attempt, time, status_code, latency_us, error FROM webhook_attempts"
                " WHERE message_id = ? ORDER BY attempt",
                (message.message_id,),
            )
        ]
        out.append((message, attempts))
    return out


def redeliver(business_id: str, message_id: str) -> Job[None]:
    """Writer job of RedeliverWebhook: the message is pending again, due now,
    with the same webhook-id (its earlier attempts stay listed), and starts a
    new retry window: it is retried for the window from now, the backoff
    from its first delay, however old the message is. A disabled endpoint
    must be re-created first (FAILED_PRECONDITION)."""

    def job(tx: Tx) -> None:
        row = tx.conn.execute(
            "SELECT e.disabled_at FROM webhook_messages m JOIN webhook_endpoints e USING (endpoint_id)"
            " WHERE m.business_id = ? AND m.message_id = ?",
            (business_id, message_id),
        ).fetchone()
        if row is None:
            raise _not_found("webhook delivery", message_id)
        if row[0] is not None:
            raise FailedPrecondition("its endpoint is disabled", reason="ENDPOINT_DISABLED")
        tx.conn.execute(
            "UPDATE webhook_messages SET state = 1, next_attempt_at = ?, retry_since = ?, retry_offset = attempts"
            " WHERE message_id = ?",
            (tx.now_us, tx.now_us, message_id),
        )

    return job


def prune(retention_us: int = rules.LOG_RETENTION_US, limit: int = 1000) -> Job[int]:
    """Writer job: forget up to `limit` delivered or failed messages (with
    their attempts) older than `retention_us`. Returns how many."""

    def job(tx: Tx) -> int:
        old = [
            row[0]
            for row in tx.conn.execute(
                "SELECT message_id FROM webhook_messages WHERE create_time < ? AND state != 1 LIMIT ?",
                (tx.now_us - retention_us, limit),
            )
        ]
        tx.conn.executemany("DELETE FROM webhook_attempts WHERE message_id = ?", [(m,) for m in old])
        tx.conn.executemany("DELETE FROM webhook_messages WHERE message_id = ?", [(m,) for m in old])
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


def list_targets(conn: sqlite3.Connection, business_id: str) -> list[Endpoint]:
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
