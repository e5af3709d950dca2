"""Report schedules, their runs, and the lease that lets one server run them.

Runs are rows: `processing` when due (enqueued by a cron tick or, in the
same transaction as the completion, by a campaign that completed), then
`completed` with the file's path relative to the reports folder, or
`failed` with why. A processing run is claimed by the server that makes it
(`claim`, `renew`: an owner and an expiry), and only the claim's owner
finishes it (`finish`).
"""

from __future__ import annotations

import secrets
import sqlite3
from dataclasses import dataclass

from flowtrack.domain import schedules as rules
from flowtrack.domain import webhooks as wh
from flowtrack.domain.errors import NotFound, ResourceExhausted
from flowtrack.store.writer import Job, Tx


@dataclass(frozen=True, slots=True)
class Schedule:
    schedule_id: str
    business_id: str
    name: str
    kind: int
    format: int
    campaign_id: str
    filters: bytes
    cron: str
    time_zone: str
    on_complete: bool
    link_ttl_us: int
    retention_us: int
    next_run_at: int | None
    create_time: int
    layout: int = 0  # ExportLayout of a messages report (0: unspecified)


@dataclass(frozen=True, slots=True)
class Run:
    run_id: str
    schedule_id: str
    business_id: str
    campaign_id: str
    status: int
    error: str
    file_name: str
    content_type: str
    path: str
    bytes: int
    rows: int
    create_time: int
    complete_time: int | None


_SCHEDULE = (
    "schedule_id, business_id, name, kind, format, campaign_id, filters, cron, time_zone, on_complete,"
    " link_ttl, retention, next_run_at, create_time, layout"
)
_RUN = (
    "run_id, schedule_id, business_id, campaign_id, status, error, file_name, content_type, path, bytes, rows,"
    " create_time, complete_time"
)
_RUN_R = ", ".join("r." + c.strip() for c in _RUN.split(","))
_SCHEDULE_S = ", ".join("s." + c.strip() for c in _SCHEDULE.split(","))


def _schedule(row: tuple[object, ...]) -> Schedule:
    values = list(row)
    values[6] = bytes(values[6])  # type: ignore[call-overload]
    values[9] = bool(values[9])
    return Schedule(*values)  # type: ignore[arg-type]


def _run(row: tuple[object, ...]) -> Run:
    return Run(*row)  # type: ignore[arg-type]


def link_key(conn: sqlite3.Connection) -> bytes:
    """The key that signs download links (created on first use; writer connection)."""
    conn.execute(
        "INSERT OR IGNORE INTO server_settings (key, value) VALUES ('link_key', ?)", (secrets.token_bytes(32),)
    )
    return bytes(conn.execute("SELECT value FROM server_settings WHERE key = 'link_key'").fetchone()[0])


# -- schedules ---------------------------------------------------------------------------
def create(
    business_id: str, draft: rules.ScheduleDraft, kind: int, fmt: int, filters: bytes, layout: int = 0
) -> Job[Schedule]:
    """Writer job of CreateReportSchedule (everything already checked;
    `layout` is the ExportLayout of a messages report)."""

    def job(tx: Tx) -> Schedule:
        tx.lock_business(business_id)  # the bound holds across replicas
        (count,) = tx.conn.execute(
            "SELECT count(*) FROM report_schedules WHERE business_id = ?", (business_id,)
        ).fetchone()
        if count >= rules.MAX_SCHEDULES:
            raise ResourceExhausted(
                f"a business has at most {rules.MAX_SCHEDULES} report schedules; delete one first",
                reason="TOO_MANY_SCHEDULES",
            )
        schedule = Schedule(
            schedule_id=wh.new_id("rs"),
            business_id=business_id,
            name=draft.name,
            kind=kind,
            format=fmt,
            campaign_id=draft.campaign_id,
            filters=filters,
            cron=draft.cron,
            time_zone=draft.time_zone or "UTC",
            on_complete=draft.on_complete,
            link_ttl_us=draft.link_ttl_us or rules.DEFAULT_LINK_TTL_US,
            retention_us=draft.retention_us or rules.DEFAULT_RETENTION_US,
            next_run_at=rules.next_run(draft.cron, draft.time_zone, tx.now_us) if draft.cron else None,
            create_time=tx.now_us,
            layout=layout,
        )
        tx.conn.execute(
            f"INSERT INTO report_schedules ({_SCHEDULE}) VALUES ({', '.join('?' * 15)})",
            (
                schedule.schedule_id, business_id, schedule.name, kind, fmt, schedule.campaign_id, filters,
                schedule.cron, schedule.time_zone, int(schedule.on_complete), schedule.link_ttl_us,
                schedule.retention_us, schedule.next_run_at, schedule.create_time, layout,
            ),
        )  # fmt: skip
        return schedule

    return job


def list_schedules(conn: sqlite3.Connection, business_id: str, kind: int = 0) -> list[Schedule]:
    """A business's schedules (of one kind if `kind`), oldest first (at most MAX_SCHEDULES)."""
    sql = f"SELECT {_SCHEDULE} FROM report_schedules WHERE business_id = ?"
    args: list[object] = [business_id]
    if kind:
        sql += " AND kind = ?"
        args.append(kind)
    return [_schedule(r) for r in conn.execute(sql + " ORDER BY create_time, schedule_id", args)]


