"""store/dialects.py: the constructs whose SQL differs by backend give the
same answers on both (issue 20, items 2 and 3), run on a real database of
each backend; the SQLite-only index hint is rendered on SQLite alone."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import bindparam, func, literal, select

from flowtrack.store import dialects, sql
from flowtrack.store.schema import campaigns, events
from flowtrack.v1 import campaign_pb2 as pb
from tests.conftest import Client, ServerThread, connect_db


def _campaigns(client: Client) -> None:
    for campaign_id, name, labels in (
        ("a", "Straße", {"team": "growth", "tier": "gold"}),
        ("b", "ΟΔΟΣ", {"team": "care"}),
        ("c", "plain", {}),
    ):
        campaign = pb.Campaign(id=campaign_id, name=name, labels=labels)
        client.campaigns.CreateCampaign(pb.CreateCampaignRequest(campaign=campaign), timeout=10)


def _all(conn: Any, statement: Any, values: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in sql.run(conn, statement, values)]


def test_the_dialect_constructs_answer_alike(server: ServerThread, client: Client) -> None:
    _campaigns(client)
    conn = connect_db(server.settings.database)
    try:
        mine = campaigns.c.business_id == "default"
        # position: 1-based, 0 when absent, characters as they are (no case folding)
        where = dialects.position(bindparam("text"), bindparam("part"))
        assert _all(conn, select(where), {"text": "straße sale", "part": "ße"}) == [(5,)]
        assert _all(conn, select(where), {"text": "straße sale", "part": "SSE"}) == [(0,)]
        # json_array: the values of the rows where the condition holds; '[]' for none
        names = dialects.json_array(campaigns.c.campaign_id, campaigns.c.name != bindparam("not"))
        ordered = select(names).where(mine)
        assert sorted(json.loads(_all(conn, ordered, {"not": "plain"})[0][0])) == ["a", "b"]
        assert _all(conn, select(dialects.json_array(campaigns.c.campaign_id, mine).label("x")).where(~mine)) == [
            ("[]",)
        ]
        # json_pairs: a JSON object's pairs, values as text
        pairs = dialects.json_pairs(campaigns.c.labels)
        found = (
            select(campaigns.c.campaign_id, pairs.c.key, pairs.c.value)
            .where(mine)
            .order_by(campaigns.c.campaign_id, pairs.c.key)
        )
        assert _all(conn, found) == [("a", "team", "growth"), ("a", "tier", "gold"), ("b", "team", "care")]
        # indexed_by: the same rows, the hint on SQLite only
        hinted = dialects.indexed_by(events, "events_by_campaign")
        count = select(func.count()).select_from(hinted).where(hinted.c.business_id == "default", hinted.c.cid > 0)
        assert _all(conn, count) == [(0,)]
        assert "INDEXED BY events_by_campaign" in sql.compile_for(count, sql.SQLITE).text
        assert "INDEXED BY" not in sql.compile_for(count, sql.POSTGRESQL).text
        assert _all(conn, select(literal(1))) == [(1,)]
    finally:
        conn.close()
