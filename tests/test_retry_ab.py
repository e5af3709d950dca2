"""The A/B test in GetCampaignStats and `flowtrack stats --variants`, and
retrying a segment: an audience file of a segment (ExportReport's audience
layout, `flowtrack campaigns add-recipients`), and CreateCampaign from a
segment of another campaign (its source in GetCampaign and
GetCampaignStats). Real servers, real gRPC, on both backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import pytest
from click.testing import CliRunner, Result

from flowtrack.cli import cli
from flowtrack.domain import abtest
from flowtrack.domain.keys import Scope
from flowtrack.domain.stats import Bucket, Counts, Engaged
from flowtrack.v1 import campaign_pb2, common_pb2, ingest_pb2, report_pb2
from tests.conftest import Client, ServerThread, database_of, error_details, start_server
from tests.report_helpers import all_report_rows, click_event, send_events, status_event, ts
from tests.tenants import create_key, keyed_client

T0 = 1_780_000_000_000_000
SUCCESS, FAILED = common_pb2.MESSAGE_STATUS_SUCCESS, common_pb2.MESSAGE_STATUS_FAILED


def run(server: ServerThread, *args: str) -> Result:
    env = {"FLOWTRACK_ADDRESS": server.address, "COLUMNS": "200"}
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def name(i: int) -> str:
    return f"+1555{i:07d}"


def seed_june(client: Client) -> dict[str, set[str]]:
    """June: 100 recipients on variant A (90 delivered, 10 failed), 100 on B
    (60 delivered, 40 failed); 30 of each variant's delivered read; 5 of
    A's delivered clicked. Each recipient has input variable name=n<i>."""
    client.campaigns.CreateCampaign(
        campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id="june", name="June")), timeout=30
    )
    recipients = [
        campaign_pb2.Recipient(
            recipient=name(i), channel="whatsapp", variant="A" if i < 100 else "B", input_variables={"name": f"n{i}"}
        )
        for i in range(200)
    ]
    client.campaigns.AddRecipients(
        iter([campaign_pb2.AddRecipientsRequest(campaign_id="june", recipients=recipients)]), timeout=30
    )
    failed = {name(i) for i in range(200) if (i < 100 and i >= 90) or (i >= 100 and i >= 160)}
    events = []
    for i in range(200):
        r = name(i)
        if r in failed:
            events.append(status_event(f"s{i}", "june", r, FAILED, T0 + i, reason=("E1", "undeliverable")))
        else:
            events.append(status_event(f"s{i}", "june", r, SUCCESS, T0 + i))
    read = {name(i) for i in range(30)} | {name(i) for i in range(100, 130)}
    for r in sorted(read):
        event = ingest_pb2.EngagementEvent(
            event_id=f"r-{r}", campaign_id="june", recipient=r, kind=ingest_pb2.ENGAGEMENT_KIND_READ
        )
        event.occurred_at.CopyFrom(ts(T0 + 1000))
        events.append(ingest_pb2.Event(engagement=event))
    clicked = {name(i) for i in range(40, 45)}
    for r in sorted(clicked):
        events.append(click_event(f"c-{r}", "june", r, "L1", T0 + 2000, ("BR", "SP", "Sao Paulo")))
    results = send_events(client, events)
    assert all(r.outcome == ingest_pb2.EVENT_OUTCOME_ACCEPTED for r in results), results[:3]
    return {"failed": failed, "read": read, "clicked": clicked}


