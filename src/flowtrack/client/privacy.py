"""The client commands of privacy: `flowtrack recipients erase` and
`flowtrack recipients erasures`."""

from __future__ import annotations

import click

from flowtrack.client import render
from flowtrack.client.connection import CliError, ConnectionOptions, connect, connection_options
from flowtrack.v1 import privacy_pb2, privacy_pb2_grpc

# An erasure of a large business takes many bounded steps: its call may outlast --timeout.
ERASE_TIMEOUT = 3600.0
EXIT_REFUSED = 1


@click.group()
def recipients() -> None:
    """Recipients: erase one (the right to be forgotten), list erasures.

    Example: flowtrack recipients erase +15550001 --yes
    """


@recipients.command("erase")
@click.argument("recipient")
@click.option("--yes", is_flag=True, help="Erase it: without --yes the command only says what it would do.")
@click.option("--json", "as_json", is_flag=True, help="The erasure's record as proto3 JSON.")
@connection_options
def erase(recipient: str, yes: bool, as_json: bool, connection: ConnectionOptions) -> None:
    """Erase a recipient of your business: its identifier becomes a
    pseudonym (erased:...) in every campaign, its variables, session and
    provider ids, reply texts, click IP, user agent and city go, and the
    report runs of its campaigns are deleted. Totals do not change; its
    later events are refused (RECIPIENT_ERASED). Needs an admin key.

    Example: flowtrack recipients erase +15550001 --yes
    """
    if not yes:
        raise CliError(
            f"this would erase {recipient} from every campaign of your business for good: its identifier"
            " becomes a pseudonym, its variables, session and provider ids, reply texts, click IP, user agent"
            " and city are removed, report runs of its campaigns are deleted, and its later events are refused."
            " Totals stay. Run again with --yes to erase it.",
            EXIT_REFUSED,
        )
    with connect(connection) as stubs:
        api = privacy_pb2_grpc.PrivacyServiceStub(stubs.channel)
        request = privacy_pb2.EraseRecipientRequest(recipient=recipient)
        reply = api.EraseRecipient(request, timeout=max(stubs.timeout, ERASE_TIMEOUT))
    e = reply.erasure
    if as_json:
        click.echo(render.json_line(e))
        return
    rows = ", ".join(f"{table} {n}" for table, n in sorted(e.rows.items())) or "no rows"
    click.echo(f"{e.id}: erased in {e.campaigns} campaign(s), rows changed: {rows}")


@recipients.command("erasures")
@click.option("--json", "as_json", is_flag=True, help="One proto3 JSON erasure per line.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most this many.")
@connection_options
def erasures(as_json: bool, limit: int, connection: ConnectionOptions) -> None:
    """List your business's erasures, newest first: when, by which key, rows
    changed. An erasure never names its recipient.

    Example: flowtrack recipients erasures
    """
    found: list[privacy_pb2.Erasure] = []
    token = ""
    with connect(connection) as stubs:
        api = privacy_pb2_grpc.PrivacyServiceStub(stubs.channel)
        while len(found) < limit:
            request = privacy_pb2.ListErasuresRequest(page_size=min(limit - len(found), 500), page_token=token)
            reply = api.ListErasures(request, timeout=stubs.timeout)
            found.extend(reply.erasures)
            token = reply.next_page_token
            if not token:
                break
    for e in found:
        if as_json:
            click.echo(render.json_line(e))
            continue
        when = e.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
        state = "done" if e.HasField("complete_time") else "unfinished"
        rows = sum(e.rows.values())
        click.echo(f"{e.id}  {when}  key {e.key_id or '-'}  {e.campaigns} campaign(s)  {rows} rows  {state}")
    if not found and not as_json:
        click.echo("no erasures", err=True)


COMMANDS: list[click.Command] = [recipients]
