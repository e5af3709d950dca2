"""Graceful shutdown under load: SIGTERM to a real `flowtrack serve` process
while ingest streams pour batches in and report, watch and health streams are
open.

What must hold: health goes NOT_SERVING; every stream ends with OK or a clear
UNAVAILABLE/CANCELLED status carrying a message; every acknowledged batch is
stored (checked after a restart on the same file), a batch is stored whole or
not at all; the process exits 0 once the grace has cut a report still being
read (the test's reader waits for the exit before it reads on, so a drain
that ignored the grace would never end) — and, when no finite stream is still
being read, with a grace far longer than the test's deadline (endless streams
do not hold the drain). No test bounds how long the exit takes beyond a
generous deadline for the process to end.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flowtrack.v1 import campaign_pb2, ingest_pb2, report_pb2
from tests.conftest import Client, make_client, start_server
from tests.test_ingest import batch, status

GRACE = 3.0
EXIT_DEADLINE = 60.0  # how long a test waits for the process to end after SIGTERM
STREAM_TIMEOUT = 300.0  # the streams' deadline: far beyond any wait, so none ends DEADLINE_EXCEEDED
CLEAR_ENDS = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
BIG = 20_000  # recipients of the campaign the report streams read: ~20 MB of rows, more than
# the flow-control windows hold, so a report read slowly is still running when the grace ends


@dataclasses.dataclass
class Ended:
    """How a stream ended: code OK, or the error's code and details."""

    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""

    def clear(self) -> bool:
        return self.code == grpc.StatusCode.OK or (self.code in CLEAR_ENDS and bool(self.details))


class Serve:
    """`python -m flowtrack serve` on a free loopback port; its log in a file."""

    def __init__(self, directory: Path, *args: str, grace: float = GRACE) -> None:
        self.log = directory / "serve.log"
        self.database = directory / "flowtrack.db"
        command = [sys.executable, "-m", "flowtrack", "serve", "--listen", "127.0.0.1:0", "--grace", str(grace)]
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                [*command, "--database", str(self.database), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "FLOWTRACK_LOG_LEVEL": "INFO"},
            )
        deadline = time.monotonic() + 30
        while not (found := re.search(r"serving on [\d.]+:(\d+)", self.log.read_text())):
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        self.address = f"127.0.0.1:{found.group(1)}"

    def terminate(self) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds until the process ended). Waits at most
        EXIT_DEADLINE seconds (subprocess.TimeoutExpired past it)."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=EXIT_DEADLINE)
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    running = Serve(tmp_path)
    yield running
    running.kill()


class Ingest(threading.Thread):
    """One StreamEvents stream sending batches of `size` new events without
    pause (bounded: at most `limit` batches), recording what was sent and
    what was acknowledged."""

    def __init__(self, client: Client, name: str, size: int = 20, limit: int = 5000) -> None:
        super().__init__(daemon=True)
        self.client, self.name, self.size, self.limit = client, name, size, limit
        self.sent: dict[str, list[str]] = {}  # batch id -> event ids
        self.acks: list[ingest_pb2.StreamEventsResponse] = []
        self.ended: Ended | None = None
        self.flowing = threading.Event()

    def requests(self) -> Iterator[ingest_pb2.StreamEventsRequest]:
        for n in range(self.limit):
            batch_id = f"{self.name}-{n}"
            ids = [f"{batch_id}-{k}" for k in range(self.size)]
            self.sent[batch_id] = ids
            yield batch(
                *[status(e, recipient=f"+1555{k:07d}", campaign="load") for k, e in enumerate(ids)], batch_id=batch_id
            )
            time.sleep(0.002)

    def run(self) -> None:
        try:
            for reply in self.client.ingest.StreamEvents(self.requests(), timeout=STREAM_TIMEOUT):
                self.acks.append(reply)
                if len(self.acks) >= 3:
                    self.flowing.set()
            self.ended = Ended()
        except grpc.RpcError as error:
            self.ended = Ended(error.code(), error.details() or "")  # type: ignore[attr-defined]


class Report(threading.Thread):
    """A StreamMessageReport of the big campaign: one page read, then nothing
    until `hurry` (set once the server has exited), so the report is still
    running when the grace ends and only the grace can end the drain."""

    def __init__(self, client: Client) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.rows = 0
        self.ended: Ended | None = None
        self.reading = threading.Event()
        self.hurry = threading.Event()

    def run(self) -> None:
        request = report_pb2.StreamMessageReportRequest(campaign_id="big", page_size=50)
        try:
            for page in self.client.reports.StreamMessageReport(request, timeout=STREAM_TIMEOUT):
                self.rows += len(page.rows)
                self.reading.set()
                self.hurry.wait(STREAM_TIMEOUT)
            self.ended = Ended()
        except grpc.RpcError as error:
            self.ended = Ended(error.code(), error.details() or "")  # type: ignore[attr-defined]


