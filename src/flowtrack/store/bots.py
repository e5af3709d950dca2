"""Bot clicks in the store (domain/bots.py has the rules themselves).

- `rules_of`: a business's rules, read in the writer's transaction (one
  primary-key read per ingest batch that holds a click), so every replica
  classifies with the rules committed before it.
- `Clickers` and `apply_clickers`: each (campaign, link, recipient)'s clicks
  and human clicks as a batch changes them, written once per batch, with the
  counters of unique clickers and unique human clickers per link.
- `reclassify`: the clicks of some messages classified again from what is
  stored (their user agents, their messages' delivery, the rules), the
  changed reasons written back and every human figure moved by the
  difference: the messages' human clicks, the link clickers', the counters.
  Ingest calls it for the messages whose delivery became known (or earlier)
  after some of their clicks were stored; `reclassify_step` calls it for
  every message with a click, a bounded page per writer job, after a change
  of the rules.
- A business's re-classification is durable: the change of its rules
  (`update_settings`) records it in `reclassifications` in the change's own
  transaction, each step reads its progress (campaign and recipient
  reached) there, does one page and writes the progress on in the page's
  own transaction, and the last step deletes the row. A step is taken only
  by the row's holder (a settings call, or a server's background task) or
  once its hold lapsed, so one worker at a time goes through a business; a
  newer change of the rules starts it again from the first campaign.

Ingested columns never change; only `events.bot_reason` and the derived
human figures do.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy import bindparam

from flowtrack.domain.bots import (
    DEFAULT_RULES,
    HUMAN,
    BotRules,
    BusinessSettings,
    Reclassifying,
    SettingsChange,
    classify,
)
from flowtrack.domain.ingest import KIND_CLICK
from flowtrack.domain.model import Status
from flowtrack.domain.privacy import is_pseudonym
from flowtrack.store import dialects, sql
from flowtrack.store.db import Lookup, Rows, execute_rows, rows_by_keys
from flowtrack.store.schema import (
    FORGET,
    business_settings,
    campaigns,
    events,
    link_clickers,
    messages,
    reclassifications,
)
from flowtrack.store.writer import Job, Tx

_RULES = sa.select(
    business_settings.c.bot_click_threshold_ms, business_settings.c.crawler_ua_is_bot, business_settings.c.no_ua_is_bot
).where(business_settings.c.business_id == bindparam("business_id"))


def rules_of(conn: Any, business_id: str) -> BotRules:
    """The business's bot rules (the defaults if it never set them)."""
    row = sql.one(conn, _RULES, {"business_id": business_id})
    if row is None:
        return DEFAULT_RULES
    return BotRules(crawler_ua_is_bot=bool(row[1]), no_ua_is_bot=bool(row[2]), threshold_us=int(row[0]) * 1000)


# -- link clickers ------------------------------------------------------------


class ClickerRow(NamedTuple):
    business_id: str
    cid: int
    link_id: str
    recipient: str
    human_clicks: int


_CLICKERS = Lookup(
    link_clickers,
    (link_clickers.c.business_id, link_clickers.c.cid, link_clickers.c.link_id, link_clickers.c.recipient),
    (link_clickers.c.human_clicks,),
    ClickerRow,
)
_UPSERT_CLICKERS = Rows(
    link_clickers,
    ("business_id", "cid", "link_id", "recipient", "human_clicks"),
    lambda insert: insert.on_conflict_do_update(
        index_elements=[
            link_clickers.c.business_id,
            link_clickers.c.cid,
            link_clickers.c.link_id,
            link_clickers.c.recipient,
        ],
        set_={"human_clicks": insert.excluded.human_clicks},
    ),
)

ClickerKey = tuple[int, str, str]  # (cid, link_id, recipient)


@dataclass(slots=True)
class Clickers:
    """What a batch changes of the link clickers: per (cid, link_id,
    recipient), whether it clicked in the batch and the change of its human
    clicks."""

    clicked: set[ClickerKey] = field(default_factory=set)
    human: Counter[ClickerKey] = field(default_factory=Counter)

    def click(self, key: ClickerKey, human: bool) -> None:
        self.clicked.add(key)
        if human:
            self.human[key] += 1


