"""Campaign rows: lookups shared by every service, and CampaignService's
queries and writer jobs."""

from __future__ import annotations

import dataclasses
import functools
import json
from collections import Counter
from collections.abc import Iterable
from typing import Any, NamedTuple

from sqlalchemy import bindparam, exists, func, insert, literal, select, tuple_
from sqlalchemy import delete as delete_from
from sqlalchemy import update as update_of
from sqlalchemy.sql.elements import ClauseElement

from flowtrack.domain import jsonvars
from flowtrack.domain.campaigns import (
    CampaignDraft,
    CampaignFilter,
    apply_update,
    fold,
    generate_id,
    new_campaign,
)
from flowtrack.domain.errors import AlreadyExists, FailedPrecondition, NotFound
from flowtrack.domain.model import Campaign, CampaignState, Recipient, Status
from flowtrack.store import dialects, privacy, schedules, sources, sql
from flowtrack.store.schema import button_clicks, campaigns, counters, engagement, link_clickers, messages, replies
from flowtrack.store.schema import events as events_table
from flowtrack.store.writer import Job, Tx

_IN_CHUNK = 500  # values per `IN (...)` lookup, well under SQLite's parameter limit
_SHAPES = 256
c = campaigns.c

_LOOKUP = select(c.cid).where(c.business_id == bindparam("business_id"), c.campaign_id == bindparam("campaign_id"))
_LOOKUP_MANY = select(c.campaign_id, c.cid).where(
    c.business_id == bindparam("business_id"), c.campaign_id.in_(bindparam("campaign_ids", expanding=True))
)
_CREATE_IMPLICIT = (
    insert(campaigns)
    .values(
        business_id=bindparam("business_id"),
        campaign_id=bindparam("campaign_id"),
        state=int(CampaignState.RUNNING),
        implicit=1,
        create_time=bindparam("now"),
        update_time=bindparam("now"),
    )
    .returning(c.cid)
)


def lookup(conn: Any, business_id: str, campaign_id: str) -> int | None:
    """The internal key (cid) of a business's campaign, or None."""
    found = sql.scalar(conn, _LOOKUP, {"business_id": business_id, "campaign_id": campaign_id})
    return None if found is None else int(found)


def lookup_many(conn: Any, business_id: str, campaign_ids: Iterable[str]) -> dict[str, int]:
    """The cid of each of a business's `campaign_ids` that exists."""
    wanted = list(dict.fromkeys(campaign_ids))
    found: dict[str, int] = {}
    for start in range(0, len(wanted), _IN_CHUNK):
        chunk = wanted[start : start + _IN_CHUNK]
        for campaign_id, cid in sql.run(conn, _LOOKUP_MANY, {"business_id": business_id, "campaign_ids": chunk}):
            found[campaign_id] = int(cid)
    return found


def create_implicit(conn: Any, business_id: str, campaign_id: str, now_us: int) -> int:
    """Create the campaign an event named before anyone created it (writer only)."""
    cid = sql.scalar(conn, _CREATE_IMPLICIT, {"business_id": business_id, "campaign_id": campaign_id, "now": now_us})
    assert cid is not None
    return int(cid)


# -- CampaignService ------------------------------------------------------------
# The audience size: the campaign-wide ('' scope) status buckets, which the
# writer keeps in step with the messages rows.
_RECIPIENT_COUNT = (
    select(func.coalesce(func.sum(counters.c.value), 0))
    .where(
        counters.c.business_id == c.business_id,
        counters.c.cid == c.cid,
        counters.c.scope == "",
        counters.c.name.in_([s.bucket for s in Status]),
    )
    .scalar_subquery()
    .label("recipient_count")
)


class _Row(NamedTuple):
    """A campaign as stored (the columns of `_SELECT`)."""

    cid: int
    business_id: str
    campaign_id: str
    name: str
    flow_id: str
    channels: str
    labels: str
    state: int
    implicit: int
    create_time: int
    schedule_time: int | None
    start_time: int | None
    complete_time: int | None
    update_time: int
    recipient_count: int
    quiet_period: int | None


_SELECT = select(*(_RECIPIENT_COUNT if name == "recipient_count" else c[name] for name in _Row._fields))


def _campaign(row: _Row) -> tuple[int, Campaign]:
    return int(row.cid), Campaign(
        business_id=row.business_id,
        campaign_id=row.campaign_id,
        name=row.name,
        flow_id=row.flow_id,
        channels=tuple(json.loads(row.channels)),
        state=CampaignState(row.state),
        labels=json.loads(row.labels),
        create_time=row.create_time,
        schedule_time=row.schedule_time,
        start_time=row.start_time,
        complete_time=row.complete_time,
        update_time=row.update_time,
        implicit=bool(row.implicit),
        recipient_count=int(row.recipient_count),
        quiet_period_us=row.quiet_period,
    )


