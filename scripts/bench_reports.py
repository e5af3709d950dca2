"""Report benchmark: flowtrack's report paths beside the machine's limits.

Seeding: a campaign of --recipients recipients (default 1,000,000) and one of
1,000 are written straight into the tables (messages, events, counters) with
`executemany`, as one writer job each (tests/report_helpers.seed_job), so the
counters, sequences and campaign rows are what ingest keeps. This is much
faster than ingesting over gRPC and is only for seeding; nothing measured
below goes around the server.

The server then runs in its own process (`python -m flowtrack serve`) and is
measured over real gRPC on loopback:

1. StreamMessageReport of every row of the big campaign (page_size 1000),
   rows/s, beside a raw paged read of the same rows with the same SQL straight
   from SQLite in this process (`fetchmany(1000)`, no row building), and
   beside the same raw read plus building the same protos in-process (the
   ceiling of Python protobuf on this machine). Rounds interleave. Target:
   report / raw >= 0.7.
2. The server's peak RSS growth while streaming all rows (sampled from
   /proc every 5 ms, and VmHWM after resetting it). Target < 50 MB.
3. GetCampaignStats p50 at 1k and at --recipients recipients, interleaved.
   Target ratio <= 1.2.
4. WatchCampaignStats commit-to-push: a RecordStatusEvent to the big
   campaign every 0.3-0.6 s; the time from sending it (its commit is before
   its reply, so this is an upper bound) to the watch message that carries its
   sequence. Target p95 < 300 ms.

On PostgreSQL (`--postgres URL`, e.g. postgresql://postgres@127.0.0.1:5432/postgres)
the same campaign is seeded into a new database on that server (dropped at
the end), the server runs with `--database` on it, and the raw read is the
same SQL through a server-side cursor in a REPEATABLE READ transaction (what
a report stream reads through), `fetchmany(1000)`, with psycopg.

Usage:
    python scripts/bench_reports.py                      # 1M recipients (a few minutes)
    python scripts/bench_reports.py --recipients 100000  # quicker
    python scripts/bench_reports.py --recipients 100000 --postgres postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

import grpc  # noqa: E402

from flowtrack.core.encodings import encoder  # noqa: E402
from flowtrack.core.reports import ROW_CLICKS_CAP  # noqa: E402
from flowtrack.domain.records import MessageRecord  # noqa: E402
from flowtrack.domain.stats import MessageFilter  # noqa: E402
from flowtrack.store import encodings  # noqa: E402
from flowtrack.store import reports as sreports  # noqa: E402
from flowtrack.store import sql as ssql  # noqa: E402
from flowtrack.store.base import open_store  # noqa: E402
from flowtrack.v1 import ingest_pb2, ingest_pb2_grpc, report_pb2, report_pb2_grpc  # noqa: E402
from flowtrack.wire.encoded import message_row as encoded_row  # noqa: E402
from flowtrack.wire.reports import message_row  # noqa: E402
from tests.report_helpers import BASE_US, recipient_name, seed_job, status_event  # noqa: E402

BUSINESS = "default"
PAGE = 1000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int | str = "self", field: str = "VmRSS") -> int:
    """A /proc/PID/status memory field of a process (Linux), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class RssPeak:
    """Memory growth of a process over a `with` block, in KiB: VmHWM is reset
    to the current RSS on entry; on exit `hwm` is the VmHWM growth and, if
    `sample` is on, `sampled` the largest RSS growth seen every 5 ms."""

    def __init__(self, pid: int | str = "self", *, sample: bool = True) -> None:
        self.pid, self.sample = pid, sample
        self.base = self.peak = self.hwm = self.sampled = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RssPeak:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        self.base = self.peak = rss_kib(self.pid)
        if self.sample:
            self._thread = threading.Thread(target=self._sample)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sampled = self.peak - self.base
        self.hwm = rss_kib(self.pid, "VmHWM") - self.base


def pg_database(base_url: str, name: str) -> str:
    """A new, empty database `name` on the PostgreSQL server of `base_url`
    (dropped first if left by an earlier run): its URL."""
    import psycopg

    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(base_url)
    return urlunsplit(parts._replace(path="/" + name))