def get(conn: sqlite3.Connection, business_id: str, schedule_id: str) -> Schedule:
    row = conn.execute(
        f"SELECT {_SCHEDULE} FROM report_schedules WHERE business_id = ? AND schedule_id = ?",
        (business_id, schedule_id),
    ).fetchone()
    if row is None:
        raise NotFound(f"report schedule {schedule_id!r} does not exist", reason="SCHEDULE_NOT_FOUND")
    return _schedule(row)


def delete(business_id: str, schedule_id: str) -> Job[list[str]]:
    """Writer job of DeleteReportSchedule: the schedule and its runs go (their
    links stop working at once). Returns the run files to delete."""

    def job(tx: Tx) -> list[str]:
        tx.lock_business(business_id)
        deleted = tx.conn.execute(
            "DELETE FROM report_schedules WHERE business_id = ? AND schedule_id = ?", (business_id, schedule_id)
        ).rowcount
        if not deleted:
            raise NotFound(f"report schedule {schedule_id!r} does not exist", reason="SCHEDULE_NOT_FOUND")
        mine = "WHERE business_id = ? AND schedule_id = ?"
        paths = [r[0] for r in tx.conn.execute(f"SELECT path FROM report_runs {mine}", (business_id, schedule_id))]
        tx.conn.execute(f"DELETE FROM report_runs {mine}", (business_id, schedule_id))
        return [p for p in paths if p]

    return job


# -- runs -------------------------------------------------------------------------------------
def delete_campaign_runs(tx: Tx, business_id: str, campaign_id: str) -> list[str]:
    """Delete the runs of a campaign being deleted (inside DeleteCampaign's
    transaction: their links answer 410 from its COMMIT on; a run being
    made loses its claim and its maker stops). Returns their files to delete."""
    paths = [
        str(path)
        for (path,) in tx.conn.execute(
            "SELECT path FROM report_runs WHERE business_id = ? AND campaign_id = ?", (business_id, campaign_id)
        )
    ]
    tx.conn.execute("DELETE FROM report_runs WHERE business_id = ? AND campaign_id = ?", (business_id, campaign_id))
    return [p for p in paths if p]


def _enqueue(tx: Tx, schedule_id: str, business_id: str, campaign_id: str) -> str:
    run_id = wh.new_id("run")
    tx.conn.execute(
        "INSERT INTO report_runs (run_id, schedule_id, business_id, campaign_id, status, create_time)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (run_id, schedule_id, business_id, campaign_id, rules.PROCESSING, tx.now_us),
    )
    return run_id


def enqueue_on_complete(tx: Tx, business_id: str, campaign_id: str) -> int:
    """A run of every on-complete schedule of the business that covers
    `campaign_id` (inside the completion's transaction)."""
    rows = tx.conn.execute(
        "SELECT schedule_id FROM report_schedules WHERE business_id = ? AND on_complete = 1 AND campaign_id IN ('', ?)",
        (business_id, campaign_id),
    ).fetchall()
    for (schedule_id,) in rows:
        _enqueue(tx, schedule_id, business_id, campaign_id)
    return len(rows)


def enqueue_due(limit: int = 100) -> Job[int]:
    """Writer job of the runner's tick: a run of each cron schedule that is
    due, and its next time. A schedule that missed several times (the server
    was down) runs once."""

    def job(tx: Tx) -> int:
        rows = tx.conn.execute(
            "SELECT schedule_id, business_id, campaign_id, cron, time_zone FROM report_schedules"
            " WHERE next_run_at IS NOT NULL AND next_run_at <= ? ORDER BY next_run_at LIMIT ?",
            (tx.now_us, limit),
        ).fetchall()
        for schedule_id, business_id, campaign_id, cron, time_zone in rows:
            _enqueue(tx, schedule_id, business_id, campaign_id)
            tx.conn.execute(
                "UPDATE report_schedules SET next_run_at = ? WHERE business_id = ? AND schedule_id = ?",
                (rules.next_run(cron, time_zone, tx.now_us), business_id, schedule_id),
            )
        return len(rows)

    return job


def claim(holder: str, ttl_us: int) -> Job[tuple[Run, Schedule] | None]:
    """Writer job: claim the oldest processing run that nobody holds (or
    whose claim expired) for `holder` until now + ttl; None if there is none.
    The claim is an UPDATE guarded by the same condition, so of two servers
    claiming at once (PostgreSQL, READ COMMITTED: the second waits for the
    first's row lock, then sees its claim) one gets the run."""

    def job(tx: Tx) -> tuple[Run, Schedule] | None:
        rows = tx.conn.execute(
            f"SELECT {_RUN_R}, {_SCHEDULE_S} FROM report_runs r JOIN report_schedules s USING (schedule_id)"
            " WHERE r.status = 1 AND (r.claimed_by = '' OR r.claim_expires <= ?) ORDER BY r.create_time LIMIT 8",
            (tx.now_us,),
        ).fetchall()
        for row in rows:
            run = _run(row[:13])
            taken = tx.conn.execute(
                "UPDATE report_runs SET claimed_by = ?, claim_expires = ?"
                " WHERE run_id = ? AND status = 1 AND (claimed_by = '' OR claim_expires <= ?)",
                (holder, tx.now_us + ttl_us, run.run_id, tx.now_us),
            ).rowcount
            if taken:
                return run, _schedule(row[13:])
        return None

    return job


