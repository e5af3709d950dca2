"""How the CLI reaches a server: address, TLS and API key options (flags or
FLOWTRACK_* variables), the one function that opens a channel, and the one
place where a failed RPC becomes a one-line message and an exit code."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import click
import grpc
from click.core import ParameterSource
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from flowtrack.v1 import campaign_pb2_grpc, ingest_pb2_grpc, report_pb2_grpc

DEFAULT_PORT = 50051
DEFAULT_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"

# Exit codes, documented in docs/cli.md.
EXIT_SERVER_ERROR = 1  # the server answered with an error status
EXIT_USAGE = 2  # click's own code for bad flags
EXIT_UNREACHABLE = 3  # no server answered (refused, unresolvable, timed out)


class CliError(click.ClickException):
    """An error said in one line on stderr, `flowtrack: ...`, with an exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_SERVER_ERROR) -> None:
        super().__init__(" ".join(message.split()))
        # click reads exit_code from the exception; click >= 8.5 declares it a
        # ClassVar, so it is set per instance without the typed attribute path.
        setattr(self, "exit_code", exit_code)  # noqa: B010

    def show(self, file: Any = None) -> None:
        click.echo(f"flowtrack: {self.message}", err=True)


@dataclass(frozen=True)
class ConnectionOptions:
    """Where the server is and how to authenticate to it."""

    address: str = DEFAULT_ADDRESS
    api_key: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    timeout: float = 30.0


def open_channel(options: ConnectionOptions) -> grpc.Channel:
    """The one place the CLI opens a channel: plaintext, or TLS when a CA or a
    client certificate is given; the API key is sent with every call."""
    from flowtrack.channel import client_channel

    try:
        return client_channel(
            options.address,
            tls_ca=options.tls_ca,
            tls_cert=options.tls_cert,
            tls_key=options.tls_key,
            api_key=options.api_key,
        )
    except ValueError as error:
        raise CliError(str(error), EXIT_USAGE) from None
    except OSError as error:
        raise CliError(f"cannot read {error.filename}: {error.strerror}", EXIT_USAGE) from None


def with_default_port(address: str) -> str:
    """`address` with flowtrack's port when it names none: `host` ->
    `host:50051`, `::1` or `[::1]` -> `[::1]:50051`. (gRPC itself would use
    443.) Targets with a scheme (`dns:///host:port`, `unix:/path`) are left
    as they are; an empty address is the default one."""
    if not address:
        return DEFAULT_ADDRESS
    if "://" in address or address.startswith(("unix:", "unix-abstract:", "vsock:", "ipv4:", "ipv6:", "dns:")):
        return address
    if address.startswith("["):  # [v6] or [v6]:port
        return address if "]:" in address else f"{address}:{DEFAULT_PORT}"
    if address.count(":") > 1:  # a bare IPv6 address: it cannot carry a port
        return f"[{address}]:{DEFAULT_PORT}"
    if ":" in address:
        return address
    return f"{address}:{DEFAULT_PORT}"


@dataclass
class Stubs:
    """The three services on one channel, with the options that opened it."""

    options: ConnectionOptions
    channel: grpc.Channel
    campaigns: campaign_pb2_grpc.CampaignServiceStub
    ingest: ingest_pb2_grpc.IngestServiceStub
    reports: report_pb2_grpc.ReportServiceStub

    @property
    def timeout(self) -> float:
        """Deadline of unary calls, seconds."""
        return self.options.timeout


@contextmanager
def connect(options: ConnectionOptions) -> Iterator[Stubs]:
    """Stubs on a fresh channel; any RPC error escaping the block becomes a CliError."""
    channel = open_channel(options)
    try:
        with rpc_errors(options):
            yield Stubs(
                options,
                channel,
                campaign_pb2_grpc.CampaignServiceStub(channel),
                ingest_pb2_grpc.IngestServiceStub(channel),
                report_pb2_grpc.ReportServiceStub(channel),
            )
    finally:
        channel.close()


@contextmanager
def rpc_errors(options: ConnectionOptions) -> Iterator[None]:
    try:
        yield
    except grpc.RpcError as error:
        raise describe(error, options) from None


