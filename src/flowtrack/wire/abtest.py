"""The A/B test (domain/abtest.py) as report.proto's AbTest."""

from __future__ import annotations

from collections.abc import Sequence

from flowtrack.domain import abtest
from flowtrack.domain.stats import Bucket
from flowtrack.v1 import report_pb2


def rate_to_proto(r: abtest.RateComparison) -> report_pb2.RateComparison:
    out = report_pb2.RateComparison(
        rate=r.rate,
        successes=r.successes,
        trials=r.trials,
        other_successes=r.other_successes,
        other_trials=r.other_trials,
        verdict=int(r.verdict),  # type: ignore[arg-type]
        summary=r.summary,
    )
    t = r.test
    for name in ("difference", "ci_low", "ci_high", "z", "p_value"):
        value = getattr(t, name)
        if value is not None:
            setattr(out, name, value)
    return out


def ab_test_to_proto(by_variant: Sequence[Bucket]) -> report_pb2.AbTest | None:
    """The variants' comparisons, or None with fewer than two variants."""
    found = abtest.comparisons(by_variant)
    if not found:
        return None
    return report_pb2.AbTest(
        comparisons=[
            report_pb2.VariantComparison(
                variant=c.variant,
                other=c.other,
                against_rest=c.against_rest,
                rates=[rate_to_proto(r) for r in c.rates],
            )
            for c in found
        ],
        confidence=abtest.CONFIDENCE,
        min_trials=abtest.MIN_TRIALS,
        min_expected=abtest.MIN_EXPECTED,
        method=abtest.METHOD,
    )
