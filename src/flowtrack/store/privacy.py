"""Erasing a recipient: the writer jobs and reads behind PrivacyService.

An erasure runs as a few writer jobs, each bounded, so that ingest goes on
between them (core/privacy.py drives them):

1. `begin`: the erasure's row (its pseudonym, who asked, when). From its
   COMMIT on, events and audience entries naming the recipient are refused
   (`erased_among`, called by ingest and AddRecipients under the business's
   lock: on PostgreSQL every replica sees it, because both lock the
   business's row), so no new row of it can appear while the next steps run.
2. `step`: the recipient's rows in a few campaigns, at most `STEP_ROWS` rows
   a job, no chunk of them begun after `STEP_SECONDS` in it: each row's
   identifier becomes the pseudonym and its personal data
   goes (domain/privacy.py says what); the report runs of those campaigns
   are deleted (their files are the caller's to delete). A campaign larger
   than a step is continued by the next one (its converted rows no longer
   match the identifier).
3. `finish`: the record's completion time.

Every statement names the business (campaigns by business_id and cid).
On SQLite a job runs with `PRAGMA secure_delete=ON` (store/sqlite/scrub.py):
what its updates free is overwritten with zeros, not left in free space.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from sqlalchemy import bindparam, func, select, update

from flowtrack.domain import jsonvars
from flowtrack.domain import privacy as rules
from flowtrack.domain import webhooks as ids
from flowtrack.domain.errors import NotFound
from flowtrack.domain.privacy import Erasure
from flowtrack.store import schedules, sql
from flowtrack.store.schema import (
    FORGET,
    button_clicks,
    campaigns,
    counters,
    engagement,
    erasures,
    events,
    link_clickers,
    messages,
    replies,
    server_settings,
)
from flowtrack.store.sqlite import scrub
from flowtrack.store.transaction import Tx
from flowtrack.store.writer import Job

STEP_ROWS = 500  # rows a step changes at most (then it ends; the next continues)
STEP_SECONDS = 0.05  # and it takes no further chunk or campaign after this long in the writer
_CHUNK = 100  # rows of a table changed by one statement (executemany) at most
TABLES = ("messages", "events", "engagement", "replies", "button_clicks", "link_clickers", "report_runs")

_KEY_NAME = "erasure_key"
_GET_KEY = select(server_settings.c.value).where(server_settings.c.key == _KEY_NAME)
_CREATE_KEY = sql.insert_on_both(
    lambda insert: insert(server_settings).values(key=_KEY_NAME, value=bindparam("value")).on_conflict_do_nothing()
)


def key(conn: Any) -> bytes | None:
    """The erasure key, or None before the first erasure."""
    found = sql.scalar(conn, _GET_KEY)
    return None if found is None else bytes(found)


def _key_made(conn: Any) -> bytes:
    """The erasure key, made on first use (writer connection)."""
    found = key(conn)
    if found is not None:
        return found
    sql.run(conn, _CREATE_KEY, {"value": secrets.token_bytes(rules.KEY_BYTES)})  # or another replica's
    made = key(conn)
    assert made is not None
    return made


# -- the refusal of later events --------------------------------------------------------------
_ANY_ERASURE = select(erasures.c.erasure_id).where(erasures.c.business_id == bindparam("business_id")).limit(1)
_ERASED = select(erasures.c.pseudonym).where(
    erasures.c.business_id == bindparam("business_id"),
    erasures.c.pseudonym.in_(bindparam("pseudonyms", expanding=True)),
)
_IN_CHUNK = 500


def erased_among(conn: Any, business_id: str, recipients: Iterable[str]) -> set[str]:
    """Which of `recipients` the business erased. One index probe when it
    erased nobody (the common case: no hashing, no key read); else one HMAC
    per distinct recipient and a look-up of the pseudonyms. Call it in the
    writer's job, after `tx.lock_business` (then it sees every erasure
    committed before, from any replica)."""
    if sql.scalar(conn, _ANY_ERASURE, {"business_id": business_id}) is None:
        return set()
    secret = key(conn)
    if secret is None:
        return set()
    by_pseudonym = {rules.pseudonym(secret, business_id, r): r for r in set(recipients)}
    names = sorted(by_pseudonym)
    found: set[str] = set()
    for at in range(0, len(names), _IN_CHUNK):
        values = {"business_id": business_id, "pseudonyms": names[at : at + _IN_CHUNK]}
        found.update(by_pseudonym[p] for (p,) in sql.run(conn, _ERASED, values))
    return found


# -- the record ------------------------------------------------------------------------------
class ErasureRow(NamedTuple):
    erasure_id: str
    key_id: str
    create_time: int
    complete_time: int | None
    campaigns: int
    rows: str


def _erasure(row: ErasureRow) -> Erasure:
    return Erasure(row.erasure_id, row.key_id, row.create_time, row.complete_time, row.campaigns, json.loads(row.rows))


_e = erasures.c
_RECORD = (_e.erasure_id, _e.key_id, _e.create_time, _e.complete_time, _e.campaigns, _e.rows)
_BY_PSEUDONYM = select(*_RECORD).where(_e.business_id == bindparam("business_id"), _e.pseudonym == bindparam("p"))
_BY_ID = select(*_RECORD).where(_e.business_id == bindparam("business_id"), _e.erasure_id == bindparam("erasure_id"))
_INSERT = erasures.insert().values(
    erasure_id=bindparam("erasure_id"),
    business_id=bindparam("business_id"),
    pseudonym=bindparam("p"),
    key_id=bindparam("key_id"),
    create_time=bindparam("now"),
)
_COUNTED = (
    update(erasures)
    .where(_e.business_id == bindparam("business_id"), _e.erasure_id == bindparam("erasure_id"))
    .values(rows=bindparam("rows"), campaigns=bindparam("campaigns"))
)
_FINISH = (
    update(erasures)
    .where(_e.business_id == bindparam("business_id"), _e.erasure_id == bindparam("erasure_id"))
    .values(complete_time=bindparam("now"))
)
_PAGE = (
    select(*_RECORD)
    .where(
        _e.business_id == bindparam("business_id"),
        (_e.create_time < bindparam("time"))
        | ((_e.create_time == bindparam("time")) & (_e.erasure_id < bindparam("erasure_id"))),
    )
    .order_by(_e.create_time.desc(), _e.erasure_id.desc())
    .limit(bindparam("limit"))
)


def find(conn: Any, business_id: str, recipient: str) -> Erasure | None:
    """The erasure of `recipient` in the business, if any (a read)."""
    secret = key(conn)
    if secret is None:
        return None
    values = {"business_id": business_id, "p": rules.pseudonym(secret, business_id, recipient)}
    row = next(sql.records(conn, _BY_PSEUDONYM, values, ErasureRow), None)
    return None if row is None else _erasure(row)


def get(conn: Any, business_id: str, erasure_id: str) -> Erasure:
    row = next(sql.records(conn, _BY_ID, {"business_id": business_id, "erasure_id": erasure_id}, ErasureRow), None)
    if row is None:
        raise NotFound(f"erasure {erasure_id!r} does not exist", reason="ERASURE_NOT_FOUND")
    return _erasure(row)


def page(conn: Any, business_id: str, after: tuple[int, str] | None, limit: int) -> list[Erasure]:
    """Up to `limit` erasures of the business, newest first, after `after` (create_time, erasure_id)."""
    time, erasure_id = after if after is not None else (2**62, "")
    values = {"business_id": business_id, "time": time, "erasure_id": erasure_id, "limit": limit}
    if after is None:
        values["erasure_id"] = "\U0010ffff"
    return [_erasure(row) for row in sql.records(conn, _PAGE, values, ErasureRow)]


def begin(business_id: str, recipient: str, key_id: str) -> Job[Erasure]:
    """Writer job: the erasure's row (or the recipient's earlier one). From
    its COMMIT on, the recipient's events are refused."""

    def job(tx: Tx) -> Erasure:
        conn = tx.conn
        tx.lock_business(business_id)
        p = rules.pseudonym(_key_made(conn), business_id, recipient)
        row = next(sql.records(conn, _BY_PSEUDONYM, {"business_id": business_id, "p": p}, ErasureRow), None)
        if row is not None:
            return _erasure(row)
        erasure_id = ids.new_id("er")
        values = {"erasure_id": erasure_id, "business_id": business_id, "p": p, "key_id": key_id, "now": tx.now_us}
        sql.run(conn, _INSERT, values)
        return Erasure(erasure_id, key_id, tx.now_us, None, 0, {})

    return job


