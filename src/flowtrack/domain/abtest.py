"""A/B test maths: which variant leads on which rate, with what confidence.

No grpc, no SQL. From a campaign's per-variant stats (domain/stats.py) this
module compares every pair of variants, and each variant against the rest
(the other variants pooled, when there are three or more), on five rates:

| rate | successes | trials |
|---|---|---|
| delivery | success | submitted |
| read | read | submitted |
| reply | replied | submitted |
| link_click | unique human clickers (bot clicks left out: domain/bots.py) | submitted |
| goal | goal achieved | entered |

For arms 1 and 2 with x1 of n1 and x2 of n2 (p1 = x1/n1, p2 = x2/n2), the
two-proportion z-test (OpenIntro Statistics, 4th ed., section 6.2; Penn
State STAT 415, lesson 9.4):

- difference d = p1 - p2;
- p-value: the pooled proportion p = (x1 + x2) / (n1 + n2), its standard
  error SE0 = sqrt(p (1 - p) (1/n1 + 1/n2)), z = d / SE0, and the two-sided
  p-value P(|Z| >= |z|) = erfc(|z| / sqrt(2)) for a standard normal Z;
- 95% confidence interval of d: d +- 1.959964 * SE, with the unpooled (Wald)
  standard error SE = sqrt(p1 (1 - p1) / n1 + p2 (1 - p2) / n2).

Minimum sample before any verdict (else "not enough data"): each arm has at
least MIN_TRIALS (30) trials, and the success-failure condition holds with
the pooled proportion: each arm's expected successes n_i p and expected
failures n_i (1 - p) are at least MIN_EXPECTED (10), OpenIntro's condition
for the normal approximation. Then a p-value below ALPHA (0.05) names the
arm with the higher rate as the leader ("B leads"); otherwise "no difference
yet".

Multiple comparisons are not adjusted: each verdict is one test at the 5%
level. With many variants and five rates, some "leads" are expected by
chance alone (one in twenty comparisons with no real difference); read a
lead on one rate among many as a hint to confirm, not a proof.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

from flowtrack.domain.stats import Bucket, Counts, Engaged

ALPHA = 0.05
CONFIDENCE = 1 - ALPHA
Z_95 = 1.959963984540054  # the 0.975 quantile of the standard normal
MIN_TRIALS = 30
MIN_EXPECTED = 10
# Pairs are compared up to this many variants (45 pairs); beyond, only each
# variant against the rest, which bounds a stats snapshot.
MAX_PAIRED_VARIANTS = 10

# The compared rates, in the order they are reported.
RATES = ("delivery", "read", "reply", "link_click", "goal")
RATE_LABELS = {
    "delivery": "delivery",
    "read": "read",
    "reply": "reply",
    "link_click": "link click (humans)",
    "goal": "goal",
}
METHOD = (
    "two-proportion z-test (pooled standard error) for the two-sided p-value, "
    "Wald (unpooled) 95% interval for the difference; no adjustment for multiple comparisons"
)


class Verdict(enum.IntEnum):
    """What a comparison says (numbers as report.proto's AbVerdict)."""

    NOT_ENOUGH_DATA = 1
    NO_DIFFERENCE_YET = 2
    VARIANT_LEADS = 3
    OTHER_LEADS = 4


@dataclass(frozen=True, slots=True)
class Test:
    """A two-proportion test of arm 1 (x1 of n1) against arm 2 (x2 of n2).
    Figures that cannot be computed (an arm with no trials, a pooled rate of
    0 or 1) are None."""

    difference: float | None
    ci_low: float | None
    ci_high: float | None
    z: float | None
    p_value: float | None
    enough: bool


def two_proportion(x1: int, n1: int, x2: int, n2: int) -> Test:
    """The test of the module docstring: p1 - p2, its 95% Wald interval, the
    pooled z and its two-sided p-value, and whether the sample is enough
    for a verdict."""
    if n1 <= 0 or n2 <= 0:
        return Test(None, None, None, None, None, False)
    p1, p2 = x1 / n1, x2 / n2
    d = p1 - p2
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    pooled = (x1 + x2) / (n1 + n2)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    z = d / se0 if se0 > 0 else None
    p_value = math.erfc(abs(z) / math.sqrt(2)) if z is not None else None
    enough = (
        min(n1, n2) >= MIN_TRIALS
        and min(n1, n2) * pooled >= MIN_EXPECTED
        and min(n1, n2) * (1 - pooled) >= MIN_EXPECTED
    )
    return Test(d, d - Z_95 * se, d + Z_95 * se, z, p_value, enough)


def verdict(test: Test) -> Verdict:
    if not test.enough or test.p_value is None or test.difference is None:
        return Verdict.NOT_ENOUGH_DATA
    if test.p_value >= ALPHA:
        return Verdict.NO_DIFFERENCE_YET
    return Verdict.VARIANT_LEADS if test.difference > 0 else Verdict.OTHER_LEADS


def trials(bucket: Bucket, rate: str) -> tuple[int, int]:
    """(successes, trials) of one rate in a bucket (the table above)."""
    c, e = bucket.counts, bucket.engaged
    if rate == "delivery":
        return c.success, c.submitted
    if rate == "read":
        return e.read, c.submitted
    if rate == "reply":
        return e.replied, c.submitted
    if rate == "link_click":  # people's clicks: bots left out (domain/bots.py)
        return bucket.unique_human_clickers, c.submitted
    if rate == "goal":
        return e.goal_achieved, e.entered
    raise ValueError(f"unknown rate {rate!r}")


@dataclass(frozen=True, slots=True)
class RateComparison:
    rate: str
    successes: int
    trials: int
    other_successes: int
    other_trials: int
    test: Test
    verdict: Verdict
    summary: str  # "B leads", "the rest lead", "no difference yet", "not enough data"


@dataclass(frozen=True, slots=True)
class Comparison:
    """One variant against another (`other`) or against the rest (`other` empty)."""

    variant: str
    other: str
    against_rest: bool
    rates: tuple[RateComparison, ...]


def summary(v: Verdict, variant: str, other: str, against_rest: bool) -> str:
    if v is Verdict.VARIANT_LEADS:
        return f"{variant} leads"
    if v is Verdict.OTHER_LEADS:
        return "the rest lead" if against_rest else f"{other} leads"
    if v is Verdict.NO_DIFFERENCE_YET:
        return "no difference yet"
    return "not enough data"


def compare(a: Bucket, b: Bucket, *, against_rest: bool = False) -> Comparison:
    """Variant `a` against `b` (another variant, or the rest pooled) on every rate."""
    out = []
    for rate in RATES:
        x1, n1 = trials(a, rate)
        x2, n2 = trials(b, rate)
        test = two_proportion(x1, n1, x2, n2)
        v = verdict(test)
        out.append(RateComparison(rate, x1, n1, x2, n2, test, v, summary(v, a.key, b.key, against_rest)))
    return Comparison(a.key, "" if against_rest else b.key, against_rest, tuple(out))


def pooled(key: str, buckets: Sequence[Bucket]) -> Bucket:
    """The buckets summed into one, named `key`."""
    counts, engaged = Counts(), Engaged()
    unique = clicks = human = unique_human = 0
    for b in buckets:
        counts, engaged = counts + b.counts, engaged + b.engaged
        unique, clicks = unique + b.unique_clickers, clicks + b.clicks
        human, unique_human = human + b.human_clicks, unique_human + b.unique_human_clickers
    return Bucket(key, counts, clicks, unique, engaged, human, unique_human)


def comparisons(by_variant: Sequence[Bucket]) -> tuple[Comparison, ...]:
    """Every pair of variants (in key order, up to MAX_PAIRED_VARIANTS
    variants), then each variant against the rest (with three variants or
    more: with two, it is the pair). Recipients with no variant (key "") are
    not an arm of the test and are left out."""
    arms = sorted((b for b in by_variant if b.key), key=lambda b: b.key)
    if len(arms) < 2:
        return ()
    out: list[Comparison] = []
    if len(arms) <= MAX_PAIRED_VARIANTS:
        for i, a in enumerate(arms):
            out.extend(compare(a, b) for b in arms[i + 1 :])
    if len(arms) >= 3:
        for a in arms:
            out.append(compare(a, pooled("", [b for b in arms if b is not a]), against_rest=True))
    return tuple(out)
