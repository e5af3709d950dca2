"""A realistic campaign, generated: the audience and every event a flow engine
would report for it, in the order it would report them.

`generate(config)` is pure and seeded: the same config gives the same
campaign, audience and events (ids, payloads and order), with no I/O. It also
says what a server must show afterwards (`Expected`), computed from the
generated events with the spec's rule for the current status, so a test can
hold a server to it.

What it models, per recipient:
- a country, a channel (whatsapp, sms, rcs, email) and an A/B variant;
- a few stay PENDING (the engine has not reached them yet);
- some are NOT_SUBMITTED (opted out, missing variable, no sender for the
  channel, flow studio unavailable — the last one retried as attempt 2);
- the rest go SUBMITTED -> DELIVERY_NOT_CONFIRMED -> SUCCESS or FAILED within
  seconds to minutes; some stay waiting for their execution report;
- failures carry the reasons real channels give (invalid number, not on the
  channel, blocked by the user, rate-limited, template rejected, carrier
  filtered, hard bounce, flow error...); rate limits and expiries are retried
  as attempt 2 a few minutes later;
- successful messages get uLink clicks (variant B a bit more) from plausible
  places in the recipient's country, minutes to hours later;
- and clicks no person made (bot clicks, domain/bots.py): WhatsApp's link
  preview fetching the link of a delivered WhatsApp message, a mail
  security scanner opening an email's link within a second of delivery
  (a browser-like user agent, or none), and, when a person forwards the
  link, the previews of Slack (Slackbot-LinkExpanding), Facebook
  (facebookexternalhit) and iMessage (its Facebot Twitterbot user agent)
  a little later. They are drawn from a random generator of their own and
  come after the recipient's other events, so the people's events of a
  seed are the same as without them;
- engagement after delivery: read receipts on WhatsApp and RCS and
  email opens, none on SMS (READ shares differ by channel); replies (an SMS
  "STOP" is a reply and an opt-out), opt-outs, quick-reply button taps on
  WhatsApp and RCS;
- the flow funnel: a recipient enters the flow when the flow studio takes its
  message, leaves it on a failure ("error"), an opt-out, a goal reached
  ("completed") or a timeout, and some are still in it at the end.

Delivery is imperfect like a real engine's: most events arrive within a
second, a few minutes late (so out of order), and some twice (duplicates with
the same event id and payload). The timeline is shifted to end just before
`config.end_time`, so no event lies in the future.
"""

from __future__ import annotations

import hashlib
import random
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from google.protobuf import timestamp_pb2

from flowtrack.domain.bots import DEFAULT_RULES, HUMAN, classify
from flowtrack.domain.engagement import COUNTERS
from flowtrack.v1 import campaign_pb2, common_pb2, ingest_pb2

S = common_pb2
K = ingest_pb2

# -- the world ----------------------------------------------------------------------

CHANNELS: list[tuple[str, float]] = [("whatsapp", 0.55), ("sms", 0.25), ("rcs", 0.10), ("email", 0.10)]
VARIANTS = ("A", "B")


@dataclass(frozen=True)
class Place:
    region: str
    city: str
    lat: float
    lon: float


@dataclass(frozen=True)
class Country:
    code: str
    dial: str
    prefixes: tuple[str, ...]  # mobile prefixes after the country code
    digits: int  # subscriber digits after the prefix
    weight: float
    places: tuple[Place, ...]
    email_domain: str


