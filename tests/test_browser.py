"""The campaign page in a real browser: headless Chromium (the system's
`chromium`) driven by Playwright, against a real server with API keys.

Skipped, with a one-line reason, where Chromium or Playwright is missing;
`.ci/run` installs Chromium and sets FLOWTRACK_REQUIRE_BROWSER_TEST=1, so
there they cannot skip.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import timestamp_pb2

from flowtrack.client import drive
from flowtrack.client import simulate as sim
from flowtrack.domain.keys import Scope
from flowtrack.v1 import campaign_pb2, common_pb2, ingest_pb2, report_pb2
from tests.conftest import Backend, Client, ServerThread, database_of, start_server
from tests.tenants import create_key, keyed_client

CHROMIUM = os.environ.get("FLOWTRACK_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
REQUIRED = os.environ.get("FLOWTRACK_REQUIRE_BROWSER_TEST") == "1"
WAIT_MS = 30_000
CAMPAIGN = "spring-2026"


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright (pip install playwright) is not installed"
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        return "chromium is not installed (apt-get install chromium)"
    return None


_why = _missing()
if _why and REQUIRED:
    raise RuntimeError(f"FLOWTRACK_REQUIRE_BROWSER_TEST=1 but {_why}")
# slow: Chromium against a server, on both backends (the quick loop, `pytest -m "not slow"`, leaves it out)
pytestmark = [pytest.mark.skipif(_why is not None, reason=f"browser test skipped: {_why}"), pytest.mark.slow]


class World:
    def __init__(self, tmp: Path) -> None:
        db = database_of(tmp)  # a file, or a PostgreSQL database of its own
        self.admin = create_key(db, "acme", Scope.ADMIN)
        self.read = create_key(db, "acme", Scope.READ)
        self.ingest_only = create_key(db, "acme", Scope.INGEST)
        self.foreign = create_key(db, "globex", Scope.READ)
        self.many = create_key(db, "many", Scope.ADMIN)  # a business of its own (test_more_campaigns...)
        self.server: ServerThread = start_server(tmp, http="127.0.0.1:0")
        assert self.server.running.http is not None
        self.url = self.server.running.http.url
        self.client: Client = keyed_client(self.server.address, self.admin)
        self.sim = sim.generate(sim.SimConfig(campaign_id=CAMPAIGN, recipients=400, seed=7, end_time=time.time()))
        stubs: Any = types.SimpleNamespace(campaigns=self.client.campaigns, ingest=self.client.ingest, timeout=30.0)
        drive.prepare(stubs, self.sim)
        drive.send(stubs, self.sim.events, batch_size=200)

    def stats(self) -> report_pb2.CampaignStats:
        return self.client.reports.GetCampaignStats(report_pb2.GetCampaignStatsRequest(campaign_id=CAMPAIGN)).stats

    def close(self) -> None:
        self.client.channel.close()
        self.server.stop()


@pytest.fixture(scope="module")
def world(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One per backend: it asks for `backend`, so the PostgreSQL half gets its own."""
    w = World(tmp_path_factory.mktemp("browser"))
    yield w
    w.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"), args=ARGS
        )
        yield b
        b.close()


# The contexts a test opened, closed after it: an open page holds its live
# stream and connections, and the server caps those per key and per address
# (32 each), which the last tests of the module used to reach.
_OPEN: list[Any] = []


@pytest.fixture(autouse=True)
def _close_pages() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def signed_in(browser: Any, world: World, key: str, **options: Any) -> Any:
    context = browser.new_context(accept_downloads=True, **options)
    _OPEN.append(context)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors
    page.goto(world.url + "/")
    assert page.url.startswith(world.url + "/signin")
    page.fill("#key", key)
    page.press("#key", "Enter")
    page.wait_for_url(world.url + "/", timeout=WAIT_MS)
    return page


def count(n: int) -> str:
    return f"{n:,}"


def percent(message: Any, field: str) -> str:
    return f"{getattr(message, field) * 100:.1f}%" if message.HasField(field) else "-"


def known(text: str) -> str:
    return text or "(unknown)"


