"""Bot clicks: which clicks no person made.

A click is `human` or `bot` with one reason (the `bot_reason` column of a
stored click event; 0 is human):

- CRAWLER: its user agent is a known crawler or link-preview fetcher
  (WhatsApp, Slackbot-LinkExpanding, facebookexternalhit, Twitterbot, which
  iMessage sends too, ...): a pattern of the `crawler-user-agents` list;
- NO_USER_AGENT: it came without a user agent;
- TOO_SOON: it happened sooner after its message's delivery than the
  business's threshold (2 s by default): security scanners and preview
  fetchers that open a link the instant it arrives.

The rules are checked in that order; the first that holds is the reason.
"Delivery" is the message's SUCCESS time (`success_at`: the earliest SUCCESS
event's time) as stored when the click is classified; a click of a message
whose delivery is not known yet is not TOO_SOON. A click's class is always
a function of what is stored (the business's rules, the click, its
message's delivery): when a delivery becomes known or earlier, the store
re-classifies that message's clicks in the same transaction, so the result
does not depend on the order the events arrived in.

Matching is cheap per click: the list's 1,500 patterns are compiled once
into one pattern (grouped by their first character, so a search tries only
the alternatives that can start at each position), and each user-agent
string's verdict is kept in a bounded LRU cache.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from flowtrack.domain.errors import InvalidArgument, Violation

HUMAN = 0
CRAWLER = 1
NO_USER_AGENT = 2
TOO_SOON = 3

# The reasons by name, as the API and the CLI show them.
REASON_NAMES = {HUMAN: "", CRAWLER: "crawler_user_agent", NO_USER_AGENT: "no_user_agent", TOO_SOON: "too_soon"}
CLASS_NAMES = ("human", "bot")

DEFAULT_THRESHOLD_US = 2_000_000
MAX_THRESHOLD_US = 3_600_000_000  # one hour: a rule, not a way to call every click a bot

# User-agent strings whose verdict is kept (each at most 1,024 characters,
# the cap of a click's user agent): a few MB at most.
UA_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class BotRules:
    """A business's rules. `threshold_us` 0 turns the timing rule off."""

    crawler_ua_is_bot: bool = True
    no_ua_is_bot: bool = True
    threshold_us: int = DEFAULT_THRESHOLD_US


DEFAULT_RULES = BotRules()


def classify(rules: BotRules, user_agent: str | None, clicked_at: int, delivered_at: int | None) -> int:
    """The bot reason of a click (HUMAN = 0). `delivered_at` is its
    message's delivery time, None when not known. A click before its
    delivery counts as sooner than the threshold (the difference is negative)."""
    reason = user_agent_reason(rules, user_agent)
    if reason:
        return reason
    if rules.threshold_us and delivered_at is not None and clicked_at - delivered_at < rules.threshold_us:
        return TOO_SOON
    return HUMAN


def user_agent_reason(rules: BotRules, user_agent: str | None) -> int:
    """The reason the user agent alone gives (HUMAN if none)."""
    if not user_agent:
        return NO_USER_AGENT if rules.no_ua_is_bot else HUMAN
    if rules.crawler_ua_is_bot and is_crawler(user_agent):
        return CRAWLER
    return HUMAN


@functools.lru_cache(maxsize=UA_CACHE_SIZE)
def is_crawler(user_agent: str) -> bool:
    """Whether a pattern of the crawler list matches `user_agent` (the
    list's patterns are case-sensitive, as its authors wrote them)."""
    return _pattern().search(user_agent) is not None


@functools.cache
def _pattern() -> re.Pattern[str]:
    """The crawler list as one pattern: the patterns that start with a plain
    character (no alternation of their own) grouped under it."""
    from crawleruseragents import CRAWLER_USER_AGENTS_DATA  # the list: data only, loaded once

    groups: dict[str, list[str]] = {}
    others: list[str] = []
    for entry in CRAWLER_USER_AGENTS_DATA:
        pattern = entry["pattern"]
        plain = len(pattern) > 1 and (pattern[0].isalnum() or pattern[0] in " -_;") and pattern[1] not in "?*+{"
        if plain and "|" not in pattern:
            groups.setdefault(pattern[0], []).append(pattern[1:])
        else:
            others.append(pattern)
    parts = [
        re.escape(first) + "(?:" + "|".join(f"(?:{rest})" for rest in rests) + ")" for first, rests in groups.items()
    ]
    parts.extend(f"(?:{pattern})" for pattern in others)
    return re.compile("|".join(parts))


def reason_name(reason: int) -> str:
    return REASON_NAMES.get(reason, "")


def class_name(reason: int) -> str:
    return "human" if reason == HUMAN else "bot"


@dataclass(frozen=True, slots=True)
class SettingsChange:
    """What an UpdateSettings changes; None keeps the value."""

    threshold_us: int | None = None
    crawler_ua_is_bot: bool | None = None
    no_ua_is_bot: bool | None = None

    def applied(self, rules: BotRules) -> BotRules:
        return BotRules(
            rules.crawler_ua_is_bot if self.crawler_ua_is_bot is None else self.crawler_ua_is_bot,
            rules.no_ua_is_bot if self.no_ua_is_bot is None else self.no_ua_is_bot,
            rules.threshold_us if self.threshold_us is None else self.threshold_us,
        )


def check_threshold(threshold_us: int, field: str) -> int:
    """A threshold in whole milliseconds from 0 (the rule off) to one hour."""
    if threshold_us < 0:
        raise InvalidArgument([Violation(field, "must not be negative (0 turns the rule off)", "OUT_OF_RANGE")])
    if threshold_us > MAX_THRESHOLD_US:
        raise InvalidArgument([Violation(field, "at most one hour", "OUT_OF_RANGE")])
    if threshold_us % 1000:
        raise InvalidArgument([Violation(field, "in whole milliseconds", "INVALID")])
    return threshold_us


@dataclass(frozen=True, slots=True)
class Reclassifying:
    """A re-classification of a business's stored clicks not finished yet:
    when it was asked for, and the clicks it changed so far."""

    requested_at: int
    changed: int


@dataclass(frozen=True, slots=True)
class BusinessSettings:
    """A business's settings and when they last changed (None: never); and,
    as GetSettings reads them, the re-classification still going on (None:
    none)."""

    rules: BotRules = DEFAULT_RULES
    update_time: int | None = None
    reclassifying: Reclassifying | None = None