def finish(business_id: str, erasure_id: str) -> Job[Erasure]:
    def job(tx: Tx) -> Erasure:
        tx.lock_business(business_id)
        sql.run(tx.conn, _FINISH, {"business_id": business_id, "erasure_id": erasure_id, "now": tx.now_us})
        return get(tx.conn, business_id, erasure_id)

    return job


# -- where the recipient is ------------------------------------------------------------------
class Held(NamedTuple):
    cid: int
    campaign_id: str


_HOLDING = (
    select(campaigns.c.cid, campaigns.c.campaign_id)
    .select_from(
        campaigns.join(
            messages, (messages.c.business_id == campaigns.c.business_id) & (messages.c.cid == campaigns.c.cid)
        )
    )
    .where(
        campaigns.c.business_id == bindparam("business_id"),
        messages.c.business_id == bindparam("business_id"),
        messages.c.recipient == bindparam("recipient"),
    )
    .order_by(campaigns.c.cid)
)


def holding(conn: Any, business_id: str, recipient: str) -> list[Held]:
    """The business's campaigns that hold `recipient` (a read: one probe of
    the messages' key per campaign of the business)."""
    return list(sql.records(conn, _HOLDING, {"business_id": business_id, "recipient": recipient}, Held))


# -- one step ----------------------------------------------------------------------------------
class Stepped(NamedTuple):
    """What one step did: the campaigns it finished (a prefix of those it
    was given), the rows it changed per table, the run files to delete."""

    done: int
    rows: dict[str, int]
    files: list[str]
    seconds: float  # how long the job ran in the writer's transaction


