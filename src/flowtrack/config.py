"""Server settings: one dataclass, filled from flags and FLOWTRACK_* variables."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from email.utils import parseaddr
from urllib.parse import unquote, urlsplit

# The address forms gRPC binds that are not HOST:PORT (left to gRPC to check).
_NOT_HOST_PORT = ("unix:", "unix-abstract:", "vsock:")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


SMTP_PORTS = {"smtp": 25, "smtps": 465}
STARTTLS_MODES = ("auto", "required")
_SMTP_SENDER = re.compile(r"[^@\s<>,;:\\\"()\[\]]+@[A-Za-z0-9.-]+")


@dataclass(frozen=True)
class SmtpServer:
    """Where email goes (`--smtp`): smtp:// (STARTTLS when the server offers
    it, or always with starttls "required"; a password is never sent before
    TLS) or smtps:// (TLS from the first byte). The password is kept out of
    repr() and of `shown()`."""

    scheme: str
    host: str
    port: int
    user: str = ""
    password: str = field(default="", repr=False)
    starttls: str = "auto"
    sender: str = ""  # the From header, e.g. "flowtrack <reports@example.com>"
    ca_file: str | None = None  # CA bundle (PEM) the server's certificate is checked against; None: the system's

    def shown(self) -> str:
        """The relay as a log line may show it: no password."""
        user = f"{self.user}:***@" if self.password else (f"{self.user}@" if self.user else "")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{user}{host}:{self.port}"

    @property
    def envelope_sender(self) -> str:
        """The bare address of `sender` (MAIL FROM)."""
        return parseaddr(self.sender)[1]


def parse_smtp(
    url: str, *, password: str = "", starttls: str = "auto", sender: str = "", ca_file: str | None = None
) -> SmtpServer:
    """`--smtp smtp[s]://[USER[:PASSWORD]@]HOST[:PORT]` (USER and PASSWORD
    percent-encoded), the password from the URL or else `password`
    (FLOWTRACK_SMTP_PASSWORD). A one-line ValueError that never shows the
    password."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ValueError("--smtp must be smtp://[USER[:PASSWORD]@]HOST:PORT or smtps://...") from None
    scheme = parts.scheme.lower()
    if scheme not in SMTP_PORTS or not parts.hostname:
        raise ValueError("--smtp must be smtp://[USER[:PASSWORD]@]HOST:PORT or smtps://... (smtps: TLS from the start)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("--smtp takes no path or query: smtp[s]://[USER[:PASSWORD]@]HOST:PORT")
    if starttls not in STARTTLS_MODES:
        raise ValueError(f"--smtp-starttls must be one of {', '.join(STARTTLS_MODES)}")
    user = unquote(parts.username or "")
    secret = unquote(parts.password) if parts.password is not None else password
    if secret and not user:
        raise ValueError("an SMTP password (in --smtp or FLOWTRACK_SMTP_PASSWORD) needs a user: smtp://USER@HOST:PORT")
    if not sender:
        sender = user if "@" in user else f"flowtrack@{socket.getfqdn() or 'localhost'}"
    if not _SMTP_SENDER.fullmatch(parseaddr(sender)[1]) or any(c in sender for c in "\r\n"):
        raise ValueError(f"--smtp-from must be an address (or 'Name <address>'), not {sender!r}")
    return SmtpServer(scheme, parts.hostname, port or SMTP_PORTS[scheme], user, secret, starttls, sender, ca_file)


@dataclass(frozen=True)
class Settings:
    """Everything `flowtrack serve` can be told. Defaults are the embedded,
    zero-set-up ones."""

    listen: str = "127.0.0.1:50051"
    database: str = "./flowtrack.db"
    # full: acknowledged events survive a process kill and an OS crash.
    # normal: they survive a process kill only (faster for single events).
    durability: str = "full"
    grace: float = 5.0
    # Refuse events for campaigns that were never created (else create them).
    strict_campaigns: bool = False
    # Store clickers' IP addresses (else accept and discard them).
    store_ip: bool = False
    # How far into the future an event's occurred_at may be, in seconds.
    max_future_skew: float = 3600.0
    # Most events in one StreamEvents batch.
    max_batch_events: int = 5000
    # Batches of one stream awaiting commit before the server stops reading it.
    max_inflight_batches: int = 4
    # Most rows the writer commits in one transaction.
    max_commit_rows: int = 10000
    # Most events (rows) waiting for the writer, all callers together. Past it
    # StreamEvents stops reading and unary calls wait up to max_write_wait
    # seconds, then get RESOURCE_EXHAUSTED (WRITE_QUEUE_FULL).
    max_queued_rows: int = 50000
    max_write_wait: float = 5.0
    # Largest request message, bytes; larger ones are RESOURCE_EXHAUSTED.
    max_receive_message_bytes: int = 16 * 1024 * 1024

    # -- HTTP face (docs/page.md, docs/security.md) --------------------------
    # HOST:PORT of the HTTP listener (page, JSON, /metrics); None = off.
    http: str | None = None
    # `http` is `flowtrack serve`'s default address, not one it was given:
    # when it cannot be bound (a second server on the machine), the server
    # starts without the page and says so in one line, instead of refusing.
    http_fallback: bool = False
    # Connections the HTTP listener holds open, and requests it serves at
    # once. A connection beyond it closes the oldest one still waiting for a
    # request (idle, or its headers not yet complete), or gets 503 if every
    # one is busy; a request beyond it gets 503. Eight more of each are kept
    # for /metrics and sign-in (web/listener.py, RESERVE).
    http_max_connections: int = 200
    # Connections one client address may hold open; more get 429 (0 = no cap:
    # behind a reverse proxy every client has the proxy's address).
    http_max_connections_per_address: int = 32
    # Seconds a request's line and headers may take to arrive (counted from
    # the connection, or the end of the previous response); then 408 and close.
    http_header_timeout: float = 10.0
    # Seconds a request's body may take to arrive once its headers have
    # (0: no limit); then 408 and close.
    http_body_timeout: float = 30.0
    # Largest request line plus headers, bytes (431 above; a request line
    # over 8 KiB, or over this if smaller, is 414).
    http_max_header_bytes: int = 16 * 1024
    # Largest HTTP request body, bytes (413 above).
    http_max_body_bytes: int = 64 * 1024
    # How long a sign-in lasts, seconds.
    http_session_seconds: float = 12 * 3600.0

    # -- security (docs/security.md: tenants, API keys, TLS and limits) -------
    # Server certificate chain and private key (PEM files); both or neither.
    tls_cert: str | None = None
    tls_key: str | None = None
    # CA bundle (PEM) for mutual TLS: clients must present a certificate it signed.
    tls_client_ca: str | None = None
    # How long a checked API key (or its absence) is trusted without looking
    # again: the longest a revoked key keeps working for new calls.
    key_cache_seconds: float = 5.0

    # -- limits ------------------------------------------------------------
    # flowtrack RPCs (all three services) running at once; 0 = no cap. More
    # are refused with RESOURCE_EXHAUSTED at once.
    max_concurrent_rpcs: int = 1000
    # Server streams that stay open (WatchCampaignStats, SubscribeEvents,
    # report streams and exports over gRPC; live stats over HTTP) one API key
    # (in open mode: one business) may hold at once; more are refused with
    # RESOURCE_EXHAUSTED (HTTP 429), reason TOO_MANY_STREAMS (0 = no cap).
    max_streams_per_key: int = 32
    # Health and reflection RPCs running at once, counted apart so that
    # flowtrack's load never starves health checks.
    max_concurrent_health_rpcs: int = 100
    # The server pings a connection after this many seconds without activity,
    # and drops it if the ping is not answered within keepalive_timeout.
    keepalive_time: float = 300.0
    keepalive_timeout: float = 20.0
    # A client may ping at most this often (seconds); a client that pings more
    # often is sent GOAWAY (too_many_pings) after two strikes.
    min_ping_interval: float = 10.0
    # Close a connection with no RPC for this many seconds (0 = never).
    max_connection_idle: float = 900.0
    # Refuse to start with less free disk than this beside the database (bytes).
    min_free_bytes: int = 16 * 1024 * 1024
    # Close any connection after this many seconds, letting its RPCs finish
    # within `grace` (0 = never); useful behind a load balancer.
    max_connection_age: float = 0.0
    # Most seconds one read statement (a unary read, or one page of a stream)
    # may run; past it the call ends with RESOURCE_EXHAUSTED, reason
    # READ_TIME_LIMIT (0 = no limit).
    read_time_limit: float = 30.0
    # Most seconds a report stream or export holds one database snapshot (a
    # held snapshot keeps the WAL from being checkpointed). Paged reports
    # then go on from their last row on a new snapshot; failure reasons end
    # with RESOURCE_EXHAUSTED, reason SNAPSHOT_EXPIRED.
    snapshot_seconds: float = 30.0
    # Report streams and exports (report runs included) holding a database
    # snapshot at once on this server: each holds a connection of its own
    # (PostgreSQL: one of the server's max_connections). A new one past it
    # waits up to 1 s, then gets RESOURCE_EXHAUSTED, reason TOO_MANY_STREAMS
    # (0 = no bound).
    max_report_streams: int = 64

    # -- reports delivered (docs/delivered.md) --------------------------------
    # The signed download links are served by the HTTP listener (`http`).
    # The URL the HTTP listener is reached at, for the signed links handed
    # out (e.g. https://reports.example.com); empty: http://HOST:PORT of --http.
    public_url: str = ""
    # Where report runs are written; None: a folder beside the database
    # (<database>.reports). Replicas sharing a database need a shared folder.
    reports_dir: str | None = None
    # A campaign with no event for this many seconds completes (its own
    # quiet_period overrides it).
    campaign_quiet_period: float = 24 * 3600.0
    # How often (seconds) quiet campaigns, cron schedules and expired runs are looked at.
    scheduler_tick: float = 1.0
    # How often (seconds) one replica sweeps what is past each business's
    # retention (docs/retention.md).
    retention_interval: float = 3600.0
    # Fill the message rows' stored encodings in the background when the
    # writer is idle (core/encodings.py; docs/performance.md). The tests
    # turn it off where they count the writer's jobs.
    encode_rows: bool = True
    # Allow webhook targets in private, loopback and reserved ranges.
    webhook_allow_private: bool = False
    # Seconds before a failed delivery's second attempt; doubled each time
    # (with jitter, capped at an hour) for webhook_retry_window seconds.
    webhook_retry_base: float = 5.0
    webhook_retry_window: float = 24 * 3600.0
    # Failed attempts in a row after which an endpoint is disabled.
    webhook_disable_after: int = 100
    # Seconds a whole delivery attempt may take (look-up, connect, send,
    # answer); at most MAX_WEBHOOK_TIMEOUT.
    webhook_timeout: float = 15.0
    # The SMTP relay email endpoints (mailto:) are sent through; None: no
    # email (creating a mailto: endpoint is FAILED_PRECONDITION).
    smtp: SmtpServer | None = None
    # Reader threads; on PostgreSQL also the most connections of the read
    # pool (psycopg_pool; key look-ups have a pool of 2 of their own).
    readers: int = 8


def check_address(address: str, flag: str) -> tuple[str, int]:
    """(host, port) of a HOST:PORT listen address (IPv6 in brackets), or a
    one-line ValueError naming `flag`. The port must be 1-65535, or 0, which
    picks a free one (--listen and --http both allow it)."""
    host, sep, port = address.rpartition(":")
    if not sep or not re.fullmatch(r"[+-]?\d+", port.strip()):
        raise ValueError(f"{flag} must be HOST:PORT, not {address!r}")
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"{flag} {address}: the port must be 1-65535 (0 picks a free one), not {number}")
    return host.strip("[]"), number


def check_listen(address: str) -> None:
    """check_address for --listen, except the unix:, unix-abstract: and vsock:
    forms, which gRPC checks itself."""
    if not address.startswith(_NOT_HOST_PORT):
        check_address(address.removeprefix("ipv4:").removeprefix("ipv6:"), "--listen")


def database_scheme(database: str) -> str | None:
    """The URL scheme `--database` names (`postgresql`, `mysql`...), or None for a file path."""
    found = _SCHEME.match(database)
    return found.group(1).lower() if found else None