_json = jsonvars.dumps  # the one JSON encoding of stored variables, channels and labels
_LOAD = _SELECT.where(c.business_id == bindparam("business_id"), c.campaign_id == bindparam("campaign_id"))


def _load(conn: Any, business_id: str, campaign_id: str) -> tuple[int, Campaign] | None:
    for row in sql.records(conn, _LOAD, {"business_id": business_id, "campaign_id": campaign_id}, _Row):
        return _campaign(row)
    return None


def _not_found(campaign_id: str) -> NotFound:
    return NotFound(f"campaign {campaign_id!r} does not exist", reason="CAMPAIGN_NOT_FOUND")


def get(conn: Any, business_id: str, campaign_id: str) -> Campaign:
    """A business's campaign; NotFound if it has none by that id."""
    found = _load(conn, business_id, campaign_id)
    if found is None:
        raise _not_found(campaign_id)
    return found[1]


def audience_size(conn: Any, business_id: str, campaign_id: str) -> int:
    """Recipients in a campaign's audience (0 if the campaign is gone)."""
    found = _load(conn, business_id, campaign_id)
    return 0 if found is None else found[1].recipient_count


@functools.lru_cache(maxsize=_SHAPES)
def _list_page(states: int, names: int, label_equals: int, label_present: int, after: bool) -> ClauseElement:
    """The campaign list's statement for a filter of this shape (how many
    terms of each kind): every value is a bindparam."""
    where = [c.business_id == bindparam("business_id")]
    where += [c.state == bindparam(f"state_{i}") for i in range(states)]
    # name_folded is the name case-folded by Python when written (domain/campaigns.fold), as the terms are.
    where += [dialects.position(c.name_folded, bindparam(f"folded_{i}")) > 0 for i in range(names)]
    for i in range(label_equals):
        pairs = dialects.json_pairs(c.labels, f"j{i}")
        where.append(
            exists(
                select(literal(1))
                .select_from(pairs)
                .where(pairs.c.key == bindparam(f"key_{i}"), pairs.c.value == bindparam(f"value_{i}"))
            )
        )
    for i in range(label_present):
        pairs = dialects.json_pairs(c.labels, f"p{i}")
        where.append(exists(select(literal(1)).select_from(pairs).where(pairs.c.key == bindparam(f"present_{i}"))))
    if after:
        where.append(tuple_(c.create_time, c.cid) < tuple_(bindparam("after_time"), bindparam("after_cid")))
    return _SELECT.where(*where).order_by(c.create_time.desc(), c.cid.desc()).limit(bindparam("limit"))


def list_page(
    conn: Any,
    business_id: str,
    where: CampaignFilter,
    after: tuple[int, int] | None,
    limit: int,
) -> list[tuple[int, Campaign]]:
    """Up to `limit` campaigns matching `where`, newest first (create_time,
    then cid, descending), starting after the (create_time, cid) `after`.
    Every value is a parameter; the filter only chooses the statement's shape."""
    values: dict[str, Any] = {"business_id": business_id, "limit": limit}
    values.update({f"state_{i}": int(state) for i, state in enumerate(where.states)})
    values.update({f"folded_{i}": name for i, name in enumerate(where.names)})
    for i, (key, value) in enumerate(where.label_equals):
        values[f"key_{i}"], values[f"value_{i}"] = key, value
    values.update({f"present_{i}": key for i, key in enumerate(where.label_present)})
    if after is not None:
        values["after_time"], values["after_cid"] = after
    statement = _list_page(
        len(where.states), len(where.names), len(where.label_equals), len(where.label_present), after is not None
    )
    return [_campaign(row) for row in sql.records(conn, statement, values, _Row)]


_STORED = ("name", "flow_id", "channels", "labels", "state", "schedule_time", "start_time", "complete_time",
           "update_time", "quiet_period")  # fmt: skip
_INSERT = insert(campaigns).values(
    business_id=bindparam("business_id"),
    campaign_id=bindparam("campaign_id"),
    name_folded=bindparam("name_folded"),
    implicit=0,
    create_time=bindparam("create_time"),
    **{name: bindparam(name) for name in _STORED},
)
_UPDATE = (
    update_of(campaigns)
    .where(c.business_id == bindparam("business_id"), c.cid == bindparam("cid"))
    .values(name_folded=bindparam("name_folded"), **{name: bindparam(name) for name in _STORED})
)