_m, _ev = messages.c, events.c


class _MessageRow(NamedTuple):
    cur_event_id: str | None
    reason_message: str
    attr_keys: str | None


_MESSAGE = select(_m.cur_event_id, _m.reason_message, _m.attr_keys).where(
    _m.business_id == bindparam("business_id"), _m.cid == bindparam("cid"), _m.recipient == bindparam("recipient")
)
_ERASE_MESSAGE = (
    update(messages)
    .where(
        _m.business_id == bindparam("business_id"), _m.cid == bindparam("cid"), _m.recipient == bindparam("recipient")
    )
    .values(
        recipient=bindparam("p"),
        aud_input=None,
        input_vars=None,
        output_vars=None,
        provider_message_id="",
        session_id="",
        cur_event_id=bindparam("cur_event_id"),
        reason_message=bindparam("reason_message"),
        attr_keys=bindparam("attr_keys"),
        **FORGET,  # the encoded forms hold the recipient (store/encodings.py)
    )
)

# At the start of every step in a campaign: what the step changes (the
# events' link variables and URLs, the taps' names) is in the message's
# encoded forms, which a report must not serve once it has begun.
_FORGET_MESSAGE = (
    update(messages)
    .where(
        _m.business_id == bindparam("business_id"), _m.cid == bindparam("cid"), _m.recipient == bindparam("recipient")
    )
    .values(**FORGET)
)


class _EventRow(NamedTuple):
    id: int
    event_id: str
    reason_message: str | None
    provider_message_id: str | None
    session_id: str | None
    link_variable: str | None
    url: str | None
    city: str | None
    text: str | None
    button_name: str | None
    exit_reason: str | None
    goal_id: str | None