COUNTRIES: tuple[Country, ...] = (
    Country(
        "BR",
        "55",
        ("119", "219", "319", "419", "519", "619", "719", "819"),
        8,
        0.32,
        (
            Place("São Paulo", "São Paulo", -23.5505, -46.6333),
            Place("São Paulo", "Campinas", -22.9099, -47.0626),
            Place("Rio de Janeiro", "Rio de Janeiro", -22.9068, -43.1729),
            Place("Minas Gerais", "Belo Horizonte", -19.9167, -43.9345),
            Place("Bahia", "Salvador", -12.9777, -38.5016),
            Place("Paraná", "Curitiba", -25.4284, -49.2733),
        ),
        "uol.com.br",
    ),
    Country(
        "MX",
        "52",
        ("155", "133", "181"),
        7,
        0.16,
        (
            Place("Ciudad de México", "Mexico City", 19.4326, -99.1332),
            Place("Jalisco", "Guadalajara", 20.6597, -103.3496),
            Place("Nuevo León", "Monterrey", 25.6866, -100.3161),
        ),
        "gmail.com",
    ),
    Country(
        "IN",
        "91",
        ("98", "99", "97", "90"),
        8,
        0.18,
        (
            Place("Maharashtra", "Mumbai", 19.0760, 72.8777),
            Place("Karnataka", "Bengaluru", 12.9716, 77.5946),
            Place("Delhi", "New Delhi", 28.6139, 77.2090),
            Place("Tamil Nadu", "Chennai", 13.0827, 80.2707),
        ),
        "gmail.com",
    ),
    Country(
        "DE",
        "49",
        ("151", "160", "170", "176"),
        7,
        0.12,
        (
            Place("Berlin", "Berlin", 52.5200, 13.4050),
            Place("Bavaria", "Munich", 48.1351, 11.5820),
            Place("Hamburg", "Hamburg", 53.5511, 9.9937),
            Place("North Rhine-Westphalia", "Cologne", 50.9375, 6.9603),
        ),
        "gmx.de",
    ),
    Country(
        "US",
        "1",
        ("212", "415", "512", "305", "312"),
        7,
        0.14,
        (
            Place("New York", "New York", 40.7128, -74.0060),
            Place("California", "San Francisco", 37.7749, -122.4194),
            Place("Texas", "Austin", 30.2672, -97.7431),
            Place("Florida", "Miami", 25.7617, -80.1918),
            Place("Illinois", "Chicago", 41.8781, -87.6298),
        ),
        "gmail.com",
    ),
    Country(
        "ZA",
        "27",
        ("82", "83", "72"),
        7,
        0.08,
        (
            Place("Gauteng", "Johannesburg", -26.2041, 28.0473),
            Place("Western Cape", "Cape Town", -33.9249, 18.4241),
        ),
        "gmail.com",
    ),
)

FIRST_NAMES = (
    "Ana", "João", "Maria", "Lucas", "Sofía", "Diego", "Priya", "Arjun", "Lena", "Jonas",
    "Emily", "James", "Thandi", "Sipho", "Camila", "Mateo", "Ayesha", "Rahul", "Clara", "Felix",
)  # fmt: skip
OFFERS = ("SPRING20", "FREESHIP", "VIP10", "WELCOME5")


@dataclass(frozen=True)
class Reason:
    code: str
    message: str
    weight: float
    retry: bool = False  # the engine tries again (attempt 2)


# Why the flow studio never got the message.
NOT_SUBMITTED_REASONS: tuple[Reason, ...] = (
    Reason("OPTED_OUT", "Recipient is on the business's opt-out list", 0.35),
    Reason("MISSING_VARIABLE", "Input variable 'first_name' is required by the flow but empty", 0.25),
    Reason("CHANNEL_NOT_CONFIGURED", "No sender is configured for this channel in the campaign", 0.15),
    Reason("INVALID_RECIPIENT_FORMAT", "Recipient is not a valid E.164 number or email address", 0.10),
    Reason("FLOW_STUDIO_UNAVAILABLE", "Flow studio queue did not accept the message (503)", 0.15, retry=True),
)

# Why a submitted message failed, per channel: the error classes providers return.
FAILED_REASONS: dict[str, tuple[Reason, ...]] = {
    "whatsapp": (
        Reason("NOT_ON_CHANNEL", "131026: Message undeliverable, recipient is not a WhatsApp user", 0.30),
        Reason("INVALID_NUMBER", "131009: Recipient phone number is not valid", 0.10),
        Reason("BLOCKED_BY_USER", "131031: Recipient has blocked the business", 0.12),
        Reason("RATE_LIMITED", "130429: Cloud API throughput reached, retry later", 0.15, retry=True),
        Reason("TEMPLATE_REJECTED", "132015: Message template is paused for low quality", 0.10),
        Reason("FLOW_ERROR", "Flow step 'send_offer' failed: webhook answered 500", 0.13),
        Reason("EXPIRED", "131047: Re-engagement window expired before delivery", 0.10, retry=True),
    ),
    "sms": (
        Reason("INVALID_NUMBER", "21211: The 'To' number is not a valid phone number", 0.25),
        Reason("CARRIER_FILTERED", "30007: Message filtered by the carrier as spam", 0.25),
        Reason("UNREACHABLE", "30003: Handset unreachable or switched off", 0.20, retry=True),
        Reason("BLOCKED_BY_USER", "21610: Recipient replied STOP and is unsubscribed", 0.15),
        Reason("RATE_LIMITED", "14107: Sender rate limit exceeded", 0.10, retry=True),
        Reason("FLOW_ERROR", "Flow step 'shorten_link' failed: uLink service timeout", 0.05),
    ),
    "rcs": (
        Reason("NOT_ON_CHANNEL", "Device is not RCS capable", 0.55),
        Reason("AGENT_NOT_LAUNCHED", "RBM agent is not launched on the recipient's carrier", 0.20),
        Reason("RATE_LIMITED", "RESOURCE_EXHAUSTED: RBM quota exceeded", 0.15, retry=True),
        Reason("FLOW_ERROR", "Flow step 'rich_card' failed: media URL not reachable", 0.10),
    ),
    "email": (
        Reason("HARD_BOUNCE", "550 5.1.1 The email account does not exist", 0.40),
        Reason("SPAM_BLOCKED", "554 5.7.1 Message rejected as spam by the receiving server", 0.20),
        Reason("MAILBOX_FULL", "452 4.2.2 Mailbox full", 0.20, retry=True),
        Reason("TEMPLATE_REJECTED", "Template 'spring_offer' failed to render: unknown variable", 0.10),
        Reason("FLOW_ERROR", "Flow step 'send_email' failed: provider timeout", 0.10),
    ),
}