def place(*parts: str) -> str:
    """A place as the click tables name it: "(unknown)" for a missing part,
    "Unknown location" when every part is missing."""
    return " · ".join(map(known, parts)) if any(parts) else "Unknown location"


def tile(page: Any, field: str) -> Any:
    return page.locator(f'#tiles .tile[data-field="{field}"] .tile-value')


def expect_text(locator: Any, text: str) -> None:
    from playwright.sync_api import expect

    expect(locator).to_have_text(text, timeout=WAIT_MS)


def open_campaign(page: Any, world: World) -> None:
    page.click(f'a[href="/campaigns/{CAMPAIGN}"]')
    page.wait_for_url(f"{world.url}/campaigns/{CAMPAIGN}", timeout=WAIT_MS)
    page.wait_for_selector("#tiles .tile", timeout=WAIT_MS)


TILES = ["total", "submitted", "success", "delivery_not_confirmed", "failed", "not_submitted", "pending"]


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


def test_sign_in_list_and_tiles_equal_get_campaign_stats(browser: Any, world: World) -> None:
    page = signed_in(browser, world, world.read)
    expect_text(page.locator(f'tr[data-campaign="{CAMPAIGN}"] th a'), world.sim.campaign.name)
    open_campaign(page, world)
    stats = world.stats()
    for field in TILES:
        expect_text(tile(page, camel(field)), count(getattr(stats.overall.counts, field)))
    expect_text(page.locator('#tiles .tile[data-field="success"] .rate'), percent(stats.overall.rates, "success_rate"))
    assert stats.overall.counts.total == 400
    assert page.errors == []


def test_events_after_load_appear_without_reload(browser: Any, world: World) -> None:
    page = signed_in(browser, world, world.read)
    open_campaign(page, world)
    before = world.stats()
    expect_text(tile(page, "success"), count(before.overall.counts.success))
    page.evaluate("window.__still_here = true")
    now = timestamp_pb2.Timestamp(seconds=int(time.time()) - 1)
    events = [
        ingest_pb2.Event(
            status=ingest_pb2.StatusEvent(
                event_id=f"late-{i}",
                campaign_id=CAMPAIGN,
                recipient=f"+1555900{i:04d}",
                status=common_pb2.MESSAGE_STATUS_SUCCESS,
                occurred_at=now,
                channel="sms",
            )
        )
        for i in range(25)
    ]
    reply = next(iter(world.client.ingest.StreamEvents(iter([ingest_pb2.StreamEventsRequest(events=events)]))))
    assert reply.accepted == 25
    after = world.stats()
    assert after.overall.counts.success == before.overall.counts.success + 25
    expect_text(tile(page, "success"), count(after.overall.counts.success))
    expect_text(tile(page, "total"), count(after.overall.counts.total))
    assert page.evaluate("window.__still_here") is True  # no reload


def test_failure_table_and_click_breakdown_equal_the_grpc_answers(browser: Any, world: World) -> None:
    page = signed_in(browser, world, world.read)
    open_campaign(page, world)
    reasons = [
        r
        for p in world.client.reports.StreamFailureReasons(
            report_pb2.StreamFailureReasonsRequest(campaign_id=CAMPAIGN, page_size=100)
        )
        for r in p.reasons
    ]
    assert reasons, "the simulation has failures"
    rows = page.locator("#failure-table tbody tr")
    from playwright.sync_api import expect

    expect(rows).to_have_count(len(reasons), timeout=WAIT_MS)
    for i, r in enumerate(reasons):
        cells = rows.nth(i).locator("td").all_inner_texts()
        assert cells[:5] == [
            r.code,
            r.message,
            count(r.count),
            percent(r, "share_of_failed"),
            percent(r, "share_of_not_submitted"),
        ]
        assert cells[5] == ", ".join(r.sample_recipients)
    breakdown = world.client.reports.GetClickBreakdown(report_pb2.GetClickBreakdownRequest(campaign_id=CAMPAIGN))
    assert breakdown.clicks > 0
    expect_text(
        page.locator("#click-totals"),
        f"{count(breakdown.clicks)} clicks by {count(breakdown.unique_clickers)} unique clickers: "
        f"{count(breakdown.human_clicks)} human ({count(breakdown.unique_human_clickers)} unique), "
        f"{count(breakdown.bot_clicks)} bot (previews, scanners).",
    )
    tables: list[tuple[str, Any, Any, Any]] = [
        ("#by-link", breakdown.by_link, lambda b: known(b.link_id), lambda b: b.link_id),
        ("#by-country", breakdown.by_country, lambda b: place(b.country_code), lambda b: b.country_code),
        ("#by-city", breakdown.by_city, lambda b: place(b.country_code, b.region, b.city), lambda b: b.city),
    ]
    for table, buckets, label, own in tables:
        body = page.locator(f"{table} tbody tr")
        expect(body).to_have_count(len(buckets), timeout=WAIT_MS)
        shown = [body.nth(i).locator("td").all_inner_texts()[:3] for i in range(len(buckets))]
        # The server's order (most clicks first), the rows whose own place is unknown last.
        ordered = [b for b in buckets if own(b)] + [b for b in buckets if not own(b)]
        assert shown == [[label(b), count(b.clicks), count(b.unique_clickers)] for b in ordered]
    points = page.locator("#map circle.point")
    assert points.count() > 0