_EVENTS = (
    select(
        _ev.id, _ev.event_id, _ev.reason_message, _ev.provider_message_id, _ev.session_id, _ev.link_variable,
        _ev.url, _ev.city, _ev.text, _ev.button_name, _ev.exit_reason, _ev.goal_id,
    )
    .where(_ev.business_id == bindparam("business_id"), _ev.cid == bindparam("cid"),
           _ev.recipient == bindparam("recipient"))
    .limit(bindparam("limit"))
)  # fmt: skip
_ERASE_EVENT = (
    update(events)
    .where(_ev.business_id == bindparam("business_id"), _ev.id == bindparam("id"))
    .values(
        recipient=bindparam("p"),
        event_id=bindparam("new_event_id"),
        fingerprint=b"",
        input_vars=None,
        output_vars=None,
        latitude=None,
        longitude=None,
        user_agent=None,
        ip_address=None,
        reason_message=bindparam("new_reason_message"),
        provider_message_id=bindparam("new_provider_message_id"),
        session_id=bindparam("new_session_id"),
        link_variable=bindparam("new_link_variable"),
        url=bindparam("new_url"),
        city=bindparam("new_city"),
        text=bindparam("new_text"),
        button_name=bindparam("new_button_name"),
        exit_reason=bindparam("new_exit_reason"),
        goal_id=bindparam("new_goal_id"),
    )
)

_g = engagement.c


class _EngagementRow(NamedTuple):
    exit_event_id: str | None
    exit_reason: str
    goal_event_id: str | None
    goal_id: str


_ENGAGEMENT = select(_g.exit_event_id, _g.exit_reason, _g.goal_event_id, _g.goal_id).where(
    _g.business_id == bindparam("business_id"), _g.cid == bindparam("cid"), _g.recipient == bindparam("recipient")
)
_ERASE_ENGAGEMENT = (
    update(engagement)
    .where(
        _g.business_id == bindparam("business_id"), _g.cid == bindparam("cid"), _g.recipient == bindparam("recipient")
    )
    .values(
        recipient=bindparam("p"),
        exit_event_id=bindparam("exit_event_id"),
        exit_reason=bindparam("exit_reason"),
        goal_event_id=bindparam("goal_event_id"),
        goal_id=bindparam("goal_id"),
    )
)
_REPLIES = (
    select(replies.c.seq)
    .where(
        replies.c.business_id == bindparam("business_id"),
        replies.c.cid == bindparam("cid"),
        replies.c.recipient == bindparam("recipient"),
    )
    .limit(bindparam("limit"))
)
_ERASE_REPLY = (
    update(replies)
    .where(
        replies.c.business_id == bindparam("business_id"),
        replies.c.cid == bindparam("cid"),
        replies.c.seq == bindparam("seq"),
    )
    .values(recipient=bindparam("p"), text="")
)


class _TapRow(NamedTuple):
    seq: int
    button_name: str


_TAPS = (
    select(button_clicks.c.seq, button_clicks.c.button_name)
    .where(
        button_clicks.c.business_id == bindparam("business_id"),
        button_clicks.c.cid == bindparam("cid"),
        button_clicks.c.recipient == bindparam("recipient"),
    )
    .limit(bindparam("limit"))
)
_ERASE_TAP = (
    update(button_clicks)
    .where(
        button_clicks.c.business_id == bindparam("business_id"),
        button_clicks.c.cid == bindparam("cid"),
        button_clicks.c.seq == bindparam("seq"),
    )
    .values(recipient=bindparam("p"), button_name=bindparam("button_name"))
)
# The campaign's links: from its per-link counters (scope 'l:LINK_ID').
_LINKS = (
    select(func.substr(counters.c.scope, 3))
    .where(
        counters.c.business_id == bindparam("business_id"),
        counters.c.cid == bindparam("cid"),
        counters.c.scope >= "l:",
        counters.c.scope < "l;",
        counters.c.name == "clicks",
    )
    .distinct()
)
_ERASE_CLICKERS = (
    update(link_clickers)
    .where(
        link_clickers.c.business_id == bindparam("business_id"),
        link_clickers.c.cid == bindparam("cid"),
        link_clickers.c.recipient == bindparam("recipient"),
        link_clickers.c.link_id.in_(bindparam("links", expanding=True)),
    )
    .values(recipient=bindparam("p"))
)


