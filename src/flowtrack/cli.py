"""The `flowtrack` command: the server, and a client of it."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

# grpc reads GRPC_VERBOSITY once, when first imported (the client commands import
# it): without this its C core prints its own bind and connection errors before
# our one-line messages.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import click
from click.core import ParameterSource

from flowtrack import __version__
from flowtrack.cli_backup import backup
from flowtrack.cli_db import db
from flowtrack.cli_keys import keys
from flowtrack.cli_options import DURATION, security_options
from flowtrack.client.connection import group_connection_options
from flowtrack.config import STARTTLS_MODES, Settings, SmtpServer, parse_smtp
from flowtrack.domain.webhooks import MAX_WEBHOOK_TIMEOUT

# `serve` serves the page here unless told otherwise (loopback only).
DEFAULT_HTTP = "127.0.0.1:8080"

# The modules of the client commands (each a COMMANDS list): loaded when one
# of them runs or the command list is read (`--help`), not for `serve`,
# `keys`, `backup` or `db`, which need none of them (rich, the renderers,
# the simulator: docs/performance.md).
CLIENT_MODULES = (
    "flowtrack.client.commands",
    "flowtrack.client.delivery",
    "flowtrack.client.privacy",
    "flowtrack.client.settings",
    "flowtrack.client.retention",
)


class _Cli(click.Group):
    """The `flowtrack` group, whose client commands load on first need."""

    _client_loaded = False

    @property  # type: ignore[override]
    def commands(self) -> dict[str, click.Command]:
        """Every command, the client ones loaded first (what tests and
        click's listing read)."""
        self._load_client()
        return self._commands

    @commands.setter
    def commands(self, value: dict[str, click.Command]) -> None:
        self._commands = value

    def _load_client(self) -> None:
        if self._client_loaded:
            return
        self._client_loaded = True
        import importlib

        for name in CLIENT_MODULES:
            for command in importlib.import_module(name).COMMANDS:
                self.add_command(command)

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        loaded, self._client_loaded = self._client_loaded, True  # adding one loads nothing
        try:
            super().add_command(cmd, name)
        finally:
            self._client_loaded = loaded

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = self._commands.get(cmd_name)  # serve, keys, backup, db: no client module needed
        return found if found is not None else self.commands.get(cmd_name)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "FLOWTRACK"})
@click.version_option(__version__, prog_name="flowtrack")
@group_connection_options
def cli(**_connection: Any) -> None:
    """flowtrack: track the execution of flow-based messaging campaigns.

    `serve` runs the server: gRPC on 127.0.0.1:50051, the live campaign page
    and /metrics on http://127.0.0.1:8080/, on a SQLite file (./flowtrack.db)
    or a PostgreSQL database shared by replicas, with reports delivered on a
    schedule or when a campaign completes (signed links, webhooks).

    Every other command is a client of a server. The connection options
    (--address, --api-key, --tls-ca, --tls-cert, --tls-key, --timeout, or
    their FLOWTRACK_* variables) go before or after the command name; given
    in both places, the one after it wins.

    Example: flowtrack serve, then flowtrack simulate, then open http://127.0.0.1:8080/
    """


