"""The writer's transaction (`Tx`) and what a backend does for the writer (`Backend`).

A job sees a `Tx`: its connection, the transaction's clock, the business
sequences it hands out, the counter deltas it adds up, the campaigns it
touches. The writer (store/writer.py) drives the other side of it, one
method per step of a group commit: `keep_job` after a job that succeeded,
`drop_job` after one that failed (its savepoint undone), `flush` before
COMMIT, `committed` after it, `reset` after a rollback.

`Backend` is the small part of the writer that differs between the
databases (store/sqlite/writer.py, store/pg/writer.py): how to open the write
connection, begin and commit, what an error means (retry the batch, fail it,
or nobody can tell whether it committed), and how the commit is told to the
watchers (in-process on SQLite, NOTIFY on PostgreSQL).
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import bindparam, func, select
from sqlalchemy.sql.elements import BindParameter

from flowtrack.domain.errors import FlowtrackError
from flowtrack.store import sql
from flowtrack.store.db import Rows, execute_rows
from flowtrack.store.schema import businesses, campaigns, counters

CounterKey = tuple[str, int, str, str]  # (business_id, cid, scope, name)
# A campaign's change in one transaction: (first event time, last event time, last sequence).
CampaignTouch = tuple[int | None, int | None, int]


@dataclass
class Delta:
    """What one job (or one transaction) changed beyond its SQL: merged into
    the transaction's when the job succeeds, written at COMMIT."""

    counters: defaultdict[CounterKey, int] = field(default_factory=lambda: defaultdict(int))
    sequences: dict[str, int] = field(default_factory=dict)
    campaigns: dict[int, CampaignTouch] = field(default_factory=dict)
    owners: dict[int, str] = field(default_factory=dict)  # the business of each campaign touched
    forgotten: set[int] = field(default_factory=set)  # campaigns deleted by the job


# The counters' upsert at COMMIT (sorted keys: replicas lock them in one order).
COUNTERS = Rows(
    counters,
    ("business_id", "cid", "scope", "name", "value"),
    lambda insert: insert.on_conflict_do_update(
        index_elements=[counters.c.business_id, counters.c.cid, counters.c.scope, counters.c.name],
        set_={"value": counters.c.value + insert.excluded.value},
    ),
)
_FIRST: BindParameter[Any] = bindparam("first")
_LAST: BindParameter[Any] = bindparam("last")
_SEQ: BindParameter[Any] = bindparam("seq")
# A campaign's first and last event times and sequence, widened by a transaction.
_WIDEN_CAMPAIGN = sql.PerDialect(
    # SQLite's two-argument min/max are NULL if either is: coalesce both ways.
    campaigns.update()
    .where(campaigns.c.business_id == bindparam("business_id"), campaigns.c.cid == bindparam("cid"))
    .values(
        first_event_at=func.min(
            func.coalesce(campaigns.c.first_event_at, _FIRST), func.coalesce(_FIRST, campaigns.c.first_event_at)
        ),
        last_event_at=func.max(
            func.coalesce(campaigns.c.last_event_at, _LAST), func.coalesce(_LAST, campaigns.c.last_event_at)
        ),
        last_sequence=func.max(campaigns.c.last_sequence, _SEQ),
    ),
    # PostgreSQL's least/greatest skip NULLs.
    campaigns.update()
    .where(campaigns.c.business_id == bindparam("business_id"), campaigns.c.cid == bindparam("cid"))
    .values(
        first_event_at=func.least(
            campaigns.c.first_event_at, bindparam("first", type_=campaigns.c.first_event_at.type)
        ),
        last_event_at=func.greatest(campaigns.c.last_event_at, bindparam("last", type_=campaigns.c.last_event_at.type)),
        last_sequence=func.greatest(campaigns.c.last_sequence, bindparam("seq", type_=campaigns.c.last_sequence.type)),
    ),
)
_SEQUENCE = select(businesses.c.last_sequence).where(businesses.c.business_id == bindparam("business_id"))
_SAVE_SEQUENCES = sql.insert_on_both(
    lambda insert: (
        ins := insert(businesses).values(business_id=bindparam("business_id"), last_sequence=bindparam("seq"))
    ).on_conflict_do_update(
        index_elements=[businesses.c.business_id], set_={"last_sequence": ins.excluded.last_sequence}
    )
)


