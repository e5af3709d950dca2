"""Webhook rules: event types, endpoint validation, message bodies, retries.

Deliveries follow Standard Webhooks (standardwebhooks.com): the body is
`{"type": ..., "timestamp": ..., "data": {...}}`, signed with the endpoint's
`whsec_` secret in the `webhook-id`, `webhook-timestamp` and
`webhook-signature` headers. A message keeps its `webhook-id` across retries.
Retries back off exponentially with jitter for `RETRY_WINDOW_US` (a day);
an endpoint is disabled when a message runs out of retries or after
`DISABLE_AFTER_FAILURES` failed attempts in a row.

An endpoint has a format: STANDARD (the signed Standard Webhooks body),
SLACK (a Slack-compatible incoming webhook: a message Slack renders, not
signed: its URL is the secret) or EMAIL (a `mailto:` target, sent through
the server's --smtp relay). The outbox holds the Standard Webhooks body for
every format; a Slack or email delivery is rendered from it when it is sent
(domain/notifications.py).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import random
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from flowtrack.domain.errors import InvalidArgument, Violation
from flowtrack.domain.times import iso

CAMPAIGN_COMPLETED = "campaign.completed"
REPORT_COMPLETED = "report.completed"
CAMPAIGN_FAILURE_RATE = "campaign.failure_rate"
EVENT_TYPES = (CAMPAIGN_COMPLETED, REPORT_COMPLETED, CAMPAIGN_FAILURE_RATE)

# Endpoint formats: the numbers of WebhookFormat in delivery.proto.
STANDARD, SLACK, EMAIL = 1, 2, 3
FORMAT_NAMES = {STANDARD: "standard", SLACK: "slack", EMAIL: "email"}
MAX_MAIL_RECIPIENTS = 10  # addresses of one mailto: target

MAX_ENDPOINTS = 20  # per business
URL_CHARS = 2048
DESCRIPTION_CHARS = 256

# Message states.
PENDING, DELIVERED, FAILED = 1, 2, 3
STATE_NAMES = {PENDING: "pending", DELIVERED: "delivered", FAILED: "failed"}

RETRY_WINDOW_US = 24 * 3600 * 1_000_000
DEFAULT_RETRY_BASE = 5.0  # seconds before the second attempt (then doubling)
MAX_RETRY_DELAY = 3600.0  # seconds: backoff is capped at an hour
DISABLE_AFTER_FAILURES = 100
LOG_RETENTION_US = 30 * 24 * 3600 * 1_000_000  # delivered and failed messages are kept 30 days
RESPONSE_TIMEOUT = 15.0  # seconds a whole attempt may take (look-up, connect, send, answer); the default
MAX_WEBHOOK_TIMEOUT = 300.0  # seconds: the most --webhook-timeout may be
MAX_RESPONSE_BYTES = 64 * 1024  # of an answer's body read; a longer answer fails the attempt
MAX_PINNED_ADDRESSES = 4  # checked addresses of a host tried in turn when one refuses the connection


def claim_seconds(attempt_timeout: float) -> float:
    """How long a claimed message is held (CLAIM below): the attempt's whole
    deadline twice over and half a minute, so an attempt always ends (and
    is recorded) before another server may make it again."""
    return 2 * attempt_timeout + 30.0


@dataclass(frozen=True, slots=True)
class EndpointDraft:
    url: str
    events: tuple[str, ...]
    description: str = ""
    failure_rate: float | None = None
    min_submitted: int = 0
    format: int = 0  # 0: EMAIL for a mailto: target, else STANDARD

    def resolved(self) -> EndpointDraft:
        """The draft with its format decided (a mailto: target is EMAIL)."""
        if self.format:
            return self
        chosen = EMAIL if self.url.lower().startswith("mailto:") else STANDARD
        return EndpointDraft(
            self.url, self.events, self.description, self.failure_rate, self.min_submitted, chosen
        )  # fmt: skip


# An address of a mailto: target: a dot-atom local part and a host name,
# nothing that could end a header line or name a second header.
_MAILBOX = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def mail_recipients(url: str) -> tuple[str, ...] | None:
    """The addresses of a `mailto:a@example.com[,b@example.com]` target
    (RFC 6068, percent-decoded), or None if it is not one flowtrack sends
    to: a query (`?subject=`), a display name, or anything but plain
    addresses is refused."""
    if not url.lower().startswith("mailto:"):
        return None
    rest = url[len("mailto:") :]
    if "?" in rest or "#" in rest:
        return None
    found = tuple(unquote(part).strip() for part in rest.split(","))
    if not found or len(found) > MAX_MAIL_RECIPIENTS:
        return None
    if not all(_MAILBOX.fullmatch(a) and len(a) <= 254 for a in found):
        return None
    return found


def new_secret() -> str:
    """A signing secret: `whsec_` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def new_id(prefix: str) -> str:
    """A random id such as `ep_...` or `msg_...` (128 bits, url-safe)."""
    return f"{prefix}_" + base64.b32encode(secrets.token_bytes(20)).decode().lower().rstrip("=")


