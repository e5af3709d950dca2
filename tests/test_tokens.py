"""Page and resume tokens across businesses, and filters with SQL
metacharacters, on a real server with API keys.

- ListCampaigns' page_token and the resume_token of StreamMessageReport,
  StreamClickReport, StreamMessageHistory and StreamReplies: a genuine token continues; a
  made-up one, one signed with another key, one with a byte changed, and
  another business's genuine token for the same campaign id and filter are
  INVALID_ARGUMENT on the token field.
- Filter values holding quotes, `%`, `_`, `\\` and `;--` match themselves
  only: never as LIKE wildcards, never as SQL; the tables survive.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from flowtrack.domain import tokens
from flowtrack.v1 import campaign_pb2, common_pb2, ingest_pb2, report_pb2
from tests.conftest import Backend, Client, error_details
from tests.tenants import Tenants, rows, start_tenants
from tests.test_ingest import batch, click, status

R = report_pb2
S = common_pb2
INVALID = grpc.StatusCode.INVALID_ARGUMENT
SQLISH = ["'", '"', "%", "_", "\\", ";--", "'; DROP TABLE events; --", "%'--", "a%b", "a_b"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[Tenants]:
    tenants = start_tenants(tmp_path_factory.mktemp("tokens"))
    for tenant in (tenants.a, tenants.b):
        admin, ingest = tenants.client(tenant.admin), tenants.client(tenant.ingest)
        for n in range(4):
            campaign = campaign_pb2.Campaign(id=f"c{n}", name=f"{tenant.business} {n}")
            admin.campaigns.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=campaign), timeout=10)
        # The same campaign id and event ids in both businesses.
        events = [status(f"s{i}", recipient=f"+1555000{i}", campaign="c0") for i in range(4)]
        events += [click(f"k{i}", recipient=f"+1555000{i}", campaign="c0") for i in range(4)]
        [reply] = list(ingest.ingest.StreamEvents(iter([batch(*events)]), timeout=10))
        assert reply.accepted == 8
        replies = [
            ingest_pb2.Event(
                engagement=ingest_pb2.EngagementEvent(
                    event_id=f"r{i}",
                    campaign_id="c0",
                    recipient=f"+1555000{i}",
                    kind=ingest_pb2.ENGAGEMENT_KIND_REPLIED,
                    occurred_at=status("x").occurred_at,
                    text=f"reply {i}",
                )
            )
            for i in range(4)
        ]
        [reply] = list(ingest.ingest.StreamEvents(iter([ingest_pb2.StreamEventsRequest(events=replies)]), timeout=10))
        assert reply.accepted == 4
    yield tenants
    tenants.close()


# -- tokens -----------------------------------------------------------------------

# Each paged RPC: (name, token field, call(client, token) -> (items on the first page, next token)).
Paged = Callable[[Client, str], tuple[list[Any], str]]


def _list(c: Client, token: str) -> tuple[list[Any], str]:
    reply = c.campaigns.ListCampaigns(campaign_pb2.ListCampaignsRequest(page_size=1, page_token=token), timeout=10)
    return [x.id for x in reply.campaigns], reply.next_page_token


def _first_page(pages: Any, items: Callable[[Any], list[Any]]) -> tuple[list[Any], str]:
    try:
        page = next(pages)
    finally:
        pages.cancel()
    return items(page), page.resume_token


def _messages(c: Client, token: str) -> tuple[list[Any], str]:
    request = R.StreamMessageReportRequest(campaign_id="c0", page_size=1, resume_token=token)
    return _first_page(c.reports.StreamMessageReport(request, timeout=10), lambda p: [r.recipient for r in p.rows])


def _clicks(c: Client, token: str) -> tuple[list[Any], str]:
    request = R.StreamClickReportRequest(campaign_id="c0", page_size=1, resume_token=token)
    return _first_page(c.reports.StreamClickReport(request, timeout=10), lambda p: [r.event_id for r in p.rows])


def _history(c: Client, token: str) -> tuple[list[Any], str]:
    request = R.StreamMessageHistoryRequest(campaign_id="c0", page_size=1, resume_token=token)
    return _first_page(
        c.reports.StreamMessageHistory(request, timeout=10), lambda p: [e.event.status.event_id for e in p.events]
    )


def _replies(c: Client, token: str) -> tuple[list[Any], str]:
    request = R.StreamRepliesRequest(campaign_id="c0", page_size=1, resume_token=token)
    return _first_page(c.reports.StreamReplies(request, timeout=10), lambda p: [r.text for r in p.rows])


PAGED: list[tuple[str, str, Paged]] = [
    ("ListCampaigns", "page_token", _list),
    ("StreamMessageReport", "resume_token", _messages),
    ("StreamClickReport", "resume_token", _clicks),
    ("StreamMessageHistory", "resume_token", _history),
    ("StreamReplies", "resume_token", _replies),
]


def _refused(call: Callable[[], Any], field: str) -> str:
    """The violation reason of a call that must be INVALID_ARGUMENT on `field`."""
    with pytest.raises(grpc.RpcError) as raised:
        call()
    details = error_details(raised.value)
    assert details.code == INVALID, details
    assert set(details.violation_reasons) == {field}, details
    return details.violation_reasons[field]


def _forgeries(genuine: str) -> dict[str, str]:
    """Tokens made from a genuine one without the server's key."""
    raw = base64.urlsafe_b64decode(genuine + "=" * (-len(genuine) % 4))
    body, tag = raw[:-16], raw[-16:]
    payload = json.loads(body)

    def pack(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    moved = dict(payload, p={k: (v + 1 if isinstance(v, int) else v + "z") for k, v in payload["p"].items()})
    middle = len(genuine) // 2
    return {
        "not base64": "not a token!",
        "empty json": pack(b"{}" + bytes(16)),
        "other key": tokens.encode(b"k" * 32, payload["k"], payload["b"], payload["p"]),
        "position moved, tag kept": pack(json.dumps(moved, separators=(",", ":"), sort_keys=True).encode() + tag),
        "bound to another business, tag kept": pack(body.replace(payload["b"].encode(), b"0" * 24) + tag),
        "one character changed": genuine[:middle] + ("A" if genuine[middle] != "A" else "B") + genuine[middle + 1 :],
        "truncated": genuine[:-4],
        "tag only": pack(tag),
        "sql": "' OR 1=1; --",
    }


@pytest.mark.parametrize(("rpc", "field", "paged"), PAGED, ids=[p[0] for p in PAGED])
def test_forged_tampered_and_foreign_tokens_are_invalid_argument(
    world: Tenants, rpc: str, field: str, paged: Paged
) -> None:
    a, b = world.client(world.a.read), world.client(world.b.read)
    first, token_a = paged(a, "")
    assert first and token_a
    second, _ = paged(a, token_a)
    assert second and second != first, "a genuine token continues after its page"
    for what, forged in _forgeries(token_a).items():
        assert _refused(lambda t=forged: paged(a, t), field) in ("BAD_TOKEN", "TOKEN_MISMATCH"), what
    # The other business's genuine token, for the same campaign id and filter, is not A's.
    _, token_b = paged(b, "")
    assert token_b and token_b != token_a
    assert _refused(lambda: paged(a, token_b), field) == "TOKEN_MISMATCH"
    assert _refused(lambda: paged(b, token_a), field) == "TOKEN_MISMATCH"


def test_a_token_of_one_stream_kind_fits_no_other(world: Tenants) -> None:
    a = world.client(world.a.read)
    genuine = {rpc: paged(a, "")[1] for rpc, _, paged in PAGED}
    for rpc, field, paged in PAGED:
        for other, token in genuine.items():
            if other != rpc:
                assert _refused(lambda t=token, p=paged: p(a, t), field) == "TOKEN_MISMATCH", (rpc, other)


# -- filters hold data, never SQL --------------------------------------------------


@pytest.fixture(scope="module")
def meta(world: Tenants) -> Client:
    """Business a's campaign "meta" whose values hold SQL metacharacters, next
    to look-alikes that a LIKE wildcard or an injection would match."""
    admin, ingest = world.client(world.a.admin), world.client(world.a.ingest)
    for n, name in enumerate([*SQLISH, "axb", "plain"]):
        campaign = campaign_pb2.Campaign(id=f"m{n}", name=f"name {name}", labels={"tag": name})
        admin.campaigns.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=campaign), timeout=10)
    events = []
    for n, value in enumerate([*SQLISH, "axb", "aXb", "plain"]):
        recipient = f"+1666000{n:02d}"
        events.append(
            status(
                f"meta-s{n}",
                recipient=recipient,
                state=S.MESSAGE_STATUS_FAILED,
                campaign="meta",
                channel=value,
                variant=value,
                failure_reason=S.FailureReason(code=value, message=f"reason {value}"),
            )
        )
        events.append(click(f"meta-k{n}", recipient=recipient, link=value, campaign="meta"))
    [reply] = list(ingest.ingest.StreamEvents(iter([batch(*events)]), timeout=10))
    assert reply.accepted == len(events), reply
    return world.client(world.a.read)


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.mark.parametrize("value", SQLISH)
def test_list_filter_values_are_data(world: Tenants, meta: Client, value: str) -> None:
    def ids(filter: str) -> set[str]:
        found, token = set(), ""
        for _ in range(100):
            reply = meta.campaigns.ListCampaigns(
                campaign_pb2.ListCampaignsRequest(filter=filter, page_token=token, page_size=50), timeout=10
            )
            found |= {c.name.removeprefix("name ") for c in reply.campaigns}
            token = reply.next_page_token
            if not token:
                return found
        raise AssertionError("pages never ended")

    # name: is "contains": only names holding the value itself.
    assert ids(f"name:{_quoted(value)}") == {n for n in [*SQLISH, "axb", "plain"] if value in n}
    assert ids(f"labels.tag={_quoted(value)}") == {value}


