"""The `flowtrack` CLI as a client, against a real server: every command, its
error paths (one line on stderr, a non-zero exit, never a traceback), the
simulation (seeded, and reconciled with the server's stats), and the help and
documentation of every command."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from flowtrack.cli import cli
from flowtrack.client import simulate as sim
from flowtrack.v1 import campaign_pb2, common_pb2, ingest_pb2, report_pb2
from tests.conftest import Client, ServerThread, start_server

ROOT = Path(__file__).resolve().parent.parent
SEED = 11
RECIPIENTS = 300


def run(server: ServerThread | str, *args: str, input: str | None = None) -> Result:
    address = server if isinstance(server, str) else server.address
    env = {"FLOWTRACK_ADDRESS": address, "COLUMNS": "200"}
    return CliRunner().invoke(cli, list(args), env=env, input=input, catch_exceptions=False)


def ok(server: ServerThread | str, *args: str) -> Result:
    result = run(server, *args)
    assert result.exit_code == 0, f"{args}: exit {result.exit_code}\n{result.output}"
    return result


def one_error_line(result: Result) -> str:
    """The single line a failed command prints on stderr."""
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    assert lines[0].startswith("flowtrack: ")
    return lines[0]


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the simulation, as a pure generator --------------------------------------------

END = 1_790_000_000.0


def generated(seed: int = SEED, recipients: int = RECIPIENTS, campaign: str = "demo") -> sim.Simulation:
    return sim.generate(sim.SimConfig(campaign_id=campaign, recipients=recipients, seed=seed, end_time=END))


def test_simulation_is_reproducible_from_its_seed() -> None:
    first, again, other = generated(), generated(), generated(seed=SEED + 1)
    as_bytes = [e.SerializeToString(deterministic=True) for e in first.events]
    assert as_bytes == [e.SerializeToString(deterministic=True) for e in again.events]
    assert [r.SerializeToString(deterministic=True) for r in first.audience] == [
        r.SerializeToString(deterministic=True) for r in again.audience
    ]
    assert first.expected == again.expected
    assert as_bytes != [e.SerializeToString(deterministic=True) for e in other.events]
    # Event ids differ between campaigns, so one seed can fill two campaigns of a business.
    ids = {_event_id(e) for e in first.events}
    assert not ids & {_event_id(e) for e in generated(campaign="other").events}


def _event_id(event: ingest_pb2.Event) -> str:
    return str(getattr(event, event.WhichOneof("kind") or "status").event_id)


def test_simulation_is_realistic() -> None:
    s = generated(recipients=2000)
    statuses = [e.status for e in s.events if e.HasField("status")]
    clicks = [e.click for e in s.events if e.HasField("click")]
    times = [e.occurred_at.seconds for e in statuses] + [c.occurred_at.seconds for c in clicks]
    assert max(times) < END and min(times) > END - 2 * 86400  # in the past, ending "now"
    assert len({r.recipient for r in s.audience}) == 2000
    assert {r.channel for r in s.audience} == {"whatsapp", "sms", "rcs", "email"}
    assert {r.variant for r in s.audience} == {"A", "B"}
    seen = {e.status for e in statuses}
    assert seen == {
        common_pb2.MESSAGE_STATUS_NOT_SUBMITTED,
        common_pb2.MESSAGE_STATUS_SUBMITTED,
        common_pb2.MESSAGE_STATUS_DELIVERY_NOT_CONFIRMED,
        common_pb2.MESSAGE_STATUS_SUCCESS,
        common_pb2.MESSAGE_STATUS_FAILED,
    }
    assert any(e.attempt == 2 for e in statuses)  # retries
    reasons = {e.failure_reason.code for e in statuses if e.failure_reason.code}
    assert {"INVALID_NUMBER", "NOT_ON_CHANNEL", "BLOCKED_BY_USER", "RATE_LIMITED", "TEMPLATE_REJECTED"} <= reasons
    assert {"FLOW_ERROR", "OPTED_OUT"} <= reasons
    for e in statuses:  # a reason exactly where the contract requires one
        needs = e.status in (common_pb2.MESSAGE_STATUS_FAILED, common_pb2.MESSAGE_STATUS_NOT_SUBMITTED)
        assert bool(e.failure_reason.code) == needs
    assert s.expected.duplicates > 0 and s.expected.events_sent == s.expected.accepted + s.expected.duplicates
    # Out of order: some recipient's event arrives after a later one of the same message.
    last_seen: dict[str, tuple[int, int]] = {}
    late = 0
    for e in statuses:
        key = (e.occurred_at.seconds, e.occurred_at.nanos)
        if key < last_seen.get(e.recipient, key):
            late += 1
        last_seen[e.recipient] = max(key, last_seen.get(e.recipient, key))
    assert late > 0
    located = [c for c in clicks if c.location.city]
    assert clicks and located and len({c.location.country_code for c in located}) >= 4
    assert all(-90 <= c.location.latitude <= 90 and -180 <= c.location.longitude <= 180 for c in located)
    counts = s.expected.counts
    assert counts["total"] == counts["pending"] + counts["not_submitted"] + counts["submitted"]
    assert counts["submitted"] == sum(counts[k] for k in ("awaiting", "delivery_not_confirmed", "success", "failed"))
    assert all(counts[k] > 0 for k in counts)


# -- simulate against a server, and the reports that read it ----------------------


@pytest.fixture
def simulated(server: ServerThread, client: Client) -> Iterator[tuple[ServerThread, sim.Simulation, str]]:
    result = ok(server, "simulate", "--campaign", "demo", "--recipients", str(RECIPIENTS), "--seed", str(SEED))
    yield server, generated(), result.stdout


def _counts(counts: report_pb2.StatusCounts) -> dict[str, int]:
    return {name: getattr(counts, name) for name in sim._empty()}


def test_simulate_reconciles_with_the_servers_stats(
    simulated: tuple[ServerThread, sim.Simulation, str], client: Client
) -> None:
    server, s, summary = simulated
    e = s.expected
    assert f"{e.events_sent:,} events sent" in summary
    assert f"{e.accepted:,} accepted, {e.duplicates:,} duplicates, 0 refused" in summary
    stats = client.reports.GetCampaignStats(report_pb2.GetCampaignStatsRequest(campaign_id="demo"), timeout=10).stats
    assert _counts(stats.overall.counts) == e.counts
    assert {b.key: _counts(b.counts) for b in stats.by_channel} == e.by_channel
    assert {b.key: _counts(b.counts) for b in stats.by_variant} == e.by_variant
    assert (stats.overall.clicks, stats.overall.unique_clickers) == (e.clicks, e.unique_clickers)
    campaign = client.campaigns.GetCampaign(campaign_pb2.GetCampaignRequest(campaign_id="demo"), timeout=10).campaign
    assert campaign.recipient_count == RECIPIENTS and not campaign.implicit
    assert campaign.state == campaign_pb2.CAMPAIGN_STATE_RUNNING
    # The CLI's stats say the same.
    shown = json.loads(ok(server, "stats", "demo", "--json").stdout)
    assert int(shown["overall"]["counts"]["success"]) == e.counts["success"]
    table = ok(server, "stats", "demo").stdout
    assert "success rate" in table and "whatsapp" in table and f"{e.counts['total']:,}" in table


def test_simulating_the_same_seed_again_is_refused_with_a_hint(
    simulated: tuple[ServerThread, sim.Simulation, str],
) -> None:
    server, _, _ = simulated
    result = run(server, "simulate", "--campaign", "demo", "--recipients", "20", "--seed", str(SEED), "--quiet")
    line = one_error_line(result)
    assert result.exit_code == 1 and "CONFLICT EVENT_ID_REUSED" in line and "another --seed" in line


def test_simulate_with_a_rate(server: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    """--rate paces the batches: about ten a second, each sent when the rate
    allows. Checked on a virtual clock that only the pacing's sleeps move
    (the real run goes to the real server), so the count of events per
    virtual second is exact whatever the machine's load."""
    from flowtrack.client import drive

    virtual = [0.0]
    sent_at: list[tuple[float, int]] = []  # (virtual time, events) per batch
    real_batches = drive.batches

    def sleep(seconds: float) -> None:
        virtual[0] += seconds

    def paced(events: Any, batch_size: int, rate: float, *_: Any) -> Iterator[ingest_pb2.StreamEventsRequest]:
        for request in real_batches(events, batch_size, rate, lambda: virtual[0], sleep):
            sent_at.append((virtual[0], len(request.events)))
            yield request

    monkeypatch.setattr(drive, "batches", paced)
    result = ok(server, "simulate", "--campaign", "slow", "--recipients", "30", "--rate", "200", "--seed", "2")
    events = generated(seed=2, recipients=30, campaign="slow").expected.events_sent
    assert f"{events:,} events sent" in result.stdout
    assert sum(n for _, n in sent_at) == events
    assert {n for _, n in sent_at[:-1]} == {20}  # 200 events/s in batches of 20: ten a second
    # Each batch left when the events before it had had their time at 200/s.
    before = 0
    for at, n in sent_at:
        assert at == pytest.approx(before / 200)
        before += n
    assert sent_at[-1][0] >= (events - 20) / 200 > 0


