"""When a campaign completes by itself.

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

from flowtrack.domain import stats
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
    """The final stats a campaign.completed event carries: the campaign-wide
    figures of GetCampaignStats (status counts, clicks, engagement and
    funnel, rates), computed by domain/stats.py and named as there; a rate
    whose denominator is zero is absent (stats.figures)."""
    return stats.figures(stats.bucket_of("", counters))