def describe(error: grpc.RpcError, options: ConnectionOptions) -> CliError:
    """One line for a failed call: what went wrong, and for INVALID_ARGUMENT
    every field the server refused and why."""
    code: grpc.StatusCode | None = error.code() if isinstance(error, grpc.Call) else None
    details = (error.details() if isinstance(error, grpc.Call) else None) or str(error)
    if code == grpc.StatusCode.UNAVAILABLE:
        return CliError(f"cannot reach the server at {options.address}: {details}", EXIT_UNREACHABLE)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return CliError(
            f"the server at {options.address} did not answer within {options.timeout:g} s", EXIT_UNREACHABLE
        )
    if code == grpc.StatusCode.UNAUTHENTICATED:
        # The server's message speaks of headers; a CLI user passes a flag.
        if options.api_key is None:
            line = (
                "UNAUTHENTICATED: this server needs an API key: pass --api-key KEY or set FLOWTRACK_API_KEY "
                "(an administrator makes one with `flowtrack keys create`)"
            )
        else:
            line = f"UNAUTHENTICATED: {details} (the key given with --api-key or FLOWTRACK_API_KEY)"
        return CliError(line, EXIT_SERVER_ERROR)
    violations = field_violations(error)
    name = code.name if code is not None else "ERROR"
    line = f"{name}: {details}"
    # Every violation, unless the status message already says it.
    missing = [f"{field}: {why}" for field, why in violations if f"{field}: {why}" not in details]
    if missing:
        line += " (" + "; ".join(missing) + ")"
    return CliError(line, EXIT_SERVER_ERROR)


def field_violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    """(field, description) of the BadRequest detail of a failed call, if any."""
    try:
        status = rpc_status.from_call(error)
    except (ValueError, AttributeError, TypeError):
        return []
    if status is None:
        return []
    found: list[tuple[str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.extend((v.field, v.description) for v in bad.field_violations)
    return found


F = TypeVar("F", bound=Callable[..., Any])


def connection_options(command: F) -> F:
    """Adds --address, --api-key, --tls-ca, --tls-cert, --tls-key and --timeout
    to a command, and passes them on as one `connection` argument. Each may
    also come before the command name (`flowtrack --address X stats C`, see
    group_connection_options); given after it, it wins."""

    @functools.wraps(command)
    def wrapper(
        *args: Any,
        address: str,
        api_key: str | None,
        tls_ca: str | None,
        tls_cert: str | None,
        tls_key: str | None,
        timeout: float,
        **kwargs: Any,
    ) -> Any:
        given = dict(
            address=address, api_key=api_key, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, timeout=timeout
        )
        values = {**given, **_given_before_the_command(set(given))}
        options = ConnectionOptions(
            with_default_port(values["address"]),
            values["api_key"] or None,
            values["tls_ca"],
            values["tls_cert"],
            values["tls_key"],
            values["timeout"],
        )
        return command(*args, connection=options, **kwargs)

    result: Any = wrapper
    for decorate in reversed(_options(for_group=False)):
        result = decorate(result)
    return result  # type: ignore[no-any-return]


def group_connection_options(group: F) -> F:
    """The same options on the `flowtrack` group, for `flowtrack --address X
    stats C`: no default and no variable of their own (the command's
    options carry those), they only pass on what was typed before the command."""
    result: Any = group
    for decorate in reversed(_options(for_group=True)):
        result = decorate(result)
    return result  # type: ignore[no-any-return]


def _given_before_the_command(names: set[str]) -> dict[str, Any]:
    """The connection options typed before the command name, except those
    typed after it too (the command's own win)."""
    context = click.get_current_context(silent=True)
    if context is None:
        return {}
    root = context.find_root()
    if root is context:
        return {}
    found: dict[str, Any] = {}
    for name in names:
        if root.params.get(name) is None:
            continue
        if context.get_parameter_source(name) == ParameterSource.COMMANDLINE:
            continue
        found[name] = root.params[name]
    return found


def _options(*, for_group: bool) -> list[Callable[[F], F]]:
    """The connection options: for a command (defaults, FLOWTRACK_* variables)
    or for the group (neither: see group_connection_options)."""

    def option(flag: str, envvar: str, default: Any, help: str, **extra: Any) -> Callable[[F], F]:
        if for_group:
            return click.option(flag, default=None, allow_from_autoenv=False, help=help, **extra)
        return click.option(flag, envvar=envvar, default=default, help=f"{help} Env: {envvar}.", **extra)

    path = click.Path(dir_okay=False)
    return [
        option(
            "--address",
            "FLOWTRACK_ADDRESS",
            DEFAULT_ADDRESS,
            f"The flowtrack server (port {DEFAULT_PORT} when none is given).",
            metavar="HOST:PORT",
            show_default=not for_group,
        ),
        option("--api-key", "FLOWTRACK_API_KEY", None, "API key sent with every call.", metavar="KEY"),
        option("--tls-ca", "FLOWTRACK_TLS_CA", None, "Use TLS, trusting this CA certificate (PEM).", type=path),
        option("--tls-cert", "FLOWTRACK_TLS_CLIENT_CERT", None, "Client certificate (PEM) for mutual TLS.", type=path),
        option("--tls-key", "FLOWTRACK_TLS_CLIENT_KEY", None, "Client private key (PEM) for mutual TLS.", type=path),
        option(
            "--timeout",
            "FLOWTRACK_TIMEOUT",
            30.0,
            "Seconds to wait for a unary call.",
            type=click.FloatRange(min=0, min_open=True),
            show_default=not for_group,
        ),
    ]