class Drain(threading.Thread):
    """Reads a server stream to its end, keeping every message."""

    def __init__(self, replies: Any) -> None:
        super().__init__(daemon=True)
        self.replies = replies
        self.messages: list[Any] = []
        self.ended: Ended | None = None
        self.start()

    def run(self) -> None:
        try:
            for message in self.replies:
                self.messages.append(message)
            self.ended = Ended()
        except grpc.RpcError as error:
            self.ended = Ended(error.code(), error.details() or "")  # type: ignore[attr-defined]


def _big_campaign(client: Client) -> None:
    client.campaigns.CreateCampaign(
        campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id="big", name="big")), timeout=10
    )

    def recipients() -> Iterator[campaign_pb2.AddRecipientsRequest]:
        for b in range(BIG // 1000):
            yield campaign_pb2.AddRecipientsRequest(
                campaign_id="big",
                recipients=[
                    campaign_pb2.Recipient(recipient=f"+1{b:03d}{i:05d}", input_variables={"note": "x" * 1000})
                    for i in range(1000)
                ],
            )

    assert client.campaigns.AddRecipients(recipients(), timeout=60).added == BIG


def _wait(event: threading.Event, what: str) -> None:
    assert event.wait(30), f"{what} did not start"


def _check_ingest(streams: list[Ingest], tmp_path: Path, database: Path) -> set[str]:
    """Every acknowledged batch is stored; every batch is stored whole or not
    at all. Returns the event ids stored, as a restarted server reports them."""
    acked: set[str] = set()
    for stream in streams:
        assert stream.ended is not None and stream.ended.clear(), (stream.name, stream.ended)
        # Acks come in order, one per batch, each after its commit.
        assert [a.batch_id for a in stream.acks] == list(stream.sent)[: len(stream.acks)]
        for ack in stream.acks:
            assert ack.accepted == stream.size, ack
            acked.update(stream.sent[ack.batch_id])
    assert acked, "no batch was acknowledged"
    # A fresh server on the same file.
    restarted = start_server(tmp_path, database=str(database))
    client = make_client(restarted.address)
    try:
        stored: set[str] = set()
        request = report_pb2.StreamMessageHistoryRequest(campaign_id="load", page_size=1000)
        for page in client.reports.StreamMessageHistory(request, timeout=60):
            stored.update(e.event.status.event_id for e in page.events)
        lost = acked - stored
        assert not lost, f"{len(lost)} acknowledged events lost, e.g. {sorted(lost)[:3]}"
        for stream in streams:
            for batch_id, ids in stream.sent.items():
                assert len(stored.intersection(ids)) in (0, len(ids)), f"batch {batch_id} stored in part"
        stats = client.reports.GetCampaignStats(report_pb2.GetCampaignStatsRequest(campaign_id="load"), timeout=10)
        assert stats.stats.overall.counts.submitted > 0
    finally:
        client.channel.close()
        restarted.stop()
    return stored


@pytest.mark.slow
def test_sigterm_under_load_drains_and_loses_nothing_acknowledged(serve: Serve, tmp_path: Path) -> None:
    client = make_client(serve.address)
    try:
        _big_campaign(client)
        health = Drain(
            health_pb2_grpc.HealthStub(client.channel).Watch(health_pb2.HealthCheckRequest(), timeout=STREAM_TIMEOUT)
        )
        watch = Drain(
            client.reports.WatchCampaignStats(
                report_pb2.WatchCampaignStatsRequest(campaign_id="big"), timeout=STREAM_TIMEOUT
            )
        )
        ingests = [Ingest(client, f"s{n}") for n in range(3)]
        report = Report(client)
        for thread in (*ingests, report):
            thread.start()
        for stream in ingests:
            _wait(stream.flowing, f"ingest stream {stream.name}")
        _wait(report.reading, "the report stream")
        assert health.messages and health.messages[0].status == SERVING
        assert watch.messages and watch.messages[0].stats.overall.counts.total == BIG

        code, took = serve.terminate()
        report.hurry.set()
        for thread in (*ingests, report, health, watch):
            thread.join(timeout=30)
            assert not thread.is_alive()

        log = serve.log.read_text()
        print(f"exit {code} after {took:.2f} s; report {report.rows} rows, {report.ended}")
        assert code == 0, log
        assert "stopping: draining" in log and "stopped" in log
        assert "Traceback" not in log, log
        # Health said NOT_SERVING before its stream ended.
        assert [m.status for m in health.messages][-1] == NOT_SERVING
        assert health.ended is not None and health.ended.clear(), health.ended
        # The watch ended at once and said why; the report ended whole or with a clear status.
        assert watch.ended is not None and watch.ended.code == grpc.StatusCode.UNAVAILABLE, watch.ended
        assert "shutting down" in watch.ended.details
        assert report.ended is not None and report.ended.clear(), report.ended
        if report.ended.code == grpc.StatusCode.OK:
            assert report.rows == BIG
        else:  # cut when the grace ran out: it held the drain, nothing else did
            assert took >= GRACE - 0.5, took
        # Ingest streams: stopped reading, answered what they had read, said why.
        for stream in ingests:
            assert stream.ended is not None and stream.ended.code == grpc.StatusCode.UNAVAILABLE, stream.ended
            assert "acknowledged batch is stored" in stream.ended.details
        # Calls after the shutdown are refused, not hung.
        with pytest.raises(grpc.RpcError) as raised:
            health_pb2_grpc.HealthStub(client.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert raised.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)  # type: ignore[attr-defined]
    finally:
        client.channel.close()
    _check_ingest(ingests, tmp_path / "restart", serve.database)


@pytest.mark.slow
def test_endless_streams_do_not_hold_the_drain(tmp_path: Path) -> None:
    """With only watch, subscription, health watch and ingest streams open,
    the process is gone long before the grace is up: the grace here is longer
    than the deadline terminate() waits, so a drain held by those streams
    could only end in TimeoutExpired."""
    serve = Serve(tmp_path, grace=EXIT_DEADLINE * 3)
    try:
        _endless_streams_do_not_hold_the_drain(serve, tmp_path)
    finally:
        serve.kill()


def _endless_streams_do_not_hold_the_drain(serve: Serve, tmp_path: Path) -> None:
    client = make_client(serve.address)
    try:
        ingests = [Ingest(client, f"q{n}") for n in range(2)]
        for stream in ingests:
            stream.start()
        for stream in ingests:
            _wait(stream.flowing, f"ingest stream {stream.name}")
        watch = Drain(
            client.reports.WatchCampaignStats(
                report_pb2.WatchCampaignStatsRequest(campaign_id="load"), timeout=STREAM_TIMEOUT
            )
        )
        subscribe = Drain(
            client.reports.SubscribeEvents(report_pb2.SubscribeEventsRequest(page_size=1000), timeout=STREAM_TIMEOUT)
        )
        health = Drain(
            health_pb2_grpc.HealthStub(client.channel).Watch(health_pb2.HealthCheckRequest(), timeout=STREAM_TIMEOUT)
        )
        deadline = time.monotonic() + 30
        while not (watch.messages and subscribe.messages and health.messages):
            assert time.monotonic() < deadline, "streams did not start"
            time.sleep(0.05)

        code, took = serve.terminate()
        assert code == 0, serve.log.read_text()
        print(f"exit after {took:.2f} s (grace {EXIT_DEADLINE * 3:.0f} s)")
        for thread in (*ingests, watch, subscribe, health):
            thread.join(timeout=30)
            assert not thread.is_alive()
        for drained in (watch, subscribe, health):
            assert drained.ended is not None and drained.ended.code == grpc.StatusCode.UNAVAILABLE, drained.ended
            assert "shutting down" in drained.ended.details
        assert health.messages[-1].status == NOT_SERVING
    finally:
        client.channel.close()
    stored = _check_ingest(ingests, tmp_path / "restart", serve.database)
    # Events the subscriber was sent were committed: they survive the restart too.
    seen = {e.event.status.event_id for page in subscribe.messages for e in page.events}
    assert seen and seen <= stored


@pytest.mark.sqlite_only("the signal handlers of `flowtrack serve`: the database plays no part")
def test_sigterm_right_after_the_serving_line_is_a_graceful_stop(tmp_path: Path) -> None:
    """The handlers are in place before `flowtrack serve` says it is serving:
    a supervisor that stops it the moment it reads that line gets a clean
    exit (0, "stopped"), not SIGTERM's default death (-15), five times out
    of five."""
    from tests.serving import Serve

    for n in range(5):
        server = Serve(tmp_path / f"quick-{n}.db")
        assert server.stop() == 0, server.log.read_text()
        assert "stopped" in server.log.read_text()
