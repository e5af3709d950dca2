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
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import and_, bindparam, func, insert, or_, select, update
from sqlalchemy import delete as delete_from
from sqlalchemy.sql.elements import BindParameter

from flowtrack.domain import schedules as rules
from flowtrack.domain import webhooks as wh
from flowtrack.domain.errors import NotFound, ResourceExhausted
from flowtrack.store import sql
from flowtrack.store.schema import leases, report_runs, report_schedules, server_settings
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


class _ScheduleRow(NamedTuple):
    schedule_id: str
    business_id: str
    name: str
    kind: int
    format: int
    campaign_id: str
    filters: Any  # bytes, memoryview on PostgreSQL
    cron: str
    time_zone: str
    on_complete: int
    link_ttl_us: int
    retention_us: int
    next_run_at: int | None
    create_time: int
    layout: int


class _RunRow(NamedTuple):
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


class _Claimable(NamedTuple):
    run_id: str
    business_id: str
    schedule_id: str


class _DueSchedule(NamedTuple):
    schedule_id: str
    business_id: str
    campaign_id: str
    cron: str
    time_zone: str


class _Expired(NamedTuple):
    business_id: str
    run_id: str
    path: str


S, R = report_schedules.c, report_runs.c
_SCHEDULE = (
    S.schedule_id, S.business_id, S.name, S.kind, S.format, S.campaign_id, S.filters, S.cron, S.time_zone,
    S.on_complete, S.link_ttl.label("link_ttl_us"), S.retention.label("retention_us"), S.next_run_at,
    S.create_time, S.layout,
)  # fmt: skip
_RUN = (
    R.run_id, R.schedule_id, R.business_id, R.campaign_id, R.status, R.error, R.file_name, R.content_type, R.path,
    R.bytes, R.rows, R.create_time, R.complete_time,
)  # fmt: skip


def _schedule(row: _ScheduleRow) -> Schedule:
    return Schedule(**{**row._asdict(), "filters": bytes(row.filters), "on_complete": bool(row.on_complete)})


def _run(row: _RunRow) -> Run:
    return Run(*row)


_BUSINESS: BindParameter[str] = bindparam("business_id")
_THE_SCHEDULE = and_(S.business_id == _BUSINESS, S.schedule_id == bindparam("schedule_id"))
_THE_RUN = and_(R.business_id == _BUSINESS, R.run_id == bindparam("run_id"))
# A run still being made, by `holder` (or by nobody, or its claim expired).
_PROCESSING = R.status == rules.PROCESSING
_CLAIMABLE = or_(R.claimed_by == "", R.claim_expires <= bindparam("now"))

_LINK_KEY_NEW = sql.insert_on_both(
    lambda insert: insert(server_settings).values(key="link_key", value=bindparam("value")).on_conflict_do_nothing()
)
_LINK_KEY = select(server_settings.c.value).where(server_settings.c.key == "link_key")

