"""When a campaign completes by itself (SPEC §5, issue 14).

A SCHEDULED or RUNNING campaign completes when

- every recipient of its audience has a final status (SUCCESS, FAILED or
  NOT_SUBMITTED): the audience is not empty and no message is pending,
  awaiting (SUBMITTED) or DELIVERY_NOT_CONFIRMED (not for an implicit
  campaign, whose audience is only what its events named so far); or
- an event arrived for it once, and none has arrived since for its quiet
  period (the campaign's own, else the server's default).

A CANCELLED campaign never completes; a COMPLETED one stays completed, and
events that arrive later still count in its stats.
"""

from __future__ import annotations

from collections.abc import Mapping

from flowtrack.domain.model import CampaignState

# The reasons a campaign.completed event gives.
ALL_FINAL = "all_final"
QUIET_PERIOD = "quiet_period"
MANUAL = "manual"

OPEN_STATES = frozenset({CampaignState.SCHEDULED, CampaignState.RUNNING})
NOT_FINAL_BUCKETS = ("pending", "awaiting", "delivery_not_confirmed")
BUCKETS = ("pending", "not_submitted", "awaiting", "delivery_not_confirmed", "failed", "success")

DEFAULT_QUIET_PERIOD_US = 24 * 3600 * 1_000_000
MIN_QUIET_PERIOD_US = 1_000_000  # 1 s
MAX_QUIET_PERIOD_US = 90 * 24 * 3600 * 1_000_000  # 90 days


def all_final(counters: Mapping[str, int]) -> bool:
    """Whether the campaign-wide status counters say every recipient has a final status."""
    total = sum(counters.get(b, 0) for b in BUCKETS)
    return total > 0 and all(counters.get(b, 0) == 0 for b in NOT_FINAL_BUCKETS)


def quiet(last_arrival_us: int | None, quiet_period_us: int, now_us: int) -> bool:
    """Whether no event has arrived for `quiet_period_us` (and one did once)."""
    return last_arrival_us is not None and now_us - last_arrival_us >= quiet_period_us


def summary(counters: Mapping[str, int]) -> dict[str, int | float]:
    """The final stats a campaign.completed event carries (rule 3's buckets,
    totals and rates)."""
    c = {b: int(counters.get(b, 0)) for b in BUCKETS}
    submitted = c["awaiting"] + c["delivery_not_confirmed"] + c["success"] + c["failed"]
    total = submitted + c["pending"] + c["not_submitted"]

    def rate(n: int) -> float:
        return round(n / submitted, 6) if submitted else 0.0

    return {
        "total": total,
        "submitted": submitted,
        **c,
        "clicks": int(counters.get("clicks", 0)),
        "unique_clickers": int(counters.get("unique_clickers", 0)),
        "success_rate": rate(c["success"]),
        "failure_rate": rate(c["failed"]),
    }