def test_ab_test_in_stats_rpc_and_cli(server: ServerThread, client: Client) -> None:
    seed_june(client)
    reply = client.reports.GetCampaignStats(report_pb2.GetCampaignStatsRequest(campaign_id="june"), timeout=30)
    ab = reply.stats.ab_test
    assert ab.confidence == pytest.approx(0.95) and ab.min_trials == abtest.MIN_TRIALS
    assert [(c.variant, c.other, c.against_rest) for c in ab.comparisons] == [("A", "B", False)]
    rates = {r.rate: r for r in ab.comparisons[0].rates}
    assert list(rates) == list(abtest.RATES)
    delivery = rates["delivery"]
    assert (delivery.successes, delivery.trials, delivery.other_successes, delivery.other_trials) == (90, 100, 60, 100)
    assert delivery.verdict == report_pb2.AB_VERDICT_VARIANT_LEADS and delivery.summary == "A leads"
    expected = abtest.two_proportion(90, 100, 60, 100)
    assert delivery.p_value == pytest.approx(expected.p_value)
    assert (delivery.ci_low, delivery.ci_high) == (pytest.approx(expected.ci_low), pytest.approx(expected.ci_high))
    assert rates["read"].summary == "no difference yet"  # 30 of 100 on both
    assert rates["link_click"].summary == "not enough data"  # 5 clickers: too few expected successes
    assert rates["goal"].summary == "not enough data" and rates["goal"].trials == 0
    assert not rates["goal"].HasField("difference")

    # The same verdicts from the domain, on the RPC's own per-variant figures.
    def bucket(b: report_pb2.StatsBucket) -> Bucket:
        c = b.counts
        counts = Counts(c.pending, c.not_submitted, c.awaiting, c.delivery_not_confirmed, c.failed, c.success)
        engaged = Engaged(read=b.read, replied=b.replied, entered=b.entered, goal_achieved=b.goal_achieved)
        return Bucket(b.key, counts, b.clicks, b.unique_clickers, engaged)

    domain = abtest.comparisons([bucket(b) for b in reply.stats.by_variant])
    assert [r.summary for r in domain[0].rates] == [r.summary for r in ab.comparisons[0].rates]

    table = run(server, "stats", "june", "--variants").output
    assert "A vs B" in table and "A leads" in table and "not enough data" in table
    assert "link click (all clicks)" in table
    as_json = json.loads(run(server, "stats", "june", "--variants", "--json").output)
    assert as_json["comparisons"][0]["rates"][0]["summary"] == "A leads"
    assert as_json["comparisons"][0]["rates"][0]["verdict"] == "AB_VERDICT_VARIANT_LEADS"
    assert "pValue" in as_json["comparisons"][0]["rates"][0]