class Tx:
    """The writer's open transaction, as a job sees it (and, through the
    methods of its last section, as the writer drives it)."""

    def __init__(self, conn: Any, sequences: dict[str, int]) -> None:
        self.conn = conn
        self._committed_sequences = sequences
        self._tx = Delta()
        self._job = Delta()
        self.now_us = 0  # the transaction's clock, set by the writer

    # -- sequences ---------------------------------------------------------
    def last_sequence(self, business_id: str) -> int:
        for delta in (self._job, self._tx):
            if business_id in delta.sequences:
                return delta.sequences[business_id]
        if business_id not in self._committed_sequences:
            found = sql.scalar(self.conn, _SEQUENCE, {"business_id": business_id})
            self._committed_sequences[business_id] = found or 0
        return self._committed_sequences[business_id]

    def lock_business(self, business_id: str) -> None:
        """Called by a job before it reads what it will change of a business.
        The single SQLite writer needs no lock; the PostgreSQL Tx
        (store/pg/writer.py) locks the business's row here, so that replicas
        serialise their writes of one business."""

    def next_sequence(self, business_id: str) -> int:
        seq = self.last_sequence(business_id) + 1
        self._job.sequences[business_id] = seq
        return seq

    # -- counters ----------------------------------------------------------
    def count(self, business_id: str, cid: int, scope: str, name: str, delta: int) -> None:
        """Add `delta` to counter (scope, name) of campaign `cid` of `business_id` at COMMIT."""
        self._job.counters[(business_id, cid, scope, name)] += delta

    def forget_campaign(self, cid: int) -> None:
        """The job deleted campaign `cid`: drop every counter change of it that
        this transaction holds, so that nothing of it is written at COMMIT."""
        self._job.forgotten.add(cid)
        for key in [key for key in self._job.counters if key[1] == cid]:
            del self._job.counters[key]

    def touch_campaign(self, business_id: str, cid: int, occurred_at: int | None, sequence: int) -> None:
        """Record that an event at `occurred_at` with `sequence` touched `cid` (of `business_id`)."""
        first, last, _ = self._job.campaigns.get(cid) or self._tx.campaigns.get(cid) or (None, None, 0)
        if occurred_at is not None:
            first = occurred_at if first is None else min(first, occurred_at)
            last = occurred_at if last is None else max(last, occurred_at)
        self._job.campaigns[cid] = (first, last, sequence)
        self._job.owners[cid] = business_id

    def business_of(self, cid: int) -> str:
        """The business of a campaign this transaction touched."""
        return self._job.owners.get(cid) or self._tx.owners[cid]

    def touched(self) -> dict[int, tuple[str, bool]]:
        """The campaigns this transaction's kept jobs touched, each with its
        business and whether an event (not only a campaign change) touched it."""
        owners = self._tx.owners
        return {cid: (owners[cid], first is not None) for cid, (first, _, _) in self._tx.campaigns.items()}

    def pending_sequences(self) -> dict[str, int]:
        """The businesses' last sequences as this transaction leaves them (kept jobs)."""
        return dict(self._tx.sequences)

    # -- the writer's side: one method per step of a group commit ------------
    def keep_job(self) -> set[int]:
        """The running job succeeded: merge its changes into the
        transaction's. Returns the campaigns it touched."""
        job = self._job
        for cid in job.forgotten:
            for key in [key for key in self._tx.counters if key[1] == cid]:
                del self._tx.counters[key]
            self._tx.campaigns.pop(cid, None)
            self._tx.owners.pop(cid, None)
        for key, value in job.counters.items():
            self._tx.counters[key] += value
        self._tx.sequences.update(job.sequences)
        self._tx.campaigns.update(job.campaigns)
        self._tx.owners.update(job.owners)
        self._job = Delta()
        return set(job.campaigns)

    def drop_job(self) -> None:
        """The running job failed (its savepoint was rolled back): forget its changes."""
        self._job = Delta()

    def flush(self) -> None:
        """Write the transaction's counters, campaign times and sequences
        (just before COMMIT)."""
        conn = self.conn
        execute_rows(
            conn,
            COUNTERS,
            [(*key, value) for key, value in sorted(self._tx.counters.items()) if value],
        )
        if self._tx.campaigns:
            sql.run_many(
                conn,
                _WIDEN_CAMPAIGN,
                [
                    {"first": first, "last": last, "seq": seq, "business_id": self._tx.owners[cid], "cid": cid}
                    for cid, (first, last, seq) in sorted(self._tx.campaigns.items())
                ],
            )
        self.flush_sequences()

    def flush_sequences(self) -> None:
        """Write the businesses' last sequences (SQLite: an upsert; the
        PostgreSQL Tx updates the rows it locked)."""
        if self._tx.sequences:
            sql.run_many(
                self.conn,
                _SAVE_SEQUENCES,
                [{"business_id": business_id, "seq": seq} for business_id, seq in sorted(self._tx.sequences.items())],
            )

    def committed(self) -> dict[str, int]:
        """The transaction committed: the businesses' sequences it moved
        (now the committed ones), and a fresh start."""
        self._committed_sequences.update(self._tx.sequences)
        changed = dict(self._tx.sequences)
        self._tx = Delta()
        return changed

    def reset(self) -> None:
        """The transaction was rolled back (or its connection lost): forget
        everything it held, and what the writer knew of committed sequences."""
        self._tx = Delta()
        self._job = Delta()
        self._committed_sequences.clear()