# Engagement per channel: share of delivered messages read (read receipts,
# email opens; SMS has none), replying (of readers; of delivered on SMS),
# opting out, and tapping a quick-reply button (of readers).
READ_SHARE = {"whatsapp": 0.78, "rcs": 0.62, "email": 0.30, "sms": 0.0}
REPLY_SHARE = {"whatsapp": 0.30, "rcs": 0.20, "email": 0.05, "sms": 0.10}
OPT_OUT_SHARE = {"whatsapp": 0.015, "rcs": 0.01, "email": 0.02, "sms": 0.04}
BUTTON_SHARE = {"whatsapp": 0.40, "rcs": 0.30, "email": 0.0, "sms": 0.0}
BUTTONS: tuple[tuple[str, str, float], ...] = (
    ("offer_yes", "Yes, show me the offer", 0.55),
    ("remind_later", "Remind me later", 0.30),
    ("talk_to_agent", "Talk to an agent", 0.15),
)
REPLY_TEXTS = (
    "Yes",
    "How much is it?",
    "Is the offer still valid tomorrow?",
    "Thanks!",
    "Can I talk to someone?",
    "Send me the link again please",
)
GOAL_ID = "purchase"

LINKS: tuple[tuple[str, str, str], ...] = (
    ("uL7kQ2", "Body variable 1", "https://shop.example.com/spring?utm_source=flowtrack"),
    ("uL9xP4", "Button 1", "https://shop.example.com/account/offers"),
)
USER_AGENTS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 Chrome/124.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; moto g54) AppleWebKit/537.36 Chrome/123.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (Linux; Android 14; SM-A546B) AppleWebKit/537.36 SamsungBrowser/24.0 Chrome/117.0 Mobile"
    " Safari/537.36",
)
# Link-preview fetchers, as they name themselves (each in the crawler list).
WHATSAPP_PREVIEW = "WhatsApp/2.24.8.85 A"
FORWARD_PREVIEWS = (
    "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    # iMessage's preview: a Safari user agent that says Facebot and Twitterbot.
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_11_1) AppleWebKit/601.2.4 (KHTML, like Gecko) Version/9.0.1"
    " Safari/601.2.4 facebookexternalhit/1.1 Facebot Twitterbot/1.0",
)
# A mail security scanner: a browser-like user agent, and it clicks at once.
SCANNER_AGENT = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36"
BOT_EVENT_NUMBERS = 90  # a bot click's event number: from here (the people's stay below)

# -- configuration and result -------------------------------------------------------


@dataclass(frozen=True)
class SimConfig:
    """What to simulate. `end_time` (Unix seconds) anchors the timeline: the
    last event happens just before it."""

    campaign_id: str = "demo"
    recipients: int = 1000
    seed: int = 1
    end_time: float = 0.0
    duplicate_rate: float = 0.02  # share of events delivered twice
    late_rate: float = 0.05  # share of events delivered minutes late (out of order)


@dataclass
class Expected:
    """What a server must show once every generated event is in."""

    events_sent: int  # every event sent, duplicates included
    accepted: int  # distinct events: stored once each
    duplicates: int  # deliveries of an event already sent
    status_events: int
    click_events: int
    # Current status per bucket name (pending, not_submitted, submitted,
    # awaiting, delivery_not_confirmed, success, failed, total).
    counts: dict[str, int]
    by_channel: dict[str, dict[str, int]]
    by_variant: dict[str, dict[str, int]]
    clicks: int
    unique_clickers: int
    engagement_events: int = 0
    # The clicks classified human under the default rules (domain/bots.py).
    human_clicks: int = 0
    unique_human_clickers: int = 0
    # Engagement figures (the stats' names: read, replied, replies, opted_out,
    # button_clickers, button_clicks, entered, in_flow, exited,
    # goal_achieved), for the campaign and per channel and variant.
    engagement: dict[str, int] = field(default_factory=dict)
    engagement_by_channel: dict[str, dict[str, int]] = field(default_factory=dict)
    engagement_by_variant: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class Simulation:
    campaign: campaign_pb2.Campaign
    audience: list[campaign_pb2.Recipient]
    events: list[ingest_pb2.Event]  # in delivery order, duplicates included
    expected: Expected
    span_seconds: float = 0.0  # first to last occurred_at
    story_counts: Counter[str] = field(default_factory=Counter)  # how many recipients took each path