def test_export_button_downloads_the_export_report_file(browser: Any, world: World) -> None:
    page = signed_in(browser, world, world.read)
    open_campaign(page, world)
    page.check('#message-filters input[value="FAILED"]')
    page.click("#message-filters button[type=submit]")
    with page.expect_download(timeout=WAIT_MS) as info:
        page.click("#export-csv")
    download = info.value
    assert download.suggested_filename == f"{CAMPAIGN}-messages.csv"
    data = Path(download.path()).read_bytes()
    request = report_pb2.ExportReportRequest(
        campaign_id=CAMPAIGN,
        format=report_pb2.EXPORT_FORMAT_CSV,
        message_filter=report_pb2.MessageFilter(statuses=[common_pb2.MESSAGE_STATUS_FAILED]),
    )
    expected = b"".join(r.chunk for r in world.client.reports.ExportReport(request))
    assert data == expected
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    assert len(rows) - 1 == world.stats().overall.counts.failed > 0


def test_message_table_is_paged_by_the_server(browser: Any, world: World) -> None:
    page = signed_in(browser, world, world.read)
    open_campaign(page, world)
    page.select_option('#message-filters select[name="page_size"]', "25")
    page.click("#message-filters button[type=submit]")
    from playwright.sync_api import expect

    expect(page.locator("#page-label")).to_have_text("Page 1 · 25 rows", timeout=WAIT_MS)
    first = page.locator("#message-table tbody tr td").first.inner_text()
    page.click("#next")
    expect(page.locator("#page-label")).to_have_text("Page 2 · 25 rows", timeout=WAIT_MS)
    assert page.locator("#message-table tbody tr td").first.inner_text() > first
    page.click("#prev")
    expect(page.locator("#message-table tbody tr td").first).to_have_text(first, timeout=WAIT_MS)


def test_phone_width_and_keyboard(browser: Any, world: World) -> None:
    page = signed_in(browser, world, world.read, viewport={"width": 390, "height": 844})
    open_campaign(page, world)
    expect_text(tile(page, "total"), count(world.stats().overall.counts.total))
    # Nothing wider than the phone but the scrolling tables.
    overflow = page.evaluate("document.documentElement.scrollWidth")
    assert overflow <= 390
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"


def test_a_foreign_key_sees_nothing(browser: Any, world: World) -> None:
    page = signed_in(browser, world, world.foreign)
    from playwright.sync_api import expect

    expect(page.locator("#empty")).to_be_visible(timeout=WAIT_MS)
    assert page.locator("#campaigns tbody tr").count() == 0
    response = page.goto(f"{world.url}/campaigns/{CAMPAIGN}")
    assert response.status == 404
    expect_text(page.locator("h1"), "Campaign not found")
    assert page.locator("#tiles .tile").count() == 0
    response = page.request.get(f"{world.url}/api/campaigns/{CAMPAIGN}/stats")
    assert response.status == 404


