"""The HTTP listener: uvicorn serving the Starlette app as a task of the
gRPC server's event loop.

- One process, one loop: the handlers call the servicers directly, and
  uvicorn's own signal handling is off (flowtrack's `serve` owns SIGINT/SIGTERM).
- Bound here, before the server reports started, so that a port in use or
  an unreadable certificate stops the start-up with one line.
- Limits, kept by `Protocol` (uvicorn's h11 protocol with the edges a public
  listener needs) and `Busy`:
  - a request's line and headers must arrive within `http_header_timeout`
    seconds (from the connection, or from the end of the previous
    response), else 408 and the connection closes: a client that sends its
    headers slowly cannot hold a connection for ever;
  - a request's body must arrive within `http_body_timeout` seconds of its
    headers, else 408 and the connection closes (the handler reading it is
    told the client went away): a client that sends a body a byte at a time
    cannot hold a request slot for ever;
  - the request line and headers together up to `http_max_header_bytes`
    (16 KiB): 431 above, 414 for a request line over 8 KiB (h11 alone only
    bounds what arrives in pieces);
  - at most `http_max_connections` (+ RESERVE) connections open: one more
    closes the oldest connection still waiting for a request (idle
    keep-alive, or headers not complete), so connections that send nothing
    useful cannot keep /metrics or sign-in out; if every connection is busy
    it gets 503;
  - at most `http_max_connections_per_address` connections from one client
    address (more get 429 at once);
  - at most `http_max_connections` requests served at once (more get 503),
    and RESERVE more for /metrics and sign-in (RESERVED_PATHS): a scrape and
    a sign-in get through while live streams fill every other slot;
  - request bodies up to `http_max_body_bytes` (app.Guard); idle
    keep-alive connections close after 5 s.
  A refused connection gets its one-line answer, its writing side is shut,
  and it is closed LINGER seconds later (what it sends meanwhile is read
  and dropped), so that the client reads the answer rather than a reset.
- TLS with the gRPC listener's certificate and key; with `--tls-client-ca`
  a client certificate signed by that CA is required here too.
- Drain (`stop`): live streams end first (WebState.stopping, set by the
  server's drain), then no new connections are accepted and requests in
  flight get up to `grace` seconds to finish.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import http
import logging
import re
import socket
import ssl
from collections.abc import Generator
from typing import Any, ClassVar

import h11
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from flowtrack.config import Settings

log = logging.getLogger("flowtrack")


class BindError(OSError):
    """The HTTP address cannot be bound (in use, not on this machine)."""


# The longest request line (414 above), whatever the header limit.
MAX_REQUEST_LINE = 8 * 1024
# Seconds a refused connection stays open after its answer (see the module doc).
LINGER = 1.0
# Requests (and connections) kept beyond --http-max-connections for the
# short requests that must get through when the listener is full: a
# Prometheus scrape and a person signing in.
RESERVE = 8
RESERVED_PATHS = frozenset({"/metrics", "/signin"})
# The end of a request's head, as h11 finds it.
_HEAD_END = re.compile(rb"\n\r?\n")


def plain_response(status: int, text: str) -> bytes:
    """A whole HTTP/1.1 response with a one-line text body, closing the connection."""
    body = text.encode() + b"\n"
    head = (
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
        "content-type: text/plain; charset=utf-8\r\n"
        "x-content-type-options: nosniff\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


class Edges:
    """The limits of one listener, and the counts its connections share."""

    def __init__(self, settings: Settings) -> None:
        self.max_connections = settings.http_max_connections
        self.per_address = settings.http_max_connections_per_address
        self.header_timeout = settings.http_header_timeout
        self.body_timeout = settings.http_body_timeout
        self.max_head = settings.http_max_header_bytes
        self.max_line = min(MAX_REQUEST_LINE, self.max_head)
        self.by_address: collections.Counter[str] = collections.Counter()


class Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline, a cap on the size of
    a request's head, and the connection caps (see the module doc). A
    subclass per listener sets `edges`."""

    edges: ClassVar[Edges]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.address: str | None = None
        self.refused = False
        # loop.time() since which the head of the next request is awaited.
        self.waiting_since = 0.0
        self.head_deadline: asyncio.TimerHandle | None = None
        self.body_deadline: asyncio.TimerHandle | None = None

    # -- connections -------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        edges = self.edges
        address = self.client[0] if self.client else None
        if address is not None and edges.per_address and edges.by_address[address] >= edges.per_address:
            self.refuse(
                429,
                f"too many connections from {address}: at most {edges.per_address} at once"
                " (--http-max-connections-per-address)",
            )
            return
        if address is not None:
            self.address = address
            edges.by_address[address] += 1
        if edges.max_connections and len(self.connections) > edges.max_connections + RESERVE:
            oldest = min(
                (c for c in self.connections if isinstance(c, Protocol) and c is not self and c.waiting()),
                key=lambda c: c.waiting_since,
                default=None,
            )
            if oldest is None:
                self.refuse(
                    503,
                    f"the server holds as many HTTP connections as it may ({edges.max_connections}"
                    f" + {RESERVE}, --http-max-connections), each serving a request: retry later",
                )
                return
            oldest.transport.close()  # waiting for a request: nothing is lost
        self.await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_deadline()
        self.cancel_body_deadline()
        if self.address is not None:
            by_address = self.edges.by_address
            by_address[self.address] -= 1
            if by_address[self.address] <= 0:
                del by_address[self.address]
            self.address = None
        super().connection_lost(exc)

    def waiting(self) -> bool:
        """Waiting for the head of a request (none is being served)."""
        return (
            not self.refused
            and self.conn.their_state is h11.IDLE
            and (self.cycle is None or self.cycle.response_complete)
            and not self.transport.is_closing()
        )

    def refuse(self, status: int, text: str) -> None:
        """Answer `status` with `text`, stop reading requests, close soon."""
        self.refused = True
        self.cancel_deadline()
        transport = self.transport
        transport.write(plain_response(status, text))
        if transport.can_write_eof():
            transport.write_eof()
            self.loop.call_later(LINGER, transport.close)
        else:  # TLS: no half-close
            transport.close()

    # -- the head of each request ----------------------------------------------------

    def await_head(self) -> None:
        self.cancel_deadline()
        if self.edges.header_timeout > 0:
            self.waiting_since = self.loop.time()
            self.head_deadline = self.loop.call_later(self.edges.header_timeout, self.head_timed_out)

    def cancel_deadline(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def head_timed_out(self) -> None:
        self.head_deadline = None
        if not self.waiting():
            return  # a request is being served: the deadline is set again when it ends
        if self.conn.trailing_data[0].strip():
            self.refuse(408, f"the request's headers did not arrive within {self.edges.header_timeout:g} s")
        else:  # nothing sent: close quietly, as an idle keep-alive connection is
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self.await_head()

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return  # read and dropped until the connection closes
        super().data_received(data)

    def handle_events(self) -> None:
        if self.conn.their_state is h11.IDLE and not self.refused:
            refusal = self.oversize_head()
            if refusal is not None:
                self.refuse(*refusal)
                return
        super().handle_events()
        self.watch_body()

    # -- the body of each request ------------------------------------------------------

    def watch_body(self) -> None:
        """Start the body's deadline when a request's headers have arrived
        and its body has not; stop it once the body is whole."""
        if self.conn.their_state is h11.SEND_BODY and not self.refused:
            if self.body_deadline is None and self.edges.body_timeout > 0:
                self.body_deadline = self.loop.call_later(self.edges.body_timeout, self.body_timed_out)
        else:
            self.cancel_body_deadline()

    def cancel_body_deadline(self) -> None:
        if self.body_deadline is not None:
            self.body_deadline.cancel()
            self.body_deadline = None

    def body_timed_out(self) -> None:
        self.body_deadline = None
        if self.conn.their_state is not h11.SEND_BODY or self.transport.is_closing():
            return
        cycle = self.cycle
        started = cycle is not None and cycle.response_started
        if cycle is not None:  # the handler's receive() returns http.disconnect; what it sends is dropped
            cycle.disconnected = True
            cycle.message_event.set()
        if started:
            self.transport.close()
        else:
            self.refuse(408, f"the request's body did not arrive within {self.edges.body_timeout:g} s")

    def oversize_head(self) -> tuple[int, str] | None:
        """(414 or 431, why) if the head of the request being received is over the caps."""
        edges = self.edges
        data = self.conn.trailing_data[0]
        start = len(data) - len(data.lstrip(b"\r\n"))  # blank lines before a request are skipped
        line_end = data.find(b"\n", start, start + edges.max_line + 2)  # the line, then CR LF
        if line_end < 0:
            too_long = len(data) - start > edges.max_line + 1
        else:
            too_long = line_end - start - (data[line_end - 1 : line_end] == b"\r") > edges.max_line
        if too_long:
            return 414, f"the request line is longer than {edges.max_line} bytes"
        if line_end < 0:
            return None
        if _HEAD_END.search(data, line_end, start + edges.max_head) is None and len(data) - start >= edges.max_head:
            return 431, f"the request's line and headers are larger than {edges.max_head} bytes"
        return None


def protocol_for(settings: Settings) -> type[Protocol]:
    return type("ListenerProtocol", (Protocol,), {"edges": Edges(settings)})


class Busy:
    """ASGI wrapper: at most `limit` requests served at once (0: no cap), and
    RESERVE more for RESERVED_PATHS; more get 503."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.running = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.limit:
            await self.app(scope, receive, send)
            return
        if self.running >= self.limit + (RESERVE if scope["path"] in RESERVED_PATHS else 0):
            text = (
                f"the server is serving as many HTTP requests as it may ({self.limit}, --http-max-connections):"
                " retry later\n"
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", str(len(text)).encode()),
                        (b"retry-after", b"1"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": text})
            return
        self.running += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.running -= 1


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
            Busy(app, settings.http_max_connections),
            http=protocol_for(settings),
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            ws="none",
            limit_concurrency=None,  # Busy and Protocol: uvicorn's counts idle connections as busy
            timeout_keep_alive=5,
            timeout_graceful_shutdown=max(1, round(settings.grace)),
            h11_max_incomplete_event_size=settings.http_max_header_bytes,
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
