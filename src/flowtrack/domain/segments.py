"""Named segments of a campaign's audience, and a campaign made from one.

A segment is a message-report filter with a name (the filters of
`flowtrack report`: current status and engaged segments), so the recipients
a retry campaign copies are exactly those the report lists with the same
filter. No grpc, no SQL.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowtrack.domain.errors import Violation
from flowtrack.domain.model import CampaignSource, Status
from flowtrack.domain.stats import CampaignStats, MessageFilter

SEGMENTS: dict[str, MessageFilter] = {
    "failed": MessageFilter(statuses=(int(Status.FAILED),)),
    "not_submitted": MessageFilter(statuses=(int(Status.NOT_SUBMITTED),)),
    "undelivered": MessageFilter(statuses=(int(Status.NOT_SUBMITTED), int(Status.FAILED))),
    "delivered_not_read": MessageFilter(statuses=(int(Status.SUCCESS),), read=False),
    "clicked_not_replied": MessageFilter(clicked_link=True, replied=False),
    "not_clicked": MessageFilter(statuses=(int(Status.SUCCESS),), clicked_link=False),
}
SEGMENT_HELP = {
    "failed": "current status FAILED",
    "not_submitted": "current status NOT_SUBMITTED",
    "undelivered": "FAILED or NOT_SUBMITTED",
    "delivered_not_read": "SUCCESS, and no READ",
    "clicked_not_replied": "clicked a tracked link, and no REPLIED",
    "not_clicked": "SUCCESS, and no link click",
}


def check_source(source: CampaignSource, path: str = "campaign.source") -> list[Violation]:
    """The violations of a campaign's source (the campaign id's own rules are
    checked where it is looked up: an unknown one is NOT_FOUND)."""
    out = []
    if not source.campaign_id:
        out.append(Violation(f"{path}.campaign_id", "is required", "REQUIRED"))
    elif len(source.campaign_id) > 128:
        out.append(Violation(f"{path}.campaign_id", "at most 128 characters", "TOO_LONG"))
    if source.segment not in SEGMENTS:
        out.append(Violation(f"{path}.segment", f"one of {', '.join(SEGMENTS)}", "UNKNOWN_VALUE"))
    return out


@dataclass(frozen=True, slots=True)
class SourcedStats:
    """A campaign's stats, its source (if made from a segment of another
    campaign) and the source's stats (None if it has none or it is gone)."""

    stats: CampaignStats
    source: CampaignSource | None = None
    source_stats: CampaignStats | None = None
