"""Retention: how long a business keeps its history and its completed
campaigns, and the horizon that follows from it. Pure: no grpc, no SQL.

History is every stored event (status, click, engagement) and the rows made
from it (replies, button taps), counted on the event's `occurred_at`. What a
sweep keeps whatever its age: campaigns, counters, every message's current
state with its first times, the engagement folds and the unique clickers per
link (docs/retention.md).

The horizon of a business is `max(now - history_days, pruned_before)`:
events older than it are pruned by a sweep and refused by ingest
(`OUTSIDE_RETENTION`). `pruned_before` is the latest horizon a sweep
applied; it never moves back, so an event once pruned stays refused even if
the retention is made longer or removed, and its retry is never counted
twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowtrack.domain.errors import Violation

DAY_US = 86_400 * 1_000_000
MAX_DAYS = 36_500
# Why ingest refuses an event older than the business's horizon.
OUTSIDE_RETENTION = "OUTSIDE_RETENTION"
# The tables a sweep deletes from, as ApplyRetention names them.
TABLES = ("events", "replies", "button_clicks", "campaigns")


@dataclass(frozen=True, slots=True)
class Retention:
    """A business's retention. None: kept forever."""

    history_days: int | None = None
    campaign_days: int | None = None
    pruned_before: int | None = None  # µs: the latest horizon a sweep applied
    update_time: int | None = None  # µs: when it was last set


def check(history_days: int, campaign_days: int, prefix: str = "retention") -> list[Violation]:
    """The violations of a requested retention (0 means forever)."""
    found = []
    for name, days in (("history_days", history_days), ("campaign_days", campaign_days)):
        if days < 0 or days > MAX_DAYS:
            found.append(Violation(f"{prefix}.{name}", f"must be 0 (forever) or 1 to {MAX_DAYS} days", "OUT_OF_RANGE"))
    return found


def days_or_none(days: int) -> int | None:
    """A request's day count as stored: 0 is None (forever)."""
    return days or None


def horizon(now_us: int, history_days: int | None, pruned_before: int | None) -> int | None:
    """Events whose occurred_at is below this are pruned and refused; None: none is."""
    by_age = None if history_days is None else now_us - history_days * DAY_US
    candidates = [t for t in (by_age, pruned_before) if t is not None]
    return max(candidates) if candidates else None


def campaign_horizon(now_us: int, campaign_days: int | None) -> int | None:
    """Completed campaigns whose complete time is below this are deleted; None: none is."""
    return None if campaign_days is None else now_us - campaign_days * DAY_US
