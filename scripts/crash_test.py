"""Crash test: SIGKILL the server while events stream in, restart it, resend,
and check that nothing acknowledged was lost or stored twice.

The server runs as `python -m flowtrack serve` on a fresh SQLite file. Client
threads (--streams, each on its own channel) send every event not yet
acknowledged over StreamEvents in batches, plus a few events acknowledged
earlier (which must come back DUPLICATE with the sequence of their first
acknowledgement). --kills times, when the count of acknowledged events
crosses a random point (and a random few milliseconds later, so the kill
lands anywhere in a commit), the server gets SIGKILL; it is restarted on the
same file and the client resends everything still unacknowledged, with the
same event ids. When every event is acknowledged the server is stopped and
the file is checked:

- every acknowledged event is stored exactly once, at the sequence its ack gave;
- every event the client sent is stored (all are resent until acknowledged),
  and nothing else is;
- the business's sequences are 1..N with no gap or repeat, and
  businesses.last_sequence is N;
- every campaign's messages and counters equal a recount from its events
  (flowtrack.store.check.problems);
- PRAGMA integrity_check is ok.

Usage:
    python scripts/crash_test.py --events 100000 --kills 20 --seed 1
Exit status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from flowtrack.v1 import common_pb2, ingest_pb2, ingest_pb2_grpc

BUSINESS = "default"  # the business of an unauthenticated loopback caller
ST = common_pb2
STATUSES = [
    (ST.MESSAGE_STATUS_SUBMITTED, 30),
    (ST.MESSAGE_STATUS_DELIVERY_NOT_CONFIRMED, 20),
    (ST.MESSAGE_STATUS_SUCCESS, 25),
    (ST.MESSAGE_STATUS_FAILED, 12),
    (ST.MESSAGE_STATUS_NOT_SUBMITTED, 3),
]
REASONS = [("BLOCKED", "blocked by user"), ("INVALID_NUMBER", "not on WhatsApp"), ("TIMEOUT", "flow timed out")]


# -- events ---------------------------------------------------------------------------------------------------------
def make_events(seed: int, n: int) -> list[ingest_pb2.Event]:
    """`n` events with seeded uuid4 ids over 3 campaigns and n/20 recipients
    (so messages get several events, in random order): statuses of every
    kind, reasons on failures, retries, channel and variant, ~5% clicks."""
    rng = random.Random(seed)
    recipients = max(30, n // 20)
    now = int(time.time())
    statuses, weights = [s for s, _ in STATUSES], [w for _, w in STATUSES]
    events = []
    for _ in range(n):
        r = rng.randrange(recipients)
        event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        at = timestamp_pb2.Timestamp(seconds=now - rng.randrange(60, 86_400), nanos=rng.randrange(1000) * 1000)
        campaign, phone = f"crash-{r % 3}", f"+4479{r:08d}"
        if rng.random() < 0.05:
            click = ingest_pb2.ClickEvent(
                event_id=event_id,
                campaign_id=campaign,
                recipient=phone,
                link_id=f"L{rng.randrange(3)}",
                occurred_at=at,
                location=common_pb2.Location(country_code="GB", city="London"),
            )
            events.append(ingest_pb2.Event(click=click))
            continue
        status = rng.choices(statuses, weights)[0]
        event = ingest_pb2.StatusEvent(
            event_id=event_id,
            campaign_id=campaign,
            recipient=phone,
            status=status,
            occurred_at=at,
            attempt=2 if rng.random() < 0.05 else 1,
            channel=("whatsapp", "sms")[r % 2],
            variant=("A", "B")[r % 2 if rng.random() < 0.9 else 1 - r % 2],  # a few variant changes
        )
        if status in (ST.MESSAGE_STATUS_FAILED, ST.MESSAGE_STATUS_NOT_SUBMITTED):
            code, message = rng.choice(REASONS)
            event.failure_reason.code, event.failure_reason.message = code, message
        events.append(ingest_pb2.Event(status=event))
    return events


def event_id_of(event: ingest_pb2.Event) -> str:
    return event.status.event_id if event.HasField("status") else event.click.event_id


# -- the server -----------------------------------------------------------------------------------------------------
@dataclass
class Server:
    database: Path
    durability: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    address: str = ""
    starts: int = 0

    def start(self) -> None:
        args = [sys.executable, "-m", "flowtrack", "serve", "--listen", "127.0.0.1:0"]
        args += ["--database", str(self.database), "--durability", self.durability, "--grace", "5", "--http", "off"]
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as handle:
            self.proc = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.starts += 1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with self.log.open("rb") as handle:
                handle.seek(offset)
                found = re.search(rb"serving on 127\.0\.0\.1:(\d+)", handle.read())
            if found:
                self.address = f"127.0.0.1:{found.group(1).decode()}"
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"the server did not start; see {self.log}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


# -- the client -----------------------------------------------------------------------------------------------------
@dataclass
class Client:
    """What the client knows: which events were acknowledged, at which sequence."""

    events: list[ingest_pb2.Event]
    rng: random.Random
    acked: dict[int, int] = field(default_factory=dict)  # event index -> sequence of its ack
    sent: set[int] = field(default_factory=set)
    duplicates_checked: int = 0
    recovered: int = 0  # DUPLICATE on first ack: committed before a kill, its ack lost
    failures: list[str] = field(default_factory=list)
    stream_errors: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def batches(self, indexes: list[int], size: int, acked_pool: list[int]) -> Iterator[tuple[list[int], Any]]:
        for start in range(0, len(indexes), size):
            chosen = indexes[start : start + size]
            if acked_pool:  # a few events acknowledged before: they must come back DUPLICATE
                chosen = chosen + self.rng.sample(acked_pool, min(len(acked_pool), 3))
            yield chosen, ingest_pb2.StreamEventsRequest(batch_id=str(start), events=[self.events[i] for i in chosen])

    def stream(self, address: str, indexes: list[int], size: int, acked_pool: list[int]) -> None:
        """One StreamEvents call over `indexes`; ends at the end or when the server dies."""
        in_flight: list[list[int]] = []

        def requests() -> Iterator[Any]:
            for chosen, request in self.batches(indexes, size, acked_pool):
                in_flight.append(chosen)
                with self.lock:
                    self.sent.update(chosen)
                yield request

        channel = grpc.insecure_channel(address)
        try:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            for reply in stub.StreamEvents(requests(), timeout=300):
                chosen = in_flight.pop(0)
                if len(reply.results) != len(chosen):
                    self.failures.append(f"batch {reply.batch_id}: {len(reply.results)} results for {len(chosen)}")
                    continue
                with self.lock:
                    for index, result in zip(chosen, reply.results, strict=True):
                        self._take(index, result)
        except grpc.RpcError as error:
            code = error.code().name if hasattr(error, "code") else "?"
            with self.lock:
                self.stream_errors[code] = self.stream_errors.get(code, 0) + 1
        finally:
            channel.close()

    def _take(self, index: int, result: Any) -> None:
        outcome = result.outcome
        if outcome not in (ingest_pb2.EVENT_OUTCOME_ACCEPTED, ingest_pb2.EVENT_OUTCOME_DUPLICATE):
            name = ingest_pb2.EventOutcome.Name(outcome)
            self.failures.append(f"event {index} came back {name} {result.reason} {list(result.violations)}")
            return
        if result.sequence <= 0:
            self.failures.append(f"event {index}: {ingest_pb2.EventOutcome.Name(outcome)} without a sequence")
            return
        if index in self.acked:
            if outcome != ingest_pb2.EVENT_OUTCOME_DUPLICATE:
                self.failures.append(f"event {index}, acknowledged before, was ACCEPTED again")
            elif result.sequence != self.acked[index]:
                self.failures.append(
                    f"event {index}: DUPLICATE at sequence {result.sequence}, first acknowledged at {self.acked[index]}"
                )
            self.duplicates_checked += 1
            return
        if outcome == ingest_pb2.EVENT_OUTCOME_DUPLICATE:
            self.recovered += 1
        self.acked[index] = result.sequence


# -- the checks -----------------------------------------------------------------------------------------------------
def verify(database: Path, expected: dict[str, int], sent: set[str]) -> list[str]:
    """Every problem of the file, given the acknowledged events (event_id ->
    sequence of the ack) and every event id the client sent. Empty means the
    file is consistent."""
    from flowtrack.store import check

    found: list[str] = []
    conn = sqlite3.connect(database)
    try:
        integrity = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        if integrity != ["ok"]:
            found.append(f"integrity_check: {integrity[:5]}")
        stored: dict[str, list[int]] = {}
        for event_id, seq in conn.execute("SELECT event_id, seq FROM events WHERE business_id = ?", (BUSINESS,)):
            stored.setdefault(event_id, []).append(seq)
        twice = [event_id for event_id, seqs in stored.items() if len(seqs) > 1]
        if twice:
            found.append(f"{len(twice)} events stored more than once, e.g. {twice[:3]}")
        missing = [event_id for event_id in expected if event_id not in stored]
        if missing:
            found.append(f"{len(missing)} acknowledged events missing, e.g. {missing[:3]}")
        moved = [e for e, seq in expected.items() if e in stored and stored[e][0] != seq]
        if moved:
            found.append(f"{len(moved)} events stored at another sequence than their ack, e.g. {moved[:3]}")
        unsent = sorted(set(stored) - sent)
        if unsent:
            found.append(f"{len(unsent)} stored events were never sent, e.g. {unsent[:3]}")
        lost = sorted(sent - set(stored))
        if lost:
            found.append(f"{len(lost)} sent events are not stored, e.g. {lost[:3]}")
        seqs = sorted(seq for seqs in stored.values() for seq in seqs)
        if seqs != list(range(1, len(seqs) + 1)):
            gaps = sorted(set(range(1, (seqs[-1] if seqs else 0) + 1)) - set(seqs))
            repeats = sorted({s for s in seqs if seqs.count(s) > 1}) if len(set(seqs)) != len(seqs) else []
            found.append(f"sequences are not 1..{len(seqs)}: gaps {gaps[:5]}, repeats {repeats[:5]}")
        row = conn.execute("SELECT last_sequence FROM businesses WHERE business_id = ?", (BUSINESS,)).fetchone()
        last = row[0] if row else 0
        if last != len(seqs):
            found.append(f"businesses.last_sequence is {last}, {len(seqs)} events stored")
        for business_id, cid in conn.execute("SELECT business_id, cid FROM campaigns ORDER BY cid").fetchall():
            problems = check.problems(conn, business_id, cid)
            if problems:
                found.append(f"campaign {cid}: {len(problems)} problems, e.g. {problems[:3]}")
    finally:
        conn.close()
    return found


# -- the run --------------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    database: Path
    events: int
    kills: int
    restarts: int
    rounds: int
    acked: int
    duplicates_checked: int
    recovered: int
    stream_errors: dict[str, int]
    seconds: float
    failures: list[str]

    def summary(self) -> str:
        verdict = "PASS" if not self.failures else f"FAIL ({len(self.failures)} problems)"
        lines = [
            f"crash test: {verdict}",
            f"  {self.events:,} events, {self.kills} SIGKILLs, {self.restarts} server starts, {self.rounds} rounds,"
            f" {self.seconds:.1f} s",
            f"  acknowledged {self.acked:,}; resent acknowledged events checked DUPLICATE: {self.duplicates_checked:,}",
            f"  committed but unacknowledged when killed, then resent and answered DUPLICATE: {self.recovered:,}",
            f"  streams cut by the kills: {self.stream_errors}",
        ]
        lines += [f"  FAILED: {failure}" for failure in self.failures[:20]]
        return "\n".join(lines)


def run(
    *,
    events: int,
    kills: int,
    seed: int,
    durability: str = "full",
    streams: int = 3,
    batch: int = 200,
    workdir: Path,
) -> Outcome:
    started = time.monotonic()
    rng = random.Random(seed)
    client = Client(make_events(seed, events), random.Random(seed + 1))
    database = workdir / "crash.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    server = Server(database, durability, workdir / "crash-server.log")
    low, high = max(1, events // 50), max(2, events * 19 // 20)
    kill_points = sorted(rng.sample(range(low, high), min(kills, high - low)))
    killed = rounds = 0
    try:
        while len(client.acked) < events and rounds < kills + 20:
            rounds += 1
            server.start()
            pending = [i for i in range(events) if i not in client.acked]
            pool = rng.sample(sorted(client.acked), min(len(client.acked), 500))
            parts = [pending[k::streams] for k in range(streams)]
            threads = [
                threading.Thread(target=client.stream, args=(server.address, part, batch, pool), daemon=True)
                for part in parts
                if part
            ]
            for thread in threads:
                thread.start()
            assassin_done = False
            while any(t.is_alive() for t in threads):
                if not assassin_done and killed < len(kill_points) and len(client.acked) >= kill_points[killed]:
                    time.sleep(rng.uniform(0, 0.05))
                    server.kill()
                    killed += 1
                    assassin_done = True
                time.sleep(0.002)
            for thread in threads:
                thread.join(60)
            if server.proc is not None and server.proc.poll() is None:
                server.stop()
            elif not assassin_done:
                client.failures.append(f"round {rounds}: the server died without being killed; see {server.log}")
    finally:
        server.kill()
    # A last start and clean stop replays nothing new but proves the file opens after the last kill.
    server.start()
    server.stop()
    failures = list(client.failures)
    if len(client.acked) < events:
        failures.append(f"only {len(client.acked)} of {events} events acknowledged after {rounds} rounds")
    if killed < len(kill_points):
        failures.append(f"only {killed} of {len(kill_points)} kills happened")
    ids = [event_id_of(e) for e in client.events]
    expected = {ids[i]: seq for i, seq in client.acked.items()}
    failures += verify(database, expected, {ids[i] for i in client.sent})
    return Outcome(
        database=database,
        events=events,
        kills=killed,
        restarts=server.starts,
        rounds=rounds,
        acked=len(client.acked),
        duplicates_checked=client.duplicates_checked,
        recovered=client.recovered,
        stream_errors=dict(client.stream_errors),
        seconds=time.monotonic() - started,
        failures=failures,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="events to send (default 100,000)")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs of the server (default 20)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the events and of the kill moments")
    parser.add_argument("--durability", choices=["full", "normal"], default="full")
    parser.add_argument("--streams", type=int, default=3, help="concurrent StreamEvents calls (default 3)")
    parser.add_argument("--batch", type=int, default=200, help="events per batch (default 200)")
    parser.add_argument("--workdir", help="folder for the database and server log (default: temporary, removed)")
    args = parser.parse_args(argv)
    options = dict(events=args.events, kills=args.kills, seed=args.seed, durability=args.durability)
    options |= dict(streams=args.streams, batch=args.batch)
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        outcome = run(workdir=workdir, **options)  # type: ignore[arg-type]
    else:
        with tempfile.TemporaryDirectory(prefix="flowtrack-crash-") as tmp:
            outcome = run(workdir=Path(tmp), **options)  # type: ignore[arg-type]
    print(outcome.summary(), flush=True)
    return 0 if not outcome.failures else 1


if __name__ == "__main__":
    sys.exit(main())
