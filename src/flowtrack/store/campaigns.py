"""Campaign rows: lookups shared by every service, and CampaignService's
queries and writer jobs."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections import Counter
from collections.abc import Iterable
from typing import Any, NamedTuple

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
from flowtrack.store import schedules, sources
from flowtrack.store.writer import Job, Tx

_IN_CHUNK = 500  # values per `IN (...)` lookup, well under SQLite's parameter limit


def lookup(conn: sqlite3.Connection, business_id: str, campaign_id: str) -> int | None:
    """The internal key (cid) of a business's campaign, or None."""
    row = conn.execute(
        "SELECT cid FROM campaigns WHERE business_id = ? AND campaign_id = ?", (business_id, campaign_id)
    ).fetchone()
    return None if row is None else int(row[0])


def lookup_many(conn: sqlite3.Connection, business_id: str, campaign_ids: Iterable[str]) -> dict[str, int]:
    """The cid of each of a business's `campaign_ids` that exists."""
    wanted = list(dict.fromkeys(campaign_ids))
    found: dict[str, int] = {}
    for start in range(0, len(wanted), _IN_CHUNK):
        chunk = wanted[start : start + _IN_CHUNK]
        query = (
            "SELECT campaign_id, cid FROM campaigns WHERE business_id = ?"
            f" AND campaign_id IN ({','.join('?' * len(chunk))})"
        )
        found.update(conn.execute(query, (business_id, *chunk)))
    return found


def create_implicit(conn: sqlite3.Connection, business_id: str, campaign_id: str, now_us: int) -> int:
    """Create the campaign an event named before anyone created it (writer only)."""
    cursor = conn.execute(
        "INSERT INTO campaigns (business_id, campaign_id, state, implicit, create_time, update_time)"
        " VALUES (?, ?, ?, 1, ?, ?)",
        (business_id, campaign_id, int(CampaignState.RUNNING), now_us, now_us),
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


# -- CampaignService ------------------------------------------------------------
# The audience size: the campaign-wide ('' scope) status buckets, which the
# writer keeps in step with the messages rows.
_BUCKETS = ", ".join(f"'{status.bucket}'" for status in Status)
_RECIPIENT_COUNT = (
    "(SELECT coalesce(sum(k.value), 0) FROM counters k"
    f" WHERE k.cid = c.cid AND k.scope = '' AND k.name IN ({_BUCKETS}))"
)
_COLUMNS = (
    "c.cid, c.business_id, c.campaign_id, c.name, c.flow_id, c.channels, c.labels, c.state, c.implicit,"
    f" c.create_time, c.schedule_time, c.start_time, c.complete_time, c.update_time, {_RECIPIENT_COUNT}, c.quiet_period"
)


def _campaign(row: sqlite3.Row | tuple[Any, ...]) -> tuple[int, Campaign]:
    (cid, business_id, campaign_id, name, flow_id, channels, labels, state, implicit) = row[:9]
    (create_time, schedule_time, start_time, complete_time, update_time, recipient_count) = row[9:15]
    return int(cid), Campaign(
        business_id=business_id,
        campaign_id=campaign_id,
        name=name,
        flow_id=flow_id,
        channels=tuple(json.loads(channels)),
        state=CampaignState(state),
        labels=json.loads(labels),
        create_time=create_time,
        schedule_time=schedule_time,
        start_time=start_time,
        complete_time=complete_time,
        update_time=update_time,
        implicit=bool(implicit),
        recipient_count=int(recipient_count),
        quiet_period_us=row[15],
    )


_json = jsonvars.dumps  # the one JSON encoding of stored variables, channels and labels


def _load(conn: sqlite3.Connection, business_id: str, campaign_id: str) -> tuple[int, Campaign] | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM campaigns c WHERE c.business_id = ? AND c.campaign_id = ?", (business_id, campaign_id)
    ).fetchone()
    return None if row is None else _campaign(row)


def _not_found(campaign_id: str) -> NotFound:
    return NotFound(f"campaign {campaign_id!r} does not exist", reason="CAMPAIGN_NOT_FOUND")


def get(conn: sqlite3.Connection, business_id: str, campaign_id: str) -> Campaign:
    """A business's campaign; NotFound if it has none by that id."""
    found = _load(conn, business_id, campaign_id)
    if found is None:
        raise _not_found(campaign_id)
    return found[1]


def audience_size(conn: sqlite3.Connection, business_id: str, campaign_id: str) -> int:
    """Recipients in a campaign's audience (0 if the campaign is gone)."""
    found = _load(conn, business_id, campaign_id)
    return 0 if found is None else found[1].recipient_count