def test_report_filters_and_json(simulated: tuple[ServerThread, sim.Simulation, str]) -> None:
    server, s, _ = simulated
    rows = json_lines(ok(server, "report", "demo", "--json", "--page-size", "37").stdout)
    assert len(rows) == RECIPIENTS and [r["recipient"] for r in rows] == sorted(r["recipient"] for r in rows)
    failed = json_lines(
        ok(server, "report", "demo", "--status", "failed", "--status", "NOT_SUBMITTED", "--json").stdout
    )
    assert len(failed) == s.expected.counts["failed"] + s.expected.counts["not_submitted"]
    assert {r["status"] for r in failed} == {"MESSAGE_STATUS_FAILED", "MESSAGE_STATUS_NOT_SUBMITTED"}
    sms = json_lines(ok(server, "report", "demo", "--channel", "sms", "--variant", "B", "--json").stdout)
    assert len(sms) == sum(1 for r in s.audience if r.channel == "sms" and r.variant == "B") and all(
        r["channel"] == "sms" and r["variant"] == "B" for r in sms
    )
    code = failed[0]["failureReason"]["code"]
    by_code = json_lines(ok(server, "report", "demo", "--failure-code", code, "--json").stdout)
    assert by_code and all(r["failureReason"]["code"] == code for r in by_code)
    one = json_lines(ok(server, "report", "demo", "--recipient", rows[5]["recipient"], "--json").stdout)
    assert [r["recipient"] for r in one] == [rows[5]["recipient"]]
    assert len(json_lines(ok(server, "report", "demo", "--limit", "7", "--json").stdout)) == 7
    table = ok(server, "report", "demo", "--limit", "600", "--page-size", "100")
    assert "recipient" in table.stdout and rows[-1]["recipient"] in table.stdout
    assert table.stdout.count("submitted (UTC)") == 1  # one header over every page
    assert f"{RECIPIENTS} rows at sequence" in table.stderr