def check_endpoint(draft: EndpointDraft) -> None:
    """Every violation of a CreateWebhookEndpoint request (field paths of the
    request's `endpoint`)."""
    out: list[Violation] = []
    parts = urlsplit(draft.url)
    mailto = draft.url.lower().startswith("mailto:")
    if draft.format not in (0, *FORMAT_NAMES):
        out.append(Violation("endpoint.format", "is not a known format", "UNKNOWN_VALUE"))
    if not draft.url:
        out.append(Violation("endpoint.url", "is required", "REQUIRED"))
    elif len(draft.url) > URL_CHARS:
        out.append(Violation("endpoint.url", f"is longer than {URL_CHARS} characters", "TOO_LONG"))
    elif mailto and draft.format not in (0, EMAIL):
        out.append(Violation("endpoint.format", "a mailto: target is sent as email (format EMAIL)", "BAD_FORMAT"))
    elif mailto and mail_recipients(draft.url) is None:
        why = f"must be mailto: with 1 to {MAX_MAIL_RECIPIENTS} plain addresses, comma-separated, without ?query"
        out.append(Violation("endpoint.url", why, "BAD_URL"))
    elif not mailto and draft.format == EMAIL:
        out.append(Violation("endpoint.url", "an EMAIL endpoint's target is mailto:ADDRESS", "BAD_URL"))
    elif mailto:
        pass
    elif parts.scheme not in ("http", "https") or not parts.hostname:
        out.append(Violation("endpoint.url", "must be an http:// or https:// URL with a host", "BAD_URL"))
    elif parts.username or parts.password:
        out.append(Violation("endpoint.url", "must not carry credentials", "BAD_URL"))
    if not draft.events:
        out.append(Violation("endpoint.events", f"needs at least one of {', '.join(EVENT_TYPES)}", "REQUIRED"))
    for i, event in enumerate(draft.events):
        if event not in EVENT_TYPES:
            out.append(Violation(f"endpoint.events[{i}]", f"is not one of {', '.join(EVENT_TYPES)}", "UNKNOWN_VALUE"))
    if len(draft.description) > DESCRIPTION_CHARS:
        out.append(Violation("endpoint.description", f"is longer than {DESCRIPTION_CHARS} characters", "TOO_LONG"))
    rate = draft.failure_rate
    if CAMPAIGN_FAILURE_RATE in draft.events and (rate is None or not 0 <= rate < 1):
        why = "is required for campaign.failure_rate, in [0, 1)"
        out.append(Violation("endpoint.failure_rate", why, "OUT_OF_RANGE"))
    if draft.min_submitted < 0:
        out.append(Violation("endpoint.min_submitted", "must not be negative", "OUT_OF_RANGE"))
    if out:
        raise InvalidArgument(out)


# IPv6 ranges whose addresses carry an IPv4 address in their last 32 bits:
# IPv4-compatible (::/96, deprecated), IPv4-mapped (::ffff:0:0/96), SIIT
# (::ffff:0:0:0/96, RFC 2765) and the well-known NAT64 prefix (64:ff9b::/96,
# RFC 6052). A gateway or dual stack may take them to the IPv4 address.
_EMBEDS_IPV4 = tuple(ipaddress.IPv6Network(n) for n in ("::/96", "::ffff:0:0/96", "::ffff:0:0:0/96", "64:ff9b::/96"))
# The local-use NAT64 prefix (RFC 8215): where its IPv4 address sits depends
# on the operator's prefix length, so it is refused whole.
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (and may be translated to
    on the way): the last 32 bits of ::/96, ::ffff:0:0/96, ::ffff:0:0:0/96
    and 64:ff9b::/96; a 6to4 address's (2002::/16); a Teredo address's
    server and client (2001::/32)."""
    found = []
    if any(address in network for network in _EMBEDS_IPV4):
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    return found


def _refused(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return not address.is_global or address.is_multicast  # private, loopback, link-local, shared, reserved...


def refused_address(addresses: Iterable[str]) -> str | None:
    """The first address that is not a global unicast one (private, loopback,
    link-local, carrier-grade shared, multicast, reserved, unspecified: where
    a webhook must not go unless the server allows it), or None. An IPv6
    address that carries an IPv4 one (IPv4-mapped or -compatible, SIIT,
    NAT64, 6to4, Teredo) is refused when that IPv4 address is; one in the
    local-use NAT64 prefix 64:ff9b:1::/48 always."""
    for text in addresses:
        try:
            address = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            return text
        if isinstance(address, ipaddress.IPv6Address):
            if address in _LOCAL_NAT64:
                return text
            if any(_refused(v4) for v4 in embedded_ipv4(address)):
                return text
            if any(address in network for network in _EMBEDS_IPV4):
                continue  # its IPv4 address decides: ::ffff:8.8.8.8 is 8.8.8.8
        if _refused(address):
            return text
    return None


def body(message_type: str, time_us: int, data: dict[str, object]) -> str:
    """A Standard Webhooks JSON body."""
    return json.dumps(
        {"type": message_type, "timestamp": iso(time_us), "data": data}, separators=(",", ":"), sort_keys=True
    )


def retry_delay(attempts: int, base: float, rng: random.Random | None = None) -> float:
    """Seconds before the next attempt after `attempts` failed ones:
    base * 2^(attempts-1), capped at MAX_RETRY_DELAY, with jitter (a factor
    drawn in [0.5, 1])."""
    raw = min(MAX_RETRY_DELAY, base * 2.0 ** max(0, attempts - 1))
    jitter: float = (rng or random).uniform(0.5, 1.0)
    return float(raw * jitter)


def is_success(status_code: int) -> bool:
    """A 2xx answer is a delivery; anything else is retried."""
    return 200 <= status_code < 300


def events_of(values: Sequence[str]) -> tuple[str, ...]:
    """The event types in first-seen order, without repeats."""
    return tuple(dict.fromkeys(values))