@pytest.mark.parametrize("value", SQLISH)
def test_report_filter_values_are_data(world: Tenants, meta: Client, value: str) -> None:
    def recipients(**filter: str) -> list[str]:
        request = R.StreamMessageReportRequest(campaign_id="meta", filter=R.MessageFilter(**filter))
        return [r.channel for page in meta.reports.StreamMessageReport(request, timeout=10) for r in page.rows]

    if len(value) <= 32:
        assert recipients(channel=value) == [value]
    assert recipients(variant=value) == [value]
    assert recipients(failure_code=value) == [value]
    assert recipients(recipient=value) == []
    request = R.StreamClickReportRequest(campaign_id="meta", filter=R.ClickFilter(link_id=value))
    assert [r.link_id for page in meta.reports.StreamClickReport(request, timeout=10) for r in page.rows] == [value]
    history = R.StreamMessageHistoryRequest(campaign_id="meta", recipient=value)
    assert [e for page in meta.reports.StreamMessageHistory(history, timeout=10) for e in page.events] == []
    export = R.ExportReportRequest(campaign_id="meta", message_filter=R.MessageFilter(variant=value))
    text = b"".join(p.chunk for p in meta.reports.ExportReport(export, timeout=10)).decode()
    assert len(text.splitlines()) == 2


def test_the_tables_survive(world: Tenants, meta: Client) -> None:
    database: Path | str = world.database
    assert rows(database, "SELECT count(*) FROM events WHERE business_id = ?", world.a.business)[0][0] >= 8 + 26
    assert rows(database, "SELECT count(*) FROM campaigns")[0][0] >= 8 + len(SQLISH) + 2