def test_an_ingest_key_cannot_sign_in(browser: Any, world: World) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(world.url + "/signin")
    page.fill("#key", world.ingest_only)
    page.press("#key", "Enter")
    page.wait_for_url("**/signin?error=MISSING_SCOPE", timeout=WAIT_MS)
    assert "read" in page.locator("#signin-error").inner_text()
    page.goto(world.url + "/")
    assert "/signin" in page.url


def test_list_filters_by_state_and_label(browser: Any, world: World) -> None:
    from playwright.sync_api import expect

    page = signed_in(browser, world, world.read)
    row = page.locator(f'tr[data-campaign="{CAMPAIGN}"]')
    expect(row).to_have_count(1, timeout=WAIT_MS)
    stats = world.stats()
    expect(row.locator("td").nth(2)).to_have_text(count(stats.overall.counts.submitted), timeout=WAIT_MS)
    expect(row.locator("td").nth(3)).to_have_text(percent(stats.overall.rates, "success_rate"), timeout=WAIT_MS)
    for state, label, shown in (("RUNNING", "seed=7", 1), ("COMPLETED", "", 0), ("", "seed=8", 0), ("", "seed", 1)):
        page.select_option('#filters select[name="state"]', state)
        page.fill('#filters input[name="label"]', label)
        page.press('#filters input[name="label"]', "Enter")
        # The table says which filter its rows answer: wait for this one's
        # (an earlier filter's #empty is visible until it comes).
        terms = " ".join(t for t in (state and f"state={state}", label and f"labels.{label}") if t)
        expect(page.locator("#campaigns tbody")).to_have_attribute("data-filter", terms, timeout=WAIT_MS)
        if shown:
            expect(row).to_have_count(1, timeout=WAIT_MS)
        else:
            expect(page.locator("#empty")).to_be_visible(timeout=WAIT_MS)
            assert row.count() == 0


def test_engagement_and_funnel_figures_equal_get_campaign_stats(browser: Any, world: World) -> None:
    """The engagement and funnel figures (SPEC §5) the stats carry are tiles
    too (the page renders whichever of them the stats JSON holds)."""
    from playwright.sync_api import expect

    page = signed_in(browser, world, world.read)
    open_campaign(page, world)
    overall = world.stats().overall
    assert overall.read > 0, "the simulation sends engagement events"
    box = page.locator("#engagement-box")
    expect(box).to_be_visible(timeout=WAIT_MS)
    for field in ("read", "replied", "opted_out", "button_clickers", "entered", "in_flow", "exited", "goal_achieved"):
        expect(box.locator(f'.tile[data-field="{camel(field)}"] .tile-value')).to_have_text(
            count(getattr(overall, field)), timeout=WAIT_MS
        )
    for field, rate in (("read", "read_rate"), ("replied", "reply_rate"), ("opted_out", "opt_out_rate")):
        expect(box.locator(f'#engagement .tile[data-field="{camel(field)}"] .rate')).to_have_text(
            percent(overall.rates, rate), timeout=WAIT_MS
        )
    expect(box.locator('#funnel .tile[data-field="goalAchieved"] .rate')).to_have_text(
        percent(overall.rates, "goal_rate"), timeout=WAIT_MS
    )


# -- issue 18, item 14 ----------------------------------------------------------------------------

# A campaign made by an event (implicit): its id may hold any printable ASCII.
ODD_ID = "team/spring?x=1#a%20b/live"
MANY = 55  # more than one page of the list (50)


def status_event(campaign_id: str, recipient: str, event_id: str) -> ingest_pb2.Event:
    return ingest_pb2.Event(
        status=ingest_pb2.StatusEvent(
            event_id=event_id,
            campaign_id=campaign_id,
            recipient=recipient,
            status=common_pb2.MESSAGE_STATUS_SUCCESS,
            occurred_at=timestamp_pb2.Timestamp(seconds=int(time.time()) - 1),
            channel="sms",
        )
    )


def send(client: Client, *events: ingest_pb2.Event) -> None:
    reply = next(iter(client.ingest.StreamEvents(iter([ingest_pb2.StreamEventsRequest(events=list(events))]))))
    assert reply.accepted == len(events), reply