def test_ab_test_against_the_rest_with_three_variants(client: Client) -> None:
    client.campaigns.CreateCampaign(
        campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id="three")), timeout=30
    )
    events = []
    for i in range(150):
        variant = "ABC"[i // 50]
        ok = (i % 50) < (45 if variant == "C" else 25)
        events.append(
            status_event(
                f"e{i}",
                "three",
                name(i),
                SUCCESS if ok else FAILED,
                T0,
                variant=variant,
                reason=None if ok else ("E", "x"),
            )
        )
    send_events(client, events)
    ab = client.reports.GetCampaignStats(
        report_pb2.GetCampaignStatsRequest(campaign_id="three"), timeout=30
    ).stats.ab_test
    found = [(c.variant, c.other or "(rest)", c.rates[0].summary) for c in ab.comparisons]
    assert found == [
        ("A", "B", "no difference yet"),
        ("A", "C", "C leads"),
        ("B", "C", "C leads"),
        ("A", "(rest)", "the rest lead"),
        ("B", "(rest)", "the rest lead"),
        ("C", "(rest)", "C leads"),
    ]


def test_create_from_a_segment_copies_it_and_records_its_source(client: Client) -> None:
    seeded = seed_june(client)
    created = client.campaigns.CreateCampaign(
        campaign_pb2.CreateCampaignRequest(
            campaign=campaign_pb2.Campaign(
                id="retry-1", source=campaign_pb2.CampaignSource(campaign_id="june", segment="failed")
            )
        ),
        timeout=30,
    ).campaign
    assert created.recipient_count == len(seeded["failed"]) == 50
    assert created.source.campaign_id == "june" and created.source.segment == "failed"
    got = client.campaigns.GetCampaign(campaign_pb2.GetCampaignRequest(campaign_id="retry-1"), timeout=30).campaign
    assert got.source == created.source and got.recipient_count == 50
    listed = client.campaigns.ListCampaigns(campaign_pb2.ListCampaignsRequest(), timeout=30).campaigns
    assert {c.id: c.HasField("source") for c in listed} == {"june": False, "retry-1": True}

    rows, _ = all_report_rows(client, "retry-1")
    assert {r.recipient for r in rows} == seeded["failed"]
    for r in rows:  # pending, with the variables, channel and variant carried over
        assert r.status == common_pb2.MESSAGE_STATUS_PENDING
        assert r.input_variables["name"] == "n" + str(int(r.recipient[-7:]))
        assert r.channel == "whatsapp" and r.variant == ("A" if int(r.recipient[-7:]) < 100 else "B")

    stats = client.reports.GetCampaignStats(report_pb2.GetCampaignStatsRequest(campaign_id="retry-1"), timeout=30)
    assert stats.stats.overall.counts.pending == 50
    assert {b.key: b.counts.total for b in stats.stats.by_variant} == {"A": 10, "B": 40}
    assert stats.source.campaign_id == "june" and stats.source.segment == "failed"
    assert stats.source_stats.campaign_id == "june" and stats.source_stats.overall.counts.failed == 50

    # Other segments: delivered but not read; clicked but not replied.
    for segment, expected in (("delivered_not_read", 150 - 60), ("clicked_not_replied", 5), ("undelivered", 50)):
        made = client.campaigns.CreateCampaign(
            campaign_pb2.CreateCampaignRequest(
                campaign=campaign_pb2.Campaign(source=campaign_pb2.CampaignSource(campaign_id="june", segment=segment))
            ),
            timeout=30,
        ).campaign
        assert made.recipient_count == expected, segment

    # The source goes; the record stays.
    client.campaigns.DeleteCampaign(campaign_pb2.DeleteCampaignRequest(campaign_id="june"), timeout=30)
    stats = client.reports.GetCampaignStats(report_pb2.GetCampaignStatsRequest(campaign_id="retry-1"), timeout=30)
    assert stats.source.campaign_id == "june" and not stats.HasField("source_stats")


def test_create_from_a_bad_source(client: Client) -> None:
    def create(source: campaign_pb2.CampaignSource) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as caught:
            client.campaigns.CreateCampaign(
                campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id="r", source=source)), timeout=30
            )
        return caught.value

    error = create(campaign_pb2.CampaignSource(campaign_id="nope", segment="failed"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = create(campaign_pb2.CampaignSource(campaign_id="", segment="lost"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = set(error_details(error).violations)
    assert fields == {"campaign.source.campaign_id", "campaign.source.segment"}
    with pytest.raises(grpc.RpcError):  # nothing was created
        client.campaigns.GetCampaign(campaign_pb2.GetCampaignRequest(campaign_id="r"), timeout=30)


def test_audience_file_round_trip_through_the_cli(server: ServerThread, client: Client, tmp_path: Path) -> None:
    seeded = seed_june(client)
    target = tmp_path / "failed.csv"
    run(server, "export", "june", "--layout", "audience", "--segment", "failed", "-o", str(target), "--quiet")
    lines = target.read_text().splitlines()
    assert lines[0] == "recipient,channel,variant,input_variables"
    assert len(lines) == 51
    run(server, "campaigns", "create", "retry-2")
    out = run(server, "campaigns", "add-recipients", "retry-2", str(target)).output
    assert "added 50" in out
    rows, _ = all_report_rows(client, "retry-2")
    assert {r.recipient for r in rows} == seeded["failed"]
    assert all(r.input_variables["name"].startswith("n") for r in rows)
    # Again: already present, nothing added.
    again = json.loads(run(server, "campaigns", "add-recipients", "retry-2", str(target), "--json").output)
    assert again["alreadyPresent"] == "50" and "added" not in again

    # From standard input (a pipe: read twice from a copy), and a file with a
    # bad line at its end adds nobody.
    run(server, "campaigns", "create", "retry-4")
    piped = subprocess.run(
        [sys.executable, "-m", "flowtrack", "campaigns", "add-recipients", "retry-4", "-"],
        input=target.read_text(),
        env={**os.environ, "FLOWTRACK_ADDRESS": server.address},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert piped.returncode == 0 and "added 50" in piped.stdout, piped.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text(target.read_text() + '+15559990000,,,"not json"\n')
    run(server, "campaigns", "create", "retry-5")
    refused = CliRunner().invoke(
        cli, ["campaigns", "add-recipients", "retry-5", str(bad)], env={"FLOWTRACK_ADDRESS": server.address}
    )
    assert refused.exit_code != 0 and "line 52: input_variables is not a JSON object" in refused.output
    assert all_report_rows(client, "retry-5")[0] == []

    shown = run(server, "campaigns", "create", "retry-3", "--from", "june", "--segment", "failed", "--json").output
    assert json.loads(shown)["source"] == {"campaignId": "june", "segment": "failed"}
    assert "segment failed of campaign june" in run(server, "campaigns", "show", "retry-3").output
    printed = run(server, "stats", "retry-3").output
    assert "source: campaign june, segment failed" in printed
    report = run(server, "report", "june", "--segment", "delivered_not_read", "--json").output
    assert len(report.splitlines()) == 90


def test_http_stats_json_carries_the_ab_test_and_the_source(tmp_path: Path) -> None:
    """GET /api/campaigns/ID/stats: the GetCampaignStatsResponse as proto3
    JSON, with stats.abTest, source and sourceStats."""
    db = database_of(tmp_path)
    admin, read = create_key(db, "acme", Scope.ADMIN), create_key(db, "acme", Scope.READ)
    server = start_server(tmp_path, http="127.0.0.1:0")
    client = keyed_client(server.address, admin)
    try:
        seed_june(client)
        client.campaigns.CreateCampaign(
            campaign_pb2.CreateCampaignRequest(
                campaign=campaign_pb2.Campaign(
                    id="retry-1", source=campaign_pb2.CampaignSource(campaign_id="june", segment="failed")
                )
            ),
            timeout=30,
        )
        assert server.running.http is not None
        with httpx.Client(base_url=server.running.http.url, headers={"authorization": f"Bearer {read}"}) as h:
            june = h.get("/api/campaigns/june/stats").json()
            rates = june["stats"]["abTest"]["comparisons"][0]["rates"]
            assert (rates[0]["rate"], rates[0]["summary"]) == ("delivery", "A leads")
            assert "source" not in june
            retry = h.get("/api/campaigns/retry-1/stats").json()
            assert retry["source"] == {"campaignId": "june", "segment": "failed"}
            assert retry["sourceStats"]["campaignId"] == "june"
            assert retry["sourceStats"]["overall"]["counts"]["failed"] == "50"
            assert "abTest" in retry["stats"]  # A and B among the 50 retried
            shown = h.get("/api/campaigns/retry-1").json()["campaign"]
            assert shown["source"] == {"campaignId": "june", "segment": "failed"}
    finally:
        client.channel.close()
        server.stop()


def test_a_source_of_another_business_is_not_found(tmp_path: Path) -> None:
    """Tenants are sealed: a campaign of another business is no source (NOT_FOUND, nothing copied)."""
    db = database_of(tmp_path)
    acme, globex = create_key(db, "acme", Scope.ADMIN), create_key(db, "globex", Scope.ADMIN)
    server = start_server(tmp_path)
    a, g = keyed_client(server.address, acme), keyed_client(server.address, globex)
    try:
        seed_june(a)
        source = campaign_pb2.CampaignSource(campaign_id="june", segment="failed")
        with pytest.raises(grpc.RpcError) as caught:
            g.campaigns.CreateCampaign(
                campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id="steal", source=source)),
                timeout=30,
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        listed = g.campaigns.ListCampaigns(campaign_pb2.ListCampaignsRequest(), timeout=30).campaigns
        assert list(listed) == []
    finally:
        a.channel.close()
        g.channel.close()
        server.stop()
