"""Campaigns made from a segment of another (CampaignSource): the writer job
part of CreateCampaign that records the source and copies the segment's
recipients, and the lookups of a campaign's source.

A segment is a MessageFilter (domain/segments.py): its statuses and engaged
segments become conditions on the source's messages joined to their
engagement rows, the same meaning as the message report's filter
(store/engaged_reports.py). The copy is one INSERT ... SELECT in the
create's transaction, so the new audience is the segment at that commit,
whatever its size, with no row passing through Python.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, literal, not_, select, update
from sqlalchemy.sql.elements import ColumnElement

from flowtrack.domain.errors import NotFound
from flowtrack.domain.model import CampaignSource, Status
from flowtrack.domain.segments import SEGMENTS
from flowtrack.domain.stats import MessageFilter
from flowtrack.store import sql
from flowtrack.store.schema import campaigns, engagement, messages
from flowtrack.store.writer import Tx

_CID = select(campaigns.c.cid).where(
    campaigns.c.business_id == bindparam("business_id"), campaigns.c.campaign_id == bindparam("campaign_id")
)
_SET = (
    update(campaigns)
    .where(campaigns.c.business_id == bindparam("business_id"), campaigns.c.cid == bindparam("cid"))
    .values(source_campaign_id=bindparam("source_campaign_id"), source_segment=bindparam("source_segment"))
)
_SOURCES = select(campaigns.c.campaign_id, campaigns.c.source_campaign_id, campaigns.c.source_segment).where(
    campaigns.c.business_id == bindparam("business_id"),
    campaigns.c.campaign_id.in_(bindparam("campaign_ids", expanding=True)),
    campaigns.c.source_campaign_id.is_not(None),
)

_JOINED = messages.outerjoin(
    engagement,
    and_(
        engagement.c.business_id == messages.c.business_id,
        engagement.c.cid == messages.c.cid,
        engagement.c.recipient == messages.c.recipient,
    ),
)
# What "did it" means per engaged segment, on the joined row (as in store/engaged_reports.py).
_DID: dict[str, ColumnElement[bool]] = {
    "read": engagement.c.read_at.is_not(None),
    "replied": engagement.c.replied_at.is_not(None),
    "opted_out": engagement.c.opted_out_at.is_not(None),
    "clicked_link": messages.c.clicks > 0,
    "clicked_button": func.coalesce(engagement.c.button_clicks, 0) > 0,
    "reached_goal": engagement.c.goal_at.is_not(None),
}


def _conditions(flt: MessageFilter) -> list[ColumnElement[bool]]:
    """The segment's conditions on the joined source messages (statuses and
    engaged segments: what a named segment sets), the source's business and cid bound."""
    out: list[ColumnElement[bool]] = [
        messages.c.business_id == bindparam("business_id"),
        messages.c.cid == bindparam("source_cid"),
    ]
    if flt.statuses:
        out.append(messages.c.status.in_([Status(s) for s in flt.statuses]))
    for name, did in flt.segments().items():
        out.append(_DID[name] if did else not_(_DID[name]))
    return out


def _statements(flt: MessageFilter) -> tuple[Any, Any]:
    """The copy (INSERT ... SELECT) and the per-channel-and-variant count of
    one segment."""
    where = _conditions(flt)
    copy = insert(messages).from_select(
        [
            "cid",
            "recipient",
            "aud_channel",
            "aud_variant",
            "aud_input",
            "channel",
            "variant",
            "input_vars",
            "status",
            "added_at",
            "updated_at",
            "business_id",
        ],
        select(
            bindparam("cid"),
            messages.c.recipient,
            messages.c.channel,
            messages.c.variant,
            messages.c.input_vars,
            messages.c.channel,
            messages.c.variant,
            messages.c.input_vars,
            literal(Status.PENDING),
            bindparam("now"),
            bindparam("now"),
            messages.c.business_id,  # the source's: the new campaign's business (the WHERE binds it)
        )
        .select_from(_JOINED)
        .where(*where),
    )
    counts = (
        select(messages.c.channel, messages.c.variant, func.count().label("n"))
        .select_from(_JOINED)
        .where(*where)
        .group_by(messages.c.channel, messages.c.variant)
    )
    return copy, counts


# One (copy, count) pair per named segment, built once.
_BY_SEGMENT = {name: _statements(flt) for name, flt in SEGMENTS.items()}


def copy_segment(tx: Tx, business_id: str, cid: int, source: CampaignSource) -> int:
    """In CreateCampaign's job, after the new campaign's row (`cid`): record
    its source and copy the source segment's recipients as PENDING messages
    with their channel, variant and input variables (the effective ones: from
    the audience, or as the events set them), counting them as
    add_recipients does. NotFound if the source campaign does not exist.
    Returns the recipients copied."""
    conn = tx.conn
    source_cid = sql.scalar(conn, _CID, {"business_id": business_id, "campaign_id": source.campaign_id})
    if source_cid is None:
        raise NotFound(f"source campaign {source.campaign_id!r} does not exist", reason="CAMPAIGN_NOT_FOUND")
    sql.run(
        conn,
        _SET,
        {
            "business_id": business_id,
            "cid": cid,
            "source_campaign_id": source.campaign_id,
            "source_segment": source.segment,
        },
    )
    copy, counts = _BY_SEGMENT[source.segment]
    groups = list(sql.run(conn, counts, {"business_id": business_id, "source_cid": source_cid}))
    sql.run(conn, copy, {"business_id": business_id, "source_cid": source_cid, "cid": cid, "now": tx.now_us})
    pending = Status.PENDING.bucket
    total = 0
    for channel, variant, n in groups:
        total += n
        tx.count(business_id, cid, "c:" + channel, pending, n)
        tx.count(business_id, cid, "v:" + variant, pending, n)
    if total:
        tx.count(business_id, cid, "", pending, total)
        tx.touch_campaign(business_id, cid, None, tx.last_sequence(business_id))
    return total


def sources(conn: Any, business_id: str, campaign_ids: Iterable[str]) -> dict[str, CampaignSource]:
    """The source of each of a business's `campaign_ids` that has one."""
    wanted = list(dict.fromkeys(campaign_ids))
    found: dict[str, CampaignSource] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        for campaign_id, source_id, segment in sql.run(
            conn, _SOURCES, {"business_id": business_id, "campaign_ids": chunk}
        ):
            found[campaign_id] = CampaignSource(source_id, segment)
    return found


def source_of(conn: Any, business_id: str, campaign_id: str) -> CampaignSource | None:
    return sources(conn, business_id, [campaign_id]).get(campaign_id)
