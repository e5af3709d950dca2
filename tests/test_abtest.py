"""The A/B test maths (domain/abtest.py) against published worked examples,
and the comparisons and verdicts built from per-variant stats.

Pure: no server, so no backend parameter."""

from __future__ import annotations

import math

import pytest

from flowtrack.domain import abtest
from flowtrack.domain.stats import Bucket, Counts, Engaged


def test_mammogram_example_openintro():
    """OpenIntro Statistics, 4th ed. (Diez, Cetinkaya-Rundel, Barr), section
    6.2.3, the Canadian National Breast Screening Study: 500 deaths of 44,925
    in the mammogram group, 505 of 44,910 in the control group. The book:
    pooled proportion 0.0112, SE 0.00070, Z = -0.17, p-value 0.865, "we do
    not reject". (The book rounds the difference and SE before dividing: the
    unrounded z is -0.164, p = 0.870.)"""
    t = abtest.two_proportion(500, 44_925, 505, 44_910)
    assert t.difference == pytest.approx(-0.00011, abs=0.00001)
    assert t.z == pytest.approx(-0.17, abs=0.01)
    assert t.p_value == pytest.approx(0.865, abs=0.006)
    assert t.enough
    assert abtest.verdict(t) is abtest.Verdict.NO_DIFFERENCE_YET


def test_cpr_blood_thinner_interval_openintro():
    """OpenIntro Statistics, 4th ed., section 6.2.2 (blood thinners after
    CPR): 14 of 40 survived with the treatment, 11 of 50 in the control
    group. The book: difference 0.13, SE 0.095, 95% CI (-0.06, 0.32)."""
    t = abtest.two_proportion(14, 40, 11, 50)
    assert t.difference == pytest.approx(0.13)
    assert t.ci_low is not None and t.ci_high is not None
    se = (t.ci_high - t.ci_low) / 2 / abtest.Z_95
    assert se == pytest.approx(0.095, abs=0.001)
    assert t.ci_low == pytest.approx(-0.06, abs=0.005)
    assert t.ci_high == pytest.approx(0.32, abs=0.005)


def test_p_value_is_the_normal_tail():
    """erfc(|z|/sqrt 2) is the two-sided normal tail: 0.05 at z = 1.96, and
    the textbook table values (z = 1: 0.3173, z = 2.576: 0.01)."""
    assert math.erfc(abtest.Z_95 / math.sqrt(2)) == pytest.approx(0.05, abs=1e-12)
    assert math.erfc(1 / math.sqrt(2)) == pytest.approx(0.3173, abs=1e-4)
    assert math.erfc(2.5758 / math.sqrt(2)) == pytest.approx(0.01, abs=1e-4)


def test_against_scipy_when_installed():
    """The same figures as scipy's normal distribution (not a dependency:
    skipped without it)."""
    norm = pytest.importorskip("scipy.stats").norm
    for x1, n1, x2, n2 in ((120, 1000, 150, 1000), (45, 300, 30, 310), (7, 90, 19, 95)):
        t = abtest.two_proportion(x1, n1, x2, n2)
        p = (x1 + x2) / (n1 + n2)
        z = (x1 / n1 - x2 / n2) / math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
        assert t.z == pytest.approx(z)
        assert t.p_value == pytest.approx(2 * norm.sf(abs(z)))
        assert pytest.approx(norm.ppf(0.975)) == abtest.Z_95


def test_minimum_sample():
    # 29 trials in an arm: not enough, whatever the difference.
    assert not abtest.two_proportion(29, 29, 0, 100).enough
    # Expected successes below 10 in the smaller arm (pooled 8/200 = 0.04, 100 * 0.04 = 4).
    t = abtest.two_proportion(1, 100, 7, 100)
    assert not t.enough and abtest.verdict(t) is abtest.Verdict.NOT_ENOUGH_DATA
    # Expected failures below 10 (pooled 0.97).
    assert not abtest.two_proportion(98, 100, 96, 100).enough
    assert abtest.two_proportion(10, 100, 20, 100).enough
    # No trials, or a pooled rate of 0: nothing to compute.
    empty = abtest.two_proportion(0, 0, 5, 10)
    assert empty.difference is None and empty.p_value is None
    zero = abtest.two_proportion(0, 50, 0, 50)
    assert zero.difference == 0 and zero.z is None and abtest.verdict(zero) is abtest.Verdict.NOT_ENOUGH_DATA


def bucket(
    key: str, submitted: int, success: int, *, read: int = 0, clickers: int = 0, entered: int = 0, goal: int = 0
) -> Bucket:
    counts = Counts(success=success, failed=submitted - success)
    engaged = Engaged(read=read, entered=entered, goal_achieved=goal)
    return Bucket(key, counts, clickers, clickers, engaged, clickers, clickers)


def test_comparisons_and_verdicts():
    a = bucket("A", 1000, 900, read=500, clickers=100, entered=40, goal=10)
    b = bucket("B", 1000, 905, read=600, clickers=101, entered=10, goal=5)
    none = bucket("", 50, 50)
    found = abtest.comparisons([b, none, a])
    assert [(c.variant, c.other, c.against_rest) for c in found] == [("A", "B", False)]
    rates = {r.rate: r for r in found[0].rates}
    assert list(rates) == list(abtest.RATES)
    assert rates["delivery"].summary == "no difference yet"
    assert (rates["delivery"].successes, rates["delivery"].trials) == (900, 1000)
    assert rates["read"].verdict is abtest.Verdict.OTHER_LEADS and rates["read"].summary == "B leads"
    assert rates["link_click"].summary == "no difference yet"
    assert rates["goal"].summary == "not enough data"  # 10 entered in B
    assert (rates["goal"].other_successes, rates["goal"].other_trials) == (5, 10)


def test_each_variant_against_the_rest():
    arms = [bucket("A", 500, 400), bucket("B", 500, 400), bucket("C", 500, 450)]
    found = abtest.comparisons(arms)
    pairs = [(c.variant, c.other) for c in found if not c.against_rest]
    assert pairs == [("A", "B"), ("A", "C"), ("B", "C")]
    rest = [c for c in found if c.against_rest]
    assert [c.variant for c in rest] == ["A", "B", "C"]
    c_rest = rest[2].rates[0]
    assert (c_rest.other_successes, c_rest.other_trials) == (800, 1000)
    assert c_rest.summary == "C leads"
    a_rest = rest[0].rates[0]
    assert a_rest.summary == "the rest lead"


def test_many_variants_only_against_the_rest():
    arms = [bucket(f"V{i:02}", 100, 50) for i in range(abtest.MAX_PAIRED_VARIANTS + 1)]
    found = abtest.comparisons(arms)
    assert len(found) == len(arms) and all(c.against_rest for c in found)
    assert abtest.comparisons([bucket("A", 10, 5)]) == ()