def drop_pg_database(base_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def is_url(database: Path | str) -> bool:
    return isinstance(database, str) and database.startswith(("postgresql://", "postgres://"))


def seed(database: Path | str, big: int, encoded: bool = True) -> None:
    """The bench's two campaigns written into `database` (a SQLite file, or
    a PostgreSQL URL), then the file checkpointed or the tables analysed.
    With `encoded`, every row's stored encodings are filled then
    (store/encodings.py), as `flowtrack db encode` does: the steady state of
    a server whose background job has caught up; and checkpointed or
    analysed again."""
    store = open_store(str(database))
    try:
        started = time.perf_counter()
        store.writer.run_sync(seed_job(BUSINESS, "small", 1000, seed=1))
        store.writer.run_sync(seed_job(BUSINESS, "big", big, seed=2), rows=big)
        print(f"seeded {big:,} + 1,000 recipients in {time.perf_counter() - started:.1f} s")
    finally:
        store.close()
    settle(database)
    if not encoded:
        return
    store = open_store(str(database))
    try:
        started = time.perf_counter()
        encode, filled = encoder(encoded_row), 0
        after: encodings.Position | None = encodings.START
        while after is not None:
            done = store.writer.run_sync(encodings.fill_job(encode, ROW_CLICKS_CAP, after))
            filled, after = filled + done.encoded, done.after
        print(f"encoded {filled:,} rows (store/encodings.py) in {time.perf_counter() - started:.1f} s")
    finally:
        store.close()
    settle(database)


def settle(database: Path | str) -> None:
    """The SQLite file checkpointed, or the PostgreSQL tables vacuumed and analysed."""
    if is_url(database):
        import psycopg

        with psycopg.connect(str(database), autocommit=True) as pg:
            pg.execute("VACUUM ANALYZE")
        return
    conn = sqlite3.connect(database)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def raw_pages(database: Path | str, page: int = PAGE, stored: str | None = None) -> Iterator[list[tuple[Any, ...]]]:
    """The big campaign's message report rows, `page` at a time, read with
    the report's own SQL and nothing else: `fetchmany` on SQLite; on
    PostgreSQL a server-side cursor in a REPEATABLE READ transaction, as a
    report stream reads (store/pg/snapshot.py). The report's columns (the
    limit the targets are held against), or with `stored` (recipient, that
    stored column) only: what the stream reads once the rows are encoded,
    shown beside the limit, not as it."""
    if is_url(database):
        import psycopg

        pg = psycopg.connect(str(database))
        try:
            pg.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            business_id, cid = pg.execute("SELECT business_id, cid FROM campaigns WHERE campaign_id = 'big'").fetchone()  # type: ignore[misc]
            statement, values = sreports.message_report_sql(business_id, cid, MessageFilter(), None, stored)
            text, params = ssql.compile_for(statement, ssql.POSTGRESQL).bind(values)
            with pg.cursor(name="bench_raw") as cursor:
                cursor.execute(text, params)
                while rows := cursor.fetchmany(page):
                    yield rows
        finally:
            pg.close()
        return
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        business_id, cid = conn.execute("SELECT business_id, cid FROM campaigns WHERE campaign_id = 'big'").fetchone()
        statement, values = sreports.message_report_sql(business_id, cid, MessageFilter(), None, stored)
        text, params = ssql.compile_for(statement, ssql.SQLITE).bind(values)
        read = conn.execute(text, params)
        while rows := read.fetchmany(page):
            yield rows
    finally:
        conn.close()


def raw_read(database: Path | str, build: bool, stored: str | None = None) -> tuple[int, float]:
    started = time.perf_counter()
    n = 0
    for rows in raw_pages(database, stored=stored):
        if build:
            report_pb2.StreamMessageReportResponse(
                rows=[message_row(MessageRecord._make(r)) for r in rows]
            ).SerializeToString()
        n += len(rows)
    return n, time.perf_counter() - started


def grpc_read(stub: Any, pid: int) -> tuple[int, float, int, int]:
    """Rows, seconds, peak sampled RSS growth (KiB), VmHWM growth (KiB)."""
    with RssPeak(pid) as server:
        started = time.perf_counter()
        n = 0
        for page in stub.StreamMessageReport(
            report_pb2.StreamMessageReportRequest(campaign_id="big", page_size=PAGE), timeout=600
        ):
            n += len(page.rows)
        elapsed = time.perf_counter() - started
    return n, elapsed, server.sampled, server.hwm


def stats_p50(stub: Any, campaign: str, calls: int) -> float:
    times = []
    request = report_pb2.GetCampaignStatsRequest(campaign_id=campaign)
    for _ in range(calls):
        started = time.perf_counter()
        stub.GetCampaignStats(request, timeout=10)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def watch_latencies(channel: grpc.Channel, samples: int) -> list[float]:
    reports = report_pb2_grpc.ReportServiceStub(channel)
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)
    watch = reports.WatchCampaignStats(report_pb2.WatchCampaignStatsRequest(campaign_id="big"), timeout=600)
    seen: dict[int, float] = {}
    cond = threading.Condition()

    def read() -> None:
        try:
            for message in watch:
                with cond:
                    seen[message.stats.sequence] = time.perf_counter()
                    cond.notify_all()
        except grpc.RpcError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.5)
    import random

    rng = random.Random(5)
    latencies = []
    for i in range(samples):
        time.sleep(rng.uniform(0.3, 0.6))
        event = status_event(f"watch-{i}", "big", recipient_name(i), 6, BASE_US + 10**9 + i).status
        sent = time.perf_counter()
        seq = ingest.RecordStatusEvent(ingest_pb2.RecordStatusEventRequest(event=event), timeout=10).committed_sequence
        with cond:
            cond.wait_for(lambda s=seq: any(k >= s for k in seen), timeout=5)  # type: ignore[misc]
            pushed = min((t for k, t in seen.items() if k >= seq), default=None)
        if pushed is not None:
            latencies.append(pushed - sent)
    watch.cancel()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=1_000_000, help="recipients of the big campaign")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the streaming measurements")
    parser.add_argument("--stats-calls", type=int, default=2000, help="GetCampaignStats calls per campaign")
    parser.add_argument("--watch-samples", type=int, default=40, help="events for the watch latency")
    parser.add_argument(
        "--postgres", metavar="URL", help="measure on PostgreSQL: a new database on this server (dropped at the end)"
    )
    parser.add_argument(
        "--no-encodings",
        action="store_true",
        help="leave the rows' stored encodings empty (the server's background job fills them meanwhile)",
    )
    args = parser.parse_args()

    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()},"
        f" grpcio {grpc.__version__}, SQLite {sqlite3.sqlite_version}"
    )
    tmp = Path(tempfile.mkdtemp(prefix="flowtrack-bench-reports-"))
    pg_name = f"flowtrack_bench_reports_{os.getpid()}"
    path: Path | str = pg_database(args.postgres, pg_name) if args.postgres else tmp / "bench.db"
    backend = "PostgreSQL" if args.postgres else "SQLite"
    seed(path, args.recipients, encoded=not args.no_encodings)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flowtrack",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--database",
            str(path),
            "--log-level",
            "WARNING",
            "--http",
            "off",  # measured as before the page was on by default
        ],
        env=env,
    )
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 64 << 20)])
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = report_pb2_grpc.ReportServiceStub(channel)
        stub.GetCampaignStats(report_pb2.GetCampaignStatsRequest(campaign_id="small"), timeout=10)

        raw_rates, built_rates, grpc_rates, rss_peaks, hwm_peaks, stored_rates = [], [], [], [], [], []
        for r in range(args.rounds):
            n, s = raw_read(path, build=False)
            raw_rates.append(n / s)
            n, s = raw_read(path, build=False, stored="row_pb")
            stored_rates.append(n / s)
            n, s = raw_read(path, build=True)
            built_rates.append(n / s)
            n2, s2, peak, hwm = grpc_read(stub, server.pid)
            assert n2 == n == args.recipients, (n, n2)
            grpc_rates.append(n2 / s2)
            rss_peaks.append(peak)
            hwm_peaks.append(hwm)
            print(
                f"round {r + 1}: raw {raw_rates[-1]:,.0f} rows/s,"
                f" raw (recipient, row_pb) {stored_rates[-1]:,.0f} rows/s,"
                f" raw+protos {built_rates[-1]:,.0f} rows/s,"
                f" gRPC {grpc_rates[-1]:,.0f} rows/s, server RSS +{peak / 1024:.1f} MB (VmHWM +{hwm / 1024:.1f} MB)"
            )

        small, big = [], []
        for _ in range(3):
            small.append(stats_p50(stub, "small", args.stats_calls // 3))
            big.append(stats_p50(stub, "big", args.stats_calls // 3))
        p50_small, p50_big = statistics.median(small), statistics.median(big)

        latencies = sorted(watch_latencies(channel, args.watch_samples))
        p95 = latencies[max(0, int(len(latencies) * 0.95) - 1)] if latencies else float("nan")
        p50w = statistics.median(latencies) if latencies else float("nan")
        channel.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        if args.postgres:
            drop_pg_database(args.postgres, pg_name)

    raw, built, rpc, stored = (statistics.median(x) for x in (raw_rates, built_rates, grpc_rates, stored_rates))
    print()
    print(f"{'measure':<48} {'value':>16} {'target':>12}")
    print(f"{'raw paged read (' + backend + ', fetchmany 1000)':<48} {raw:>12,.0f} r/s")
    print(f"{'raw read + build protos in-process':<48} {built:>12,.0f} r/s")
    print(f"{'raw read of (recipient, stored row_pb) only':<48} {stored:>12,.0f} r/s")
    print(f"{'StreamMessageReport over gRPC':<48} {rpc:>12,.0f} r/s")
    print(f"{'  ratio gRPC / raw read':<48} {rpc / raw:>16.2f} {'>= 0.7':>12}")
    print(f"{'  ratio gRPC / raw read + protos':<48} {rpc / built:>16.2f}")
    print(f"{'  ratio gRPC / raw read of the stored column':<48} {rpc / stored:>16.2f}")
    print(f"{'server peak RSS growth while streaming':<48} {max(rss_peaks) / 1024:>13.1f} MB {'< 50 MB':>12}")
    print(f"{'  (VmHWM growth)':<48} {max(hwm_peaks) / 1024:>13.1f} MB")
    print(f"{'GetCampaignStats p50, 1k recipients':<48} {p50_small * 1e3:>13.3f} ms")
    print(f"{'GetCampaignStats p50, ' + format(args.recipients, ',') + ' recipients':<48} {p50_big * 1e3:>13.3f} ms")
    print(f"{'  ratio':<48} {p50_big / p50_small:>16.2f} {'<= 1.2':>12}")
    print(f"{'Watch send-to-push p50':<48} {p50w * 1e3:>13.1f} ms")
    print(
        f"{'Watch send-to-push p95 (' + str(len(latencies)) + ' samples)':<48} {p95 * 1e3:>13.1f} ms {'< 300 ms':>12}"
    )
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
