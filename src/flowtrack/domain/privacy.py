"""Erasing a recipient: its pseudonym, and what becomes of each datum.

An erased recipient's identifier is replaced everywhere by its pseudonym,
`erased:` and 24 hex digits: the HMAC-SHA256 of the business and the
identifier under the server's erasure key (kept in the database,
store/privacy.py), cut to 96 bits. It is the same in every campaign of the
business (counts per recipient stay right) and differs between businesses.
It is not a bare hash: without the key a phone number cannot be found from
its pseudonym by trying every number. The event ids of its events are
replaced the same way (they may carry a provider's message id, which may
carry the phone number).

What stays: statuses, attempts, times, reason codes, channel, variant,
country, region, link ids, button ids, engagement kinds: what the totals,
rates and breakdowns are made of. What goes: variables, session ids,
provider message ids, reply texts, a click's IP address, user agent, city and
coordinates. Any other text of its rows (a failure message, a URL, an exit
reason) keeps its words with the identifier replaced by the pseudonym.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import NamedTuple

from flowtrack.domain.campaigns import RECIPIENT_CHARS
from flowtrack.domain.errors import invalid

PREFIX = "erased:"
HEX_DIGITS = 24
REASON_ERASED = "RECIPIENT_ERASED"  # an event's outcome reason: its recipient was erased
KEY_BYTES = 32


class Erasure(NamedTuple):
    """The record of an erasure: who asked (an API key's id, '' in open
    mode), when it started and finished (µs; None while it runs), how many
    campaigns held the recipient, the rows changed per table. Never the
    identifier."""

    erasure_id: str
    key_id: str
    create_time: int
    complete_time: int | None
    campaigns: int
    rows: dict[str, int]


def require_recipient(recipient: str) -> str:
    """The recipient of an EraseRecipient request, or INVALID_ARGUMENT."""
    if not recipient:
        raise invalid("recipient", "is required", "REQUIRED")
    if len(recipient) > RECIPIENT_CHARS:
        raise invalid("recipient", f"is longer than {RECIPIENT_CHARS} characters", "TOO_LONG")
    if recipient.startswith(PREFIX):
        raise invalid("recipient", "is a pseudonym already", "ERASED_ALREADY")
    return recipient


def _mac(key: bytes, *parts: str) -> str:
    message = "\x00".join(parts).encode()
    return PREFIX + hmac.new(key, message, hashlib.sha256).hexdigest()[:HEX_DIGITS]


def pseudonym(key: bytes, business_id: str, recipient: str) -> str:
    """The recipient's pseudonym in its business."""
    return _mac(key, "recipient", business_id, recipient)


def event_pseudonym(key: bytes, business_id: str, event_id: str) -> str:
    """What an erased recipient's event id becomes (unique per business, as the id was)."""
    return _mac(key, "event", business_id, event_id)


def scrub(text: str | None, recipient: str, replacement: str) -> str | None:
    """`text` with every occurrence of the identifier replaced."""
    if not text or recipient not in text:
        return text
    return text.replace(recipient, replacement)