def apply_clickers(tx: Tx, business_id: str, changes: Clickers) -> None:
    """Write `changes`: one query finds the rows of the keys it touches, one
    upsert writes the new and the changed ones; the link scopes' counters
    unique_clickers and unique_human_clickers move with them."""
    keys = changes.clicked | {key for key, n in changes.human.items() if n}
    if not keys:
        return
    wanted = {(business_id, *key) for key in keys}
    known = {(r.cid, r.link_id, r.recipient): r.human_clicks for r in rows_by_keys(tx.conn, _CLICKERS, wanted)}
    rows = []
    unique: Counter[tuple[int, str]] = Counter()
    unique_human: Counter[tuple[int, str]] = Counter()
    for key in sorted(keys):
        cid, link_id, _ = key
        before = known.get(key)
        after = (before or 0) + changes.human[key]
        if before is None:
            if key not in changes.clicked:
                continue  # a re-classification never makes a clicker
            unique[(cid, link_id)] += 1
        elif after == before:
            continue
        rows.append((business_id, *key, after))
        unique_human[(cid, link_id)] += (after > 0) - ((before or 0) > 0)
    execute_rows(tx.conn, _UPSERT_CLICKERS, rows)
    for (cid, link_id), n in unique.items():
        tx.count(business_id, cid, "l:" + link_id, "unique_clickers", n)
    for (cid, link_id), n in unique_human.items():
        if n:
            tx.count(business_id, cid, "l:" + link_id, "unique_human_clickers", n)


def count_human(tx: Tx, business_id: str, cid: int, channel: str, variant: str, before: int, after: int) -> None:
    """A message's human clicks went from `before` to `after`: move its
    campaign, channel and variant scopes' human_clicks and unique_human_clickers."""
    unique = (after > 0) - (before > 0)
    for scope in ("", "c:" + channel, "v:" + variant):
        tx.count(business_id, cid, scope, "human_clicks", after - before)
        if unique:
            tx.count(business_id, cid, scope, "unique_human_clickers", unique)


# -- re-classification ---------------------------------------------------------


class StoredClick(NamedTuple):
    id: int
    recipient: str
    link_id: str
    occurred_at: int
    user_agent: str | None
    bot_reason: int | None


# Read through the messages' index (cid, recipient). For the ORDER BY, SQLite's
# planner otherwise takes the campaign's clicks index (cid, id) and steps
# through every click of the campaign to find a few messages' clicks (6.1 ms
# instead of 0.6 ms for 40 messages of a campaign of 12,500 clicks;
# docs/performance.md), a cost per ingested SUCCESS that grows with history.
_BY_MESSAGE = dialects.indexed_by(events, "events_by_message")
_CLICKS_OF = (
    sa.select(
        _BY_MESSAGE.c.id, _BY_MESSAGE.c.recipient, _BY_MESSAGE.c.link_id, _BY_MESSAGE.c.occurred_at,
        _BY_MESSAGE.c.user_agent, _BY_MESSAGE.c.bot_reason,
    )
    .where(
        _BY_MESSAGE.c.cid == bindparam("cid"),
        _BY_MESSAGE.c.recipient.in_(bindparam("recipients", expanding=True)),
        _BY_MESSAGE.c.kind == KIND_CLICK,
        _BY_MESSAGE.c.business_id == bindparam("business_id"),
    )
    .order_by(_BY_MESSAGE.c.id)
)  # fmt: skip
_SET_REASON = (
    sa.update(events)
    .where(events.c.id == bindparam("event"), events.c.business_id == bindparam("business_id"))
    .values(bot_reason=bindparam("reason"))
)


def stored_clicks(conn: Any, business_id: str, cid: int, recipients: list[str]) -> list[StoredClick]:
    """The stored clicks of some messages (`recipients`) of campaign `cid`, in id order."""
    values = {"cid": cid, "recipients": recipients, "business_id": business_id}
    return list(sql.records(conn, _CLICKS_OF, values, StoredClick))


@dataclass(slots=True)
class Counted:
    """What re-classification needs of a message: its delivery, its scopes
    and its human clicks (changed in place)."""

    delivered_at: int | None
    channel: str
    variant: str
    human_clicks: int


