"""Commit notification on PostgreSQL: the committing transaction NOTIFYs
`flowtrack_commits` with the sequences and campaigns it changed (`notify`);
each replica LISTENs on a connection of its own (`Listener`) and passes every
replica's commits to its writer's `on_commit` listeners."""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Callable
from typing import Any

import psycopg
from sqlalchemy import bindparam, func, select

from flowtrack.store import sql
from flowtrack.store.pg.conn import observe
from flowtrack.store.schema import businesses, campaigns
from flowtrack.store.writer import Writer

log = logging.getLogger(__name__)

CHANNEL = "flowtrack_commits"
_NOTIFY_BYTES = 7000  # under PostgreSQL's 8000-byte payload limit
_NOTIFY = select(func.pg_notify(bindparam("channel"), bindparam("payload")))
_EVERY_SEQUENCE = select(businesses.c.business_id, businesses.c.last_sequence)
_CHANGED_SINCE = select(campaigns.c.cid).where(
    campaigns.c.business_id == bindparam("business_id"), campaigns.c.last_sequence > bindparam("since")
)


def notify(conn: Any, sequences: dict[str, int], cids: list[int]) -> None:
    """NOTIFY every replica (this one included) of what the running
    transaction changes; delivered at COMMIT, never for a rollback."""
    if not sequences and not cids:
        return
    payloads = []
    chunk: list[int] = []
    for cid in cids:
        chunk.append(cid)
        if len(chunk) >= 400:
            payloads.append(chunk)
            chunk = []
    payloads.append(chunk)
    for i, some in enumerate(payloads):
        payload = json.dumps({"s": sequences if i == 0 else {}, "c": some}, separators=(",", ":"))
        if len(payload) > _NOTIFY_BYTES:  # many businesses in one commit: one notice each
            for business_id, seq in sequences.items():
                sql.run(conn, _NOTIFY, {"channel": CHANNEL, "payload": json.dumps({"s": {business_id: seq}})})
            payload = json.dumps({"s": {}, "c": some})
        sql.run(conn, _NOTIFY, {"channel": CHANNEL, "payload": payload})


class Listener:
    """One LISTEN connection per replica: every commit of every replica
    reaches the writer's on_commit listeners.

    A payload that is not flowtrack's (a stray `NOTIFY flowtrack_commits,
    'x'`) is logged and skipped. A lost connection (the server restarted,
    pg_terminate_backend, a network cut) is opened again with backoff (0.1 s
    doubling to BACKOFF_MAX, with jitter); once listening again, the commits
    made meanwhile are found from the businesses' sequences and passed on
    like notifications, so watchers miss nothing but the latency. While it
    is not listening, `connected` is False and the `on_state` callbacks are
    told (health turns the report service NOT_SERVING: its watchers would
    not see other replicas' commits)."""

    BACKOFF_MAX = 5.0

    def __init__(self, url: str, writer: Writer) -> None:
        self.url = url
        self._writer = writer
        self._stop = threading.Event()
        self.ready = threading.Event()
        self.connected = False
        self.reconnects = 0  # connections opened after a loss
        self.bad_payloads = 0
        self._callbacks: list[Callable[[bool], None]] = []
        self._seen: dict[str, int] = {}  # business -> last sequence passed on
        self._primed = False
        self._thread = threading.Thread(target=self._run, name="flowtrack-listen", daemon=True)
        self._thread.start()

    def on_state(self, callback: Callable[[bool], None]) -> None:
        """Call `callback(connected)` (in the LISTEN thread) whenever it connects or loses its connection."""
        self._callbacks.append(callback)

    def _set(self, connected: bool) -> None:
        if connected == self.connected:
            return
        self.connected = connected
        for callback in self._callbacks:
            try:
                callback(connected)
            except Exception:  # pragma: no cover - a callback must not stop the LISTEN thread
                log.exception("LISTEN state callback failed")

    def _run(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self.url, autocommit=True, application_name="flowtrack-listen", connect_timeout=10
                ) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._catch_up(conn)
                    if self.ready.is_set():
                        self.reconnects += 1
                        log.warning("LISTEN connection open again: watchers see other replicas' commits")
                    self._set(True)
                    self.ready.set()
                    delay = 0.1
                    while not self._stop.is_set():
                        for notice in conn.notifies(timeout=0.2):
                            self._deliver(notice.payload)
            except Exception as error:  # psycopg.Error, OSError: the connection is gone
                self._set(False)
                if self._stop.is_set():
                    return
                log.warning("LISTEN connection lost or refused (%s); trying again in %.1f s", str(error).strip(), delay)
                self._stop.wait(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, self.BACKOFF_MAX)
        self._set(False)

    def _deliver(self, payload: str) -> None:
        """Pass one notification on; one that is not flowtrack's is skipped."""
        try:
            data = json.loads(payload)
            changed = {str(b): int(s) for b, s in dict(data.get("s", {})).items()}
            touched = {int(c) for c in data.get("c", [])}
        except (ValueError, TypeError, AttributeError):
            self.bad_payloads += 1
            log.warning("skipped a notification on %s that is not flowtrack's: %.80r", CHANNEL, payload)
            return
        for business_id, seq in changed.items():
            if seq > self._seen.get(business_id, 0):
                self._seen[business_id] = seq
        self._writer.notify(changed, touched)

    def _catch_up(self, conn: psycopg.Connection[Any]) -> None:
        """After (re)connecting, LISTEN already on: the businesses whose
        sequence moved since the last notification seen, and their
        campaigns that changed, as if notified (nothing at the first connect)."""
        every = sql.compile_for(_EVERY_SEQUENCE, sql.POSTGRESQL).text
        observe(every)
        rows = {str(b): int(s) for b, s in conn.execute(every)}
        before, primed = dict(self._seen), self._primed
        self._seen.update(rows)
        self._primed = True
        if not primed:
            return
        changed = {b: s for b, s in rows.items() if s > before.get(b, 0)}
        if not changed:
            return
        touched: set[int] = set()
        since = sql.compile_for(_CHANGED_SINCE, sql.POSTGRESQL).text
        observe(since)
        for business_id in changed:
            values = {"business_id": business_id, "since": before.get(business_id, 0)}
            touched.update(int(cid) for (cid,) in conn.execute(since, values))
        self._writer.notify(changed, touched)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