@pytest.fixture(scope="module")
def many(world: World) -> Iterator[Client]:
    """Business "many": MANY campaigns (two pages of the list) and ODD_ID."""
    client = keyed_client(world.server.address, world.many)
    for i in range(MANY - 1):
        client.campaigns.CreateCampaign(
            campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id=f"m-{i:02d}", name=f"M {i:02d}"))
        )
    send(client, status_event(ODD_ID, "+15550100000", "odd-0"))
    yield client
    client.channel.close()


def test_more_campaigns_shows_only_while_there_is_a_next_page_and_never_repeats_one(
    browser: Any, world: World, many: Client
) -> None:
    from playwright.sync_api import expect

    # One page: no button (the stylesheet's display used to override `hidden`).
    page = signed_in(browser, world, world.read)
    expect(page.locator(f'tr[data-campaign="{CAMPAIGN}"]')).to_have_count(1, timeout=WAIT_MS)
    expect(page.locator("#more")).to_be_hidden(timeout=WAIT_MS)
    # Two pages: the button, then every campaign once, then no button.
    page = signed_in(browser, world, world.many)
    rows = page.locator("#campaigns tbody tr")
    expect(rows).to_have_count(50, timeout=WAIT_MS)
    expect(page.locator("#more")).to_be_visible(timeout=WAIT_MS)
    page.click("#more")
    expect(rows).to_have_count(MANY, timeout=WAIT_MS)
    expect(page.locator("#more")).to_be_hidden(timeout=WAIT_MS)
    page.evaluate("document.getElementById('more').click()")  # a stray click: no page 1 again
    page.wait_for_timeout(500)
    ids = [rows.nth(i).get_attribute("data-campaign") for i in range(rows.count())]
    assert len(ids) == MANY and len(set(ids)) == MANY
    assert ODD_ID in ids
    assert page.errors == []


def test_an_unknown_campaign_page_is_a_404_not_connecting_forever(browser: Any, world: World) -> None:
    page = signed_in(browser, world, world.read)
    for path in ("/campaigns/nope", "/campaigns/nope%2Fstats", f"/campaigns/{CAMPAIGN}%2F"):
        response = page.goto(world.url + path)
        assert response.status == 404, path
        expect_text(page.locator("h1"), "Campaign not found")
        assert "connecting" not in page.content()
    assert page.errors == [] or all("404" in e for e in page.errors)


def test_an_id_with_a_slash_opens_from_the_list_and_its_audience_follows_live(
    browser: Any, world: World, many: Client
) -> None:
    from urllib.parse import quote

    from playwright.sync_api import expect

    page = signed_in(browser, world, world.many)
    href = "/campaigns/" + quote(ODD_ID, safe="")
    link = page.locator(f'tr[data-campaign="{ODD_ID}"] th a')
    expect(link).to_have_attribute("href", href, timeout=WAIT_MS)
    link.click()
    page.wait_for_url(world.url + href, timeout=WAIT_MS)
    expect_text(page.locator("#title"), ODD_ID)
    expect_text(tile(page, "total"), "1")
    expect(page.locator("#meta")).to_contain_text("audience 1", timeout=WAIT_MS)
    expect(page.locator("#live")).to_have_class("live-dot on", timeout=WAIT_MS)
    # The page's other JSON (its URLs built from the encoded id) loaded too.
    expect(page.locator("#message-table tbody tr")).to_have_count(1, timeout=WAIT_MS)
    assert (
        page.locator("#export-csv")
        .get_attribute("href")
        .startswith("/api/campaigns/" + quote(ODD_ID, safe="") + "/export?")
    )
    # Two more recipients: the header's audience follows, without a reload.
    page.evaluate("window.__still_here = true")
    send(
        many,
        status_event(ODD_ID, "+15550100001", "odd-1"),
        status_event(ODD_ID, "+15550100002", "odd-2"),
    )
    expect_text(tile(page, "total"), "3")
    expect(page.locator("#meta")).to_contain_text("audience 3", timeout=WAIT_MS)
    assert page.evaluate("window.__still_here") is True
    assert page.errors == []