_COUNT = select(func.count()).select_from(report_schedules).where(S.business_id == _BUSINESS)
_INSERT_SCHEDULE = insert(report_schedules).values({c.name: bindparam(c.name) for c in report_schedules.c})
_LIST = select(*_SCHEDULE).where(S.business_id == _BUSINESS).order_by(S.create_time, S.schedule_id)
_LIST_KIND = (
    select(*_SCHEDULE)
    .where(S.business_id == _BUSINESS, S.kind == bindparam("kind"))
    .order_by(S.create_time, S.schedule_id)
)
_GET = select(*_SCHEDULE).where(_THE_SCHEDULE)
_DELETE_SCHEDULE = delete_from(report_schedules).where(_THE_SCHEDULE)
_OF_SCHEDULE = and_(R.business_id == _BUSINESS, R.schedule_id == bindparam("schedule_id"))
_SCHEDULE_RUN_PATHS = select(R.path).where(_OF_SCHEDULE)
_DELETE_SCHEDULE_RUNS = delete_from(report_runs).where(_OF_SCHEDULE)
_OF_CAMPAIGN = and_(R.business_id == _BUSINESS, R.campaign_id == bindparam("campaign_id"))
_CAMPAIGN_RUN_PATHS = select(R.path).where(_OF_CAMPAIGN)
_DELETE_CAMPAIGN_RUNS = delete_from(report_runs).where(_OF_CAMPAIGN)
_INSERT_RUN = insert(report_runs).values(
    run_id=bindparam("run_id"),
    schedule_id=bindparam("schedule_id"),
    business_id=_BUSINESS,
    campaign_id=bindparam("campaign_id"),
    status=rules.PROCESSING,
    create_time=bindparam("now"),
)
_ON_COMPLETE = select(S.schedule_id).where(
    S.business_id == _BUSINESS,
    S.on_complete == 1,
    or_(S.campaign_id == "", S.campaign_id == bindparam("campaign_id")),
)
# The scheduler's sweep over every business (tests/citus.py ALLOWED).
_DUE = (
    select(S.schedule_id, S.business_id, S.campaign_id, S.cron, S.time_zone)
    .where(S.next_run_at.is_not(None), S.next_run_at <= bindparam("now"))
    .order_by(S.next_run_at)
    .limit(bindparam("limit"))
)
_NEXT_RUN = update(report_schedules).where(_THE_SCHEDULE).values(next_run_at=bindparam("next_run_at"))
# Report runs to make, over every business (a sweep: tests/citus.py ALLOWED);
# a run joins its schedule on the business too (co-located on Citus).
_SCHEDULE_OF_RUN = and_(S.business_id == R.business_id, S.schedule_id == R.schedule_id)
_CLAIMABLE_RUNS = (
    select(R.run_id, R.business_id, R.schedule_id)
    .select_from(report_runs.join(report_schedules, _SCHEDULE_OF_RUN))
    .where(_PROCESSING, _CLAIMABLE)
    .order_by(R.create_time)
    .limit(8)
)
_CLAIM = (
    update(report_runs)
    .where(_THE_RUN, _PROCESSING, _CLAIMABLE)
    .values(claimed_by=bindparam("holder"), claim_expires=bindparam("expires"))
)
_RENEW = (
    update(report_runs)
    .where(_THE_RUN, _PROCESSING, R.claimed_by == bindparam("holder"))
    .values(claim_expires=bindparam("expires"))
)
_FINISH = (
    update(report_runs)
    .where(_THE_RUN, _PROCESSING, R.claimed_by == bindparam("holder"))
    .values(
        status=bindparam("status"),
        error=bindparam("error"),
        file_name=bindparam("file_name"),
        content_type=bindparam("content_type"),
        path=bindparam("path"),
        bytes=bindparam("bytes"),
        rows=bindparam("rows"),
        complete_time=bindparam("now"),
    )
)
_LATEST_RUN = select(*_RUN).where(_OF_SCHEDULE).order_by(R.create_time.desc(), R.run_id.desc()).limit(1)
_RUN_OF_BUSINESS = select(*_RUN).where(_THE_RUN)
# A download link names its run alone (domain/schedules.py): looked up
# before any business is known (tests/citus.py ALLOWED).
_RUN_BY_LINK = select(*_RUN).where(R.run_id == bindparam("run_id"))
_EXPIRED = (
    select(R.business_id, R.run_id, R.path)
    .select_from(report_runs.join(report_schedules, _SCHEDULE_OF_RUN))
    .where(R.status != rules.PROCESSING, R.create_time + S.retention <= bindparam("now"))
    .limit(bindparam("limit"))
)
_DELETE_RUN = delete_from(report_runs).where(_THE_RUN)


def _upsert_lease(insert: Any) -> Any:
    statement = insert(leases).values(
        name=bindparam("name"), holder=bindparam("holder"), expires_at=bindparam("expires")
    )
    new = statement.excluded
    return statement.on_conflict_do_update(
        index_elements=[leases.c.name],
        set_={"holder": new.holder, "expires_at": new.expires_at},
        where=or_(leases.c.holder == new.holder, leases.c.expires_at <= bindparam("now")),
    )


_ACQUIRE = sql.insert_on_both(_upsert_lease)
_HOLDER = select(leases.c.holder).where(leases.c.name == bindparam("name"))
_RELEASE = delete_from(leases).where(leases.c.name == bindparam("name"), leases.c.holder == bindparam("holder"))


def link_key(conn: Any) -> bytes:
    """The key that signs download links (created on first use; writer connection)."""
    sql.run(conn, _LINK_KEY_NEW, {"value": secrets.token_bytes(32)})
    return bytes(sql.scalar(conn, _LINK_KEY))


