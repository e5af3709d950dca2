"""Each face maps domain errors in one place (api/errors.py for gRPC,
web/problems.py for HTTP); both say the same code and reason, and HTTP
answers a domain error with a 4xx (503 for UNAVAILABLE), never a 500."""

from __future__ import annotations

import pytest
from google.rpc import error_details_pb2, status_pb2

from flowtrack.api.errors import to_status
from flowtrack.domain import errors
from flowtrack.web import problems

CASES: list[errors.FlowtrackError] = [
    errors.invalid("filter.recipient", "too long", "TOO_LONG"),
    errors.NotFound("campaign 'x' not found", reason="CAMPAIGN_NOT_FOUND"),
    errors.AlreadyExists("exists"),
    errors.FailedPrecondition("not completed", reason="REPORT_RUN_NOT_COMPLETED"),
    errors.ResourceExhausted("slow down", reason="READ_TIME_LIMIT"),
    errors.QuotaExceeded("too many", subject="api_key:k1", description="4 streams", reason="TOO_MANY_STREAMS"),
    errors.Unavailable("storage", reason="STORAGE_UNAVAILABLE"),
    errors.Unauthenticated("no key", reason="NO_CREDENTIALS"),
    errors.PermissionDenied("scope", reason="MISSING_SCOPE"),
    errors.FlowtrackError("some other"),
]


@pytest.mark.parametrize("error", CASES, ids=lambda e: type(e).__name__)
def test_http_and_grpc_map_a_domain_error_alike(error: errors.FlowtrackError) -> None:
    status = to_status(error)
    rich = status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"])
    problem = problems.of_domain(error, "/api/x")
    assert problem["code"] == status.code.name
    assert problem["detail"] == status.details
    info = error_details_pb2.ErrorInfo()
    assert rich.details[0].Unpack(info) and problem["reason"] == info.reason
    bad = error_details_pb2.BadRequest()
    violations = [
        {"field": v.field, "description": v.description, "reason": v.reason}
        for packed in rich.details
        if packed.Is(bad.DESCRIPTOR) and packed.Unpack(bad)
        for v in bad.field_violations
    ]
    assert problem["violations"] == violations
    quota = error_details_pb2.QuotaFailure()
    quotas = [
        {"subject": v.subject, "description": v.description}
        for packed in rich.details
        if packed.Is(quota.DESCRIPTOR) and packed.Unpack(quota)
        for v in quota.violations
    ]
    assert problem.get("quota", []) == quotas
    assert 400 <= problem["status"] < 500 or (problem["code"] == "UNAVAILABLE" and problem["status"] == 503)