def reclassify(
    tx: Tx, business_id: str, rules: BotRules, found: dict[tuple[int, str], Counted], clickers: Clickers
) -> int:
    """Classify again every stored click of the messages `found` (keyed by
    (cid, recipient)) under `rules`: write the reasons that changed, move
    each message's `human_clicks` (in `found`: the caller writes the
    messages and moves their scopes' counters), the link counters, and the link
    clickers' human changes into `clickers` (the caller applies them).
    Returns how many clicks changed class or reason."""
    by_cid: dict[int, list[str]] = {}
    for cid, recipient in found:
        by_cid.setdefault(cid, []).append(recipient)
    changed: list[dict[str, Any]] = []
    for cid, recipients in sorted(by_cid.items()):
        for at in range(0, len(recipients), 256):
            some = sorted(recipients[at : at + 256])
            for click in stored_clicks(tx.conn, business_id, cid, some):
                if is_pseudonym(click.recipient):
                    continue  # erased: its user agent is gone, its class stays (docs/api/privacy.md)
                message = found[(cid, click.recipient)]
                reason = classify(rules, click.user_agent, click.occurred_at, message.delivered_at)
                if reason == click.bot_reason:
                    continue
                changed.append({"event": click.id, "business_id": business_id, "reason": reason})
                was_human = click.bot_reason == HUMAN
                if was_human == (reason == HUMAN):
                    continue  # another bot reason: the counts stay
                step = 1 if reason == HUMAN else -1
                message.human_clicks += step
                tx.count(business_id, cid, "l:" + click.link_id, "human_clicks", step)
                clickers.human[(cid, click.link_id, click.recipient)] += step
    if changed:
        sql.run_many(tx.conn, _SET_REASON, changed)
    return len(changed)


class MessageOfClicks(NamedTuple):
    recipient: str
    success_at: int | None
    channel: str
    variant: str
    human_clicks: int


_MESSAGES_WITH_CLICKS = (
    sa.select(messages.c.recipient, messages.c.success_at, messages.c.channel, messages.c.variant,
              messages.c.human_clicks)
    .where(
        messages.c.business_id == bindparam("business_id"),
        messages.c.cid == bindparam("cid"),
        messages.c.recipient > bindparam("after"),
        messages.c.clicks > 0,
    )
    .order_by(messages.c.recipient)
    .limit(bindparam("limit"))
)  # fmt: skip
_SET_HUMAN_CLICKS = (
    sa.update(messages)
    .where(
        messages.c.business_id == bindparam("business_id"),
        messages.c.cid == bindparam("cid"),
        messages.c.recipient == bindparam("recipient"),
    )
    .values(human_clicks=bindparam("human"), **FORGET)  # (not in its encodings today: forgotten all the same)
)

# Messages per writer job of a re-classification: a job reads them and their
# clicks and writes what changed (a few ms; ingest waits at most that long).
RECLASSIFY_BATCH = 200


def reclassify_page(tx: Tx, business_id: str, cid: int, after: str, limit: int | None = None) -> tuple[str, int]:
    """One page of a business's re-classification: the next `limit`
    (RECLASSIFY_BATCH) messages of campaign `cid` with a click after
    recipient `after`, classified again under the business's rules as they
    are now. Returns the last recipient done ('' when the campaign is done)
    and how many clicks changed."""
    limit = limit or RECLASSIFY_BATCH
    tx.lock_business(business_id)
    rules = rules_of(tx.conn, business_id)
    rows = list(
        sql.records(
            tx.conn,
            _MESSAGES_WITH_CLICKS,
            {"business_id": business_id, "cid": cid, "after": after, "limit": limit},
            MessageOfClicks,
        )
    )
    if not rows:
        return "", 0
    found = {(cid, r.recipient): Counted(r.success_at, r.channel, r.variant, r.human_clicks) for r in rows}
    before = {key: message.human_clicks for key, message in found.items()}
    clickers = Clickers()
    changed = reclassify(tx, business_id, rules, found, clickers)
    apply_clickers(tx, business_id, clickers)
    updates = []
    for key, message in found.items():
        if message.human_clicks != before[key]:
            count_human(tx, business_id, cid, message.channel, message.variant, before[key], message.human_clicks)
            updates.append(
                {"business_id": business_id, "cid": key[0], "recipient": key[1], "human": message.human_clicks}
            )
    if updates:
        sql.run_many(tx.conn, _SET_HUMAN_CLICKS, updates)
    if changed:
        tx.touch_campaign(business_id, cid, None, 0)  # its live stats move
    return (rows[-1].recipient if len(rows) == limit else ""), changed


