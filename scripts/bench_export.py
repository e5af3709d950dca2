"""Export benchmark: ExportReport (message report) as CSV and as XLSX, with
peak memory, beside the limits measured in the same run.

Seeding reuses scripts/bench_reports.py: a campaign of --rows recipients
(default 1,000,000; 10% with 1-3 clicks) written straight into the tables
with executemany. The server then runs in its own process
(`python -m flowtrack serve`) and every export goes over real gRPC on
loopback, the client writing the chunks to a file.

Measured:
1. CSV export rows/s (target >= 150k rows/s), beside a raw paged read of the
   same rows from SQLite in this process (the ceiling below any export).
2. XLSX export rows/s, beside xlsxwriter alone writing the same cells
   (constant_memory, the same write_string / write_number calls, no database,
   no gRPC) in this process: the ratio export / xlsxwriter (target >= 0.8).
   The cells are the first 10,000 export rows, cycled to --rows rows.
3. Peak RSS growth of the server process while exporting (sampled from /proc
   every 5 ms, and VmHWM after resetting it), of this client process while
   receiving (VmHWM), and of the xlsxwriter-alone run (VmHWM).

With `--postgres URL` the campaign is seeded into a new database on that
PostgreSQL server (dropped at the end), the server runs on it, and the raw
read is the report's SQL through a server-side cursor (bench_reports.py).

Usage:
    python scripts/bench_export.py                # 1M rows (several minutes: XLSX is ~1 min per million)
    python scripts/bench_export.py --quick        # 100k rows, one round
    python scripts/bench_export.py --rows 300000
    python scripts/bench_export.py --quick --postgres postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))

import grpc  # noqa: E402
import xlsxwriter  # noqa: E402
from bench_reports import RssPeak, drop_pg_database, free_port, pg_database, raw_pages, raw_read, seed  # noqa: E402

from flowtrack.domain.records import Click, MessageRecord  # noqa: E402
from flowtrack.export import columns  # noqa: E402
from flowtrack.export.xlsx import WORKBOOK_OPTIONS  # noqa: E402
from flowtrack.v1 import report_pb2, report_pb2_grpc  # noqa: E402
from tests.report_helpers import BASE_US  # noqa: E402

CAMPAIGN = "big"


def export(stub: Any, fmt: int, out: Path, pid: int) -> tuple[int, float, int, int, int]:
    """rows, seconds, server peak RSS growth (sampled), server VmHWM growth,
    client VmHWM growth (KiB)."""
    with RssPeak(pid) as server, RssPeak(sample=False) as client:
        started = time.perf_counter()
        rows = 0
        with out.open("wb") as file:
            for message in stub.ExportReport(
                report_pb2.ExportReportRequest(campaign_id=CAMPAIGN, format=fmt),  # type: ignore[arg-type]
                timeout=3600,
            ):
                file.write(message.chunk)
                rows = message.rows_written
        elapsed = time.perf_counter() - started
    return rows, elapsed, server.sampled, server.hwm, client.hwm


def sample_cells(database: Path | str, n: int) -> list[list[columns.Cell]]:
    ctx = columns.Context("default", CAMPAIGN, "")
    rows = [MessageRecord._make(r) for r in next(raw_pages(database, n))]
    # Clicked rows get a representative link_clicks cell.
    clicks = [Click("promo", "Body variable 1", BASE_US)]
    return [columns.message_cells(r, ctx, clicks if r.clicks else None) for r in rows]


def xlsxwriter_alone(cells: list[list[columns.Cell]], rows: int, out: Path) -> tuple[float, int]:
    """Seconds and VmHWM growth (KiB) of xlsxwriter writing `rows` rows cycled
    from `cells`, header included, with the same calls the export makes."""
    with RssPeak(sample=False) as me:
        started = time.perf_counter()
        book = xlsxwriter.Workbook(str(out), dict(WORKBOOK_OPTIONS))
        sheet = book.add_worksheet("messages")
        for col, title in enumerate(columns.MESSAGE_HEADER):
            sheet.write_string(0, col, title)
        string, number = sheet.write_string, sheet.write_number
        for r, row in enumerate(itertools.islice(itertools.cycle(cells), rows), start=1):
            for col, value in enumerate(row):
                if value is None:
                    continue
                if type(value) is str:
                    string(r, col, value)
                else:
                    number(r, col, value)
        book.close()
        elapsed = time.perf_counter() - started
    return elapsed, me.hwm


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="recipients (rows) of the exported campaign")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--quick", action="store_true", help="100,000 rows, one round")
    parser.add_argument(
        "--postgres", metavar="URL", help="measure on PostgreSQL: a new database on this server (dropped at the end)"
    )
    args = parser.parse_args()
    if args.quick:
        args.rows, args.rounds = 100_000, 1

    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()},"
        f" grpcio {grpc.__version__}, SQLite {sqlite3.sqlite_version}, xlsxwriter {xlsxwriter.__version__},"
        f" load average {os.getloadavg()[0]:.2f}"
    )
    tmp = Path(tempfile.mkdtemp(prefix="flowtrack-bench-export-"))
    pg_name = f"flowtrack_bench_export_{os.getpid()}"
    path: Path | str = pg_database(args.postgres, pg_name) if args.postgres else tmp / "bench.db"
    backend = "PostgreSQL" if args.postgres else "SQLite"
    seed(path, args.rows)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-m", "flowtrack", "serve", "--listen", f"127.0.0.1:{port}"]
    command += ["--database", str(path), "--log-level", "WARNING", "--http", "off"]
    server = subprocess.Popen(command, env=env)
    results: dict[str, list[float]] = {k: [] for k in ("raw", "csv", "xlsx", "alone")}
    memory: dict[str, list[int]] = {k: [] for k in ("csv_srv", "csv_hwm", "csv_cli", "xlsx_srv", "xlsx_hwm")}
    memory |= {"xlsx_cli": [], "alone": []}
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = report_pb2_grpc.ReportServiceStub(channel)
        cells = sample_cells(path, 10_000)
        # The sample lives for the whole run: keep the collector from rescanning
        # it during the xlsxwriter-alone runs (which would slow the baseline).
        gc.collect()
        gc.freeze()
        for r in range(args.rounds):
            n, s = raw_read(path, build=False)
            results["raw"].append(n / s)
            n, s, srv, hwm, cli = export(stub, report_pb2.EXPORT_FORMAT_CSV, tmp / "out.csv", server.pid)
            assert n == args.rows, (n, args.rows)
            results["csv"].append(n / s)
            memory["csv_srv"].append(srv)
            memory["csv_hwm"].append(hwm)
            memory["csv_cli"].append(cli)
            n, s, srv, hwm, cli = export(stub, report_pb2.EXPORT_FORMAT_XLSX, tmp / "out.xlsx", server.pid)
            assert n == args.rows, (n, args.rows)
            results["xlsx"].append(n / s)
            memory["xlsx_srv"].append(srv)
            memory["xlsx_hwm"].append(hwm)
            memory["xlsx_cli"].append(cli)
            s, grown = xlsxwriter_alone(cells, args.rows, tmp / "alone.xlsx")
            results["alone"].append(args.rows / s)
            memory["alone"].append(grown)
            print(
                f"round {r + 1}: raw read {results['raw'][-1]:,.0f} r/s, CSV export {results['csv'][-1]:,.0f} r/s,"
                f" XLSX export {results['xlsx'][-1]:,.0f} r/s, xlsxwriter alone {results['alone'][-1]:,.0f} r/s",
                flush=True,
            )
        channel.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        if args.postgres:
            drop_pg_database(args.postgres, pg_name)
    raw, csv_rate, xlsx_rate, alone = (statistics.median(results[k]) for k in ("raw", "csv", "xlsx", "alone"))

    def mb(key: str) -> str:
        return f"{max(memory[key]) / 1024:>10.1f} MB"

    print()
    print(f"{args.rows:,} message rows, median of {args.rounds} round(s)")
    print(f"{'measure':<52} {'value':>16} {'target':>14}")
    print(f"{'raw paged read (' + backend + ', fetchmany 1000)':<52} {raw:>12,.0f} r/s")
    print(f"{'CSV export over gRPC':<52} {csv_rate:>12,.0f} r/s {'>= 150k r/s':>14}")
    print(f"{'  ratio CSV export / raw read':<52} {csv_rate / raw:>16.2f}")
    print(f"{'  server peak RSS growth (sampled / VmHWM)':<52} {mb('csv_srv')} / {mb('csv_hwm').strip()}")
    print(f"{'  client peak RSS growth (VmHWM)':<52} {mb('csv_cli')}")
    print(f"{'XLSX export over gRPC':<52} {xlsx_rate:>12,.0f} r/s")
    print(f"{'xlsxwriter alone, same cells (constant_memory)':<52} {alone:>12,.0f} r/s")
    print(f"{'  ratio XLSX export / xlsxwriter alone':<52} {xlsx_rate / alone:>16.2f} {'>= 0.8':>14}")
    print(f"{'  server peak RSS growth (sampled / VmHWM)':<52} {mb('xlsx_srv')} / {mb('xlsx_hwm').strip()}")
    print(f"{'  client peak RSS growth (VmHWM)':<52} {mb('xlsx_cli')}")
    print(f"{'  xlsxwriter alone peak RSS growth (VmHWM)':<52} {mb('alone')}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
