"""`flowtrack stats CAMPAIGN --variants`: the A/B test (report.proto's AbTest)
as a table, a row per comparison and rate."""

from __future__ import annotations

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from flowtrack.v1 import report_pb2

RATE_LABELS = {
    "delivery": "delivery",
    "read": "read",
    "reply": "reply",
    "link_click": "link click (humans)",
    "goal": "goal",
}
VERDICT_STYLES = {
    report_pb2.AB_VERDICT_VARIANT_LEADS: "bold green",
    report_pb2.AB_VERDICT_OTHER_LEADS: "bold green",
    report_pb2.AB_VERDICT_NO_DIFFERENCE_YET: "",
    report_pb2.AB_VERDICT_NOT_ENOUGH_DATA: "dim",
}


def _arm(successes: int, trials: int) -> str:
    if not trials:
        return f"{successes:,}/0"
    return f"{successes:,}/{trials:,} {successes / trials * 100:.1f}%"


def _points(value: float) -> str:
    """A difference of rates in percentage points, signed."""
    return f"{value * 100:+.1f}"


def rate_cells(r: report_pb2.RateComparison) -> list[RenderableType]:
    diff = _points(r.difference) if r.HasField("difference") else "-"
    ci = f"[{_points(r.ci_low)}, {_points(r.ci_high)}]" if r.HasField("ci_low") else "-"
    p = f"{r.p_value:.3g}" if r.HasField("p_value") else "-"
    return [
        RATE_LABELS.get(r.rate, r.rate),
        _arm(r.successes, r.trials),
        _arm(r.other_successes, r.other_trials),
        diff,
        ci,
        p,
        Text(r.summary, style=VERDICT_STYLES.get(r.verdict, "")),
    ]


def ab_test_view(stats: report_pb2.CampaignStats) -> RenderableType:
    """Each comparison of the campaign's A/B test, rate by rate: both arms
    (successes/trials and rate), the difference in percentage points with
    its confidence interval, the p-value and the verdict."""
    ab = stats.ab_test
    if not ab.comparisons:
        return Text(f"campaign {stats.campaign_id}: fewer than two A/B variants, nothing to compare")
    level = f"{ab.confidence * 100:g}%"
    table = Table(
        title=f"campaign [bold]{stats.campaign_id}[/bold] · A/B test · sequence {stats.sequence}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for header, justify in (
        ("variant vs other", "left"),
        ("rate", "left"),
        ("variant", "right"),
        ("other", "right"),
        ("diff (pts)", "right"),
        (f"{level} CI (pts)", "right"),
        ("p-value", "right"),
        ("verdict", "left"),
    ):
        table.add_column(header, justify=justify, no_wrap=header != "verdict")  # type: ignore[arg-type]
    for comparison in ab.comparisons:
        table.add_section()
        other = "the rest" if comparison.against_rest else comparison.other
        label = f"{comparison.variant} vs {other}"
        for i, r in enumerate(comparison.rates):
            table.add_row(label if i == 0 else "", *rate_cells(r))
    note = Text(
        f"{ab.method}. No verdict before {ab.min_trials} trials per arm and "
        f"{ab.min_expected} expected successes and failures per arm.",
        style="dim",
    )
    return Group(table, note)