def list_page(
    conn: sqlite3.Connection,
    business_id: str,
    where: CampaignFilter,
    after: tuple[int, int] | None,
    limit: int,
) -> list[tuple[int, Campaign]]:
    """Up to `limit` campaigns matching `where`, newest first (create_time,
    then cid, descending), starting after the (create_time, cid) `after`.
    Every value is a parameter; the filter only chooses fixed SQL fragments."""
    sql = [f"SELECT {_COLUMNS} FROM campaigns c WHERE c.business_id = ?"]
    args: list[object] = [business_id]
    for state in where.states:
        sql.append("AND c.state = ?")
        args.append(int(state))
    for name in where.names:
        sql.append("AND instr(c.name_folded, ?) > 0")
        args.append(name)
    for key, value in where.label_equals:
        sql.append("AND EXISTS (SELECT 1 FROM json_each(c.labels) j WHERE j.key = ? AND j.value = ?)")
        args.extend((key, value))
    for key in where.label_present:
        sql.append("AND EXISTS (SELECT 1 FROM json_each(c.labels) j WHERE j.key = ?)")
        args.append(key)
    if after is not None:
        sql.append("AND (c.create_time, c.cid) < (?, ?)")
        args.extend(after)
    sql.append("ORDER BY c.create_time DESC, c.cid DESC LIMIT ?")
    args.append(limit)
    return [_campaign(row) for row in conn.execute(" ".join(sql), args)]


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
        conn.execute(
            "INSERT INTO campaigns (business_id, campaign_id, name, name_folded, flow_id, channels, labels, state,"
            " implicit, create_time, schedule_time, start_time, complete_time, update_time, quiet_period)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?)",
            (
                business_id,
                campaign.campaign_id,
                campaign.name,
                fold(campaign.name),
                campaign.flow_id,
                _json(list(campaign.channels)),
                _json(campaign.labels),
                int(campaign.state),
                campaign.create_time,
                campaign.schedule_time,
                campaign.start_time,
                campaign.complete_time,
                campaign.update_time,
                campaign.quiet_period_us,
            ),
        )
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
        tx.conn.execute(
            "UPDATE campaigns SET name = ?, name_folded = ?, flow_id = ?, channels = ?, labels = ?, state = ?,"
            " schedule_time = ?, start_time = ?, complete_time = ?, update_time = ?, quiet_period = ?"
            " WHERE business_id = ? AND cid = ?",
            (
                new.name,
                fold(new.name),
                new.flow_id,
                _json(list(new.channels)),
                _json(new.labels),
                int(new.state),
                new.schedule_time,
                new.start_time,
                new.complete_time,
                new.update_time,
                new.quiet_period_us,
                business_id,
                cid,
            ),
        )
        if new.state is not current.state:
            tx.touch_campaign(cid, None, tx.last_sequence(business_id))
        return new

    return job


class Deleted(NamedTuple):
    """What DeleteCampaign removed: recipients, events, and the report run
    files (relative to the reports folder) the caller must delete."""

    recipients: int
    events: int
    files: list[str]


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
        recipients = conn.execute("DELETE FROM messages WHERE cid = ?", (cid,)).rowcount
        events = conn.execute("DELETE FROM events WHERE business_id = ? AND cid = ?", (business_id, cid)).rowcount
        conn.execute("DELETE FROM counters WHERE cid = ?", (cid,))
        conn.execute("DELETE FROM link_clickers WHERE cid = ?", (cid,))
        conn.execute("DELETE FROM campaigns WHERE business_id = ? AND cid = ?", (business_id, cid))
        files = schedules.delete_campaign_runs(tx, business_id, campaign_id)
        tx.forget_campaign(cid)
        tx.touch_campaign(cid, None, tx.last_sequence(business_id))
        return Deleted(recipients, events, files)

    return job


def add_recipients(business_id: str, campaign_id: str, recipients: list[Recipient]) -> Job[tuple[int, int]]:
    """Writer job of one AddRecipients batch (recipients already checked).
    New recipients become PENDING messages and bump the pending counters of
    the campaign, their channel and their variant; the others are left as
    they are. Returns (added, already_present). NotFound if the campaign is
    gone; FailedPrecondition if it is CANCELLED. A COMPLETED campaign (which
    may have completed by itself while its audience was still being added)
    takes new recipients, as it takes late events: they count, and its state
    stays COMPLETED."""

    def job(tx: Tx) -> tuple[int, int]:
        conn = tx.conn
        tx.lock_business(business_id)
        row = conn.execute(
            "SELECT cid, state FROM campaigns WHERE business_id = ? AND campaign_id = ?", (business_id, campaign_id)
        ).fetchone()
        if row is None:
            raise _not_found(campaign_id)
        cid, state = int(row[0]), CampaignState(row[1])
        if state is CampaignState.CANCELLED:
            raise FailedPrecondition(
                f"campaign {campaign_id!r} is {state.name}: its audience can no longer change",
                reason="CAMPAIGN_FINAL",
            )
        # The writer is the only one inserting, so the recipients present now
        # (plus those this job adds) are exactly the conflicts.
        names = [r.recipient for r in recipients]
        present: set[str] = set()
        for start in range(0, len(names), _IN_CHUNK):
            chunk = names[start : start + _IN_CHUNK]
            marks = ", ".join("?" * len(chunk))
            present.update(
                row[0]
                for row in conn.execute(
                    f"SELECT recipient FROM messages WHERE cid = ? AND recipient IN ({marks})", (cid, *chunk)
                )
            )
        now, status = tx.now_us, int(Status.PENDING)
        rows: list[tuple[object, ...]] = []
        scopes: Counter[str] = Counter()
        for r in recipients:
            if r.recipient in present:
                continue
            present.add(r.recipient)
            inputs = jsonvars.dumps_vars(r.input_variables)
            rows.append(
                (cid, r.recipient, r.channel, r.variant, inputs, r.channel, r.variant, inputs, status, now, now)
            )
            scopes["c:" + r.channel] += 1
            scopes["v:" + r.variant] += 1
        conn.executemany(
            "INSERT INTO messages (cid, recipient, aud_channel, aud_variant, aud_input, channel, variant,"
            " input_vars, status, added_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (cid, recipient) DO NOTHING",
            rows,
        )
        added = len(rows)
        pending = Status.PENDING.bucket
        tx.count(cid, "", pending, added)
        for scope, n in scopes.items():
            tx.count(cid, scope, pending, n)
        if added:
            tx.touch_campaign(cid, None, tx.last_sequence(business_id))
        return added, len(recipients) - added

    return job