def test_failures(simulated: tuple[ServerThread, sim.Simulation, str]) -> None:
    server, s, _ = simulated
    reasons = json_lines(ok(server, "failures", "demo", "--json", "--samples", "2").stdout)
    assert sum(int(r["count"]) for r in reasons) == s.expected.counts["failed"] + s.expected.counts["not_submitted"]
    assert all(len(r["sampleRecipients"]) <= 2 for r in reasons)
    table = ok(server, "failures", "demo").stdout
    assert reasons[0]["code"] in table and "% failed" in table


def test_clicks_rows_and_breakdown(simulated: tuple[ServerThread, sim.Simulation, str]) -> None:
    server, s, _ = simulated
    lines = json_lines(ok(server, "clicks", "demo", "--json").stdout)
    rows = [line["click"] for line in lines if "click" in line]
    [breakdown] = [line["breakdown"] for line in lines if "breakdown" in line]
    assert len(rows) == s.expected.clicks == int(breakdown["clicks"])
    assert sum(int(b["clicks"]) for b in breakdown["byCountry"]) == s.expected.clicks
    # The busiest country known (bot clicks, previews and scanners, come without a location).
    country = next(b["countryCode"] for b in breakdown["byCountry"] if b.get("countryCode"))
    assert int(breakdown["humanClicks"]) == s.expected.human_clicks
    assert int(breakdown["uniqueHumanClickers"]) == s.expected.unique_human_clickers
    assert int(breakdown["botClicks"]) == s.expected.clicks - s.expected.human_clicks > 0
    only = json_lines(ok(server, "clicks", "demo", "--country", country.lower(), "--json").stdout)
    assert {line["click"]["location"]["countryCode"] for line in only if "click" in line} == {country}
    table = ok(server, "clicks", "demo", "--limit", "3").stdout
    assert "clicks by country" in table and "clicks by link" in table and country in table
    assert "by country" in ok(server, "clicks", "demo", "--no-rows").stdout


def test_tail_catches_up_and_filters(simulated: tuple[ServerThread, sim.Simulation, str], client: Client) -> None:
    server, s, _ = simulated
    events = json_lines(ok(server, "tail", "--no-follow", "--json").stdout)
    assert len(events) == s.expected.accepted
    after = int(events[-10]["sequence"])
    tail = json_lines(ok(server, "tail", "--no-follow", "--after", str(after), "--json").stdout)
    assert [int(e["sequence"]) for e in tail] == [int(e["sequence"]) for e in events[-9:]]
    assert ok(server, "tail", "--no-follow", "--campaign", "demo", "--after", str(after)).stdout.count("demo") == 9
    other = campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id="quiet"))
    client.campaigns.CreateCampaign(other, timeout=10)
    assert ok(server, "tail", "--no-follow", "--campaign", "quiet").stdout.strip() == ""


