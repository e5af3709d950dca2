"""The HTTP listener at its edges, over real sockets: slow headers, oversized
heads, connection caps (overall and per client address) and the cap on
live streams per key. The database plays no part here: SQLite only."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from flowtrack.domain.keys import Scope
from tests.conftest import ServerThread, database_of, make_client, start_server
from tests.tenants import create_key
from tests.test_http import CAMPAIGN, fill

pytestmark = pytest.mark.sqlite_only("the HTTP listener's edges: the database plays no part")

DEADLINE = 30.0


def served(tmp_path: Path, **settings: Any) -> tuple[ServerThread, str, int]:
    server = start_server(tmp_path, http="127.0.0.1:0", **settings)
    assert server.running.http is not None
    return server, server.running.http.url, server.running.http.port


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE, source_address=(source, 0))
    return sock


def answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def status_of(data: bytes) -> int:
    assert data.startswith(b"HTTP/1.1 "), data[:200]
    return int(data.split(b" ", 2)[1])


class SlowClients:
    """`count` connections that each send a request line and then one header
    line every `every` seconds, never finishing their headers."""

    def __init__(self, port: int, count: int, every: float = 0.5, source: str = "127.0.0.1") -> None:
        self.socks: list[socket.socket] = []
        self.stop = threading.Event()
        for _ in range(count):
            sock = connect(port, source)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            self.socks.append(sock)
        self.closed: set[int] = set()
        self.thread = threading.Thread(target=self._drip, args=(every,), daemon=True)
        self.thread.start()

    def _drip(self, every: float) -> None:
        n = 0
        while not self.stop.wait(every):
            n += 1
            for i, sock in enumerate(self.socks):
                if i in self.closed:
                    continue
                try:
                    sock.sendall(f"X-Slow-{n}: {'a' * 20}\r\n".encode())
                except OSError:
                    self.closed.add(i)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(DEADLINE)
        for sock in self.socks:
            sock.close()


@pytest.fixture
def edges(tmp_path: Path) -> Iterator[tuple[ServerThread, str, int]]:
    key_db = database_of(tmp_path)
    create_key(key_db, "acme", Scope.READ)
    # No cap per address here: the slow clients and the polite ones share 127.0.0.1.
    server, url, port = served(
        tmp_path, http_max_connections=20, http_header_timeout=3.0, http_max_connections_per_address=0
    )
    yield server, url, port
    server.stop()


def test_slow_headers_do_not_take_the_listener_offline(edges: tuple[ServerThread, str, int]) -> None:
    """40 connections (more than the 20 + 8 the listener holds) drip header lines:
    /metrics and sign-in still answer at once, and the slow connections are
    closed (408) once the header timeout passes."""
    _, url, port = edges
    slow = SlowClients(port, 40)
    try:
        time.sleep(1.0)  # a few header lines each: the slow ones hold every slot they got
        start = time.monotonic()
        for _ in range(3):
            assert httpx.get(url + "/metrics", timeout=DEADLINE).status_code == 200
            r = httpx.post(url + "/signin", data={"key": "ft_not_a_key"}, timeout=DEADLINE)
            assert r.status_code == 303 and r.headers["location"] == "/signin?error=INVALID_API_KEY"
            assert httpx.get(url + "/signin", timeout=DEADLINE).status_code == 200
        assert time.monotonic() - start < 10.0  # answered, not queued behind the slow ones
        # The header timeout (3 s) ends every slow connection still open: 408,
        # or (the oldest ones, closed to make room) an empty close.
        statuses = []
        for sock in slow.socks:
            data = answer(sock)
            statuses.append(status_of(data) if data else None)
        assert set(statuses) <= {408, None} and 408 in statuses, statuses
        assert time.monotonic() - start < DEADLINE
    finally:
        slow.close()


def test_a_silent_connection_is_closed_after_the_header_timeout(edges: tuple[ServerThread, str, int]) -> None:
    _, _, port = edges
    with connect(port) as silent, connect(port) as partial:
        partial.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        start = time.monotonic()
        assert answer(silent) == b""
        data = answer(partial)
        assert status_of(data) == 408
        assert b"did not arrive within 3 s" in data
        assert 2.0 < time.monotonic() - start < 20.0


def test_a_slow_body_is_cut_at_the_body_timeout(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Two requests whose bodies drip a byte at a time hold both request
    slots (the next request is 503) until the body timeout: then 408, the
    connections close, the slots are free, and nothing is logged as a
    server error."""
    server, url, port = served(tmp_path, http_max_connections=2, http_body_timeout=2.0)
    stop = threading.Event()
    socks = [connect(port) for _ in range(2)]

    def drip() -> None:
        while not stop.wait(0.3):
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.sendall(b"k")

    dripper = threading.Thread(target=drip, daemon=True)
    try:
        for sock in socks:
            sock.sendall(
                b"POST /signin HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                b"Content-Length: 1000\r\n\r\nkey="
            )
        start = time.monotonic()
        dripper.start()
        time.sleep(0.5)
        assert httpx.get(url + "/api/campaigns", timeout=DEADLINE).status_code == 503  # both slots held
        for sock in socks:
            data = answer(sock)
            assert status_of(data) == 408, data
            assert b"body did not arrive within 2 s" in data
        assert 1.5 < time.monotonic() - start < 20.0
        assert httpx.get(url + "/api/campaigns", timeout=DEADLINE).status_code == 200
        # A body that arrives in time, in pieces, is served as usual.
        with connect(port) as sock:
            sock.sendall(b"POST /signin HTTP/1.1\r\nHost: x\r\nContent-Length: 15\r\nConnection: close\r\n")
            sock.sendall(b"Content-Type: application/x-www-form-urlencoded\r\n\r\nkey=ft_")
            time.sleep(0.5)
            sock.sendall(b"not_a_ke")
            assert status_of(answer(sock)) == 303
    finally:
        stop.set()
        for sock in socks:
            sock.close()
        server.stop()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def test_connections_per_address_are_capped(tmp_path: Path) -> None:
    server, url, port = served(tmp_path, http_max_connections_per_address=4)
    try:
        held = [connect(port, "127.0.0.2") for _ in range(4)]
        extra = connect(port, "127.0.0.2")
        extra.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        data = answer(extra)
        assert status_of(data) == 429
        assert b"too many connections from 127.0.0.2: at most 4 at once (--http-max-connections-per-address)" in data
        # Another address is not affected; a slot freed is usable again.
        assert httpx.get(url + "/metrics", timeout=DEADLINE).status_code == 200
        held.pop().close()
        deadline = time.monotonic() + DEADLINE
        while True:
            with connect(port, "127.0.0.2") as again:
                again.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if status_of(answer(again)) == 200:
                    break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for sock in held:
            sock.close()
    finally:
        server.stop()


