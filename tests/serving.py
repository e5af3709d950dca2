"""Helpers for tests that run `flowtrack` as real processes: a server
subprocess on a free loopback port, and a thread that streams events into a
server and remembers which ones were acknowledged."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc

from flowtrack.v1 import ingest_pb2, ingest_pb2_grpc
from tests.test_ingest import batch, status

DEADLINE = 60.0  # generous: the suite runs on a busy 2-core machine


def flowtrack(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m flowtrack ARGS`, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "flowtrack", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


class Serve:
    """`python -m flowtrack serve` on a free loopback port; its log in a file."""

    def __init__(
        self,
        database: Path | str,
        *args: str,
        log: Path | None = None,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.database = database
        if log is None:
            assert isinstance(database, Path), "a PostgreSQL URL needs log="
            log = database.with_name(f"serve-{time.monotonic_ns()}.log")
        self.log = log
        command = [sys.executable, "-m", "flowtrack", "serve", "--listen", "127.0.0.1:0", "--grace", "1"]
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                [*command, "--database", str(database), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "FLOWTRACK_LOG_LEVEL": "INFO", **(env or {})},
                cwd=cwd,
            )
        deadline = time.monotonic() + DEADLINE
        while not (found := re.search(r"serving on [\d.]+:(\d+)", self.log.read_text())):
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        self.port = int(found.group(1))
        self.address = f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=DEADLINE)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=DEADLINE)


class Feeder(threading.Thread):
    """Streams batches of `size` new status events into `address` over one
    StreamEvents call, one batch at a time (the next is sent when the
    previous one is acknowledged, `pause` seconds later), until stopped.
    `acked` holds the ids of every event in an acknowledged batch, in order.

    A test that streams for as long as something else takes (commands run
    beside the server) gives a pause: without one the server ingests flat
    out for the test's whole length, CPU the suite pays for nothing more."""

    def __init__(self, address: str, campaign: str = "backup", size: int = 50, pause: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.address, self.campaign, self.size, self.pause = address, campaign, size, pause
        self.acked: list[str] = []
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self._halt = threading.Event()
        self._next: queue.Queue[ingest_pb2.StreamEventsRequest | None] = queue.Queue()
        self._sent = 0

    def acknowledged(self) -> list[str]:
        with self.lock:
            return list(self.acked)

    def wait_for(self, count: int) -> None:
        """Until at least `count` events are acknowledged."""
        deadline = time.monotonic() + DEADLINE
        while len(self.acknowledged()) < count:
            assert self.error is None, self.error
            assert time.monotonic() < deadline, f"only {len(self.acknowledged())} events acknowledged"
            time.sleep(0.02)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=DEADLINE)
        assert self.error is None, self.error

    def _batch(self) -> tuple[ingest_pb2.StreamEventsRequest, list[str]]:
        ids = [f"{self.campaign}-{self._sent + i}" for i in range(self.size)]
        self._sent += self.size
        events = [status(i, recipient=f"+1555{n:07d}", campaign=self.campaign) for n, i in enumerate(ids, self._sent)]
        return batch(*events), ids

    def _requests(self) -> object:
        while (request := self._next.get()) is not None:
            yield request

    def run(self) -> None:
        try:
            with grpc.insecure_channel(self.address) as channel:
                stub = ingest_pb2_grpc.IngestServiceStub(channel)
                request, ids = self._batch()
                self._next.put(request)
                for reply in stub.StreamEvents(self._requests()):
                    assert reply.refused == 0, reply
                    with self.lock:
                        self.acked.extend(ids)
                    if self._halt.is_set() or self._halt.wait(self.pause):
                        self._next.put(None)
                        continue
                    request, ids = self._batch()
                    self._next.put(request)
        except BaseException as error:  # reported by stop() / wait_for()
            self.error = error
