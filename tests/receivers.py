"""A real HTTP receiver on loopback for webhook tests: records every request
and answers with the statuses it is told (then 200)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """`Receiver(port=0, answers=[500, 500])` answers 500 twice, then 200;
    with `hold`, each request waits for the event before it is answered."""

    def __init__(self, port: int = 0, answers: list[int] | None = None, hold: threading.Event | None = None) -> None:
        self.answers = list(answers or [])
        self.arrived = 0  # requests read (answered or still held)
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with outer._lock:
                    outer.arrived += 1
                if hold is not None:
                    hold.wait(60)  # a slow endpoint: answers once `hold` is set
                with outer._lock:
                    status = outer.answers.pop(0) if outer.answers else 200
                    outer.requests.append(Received({k.lower(): v for k, v in self.headers.items()}, body, status))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        """The requests once at least `count` arrived (AssertionError after `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.requests) >= count:
                    return list(self.requests)
            time.sleep(0.02)
        raise AssertionError(f"{len(self.requests)} requests arrived, expected {count}")

    def delivered(self, secret: str) -> list[dict[str, Any]]:
        """The verified bodies of the requests answered 2xx (Webhook.verify raises on a bad signature)."""
        out = []
        for r in list(self.requests):
            if 200 <= r.status < 300:
                out.append(Webhook(secret).verify(r.body, r.headers))
        return out


def wait_until(predicate: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll `predicate()` until it returns a truthy value (generous deadline, never a bound)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class RawEndpoint:
    """A misbehaving HTTP endpoint on loopback, on a raw socket: it reads each
    request, then either floods (`"flood"`: a 200 that announces 10 GB and
    sends 1 MiB chunks, at most `cap` bytes) or drips (`"drip"`: a 200 with
    a body of one byte a second, for at most a minute). `sent` holds the
    body bytes each connection got out before the client went away."""

    def __init__(self, behaviour: str, cap: int = 100 * 1024 * 1024) -> None:
        import socket

        self.behaviour, self.cap = behaviour, cap
        self.sent: list[int] = []
        self.finished = 0  # connections over (the client closed, or the cap or minute reached)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: Any) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ),
                0,
            )
            while len(body) < length:
                body += conn.recv(65536)
            index = len(self.sent)
            with self._lock:
                self.sent.append(0)
            try:
                if self.behaviour == "flood":
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 10737418240\r\n\r\n")
                    block = b"x" * (1024 * 1024)
                    while self.sent[index] < self.cap and not self._stop.is_set():
                        conn.sendall(block)
                        self.sent[index] += len(block)
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 60\r\n\r\n")
                    for _ in range(60):
                        if self._stop.wait(1.0):
                            break
                        conn.sendall(b"x")
                        self.sent[index] += 1
            except OSError:
                pass  # the client went away
            with self._lock:
                self.finished += 1

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