class ErrorKind(enum.Enum):
    """What an error met while running a batch means for it."""

    RETRYABLE = "retryable"  # refused by the database for now (deadlock...): run the whole batch again
    PERMANENT = "permanent"  # nothing of the batch stays: every job gets the error
    OUTCOME_UNKNOWN = "outcome-unknown"  # COMMIT lost its answer: stored or not, nobody can tell


class CommitOutcomeUnknown(Exception):
    """The connection was lost while COMMIT was on its way: the transaction
    may have committed or not, and nobody here can tell which."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class Backend(Protocol):
    """What the writer needs of a database (store/sqlite/writer.py, store/pg/writer.py)."""

    retries: int  # tries of a batch that meets RETRYABLE errors (1: never retried)
    errors: tuple[type[BaseException], ...]  # the driver's errors

    def open(self) -> Any:
        """A new write connection (at start, and after one was lost or closed)."""

    def closed(self, conn: Any) -> bool:
        """Whether `conn` can no longer be used."""

    def new_tx(self, conn: Any, sequences: dict[str, int]) -> Tx:
        """The transaction object the writer's jobs see."""

    def in_transaction(self, conn: Any) -> bool: ...

    def control(self, conn: Any, statement: str) -> None:
        """Run a transaction-control statement (BEGIN, COMMIT, ROLLBACK,
        SAVEPOINT job, ROLLBACK TO job, RELEASE job)."""

    def begin(self, conn: Any) -> None: ...

    def commit(self, conn: Any) -> None:
        """COMMIT; raises CommitOutcomeUnknown when its answer was lost."""

    def classify(self, error: BaseException) -> ErrorKind: ...

    def fault(self, error: BaseException) -> FlowtrackError | None:
        """The client's error when `error` means nothing can be written now
        (full, locked, read-only, unreachable: health turns NOT_SERVING); else None."""

    def job_error(self, error: BaseException) -> BaseException:
        """What the client gets for a job's own error (a driver error is a
        retryable storage error, never an unknown one)."""

    def transaction_lost(self, conn: Any, error: BaseException) -> bool:
        """After a job's (or hook's) `error`: whether the whole transaction
        is gone (rolled back by the database, or its connection lost)."""

    def before_commit(self, tx: Tx, touched: set[int]) -> None:
        """Last step before COMMIT, in the transaction (PostgreSQL: NOTIFY)."""

    def after_commit(self, changed: dict[str, int], touched: set[int], notify: Callable[..., None]) -> None:
        """After a COMMIT: tell the watchers (`notify(changed, touched)`) if
        the backend does it in-process."""

    def probe(self, conn: Any) -> None:
        """A small real write, committed (the unhealthy writer's probe)."""
