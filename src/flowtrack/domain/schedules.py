"""Report schedules: cadence rules, time to live, retention, and signed links.

A schedule runs a report (the same file ExportReport makes, with the same
filters) either on a cron expression in a time zone, or each time a campaign
completes (`on_complete`; for every campaign of the business, or only the
schedule's campaign). A cron schedule needs a campaign.

A run's download link is `/reports/runs/{run_id}?expires=UNIX&sig=HEX`, where
`sig` is the HMAC-SHA256 of `{run_id}.{expires}` under a server key kept in
the database: anyone holding the link may download the file until it
expires, and nothing else (the run id is random, the link names no business).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from flowtrack.domain.errors import InvalidArgument, Violation
from flowtrack.domain.times import to_datetime

SECOND = 1_000_000
DEFAULT_LINK_TTL_US = 3600 * SECOND
MIN_LINK_TTL_US = 60 * SECOND
MAX_LINK_TTL_US = 7 * 24 * 3600 * SECOND
DEFAULT_RETENTION_US = 7 * 24 * 3600 * SECOND
MIN_RETENTION_US = 60 * SECOND
MAX_RETENTION_US = 366 * 24 * 3600 * SECOND
MAX_SCHEDULES = 50  # per business
NAME_CHARS = 256
CRON_CHARS = 128

# Run statuses (also ReportRunStatus numbers).
PROCESSING, COMPLETED, FAILED = 1, 2, 3
LINK_PATH = "/reports/runs/"


@dataclass(frozen=True, slots=True)
class ScheduleDraft:
    name: str
    campaign_id: str
    cron: str
    time_zone: str
    on_complete: bool
    link_ttl_us: int | None
    retention_us: int | None


def check(draft: ScheduleDraft, prefix: str = "schedule") -> None:
    """Every violation of a schedule's cadence and limits (filters are
    checked as ExportReport checks them)."""
    out: list[Violation] = []
    if len(draft.name) > NAME_CHARS:
        out.append(Violation(f"{prefix}.name", f"is longer than {NAME_CHARS} characters", "TOO_LONG"))
    if bool(draft.cron) == draft.on_complete:
        out.append(Violation(f"{prefix}.cron", "set exactly one of cron and on_complete", "ONE_OF"))
    if draft.cron:
        if len(draft.cron) > CRON_CHARS or not croniter.is_valid(draft.cron):
            out.append(Violation(f"{prefix}.cron", "is not a cron expression (e.g. '0 8 * * 1')", "BAD_CRON"))
        if not draft.campaign_id:
            out.append(Violation(f"{prefix}.campaign_id", "is required with cron", "REQUIRED"))
    if draft.time_zone:
        try:
            ZoneInfo(draft.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            out.append(Violation(f"{prefix}.time_zone", "is not an IANA time zone", "BAD_TIME_ZONE"))
    for name, value, low, high in (
        ("link_ttl", draft.link_ttl_us, MIN_LINK_TTL_US, MAX_LINK_TTL_US),
        ("retention", draft.retention_us, MIN_RETENTION_US, MAX_RETENTION_US),
    ):
        if value is not None and not low <= value <= high:
            why = f"must be from {low // SECOND} s to {high // SECOND} s"
            out.append(Violation(f"{prefix}.{name}", why, "OUT_OF_RANGE"))
    if out:
        raise InvalidArgument(out)


def next_run(cron: str, time_zone: str, after_us: int) -> int:
    """The first time the cron expression fires after `after_us`, in µs,
    reading the expression in `time_zone` (UTC if empty)."""
    start = to_datetime(after_us).astimezone(ZoneInfo(time_zone or "UTC"))
    fire: datetime = croniter(cron, start).get_next(datetime)
    return int(fire.timestamp() * SECOND)


def sign(key: bytes, run_id: str, expires: int) -> str:
    """The signature of a link to `run_id` valid until `expires` (Unix seconds)."""
    return hmac.new(key, f"{run_id}.{expires}".encode(), hashlib.sha256).hexdigest()


def link(key: bytes, base_url: str, run_id: str, expires: int) -> str:
    """A signed download link (a path if `base_url` is empty)."""
    return f"{base_url.rstrip('/')}{LINK_PATH}{run_id}?expires={expires}&sig={sign(key, run_id, expires)}"


def verify(key: bytes, run_id: str, expires: str, sig: str, now_s: float) -> str | None:
    """Why a link must be refused ('altered' or 'expired'), or None if it is good."""
    # isdecimal() alone admits non-ASCII digits ("²" is a digit int() refuses),
    # and compare_digest refuses non-ASCII text: both are altered links.
    if not expires.isascii() or not expires.isdigit() or len(expires) > 12 or not sig.isascii():
        return "altered"
    if not hmac.compare_digest(sign(key, run_id, int(expires)), sig):
        return "altered"
    if int(expires) < now_s:
        return "expired"
    return None
