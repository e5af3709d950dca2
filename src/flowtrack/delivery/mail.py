"""Email deliveries: one attempt of a message to a mailto: endpoint, through
the operator's SMTP relay (`flowtrack serve --smtp`), with the standard
library's smtplib.

An attempt connects (smtps://: TLS at once; smtp://: STARTTLS when the
server offers it, required with --smtp-starttls required), logs in when the
relay has a user (never before TLS: over a connection without it the
attempt fails instead of sending the password), and sends the message. Its
outcome is recorded as an HTTP attempt's is: the relay's reply code as the
status code (250: accepted, a delivery), or 0 with the error when there was
no reply (refused connection, TLS failure, time-out). Every failure, 4xx
or 5xx, is retried by the same rules as a webhook's (domain/webhooks.py).

smtplib blocks: an attempt runs in one of the worker's own threads, and
when it outlives its time (--webhook-timeout) its socket is shut so the
thread ends too.
"""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
import socket
import ssl
from concurrent.futures import Executor
from email.message import EmailMessage
from typing import Any

from flowtrack.config import SmtpServer

_ERROR_CHARS = 300


class Opened:
    """The sockets an attempt opened (to shut them from another thread)."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        self.closed = False

    def add(self, sock: socket.socket) -> None:
        self.sockets.append(sock)
        if self.closed:
            self.shut()

    def shut(self) -> None:
        self.closed = True
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Smtp(smtplib.SMTP):
    def __init__(self, opened: Opened, host: str, port: int, timeout: float) -> None:
        self.opened = opened  # before connecting: _get_socket records the socket
        super().__init__(host, port, timeout=timeout)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        # smtplib's own seam for the connection (not in typeshed)
        sock: socket.socket = super()._get_socket(host, port, timeout)  # type: ignore[misc]
        self.opened.add(sock)
        return sock


class _SmtpSsl(smtplib.SMTP_SSL):
    def __init__(self, opened: Opened, host: str, port: int, timeout: float, context: ssl.SSLContext) -> None:
        self.opened = opened
        super().__init__(host, port, timeout=timeout, context=context)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        # smtplib's own seam for the connection (not in typeshed)
        sock: socket.socket = super()._get_socket(host, port, timeout)  # type: ignore[misc]
        self.opened.add(sock)
        return sock


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return " ".join(str(value).split())


def _reply(code: int, what: str, password: str) -> tuple[int, str]:
    """An SMTP reply as (status code, one-line error), the password never in it."""
    error = f"SMTP {code}: {what}"
    if password:
        error = error.replace(password, "***")
    status = code if 300 <= code <= 599 else 0  # a 2xx is never a failure's code
    return status, error[:_ERROR_CHARS]


def context_of(server: SmtpServer) -> ssl.SSLContext:
    """TLS that checks the relay's certificate and host name (against --smtp-ca, else the system's CAs)."""
    return ssl.create_default_context(cafile=server.ca_file)


def send_blocking(
    server: SmtpServer, message: EmailMessage, recipients: tuple[str, ...], timeout: float, opened: Opened
) -> tuple[int, str]:
    """One attempt (in a thread): (SMTP reply code, error); (250, "") when the relay took the message."""
    context = context_of(server)
    client: smtplib.SMTP | None = None
    try:
        # Connected by the constructor, which also keeps the host name TLS sends (SNI) and checks.
        if server.scheme == "smtps":
            client = _SmtpSsl(opened, server.host, server.port, timeout, context)
        else:
            client = _Smtp(opened, server.host, server.port, timeout)
        encrypted = server.scheme == "smtps"
        client.ehlo()
        if not encrypted and client.has_extn("starttls"):
            client.starttls(context=context)
            client.ehlo()
            encrypted = True
        if not encrypted and server.starttls == "required":
            return 0, "the SMTP server does not offer STARTTLS (--smtp-starttls required)"
        if server.user:
            if not encrypted:
                return 0, "the SMTP server does not offer STARTTLS: the password is not sent without TLS"
            client.login(server.user, server.password)
        refused = client.send_message(message, server.envelope_sender, list(recipients))
        with contextlib.suppress(smtplib.SMTPException, OSError):
            client.quit()
        if refused:  # some recipients took it: a retry would send it to them again
            some = ", ".join(f"{a} ({c} {_text(m)})" for a, (c, m) in refused.items())
            return 250, f"accepted, but refused for {some}"[:_ERROR_CHARS]
        return 250, ""
    except smtplib.SMTPAuthenticationError as failure:
        return _reply(failure.smtp_code, f"authentication failed: {_text(failure.smtp_error)}", server.password)
    except smtplib.SMTPRecipientsRefused as failure:
        found = list(failure.recipients.items())
        code = found[0][1][0] if found else 0
        some = ", ".join(f"{a} ({c} {_text(m)})" for a, (c, m) in found)
        return _reply(code, f"every recipient refused: {some}", server.password)
    except smtplib.SMTPSenderRefused as failure:
        why = f"sender {failure.sender} refused: {_text(failure.smtp_error)}"
        return _reply(failure.smtp_code, why, server.password)
    except smtplib.SMTPResponseException as failure:
        return _reply(failure.smtp_code, _text(failure.smtp_error), server.password)
    except ssl.SSLCertVerificationError as failure:
        return 0, f"TLS: the SMTP server's certificate is not trusted: {failure.verify_message}"[:_ERROR_CHARS]
    except (smtplib.SMTPException, OSError) as failure:
        if opened.closed:
            return 0, "stopped: the attempt took too long"
        text = f"{type(failure).__name__}: {_text(failure)}"
        if server.password:
            text = text.replace(server.password, "***")
        return 0, text[:_ERROR_CHARS]
    finally:
        if client is not None:
            client.close()


async def send(
    server: SmtpServer, message: EmailMessage, recipients: tuple[str, ...], timeout: float, threads: Executor
) -> tuple[int, str]:
    """One attempt within `timeout` seconds (TimeoutError past it, its
    connection shut so its thread ends)."""
    opened = Opened()
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(threads, send_blocking, server, message, recipients, timeout, opened)
    try:
        async with asyncio.timeout(timeout):
            return await asyncio.shield(future)
    except (TimeoutError, asyncio.CancelledError):
        opened.shut()
        raise
