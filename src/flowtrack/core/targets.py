"""Where a webhook may be sent: a URL's host resolved once and every address
checked (domain/webhooks.refused_address). The API refuses an endpoint
whose host is private (api/webhooks.py), and every delivery attempt
connects only to the addresses checked here (delivery/worker.py)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from flowtrack.domain import webhooks as rules


async def _getaddrinfo(host: str) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


# The resolver seam: a host's addresses in the resolver's order.
resolve: Callable[[str], Awaitable[list[str]]] = _getaddrinfo


@dataclass(frozen=True, slots=True)
class Target:
    """Where a webhook URL may be sent: `addresses` are the checked ones to
    connect to (empty: let the HTTP client resolve, for an IP literal or
    with --webhook-allow-private), or `refused` says why not."""

    addresses: tuple[str, ...] = ()
    refused: str | None = None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


async def check_target(url: str, allow_private: bool) -> Target:
    """Resolve `url`'s host once and check every address. A name's checked
    addresses are what the attempt connects to (pinned): a resolver that
    answers a public address to the check and a private one to the
    connection (DNS rebinding) gets nowhere."""
    host = urlsplit(url).hostname or ""
    if allow_private:
        return Target()
    try:
        addresses = await resolve(host)
    except OSError as error:
        return Target(refused=f"cannot resolve {host}: {error.strerror or error}")
    if not addresses:
        return Target(refused=f"cannot resolve {host}: no address")
    bad = rules.refused_address(addresses)
    if bad is not None:
        return Target(refused=f"{host} resolves to {bad}, a private or reserved address")
    if _is_ip(host):
        return Target()
    return Target(addresses=tuple(dict.fromkeys(addresses))[: rules.MAX_PINNED_ADDRESSES])


async def refused_target(url: str, allow_private: bool) -> str | None:
    """Why `url` must not be called (its host resolves to a private,
    loopback or reserved address, or does not resolve), or None."""
    return (await check_target(url, allow_private)).refused