def test_sign_in_goes_back_to_the_page_that_asked_for_it(browser: Any, world: World) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{world.url}/campaigns/{CAMPAIGN}#messages")
    assert page.url.startswith(f"{world.url}/signin?next=")
    page.fill("#key", "ft_wrong_key")
    page.press("#key", "Enter")
    page.wait_for_url("**/signin?error=INVALID_API_KEY&next=*", timeout=WAIT_MS)  # a wrong key keeps the way back
    page.fill("#key", world.read)
    page.press("#key", "Enter")
    page.wait_for_url(f"{world.url}/campaigns/{CAMPAIGN}", timeout=WAIT_MS)
    page.wait_for_selector("#tiles .tile", timeout=WAIT_MS)
    # Another origin in `next` is never followed: the list instead.
    context = browser.new_context()
    page = context.new_page()
    page.goto(world.url + "/signin?next=" + "%2F%2Fexample.com%2F")
    page.fill("#key", world.read)
    page.press("#key", "Enter")
    page.wait_for_url(world.url + "/", timeout=WAIT_MS)


# -- issue 22, item 2: the page explains itself ---------------------------------------------------


def numbers(texts: list[str]) -> list[int]:
    return [int(t.replace(",", "")) for t in texts]


def test_timeline_has_axes_with_values_and_engagement_on_its_own_scale(browser: Any, world: World) -> None:
    from playwright.sync_api import expect

    page = signed_in(browser, world, world.read)
    open_campaign(page, world)
    for chart in ("#timeline-chart", "#engagement-chart"):
        ticks = page.locator(f"{chart} svg .y-tick text")
        expect(ticks.first).to_be_visible(timeout=WAIT_MS)
        values = numbers(ticks.all_text_contents())
        assert len(values) >= 2 and values[0] == 0 and values == sorted(values), values
        times = page.locator(f"{chart} svg .x-tick text").all_text_contents()
        assert len(times) >= 2 and all(times), times
        assert page.locator(f"{chart} svg .axis-label").count() == 2  # both axes say what they count
    # The bucket: the finest that shows the span in at most 60 buckets.
    note = page.locator("#timeline-note")
    expect(note).to_contain_text("buckets of", timeout=WAIT_MS)
    buckets = int(note.inner_text().split(" buckets of")[0].replace(",", ""))
    assert 2 <= buckets <= 60
    auto = page.locator('#width option[value="auto"]').inner_text()
    assert auto.startswith("auto (") and auto[6:-1] in note.inner_text()
    # Each chart's scale fits its own figures: the status chart's top tick
    # is above the clicks' highest bucket by far, the engagement chart's is not.
    timeline = world.client.reports.GetCampaignTimeline(
        report_pb2.GetCampaignTimelineRequest(campaign_id=CAMPAIGN, width=report_pb2.TIMELINE_BUCKET_WIDTH_MINUTE)
    )
    clicks = sum(b.clicks for b in timeline.buckets)
    legend = page.locator('#engagement-chart li[data-series="clicks"] strong')
    expect(legend).to_have_text(count(clicks), timeout=WAIT_MS)
    status_top = numbers(page.locator("#timeline-chart svg .y-tick text").all_text_contents())[-1]
    engagement_top = numbers(page.locator("#engagement-chart svg .y-tick text").all_text_contents())[-1]
    assert engagement_top < status_top
    assert page.locator("#engagement-chart svg .marks circle").count() > 0
    # Another bucket: the charts are drawn again with it.
    page.select_option("#width", "86400000")
    expect(note).to_contain_text("buckets of 1 day", timeout=WAIT_MS)
    assert page.errors == []


def test_the_map_draws_natural_earth_coastlines(browser: Any, world: World) -> None:
    page = signed_in(browser, world, world.read)
    open_campaign(page, world)
    land = page.locator("#map svg path.land")
    from playwright.sync_api import expect

    expect(land).to_have_count(1, timeout=WAIT_MS)
    d = land.get_attribute("d") or ""
    assert len(d) > 20_000 and d.count("M") > 100  # every coast of Natural Earth 1:110m
    # Served by flowtrack itself, nothing from elsewhere.
    response = page.request.get(world.url + "/static/worldmap.js")
    assert response.status == 200 and "Natural Earth" in response.text()
    expect(page.locator("#map-note")).to_contain_text("Natural Earth", timeout=WAIT_MS)