def delivered(status_events: Iterable[tuple[Status, int]], stored: int | None) -> int | None:
    """A message's delivery time after some status events (status,
    occurred_at): the earliest SUCCESS, the stored one included."""
    best = stored
    for status, occurred_at in status_events:
        if status == Status.SUCCESS and (best is None or occurred_at < best):
            best = occurred_at
    return best


# -- settings -----------------------------------------------------------------

_SETTINGS = sa.select(
    business_settings.c.bot_click_threshold_ms,
    business_settings.c.crawler_ua_is_bot,
    business_settings.c.no_ua_is_bot,
    business_settings.c.update_time,
).where(business_settings.c.business_id == bindparam("business_id"))
_SAVE_SETTINGS = sql.insert_on_both(
    lambda insert: (
        insert(business_settings)
        .values(
            business_id=bindparam("business_id"),
            bot_click_threshold_ms=bindparam("threshold_ms"),
            crawler_ua_is_bot=bindparam("crawler"),
            no_ua_is_bot=bindparam("no_ua"),
            update_time=bindparam("now"),
        )
        .on_conflict_do_update(
            index_elements=[business_settings.c.business_id],
            set_={
                "bot_click_threshold_ms": bindparam("threshold_ms"),
                "crawler_ua_is_bot": bindparam("crawler"),
                "no_ua_is_bot": bindparam("no_ua"),
                "update_time": bindparam("now"),
            },
        )
    )
)


def get_settings(conn: Any, business_id: str) -> BusinessSettings:
    """The business's settings, with its re-classification still going on (if any)."""
    progress = progress_of(conn, business_id)
    going_on = None if progress is None else Reclassifying(progress.requested_at, progress.changed)
    row = sql.one(conn, _SETTINGS, {"business_id": business_id})
    if row is None:
        return BusinessSettings(reclassifying=going_on)
    rules = BotRules(crawler_ua_is_bot=bool(row[1]), no_ua_is_bot=bool(row[2]), threshold_us=int(row[0]) * 1000)
    return BusinessSettings(rules, int(row[3]), going_on)


def update_settings(
    business_id: str, change: SettingsChange, holder: str, hold_us: int
) -> Job[tuple[BusinessSettings, bool]]:
    """The writer job of UpdateSettings: the settings after `change`, and
    whether the bot rules changed. If they did, the business's
    re-classification is recorded in the same transaction, from its first
    campaign (one under way starts again), held by `holder` for `hold_us`."""

    def job(tx: Tx) -> tuple[BusinessSettings, bool]:
        tx.lock_business(business_id)
        rules = rules_of(tx.conn, business_id)
        after = change.applied(rules)
        values = {
            "business_id": business_id,
            "threshold_ms": after.threshold_us // 1000,
            "crawler": int(after.crawler_ua_is_bot),
            "no_ua": int(after.no_ua_is_bot),
            "now": tx.now_us,
        }
        sql.run(tx.conn, _SAVE_SETTINGS, values)
        changed = after != rules
        if changed:
            start = {"business_id": business_id, "now": tx.now_us, "holder": holder, "until": tx.now_us + hold_us}
            sql.run(tx.conn, _START, start)
        return BusinessSettings(after, tx.now_us), changed

    return job


# -- durable re-classification -----------------------------------------------------

_START = sql.insert_on_both(
    lambda insert: (
        insert(reclassifications)
        .values(
            business_id=bindparam("business_id"),
            cid=0,
            after="",
            changed=0,
            requested_at=bindparam("now"),
            holder=bindparam("holder"),
            held_until=bindparam("until"),
        )
        .on_conflict_do_update(
            index_elements=[reclassifications.c.business_id],
            set_={
                "cid": 0,
                "after": "",
                "changed": 0,
                "requested_at": bindparam("now"),
                "holder": bindparam("holder"),
                "held_until": bindparam("until"),
            },
        )
    )
)