class _Step:
    """One step's state: the pseudonyms, and the rows it may still change."""

    def __init__(self, tx: Tx, business_id: str, recipient: str) -> None:
        self.conn = tx.conn
        self.business_id = business_id
        self.recipient = recipient
        self.secret = _key_made(tx.conn)
        self.p = rules.pseudonym(self.secret, business_id, recipient)
        self.left = STEP_ROWS
        self.deadline = time.perf_counter() + STEP_SECONDS
        self.rows: Counter[str] = Counter()

    def event_id(self, event_id: str | None) -> str | None:
        if event_id is None or event_id.startswith(rules.PREFIX):
            return event_id
        return rules.event_pseudonym(self.secret, self.business_id, event_id)

    def text(self, value: str | None) -> str | None:
        return rules.scrub(value, self.recipient, self.p)

    def campaign(self, cid: int) -> bool:
        """Erase the recipient in one campaign; False if the step ran out of
        rows first (the next step continues it)."""
        of = {"business_id": self.business_id, "cid": cid, "recipient": self.recipient}
        sql.run(self.conn, _FORGET_MESSAGE, of)
        while True:  # events, a chunk at a time: those changed no longer match
            limit = min(self.left, _CHUNK)
            found = list(sql.records(self.conn, _EVENTS, {**of, "limit": limit}, _EventRow))
            if found:
                sql.run_many(self.conn, _ERASE_EVENT, [self._event(row) for row in found])
                self.rows["events"] += len(found)
                self.left -= len(found)
            if self.spent():
                return False
            if len(found) < limit:
                break
        replies_left = self._rows("replies", _REPLIES, _ERASE_REPLY, of, lambda row: {"seq": row[0]})
        if not replies_left or not self._rows(
            "button_clicks", _TAPS, _ERASE_TAP, of, lambda row: {"seq": row[0], "button_name": self.text(row[1])}
        ):
            return False
        links = [str(link) for (link,) in sql.run(self.conn, _LINKS, {"business_id": self.business_id, "cid": cid})]
        if links:
            changed = sql.run(self.conn, _ERASE_CLICKERS, {**of, "p": self.p, "links": links}).rowcount
            self.rows["link_clickers"] += max(changed, 0)
        engaged = next(sql.records(self.conn, _ENGAGEMENT, of, _EngagementRow), None)
        if engaged is not None:
            values: dict[str, Any] = {
                **of,
                "p": self.p,
                "exit_event_id": self.event_id(engaged.exit_event_id),
                "exit_reason": self.text(engaged.exit_reason),
                "goal_event_id": self.event_id(engaged.goal_event_id),
                "goal_id": self.text(engaged.goal_id),
            }
            sql.run(self.conn, _ERASE_ENGAGEMENT, values)
            self.rows["engagement"] += 1
        message = next(sql.records(self.conn, _MESSAGE, of, _MessageRow), None)
        if message is not None:
            values = {
                **of,
                "p": self.p,
                "cur_event_id": self.event_id(message.cur_event_id),
                "reason_message": self.text(message.reason_message),
                "attr_keys": self._keys(message.attr_keys),
            }
            sql.run(self.conn, _ERASE_MESSAGE, values)
            self.rows["messages"] += 1
        self.left -= 2
        return True

    def _rows(
        self, table: str, select_: Any, erase: Any, of: dict[str, Any], values: Callable[[Any], dict[str, Any]]
    ) -> bool:
        """Erase the recipient's rows of `table` (keyed by cid and seq) in
        the campaign, as many as the step may; False if it ran out first."""
        found = sql.run(self.conn, select_, {**of, "limit": self.left}).fetchall()
        if found:
            rows = [{"business_id": self.business_id, "cid": of["cid"], "p": self.p, **values(row)} for row in found]
            sql.run_many(self.conn, erase, rows)
            self.rows[table] += len(found)
            self.left -= len(found)
        return not self.spent()

    def spent(self) -> bool:
        """Whether the step used its rows, or its time once it changed
        something (every step makes progress, however slow the machine)."""
        return self.left <= 0 or (self.left < STEP_ROWS and time.perf_counter() > self.deadline)

    def _event(self, row: _EventRow) -> dict[str, Any]:
        return {
            "business_id": self.business_id,
            "id": row.id,
            "p": self.p,
            "new_event_id": self.event_id(row.event_id),
            "new_reason_message": self.text(row.reason_message),
            "new_provider_message_id": None if row.provider_message_id is None else "",
            "new_session_id": None if row.session_id is None else "",
            "new_link_variable": self.text(row.link_variable),
            "new_url": self.text(row.url),
            "new_city": None,
            "new_text": None if row.text is None else "",
            "new_button_name": self.text(row.button_name),
            "new_exit_reason": self.text(row.exit_reason),
            "new_goal_id": self.text(row.goal_id),
        }

    def _keys(self, attr_keys: str | None) -> str | None:
        """The message's per-attribute keys with the event ids replaced."""
        if attr_keys is None:
            return None
        keys = {name: [k[0], k[1], k[2], self.event_id(k[3])] for name, k in json.loads(attr_keys).items()}
        return jsonvars.dumps(keys)


