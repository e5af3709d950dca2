"""Ingest benchmark: flowtrack's durable ingest rate beside the machine's limits.

The server runs in its own process (`python -m flowtrack serve`, durability
full unless --durability says otherwise); the load comes from client processes
(multiprocessing, spawn) through the generated stubs, so client CPU never sits
in the server's GIL. Measured, on a fresh database and on one already holding
--preload events (default 1,000,000):

- StreamEvents, batches of 100 and 1000, on 1 stream and on 4 streams (4 client processes);
- StreamEvents, batches of 1000 on 4 streams, with an engagement mix: --engagement-share
  (default 20%) of the events are engagement events (reads, replies, button taps, the
  funnel, opt-outs), the rest the usual status and click mix;
- RecordStatusEvent from 32 concurrent callers (4 processes x 8 asyncio callers).

In the same run, the limits (LIMITS.md), with the same events:

- bare SQLite: `executemany` into an events table with only the unique
  (business_id, event_id) key and the (cid, recipient) index, 1000 rows per
  transaction, WAL, synchronous FULL, on a fresh file and on one holding
  --preload rows;
- bare grpcio: a trivial generic echo handler in its own process (grpc.aio,
  like flowtrack) called by the same 32-caller client.

Rounds interleave the configurations (the order flips every round), and the
table gives the median per configuration plus the ratios
StreamEvents(best) / bare insert at 1M (target >= 0.7), the same ratio for
the engagement mix (target: within 10% of the status-only one) and unary /
echo (target >= 0.6). Absolute rates on a shared 2-core machine are noisy; the
in-run ratios are the figures to read.

Usage:
    python scripts/bench_ingest.py            # full run (~13 min on a busy 2-core machine)
    python scripts/bench_ingest.py --quick    # smoke run (~2.5 min)
    python scripts/bench_ingest.py --tiny     # correctness only (seconds; the figures mean nothing)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import platform
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CAMPAIGNS = 4
RECIPIENTS = 100_000
BUSINESS = "default"
ECHO_METHOD = "/bench.Echo/Echo"
UPB_CHECK = "from google.protobuf.internal import api_implementation as a; print(a.Type())"

# --------------------------------------------------------------------------------------------------------------------
# Events: plain tuples first (shared by the gRPC clients and the bare SQLite baseline), protos second.
# --------------------------------------------------------------------------------------------------------------------

# Status numbers of common.proto's MessageStatus.
SUBMITTED, DELIVERY_NOT_CONFIRMED, FAILED, SUCCESS = 3, 4, 5, 6
STATUS_MIX = [(SUBMITTED, 35), (DELIVERY_NOT_CONFIRMED, 20), (SUCCESS, 30), (FAILED, 10)]  # + 5% clicks
CLICK_SHARE = 0.05
REASONS = [("BLOCKED", "blocked by user"), ("INVALID_NUMBER", "not a WhatsApp number"), ("TIMEOUT", "flow timed out")]
CHANNELS = ["whatsapp", "sms", "rcs"]
VARIANTS = ["A", "B"]
COUNTRIES = [("BR", "SP", "Sao Paulo"), ("IN", "MH", "Mumbai"), ("MX", "CMX", "Mexico City"), ("ID", "JK", "Jakarta")]
# Engagement kinds (ingest.proto's EngagementKind) of the engagement mix, with weights.
READ, REPLIED, OPTED_OUT, BUTTON_CLICKED, ENTERED_FLOW, EXITED_FLOW, GOAL_ACHIEVED = range(1, 8)
ENGAGEMENT_MIX = [
    (READ, 50),
    (REPLIED, 15),
    (BUTTON_CLICKED, 10),
    (ENTERED_FLOW, 10),
    (EXITED_FLOW, 8),
    (GOAL_ACHIEVED, 4),
    (OPTED_OUT, 3),
]
ENGAGEMENT_SHARE = 0.2


@dataclass(frozen=True, slots=True)
class Spec:
    """One event, independent of its wire form."""

    event_id: str
    campaign: int
    recipient: int
    status: int  # 0 for a click, minus the EngagementKind for an engagement event
    occurred_s: int
    occurred_ns: int
    attempt: int
    reason: int  # index into REASONS, -1 for none

    @property
    def campaign_id(self) -> str:
        return f"bench-{self.campaign}"

    @property
    def phone(self) -> str:
        return f"+55119{self.recipient:08d}"


def specs(seed: int, n: int, engagement_share: float = 0.0) -> Iterator[Spec]:
    """`n` realistic events: random uuid4 ids, ~100k recipients spread over 4
    campaigns (one channel and variant per recipient), a mix of statuses,
    failures with reasons, a few retries and ~5% clicks; with
    `engagement_share`, that share of engagement events (ENGAGEMENT_MIX)."""
    rng = random.Random(seed)
    weights = [w for _, w in STATUS_MIX]
    statuses = [s for s, _ in STATUS_MIX]
    kinds, kind_weights = [k for k, _ in ENGAGEMENT_MIX], [w for _, w in ENGAGEMENT_MIX]
    now = int(time.time())
    for _ in range(n):
        recipient = rng.randrange(RECIPIENTS)
        event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        occurred = now - rng.randrange(60, 86_400)
        nanos = rng.randrange(1_000_000_000) // 1000 * 1000
        if engagement_share and rng.random() < engagement_share:
            kind = rng.choices(kinds, kind_weights)[0]
            yield Spec(event_id, recipient % CAMPAIGNS, recipient, -kind, occurred, nanos, 1, -1)
            continue
        if rng.random() < CLICK_SHARE:
            yield Spec(event_id, recipient % CAMPAIGNS, recipient, 0, occurred, nanos, 1, -1)
            continue
        status = rng.choices(statuses, weights)[0]
        attempt = 2 if rng.random() < 0.03 else 1
        reason = rng.randrange(len(REASONS)) if status == FAILED else -1
        yield Spec(event_id, recipient % CAMPAIGNS, recipient, status, occurred, nanos, attempt, reason)


def to_proto(spec: Spec) -> Any:
    """The ingest_pb2.Event of a Spec."""
    from google.protobuf import timestamp_pb2

    from flowtrack.v1 import common_pb2, ingest_pb2

    at = timestamp_pb2.Timestamp(seconds=spec.occurred_s, nanos=spec.occurred_ns)
    if spec.status < 0:
        kind = -spec.status
        engaged = ingest_pb2.EngagementEvent(
            event_id=spec.event_id,
            campaign_id=spec.campaign_id,
            recipient=spec.phone,
            kind=ingest_pb2.EngagementKind.ValueType(kind),
            occurred_at=at,
        )
        if kind == REPLIED:
            engaged.text = "Is the offer still valid?"
        elif kind == BUTTON_CLICKED:
            engaged.button_id, engaged.button_name = "offer_yes", "Yes, show me"
        elif kind == EXITED_FLOW:
            engaged.exit_reason = "completed"
        elif kind == GOAL_ACHIEVED:
            engaged.goal_id = "purchase"
        return ingest_pb2.Event(engagement=engaged)
    if spec.status == 0:
        code, region, city = COUNTRIES[spec.recipient % len(COUNTRIES)]
        return ingest_pb2.Event(
            click=ingest_pb2.ClickEvent(
                event_id=spec.event_id,
                campaign_id=spec.campaign_id,
                recipient=spec.phone,
                link_id=f"L{spec.recipient % 3}",
                link_variable="Body variable 1",
                url="https://example.com/offer",
                occurred_at=at,
                location=common_pb2.Location(country_code=code, region=region, city=city),
            )
        )
    event = ingest_pb2.StatusEvent(
        event_id=spec.event_id,
        campaign_id=spec.campaign_id,
        recipient=spec.phone,
        status=common_pb2.MessageStatus.ValueType(spec.status),
        occurred_at=at,
        attempt=spec.attempt,
        channel=CHANNELS[spec.recipient % len(CHANNELS)],
        variant=VARIANTS[spec.recipient % len(VARIANTS)],
    )
    if spec.reason >= 0:
        code, message = REASONS[spec.reason]
        event.failure_reason.code = code
        event.failure_reason.message = message
    return ingest_pb2.Event(status=event)


BARE_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY, business_id TEXT NOT NULL, seq INTEGER NOT NULL, event_id TEXT NOT NULL,
  fingerprint BLOB NOT NULL, cid INTEGER NOT NULL, recipient TEXT NOT NULL, kind INTEGER NOT NULL,
  occurred_at INTEGER NOT NULL, received_at INTEGER NOT NULL, status INTEGER, attempt INTEGER, reason_code TEXT,
  reason_message TEXT, channel TEXT, variant TEXT, link_id TEXT, link_variable TEXT, url TEXT, country_code TEXT,
  region TEXT, city TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS events_by_event_id ON events (business_id, event_id);
CREATE INDEX IF NOT EXISTS events_by_message ON events (cid, recipient);
"""
BARE_INSERT = (
    "INSERT INTO events (business_id, seq, event_id, fingerprint, cid, recipient, kind, occurred_at, received_at,"
    " status, attempt, reason_code, reason_message, channel, variant, link_id, link_variable, url, country_code,"
    " region, city) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)


def to_row(spec: Spec, seq: int) -> tuple[object, ...]:
    """The bare-baseline row of a Spec: the same columns the events table stores for it."""
    at = spec.occurred_s * 1_000_000 + spec.occurred_ns // 1000
    fp = uuid.uuid4().bytes + uuid.uuid4().bytes
    now = time.time_ns() // 1000
    if spec.status < 0:  # an engagement event: kind 3, its kind where the status goes, a reply's text
        text = "Is the offer still valid?" if -spec.status == REPLIED else None
        return (BUSINESS, seq, spec.event_id, fp, spec.campaign + 1, spec.phone, 3, at, now, -spec.status, None, None,
                text, None, None, None, None, None, None, None, None)  # fmt: skip
    if spec.status == 0:
        code, region, city = COUNTRIES[spec.recipient % len(COUNTRIES)]
        return (BUSINESS, seq, spec.event_id, fp, spec.campaign + 1, spec.phone, 2, at, now, None, None, None, None,
                None, None, f"L{spec.recipient % 3}", "Body variable 1", "https://example.com/offer", code, region,
                city)  # fmt: skip
    reason_code, reason_message = REASONS[spec.reason] if spec.reason >= 0 else ("", "")
    return (BUSINESS, seq, spec.event_id, fp, spec.campaign + 1, spec.phone, 1, at, now, spec.status, spec.attempt,
            reason_code, reason_message, CHANNELS[spec.recipient % 3], VARIANTS[spec.recipient % 2], None, None, None,
            None, None, None)  # fmt: skip


# --------------------------------------------------------------------------------------------------------------------
# Client workers: each runs in its own spawned process; tasks run in two steps (prepare, then run at a set moment).
# --------------------------------------------------------------------------------------------------------------------

_prepared: list[Any] = []
_channel: Any = None


def worker_info() -> str:
    from google.protobuf.internal import api_implementation

    return str(api_implementation.Type())


def guarded(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a task in a worker; an exception comes back as a picklable RuntimeError
    (grpc's errors do not pickle)."""
    try:
        return fn(*args)
    except Exception as error:
        raise RuntimeError(f"{fn.__name__}: {type(error).__name__}: {error}") from None


def _wait_until(start_at: float) -> None:
    delay = start_at - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def stream_prepare(address: str, seed: int, n_events: int, batch_size: int, engagement_share: float = 0.0) -> int:
    """Build the batches (outside the timed part) and connect."""
    import grpc

    from flowtrack.v1 import ingest_pb2

    global _channel
    _prepared.clear()
    batch: list[Any] = []
    for spec in specs(seed, n_events, engagement_share):
        batch.append(to_proto(spec))
        if len(batch) == batch_size:
            _prepared.append(ingest_pb2.StreamEventsRequest(batch_id=str(len(_prepared)), events=batch))
            batch = []
    if batch:
        _prepared.append(ingest_pb2.StreamEventsRequest(batch_id=str(len(_prepared)), events=batch))
    if _channel is not None:
        _channel.close()
    _channel = grpc.insecure_channel(address)
    grpc.channel_ready_future(_channel).result(timeout=30)
    return n_events


def stream_run(start_at: float) -> tuple[int, int, float]:
    """Send the prepared batches on one StreamEvents call; (accepted, other, end)."""
    from flowtrack.v1 import ingest_pb2_grpc

    stub = ingest_pb2_grpc.IngestServiceStub(_channel)
    _wait_until(start_at)
    accepted = other = 0
    for reply in stub.StreamEvents(iter(_prepared), timeout=900):
        accepted += reply.accepted
        other += reply.duplicates + reply.refused
    end = time.monotonic()
    _prepared.clear()
    _channel.close()
    return accepted, other, end


def stream_generate(address: str, seed: int, n_events: int, batch_size: int) -> tuple[int, int, float, float]:
    """The preload: build batches on the fly and send them; (accepted, other, start, end)."""
    import grpc

    from flowtrack.v1 import ingest_pb2, ingest_pb2_grpc

    def batches() -> Iterator[Any]:
        batch: list[Any] = []
        for spec in specs(seed, n_events):
            batch.append(to_proto(spec))
            if len(batch) == batch_size:
                yield ingest_pb2.StreamEventsRequest(events=batch)
                batch = []
        if batch:
            yield ingest_pb2.StreamEventsRequest(events=batch)

    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        start = time.monotonic()
        accepted = other = 0
        for reply in ingest_pb2_grpc.IngestServiceStub(channel).StreamEvents(batches(), timeout=3600):
            accepted += reply.accepted
            other += reply.duplicates + reply.refused
        return accepted, other, start, time.monotonic()


def unary_prepare(seed: int, n_calls: int) -> int:
    from flowtrack.v1 import ingest_pb2

    _prepared.clear()
    _prepared.extend(
        ingest_pb2.RecordStatusEventRequest(event=to_proto(spec).status) for spec in _status_specs(seed, n_calls)
    )
    return n_calls


def _status_specs(seed: int, n: int) -> Iterator[Spec]:
    """`n` status events (unary RecordStatusEvent carries no clicks)."""
    count = 0
    for spec in specs(seed, n * 2):
        if spec.status:
            yield spec
            count += 1
            if count == n:
                return


def unary_run(address: str, callers: int, echo: bool, start_at: float) -> tuple[int, int, float]:
    """`callers` concurrent asyncio callers share the prepared requests; (ok, failed, end)."""
    import grpc

    from flowtrack.v1 import ingest_pb2, ingest_pb2_grpc

    requests = list(_prepared)
    _prepared.clear()

    async def main() -> tuple[int, int, float]:
        async with grpc.aio.insecure_channel(address) as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
            call: Callable[..., Any]
            if echo:
                call = channel.unary_unary(
                    ECHO_METHOD,
                    request_serializer=ingest_pb2.RecordStatusEventRequest.SerializeToString,
                    response_deserializer=ingest_pb2.RecordStatusEventRequest.FromString,
                )
            else:
                call = ingest_pb2_grpc.IngestServiceStub(channel).RecordStatusEvent
            ok = failed = 0
            it = iter(requests)

            async def caller() -> None:
                nonlocal ok, failed
                for request in it:
                    try:
                        await call(request, timeout=60)
                        ok += 1
                    except grpc.aio.AioRpcError:
                        failed += 1

            await asyncio.sleep(max(0.0, start_at - time.monotonic()))
            await asyncio.gather(*(caller() for _ in range(callers)))
            return ok, failed, time.monotonic()

    return asyncio.run(main())


def bare_preload(path: str, seed: int, n_rows: int) -> float:
    """Fill a bare file with `n_rows` rows fast (synchronous OFF, 50k rows per tx): setup only."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.executescript(BARE_SCHEMA)
    start = time.monotonic()
    rows: list[tuple[object, ...]] = []
    for seq, spec in enumerate(specs(seed, n_rows), 1):
        rows.append(to_row(spec, seq))
        if len(rows) == 50_000:
            conn.execute("BEGIN")
            conn.executemany(BARE_INSERT, rows)
            conn.execute("COMMIT")
            rows = []
    if rows:
        conn.execute("BEGIN")
        conn.executemany(BARE_INSERT, rows)
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.monotonic() - start


def bare_run(path: str, seed: int, n_rows: int, per_tx: int) -> tuple[int, float]:
    """The limit: executemany of prepared rows, `per_tx` per transaction, WAL, FULL; (rows, seconds)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA cache_size=-65536")  # the same 64 MiB as flowtrack's connections
    conn.executescript(BARE_SCHEMA)
    base = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
    rows = [to_row(spec, base + i) for i, spec in enumerate(specs(seed, n_rows), 1)]
    start = time.monotonic()
    for i in range(0, len(rows), per_tx):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(BARE_INSERT, rows[i : i + per_tx])
        conn.execute("COMMIT")
    seconds = time.monotonic() - start
    conn.close()
    return len(rows), seconds


# --------------------------------------------------------------------------------------------------------------------
# Servers: flowtrack and the echo server, each in its own process.
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    address: str
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _spawn(args: list[str], log: Path, pattern: str) -> Server:
    """Start a server process logging to `log`; wait for its 'listening' line."""
    handle = log.open("wb")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    handle.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text(errors="replace"))
        if found:
            return Server(proc, f"127.0.0.1:{found.group(1)}", log)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait(10)
    raise RuntimeError(f"server did not start: {' '.join(args)}\n{log.read_text(errors='replace')}")


# Extra `flowtrack serve` flags of this run (--metrics adds the HTTP listener,
# which turns the Prometheus metrics on).
SERVER_FLAGS: list[str] = []


def start_flowtrack(database: Path, durability: str, log: Path) -> Server:
    args = [sys.executable, "-m", "flowtrack", "serve", "--listen", "127.0.0.1:0", "--database", str(database)]
    args += ["--durability", durability, "--grace", "30", "--http", "off", *SERVER_FLAGS]
    return _spawn(args, log, r"serving on 127\.0\.0\.1:(\d+)")


def start_echo(log: Path) -> Server:
    return _spawn([sys.executable, os.path.abspath(__file__), "--serve-echo"], log, r"echo listening on (\d+)")


def serve_echo() -> None:
    """The grpcio limit: a generic handler returning its request bytes, on grpc.aio like flowtrack."""
    import grpc

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        handler = grpc.method_handlers_generic_handler(
            "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
        )
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(f"echo listening on {port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop(1)

    asyncio.run(main())


# --------------------------------------------------------------------------------------------------------------------
# The run.
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    preload: int
    stream_events: int
    unary_calls: int
    echo_calls: int
    bare_rows: int
    rounds: int


FULL = Sizes(
    preload=1_000_000, stream_events=60_000, unary_calls=10_000, echo_calls=20_000, bare_rows=100_000, rounds=2
)
QUICK = Sizes(preload=100_000, stream_events=12_000, unary_calls=2_000, echo_calls=4_000, bare_rows=20_000, rounds=1)
# A correctness run of the script itself: every step once, on tiny data.
TINY = Sizes(preload=4_000, stream_events=2_000, unary_calls=200, echo_calls=400, bare_rows=2_000, rounds=1)

STREAM_CONFIGS = [(100, 1), (1000, 1), (100, 4), (1000, 4)]  # (batch size, streams)
CALLERS, UNARY_PROCESSES = 32, 4


@dataclass
class Bench:
    sizes: Sizes
    durability: str
    workdir: Path
    workers: list[ProcessPoolExecutor]
    seed: int = 1
    results: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def next_seed(self) -> int:
        self.seed += 1
        return self.seed * 7919

    def record(self, name: str, state: str, rate: float) -> None:
        self.results.setdefault((name, state), []).append(rate)
        print(f"  {name:<32} {state:<6} {rate:>10,.0f} /s", flush=True)

    def all_done(self, futures: list[Future[Any]]) -> list[Any]:
        return [f.result(timeout=3600) for f in futures]

    # -- one measurement each ------------------------------------------------
    def stream(
        self,
        address: str,
        batch: int,
        streams: int,
        state: str,
        before: Callable[[], None] | None = None,
        engagement_share: float = 0.0,
    ) -> None:
        per = self.sizes.stream_events // streams
        prepares = [
            w.submit(guarded, stream_prepare, address, self.next_seed(), per, batch, engagement_share)
            for w in self.workers[:streams]
        ]
        self.all_done(prepares)
        if before is not None:
            before()
        start_at = time.monotonic() + 0.3
        runs = self.all_done([w.submit(guarded, stream_run, start_at) for w in self.workers[:streams]])
        accepted = sum(r[0] for r in runs)
        other = sum(r[1] for r in runs)
        mix = f", {engagement_share:.0%} engagement" if engagement_share else ""
        if other:
            self.notes.append(f"StreamEvents {batch}x{streams}{mix} {state}: {other} events not ACCEPTED")
        self.record(f"StreamEvents batch {batch} x {streams} stream{'s' if streams > 1 else ''}{mix}", state,
                    accepted / (max(r[2] for r in runs) - start_at))  # fmt: skip

    def unary(self, address: str, echo: bool, state: str) -> None:
        calls = self.sizes.echo_calls if echo else self.sizes.unary_calls
        per = calls // UNARY_PROCESSES
        self.all_done([w.submit(guarded, unary_prepare, self.next_seed(), per) for w in self.workers[:UNARY_PROCESSES]])
        start_at = time.monotonic() + 0.5
        runs = self.all_done(
            [w.submit(guarded, unary_run, address, CALLERS // UNARY_PROCESSES, echo, start_at) for w in self.workers]
        )
        failed = sum(r[1] for r in runs)
        if failed:
            self.notes.append(f"{'echo' if echo else 'unary'} {state}: {failed} calls failed")
        name = "grpc echo (limit), 32 callers" if echo else "RecordStatusEvent, 32 callers"
        self.record(name, state, sum(r[0] for r in runs) / (max(r[2] for r in runs) - start_at))

    def bare(self, path: Path, state: str) -> None:
        rows, seconds = (
            self.workers[0].submit(guarded, bare_run, str(path), self.next_seed(), self.sizes.bare_rows, 1000).result()
        )
        self.record("bare executemany (limit)", state, rows / seconds)

    # -- files ----------------------------------------------------------------
    def fresh_file(self, name: str) -> Path:
        path = self.workdir / name
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return path

    def copy_of(self, pristine: Path, name: str) -> Path:
        """A copy of a preloaded file, synced, so that no page of the copy is
        left for a checkpoint inside the timed part to write."""
        path = self.fresh_file(name)
        shutil.copyfile(pristine, path)
        with path.open("rb+") as handle:
            os.fsync(handle.fileno())
        return path

    def with_server(self, database: Path, tag: str, fn: Callable[[str], None]) -> None:
        server = start_flowtrack(database, self.durability, self.workdir / f"server-{tag}.log")
        try:
            fn(server.address)
        finally:
            server.stop()


def preload_project(bench: Bench, path: Path) -> tuple[float, float]:
    """Seed `path` with --preload events through the server: 4 streams of 5000-event batches."""
    n = bench.sizes.preload
    server = start_flowtrack(path, bench.durability, bench.workdir / "server-preload.log")
    try:
        futures = [
            w.submit(guarded, stream_generate, server.address, 10_000 + i, n // 4, 5000)
            for i, w in enumerate(bench.workers)
        ]
        runs = bench.all_done(futures)
    finally:
        server.stop()
    accepted = sum(r[0] for r in runs)
    seconds = max(r[3] for r in runs) - min(r[2] for r in runs)
    if accepted != n // 4 * 4:
        raise RuntimeError(f"preload stored {accepted} of {n // 4 * 4} events")
    return seconds, accepted / seconds


def fill_encodings(path: Path) -> str:
    """The seeded database as a server that ran on it leaves it: the
    messages' stored encodings filled (`flowtrack db encode`; its background
    job does the same once the ingest has settled). The seeding server stops
    as soon as the last batch is stored, before that; measured on a database
    whose 63k rows were all unfilled, each server started for a figure spent
    part of its first seconds filling them (docs/performance.md). What this
    says is printed; a flowtrack without stored encodings has nothing to fill."""
    command = [sys.executable, "-m", "flowtrack", "db", "encode", "--database", str(path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        return "stored encodings: none in this flowtrack (`flowtrack db encode` failed or does not exist)"
    return f"stored encodings: {done.stdout.strip() or 'filled'} (flowtrack db encode)"


def server_upb() -> tuple[str, str]:
    """protobuf's backend in a process of the server's interpreter and environment, and
    the flowtrack package that `python -m flowtrack serve` runs."""
    code = UPB_CHECK + "; import flowtrack; print(flowtrack.__file__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    backend, package = out.stdout.split()
    return backend, str(Path(package).parent)


def machine() -> list[str]:
    import grpc
    from google.protobuf import __version__ as pb_version
    from google.protobuf.internal import api_implementation

    return [
        f"nproc {os.cpu_count()}, {platform.machine()}, {platform.system()} {platform.release()}",
        f"python {platform.python_version()}, grpcio {grpc.__version__}, protobuf {pb_version}"
        f" ({api_implementation.Type()}), sqlite {sqlite3.sqlite_version}",
    ]


def run(sizes: Sizes, durability: str, workdir: Path, profile: bool, engagement_share: float = ENGAGEMENT_SHARE) -> int:
    t_begin = time.monotonic()
    context = multiprocessing.get_context("spawn")
    workers = [ProcessPoolExecutor(max_workers=1, mp_context=context) for _ in range(4)]
    bench = Bench(sizes, durability, workdir, workers)
    try:
        client_upb = sorted({w.submit(guarded, worker_info).result() for w in workers})
        server_backend, package = server_upb()
        print("\n".join(machine()), flush=True)
        print(f"server package: {package}", flush=True)
        bench.notes.append(f"server package: {package}")
        print(f"protobuf backend: client processes {client_upb}, server interpreter {server_backend!r}", flush=True)

        print(f"\n== seeding: {sizes.preload:,} events through the server, 4 streams x 5000-event batches", flush=True)
        pristine = bench.fresh_file("pristine-1m.db")
        seconds, rate = preload_project(bench, pristine)
        print(f"  seeded in {seconds:.0f} s ({rate:,.0f} events/s)", flush=True)
        bench.notes.append(
            f"seeding {sizes.preload:,} events through StreamEvents took {seconds:.0f} s ({rate:,.0f}/s)"
        )
        filled = fill_encodings(pristine)
        print(f"  {filled}", flush=True)
        bench.notes.append(filled)
        bare_pristine = bench.fresh_file("bare-pristine-1m.db")
        seconds = workers[0].submit(guarded, bare_preload, str(bare_pristine), 20_000, sizes.preload).result()
        print(f"  bare file with {sizes.preload:,} rows built in {seconds:.0f} s (synchronous OFF)", flush=True)

        states = [("fresh", None), ("1M", pristine)]
        for round_no in range(sizes.rounds):
            for state, source in states if round_no % 2 == 0 else states[::-1]:
                print(f"\n== round {round_no + 1}, {state} database", flush=True)
                steps: list[Callable[[], None]] = []

                def database(tag: str, source: Path | None = source) -> Path:
                    return bench.copy_of(source, f"{tag}.db") if source else bench.fresh_file(f"{tag}.db")

                def bare_step(state: str = state, source: Path | None = source) -> None:
                    path = bench.copy_of(bare_pristine, "bare.db") if source else bench.fresh_file("bare.db")
                    bench.bare(path, state)

                steps.append(bare_step)
                for batch, streams in STREAM_CONFIGS:

                    def stream_step(batch: int = batch, streams: int = streams, state: str = state) -> None:
                        bench.with_server(
                            database("stream"), "stream", lambda a: bench.stream(a, batch, streams, state)
                        )

                    steps.append(stream_step)

                if engagement_share:

                    def mix_step(state: str = state) -> None:
                        bench.with_server(
                            database("mix"),
                            "mix",
                            lambda a: bench.stream(a, 1000, 4, state, engagement_share=engagement_share),
                        )

                    steps.append(mix_step)

                def unary_step(state: str = state) -> None:
                    bench.with_server(database("unary"), "unary", lambda a: bench.unary(a, False, state))

                def echo_step(state: str = state) -> None:
                    echo = start_echo(workdir / "echo.log")
                    try:
                        bench.unary(echo.address, True, state)
                    finally:
                        echo.stop()

                steps += [unary_step, echo_step]
                for step in steps if round_no % 2 == 0 else steps[::-1]:
                    step()
        if profile:
            profile_writer(bench, pristine)
    finally:
        for w in workers:
            w.shutdown(wait=True, cancel_futures=True)
    report(bench, client_upb, server_backend, time.monotonic() - t_begin)
    return 0


def profile_writer(bench: Bench, pristine: Path) -> None:
    """py-spy the server (idle frames included, so waits on fsync show) while
    StreamEvents 1000 x 4 runs on the preloaded database, and print where the
    writer thread's time goes."""
    if shutil.which("py-spy") is None:
        print("py-spy not installed (pip install py-spy): no profile", flush=True)
        return
    raw = bench.workdir / "profile.txt"
    database = bench.copy_of(pristine, "profile.db")
    server = start_flowtrack(database, bench.durability, bench.workdir / "server-profile.log")
    try:
        args = ["py-spy", "record", "--pid", str(server.proc.pid), "--format", "raw", "--idle", "--threads"]
        args += ["--rate", "250", "--nonblocking", "--output", str(raw)]
        spies: list[subprocess.Popen[bytes]] = []

        def spy() -> None:  # once the clients have built their batches: only the timed part is sampled
            spies.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(0.5)

        bench.stream(server.address, 1000, 4, "profiled", before=spy)
        for process in spies:
            process.send_signal(signal.SIGINT)
            process.wait(60)
    finally:
        server.stop()
    print(summarize_profile(raw), flush=True)


def summarize_profile(raw: Path, top: int = 12) -> str:
    """For the writer thread and the event-loop thread: share of samples per
    innermost frame (idle = waiting), and per flowtrack function anywhere on
    the stack (inclusive)."""
    if not raw.exists():
        return "no profile written"
    out: list[str] = []
    for title, marker in (
        ("writer thread", "flowtrack-writer"),
        ("event-loop thread (grpc.aio, servicers)", "MainThread"),
    ):
        leaf: dict[str, int] = {}
        inclusive: dict[str, int] = {}
        total = 0
        for line in raw.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if marker not in stack.split(";")[0]:
                continue
            count = int(count_text)
            total += count
            frames = stack.split(";")[1:]
            if frames:
                name = frames[-1].split("/site-packages/")[-1]
                leaf[name] = leaf.get(name, 0) + count
            for f in {
                f.split(" (")[0] + " (" + f.split("/")[-1].split(":")[0] + ")" for f in frames if "flowtrack" in f
            }:
                inclusive[f] = inclusive.get(f, 0) + count
        if not total:
            out.append(f"{title}: no samples")
            continue
        out.append(f"{title}, {total} samples (idle included): innermost frame")
        for name, count in sorted(leaf.items(), key=lambda kv: -kv[1])[:top]:
            out.append(f"    {100 * count / total:5.1f}%  {name}")
        out.append("  inclusive, flowtrack functions:")
        for name, count in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
            out.append(f"    {100 * count / total:5.1f}%  {name}")
    return "\n".join(out)


def report(bench: Bench, client_upb: list[str], server_backend: str, seconds: float) -> None:
    med = {key: statistics.median(values) for key, values in bench.results.items()}
    names = list(dict.fromkeys(name for name, _ in bench.results))
    print("\n" + "=" * 100)
    print(f"flowtrack ingest benchmark, durability {bench.durability}, preload {bench.sizes.preload:,}, "
          f"{bench.sizes.rounds} round(s), {time.strftime('%Y-%m-%d %H:%M %Z')}, {seconds:.0f} s")  # fmt: skip
    for line in machine():
        print(line)
    print(f"protobuf backend: client processes {client_upb}, server process {server_backend!r}")
    print("-" * 100)
    at = "1M" if bench.sizes.preload == 1_000_000 else f"{bench.sizes.preload // 1000}k"
    print(f"{'events (or calls) durably acknowledged per second':<52}{'fresh DB':>12}{'DB at ' + at:>12}   rounds")
    for name in names:
        fresh, full = med.get((name, "fresh")), med.get((name, "1M"))
        rounds = " ".join(
            f"{v / 1000:.1f}k" for v in bench.results.get((name, "fresh"), []) + bench.results.get((name, "1M"), [])
        )
        print(f"{name:<52}{_fmt(fresh):>12}{_fmt(full):>12}   {rounds}")
    print("-" * 100)
    streams = [name for name in names if name.startswith("StreamEvents") and "engagement" not in name]
    mixes = [name for name in names if name.startswith("StreamEvents") and "engagement" in name]
    bare = "bare executemany (limit)"
    for state in ("fresh", "1M"):
        best = max(streams, key=lambda n: med.get((n, state), 0.0))
        ratio = med[(best, state)] / med[(bare, state)]
        target = "  (target >= 0.70: " + ("met" if ratio >= 0.7 else "MISSED") + ")" if state == "1M" else ""
        label = at if state == "1M" else state
        print(f"StreamEvents best ({best[13:]}) / bare insert, {label:<5}: {ratio:.2f}x{target}")
        plain = med.get(("StreamEvents batch 1000 x 4 streams", state))
        for mix in mixes:
            mixed = med[(mix, state)] / med[(bare, state)]
            versus = f", {med[(mix, state)] / plain:.2f}x the status-only 1000 x 4" if plain else ""
            print(f"StreamEvents ({mix[13:]}) / bare insert, {label:<5}: {mixed:.2f}x{versus}")
    for state in ("fresh", "1M"):
        ratio = med[("RecordStatusEvent, 32 callers", state)] / med[("grpc echo (limit), 32 callers", state)]
        target = "  (target >= 0.60: " + ("met" if ratio >= 0.6 else "MISSED") + ")"
        label = at if state == "1M" else state
        print(f"RecordStatusEvent / grpc echo, {label:<5}:                   {ratio:.2f}x{target}")
    for note in bench.notes:
        print(f"note: {note}")
    print("=" * 100, flush=True)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 100k preload, short measurements")
    parser.add_argument("--tiny", action="store_true", help="correctness run of the script: tiny sizes, no figures")
    parser.add_argument(
        "--engagement-share",
        type=float,
        default=ENGAGEMENT_SHARE,
        help="share of engagement events in the engagement-mix row (default 0.2; 0 leaves the row out)",
    )
    parser.add_argument("--preload", type=int, help="events in the 'already full' database (default 1,000,000)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 2, --quick 1)")
    parser.add_argument("--durability", choices=["full", "normal"], default="full")
    parser.add_argument("--workdir", help="where the database files go (default: a temporary folder, removed)")
    parser.add_argument("--profile", action="store_true", help="py-spy the server during a 1000x4 run at 1M")
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="run flowtrack with its HTTP listener (--http 127.0.0.1:0), so every RPC, event and commit is counted",
    )
    parser.add_argument("--serve-echo", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.metrics:
        SERVER_FLAGS.extend(["--http", "127.0.0.1:0"])
    if args.serve_echo:
        serve_echo()
        return 0
    sizes = TINY if args.tiny else QUICK if args.quick else FULL
    if args.preload is not None:
        sizes = Sizes(**{**sizes.__dict__, "preload": args.preload})
    if args.rounds is not None:
        sizes = Sizes(**{**sizes.__dict__, "rounds": args.rounds})
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        return run(sizes, args.durability, workdir, args.profile, args.engagement_share)
    with tempfile.TemporaryDirectory(prefix="flowtrack-bench-") as tmp:
        return run(sizes, args.durability, Path(tmp), args.profile, args.engagement_share)


if __name__ == "__main__":
    sys.exit(main())
