"""`flowtrack retention`: show, set and apply a business's retention
(RetentionService; docs/retention.md). Like every client command, a failed
call is one line on stderr and a non-zero exit."""

from __future__ import annotations

import click

from flowtrack.client import render
from flowtrack.client.connection import ConnectionOptions, connect, connection_options
from flowtrack.v1 import retention_pb2, retention_pb2_grpc


def _days(days: int) -> str:
    return "forever" if days == 0 else f"{days} day{'s' if days != 1 else ''}"


def _show(kept: retention_pb2.Retention, as_json: bool) -> None:
    if as_json:
        click.echo(render.json_line(kept))
        return
    click.echo(f"history (events, clicks, replies, taps): {_days(kept.history_days)}")
    click.echo(f"completed campaigns:                     {_days(kept.campaign_days)}")
    if kept.HasField("pruned_before"):
        click.echo(f"pruned before:                           {kept.pruned_before.ToJsonString()}")


@click.group()
def retention() -> None:
    """How long the caller's business keeps its history and completed campaigns.

    History (events, clicks, replies, button taps) older than its retention
    is deleted by a sweep; counters, each message's state and first times
    stay, so stats do not change. See docs/retention.md.

    Example: flowtrack retention set --history-days 30
    """


@retention.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print the Retention as JSON.")
@connection_options
def show(as_json: bool, connection: ConnectionOptions) -> None:
    """Show the business's retention (a read key is enough).

    Example: flowtrack retention show
    """
    with connect(connection) as stubs:
        api = retention_pb2_grpc.RetentionServiceStub(stubs.channel)
        reply = api.GetRetention(retention_pb2.GetRetentionRequest(), timeout=stubs.timeout)
    _show(reply.retention, as_json)


@retention.command("set")
@click.option(
    "--history-days",
    type=click.IntRange(min=0),
    required=True,
    help="Days events, clicks, replies and button taps are kept (by occurred_at); 0 = forever.",
)
@click.option(
    "--campaign-days",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Days a completed campaign is kept after it completed, then deleted with all its data; 0 = forever.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the Retention as JSON.")
@connection_options
def set_(history_days: int, campaign_days: int, as_json: bool, connection: ConnectionOptions) -> None:
    """Set the business's retention (admin key). Events older than the
    history's horizon are refused from now on (OUTSIDE_RETENTION).

    Example: flowtrack retention set --history-days 30 --campaign-days 365
    """
    wanted = retention_pb2.Retention(history_days=history_days, campaign_days=campaign_days)
    with connect(connection) as stubs:
        api = retention_pb2_grpc.RetentionServiceStub(stubs.channel)
        reply = api.SetRetention(retention_pb2.SetRetentionRequest(retention=wanted), timeout=stubs.timeout)
    _show(reply.retention, as_json)


@retention.command("apply")
@click.option("--json", "as_json", is_flag=True, help="Print the ApplyRetentionResponse as JSON.")
@connection_options
def apply(as_json: bool, connection: ConnectionOptions) -> None:
    """Delete now what is past the business's retention (admin key); prints
    the rows deleted per table. The server also does this by itself every
    --retention-interval.

    Example: flowtrack retention apply
    """
    with connect(connection) as stubs:
        api = retention_pb2_grpc.RetentionServiceStub(stubs.channel)
        # A sweep of a big history takes a while: longer than a unary call's usual deadline.
        reply = api.ApplyRetention(retention_pb2.ApplyRetentionRequest(), timeout=max(stubs.timeout, 600.0))
    if as_json:
        click.echo(render.json_line(reply))
        return
    for pruned in reply.pruned:
        click.echo(f"{pruned.table:<14} {pruned.rows:>10,} deleted")
    if reply.HasField("history_horizon"):
        click.echo(f"history before {reply.history_horizon.ToJsonString()} is gone")


COMMANDS: list[click.Command] = [retention]