# -- schedules ---------------------------------------------------------------------------
def create(
    business_id: str, draft: rules.ScheduleDraft, kind: int, fmt: int, filters: bytes, layout: int = 0
) -> Job[Schedule]:
    """Writer job of CreateReportSchedule (everything already checked;
    `layout` is the ExportLayout of a messages report)."""

    def job(tx: Tx) -> Schedule:
        tx.lock_business(business_id)  # the bound holds across replicas
        if sql.scalar(tx.conn, _COUNT, {"business_id": business_id}) >= rules.MAX_SCHEDULES:
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
        values = {
            "schedule_id": schedule.schedule_id,
            "business_id": business_id,
            "name": schedule.name,
            "kind": kind,
            "format": fmt,
            "campaign_id": schedule.campaign_id,
            "filters": filters,
            "cron": schedule.cron,
            "time_zone": schedule.time_zone,
            "on_complete": int(schedule.on_complete),
            "link_ttl": schedule.link_ttl_us,
            "retention": schedule.retention_us,
            "next_run_at": schedule.next_run_at,
            "create_time": schedule.create_time,
            "layout": layout,
        }
        sql.run(tx.conn, _INSERT_SCHEDULE, values)
        return schedule

    return job


def list_schedules(conn: Any, business_id: str, kind: int = 0) -> list[Schedule]:
    """A business's schedules (of one kind if `kind`), oldest first (at most MAX_SCHEDULES)."""
    if kind:
        rows = sql.records(conn, _LIST_KIND, {"business_id": business_id, "kind": kind}, _ScheduleRow)
    else:
        rows = sql.records(conn, _LIST, {"business_id": business_id}, _ScheduleRow)
    return [_schedule(r) for r in rows]


def get(conn: Any, business_id: str, schedule_id: str) -> Schedule:
    values = {"business_id": business_id, "schedule_id": schedule_id}
    row = next(sql.records(conn, _GET, values, _ScheduleRow), None)
    if row is None:
        raise NotFound(f"report schedule {schedule_id!r} does not exist", reason="SCHEDULE_NOT_FOUND")
    return _schedule(row)


def delete(business_id: str, schedule_id: str) -> Job[list[str]]:
    """Writer job of DeleteReportSchedule: the schedule and its runs go (their
    links stop working at once). Returns the run files to delete."""

    def job(tx: Tx) -> list[str]:
        tx.lock_business(business_id)
        values = {"business_id": business_id, "schedule_id": schedule_id}
        if not sql.run(tx.conn, _DELETE_SCHEDULE, values).rowcount:
            raise NotFound(f"report schedule {schedule_id!r} does not exist", reason="SCHEDULE_NOT_FOUND")
        paths = [str(path) for (path,) in sql.run(tx.conn, _SCHEDULE_RUN_PATHS, values)]
        sql.run(tx.conn, _DELETE_SCHEDULE_RUNS, values)
        return [p for p in paths if p]

    return job


# -- runs -------------------------------------------------------------------------------------
def delete_campaign_runs(tx: Tx, business_id: str, campaign_id: str) -> list[str]:
    """Delete the runs of a campaign being deleted (inside DeleteCampaign's
    transaction: their links answer 410 from its COMMIT on; a run being
    made loses its claim and its maker stops). Returns their files to delete."""
    values = {"business_id": business_id, "campaign_id": campaign_id}
    paths = [str(path) for (path,) in sql.run(tx.conn, _CAMPAIGN_RUN_PATHS, values)]
    sql.run(tx.conn, _DELETE_CAMPAIGN_RUNS, values)
    return [p for p in paths if p]


def _enqueue(tx: Tx, schedule_id: str, business_id: str, campaign_id: str) -> str:
    run_id = wh.new_id("run")
    values = {
        "run_id": run_id,
        "schedule_id": schedule_id,
        "business_id": business_id,
        "campaign_id": campaign_id,
        "now": tx.now_us,
    }
    sql.run(tx.conn, _INSERT_RUN, values)
    return run_id


def enqueue_on_complete(tx: Tx, business_id: str, campaign_id: str) -> int:
    """A run of every on-complete schedule of the business that covers
    `campaign_id` (inside the completion's transaction)."""
    values = {"business_id": business_id, "campaign_id": campaign_id}
    schedule_ids = [str(s) for (s,) in sql.run(tx.conn, _ON_COMPLETE, values).fetchall()]
    for schedule_id in schedule_ids:
        _enqueue(tx, schedule_id, business_id, campaign_id)
    return len(schedule_ids)


def enqueue_due(limit: int = 100) -> Job[int]:
    """Writer job of the runner's tick: a run of each cron schedule that is
    due, and its next time. A schedule that missed several times (the server
    was down) runs once."""

    def job(tx: Tx) -> int:
        due = list(sql.records(tx.conn, _DUE, {"now": tx.now_us, "limit": limit}, _DueSchedule))
        for found in due:
            _enqueue(tx, found.schedule_id, found.business_id, found.campaign_id)
            values = {
                "business_id": found.business_id,
                "schedule_id": found.schedule_id,
                "next_run_at": rules.next_run(found.cron, found.time_zone, tx.now_us),
            }
            sql.run(tx.conn, _NEXT_RUN, values)
        return len(due)

    return job


