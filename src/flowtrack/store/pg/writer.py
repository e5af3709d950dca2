"""The writer's backend on PostgreSQL (store/transaction.py's Backend).

The SQLite writer's queue, bound, group commit, failure contract and health
(store/writer.py), with a PostgreSQL transaction: READ COMMITTED, a
SAVEPOINT per job, the whole batch run again on a deadlock or serialization
failure (jobs are re-runnable), an unknown outcome when the connection is
lost during COMMIT, and the commit told to every replica by NOTIFY
(store/pg/notify.py: the LISTEN thread calls the writer's `notify`).

How the rules of ingest hold with replicas writing at once: every job that
changes a business first locks that business's row (`PgTx.lock_business`)
and keeps it until COMMIT, so one business's transactions run one after the
other whichever replica runs them; sequences are handed out from the locked
row and written back at COMMIT (store/pg/store.py has the whole argument).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from sqlalchemy import bindparam, literal
from sqlalchemy.dialects import postgresql

from flowtrack.domain.errors import FlowtrackError
from flowtrack.store import sql
from flowtrack.store.pg.conn import PgConnection
from flowtrack.store.pg.faults import RETRYABLE, storage_fault, write_error
from flowtrack.store.pg.notify import notify
from flowtrack.store.schema import businesses, server_settings
from flowtrack.store.transaction import CommitOutcomeUnknown, ErrorKind, Tx
from flowtrack.store.writer import Writer

# Lock a business's row for the transaction (made if new), and read its last sequence.
_LOCK_BUSINESS = (
    postgresql.insert(businesses)
    .values(business_id=bindparam("business_id"), last_sequence=literal(0))
    .on_conflict_do_update(
        index_elements=[businesses.c.business_id], set_={"last_sequence": businesses.c.last_sequence}
    )
    .returning(businesses.c.last_sequence)
)
_SAVE_SEQUENCE = (
    businesses.update()
    .where(businesses.c.business_id == bindparam("business_id"))
    .values(last_sequence=bindparam("seq"))
)
_PROBE_KEY = "flowtrack.writer_probe"
_PROBE = (
    postgresql.insert(server_settings)
    .values(key=literal(_PROBE_KEY), value=bindparam("value"))
    .on_conflict_do_update(index_elements=[server_settings.c.key], set_={"value": bindparam("value")})
)
_UNPROBE = server_settings.delete().where(server_settings.c.key == literal(_PROBE_KEY))
_RETRIES = 20


class PgTx(Tx):
    """The writer's transaction on PostgreSQL: sequences come from the locked
    business row of this transaction, never from a cache (another replica
    may have moved them)."""

    def __init__(self, conn: Any) -> None:
        super().__init__(conn, {})
        self._locked: dict[str, int] = {}  # business -> last_sequence as locked
        self._job_locked: set[str] = set()  # locked by the running job (a savepoint undoes it)

    def lock_business(self, business_id: str) -> None:
        if business_id in self._locked:
            return
        value = sql.scalar(self.conn, _LOCK_BUSINESS, {"business_id": business_id})
        assert value is not None
        self._locked[business_id] = int(value)
        self._job_locked.add(business_id)

    def last_sequence(self, business_id: str) -> int:
        for delta in (self._job, self._tx):
            if business_id in delta.sequences:
                return delta.sequences[business_id]
        self.lock_business(business_id)
        return self._locked[business_id]

    def keep_job(self) -> set[int]:
        self._job_locked = set()
        return super().keep_job()

    def drop_job(self) -> None:
        super().drop_job()
        for business_id in self._job_locked:  # ROLLBACK TO released its lock
            self._locked.pop(business_id, None)
        self._job_locked = set()

    def reset(self) -> None:
        super().reset()
        self._locked.clear()
        self._job_locked = set()

    def flush_sequences(self) -> None:
        if self._tx.sequences:  # the rows this transaction locked
            sql.run_many(
                self.conn,
                _SAVE_SEQUENCE,
                [{"business_id": business_id, "seq": seq} for business_id, seq in sorted(self._tx.sequences.items())],
            )

    def committed(self) -> dict[str, int]:
        changed = dict(self._tx.sequences)
        self.reset()
        return changed


class PgBackend:
    """The writer's PostgreSQL side, on a connection of its own to `url`."""

    retries = _RETRIES
    errors: tuple[type[BaseException], ...] = (psycopg.Error,)

    def __init__(self, url: str) -> None:
        self.url = url

    def open(self) -> PgConnection:
        return PgConnection.connect(self.url, application_name="flowtrack-writer")

    def closed(self, conn: Any) -> bool:
        return bool(conn.closed)

    def new_tx(self, conn: Any, sequences: dict[str, int]) -> Tx:
        return PgTx(conn)

    def in_transaction(self, conn: Any) -> bool:
        return bool(conn.in_transaction)

    def control(self, conn: Any, statement: str) -> None:
        conn.control(statement)

    def begin(self, conn: Any) -> None:
        conn.control("BEGIN")  # READ COMMITTED: the writer locks what it changes

    def commit(self, conn: Any) -> None:
        try:
            conn.control("COMMIT")
        except RETRYABLE:
            raise  # refused by the server: rolled back
        except psycopg.OperationalError as error:
            if conn.closed:  # no answer came: committed or not, nobody can say
                raise CommitOutcomeUnknown(error) from error
            raise

    def classify(self, error: BaseException) -> ErrorKind:
        if isinstance(error, RETRYABLE):
            return ErrorKind.RETRYABLE
        if isinstance(error, CommitOutcomeUnknown):
            return ErrorKind.OUTCOME_UNKNOWN
        return ErrorKind.PERMANENT

    def fault(self, error: BaseException) -> FlowtrackError | None:
        return storage_fault(error)

    def job_error(self, error: BaseException) -> BaseException:
        return write_error(error) if isinstance(error, psycopg.Error) else error

    def transaction_lost(self, conn: Any, error: BaseException) -> bool:
        return isinstance(error, psycopg.OperationalError) or bool(conn.closed)

    def before_commit(self, tx: Tx, touched: set[int]) -> None:
        notify(tx.conn, tx.pending_sequences(), sorted(touched | set(tx.touched())))

    def after_commit(self, changed: dict[str, int], touched: set[int], notify: Callable[..., None]) -> None:
        pass  # the LISTEN thread tells the watchers, for every replica's commits

    def probe(self, conn: Any) -> None:
        conn.control("BEGIN")
        sql.run(conn, _PROBE, {"value": bytes(65536)})
        sql.run(conn, _UNPROBE)
        conn.control("COMMIT")


class PgWriter(Writer):
    """The writer on PostgreSQL (store/writer.py with PgBackend)."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(PgBackend(url), **kwargs)
