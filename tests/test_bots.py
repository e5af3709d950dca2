"""Bot clicks (domain/bots.py) over real gRPC, on both backends: link-preview
fetchers and crawlers by their real user agents, a scanner's instant click,
a click without a user agent, a click stored before its delivery was known;
stats, breakdown and the click report (class, reason, filter); the
per-business rules (SettingsService, `flowtrack settings`), the
re-classification a change makes (ingested columns untouched, counters
rebuilt, consistent under concurrent ingest), and one business's rules
never touching another's clicks."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from click.testing import CliRunner
from google.protobuf import duration_pb2, timestamp_pb2

from flowtrack.cli import cli
from flowtrack.domain import bots
from flowtrack.store import check
from flowtrack.v1 import common_pb2, ingest_pb2, report_pb2, settings_pb2, settings_pb2_grpc
from tests.conftest import Client, ServerThread, connect_db, error_details, make_client, start_server
from tests.tenants import start_tenants

S = common_pb2
NOW = int(time.time())
DELIVERED = NOW - 3600  # every message's SUCCESS, an hour ago

WHATSAPP = "WhatsApp/2.23.20.0 A"
SLACK = "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"
FACEBOOK = "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)"
IMESSAGE = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_11_1) AppleWebKit/601.2.4 (KHTML, like Gecko) Version/9.0.1"
    " Safari/601.2.4 facebookexternalhit/1.1 Facebot Twitterbot/1.0"
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko)"
    " Version/17.4 Mobile/15E148 Safari/604.1"
)
ANDROID = "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 Chrome/124.0 Mobile Safari/537.36"


def ts(seconds: float) -> timestamp_pb2.Timestamp:
    micros = round(seconds * 1_000_000)
    return timestamp_pb2.Timestamp(seconds=micros // 1_000_000, nanos=(micros % 1_000_000) * 1000)


def delivered(recipient: str, at: float = DELIVERED, campaign: str = "promo") -> ingest_pb2.Event:
    return ingest_pb2.Event(
        status=ingest_pb2.StatusEvent(
            event_id=f"ok-{campaign}-{recipient}",
            campaign_id=campaign,
            recipient=recipient,
            status=S.MESSAGE_STATUS_SUCCESS,
            occurred_at=ts(at),
            channel="whatsapp",
        )
    )


def clicked(
    event_id: str, recipient: str, after: float, agent: str, link: str = "uL1", campaign: str = "promo"
) -> ingest_pb2.Event:
    """A click `after` seconds after DELIVERED."""
    return ingest_pb2.Event(
        click=ingest_pb2.ClickEvent(
            event_id=event_id,
            campaign_id=campaign,
            recipient=recipient,
            link_id=link,
            occurred_at=ts(DELIVERED + after),
            user_agent=agent,
        )
    )


def send(client: Client, *events: ingest_pb2.Event) -> None:
    replies = list(client.ingest.StreamEvents(iter([ingest_pb2.StreamEventsRequest(events=events)]), timeout=30))
    assert [r.outcome for reply in replies for r in reply.results] == [ingest_pb2.EVENT_OUTCOME_ACCEPTED] * len(events)


# The clicks of the story: (event id, recipient, seconds after delivery, user agent, expected reason).
STORY = [
    ("c-wa", "+1001", 12.0, WHATSAPP, bots.CRAWLER),
    ("c-slack", "+1002", 600.0, SLACK, bots.CRAWLER),
    ("c-fb", "+1003", 900.0, FACEBOOK, bots.CRAWLER),
    ("c-imsg", "+1004", 1200.0, IMESSAGE, bots.CRAWLER),
    ("c-scan", "+1005", 0.4, ANDROID, bots.TOO_SOON),  # a mail scanner: at once, a browser's user agent
    ("c-noua", "+1006", 300.0, "", bots.NO_USER_AGENT),
    ("c-h1", "+1007", 95.0, IPHONE, bots.HUMAN),
    ("c-h2", "+1007", 400.0, IPHONE, bots.HUMAN),
    ("c-h3", "+1008", 2.5, ANDROID, bots.HUMAN),  # just over the 2 s threshold
]
REASONS = {
    bots.CRAWLER: report_pb2.BOT_REASON_CRAWLER_USER_AGENT,
    bots.NO_USER_AGENT: report_pb2.BOT_REASON_NO_USER_AGENT,
    bots.TOO_SOON: report_pb2.BOT_REASON_TOO_SOON,
    bots.HUMAN: report_pb2.BOT_REASON_UNSPECIFIED,
}
RECIPIENTS = sorted({r for _, r, _, _, _ in STORY})


def tell_story(client: Client) -> None:
    send(client, *[delivered(r) for r in RECIPIENTS])
    send(client, *[clicked(event_id, r, after, agent) for event_id, r, after, agent, _ in STORY])


def stats_of(client: Client, campaign: str = "promo") -> report_pb2.CampaignStats:
    return client.reports.GetCampaignStats(report_pb2.GetCampaignStatsRequest(campaign_id=campaign), timeout=10).stats


def click_rows(client: Client, click_class: int = 0, campaign: str = "promo") -> list[report_pb2.ClickRow]:
    request = report_pb2.StreamClickReportRequest(
        campaign_id=campaign,
        filter=report_pb2.ClickFilter(click_class=click_class),  # type: ignore[arg-type]
    )
    return [row for page in client.reports.StreamClickReport(request, timeout=10) for row in page.rows]


def settings_api(client: Client) -> Any:
    return settings_pb2_grpc.SettingsServiceStub(client.channel)


def update(client: Client, **fields: Any) -> settings_pb2.UpdateSettingsResponse:
    return settings_api(client).UpdateSettings(settings_pb2.UpdateSettingsRequest(**fields), timeout=120)


def consistent(server: ServerThread, campaign: str = "promo") -> None:
    """Every counter (human ones included) equals a recount from the stored
    events, each click classified from scratch."""
    conn = connect_db(server.settings.database)
    try:
        for business_id, cid in conn.execute(
            "SELECT business_id, cid FROM campaigns WHERE campaign_id = ?", (campaign,)
        ).fetchall():
            assert check.problems(conn, business_id, cid) == []
    finally:
        conn.close()


def stored_clicks(server: ServerThread) -> list[tuple[Any, ...]]:
    """Every stored click: its ingested columns, then its bot reason."""
    conn = connect_db(server.settings.database)
    try:
        return [
            tuple(row)
            for row in conn.execute(
                "SELECT event_id, seq, fingerprint, recipient, link_id, occurred_at, received_at, user_agent,"
                " bot_reason FROM events WHERE kind = 2 ORDER BY seq"
            )
        ]
    finally:
        conn.close()


def test_preview_fetchers_scanners_and_no_user_agent_are_bots(server: ServerThread, client: Client) -> None:
    tell_story(client)
    o = stats_of(client).overall
    assert (o.clicks, o.human_clicks, o.bot_clicks) == (9, 3, 6)
    assert (o.unique_clickers, o.unique_human_clickers) == (8, 2)
    assert o.rates.link_click_rate == pytest.approx(2 / 8)  # human clickers over submitted
    assert o.rates.click_through_rate == pytest.approx(8 / 8)  # every clicker
    (whatsapp,) = stats_of(client).by_channel
    assert (whatsapp.human_clicks, whatsapp.bot_clicks, whatsapp.unique_human_clickers) == (3, 6, 2)

    rows = {row.event_id: row for row in click_rows(client)}
    for event_id, _, _, _, reason in STORY:
        row = rows[event_id]
        assert row.bot_reason == REASONS[reason], event_id
        want = report_pb2.CLICK_CLASS_HUMAN if reason == bots.HUMAN else report_pb2.CLICK_CLASS_BOT
        assert row.click_class == want, event_id
    assert {r.event_id for r in click_rows(client, report_pb2.CLICK_CLASS_HUMAN)} == {"c-h1", "c-h2", "c-h3"}
    assert len(click_rows(client, report_pb2.CLICK_CLASS_BOT)) == 6

    breakdown = client.reports.GetClickBreakdown(report_pb2.GetClickBreakdownRequest(campaign_id="promo"), timeout=10)
    assert (breakdown.clicks, breakdown.human_clicks, breakdown.bot_clicks, breakdown.unique_human_clickers) == (
        9,
        3,
        6,
        2,
    )
    (link,) = breakdown.by_link
    assert (link.link_id, link.human_clicks, link.bot_clicks, link.unique_human_clickers) == ("uL1", 3, 6, 2)
    (country,) = breakdown.by_country  # no location given: one bucket of unknown country
    assert (country.human_clicks, country.unique_human_clickers) == (3, 2)
    consistent(server)

    with pytest.raises(grpc.RpcError) as raised:
        click_rows(client, 7)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "filter.click_class" in error_details(raised.value).violations


def test_the_http_json_and_the_click_report_over_http(tmp_path: Path) -> None:
    """The HTTP face's stats and breakdown JSON carry the same figures, and
    its click report filters by class (an unknown class is a 400)."""
    served = start_server(tmp_path, http="127.0.0.1:0")
    client = make_client(served.address)
    try:
        tell_story(client)
        assert served.running.http is not None
        with httpx.Client(base_url=served.running.http.url, timeout=30) as h:
            o = h.get("/api/campaigns/promo/stats").json()["stats"]["overall"]
            assert (o["humanClicks"], o["botClicks"], o["uniqueHumanClickers"]) == ("3", "6", "2")
            b = h.get("/api/campaigns/promo/clicks").json()
            assert (b["humanClicks"], b["botClicks"], b["uniqueHumanClickers"]) == ("3", "6", "2")
            rows = h.get("/api/campaigns/promo/click-report", params={"click_class": "bot"}).json()["rows"]
            assert len(rows) == 6 and {r["clickClass"] for r in rows} == {"CLICK_CLASS_BOT"}
            assert {r["botReason"] for r in rows} == {
                "BOT_REASON_CRAWLER_USER_AGENT",
                "BOT_REASON_NO_USER_AGENT",
                "BOT_REASON_TOO_SOON",
            }
            bad = h.get("/api/campaigns/promo/click-report", params={"click_class": "robot"})
            assert bad.status_code == 400 and bad.headers["content-type"].startswith("application/problem+json")
    finally:
        client.channel.close()
        served.stop()


def test_a_delivery_known_later_reclassifies_the_clicks_before_it(server: ServerThread, client: Client) -> None:
    """A click stored before its message's delivery is known is judged
    without it (human here); the delivery arriving later makes it too soon,
    as if the events had come in order: the class never depends on arrival order."""
    send(client, clicked("early", "+2001", 1.0, IPHONE), clicked("late", "+2001", 500.0, IPHONE))
    assert (stats_of(client).overall.human_clicks, stats_of(client).overall.unique_human_clickers) == (2, 1)
    send(client, delivered("+2001"))
    o = stats_of(client).overall
    assert (o.clicks, o.human_clicks, o.bot_clicks, o.unique_human_clickers) == (2, 1, 1, 1)
    rows = {row.event_id: row.bot_reason for row in click_rows(client)}
    assert rows == {"early": report_pb2.BOT_REASON_TOO_SOON, "late": report_pb2.BOT_REASON_UNSPECIFIED}
    # An earlier delivery (a second SUCCESS event) moves the window again: now both are too soon.
    send(
        client,
        ingest_pb2.Event(
            status=ingest_pb2.StatusEvent(
                event_id="ok-again",
                campaign_id="promo",
                recipient="+2001",
                status=S.MESSAGE_STATUS_SUCCESS,
                occurred_at=ts(DELIVERED + 499.0),
                attempt=2,
            )
        ),
    )
    assert stats_of(client).overall.human_clicks == 1  # the earliest SUCCESS is the delivery: unchanged
    consistent(server)


def test_a_change_of_the_rules_reclassifies_stored_clicks(server: ServerThread, client: Client) -> None:
    tell_story(client)
    before = stored_clicks(server)
    api = settings_api(client)
    got = api.GetSettings(settings_pb2.GetSettingsRequest(), timeout=10).settings
    assert got.bot_clicks.threshold.ToMilliseconds() == 2000
    assert got.bot_clicks.crawler_user_agent_is_bot and got.bot_clicks.no_user_agent_is_bot
    assert not got.HasField("update_time")

    # 3 s: the click 2.5 s after delivery becomes a bot's; a live watcher sees it.
    watch = client.reports.WatchCampaignStats(report_pb2.WatchCampaignStatsRequest(campaign_id="promo"), timeout=60)
    assert next(watch).stats.overall.human_clicks == 3
    reply = update(client, bot_click_threshold=duration_pb2.Duration(seconds=3))
    assert reply.reclassified_clicks == 1
    assert next(watch).stats.overall.human_clicks == 2
    watch.cancel()
    assert reply.settings.bot_clicks.threshold.ToMilliseconds() == 3000 and reply.settings.HasField("update_time")
    o = stats_of(client).overall
    assert (o.human_clicks, o.bot_clicks, o.unique_human_clickers) == (2, 7, 1)
    consistent(server)

    # Timing off, no user agent human: the scanner's and the no-UA clicks are people's now.
    reply = update(client, bot_click_threshold=duration_pb2.Duration(), no_user_agent_is_bot=False)
    assert reply.reclassified_clicks == 3
    o = stats_of(client).overall
    assert (o.human_clicks, o.bot_clicks, o.unique_human_clickers) == (5, 4, 4)
    rows = {row.event_id: row.click_class for row in click_rows(client)}
    assert rows["c-scan"] == rows["c-noua"] == rows["c-h3"] == report_pb2.CLICK_CLASS_HUMAN
    consistent(server)

    # The crawler rule off too: every click human. Then back to the defaults.
    assert update(client, crawler_user_agent_is_bot=False).reclassified_clicks == 4
    assert stats_of(client).overall.bot_clicks == 0
    consistent(server)
    reply = update(
        client,
        bot_click_threshold=duration_pb2.Duration(seconds=2),
        crawler_user_agent_is_bot=True,
        no_user_agent_is_bot=True,
    )
    assert reply.reclassified_clicks == 6
    after = stored_clicks(server)
    assert after == before  # the reasons back as they were, the ingested columns never touched
    assert update(client, no_user_agent_is_bot=True).reclassified_clicks == 0  # nothing changed
    consistent(server)


def test_bad_settings_are_refused(server: ServerThread, client: Client) -> None:
    for value, reason in (
        (duration_pb2.Duration(seconds=-1), "OUT_OF_RANGE"),
        (duration_pb2.Duration(seconds=3601), "OUT_OF_RANGE"),
        (duration_pb2.Duration(nanos=1_500_000), "INVALID"),
    ):
        with pytest.raises(grpc.RpcError) as raised:
            update(client, bot_click_threshold=value)
        details = error_details(raised.value)
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.violation_reasons == {"bot_click_threshold": reason}


def test_reclassification_under_concurrent_ingest_ends_consistent(server: ServerThread, client: Client) -> None:
    """Clicks (half of them 1 s after delivery) stream in while the
    threshold goes back and forth: at the end every stored reason and every
    counter is what the rules as they ended give."""
    recipients = [f"+3{i:05d}" for i in range(300)]
    send(client, *[delivered(r) for r in recipients])
    send(client, *[clicked(f"pre-{r}", r, 1.0 if i % 2 else 60.0, ANDROID) for i, r in enumerate(recipients)])
    stop = threading.Event()
    errors: list[BaseException] = []

    def ingest() -> None:
        other = make_client(server.address)
        try:
            n = 0
            while not stop.is_set() and n < 40:
                events = [
                    clicked(f"live-{n}-{k}", recipients[(n * 7 + k) % 300], 1.0 if k % 2 else 30.0, IPHONE)
                    for k in range(10)
                ]
                send(other, *events)
                n += 1
        except BaseException as error:  # reported by the test
            errors.append(error)
        finally:
            other.channel.close()

    thread = threading.Thread(target=ingest)
    thread.start()
    try:
        for seconds in (0, 5, 0, 2):
            update(client, bot_click_threshold=duration_pb2.Duration(seconds=seconds))
    finally:
        stop.set()
        thread.join(timeout=120)
    assert not errors
    consistent(server)
    o = stats_of(client).overall
    rows = click_rows(client)
    assert o.clicks == len(rows) and o.human_clicks == sum(r.click_class == report_pb2.CLICK_CLASS_HUMAN for r in rows)
    assert all((r.bot_reason == report_pb2.BOT_REASON_TOO_SOON) == (r.click_class == 2) for r in rows)


def test_one_business_rules_never_touch_another(tmp_path: Path) -> None:
    """acme turns the timing rule off; globex's identical clicks keep theirs,
    and a key of globex cannot read or change acme's settings."""
    world = start_tenants(tmp_path)
    try:
        a_admin = world.client(world.a.admin)
        b_admin = world.client(world.b.admin)
        for who in (world.a.ingest, world.b.ingest):
            tell_story(world.client(who))
        update(a_admin, bot_click_threshold=duration_pb2.Duration())
        assert stats_of(world.client(world.a.read)).overall.human_clicks == 4  # the scanner's click too
        assert stats_of(world.client(world.b.read)).overall.human_clicks == 3
        b_settings = settings_api(b_admin).GetSettings(settings_pb2.GetSettingsRequest(), timeout=10).settings
        assert b_settings.bot_clicks.threshold.ToMilliseconds() == 2000
        with pytest.raises(grpc.RpcError) as raised:
            update(world.client(world.a.read), no_user_agent_is_bot=False)
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError) as raised:
            settings_api(world.client(world.a.ingest)).GetSettings(settings_pb2.GetSettingsRequest(), timeout=10)
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        # New clicks follow each business's own rules.
        for who in (world.a.ingest, world.b.ingest):
            send(world.client(who), clicked("scan-2", "+1001", 0.1, ANDROID))
        assert stats_of(world.client(world.a.read)).overall.human_clicks == 5
        assert stats_of(world.client(world.b.read)).overall.human_clicks == 3
    finally:
        world.close()