def claim(holder: str, ttl_us: int) -> Job[tuple[Run, Schedule] | None]:
    """Writer job: claim the oldest processing run that nobody holds (or
    whose claim expired) for `holder` until now + ttl; None if there is none.
    The claim is an UPDATE guarded by the same condition, so of two servers
    claiming at once (PostgreSQL, READ COMMITTED: the second waits for the
    first's row lock, then sees its claim) one gets the run."""

    def job(tx: Tx) -> tuple[Run, Schedule] | None:
        now = tx.now_us
        for found in list(sql.records(tx.conn, _CLAIMABLE_RUNS, {"now": now}, _Claimable)):
            values = {
                "business_id": found.business_id,
                "run_id": found.run_id,
                "holder": holder,
                "expires": now + ttl_us,
                "now": now,
            }
            if sql.run(tx.conn, _CLAIM, values).rowcount:
                run_row = next(sql.records(tx.conn, _RUN_OF_BUSINESS, values, _RunRow))
                return _run(run_row), get(tx.conn, found.business_id, found.schedule_id)
        return None

    return job


def renew(run_id: str, holder: str, ttl_us: int, *, business_id: str) -> Job[bool]:
    """Writer job: extend `holder`'s claim on a run to now + ttl; False if
    the run is gone, finished, or claimed by another server since."""

    def job(tx: Tx) -> bool:
        values = {"business_id": business_id, "run_id": run_id, "holder": holder, "expires": tx.now_us + ttl_us}
        return bool(sql.run(tx.conn, _RENEW, values).rowcount)

    return job


def finish(
    run_id: str,
    holder: str,
    *,
    business_id: str,
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
        values = {
            "business_id": business_id,
            "run_id": run_id,
            "holder": holder,
            "status": rules.FAILED if error else rules.COMPLETED,
            "error": error,
            "file_name": file_name,
            "content_type": content_type,
            "path": path,
            "bytes": size,
            "rows": rows,
            "now": tx.now_us,
        }
        if not sql.run(tx.conn, _FINISH, values).rowcount:
            return False
        if not error and event is not None:
            from flowtrack.store import webhooks

            webhooks.emit(tx, business_id, wh.REPORT_COMPLETED, event)
        return True

    return job


def latest_runs(conn: Any, business_id: str, kind: int = 0) -> list[tuple[Schedule, Run | None]]:
    """Each schedule of the business (of one kind if `kind`) with its latest run."""
    out = []
    for schedule in list_schedules(conn, business_id, kind):
        values = {"business_id": business_id, "schedule_id": schedule.schedule_id}
        row = next(sql.records(conn, _LATEST_RUN, values, _RunRow), None)
        out.append((schedule, None if row is None else _run(row)))
    return out


def run(conn: Any, run_id: str, business_id: str | None = None) -> Run | None:
    """A run by id (of `business_id` only, if given; a download link names no business)."""
    if business_id is None:
        row = next(sql.records(conn, _RUN_BY_LINK, {"run_id": run_id}, _RunRow), None)
    else:
        values = {"business_id": business_id, "run_id": run_id}
        row = next(sql.records(conn, _RUN_OF_BUSINESS, values, _RunRow), None)
    return None if row is None else _run(row)


def expire(limit: int = 100) -> Job[list[str]]:
    """Writer job: drop the runs older than their schedule's retention (the
    latest run of each schedule included). Returns their files to delete."""

    def job(tx: Tx) -> list[str]:
        rows = list(sql.records(tx.conn, _EXPIRED, {"now": tx.now_us, "limit": limit}, _Expired))
        sql.run_many(tx.conn, _DELETE_RUN, [{"business_id": r.business_id, "run_id": r.run_id} for r in rows])
        return [str(r.path) for r in rows if r.path]

    return job


# -- the lease ---------------------------------------------------------------------------------
def acquire(name: str, holder: str, ttl_us: int) -> Job[bool]:
    """Writer job: take or renew the lease `name` for `holder` until now +
    ttl; False while another holder's lease is unexpired."""

    def job(tx: Tx) -> bool:
        values = {"name": name, "holder": holder, "expires": tx.now_us + ttl_us, "now": tx.now_us}
        sql.run(tx.conn, _ACQUIRE, values)
        return bool(sql.scalar(tx.conn, _HOLDER, {"name": name}) == holder)

    return job


def release(name: str, holder: str) -> Job[None]:
    def job(tx: Tx) -> None:
        sql.run(tx.conn, _RELEASE, {"name": name, "holder": holder})

    return job