@cli.command()
@click.option(
    "--listen",
    envvar="FLOWTRACK_LISTEN",
    default=Settings.listen,
    show_default=True,
    help="Address to listen on, HOST:PORT, the port 1-65535 (0 picks a free one).",
)
@click.option(
    "--database",
    envvar="FLOWTRACK_DATABASE",
    default=Settings.database,
    show_default=True,
    help="SQLite file (created with its schema on first start), or postgresql://USER@HOST:PORT/DB for replicas.",
)
@click.option(
    "--durability",
    envvar="FLOWTRACK_DURABILITY",
    type=click.Choice(["full", "normal"]),
    default=Settings.durability,
    show_default=True,
    help="full: acked events survive an OS crash; normal: only a process kill.",
)
@click.option(
    "--grace",
    envvar="FLOWTRACK_GRACE",
    type=float,
    default=Settings.grace,
    show_default=True,
    help="Seconds to let in-flight RPCs finish on SIGINT/SIGTERM.",
)
@click.option(
    "--strict-campaigns/--implicit-campaigns",
    envvar="FLOWTRACK_STRICT_CAMPAIGNS",
    default=Settings.strict_campaigns,
    show_default=True,
    help="Refuse events for unknown campaigns instead of creating them.",
)
@click.option(
    "--store-ip/--no-store-ip",
    envvar="FLOWTRACK_STORE_IP",
    default=Settings.store_ip,
    show_default=True,
    help="Store the IP addresses of clicks.",
)
@click.option(
    "--max-future-skew",
    envvar="FLOWTRACK_MAX_FUTURE_SKEW",
    type=float,
    default=Settings.max_future_skew,
    show_default=True,
    help="Seconds an event's occurred_at may lie in the future.",
)
@click.option(
    "--http",
    "http",
    envvar="FLOWTRACK_HTTP",
    default=DEFAULT_HTTP,
    show_default=True,
    metavar="HOST:PORT",
    help="Also serve HTTP here: the live campaign page at /, Prometheus metrics at /metrics, signed report"
    " download links. 'off' (or '') turns it off. When the default port is taken the server starts without"
    " the page (one warning line); an address given here that cannot be bound stops the start.",
)
@click.option(
    "--http-max-connections",
    envvar="FLOWTRACK_HTTP_MAX_CONNECTIONS",
    type=click.IntRange(min=1),
    default=Settings.http_max_connections,
    show_default=True,
    help="HTTP connections held open and requests served at once; a connection beyond it closes the oldest"
    " idle one (503 if none is idle), a request beyond it gets 503.",
)
@click.option(
    "--log-level",
    envvar="FLOWTRACK_LOG_LEVEL",
    default="INFO",
    show_default=True,
    help="Logging level.",
)
@click.option(
    "--public-url",
    envvar="FLOWTRACK_PUBLIC_URL",
    default="",
    help="The URL the HTTP listener is reached at, for signed links (default: http://HOST:PORT of --http).",
)
@click.option(
    "--reports-dir",
    envvar="FLOWTRACK_REPORTS_DIR",
    default=None,
    help="Folder of report run files (default: DATABASE.reports beside the database; replicas need a shared one).",
)
@click.option(
    "--campaign-quiet-period",
    envvar="FLOWTRACK_CAMPAIGN_QUIET_PERIOD",
    type=DURATION,
    default=Settings.campaign_quiet_period,
    show_default=True,
    help="A campaign with no event for this long completes (2s, 15m, 24h; a campaign's quiet_period overrides it).",
)
@click.option(
    "--retention-interval",
    envvar="FLOWTRACK_RETENTION_INTERVAL",
    type=DURATION,
    default=Settings.retention_interval,
    show_default=True,
    help="How often one replica deletes what is past each business's retention (`flowtrack retention`).",
)
@click.option(
    "--webhook-allow-private/--no-webhook-allow-private",
    envvar="FLOWTRACK_WEBHOOK_ALLOW_PRIVATE",
    default=Settings.webhook_allow_private,
    show_default=True,
    help="Allow webhook targets in private, loopback and reserved address ranges.",
)
@click.option(
    "--webhook-retry-base",
    envvar="FLOWTRACK_WEBHOOK_RETRY_BASE",
    type=DURATION,
    default=Settings.webhook_retry_base,
    show_default=True,
    help="Wait before a failed delivery's second attempt; doubled each time (jitter, 1 h cap) for a day.",
)
@click.option(
    "--webhook-timeout",
    envvar="FLOWTRACK_WEBHOOK_TIMEOUT",
    type=DURATION,
    default=Settings.webhook_timeout,
    show_default=True,
    help="The longest a whole webhook delivery attempt may take (at most 5m); a slower one fails and is retried.",
)
@click.option(
    "--smtp",
    envvar="FLOWTRACK_SMTP",
    default=None,
    metavar="URL",
    help="The SMTP relay email endpoints (mailto:) go through: smtp://[USER[:PASSWORD]@]HOST:PORT (STARTTLS"
    " when offered) or smtps://... (TLS from the start). The password may come from FLOWTRACK_SMTP_PASSWORD"
    " instead; it is never logged.",
)
@click.option(
    "--smtp-starttls",
    envvar="FLOWTRACK_SMTP_STARTTLS",
    type=click.Choice(STARTTLS_MODES),
    default="auto",
    show_default=True,
    help="smtp://: auto uses STARTTLS when the relay offers it (a password is never sent without TLS);"
    " required fails the attempt when it does not.",
)
@click.option(
    "--smtp-from",
    envvar="FLOWTRACK_SMTP_FROM",
    default="",
    help="The From of notification emails, ADDRESS or 'Name <ADDRESS>' (default: the SMTP user if it is an"
    " address, else flowtrack@ this host's name).",
)
@click.option(
    "--smtp-ca",
    envvar="FLOWTRACK_SMTP_CA",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="CA bundle (PEM) the relay's certificate is checked against (default: the system's).",
)
@security_options
def serve(
    listen: str,
    database: str,
    durability: str,
    grace: float,
    strict_campaigns: bool,
    store_ip: bool,
    max_future_skew: float,
    http_max_connections: int,
    log_level: str,
    http: str | None,
    public_url: str,
    reports_dir: str | None,
    campaign_quiet_period: float,
    retention_interval: float,
    webhook_allow_private: bool,
    webhook_retry_base: float,
    webhook_timeout: float,
    smtp: str | None,
    smtp_starttls: str,
    smtp_from: str,
    smtp_ca: str | None,
    **security: Any,
) -> None:
    """Run the server: gRPC on --listen, the live campaign page, its JSON API
    and /metrics on --http (127.0.0.1:8080 unless told otherwise; --http off
    turns it off), on a SQLite file (created with its schema on first start)
    or a PostgreSQL database (postgresql://...) that several replicas share.
    Reports are delivered on a schedule or when a campaign completes: files
    behind signed links on --http, and signed webhooks.

    Example: flowtrack serve --listen 127.0.0.1:50051 --database ./flowtrack.db --http 127.0.0.1:8080
    """
    # grpc's C core would log its own bind error before ours; ours says it in one line.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    if webhook_timeout > MAX_WEBHOOK_TIMEOUT:
        raise click.BadParameter(f"at most {MAX_WEBHOOK_TIMEOUT:g}s", param_hint="--webhook-timeout")
    relay: SmtpServer | None = None
    if smtp:
        try:
            relay = parse_smtp(
                smtp,
                password=os.environ.get("FLOWTRACK_SMTP_PASSWORD", ""),
                starttls=smtp_starttls,
                sender=smtp_from,
                ca_file=smtp_ca,
            )
        except ValueError as error:  # its message never holds the password
            raise click.UsageError(str(error)) from None
    from flowtrack.server import StartupError
    from flowtrack.server import serve as run

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Only the default address may be given up (in use: no page); one given is required.
    source = click.get_current_context().get_parameter_source("http")
    http_fallback = source in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
    http_address = None if http is None or http.strip().lower() in ("", "off", "none") else http
    settings = Settings(
        listen=listen,
        database=database,
        durability=durability,
        grace=grace,
        strict_campaigns=strict_campaigns,
        store_ip=store_ip,
        max_future_skew=max_future_skew,
        http=http_address,
        http_fallback=http_fallback,
        http_max_connections=http_max_connections,
        public_url=public_url,
        reports_dir=reports_dir,
        campaign_quiet_period=campaign_quiet_period,
        retention_interval=retention_interval,
        webhook_allow_private=webhook_allow_private,
        webhook_retry_base=webhook_retry_base,
        webhook_timeout=webhook_timeout,
        smtp=relay,
        **security,
    )
    try:
        asyncio.run(run(settings))
    except StartupError as error:
        click.echo(f"flowtrack: {error}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        pass


# `serve --help` names each option's FLOWTRACK_* variable.
for _param in serve.params:
    if isinstance(_param, click.Option):
        _param.show_envvar = True


def main() -> None:
    try:
        cli()
    except BrokenPipeError:
        # `flowtrack report X --json | head`: the reader left; that is not an error.
        sys.stderr.close()
        sys.exit(0)


cli.add_command(keys)
cli.add_command(backup)
cli.add_command(db)
