"""The campaign page's A/B section in a real browser (headless Chromium by
Playwright, as tests/test_browser.py): the verdicts, arms and differences it
shows are those of GetCampaignStats' AbTest, and they follow live.

Skipped where Chromium or Playwright is missing (FLOWTRACK_REQUIRE_BROWSER_TEST=1:
they cannot skip)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowtrack.domain.keys import Scope
from flowtrack.v1 import campaign_pb2, common_pb2, report_pb2
from tests import test_browser as tb
from tests.conftest import Backend, Client, ServerThread, database_of, start_server
from tests.report_helpers import send_events, status_event
from tests.tenants import create_key, keyed_client
from tests.test_browser import WAIT_MS, expect_text, signed_in

pytestmark = tb.pytestmark
browser = tb.browser  # the module's headless Chromium (a fixture)

CAMPAIGN = "ab-june"
SUCCESS, FAILED = common_pb2.MESSAGE_STATUS_SUCCESS, common_pb2.MESSAGE_STATUS_FAILED
T0 = int(time.time() * 1_000_000)


class World:
    """A campaign whose variant A delivers 90 of 100 and B 60 of 100, and C
    starts with 20 recipients (too few for a verdict)."""

    def __init__(self, tmp: Path) -> None:
        db = database_of(tmp)
        self.admin = create_key(db, "acme", Scope.ADMIN)
        self.read = create_key(db, "acme", Scope.READ)
        self.server: ServerThread = start_server(tmp, http="127.0.0.1:0")
        assert self.server.running.http is not None
        self.url = self.server.running.http.url
        self.client: Client = keyed_client(self.server.address, self.admin)
        self.client.campaigns.CreateCampaign(
            campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id=CAMPAIGN)), timeout=30
        )
        events = []
        for i in range(220):
            variant, delivered = ("A", i < 90) if i < 100 else ("B", i < 160) if i < 200 else ("C", i < 210)
            status = SUCCESS if delivered else FAILED
            reason = None if delivered else ("E1", "undeliverable")
            events.append(
                status_event(f"e{i}", CAMPAIGN, f"+1555{i:07d}", status, T0 + i, variant=variant, reason=reason)
            )
        send_events(self.client, events)

    def ab_test(self) -> report_pb2.AbTest:
        request = report_pb2.GetCampaignStatsRequest(campaign_id=CAMPAIGN)
        return self.client.reports.GetCampaignStats(request, timeout=30).stats.ab_test

    def close(self) -> None:
        self.client.channel.close()
        self.server.stop()


@pytest.fixture(scope="module")
def world(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("browser-ab"))
    yield w
    w.close()


def table_of(comparison: report_pb2.VariantComparison) -> str:
    """The CSS selector of a comparison's table."""
    rest = "true" if comparison.against_rest else "false"
    return f'table.ab[data-variant="{comparison.variant}"][data-other="{comparison.other}"][data-rest="{rest}"]'


def verdict_cell(page: Any, comparison: report_pb2.VariantComparison, rate: str) -> Any:
    return page.locator(f'{table_of(comparison)} tr[data-rate="{rate}"] td.verdict')


def row_cells(page: Any, comparison: report_pb2.VariantComparison, rate: str) -> Any:
    return page.locator(f'{table_of(comparison)} tr[data-rate="{rate}"] td')


def arm(successes: int, trials: int) -> str:
    return f"{successes:,}/{trials:,}" + (f" · {successes / trials * 100:.1f}%" if trials else "")


def test_verdicts_shown_equal_get_campaign_stats_and_follow_live(browser: Any, world: World) -> None:
    from playwright.sync_api import expect

    page = signed_in(browser, world, world.read)
    page.goto(f"{world.url}/campaigns/{CAMPAIGN}")
    page.wait_for_selector("table.ab", timeout=WAIT_MS)
    ab = world.ab_test()
    assert len(ab.comparisons) == 6  # A-B, A-C, B-C, and each against the rest
    for comparison in ab.comparisons:
        empty = []
        for r in comparison.rates:
            if r.rate != "delivery" and r.successes + r.other_successes == 0:
                assert r.summary == "not enough data"
                empty.append(r.rate)  # no event of that kind: listed under the table, no row
                continue
            cell = verdict_cell(page, comparison, r.rate)
            expect_text(cell, r.summary)
            expect(cell).to_have_attribute("data-verdict", report_pb2.AbVerdict.Name(r.verdict), timeout=WAIT_MS)
        assert empty == ["read", "reply", "link_click", "goal"]
        note = page.locator(f"{table_of(comparison)} + p[data-empty-rates]")
        expect(note).to_have_attribute("data-empty-rates", " ".join(empty), timeout=WAIT_MS)
        delivery = comparison.rates[0]
        cells = row_cells(page, comparison, "delivery")
        expect_text(cells.nth(0), arm(delivery.successes, delivery.trials))
        expect_text(cells.nth(1), arm(delivery.other_successes, delivery.other_trials))
    # The headline names each lead: A leads B on delivery.
    # The headline names each lead from the leader's side: A leads B on delivery (90% against 60%).
    expect(page.locator('#ab-leads li[data-pair="A vs B"][data-rate="delivery"]')).to_have_text(
        "A leads B on delivery rate: +30.0 pts, 95% CI +18.7 to +41.3, p < 0.001", timeout=WAIT_MS
    )
    # B against the rest (A and C pooled: 100 of 120) on delivery: the rest lead, by +23.3 points.
    expect(page.locator('#ab-leads li[data-pair="B vs the rest"][data-rate="delivery"]')).to_contain_text(
        "the rest lead B on delivery rate: +23.3 pts", timeout=WAIT_MS
    )
    b_vs_c = next(c for c in ab.comparisons if (c.variant, c.other) == ("B", "C"))
    assert b_vs_c.rates[0].summary == "not enough data"  # C: 10 of 20

    # C grows to 90 of 100 (80 new recipients, all delivered): the page follows live.
    events = [
        status_event(f"more{i}", CAMPAIGN, f"+1666{i:07d}", SUCCESS, T0 + 10_000 + i, variant="C") for i in range(80)
    ]
    send_events(world.client, events)
    b_vs_c = next(c for c in world.ab_test().comparisons if (c.variant, c.other) == ("B", "C"))
    assert b_vs_c.rates[0].summary == "C leads"  # 60 of 100 against 90 of 100
    expect_text(verdict_cell(page, b_vs_c, "delivery"), "C leads")
    assert page.errors == []
