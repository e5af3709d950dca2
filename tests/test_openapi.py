"""/openapi.json describes every JSON route, and schemathesis, generating
requests from it (valid and invalid ones), never gets a 5xx from a real
server on a real socket.

Bounded: FUZZ_EXAMPLES requests per route and mode (positive: what the
document allows; negative: what it does not), no shrinking, no example
database; a few hundred requests in all.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from starlette.routing import Route

from flowtrack.web import openapi
from tests.test_http import CAMPAIGN, DEADLINE, Keyed, implicit_campaign

FUZZ_EXAMPLES = 12


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyed]:
    k = Keyed(tmp_path_factory.mktemp("openapi"))
    implicit_campaign(k.client, "a/b")
    yield k
    k.client.channel.close()
    k.server.stop()


def api_paths_of_the_app(keyed: Keyed) -> set[str]:
    """The /api paths the running server's app routes, as OpenAPI templates."""
    listener = keyed.server.running.http
    assert listener is not None
    app: Any = listener.server.config.app
    while not hasattr(app, "routes"):  # through the middleware (Guard) to the Starlette app
        app = app.app
    paths = {route.path for route in app.routes if isinstance(route, Route)}
    return {re.sub(r"\{(\w+):\w+\}", r"{\1}", p) for p in paths if p == "/api" or p.startswith("/api/")}


def test_every_api_route_is_in_the_document(keyed: Keyed) -> None:
    with httpx.Client(base_url=keyed.url, timeout=DEADLINE) as h:
        r = h.get("/openapi.json")  # no credentials needed: no data in it
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    document = r.json()
    assert document["openapi"].startswith("3.")
    served = api_paths_of_the_app(keyed)
    assert len(served) >= 10
    assert served == set(document["paths"])
    for path, item in document["paths"].items():
        operation = item["get"]
        assert "{campaign_id}" not in path or operation["parameters"][0]["name"] == "campaign_id"
        for parameter in operation["parameters"]:
            assert parameter["schema"]["type"] in ("string", "integer", "array"), (path, parameter)
            if parameter["name"].endswith("_size"):
                assert parameter["schema"]["minimum"] == 0 and parameter["schema"]["maximum"] == 2**31 - 1
        for status in ("400", "401", "404", "default"):
            schema = operation["responses"][status]["content"]["application/problem+json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/Problem"}
    assert set(openapi.PROBLEM_SCHEMA["required"]) == {
        "type",
        "title",
        "status",
        "detail",
        "code",
        "reason",
        "violations",
    }


def test_a_problem_matches_the_documented_shape(keyed: Keyed) -> None:
    import jsonschema_rs

    with httpx.Client(base_url=keyed.url, timeout=DEADLINE, headers={"authorization": f"Bearer {keyed.read}"}) as h:
        for path, params in (
            ("/api/campaigns", {"page_size": str(2**31)}),
            ("/api/campaigns/nope", {}),
            (f"/api/campaigns/{CAMPAIGN}/timeline", {"width": "week"}),
        ):
            r = h.get(path, params=params)
            assert r.status_code in (400, 404)
            jsonschema_rs.validate(openapi.PROBLEM_SCHEMA, r.json())


def fuzz(
    url: str, headers: dict[str, str], operation: Any, mode: GenerationMode, path: Any, seen: dict[str, int]
) -> None:
    """FUZZ_EXAMPLES generated requests to `operation`; fails on a 5xx."""

    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path))
    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        response = case.call(base_url=url, headers=headers, timeout=DEADLINE)
        case.validate_response(response, checks=[not_a_server_error])
        key = f"{operation.path} {response.status_code}"
        seen[key] = seen.get(key, 0) + 1

    run()


# The routes, in SHARDS parts run as tests of their own: pytest-xdist spreads
# them over its workers (each part's requests are the same in any process:
# derandomized).
SHARDS = 3


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("shard", range(SHARDS))
def test_no_route_answers_5xx_to_generated_requests(keyed: Keyed, shard: int) -> None:
    schema = schemathesis.openapi.from_url(keyed.url + "/openapi.json", timeout=DEADLINE)
    auth = {"authorization": f"Bearer {keyed.read}"}
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the document is a valid OpenAPI schema
        operations.append(result.ok())
    assert len(operations) == len(openapi.ROUTES)
    operations = sorted(operations, key=lambda operation: str(operation.path))[shard::SHARDS]
    seen: dict[str, int] = {}
    for operation in operations:
        for mode in GenerationMode:
            # Generated ids: nearly all unknown.
            fuzz(keyed.url, auth, operation, mode, None, seen)
            # The campaigns that exist, so that the parameters are read against
            # real data (a stream on a real campaign, /live, never ends).
            if "{campaign_id}" in operation.path and not operation.path.endswith("/live"):
                for campaign_id in (CAMPAIGN, "a/b"):
                    fuzz(keyed.url, auth, operation, mode, {"campaign_id": campaign_id}, seen)
    # Both kinds of answers were met on the campaign's routes: served (2xx) and refused (4xx).
    for operation in operations:
        statuses = {key.rsplit(" ", 1)[1][0] for key in seen if key.startswith(operation.path + " ")}
        expected = {"4"} if operation.path.endswith("/live") else {"2", "4"}
        assert statuses == expected, (operation.path, seen)