# -- generation ---------------------------------------------------------------------


@dataclass
class _Pending:
    """An event with its time on the engine's clock and when it is delivered."""

    at: float  # seconds from the campaign's start
    arrival: float
    order: int  # tie-break: generation order
    event: ingest_pb2.Event


T = TypeVar("T")


def _weighted(rng: random.Random, items: Sequence[T], weights: list[float]) -> T:
    return rng.choices(items, weights=weights, k=1)[0]


def _reason(rng: random.Random, reasons: tuple[Reason, ...]) -> Reason:
    return _weighted(rng, reasons, [r.weight for r in reasons])


class _Builder:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        tag = hashlib.blake2s(f"{config.campaign_id}\0{config.seed}".encode(), digest_size=5).hexdigest()
        self.id_prefix = f"sim-{tag}"
        self.pending: list[_Pending] = []
        self.stories: Counter[str] = Counter()
        # Bot clicks: their own generator and list (see the module's docstring).
        self.bot_rng = random.Random(f"bots-{config.seed}")
        self.bot_pending: list[_Pending] = []

    # ids ----------------------------------------------------------------------------
    def _event_id(self, index: int, n: int) -> str:
        return f"{self.id_prefix}-{index:07d}-{n:02d}"

    def _hex(self, n: int) -> str:
        return f"{self.rng.getrandbits(4 * n):0{n}x}"

    # events -------------------------------------------------------------------------
    def _add(self, at: float, event: ingest_pb2.Event) -> None:
        self.pending.append(_Pending(at, at, len(self.pending), event))

    def _status(
        self,
        index: int,
        n: int,
        recipient: campaign_pb2.Recipient,
        status: int,
        at: float,
        attempt: int,
        session: str,
        **fields: object,
    ) -> int:
        event = ingest_pb2.StatusEvent(
            event_id=self._event_id(index, n),
            campaign_id=self.config.campaign_id,
            recipient=recipient.recipient,
            status=status,  # type: ignore[arg-type]
            attempt=attempt,
            channel=recipient.channel,
            variant=recipient.variant,
            session_id=session,
            **fields,  # type: ignore[arg-type]
        )
        self._add(at, ingest_pb2.Event(status=event))
        return n + 1

    def _engaged(self, index: int, n: int, r: campaign_pb2.Recipient, kind: int, at: float, **fields: object) -> int:
        event = ingest_pb2.EngagementEvent(
            event_id=self._event_id(index, n),
            campaign_id=self.config.campaign_id,
            recipient=r.recipient,
            kind=kind,  # type: ignore[arg-type]
            **fields,  # type: ignore[arg-type]
        )
        self._add(at, ingest_pb2.Event(engagement=event))
        return n + 1

    def _provider_id(self, channel: str) -> str:
        if channel == "whatsapp":
            return "wamid.HBgM" + self._hex(24).upper()
        if channel == "sms":
            return "SM" + self._hex(32)
        if channel == "rcs":
            return "rbm-" + self._hex(20)
        return f"<{self._hex(16)}@mail.flowtrack.example>"

    def recipient(self, index: int) -> tuple[campaign_pb2.Recipient, Country]:
        rng = self.rng
        country = _weighted(rng, COUNTRIES, [c.weight for c in COUNTRIES])
        channel = _weighted(rng, [c for c, _ in CHANNELS], [w for _, w in CHANNELS])
        variant = VARIANTS[rng.randrange(len(VARIANTS))]
        name = rng.choice(FIRST_NAMES)
        if channel == "email":
            plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
            address = f"{plain}.{index}@{country.email_domain}"
        else:
            prefix = rng.choice(country.prefixes)
            # index * a number coprime to 10**digits: distinct subscribers for distinct indexes.
            subscriber = (index * 7_919) % (10**country.digits)
            address = f"+{country.dial}{prefix}{subscriber:0{country.digits}d}"
        inputs = {"first_name": name, "offer_code": rng.choice(OFFERS), "locale": country.code.lower()}
        return campaign_pb2.Recipient(
            recipient=address, channel=channel, variant=variant, input_variables=inputs
        ), country

    def story(self, index: int, r: campaign_pb2.Recipient, country: Country, send_at: float) -> None:
        """Every event of one recipient's message, on the engine's clock."""
        rng = self.rng
        n = 0
        roll = rng.random()
        if roll < 0.03:
            self.stories["pending"] += 1
            return
        inputs = dict(r.input_variables)
        attempt = 1
        at = send_at
        if roll < 0.09:
            reason = _reason(rng, NOT_SUBMITTED_REASONS)
            n = self._status(
                index,
                n,
                r,
                S.MESSAGE_STATUS_NOT_SUBMITTED,
                at,
                attempt,
                "",
                failure_reason=S.FailureReason(code=reason.code, message=reason.message),
                input_variables=inputs,
            )
            if not (reason.retry and rng.random() < 0.7):
                self.stories["not_submitted"] += 1
                return
            self.stories["not_submitted_then_retried"] += 1
            attempt = 2
            at += rng.uniform(120, 900)
        self.stories["submitted"] += 1
        entered = False
        while True:
            session = f"ses_{self._hex(12)}"
            n = self._status(index, n, r, S.MESSAGE_STATUS_SUBMITTED, at, attempt, session, input_variables=inputs)
            fate = rng.random()
            if fate < 0.03:  # queued, nothing heard since
                self.stories["awaiting"] += 1
                return
            provider = self._provider_id(r.channel)
            at += rng.lognormvariate(0.3, 0.6)  # seconds to the flow studio's acceptance
            if not entered:  # the flow studio took the message: the recipient enters the flow
                n = self._engaged(index, n, r, K.ENGAGEMENT_KIND_ENTERED_FLOW, at)
                entered = True
            if rng.random() < 0.93:  # some engines report the outcome without the intermediate step
                n = self._status(
                    index,
                    n,
                    r,
                    S.MESSAGE_STATUS_DELIVERY_NOT_CONFIRMED,
                    at,
                    attempt,
                    session,
                    provider_message_id=provider,
                )
            if fate < 0.08:  # no execution report yet
                self.stories["delivery_not_confirmed"] += 1
                return
            at += rng.lognormvariate(2.5, 1.0)  # seconds to the execution report
            success_rate = {"whatsapp": 0.84, "sms": 0.80, "rcs": 0.72, "email": 0.78}[r.channel]
            if r.variant == "B":
                success_rate += 0.03
            if attempt > 1:
                success_rate = 0.85
            if rng.random() < success_rate:
                outputs = {"reply": rng.choice(["YES", "MORE_INFO", "", "STOP"]), "flow_exit": "completed"}
                n = self._status(
                    index,
                    n,
                    r,
                    S.MESSAGE_STATUS_SUCCESS,
                    at,
                    attempt,
                    session,
                    provider_message_id=provider,
                    output_variables=outputs,
                )
                self.stories["success"] += 1
                n, clicked = self._clicks(index, n, r, country, at)
                self._engagement(index, n, r, at, clicked)
                self._bot_clicks(index, r, at, clicked)
                return
            reason = _reason(rng, FAILED_REASONS[r.channel])
            n = self._status(
                index,
                n,
                r,
                S.MESSAGE_STATUS_FAILED,
                at,
                attempt,
                session,
                provider_message_id=provider,
                failure_reason=S.FailureReason(code=reason.code, message=reason.message),
                output_variables={"flow_exit": "error"},
            )
            if attempt == 1 and reason.retry and rng.random() < 0.8:
                self.stories["failed_then_retried"] += 1
                attempt = 2
                at += rng.uniform(300, 1800)  # the engine's retry back-off
                continue
            self.stories["failed"] += 1
            self._engaged(index, n, r, K.ENGAGEMENT_KIND_EXITED_FLOW, at + 0.5, exit_reason="error")
            return

    def _engagement(self, index: int, n: int, r: campaign_pb2.Recipient, delivered_at: float, clicked: bool) -> None:
        """What a recipient does with a delivered message, and how its flow ends."""
        rng = self.rng
        channel = r.channel
        at = delivered_at
        read = rng.random() < READ_SHARE[channel]
        if read:
            at += rng.lognormvariate(4.0, 1.2)  # minutes to the first read
            n = self._engaged(index, n, r, K.ENGAGEMENT_KIND_READ, at)
            if rng.random() < 0.05:  # a second device reports the read again (a new event)
                n = self._engaged(index, n, r, K.ENGAGEMENT_KIND_READ, at + rng.uniform(5, 600))
        seen = read or channel == "sms"  # SMS has no read receipts: replies come from the delivered
        wants_offer = clicked
        if seen and rng.random() < BUTTON_SHARE[channel]:
            self.stories["tapped"] += 1
            for _ in range(1 if rng.random() < 0.9 else 2):
                button_id, name, _ = _weighted(rng, BUTTONS, [w for _, _, w in BUTTONS])
                at += rng.lognormvariate(3.0, 1.0)
                n = self._engaged(
                    index, n, r, K.ENGAGEMENT_KIND_BUTTON_CLICKED, at, button_id=button_id, button_name=name
                )
                wants_offer = wants_offer or button_id == "offer_yes"
        if rng.random() < OPT_OUT_SHARE[channel]:
            self.stories["opted_out"] += 1
            at += rng.lognormvariate(3.5, 1.0)
            if channel == "sms":  # "STOP" is an inbound message too
                n = self._engaged(index, n, r, K.ENGAGEMENT_KIND_REPLIED, at, text="STOP")
            n = self._engaged(index, n, r, K.ENGAGEMENT_KIND_OPTED_OUT, at + 0.2)
            self._engaged(index, n, r, K.ENGAGEMENT_KIND_EXITED_FLOW, at + 0.4, exit_reason="opted_out")
            return
        if seen and rng.random() < REPLY_SHARE[channel]:
            self.stories["replied"] += 1
            for _ in range(1 if rng.random() < 0.7 else 2):
                at += rng.lognormvariate(4.0, 1.0)
                text = rng.choice(REPLY_TEXTS)
                if rng.random() < 0.05:  # the engine keeps personal data out of the tracker
                    n = self._engaged(index, n, r, K.ENGAGEMENT_KIND_REPLIED, at, text=text, discard_text=True)
                else:
                    n = self._engaged(index, n, r, K.ENGAGEMENT_KIND_REPLIED, at, text=text)
        fate = rng.random()
        if fate < (0.45 if wants_offer else 0.02):
            self.stories["goal"] += 1
            at += rng.lognormvariate(5.0, 1.0)
            n = self._engaged(index, n, r, K.ENGAGEMENT_KIND_GOAL_ACHIEVED, at, goal_id=GOAL_ID)
            self._engaged(index, n, r, K.ENGAGEMENT_KIND_EXITED_FLOW, at + 1, exit_reason="completed")
        elif fate < 0.80:
            self._engaged(
                index, n, r, K.ENGAGEMENT_KIND_EXITED_FLOW, at + rng.uniform(1800, 3600), exit_reason="timeout"
            )
        # else: still in the flow (waiting on the recipient)

    def _clicks(
        self, index: int, n: int, r: campaign_pb2.Recipient, country: Country, success_at: float
    ) -> tuple[int, bool]:
        """The recipient's uLink clicks; the next event number and whether it clicked."""
        rng = self.rng
        if rng.random() >= (0.30 if r.variant == "B" else 0.22):
            return n, False
        clicks = _weighted(rng, (1, 2, 3), [0.7, 0.2, 0.1])
        place = rng.choice(country.places)
        at = success_at
        agent = rng.choice(USER_AGENTS)
        for _ in range(clicks):
            at += rng.lognormvariate(6.0, 1.3)  # minutes to hours after delivery
            link_id, variable, url = rng.choice(LINKS)
            where = rng.random()
            if where < 0.08:
                location = S.Location()
            elif where < 0.15:
                location = S.Location(country_code=country.code)
            else:
                location = S.Location(
                    country_code=country.code,
                    region=place.region,
                    city=place.city,
                    latitude=round(place.lat + rng.uniform(-0.08, 0.08), 4),
                    longitude=round(place.lon + rng.uniform(-0.08, 0.08), 4),
                )
            event = ingest_pb2.ClickEvent(
                event_id=self._event_id(index, n),
                campaign_id=self.config.campaign_id,
                recipient=r.recipient,
                link_id=link_id,
                link_variable=variable,
                url=url,
                location=location,
                user_agent=agent,
                ip_address=f"{rng.randrange(1, 223)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
            )
            n += 1
            self._add(at, ingest_pb2.Event(click=event))
        return n, True

    def _bot_clicks(self, index: int, r: campaign_pb2.Recipient, success_at: float, clicked: bool) -> None:
        """The clicks no person made on a delivered message (module docstring)."""
        rng = self.bot_rng
        made: list[tuple[float, str]] = []
        if r.channel == "whatsapp" and rng.random() < 0.35:
            made.append((success_at + rng.uniform(3.0, 40.0), WHATSAPP_PREVIEW))
        if r.channel == "email" and rng.random() < 0.40:
            made.append((success_at + rng.uniform(0.05, 1.2), SCANNER_AGENT if rng.random() < 0.7 else ""))
        if clicked and rng.random() < 0.20:
            made.append((success_at + rng.uniform(600.0, 7200.0), rng.choice(FORWARD_PREVIEWS)))
        for k, (at, agent) in enumerate(made):
            link_id, variable, url = LINKS[0]
            event = ingest_pb2.ClickEvent(
                event_id=self._event_id(index, BOT_EVENT_NUMBERS + k),
                campaign_id=self.config.campaign_id,
                recipient=r.recipient,
                link_id=link_id,
                link_variable=variable,
                url=url,
                user_agent=agent,
            )
            self.bot_pending.append(_Pending(at, at, -1, ingest_pb2.Event(click=event)))
        if made:
            self.stories["bot_clicked"] += 1

    def deliveries(self, shift: float) -> list[ingest_pb2.Event]:
        """Set every event's occurred_at (shifted to end before end_time), and
        return them in delivery order with late and repeated deliveries."""
        rng = self.rng
        out: list[_Pending] = []
        for p in self.pending:
            stamp(p.event, p.at + shift)
            if rng.random() < self.config.late_rate:
                p.arrival = p.at + rng.uniform(30, 900)
            else:
                p.arrival = p.at + rng.expovariate(2.0)
            out.append(p)
            if rng.random() < self.config.duplicate_rate:
                again = _Pending(p.at, p.arrival + rng.uniform(0.5, 120), len(self.pending) + len(out), p.event)
                out.append(again)
        order = len(self.pending) * 2
        for p in self.bot_pending:  # a bot's click arrives within a second
            stamp(p.event, p.at + shift)
            p.arrival = p.at + self.bot_rng.uniform(0.05, 1.0)
            p.order = order
            order += 1
            out.append(p)
        out.sort(key=lambda p: (p.arrival, p.order))
        return [p.event for p in out]