def test_settings_commands(server: ServerThread, client: Client) -> None:
    tell_story(client)
    runner = CliRunner()
    address = ["--address", server.address]
    shown = runner.invoke(cli, ["settings", "show", *address])
    assert shown.exit_code == 0, shown.output
    assert "bot click threshold:       2s after delivery" in shown.output
    changed = runner.invoke(cli, ["settings", "set", "--bot-click-threshold", "0", "--no-ua-is-human", *address])
    assert changed.exit_code == 0, changed.output
    assert "bot click threshold:       off" in changed.output
    assert "no user agent is bot:      no" in changed.output
    assert "re-classified clicks:      2" in changed.output
    as_json = runner.invoke(cli, ["stats", "promo", "--json", *address])
    assert '"humanClicks":"5"' in as_json.output.replace(" ", "")
    assert '"botClicks":"4"' in as_json.output.replace(" ", "")
    assert '"uniqueHumanClickers":"4"' in as_json.output.replace(" ", "")
    bad = runner.invoke(cli, ["settings", "set", "--bot-click-threshold", "soon", *address])
    assert bad.exit_code != 0 and "is not a duration" in bad.output
    bots_only = runner.invoke(cli, ["clicks", "promo", "--class", "bot", "--json", *address])
    assert bots_only.exit_code == 0, bots_only.output
    assert bots_only.output.count('"click"') == 4


def test_the_user_agent_cache_is_bounded() -> None:
    bots.is_crawler.cache_clear()
    for i in range(bots.UA_CACHE_SIZE + 100):
        bots.is_crawler(f"Mozilla/5.0 test {i}")
    assert bots.is_crawler.cache_info().currsize == bots.UA_CACHE_SIZE
    assert bots.is_crawler(WHATSAPP) and bots.is_crawler(SLACK) and bots.is_crawler(IMESSAGE)
    assert not bots.is_crawler(IPHONE) and not bots.is_crawler(ANDROID)