def _stored(campaign: Campaign) -> dict[str, Any]:
    """The values of _STORED (and name_folded) of a campaign."""
    return {
        "name": campaign.name,
        "name_folded": fold(campaign.name),
        "flow_id": campaign.flow_id,
        "channels": _json(list(campaign.channels)),
        "labels": _json(campaign.labels),
        "state": int(campaign.state),
        "schedule_time": campaign.schedule_time,
        "start_time": campaign.start_time,
        "complete_time": campaign.complete_time,
        "update_time": campaign.update_time,
        "quiet_period": campaign.quiet_period_us,
    }


def create(business_id: str, draft: CampaignDraft) -> Job[Campaign]:
    """Writer job of CreateCampaign: AlreadyExists if the client's id is taken
    (a generated id that happens to be taken is drawn again)."""

    def job(tx: Tx) -> Campaign:
        conn = tx.conn
        tx.lock_business(business_id)
        campaign_id = draft.campaign_id
        if campaign_id:
            if lookup(conn, business_id, campaign_id) is not None:
                raise AlreadyExists(f"campaign {campaign_id!r} already exists", reason="CAMPAIGN_ALREADY_EXISTS")
        else:
            campaign_id = generate_id()
            while lookup(conn, business_id, campaign_id) is not None:
                campaign_id = generate_id()
        campaign = new_campaign(business_id, draft, now_us=tx.now_us, campaign_id=campaign_id)
        values = {"business_id": business_id, "campaign_id": campaign.campaign_id, "create_time": campaign.create_time}
        sql.run(conn, _INSERT, {**values, **_stored(campaign)})
        if draft.source is not None:
            cid = lookup(conn, business_id, campaign.campaign_id)
            assert cid is not None
            copied = sources.copy_segment(tx, business_id, cid, draft.source)
            campaign = dataclasses.replace(campaign, recipient_count=copied)
        return campaign

    return job


def update(business_id: str, draft: CampaignDraft, paths: tuple[str, ...]) -> Job[Campaign]:
    """Writer job of UpdateCampaign (the request already checked): NotFound,
    or FailedPrecondition for a state move the lifecycle does not allow."""

    def job(tx: Tx) -> Campaign:
        tx.lock_business(business_id)
        found = _load(tx.conn, business_id, draft.campaign_id)
        if found is None:
            raise _not_found(draft.campaign_id)
        cid, current = found
        new = apply_update(current, draft, paths, now_us=tx.now_us)
        sql.run(tx.conn, _UPDATE, {"business_id": business_id, "cid": cid, **_stored(new)})
        if new.state is not current.state:
            tx.touch_campaign(business_id, cid, None, tx.last_sequence(business_id))
        return new

    return job


class Deleted(NamedTuple):
    """What DeleteCampaign removed: recipients, events, and the report run
    files (relative to the reports folder) the caller must delete."""

    recipients: int
    events: int
    files: list[str]


def _delete_of_campaign(table: Any) -> Any:
    return delete_from(table).where(table.c.business_id == bindparam("business_id"), table.c.cid == bindparam("cid"))


_DELETE_MESSAGES = _delete_of_campaign(messages)
_DELETE_EVENTS = _delete_of_campaign(events_table)
# The rest of a campaign's rows (revision 0006 dropped the trigger that deleted its engagement).
_DELETE_REST = tuple(
    _delete_of_campaign(table) for table in (counters, link_clickers, engagement, replies, button_clicks)
)
_DELETE_CAMPAIGN = delete_from(campaigns).where(c.business_id == bindparam("business_id"), c.cid == bindparam("cid"))


def delete(business_id: str, campaign_id: str) -> Job[Deleted]:
    """Writer job of DeleteCampaign: removes the campaign and every row of it
    (messages, events, counters, link clickers, report runs), and the counter
    changes of it that the transaction still holds for COMMIT (events of it
    earlier in the same commit). Touching the campaign wakes its stats
    watchers, who find it gone; its internal id is never given to another
    campaign (AUTOINCREMENT)."""

    def job(tx: Tx) -> Deleted:
        conn = tx.conn
        tx.lock_business(business_id)
        cid = lookup(conn, business_id, campaign_id)
        if cid is None:
            raise _not_found(campaign_id)
        of_campaign = {"business_id": business_id, "cid": cid}
        recipients = sql.run(conn, _DELETE_MESSAGES, of_campaign).rowcount
        events = sql.run(conn, _DELETE_EVENTS, of_campaign).rowcount
        for statement in _DELETE_REST:
            sql.run(conn, statement, of_campaign)
        sql.run(conn, _DELETE_CAMPAIGN, of_campaign)
        files = schedules.delete_campaign_runs(tx, business_id, campaign_id)
        tx.forget_campaign(cid)
        tx.touch_campaign(business_id, cid, None, tx.last_sequence(business_id))
        return Deleted(recipients, events, files)

    return job