def renew(run_id: str, holder: str, ttl_us: int) -> Job[bool]:
    """Writer job: extend `holder`'s claim on a run to now + ttl; False if
    the run is gone, finished, or claimed by another server since."""

    def job(tx: Tx) -> bool:
        return bool(
            tx.conn.execute(
                "UPDATE report_runs SET claim_expires = ? WHERE run_id = ? AND status = 1 AND claimed_by = ?",
                (tx.now_us + ttl_us, run_id, holder),
            ).rowcount
        )

    return job


def finish(
    run_id: str,
    holder: str,
    *,
    error: str = "",
    file_name: str = "",
    content_type: str = "",
    path: str = "",
    size: int = 0,
    rows: int = 0,
    event: dict[str, object] | None = None,
) -> Job[bool]:
    """Writer job: a run `holder` claimed completed (with its file) or failed
    (with why); a completed run emits report.completed with `event` in the
    same transaction. False if the run was deleted meanwhile, is no longer
    processing, or another server claimed it since (this maker's file must
    go, and nothing is emitted)."""

    def job(tx: Tx) -> bool:
        row = tx.conn.execute(
            "SELECT business_id FROM report_runs WHERE run_id = ? AND status = 1 AND claimed_by = ?",
            (run_id, holder),
        ).fetchone()
        if row is None:
            return False
        done = tx.conn.execute(
            "UPDATE report_runs SET status = ?, error = ?, file_name = ?, content_type = ?, path = ?, bytes = ?,"
            " rows = ?, complete_time = ? WHERE run_id = ? AND status = 1 AND claimed_by = ?",
            (
                rules.FAILED if error else rules.COMPLETED, error, file_name, content_type, path, size, rows,
                tx.now_us, run_id, holder,
            ),
        ).rowcount  # fmt: skip
        if not done:
            return False
        if not error and event is not None:
            from flowtrack.store import webhooks

            webhooks.emit(tx, str(row[0]), wh.REPORT_COMPLETED, event)
        return True

    return job


def latest_runs(conn: sqlite3.Connection, business_id: str, kind: int = 0) -> list[tuple[Schedule, Run | None]]:
    """Each schedule of the business (of one kind if `kind`) with its latest run."""
    out = []
    for schedule in list_schedules(conn, business_id, kind):
        row = conn.execute(
            f"SELECT {_RUN} FROM report_runs WHERE schedule_id = ? ORDER BY create_time DESC, run_id DESC LIMIT 1",
            (schedule.schedule_id,),
        ).fetchone()
        out.append((schedule, None if row is None else _run(row)))
    return out


def run(conn: sqlite3.Connection, run_id: str, business_id: str | None = None) -> Run | None:
    """A run by id (of `business_id` only, if given)."""
    sql = f"SELECT {_RUN} FROM report_runs WHERE run_id = ?"
    args: list[object] = [run_id]
    if business_id is not None:
        sql += " AND business_id = ?"
        args.append(business_id)
    row = conn.execute(sql, args).fetchone()
    return None if row is None else _run(row)


def expire(limit: int = 100) -> Job[list[str]]:
    """Writer job: drop the runs older than their schedule's retention (the
    latest run of each schedule included). Returns their files to delete."""

    def job(tx: Tx) -> list[str]:
        rows = tx.conn.execute(
            "SELECT r.run_id, r.path FROM report_runs r JOIN report_schedules s USING (schedule_id)"
            " WHERE r.status != 1 AND r.create_time + s.retention <= ? LIMIT ?",
            (tx.now_us, limit),
        ).fetchall()
        tx.conn.executemany("DELETE FROM report_runs WHERE run_id = ?", [(r[0],) for r in rows])
        return [str(r[1]) for r in rows if r[1]]

    return job


# -- the lease ---------------------------------------------------------------------------------
def acquire(name: str, holder: str, ttl_us: int) -> Job[bool]:
    """Writer job: take or renew the lease `name` for `holder` until now +
    ttl; False while another holder's lease is unexpired."""

    def job(tx: Tx) -> bool:
        tx.conn.execute(
            "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at"
            " WHERE leases.holder = excluded.holder OR leases.expires_at <= ?",
            (name, holder, tx.now_us + ttl_us, tx.now_us),
        )
        row = tx.conn.execute("SELECT holder FROM leases WHERE name = ?", (name,)).fetchone()
        return row is not None and row[0] == holder

    return job


def release(name: str, holder: str) -> Job[None]:
    def job(tx: Tx) -> None:
        tx.conn.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

    return job