def stamp(event: ingest_pb2.Event, at: float) -> None:
    micros = round(at * 1_000_000)
    ts = timestamp_pb2.Timestamp(seconds=micros // 1_000_000, nanos=(micros % 1_000_000) * 1000)
    inner = getattr(event, event.WhichOneof("kind") or "status")
    inner.occurred_at.CopyFrom(ts)


def generate(config: SimConfig) -> Simulation:
    """The campaign, its audience and its events, from the config alone."""
    if config.recipients < 0:
        raise ValueError("recipients must not be negative")
    b = _Builder(config)
    channels = [c for c, _ in CHANNELS]
    campaign = campaign_pb2.Campaign(
        id=config.campaign_id,
        name=f"Spring offer (simulated, seed {config.seed})",
        flow_id="flow-spring-offer-v3",
        channels=channels,
        labels={"source": "flowtrack-simulate", "seed": str(config.seed)},
    )
    audience: list[campaign_pb2.Recipient] = []
    # The engine sends at ~40 messages/s with jitter: the send window grows with the audience.
    send_at = 0.0
    for index in range(config.recipients):
        recipient, country = b.recipient(index)
        audience.append(recipient)
        send_at += b.rng.expovariate(40.0)
        b.story(index, recipient, country, send_at)
    last = max((p.at for p in (*b.pending, *b.bot_pending)), default=0.0)
    first = min((p.at for p in b.pending), default=0.0)
    shift = config.end_time - 1.0 - last
    events = b.deliveries(shift)
    sim = Simulation(campaign, audience, events, expected(audience, events), last - first, b.stories)
    return sim


# -- what a server must show --------------------------------------------------------


def _key(e: ingest_pb2.StatusEvent) -> tuple[int, int, int, int, str]:
    """The spec's order of a message's events: (attempt, rank, occurred_at, event_id)."""
    return (max(e.attempt, 1), e.status, e.occurred_at.seconds, e.occurred_at.nanos, e.event_id)


_BUCKETS: dict[int, str] = {
    S.MESSAGE_STATUS_NOT_SUBMITTED: "not_submitted",
    S.MESSAGE_STATUS_SUBMITTED: "awaiting",
    S.MESSAGE_STATUS_DELIVERY_NOT_CONFIRMED: "delivery_not_confirmed",
    S.MESSAGE_STATUS_FAILED: "failed",
    S.MESSAGE_STATUS_SUCCESS: "success",
}


def _micros(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def _empty() -> dict[str, int]:
    names = ("total", "pending", "not_submitted", "submitted", "awaiting", "delivery_not_confirmed", "success")
    return dict.fromkeys((*names, "failed"), 0)


def expected(audience: list[campaign_pb2.Recipient], events: list[ingest_pb2.Event]) -> Expected:
    """Counts from the events themselves with the rule for the current status
    (not from the stories that made them), so they check the server honestly."""
    seen: set[str] = set()
    current: dict[str, ingest_pb2.StatusEvent] = {}
    clickers: set[str] = set()
    click_events: list[ingest_pb2.ClickEvent] = []
    delivered: dict[str, int] = {}  # recipient -> its earliest SUCCESS (µs)
    engaged: dict[str, Counter[str]] = {}
    clicks = status_events = duplicates = engagement_events = 0
    for event in events:
        inner = getattr(event, event.WhichOneof("kind") or "status")
        if inner.event_id in seen:
            duplicates += 1
            continue
        seen.add(inner.event_id)
        if event.HasField("engagement"):
            engagement_events += 1
            _engage(engaged.setdefault(inner.recipient, Counter()), event.engagement)
        elif event.HasField("status"):
            status_events += 1
            best = current.get(event.status.recipient)
            if best is None or _key(event.status) > _key(best):
                current[event.status.recipient] = event.status
            if event.status.status == S.MESSAGE_STATUS_SUCCESS:
                at = _micros(event.status.occurred_at)
                delivered[event.status.recipient] = min(at, delivered.get(event.status.recipient, at))
        else:
            clicks += 1
            clickers.add(event.click.recipient)
            click_events.append(event.click)
    humans = [
        c.recipient
        for c in click_events
        if classify(DEFAULT_RULES, c.user_agent, _micros(c.occurred_at), delivered.get(c.recipient)) == HUMAN
    ]
    overall = _empty()
    by_channel: dict[str, dict[str, int]] = {}
    by_variant: dict[str, dict[str, int]] = {}
    e_overall = _empty_engagement()
    e_channel: dict[str, dict[str, int]] = {}
    e_variant: dict[str, dict[str, int]] = {}
    for r in audience:
        last = current.get(r.recipient)
        bucket = _BUCKETS[last.status] if last is not None else "pending"
        channel = (last.channel if last is not None else "") or r.channel
        variant = (last.variant if last is not None else "") or r.variant
        for counts in (overall, by_channel.setdefault(channel, _empty()), by_variant.setdefault(variant, _empty())):
            counts["total"] += 1
            counts[bucket] += 1
            if bucket not in ("pending", "not_submitted"):
                counts["submitted"] += 1
        mine = engaged.get(r.recipient, Counter())
        for figures in (
            e_overall,
            e_channel.setdefault(channel, _empty_engagement()),
            e_variant.setdefault(variant, _empty_engagement()),
        ):
            for name in ENGAGEMENT_FIGURES:
                figures[name] += mine[name]
            figures["in_flow"] = figures["entered"] - figures["exited"]
    return Expected(
        events_sent=len(events),
        accepted=len(seen),
        duplicates=duplicates,
        status_events=status_events,
        click_events=clicks,
        counts=overall,
        by_channel=by_channel,
        by_variant=by_variant,
        clicks=clicks,
        unique_clickers=len(clickers),
        human_clicks=len(humans),
        unique_human_clickers=len(set(humans)),
        engagement_events=engagement_events,
        engagement=e_overall,
        engagement_by_channel=e_channel,
        engagement_by_variant=e_variant,
    )


# The engagement figures of the stats (StatsBucket), in distinct recipients
# but for the totals replies and button_clicks; in_flow = entered - exited.
ENGAGEMENT_FIGURES = COUNTERS


def _empty_engagement() -> dict[str, int]:
    return dict.fromkeys((*ENGAGEMENT_FIGURES, "in_flow"), 0)


def _engage(mine: Counter[str], e: ingest_pb2.EngagementEvent) -> None:
    """Count one distinct engagement event into its recipient's figures, as
    the server counts them: a kind counts once per recipient, replies and taps every time,
    and an exit or a goal implies an entry."""
    flag = {
        K.ENGAGEMENT_KIND_READ: "read",
        K.ENGAGEMENT_KIND_REPLIED: "replied",
        K.ENGAGEMENT_KIND_OPTED_OUT: "opted_out",
        K.ENGAGEMENT_KIND_BUTTON_CLICKED: "button_clickers",
        K.ENGAGEMENT_KIND_ENTERED_FLOW: "entered",
        K.ENGAGEMENT_KIND_EXITED_FLOW: "exited",
        K.ENGAGEMENT_KIND_GOAL_ACHIEVED: "goal_achieved",
    }[e.kind]
    mine[flag] = 1
    if e.kind == K.ENGAGEMENT_KIND_REPLIED:
        mine["replies"] += 1
    elif e.kind == K.ENGAGEMENT_KIND_BUTTON_CLICKED:
        mine["button_clicks"] += 1
    if e.kind in (K.ENGAGEMENT_KIND_EXITED_FLOW, K.ENGAGEMENT_KIND_GOAL_ACHIEVED):
        mine["entered"] = 1