def test_no_figure_has_two_tiles_and_every_rate_says_its_denominator(browser: Any, world: World) -> None:
    page = signed_in(browser, world, world.read)
    open_campaign(page, world)
    stats = world.stats()
    page.wait_for_selector("#funnel .tile", timeout=WAIT_MS)
    tiles = page.locator(".tile")
    fields = [tiles.nth(i).get_attribute("data-field") for i in range(tiles.count())]
    assert len(fields) == len(set(fields)), fields
    labels = page.locator(".tile .tile-label").all_inner_texts()
    assert len(labels) == len(set(labels)), labels
    rates = [r.get_attribute("data-rate") for r in page.locator(".tile .rate").all()]
    assert len(rates) == len(set(rates)), rates
    # The three figures with two names each are one tile each.
    for twin in ("deliveryRate", "clickThroughRate", "conversationsInitiated", "clicks", "replies"):
        assert twin not in fields + rates, twin
    for one in ("successRate", "linkClickRate"):
        assert rates.count(one) == 1
    assert fields.count("replied") == 1
    expect_text(page.locator('.tile[data-field="replied"] .tile-label'), "Replied (conversations initiated)")
    # Every rate: its denominator in words and figures, its formula on hover.
    for i in range(tiles.count()):
        t = tiles.nth(i)
        if t.locator(".rate").count() == 0:
            continue
        words = t.locator(".denominator").inner_text()
        assert words.startswith("of ") and words.endswith(")"), words
        assert " / " in (t.get_attribute("title") or ""), t.get_attribute("title")
    success = page.locator('.tile[data-field="success"]')
    expect_text(success.locator(".denominator"), f"of submitted ({count(stats.overall.counts.submitted)})")
    # The bar's shares are of the audience, and the page says why the success shares differ.
    c = stats.overall.counts
    shares = page.locator("#status-chart .legend .share").all_inner_texts()
    assert shares and all(s.endswith(" of audience") for s in shares), shares
    note = page.locator("#status-note").inner_text()
    assert f"({count(c.total)} recipients)" in note
    bar_success = shares[4].split(" ")[0]  # Pending, Not submitted, Awaiting, Delivery not confirmed, Success
    assert abs(float(bar_success[:-1]) - c.success / c.total * 100) <= 0.051
    assert f"{percent(stats.overall.rates, 'success_rate')} on its tile and {bar_success} here" in note
    # The tables' shares name theirs too.
    assert "% of clicks" in page.locator("#by-country thead").inner_text()
    assert page.errors == []


def test_unknown_places_are_grouped_last(browser: Any, world: World) -> None:
    page = signed_in(browser, world, world.read)
    open_campaign(page, world)
    breakdown = world.client.reports.GetClickBreakdown(report_pb2.GetClickBreakdownRequest(campaign_id=CAMPAIGN))
    unknown_cities = sum(1 for b in breakdown.by_city if not b.city)
    assert unknown_cities > 0, "the simulation has clicks without a city"
    # The server orders by clicks: an unknown city comes before known ones (the old page showed it so).
    first_unknown = next(i for i, b in enumerate(breakdown.by_city) if not b.city)
    assert first_unknown < len(breakdown.by_city) - unknown_cities
    rows = page.locator("#by-city tbody tr")
    from playwright.sync_api import expect

    expect(rows).to_have_count(len(breakdown.by_city), timeout=WAIT_MS)
    flags = [rows.nth(i).get_attribute("class") == "unknown" for i in range(rows.count())]
    assert flags == [False] * (len(flags) - unknown_cities) + [True] * unknown_cities
    expect_text(page.locator("#by-country tbody tr").last.locator("td").first, "Unknown location")


def page_recipients(page: Any) -> list[str]:
    return [t.strip() for t in page.locator("#message-table tbody tr td:first-child").all_inner_texts()]


