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

from flowtrack import __version__
from flowtrack.cli_backup import backup
from flowtrack.cli_keys import keys
from flowtrack.cli_options import security_options
from flowtrack.client.commands import COMMANDS
from flowtrack.config import Settings


@click.group(context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "FLOWTRACK"})
@click.version_option(__version__, prog_name="flowtrack")
def cli() -> None:
    """flowtrack: track the execution of flow-based messaging campaigns.

    `serve` runs the server; every other command is a client of one (see
    --address, or FLOWTRACK_ADDRESS).

    Example: flowtrack serve
    """


@cli.command()
@click.option(
    "--listen",
    envvar="FLOWTRACK_LISTEN",
    default=Settings.listen,
    show_default=True,
    help="Address to listen on, HOST:PORT (port 0 picks a free one).",
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
    "--log-level",
    envvar="FLOWTRACK_LOG_LEVEL",
    default="INFO",
    show_default=True,
    help="Logging level.",
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
    log_level: str,
    **security: Any,
) -> None:
    """Run the gRPC server on an embedded SQLite file.

    Example: flowtrack serve --listen 127.0.0.1:50051 --database ./flowtrack.db
    """
    # grpc's C core would log its own bind error before ours; ours says it in one line.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    from flowtrack.server import StartupError
    from flowtrack.server import serve as run

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(
        listen=listen,
        database=database,
        durability=durability,
        grace=grace,
        strict_campaigns=strict_campaigns,
        store_ip=store_ip,
        max_future_skew=max_future_skew,
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

for _command in COMMANDS:
    cli.add_command(_command)


def main() -> None:
    try:
        cli()
    except BrokenPipeError:
        # `flowtrack report X --json | head`: the reader left; that is not an error.
        sys.stderr.close()
        sys.exit(0)


cli.add_command(keys)
cli.add_command(backup)