# -- the size of a request's head (README: headers up to 16 KiB) ---------------------------


def raw_request(port: int, head: bytes) -> bytes:
    with connect(port) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # answered and closed before the end
            sock.sendall(head)
        return answer(sock)


def test_oversized_heads_are_refused(tmp_path: Path) -> None:
    server, url, port = served(tmp_path)
    try:
        big = raw_request(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
        assert status_of(big) == 431
        assert b"larger than 16384 bytes" in big
        # Many headers that add up to more than 16 KiB.
        many = b"".join(f"X-H{i}: {'b' * 90}\r\n".encode() for i in range(200))
        assert status_of(raw_request(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")) == 431
        long_line = raw_request(port, b"GET /metrics?" + b"q" * 60_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(long_line) == 414
        assert b"request line is longer than 8192 bytes" in long_line
        # Sent in pieces, the same limits hold.
        with connect(port) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            try:
                for _ in range(40):
                    sock.sendall(b"X-Piece: " + b"c" * 500 + b"\r\n")
                    time.sleep(0.005)
            except (BrokenPipeError, ConnectionResetError):
                pass
            assert status_of(answer(sock)) == 431
        # Under the limits: served as usual.
        fine = raw_request(
            port,
            b"GET /metrics?" + b"q" * 4000 + b" HTTP/1.1\r\nHost: x\r\nX-Fine: " + b"d" * 10_000 + b"\r\n"
            b"Connection: close\r\n\r\n",
        )
        assert status_of(fine) == 200
        assert httpx.get(url + "/metrics", timeout=DEADLINE).status_code == 200
    finally:
        server.stop()


def test_requests_at_once_are_capped(tmp_path: Path) -> None:
    """Two live streams hold the two request slots: the next request is 503,
    but /metrics and sign-in still get through (slots kept for them)."""
    server, url, _ = served(tmp_path, http_max_connections=2)
    try:
        client = make_client(server.address)
        fill(client)
        client.channel.close()
        with (
            httpx.Client(base_url=url, timeout=DEADLINE) as a,
            httpx.Client(base_url=url, timeout=DEADLINE) as b,
            a.stream("GET", f"/api/campaigns/{CAMPAIGN}/live") as one,
            b.stream("GET", f"/api/campaigns/{CAMPAIGN}/live") as two,
        ):
            lines = [one.iter_lines(), two.iter_lines()]
            assert [next(x) for x in lines] == ["retry: 2000", "retry: 2000"]
            r = httpx.get(url + "/api/campaigns", timeout=DEADLINE)
            assert r.status_code == 503
            assert "--http-max-connections" in r.text
            assert httpx.get(url + "/metrics", timeout=DEADLINE).status_code == 200
            assert httpx.get(url + "/signin", timeout=DEADLINE).status_code == 200
            r = httpx.post(url + "/signin", data={"key": "ft_not_a_key"}, timeout=DEADLINE)
            assert r.status_code == 303 and r.headers["location"] == "/signin?error=INVALID_API_KEY"
    finally:
        server.stop()


def test_open_mode_counts_streams_per_business(tmp_path: Path) -> None:
    server, url, _ = served(tmp_path, max_streams_per_key=1)
    try:
        client = make_client(server.address)
        fill(client)
        client.channel.close()
        with (
            httpx.Client(base_url=url, timeout=DEADLINE) as h,
            h.stream("GET", f"/api/campaigns/{CAMPAIGN}/live") as live,
        ):
            assert live.status_code == 200
            lines = live.iter_lines()
            assert next(lines) == "retry: 2000"
            r = h.get(f"/api/campaigns/{CAMPAIGN}/live")
            assert r.status_code == 429
            error = r.json()
            assert error["detail"].startswith("the business 'default' holds 1 open streams")
            assert error["quota"] == [
                {"subject": "business:default", "description": "open streams per API key: at most 1"}
            ]
    finally:
        server.stop()


def test_edge_flags_and_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from flowtrack.cli import cli
    from flowtrack.config import Settings

    seen: list[Settings] = []

    async def fake_serve(settings: Settings) -> None:
        seen.append(settings)

    monkeypatch.setattr("flowtrack.server.serve", fake_serve)
    result = CliRunner().invoke(
        cli,
        ["serve", "--http-header-timeout", "4.5", "--http-body-timeout", "0", "--max-streams-per-key", "7"],
        env={"FLOWTRACK_HTTP_MAX_CONNECTIONS_PER_ADDRESS": "0", "FLOWTRACK_HTTP_MAX_HEADER_BYTES": "8192"},
    )
    assert result.exit_code == 0, result.output
    [settings] = seen
    assert settings.http_header_timeout == 4.5
    assert settings.http_body_timeout == 0
    assert settings.max_streams_per_key == 7
    assert settings.http_max_connections_per_address == 0
    assert settings.http_max_header_bytes == 8192
    defaults = Settings()
    assert (defaults.http_header_timeout, defaults.http_body_timeout, defaults.max_streams_per_key) == (10.0, 30.0, 32)
    assert (defaults.http_max_connections_per_address, defaults.http_max_header_bytes) == (32, 16384)
    result = CliRunner().invoke(cli, ["serve", "--http-max-header-bytes", "10"])
    assert result.exit_code == 2 and "x>=1024" in result.output


def test_head_limits_are_exact(tmp_path: Path) -> None:
    """A request line of 8192 bytes and a head of 16384 bytes (CR LFs
    included) are served; one byte more is refused."""
    server, _, port = served(tmp_path)
    try:

        def line(length: int) -> bytes:
            start = b"GET /metrics?"
            end = b" HTTP/1.1"
            return start + b"q" * (length - len(start) - len(end)) + end + b"\r\n"

        def head(length: int) -> bytes:
            first = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            name = b"X-Pad: "
            return first + name + b"p" * (length - len(first) - len(name) - 4) + b"\r\n\r\n"

        assert len(line(8192)) == 8194 and len(head(16384)) == 16384
        assert status_of(raw_request(port, line(8192) + b"Host: x\r\nConnection: close\r\n\r\n")) == 200
        assert status_of(raw_request(port, line(8193) + b"Host: x\r\nConnection: close\r\n\r\n")) == 414
        assert status_of(raw_request(port, head(16384))) == 200
        assert status_of(raw_request(port, head(16385))) == 431
    finally:
        server.stop()