def step(business_id: str, recipient: str, erasure_id: str, held: list[Held]) -> Job[Stepped]:
    """Writer job: erase the recipient in the campaigns `held` (in order),
    until STEP_ROWS rows are changed; the erasure's row counts them."""

    def job(tx: Tx) -> Stepped:
        began = time.perf_counter()
        tx.lock_business(business_id)
        with scrub.secure_delete(tx.conn):
            state = _Step(tx, business_id, recipient)
            done = 0
            files: list[str] = []
            for cid, campaign_id in held:
                if not state.campaign(cid):
                    break
                paths = schedules.delete_campaign_runs(tx, business_id, campaign_id)
                state.rows["report_runs"] += len(paths)
                files.extend(paths)
                done += 1
                if state.spent():
                    break
            record = get(tx.conn, business_id, erasure_id)
            total = Counter(record.rows)
            total.update(state.rows)
            values = {
                "business_id": business_id,
                "erasure_id": erasure_id,
                "rows": json.dumps({t: total[t] for t in TABLES if total[t]}),
                "campaigns": record.campaigns + done,
            }
            sql.run(tx.conn, _COUNTED, values)
            return Stepped(done, dict(state.rows), files, time.perf_counter() - began)

    return job


# -- the files ---------------------------------------------------------------------------------
async def settle(store: Any) -> bool:
    """After an erasure's steps, leave its old values in no database file
    (store/sqlite/scrub.py; store/pg/vacuum.py says what PostgreSQL keeps).
    Whether it got through: False if SQLite's WAL could not be checkpointed
    (readers held old snapshots for the whole wait)."""
    from flowtrack.store.base import is_postgres

    if is_postgres(store.path):
        from flowtrack.store.pg.vacuum import vacuum

        await asyncio.to_thread(vacuum, store.path)
        return True
    # The free list as it was, and what ingest frees meanwhile; bounded, in
    # case something else keeps freeing pages as fast as they are filled.
    number, free = 0, await store.write(scrub.fill_free_pages(0))
    most = free // scrub.SCRUB_PAGES + 16
    while free and number < most:
        number += 1
        free = await store.write(scrub.fill_free_pages(number))
    while await store.write(scrub.empty_free_pages()) > 1:
        pass
    return await asyncio.to_thread(scrub.checkpoint, store.path)