def test_engagement_filters_narrow_the_message_table_to_the_rpc_answer(browser: Any, world: World) -> None:
    from playwright.sync_api import expect

    page = signed_in(browser, world, world.read)
    open_campaign(page, world)
    cases: list[tuple[dict[str, str], report_pb2.MessageFilter]] = [
        ({"replied": "true"}, report_pb2.MessageFilter(replied=True)),
        ({"clicked_link": "true", "replied": "false"}, report_pb2.MessageFilter(clicked_link=True, replied=False)),
        ({"read": "false", "opted_out": "true"}, report_pb2.MessageFilter(read=False, opted_out=True)),
    ]
    page.select_option('#message-filters select[name="page_size"]', "500")
    for chosen, flt in cases:
        for name in ("read", "replied", "opted_out", "clicked_link", "clicked_button", "reached_goal"):
            page.select_option(f'#message-filters select[name="{name}"]', chosen.get(name, ""))
        page.click("#message-filters button[type=submit]")
        request = report_pb2.StreamMessageReportRequest(campaign_id=CAMPAIGN, filter=flt, page_size=500)
        expected = [r.recipient for p in world.client.reports.StreamMessageReport(request) for r in p.rows]
        assert 0 < len(expected) < world.stats().overall.counts.total, chosen
        expect(page.locator("#page-label")).to_have_text(f"Page 1 · {count(len(expected))} rows", timeout=WAIT_MS)
        assert page_recipients(page) == expected, chosen
        assert "read=" in (page.locator("#export-csv").get_attribute("href") or "") or "read" not in chosen
    engaged = page.locator("#message-table tbody tr td:last-child").first.inner_text()
    assert "opted out" in engaged
    assert page.errors == []


def test_replies_tab_shows_stream_replies_and_a_new_reply_live(browser: Any, world: World) -> None:
    from playwright.sync_api import expect

    page = signed_in(browser, world, world.read)
    open_campaign(page, world)
    page.click("#tab-replies")
    expect(page.locator("#replies")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#message-filters")).to_be_hidden()
    expected = [
        r
        for p in world.client.reports.StreamReplies(report_pb2.StreamRepliesRequest(campaign_id=CAMPAIGN, page_size=25))
        for r in p.rows
    ][:25]
    assert expected, "the simulation has replies"
    page.select_option('#reply-filters select[name="page_size"]', "25")
    page.click("#reply-filters button[type=submit]")
    rows = page.locator("#reply-table tbody tr")
    expect(page.locator("#replies-page")).to_have_text(f"Page 1 · {len(expected)} replies", timeout=WAIT_MS)
    shown = [rows.nth(i).locator("td").all_inner_texts() for i in range(rows.count())]
    assert [s[1:] for s in shown] == [[r.recipient, r.text or "(no text kept)"] for r in expected]
    assert shown[0][0] == expected[0].occurred_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
    # Every reply on one page, then a new one comes in: it appears without a reload.
    page.select_option('#reply-filters select[name="page_size"]', "500")
    page.click("#reply-filters button[type=submit]")
    page.evaluate("window.__still_here = true")
    text = "Is there a blue one? (live test)"
    event = ingest_pb2.EngagementEvent(
        event_id="live-reply-1",
        campaign_id=CAMPAIGN,
        recipient="+15550199999",
        kind=ingest_pb2.ENGAGEMENT_KIND_REPLIED,
        occurred_at=timestamp_pb2.Timestamp(seconds=int(time.time()) - 1),
        text=text,
    )
    send(world.client, ingest_pb2.Event(engagement=event))
    expect(page.locator("#reply-table tbody tr").last.locator("td").nth(2)).to_have_text(text, timeout=WAIT_MS)
    expect(page.locator("#replies-count")).to_have_text(f"({count(world.stats().overall.replies)})", timeout=WAIT_MS)
    assert page.evaluate("window.__still_here") is True
    # The header's Replies link opens the tab.
    page.click("#tab-messages")
    page.click('.sections a[href="#replies"]')
    expect(page.locator("#replies")).to_be_visible(timeout=WAIT_MS)
    assert page.errors == []