class Progress(NamedTuple):
    """A pending re-classification: the messages of campaign `cid` after
    recipient `after` and every later campaign remain (cid 0: all of them)."""

    business_id: str
    cid: int
    after: str
    changed: int
    requested_at: int
    holder: str
    held_until: int


_PROGRESS = sa.select(*(reclassifications.c[name] for name in Progress._fields)).where(
    reclassifications.c.business_id == bindparam("business_id")
)
_MOVE_ON = (
    sa.update(reclassifications)
    .where(reclassifications.c.business_id == bindparam("business_id"))
    .values(
        cid=bindparam("cid"),
        after=bindparam("after"),
        changed=bindparam("changed"),
        holder=bindparam("holder"),
        held_until=bindparam("until"),
    )
)
_FINISHED = sa.delete(reclassifications).where(reclassifications.c.business_id == bindparam("business_id"))
_LET_GO = (
    sa.update(reclassifications)
    .where(
        reclassifications.c.business_id == bindparam("business_id"), reclassifications.c.holder == bindparam("holder")
    )
    .values(held_until=0)
)
_NEXT_CAMPAIGN = sa.select(sa.func.min(campaigns.c.cid)).where(
    campaigns.c.business_id == bindparam("business_id"), campaigns.c.cid > bindparam("cid")
)
_PENDING = (
    sa.select(*(reclassifications.c[name] for name in Progress._fields))
    .where(reclassifications.c.business_id > bindparam("after"))
    .order_by(reclassifications.c.business_id)
    .limit(bindparam("limit"))
)


@dataclass(frozen=True, slots=True)
class Step:
    """What a step did: the clicks it changed; whether the business's
    re-classification is finished (also when there was none); whether
    another holder has it (then the step did nothing)."""

    changed: int = 0
    done: bool = False
    held_elsewhere: bool = False
    total: int = 0  # clicks changed by the whole re-classification so far


def reclassify_step(business_id: str, holder: str, hold_us: int) -> Job[Step]:
    """One page of the business's pending re-classification, as a writer
    job: unless another holder has it, the page at its progress, classified
    under the rules as committed now, and the progress moved on (or the row
    deleted after the last page) in the same transaction, held by `holder`
    for `hold_us` more. The progress is read under the business's lock, so
    steps of two workers run one after the other and never redo a page."""

    def job(tx: Tx) -> Step:
        tx.lock_business(business_id)
        found = sql.one(tx.conn, _PROGRESS, {"business_id": business_id})
        if found is None:
            return Step(done=True)
        progress = Progress(*found)
        if progress.holder != holder and progress.held_until > tx.now_us:
            return Step(held_elsewhere=True, total=progress.changed)
        cid, after, changed = progress.cid, progress.after, 0
        if cid:
            after, changed = reclassify_page(tx, business_id, cid, after)
        if not after:  # the campaign is done: on to the next
            cid = sql.scalar(tx.conn, _NEXT_CAMPAIGN, {"business_id": business_id, "cid": cid}) or 0
        total = progress.changed + changed
        if not cid:
            sql.run(tx.conn, _FINISHED, {"business_id": business_id})
            return Step(changed, done=True, total=total)
        values = {
            "business_id": business_id,
            "cid": cid,
            "after": after,
            "changed": total,
            "holder": holder,
            "until": tx.now_us + hold_us,
        }
        sql.run(tx.conn, _MOVE_ON, values)
        return Step(changed, total=total)

    return job


def let_go(business_id: str, holder: str) -> Job[None]:
    """`holder` stops working the business's re-classification: another may take it at once."""

    def job(tx: Tx) -> None:
        tx.lock_business(business_id)
        sql.run(tx.conn, _LET_GO, {"business_id": business_id, "holder": holder})

    return job


def pending(conn: Any, after: str, limit: int) -> list[Progress]:
    """Up to `limit` pending re-classifications of businesses after `after`, in key order."""
    return list(sql.records(conn, _PENDING, {"after": after, "limit": limit}, Progress))


def progress_of(conn: Any, business_id: str) -> Progress | None:
    """The business's pending re-classification, or None."""
    found = sql.one(conn, _PROGRESS, {"business_id": business_id})
    return None if found is None else Progress(*found)