def test_stats_watch_follows_the_campaign_until_it_is_deleted(server: ServerThread, client: Client) -> None:
    client.campaigns.CreateCampaign(
        campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id="live")), timeout=10
    )
    env = {**os.environ, "FLOWTRACK_ADDRESS": server.address}
    watch = subprocess.Popen(
        [sys.executable, "-m", "flowtrack", "stats", "live", "--watch", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert watch.stdout is not None
        first = json.loads(watch.stdout.readline())
        assert first["campaignId"] == "live" and "success" not in first["overall"].get("counts", {})
        event = ingest_pb2.StatusEvent(
            event_id="w1",
            campaign_id="live",
            recipient="+15550100",
            status=common_pb2.MESSAGE_STATUS_SUCCESS,
            occurred_at={"seconds": int(time.time()) - 5},
        )
        client.ingest.RecordStatusEvent(ingest_pb2.RecordStatusEventRequest(event=event), timeout=10)
        second = json.loads(watch.stdout.readline())
        assert second["overall"]["counts"]["success"] == "1"
        client.campaigns.DeleteCampaign(campaign_pb2.DeleteCampaignRequest(campaign_id="live"), timeout=10)
        _, err = watch.communicate(timeout=20)
    finally:
        watch.kill()
    assert watch.returncode == 0 and "was deleted" in err


def _json_commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[str]:
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from _json_commands(command, (*path, name))
        elif any(p.name == "as_json" for p in command.params):
            yield " ".join((*path, name))


def _keys(value: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """Every object key of a JSON value, with where it is (the keys of map fields are the user's)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield where, key
            if key not in ("labels", "inputVariables", "outputVariables"):
                yield from _keys(item, f"{where}.{key}")
    elif isinstance(value, list):
        for item in value:
            yield from _keys(item, where)


def _first_recipient(server: ServerThread) -> str:
    line = ok(server, "report", "demo", "--limit", "1", "--json").stdout.splitlines()[0]
    return str(json.loads(line)["recipient"])


def test_every_json_option_prints_lower_camel_case(simulated: tuple[ServerThread, sim.Simulation, str]) -> None:
    """One CLI voice: every command's --json prints the canonical proto3 JSON
    (json_format's defaults: lowerCamelCase names), as `stats` always did.
    Was: report, campaigns list, failures, clicks, tail printed the .proto's
    snake_case names, and `keys list` its own."""
    server, _, _ = simulated
    database = server.settings.database
    ok(server, "campaigns", "update", "demo", "--label", "team=growth", "--schedule", "2030-05-01T09:00:00Z")
    created = CliRunner().invoke(cli, ["keys", "create", "--business", "default", "--scope", "read", "--scope",
                                       "admin", "--scope", "ingest", "--database", database])  # fmt: skip
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    audience = Path(tempfile.mkdtemp()) / "audience.csv"
    audience.write_text('recipient,channel,variant,input_variables\n+15550001,sms,A,"{""name"":""Ann""}"\n')
    runs = {
        "campaigns create": ["campaigns", "create", "json_check", "--flow-id", "f1", "--json"],
        "campaigns add-recipients": ["campaigns", "add-recipients", "json_check", str(audience), "--json"],
        "campaigns list": ["campaigns", "list", "--json"],
        "campaigns show": ["campaigns", "show", "demo", "--json"],
        "campaigns update": ["campaigns", "update", "json_check", "--flow-id", "f2", "--json"],
        "clicks": ["clicks", "demo", "--limit", "5", "--json"],
        "failures": ["failures", "demo", "--json"],
        "keys list": ["keys", "list", "--database", database, "--json"],
        "replies": ["replies", "demo", "--limit", "5", "--json"],
        "report": ["report", "demo", "--limit", "20", "--json"],
        "reports schedule": [
            "reports",
            "schedule",
            "--campaign",
            "demo",
            "--on-complete",
            "--link-ttl",
            "2h",
            "--json",
        ],
        "reports list": ["reports", "list", "--json"],
        "settings show": ["settings", "show", "--json"],
        "retention set": ["retention", "set", "--history-days", "3650", "--json"],
        "retention show": ["retention", "show", "--json"],
        "retention apply": ["retention", "apply", "--json"],
        "stats": ["stats", "demo", "--json"],
        "tail": ["tail", "--no-follow", "--json"],
        "webhooks list": ["webhooks", "list", "--json"],
        "webhooks deliveries": ["webhooks", "deliveries", "--json"],
        # Last: a recipient of demo erased (the figures above stay as they are anyway).
        "recipients erase": ["recipients", "erase", _first_recipient(server), "--yes", "--json"],
        "recipients erasures": ["recipients", "erasures", "--json"],
    }
    assert set(_json_commands(cli)) == set(runs), "a command with --json is missing here"
    # An endpoint (a public address: no --webhook-allow-private here; nothing listens) and an
    # event for it, so that `webhooks deliveries` has a delivery to print.
    ok(server, "webhooks", "add", "https://93.184.216.34/flowtrack", "--event", "campaign.completed",
       "--api-key", key)  # fmt: skip
    ok(server, "campaigns", "update", "demo", "--state", "completed", "--api-key", key)
    deadline = time.monotonic() + 60
    while not ok(server, "webhooks", "deliveries", "--json", "--api-key", key).stdout.strip():
        assert time.monotonic() < deadline, "no delivery of campaign.completed"
        time.sleep(0.1)
    snake = []
    for name, args in runs.items():
        output = (
            ok(server, *args, "--api-key", key).stdout
            if args[0] != "keys"
            else CliRunner().invoke(cli, args, catch_exceptions=False).stdout
        )
        lines = json_lines(output)
        assert lines, f"{name}: printed no JSON"
        keys = [(where, k) for line in lines for where, k in _keys(line)]
        assert len(keys) > 1 or name == "reports list", (name, lines)
        snake += [f"{name}: {where}.{k}" for where, k in keys if not re.fullmatch(r"@?[a-z][A-Za-z0-9]*", k)]
    assert snake == []


# -- campaigns ----------------------------------------------------------------------


def test_campaigns_create_show_list_update_delete(server: ServerThread) -> None:
    created = ok(
        server,
        "campaigns",
        "create",
        "spring",
        "--name",
        "Spring offer",
        "--channel",
        "whatsapp",
        "--channel",
        "sms",
        "--label",
        "team=growth",
        "--schedule",
        "2030-05-01T09:00:00Z",
        "--json",
    )
    campaign = json.loads(created.stdout)
    assert campaign["id"] == "spring" and campaign["channels"] == ["whatsapp", "sms"]
    assert campaign["labels"] == {"team": "growth"} and campaign["scheduleTime"].startswith("2030-05-01T09:00:00")
    assert "Spring offer" in ok(server, "campaigns", "show", "spring").stdout
    generated_id = json.loads(ok(server, "campaigns", "create", "--json").stdout)["id"]
    listed = json_lines(ok(server, "campaigns", "list", "--json", "--page-size", "1").stdout)
    assert {c["id"] for c in listed} == {"spring", generated_id}
    assert "spring" in ok(server, "campaigns", "list").stdout
    filtered = json_lines(ok(server, "campaigns", "list", "--filter", "labels.team=growth", "--json").stdout)
    assert [c["id"] for c in filtered] == ["spring"]
    updated = json.loads(ok(server, "campaigns", "update", "spring", "--state", "running", "--json").stdout)
    assert updated["state"] == "CAMPAIGN_STATE_RUNNING" and updated["name"] == "Spring offer"
    relabeled = json.loads(ok(server, "campaigns", "update", "spring", "--clear-labels", "--json").stdout)
    assert "labels" not in relabeled
    assert "deleted campaign spring" in ok(server, "campaigns", "delete", "spring", "--yes").stdout
    gone = run(server, "campaigns", "show", "spring")
    assert gone.exit_code == 1 and one_error_line(gone).startswith("flowtrack: NOT_FOUND: ")
    # Without --yes it asks; "n" keeps the campaign.
    kept = run(server, "campaigns", "delete", generated_id, input="n\n")
    assert kept.exit_code != 0 and "Aborted" in kept.output
    assert ok(server, "campaigns", "show", generated_id)


def test_invalid_argument_shows_the_field_violations(server: ServerThread) -> None:
    result = run(server, "campaigns", "create", "not a valid id!", "--label", "k=v")
    line = one_error_line(result)
    assert result.exit_code == 1 and line.startswith("flowtrack: INVALID_ARGUMENT: ")
    assert "campaign.id" in line  # the violation's field, with its description
    bad_filter = run(server, "campaigns", "list", "--filter", "colour=blue")
    assert "INVALID_ARGUMENT" in one_error_line(bad_filter) and "filter" in one_error_line(bad_filter)


def test_update_with_nothing_to_change_is_a_usage_error(server: ServerThread) -> None:
    result = run(server, "campaigns", "update", "x")
    assert result.exit_code == 2 and "nothing to change" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ("stats", "nope"),
        ("stats", "nope", "--watch"),
        ("report", "nope"),
        ("failures", "nope"),
        ("clicks", "nope"),
        ("tail", "--campaign", "nope"),
        ("campaigns", "delete", "nope", "--yes"),
        ("campaigns", "update", "nope", "--name", "x"),
    ],
)
def test_unknown_campaign_is_one_not_found_line(server: ServerThread, args: tuple[str, ...]) -> None:
    result = run(server, *args)
    assert result.exit_code == 1
    assert one_error_line(result).startswith("flowtrack: NOT_FOUND: ")


def test_unreachable_server_is_one_line_and_exit_3() -> None:
    address = f"127.0.0.1:{free_port()}"
    for args in (["stats", "demo"], ["report", "demo"], ["simulate", "--recipients", "5"], ["campaigns", "list"]):
        done = subprocess.run(
            [sys.executable, "-m", "flowtrack", *args, "--address", address],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 3, done.stderr
        assert done.stdout == ""
        [line] = done.stderr.strip().splitlines()
        assert line.startswith(f"flowtrack: cannot reach the server at {address}: ")


def test_environment_variables_configure_the_connection(server: ServerThread) -> None:
    result = CliRunner().invoke(cli, ["campaigns", "list"], env={"FLOWTRACK_ADDRESS": server.address})
    assert result.exit_code == 0
    missing = CliRunner().invoke(
        cli, ["campaigns", "list", "--tls-cert", "/nonexistent.pem"], env={"FLOWTRACK_ADDRESS": server.address}
    )
    assert missing.exit_code == 2 and "tls_key" in one_error_line(missing)


# -- help and documentation ---------------------------------------------------------


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, command in sorted(group.commands.items()):
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


def test_every_command_has_help_with_an_example_and_is_documented() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    docs = "\n".join(p.read_text(encoding="utf-8") for p in pages if p.exists())
    commands = list(_commands(cli))
    assert {" ".join(path) for path, _ in commands} >= {
        "campaigns list",
        "campaigns create",
        "campaigns show",
        "campaigns update",
        "campaigns delete",
        "stats",
        "report",
        "failures",
        "clicks",
        "tail",
        "simulate",
        "serve",
    }
    problems = []
    for path, _command in [((), cli), *commands]:
        result = CliRunner().invoke(cli, [*path, "--help"])
        name = " ".join(("flowtrack", *path))
        if result.exit_code != 0 or "Example" not in result.output:
            problems.append(f"{name}: no help with an example")
        if path and not re.search(rf"flowtrack {re.escape(' '.join(path))}\b", docs):
            problems.append(f"{name}: not documented in README.md or docs/")
    assert problems == []


def test_api_key_is_sent_and_a_wrong_one_is_one_line(server: ServerThread) -> None:
    created = CliRunner().invoke(
        cli, ["keys", "create", "--business", "acme", "--scope", "read", "--database", server.settings.database]
    )
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    assert ok(server, "campaigns", "list", "--api-key", key)
    refused = run(server, "campaigns", "list", "--api-key", "ft_wrong")
    assert refused.exit_code == 1 and one_error_line(refused).startswith("flowtrack: UNAUTHENTICATED: ")


# -- what a new user trips on --------------------------------------------------------


def _one_event(client: Client, campaign: str = "newbie") -> None:
    event = ingest_pb2.StatusEvent(
        event_id="n1",
        campaign_id=campaign,
        recipient="+15550001",
        status=common_pb2.MESSAGE_STATUS_SUCCESS,
        channel="sms",
    )
    event.occurred_at.FromSeconds(int(time.time()) - 60)
    client.ingest.RecordStatusEvent(ingest_pb2.RecordStatusEventRequest(event=event), timeout=30)


def test_export_to_a_folder_that_does_not_exist_is_one_line(
    server: ServerThread, client: Client, tmp_path: Path
) -> None:
    _one_event(client)
    target = tmp_path / "missing" / "newbie.csv"
    result = run(server, "export", "newbie", "-o", str(target))
    assert result.exit_code == 2
    assert one_error_line(result) == f"flowtrack: cannot write {target}: folder {target.parent} does not exist"
    assert not target.parent.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".flowtrack-export-")] == []


def test_export_format_follows_the_file_extension(server: ServerThread, client: Client, tmp_path: Path) -> None:
    _one_event(client)
    ok(server, "export", "newbie", "-o", str(tmp_path / "a.xlsx"))
    assert (tmp_path / "a.xlsx").read_bytes()[:2] == b"PK"  # a zip: XLSX
    ok(server, "export", "newbie", "-o", str(tmp_path / "a.CSV"))
    assert (tmp_path / "a.CSV").read_text().startswith("customer_external_id,")
    ok(server, "export", "newbie", "-o", str(tmp_path / "b.xlsx"), "--format", "csv")  # --format wins
    assert (tmp_path / "b.xlsx").read_text().startswith("customer_external_id,")
    ok(server, "export", "newbie", "-o", str(tmp_path / "c.data"))  # no known extension: CSV
    assert (tmp_path / "c.data").read_text().startswith("customer_external_id,")


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_exported_files_honour_the_umask(server: ServerThread, client: Client, tmp_path: Path, umask: int) -> None:
    _one_event(client)
    previous = os.umask(umask)
    try:
        ok(server, "export", "newbie", "-o", str(tmp_path / "out.csv"))
    finally:
        os.umask(previous)
    assert (tmp_path / "out.csv").stat().st_mode & 0o777 == 0o666 & ~umask


def test_an_address_without_a_port_means_50051() -> None:
    from flowtrack.client.connection import with_default_port

    assert with_default_port("flowtrack.example.com") == "flowtrack.example.com:50051"
    assert with_default_port("10.0.0.7") == "10.0.0.7:50051"
    assert with_default_port("10.0.0.7:9000") == "10.0.0.7:9000"
    assert with_default_port("::1") == "[::1]:50051"
    assert with_default_port("[::1]") == "[::1]:50051"
    assert with_default_port("[::1]:9000") == "[::1]:9000"
    assert with_default_port("unix:/run/flowtrack.sock") == "unix:/run/flowtrack.sock"
    assert with_default_port("dns:///flowtrack.example.com:443") == "dns:///flowtrack.example.com:443"
    # What the command really dials: the error names the address it tried.
    done = subprocess.run(
        [sys.executable, "-m", "flowtrack", "campaigns", "list", "--address", "127.0.0.1", "--timeout", "5"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "FLOWTRACK_ADDRESS": ""},
    )
    if done.returncode == 0:  # something really serves on 127.0.0.1:50051 here: it answered there
        return
    [line] = done.stderr.strip().splitlines()
    assert "127.0.0.1:50051" in line and ":443" not in line, line


def test_unauthenticated_tells_a_cli_user_about_api_key(tmp_path: Path) -> None:
    server = start_server(tmp_path, key_cache_seconds=0)
    try:
        created = CliRunner().invoke(
            cli, ["keys", "create", "--business", "acme", "--scope", "read", "--database", server.settings.database]
        )
        assert created.exit_code == 0, created.output
        missing = run(server, "campaigns", "list")
        line = one_error_line(missing)
        assert line.startswith("flowtrack: UNAUTHENTICATED: ") and missing.exit_code == 1
        assert "--api-key" in line and "FLOWTRACK_API_KEY" in line and "authorization" not in line, line
        wrong = one_error_line(run(server, "campaigns", "list", "--api-key", "ftk_000000000000_" + "x" * 43))
        assert "the key given with --api-key or FLOWTRACK_API_KEY" in wrong, wrong
    finally:
        server.stop()


def test_serve_help_names_every_environment_variable() -> None:
    from flowtrack.cli import serve

    result = CliRunner().invoke(cli, ["serve", "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    names = [p.envvar for p in serve.params if isinstance(p, click.Option)]
    assert len(names) >= 15 and all(isinstance(n, str) and n.startswith("FLOWTRACK_") for n in names), names
    assert [n for n in names if f"env var: {n}" not in text] == []


def test_connection_options_go_before_or_after_the_command(server: ServerThread, client: Client) -> None:
    """`flowtrack --address X stats C` and `flowtrack stats C --address X`
    both reach X; given in both places, the one after the command wins; a
    variable (FLOWTRACK_ADDRESS) gives way to either. Was: before the
    command, `No such option: --address`."""
    _one_event(client, "placed")
    nowhere = f"127.0.0.1:{free_port()}"
    runner = CliRunner()
    env = {"FLOWTRACK_ADDRESS": nowhere, "COLUMNS": "200"}
    for args in (
        ["--address", server.address, "stats", "placed", "--json"],
        ["stats", "placed", "--json", "--address", server.address],
        ["--address", nowhere, "stats", "placed", "--json", "--address", server.address],
        ["--address", server.address, "--timeout", "20", "campaigns", "list", "--json"],
        ["--address", server.address, "report", "placed", "--json"],
    ):
        result = runner.invoke(cli, args, env=env, catch_exceptions=False)
        assert result.exit_code == 0, (args, result.output)
        assert "placed" in result.stdout or "+15550001" in result.stdout, (args, result.stdout)
    # The one after the command wins: here it is the unreachable one.
    missed = runner.invoke(
        cli, ["--address", server.address, "stats", "placed", "--address", nowhere, "--timeout", "5"]
    )
    assert missed.exit_code == 3 and nowhere in one_error_line(missed)
    # An API key before the command is sent too.
    refused = runner.invoke(
        cli, ["--api-key", "ft_wrong", "campaigns", "list"], env={"FLOWTRACK_ADDRESS": server.address}
    )
    assert "--api-key" in one_error_line(refused) or "UNAUTHENTICATED" in one_error_line(refused)


@pytest.mark.sqlite_only("--help only: no database")
def test_the_top_help_says_what_serve_does_and_where_connection_options_go() -> None:
    text = " ".join(CliRunner().invoke(cli, ["--help"], env={"COLUMNS": "100"}).output.split())
    for said in ("PostgreSQL", "http://127.0.0.1:8080/", "campaign page", "reports delivered", "before or after"):
        assert said in text, said
    serve_help = " ".join(CliRunner().invoke(cli, ["serve", "--help"], env={"COLUMNS": "100"}).output.split())
    assert "127.0.0.1:8080" in serve_help and "--http off" in serve_help and "PostgreSQL" in serve_help


@pytest.mark.sqlite_only("renders tables: no server")
@pytest.mark.parametrize("width", [160, 200])
def test_the_report_table_fits_160_columns_without_cutting_times(width: int) -> None:
    """rich, on a console 160 wide: every time whole, no line wider than the
    console, the long text columns wrapped (not lost). Was: 195 columns of
    fixed widths squeezed by rich, which cut the times ('2026-05-01 09:0…')."""
    import io

    from rich.console import Console

    from flowtrack.client import render

    row = report_pb2.MessageRow(
        recipient="+551199999000123",
        status=common_pb2.MESSAGE_STATUS_DELIVERY_NOT_CONFIRMED,
        attempt=2,
        channel="whatsapp",
        variant="B",
        failure_reason=common_pb2.FailureReason(code="TEMPLATE_REJECTED_BY_PROVIDER"),
        clicks=12,
        replies=3,
        button_clicks=2,
    )
    times = {
        "submitted_time": "2026-05-01 09:00:01",
        "delivery_not_confirmed_time": "2026-05-01 10:11:12",
        "read_time": "2026-05-01 11:22:33",
        "opted_out_time": "2026-05-02 00:00:00",
    }
    for field, text in times.items():
        getattr(row, field).FromJsonString(text.replace(" ", "T") + "Z")
    out = Console(width=width, file=io.StringIO(), color_system=None, legacy_windows=False)
    table = render.PagedTable(out, render.REPORT_COLUMNS, render.report_cells)
    table.page([row, row])
    text = out.file.getvalue()  # type: ignore[attr-defined]
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width, text
    for shown in (times["submitted_time"], times["delivery_not_confirmed_time"], times["read_time"]):
        assert text.count(shown) == 2, (shown, text)
    for header in ("submitted (UTC)", "outcome (UTC)", "read (UTC)"):
        assert header in text, text
    if width < 195:  # the narrowed columns wrap (a cell longer than a full-width column is abbreviated)
        assert "…" not in text, text
    assert "+551199999000123" in text and "delivery_n" in text


# -- simulate --resume --------------------------------------------------------------


def _stats_without_times(address: str, campaign: str) -> dict[str, Any]:
    from google.protobuf import json_format

    from tests.conftest import make_client

    client = make_client(address)
    try:
        request = report_pb2.GetCampaignStatsRequest(campaign_id=campaign)
        stats = json_format.MessageToDict(client.reports.GetCampaignStats(request, timeout=30).stats)
    finally:
        client.channel.close()
    for moment in ("sequence", "firstEventTime", "lastEventTime"):
        stats.pop(moment, None)
    return stats


@pytest.mark.slow
@pytest.mark.sqlite_only("kills a server process on a SQLite file")
def test_simulate_resumes_after_the_server_died(tmp_path: Path) -> None:
    """Kill the server mid-simulate: simulate ends with one line saying how
    far it got and how to go on; restart the server, `simulate --resume`
    sends what was not acknowledged, and the stats equal those of a run that
    was never interrupted."""
    from flowtrack.client.drive import Progress
    from tests.serving import Serve

    database, state = tmp_path / "killed.db", tmp_path / "sim-state.json"
    recipients, seed = "2000", "5"
    first = Serve(database)
    simulate = [sys.executable, "-m", "flowtrack", "simulate", "--campaign", "resumed", "--recipients", recipients,
                "--seed", seed, "--state-file", str(state), "--quiet"]  # fmt: skip
    running = subprocess.Popen(
        [*simulate, "--rate", "2000", "--batch-size", "100", "--address", first.address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (state.exists() and Progress.load(state).acked >= 3000):
            assert running.poll() is None, running.communicate()
            assert time.monotonic() < deadline, "simulate did not get going"
            time.sleep(0.05)
        first.kill()
        out, err = running.communicate(timeout=120)
    finally:
        if running.poll() is None:
            running.kill()
    cut = Progress.load(state)
    assert running.returncode == 3, out + err
    [line] = err.strip().splitlines()
    assert f"{cut.acked:,} of {cut.events:,} events acknowledged" in line and "--resume" in line, line
    assert 3000 <= cut.acked < cut.events

    second = Serve(database)
    try:
        resumed = subprocess.run(
            [*simulate[:4], "--campaign", "resumed", "--resume", "--state-file", str(state), "--quiet",
             "--address", second.address],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        sent = int(re.search(r"([\d,]+) events sent", resumed.stdout).group(1).replace(",", ""))  # type: ignore[union-attr]
        assert sent == cut.events - cut.acked and f"resumed after {cut.acked:,} acknowledged" in resumed.stdout
        assert "0 refused" in resumed.stdout and not state.exists()
        after_resume = _stats_without_times(second.address, "resumed")
    finally:
        assert second.stop() == 0

    (tmp_path / "whole").mkdir()
    whole = start_server(tmp_path / "whole")
    try:
        ok(whole, "simulate", "--campaign", "resumed", "--recipients", recipients, "--seed", seed, "--quiet",
           "--state-file", str(tmp_path / "whole.json"))  # fmt: skip
        never_interrupted = _stats_without_times(whole.address, "resumed")
    finally:
        whole.stop()
    assert after_resume == never_interrupted
    expected = sim.generate(sim.SimConfig("resumed", int(recipients), int(seed), time.time())).expected
    assert int(after_resume["overall"]["counts"]["total"]) == expected.counts["total"]


@pytest.mark.sqlite_only("no server")
def test_simulate_resume_without_a_state_file_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["simulate", "--resume", "--state-file", str(tmp_path / "none.json")])
    assert result.exit_code == 2 and "nothing to resume" in one_error_line(result)


@pytest.mark.sqlite_only("no database: what starting a command imports")
def test_serve_and_the_local_commands_import_no_client_module() -> None:
    """`serve`, `keys`, `backup` and `db` start without the client commands'
    modules (rich, the renderers, the simulator), and a server starts
    without httpx (imported with its first webhook) and xlsxwriter (with its
    first XLSX export): 15% of `serve`'s imports (docs/performance.md). The
    client commands still load when one runs, and every command is listed."""
    from flowtrack.cli import CLIENT_MODULES

    lazy = ("rich", "httpx", "xlsxwriter", "flowtrack.client.render", "flowtrack.client.simulate", *CLIENT_MODULES)
    probe = (
        "import sys, flowtrack.cli, flowtrack.server\n"
        f"print(sorted(m for m in {sorted(set(lazy))!r} if m in sys.modules))\n"
        "names = sorted(flowtrack.cli.cli.commands)\n"
        "print('flowtrack.client.commands' in sys.modules, len(names))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    before, after = done.stdout.splitlines()
    assert before == "[]", f"imported at start: {before}"
    assert after == f"True {len(cli.commands)}"
    assert {"serve", "keys", "campaigns", "simulate", "webhooks"} <= set(cli.commands)
