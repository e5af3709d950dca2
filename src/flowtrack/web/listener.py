"""The HTTP listener: uvicorn serving the Starlette app as a task of the
gRPC server's event loop.

- One process, one loop: the handlers call the servicers directly, and
  uvicorn's own signal handling is off (flowtrack's `serve` owns SIGINT/SIGTERM).
- Bound here, before the server reports started, so that a port in use or
  an unreadable certificate stops the start-up with one line.
- Limits: at most `http_max_connections` connections and requests at once
  (uvicorn's limit_concurrency: more get 503 at once); request headers up
  to 16 KiB (h11); request bodies up to `http_max_body_bytes` (app.Guard);
  idle keep-alive connections close after 5 s.
- TLS with the gRPC listener's certificate and key; with `--tls-client-ca`
  a client certificate signed by that CA is required here too.
- Drain (`stop`): live streams end first (WebState.stopping, set by the
  server's drain), then no new connections are accepted and requests in
  flight get up to `grace` seconds to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Generator

import uvicorn
from starlette.types import ASGIApp

from flowtrack.config import Settings

log = logging.getLogger("flowtrack")


class BindError(OSError):
    """The HTTP address cannot be bound (in use, not on this machine)."""


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # flowtrack's serve() handles the signals and calls stop()


def split_address(address: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets) -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"the HTTP address must be HOST:PORT, not {address!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class HttpListener:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        assert settings.http is not None
        host, port = split_address(settings.http)
        self.settings = settings
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(2048)
            sock.setblocking(False)
        except OSError as error:
            sock.close()
            raise BindError(f"cannot listen on {settings.http} (HTTP): {error.strerror or error}") from error
        self.socket = sock
        self.host = host
        self.port: int = sock.getsockname()[1]
        tls = bool(settings.tls_cert and settings.tls_key)
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            ws="none",
            limit_concurrency=settings.http_max_connections or None,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=max(1, round(settings.grace)),
            h11_max_incomplete_event_size=16 * 1024,
            ssl_certfile=settings.tls_cert if tls else None,
            ssl_keyfile=settings.tls_key if tls else None,
            ssl_ca_certs=settings.tls_client_ca if tls else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if tls and settings.tls_client_ca else ssl.CERT_NONE,
        )
        try:
            config.load()
        except (OSError, ssl.SSLError, ValueError) as error:
            sock.close()
            raise OSError(f"cannot set up TLS for the HTTP listener: {error}") from error
        self.server = _Server(config)
        self.task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.settings.tls_cert else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> None:
        self.task = asyncio.create_task(self.server.serve(sockets=[self.socket]), name="flowtrack-http")
        while not self.server.started:
            if self.task.done():
                self.task.result()
                raise OSError(f"the HTTP listener on {self.settings.http} did not start")
            await asyncio.sleep(0.01)

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let requests in flight finish (up to `grace`
        seconds, default the settings'), close."""
        if self.task is None:
            return
        if grace is not None:
            self.server.config.timeout_graceful_shutdown = max(1, round(grace))
        self.server.should_exit = True
        try:
            await self.task
        except (Exception, SystemExit):  # pragma: no cover - uvicorn failing on its way out
            log.exception("HTTP listener stopped with an error")
        self.socket.close()
