"""`flowtrack settings`: a business's settings (SettingsService)."""

from __future__ import annotations

import re
from typing import Any

import click
from google.protobuf import duration_pb2

from flowtrack.client import render
from flowtrack.client.connection import ConnectionOptions, connect, connection_options
from flowtrack.v1 import settings_pb2, settings_pb2_grpc

_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "": 1000}
_THRESHOLD = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|)\s*")

# Re-classifying a large business's clicks takes a while: the call may wait
# this long (then the server finishes it in the background).
UPDATE_TIMEOUT = 600.0


class Threshold(click.ParamType[int]):
    """A threshold such as 2s, 1500ms, 0.5s or 0 (the rule off), as milliseconds."""

    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        found = _THRESHOLD.fullmatch(str(value))
        if not found:
            self.fail(f"{value!r} is not a duration such as 2s, 1500ms or 0", param, ctx)
        return round(float(found.group(1)) * _UNITS[found.group(2)])


def _shown(rules: settings_pb2.BotClickRules) -> list[str]:
    ms = rules.threshold.ToMilliseconds()
    timing = f"{ms / 1000:g}s after delivery" if ms else "off"
    return [
        f"bot click threshold:       {timing}",
        f"crawler user agent is bot: {'yes' if rules.crawler_user_agent_is_bot else 'no'}",
        f"no user agent is bot:      {'yes' if rules.no_user_agent_is_bot else 'no'}",
    ]


@click.group()
def settings() -> None:
    """The business's settings: what counts as a bot click.

    A click is a bot's when its user agent is a known crawler or link-preview
    fetcher (WhatsApp, Slack, Facebook, Twitter and iMessage previews...),
    when it has no user agent, or when it came sooner after its message's
    delivery than the threshold (2s unless set). Stats count human and bot
    clicks apart; the link click rate counts human clickers.

    Example: flowtrack settings set --bot-click-threshold 5s
    """


@settings.command("show")
@click.option("--json", "as_json", is_flag=True, help="Canonical proto3 JSON (lowerCamelCase names).")
@connection_options
def show(as_json: bool, connection: ConnectionOptions) -> None:
    """The business's settings (the defaults if never set). Needs the read scope.

    Example: flowtrack settings show
    """
    with connect(connection) as stubs:
        api = settings_pb2_grpc.SettingsServiceStub(stubs.channel)
        reply = api.GetSettings(settings_pb2.GetSettingsRequest(), timeout=stubs.timeout)
    if as_json:
        click.echo(render.json_line(reply.settings))
        return
    for line in _shown(reply.settings.bot_clicks):
        click.echo(line)
    if reply.HasField("reclassification"):
        so_far = reply.reclassification.reclassified_clicks
        click.echo(f"re-classifying clicks:     under way ({so_far} re-classified so far)")


@settings.command("set")
@click.option(
    "--bot-click-threshold",
    type=Threshold(),
    default=None,
    help="A click sooner than this after its message's delivery is a bot's (2s, 1500ms; 0 turns the rule off).",
)
@click.option(
    "--crawler-ua-is-bot/--crawler-ua-is-human",
    default=None,
    help="Whether a known crawler or link-preview user agent makes a click a bot's.",
)
@click.option(
    "--no-ua-is-bot/--no-ua-is-human",
    default=None,
    help="Whether a click without a user agent is a bot's.",
)
@connection_options
def set_settings(
    bot_click_threshold: int | None,
    crawler_ua_is_bot: bool | None,
    no_ua_is_bot: bool | None,
    connection: ConnectionOptions,
) -> None:
    """Change the settings given; the others stay. A change of the bot rules
    re-classifies the business's stored clicks (stats, breakdowns and the
    click report follow) before it returns; if the command is interrupted
    or times out meanwhile, the server finishes it in the background. Needs
    the admin scope.

    Example: flowtrack settings set --bot-click-threshold 5s --no-ua-is-human
    """
    request = settings_pb2.UpdateSettingsRequest()
    if bot_click_threshold is not None:
        request.bot_click_threshold.CopyFrom(duration_pb2.Duration(seconds=0, nanos=0))
        request.bot_click_threshold.FromMilliseconds(bot_click_threshold)
    if crawler_ua_is_bot is not None:
        request.crawler_user_agent_is_bot = crawler_ua_is_bot
    if no_ua_is_bot is not None:
        request.no_user_agent_is_bot = no_ua_is_bot
    with connect(connection) as stubs:
        api = settings_pb2_grpc.SettingsServiceStub(stubs.channel)
        reply = api.UpdateSettings(request, timeout=max(stubs.timeout, UPDATE_TIMEOUT))
    for line in _shown(reply.settings.bot_clicks):
        click.echo(line)
    click.echo(f"re-classified clicks:      {reply.reclassified_clicks}")


COMMANDS: list[click.Command] = [settings]
