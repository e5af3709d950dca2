"""The `flowtrack serve` options for TLS, API keys and limits, kept apart from
cli.py: each option is named after the Settings field it fills, so `serve`
passes them on as they are (`Settings(..., **security)`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

import click

from flowtrack.config import Settings

F = TypeVar("F", bound=Callable[..., Any])

_PATH = click.Path(exists=True, dir_okay=False)

# (flag, Settings field, type, help)
_OPTIONS: list[tuple[str, str, Any, str]] = [
    ("--tls-cert", "tls_cert", _PATH, "Server certificate chain (PEM); with --tls-key, serve TLS only."),
    ("--tls-key", "tls_key", _PATH, "Private key of --tls-cert (PEM)."),
    (
        "--tls-client-ca",
        "tls_client_ca",
        _PATH,
        "CA bundle (PEM): require client certificates it signed (mutual TLS).",
    ),
    (
        "--key-cache-seconds",
        "key_cache_seconds",
        float,
        "How long a checked API key is trusted: the most a revoked key keeps working.",
    ),
    (
        "--max-receive-message-bytes",
        "max_receive_message_bytes",
        int,
        "Largest request message; larger ones get RESOURCE_EXHAUSTED.",
    ),
    (
        "--max-concurrent-rpcs",
        "max_concurrent_rpcs",
        int,
        "flowtrack RPCs running at once (0: no cap); more get RESOURCE_EXHAUSTED.",
    ),
    (
        "--max-concurrent-health-rpcs",
        "max_concurrent_health_rpcs",
        int,
        "Health and reflection RPCs running at once, counted apart from flowtrack's.",
    ),
    (
        "--max-streams-per-key",
        "max_streams_per_key",
        click.IntRange(min=0),
        "Open server streams (gRPC) and live-stats streams (HTTP) per API key (0: no cap); more get"
        " RESOURCE_EXHAUSTED / 429.",
    ),
    (
        "--http-max-connections-per-address",
        "http_max_connections_per_address",
        click.IntRange(min=0),
        "HTTP connections one client address may hold open (0: no cap, e.g. behind a proxy); more get 429.",
    ),
    (
        "--http-header-timeout",
        "http_header_timeout",
        click.FloatRange(min=0),
        "Seconds an HTTP request's line and headers may take to arrive (0: no limit); then 408 and close.",
    ),
    (
        "--http-body-timeout",
        "http_body_timeout",
        click.FloatRange(min=0),
        "Seconds an HTTP request's body may take to arrive after its headers (0: no limit); then 408 and close.",
    ),
    (
        "--http-max-header-bytes",
        "http_max_header_bytes",
        click.IntRange(min=1024),
        "Largest HTTP request line plus headers (431 above; a request line over 8 KiB is 414).",
    ),
    ("--keepalive-time", "keepalive_time", float, "Seconds of silence before the server pings a connection."),
    ("--keepalive-timeout", "keepalive_timeout", float, "Seconds to wait for a ping's answer before dropping."),
    (
        "--min-ping-interval",
        "min_ping_interval",
        float,
        "Seconds clients must leave between pings; faster pingers get GOAWAY.",
    ),
    ("--max-connection-idle", "max_connection_idle", float, "Close connections idle this long (0: never)."),
    (
        "--max-connection-age",
        "max_connection_age",
        float,
        "Close connections after this long, RPCs finishing within --grace (0: never).",
    ),
    (
        "--read-time-limit",
        "read_time_limit",
        float,
        "Seconds one read may run before RESOURCE_EXHAUSTED (0: no limit).",
    ),
    (
        "--readers",
        "readers",
        int,
        "Reader threads, and on PostgreSQL the most pooled read connections (+2 for key look-ups).",
    ),
    (
        "--snapshot-seconds",
        "snapshot_seconds",
        float,
        "Seconds a report stream holds one database snapshot before taking a new one.",
    ),
    (
        "--max-report-streams",
        "max_report_streams",
        int,
        "Report streams and exports open at once, each on a database connection of its own"
        " (0: no bound); more get RESOURCE_EXHAUSTED.",
    ),
    (
        "--min-free-bytes",
        "min_free_bytes",
        int,
        "Refuse to start with less free disk than this beside the database.",
    ),
    (
        "--max-queued-rows",
        "max_queued_rows",
        int,
        "Events waiting for the writer, all callers together; past it streams stop being read.",
    ),
    (
        "--max-write-wait",
        "max_write_wait",
        float,
        "Seconds a unary event waits for room in the writer's queue, then RESOURCE_EXHAUSTED.",
    ),
]


def database_option(function: F) -> F:
    """`--database` of the commands that open the database themselves
    (keys, db): the server's SQLite file or its postgresql:// URL."""
    return click.option(
        "--database",
        envvar="FLOWTRACK_DATABASE",
        default=Settings.database,
        show_default=True,
        help="SQLite file of the server, or its postgresql:// URL (FLOWTRACK_DATABASE).",
    )(function)


def security_options(function: F) -> F:
    """Add the TLS, key and limit options to a click command. Each sets the
    Settings field of the same name; its environment variable is
    FLOWTRACK_<FIELD> (e.g. FLOWTRACK_TLS_CERT)."""
    for flag, field, kind, text in reversed(_OPTIONS):
        default = getattr(Settings, field)
        function = click.option(
            flag,
            field,
            envvar=f"FLOWTRACK_{field.upper()}",
            type=kind,
            default=default,
            show_default=default is not None,
            help=text,
        )(function)
    return function


_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*")


class Duration(click.ParamType[float]):
    """A duration such as 2s, 15m, 1h, 7d or 90 (seconds), as seconds."""

    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        found = _DURATION.fullmatch(str(value))
        if not found or float(found.group(1)) <= 0:
            self.fail(f"{value!r} is not a duration such as 2s, 15m, 1h or 7d", param, ctx)
        return float(found.group(1)) * _UNITS[found.group(2)]


DURATION = Duration()