class _CidAndState(NamedTuple):
    cid: int
    state: int


_CID_AND_STATE = select(c.cid, c.state).where(
    c.business_id == bindparam("business_id"), c.campaign_id == bindparam("campaign_id")
)
_PRESENT = select(messages.c.recipient).where(
    messages.c.business_id == bindparam("business_id"),
    messages.c.cid == bindparam("cid"),
    messages.c.recipient.in_(bindparam("recipients", expanding=True)),
)
_NEW_MESSAGE = ("cid", "recipient", "aud_channel", "aud_variant", "aud_input", "channel", "variant", "input_vars",
                "added_at", "updated_at", "business_id")  # fmt: skip
_ADD_MESSAGES = sql.insert_on_both(
    lambda insert: (
        insert(messages)
        .values(status=int(Status.PENDING), **{name: bindparam(name) for name in _NEW_MESSAGE})
        .on_conflict_do_nothing(index_elements=["business_id", "cid", "recipient"])
    )
)


def add_recipients(business_id: str, campaign_id: str, recipients: list[Recipient]) -> Job[tuple[int, int, list[int]]]:
    """Writer job of one AddRecipients batch (recipients already checked).
    New recipients become PENDING messages and bump the pending counters of
    the campaign, their channel and their variant; the others are left as
    they are. Returns (added, already_present). NotFound if the campaign is
    gone; FailedPrecondition if it is CANCELLED. A COMPLETED campaign (which
    may have completed by itself while its audience was still being added)
    takes new recipients, as it takes late events: they count, and its state
    stays COMPLETED. Erased recipients (store/privacy.py) are not added:
    the third value lists their positions in `recipients`."""

    def job(tx: Tx) -> tuple[int, int, list[int]]:
        conn = tx.conn
        tx.lock_business(business_id)
        values = {"business_id": business_id, "campaign_id": campaign_id}
        found = next(sql.records(conn, _CID_AND_STATE, values, _CidAndState), None)
        if found is None:
            raise _not_found(campaign_id)
        cid, state = int(found.cid), CampaignState(found.state)
        if state is CampaignState.CANCELLED:
            raise FailedPrecondition(
                f"campaign {campaign_id!r} is {state.name}: its audience can no longer change",
                reason="CAMPAIGN_FINAL",
            )
        # The writer is the only one inserting, so the recipients present now
        # (plus those this job adds) are exactly the conflicts.
        names = [r.recipient for r in recipients]
        erased = privacy.erased_among(conn, business_id, names)
        refused = [i for i, name in enumerate(names) if name in erased]
        present: set[str] = set()
        for start in range(0, len(names), _IN_CHUNK):
            chunk = names[start : start + _IN_CHUNK]
            present.update(
                recipient
                for (recipient,) in sql.run(
                    conn, _PRESENT, {"business_id": business_id, "cid": cid, "recipients": chunk}
                )
            )
        now = tx.now_us
        rows: list[dict[str, Any]] = []
        scopes: Counter[str] = Counter()
        for r in recipients:
            if r.recipient in present or r.recipient in erased:
                continue
            present.add(r.recipient)
            inputs = jsonvars.dumps_vars(r.input_variables)
            rows.append({
                "cid": cid, "recipient": r.recipient, "aud_channel": r.channel, "aud_variant": r.variant,
                "aud_input": inputs, "channel": r.channel, "variant": r.variant, "input_vars": inputs,
                "added_at": now, "updated_at": now, "business_id": business_id,
            })  # fmt: skip
            scopes["c:" + r.channel] += 1
            scopes["v:" + r.variant] += 1
        if rows:
            sql.run_many(conn, _ADD_MESSAGES, rows)
        added = len(rows)
        pending = Status.PENDING.bucket
        tx.count(business_id, cid, "", pending, added)
        for scope, n in scopes.items():
            tx.count(business_id, cid, scope, pending, n)
        if added:
            tx.touch_campaign(business_id, cid, None, tx.last_sequence(business_id))
        return added, len(recipients) - added - len(refused), refused

    return job
