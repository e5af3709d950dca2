"""Repeatable CPU figures: instructions per ingested event and per report row,
counted by valgrind's callgrind, checked against a committed baseline.

Wall-clock benchmarks on a shared machine move by 20-30% within minutes;
the number of instructions a fixed piece of work executes does not. This
script counts, on fixed seeded inputs:

- ``ingest_event``: instructions per event of the SQLite writer job, the way
  StreamEvents stores a batch: ``Writer.run_sync(lambda tx: record_events(tx,
  business, batch, options))`` for 100-event batches of a realistic mix
  (status, click and engagement events, 2% resent duplicates, 5% late: the
  events `flowtrack simulate` makes for a seeded campaign), into a fresh
  SQLite file, durability full. Counted: the job, the writer's BEGIN / flush
  of the counters / COMMIT, the hand-over to the writer thread and back (both
  threads are counted). Not counted: decoding and validating the protos
  (that happens before, in setup).
- ``report_row``: instructions per row of StreamMessageReport's encoding:
  the row's wire bytes (``wire/encoded.message_row(record)``) and their
  size per row, then the page framed into its response's bytes
  (``MESSAGE_PAGES.page``), as the gRPC face sends them, in pages of the
  default page size. The records are the message rows read back from the
  ingested file (MessageRecord), cycled to the count wanted. Not counted:
  the SQLite read, the link clicks and button taps a page looks up.
- ``csv_row``: instructions per row of the CSV export (flowtrack layout):
  ``csvlines.message_line`` for each row and ``LineEncoder.write`` of the
  page, to UTF-8 bytes.
- ``report_row_stored`` / ``csv_row_stored``: the same pages served from
  the rows' stored encodings (store/encodings.py; what the server does once
  its background job has filled them): a report row is its stored bytes
  (the read's (recipient, row_pb) tuple, its size, the page framed); a CSV
  row is its recipient's cell, the shared cells and its stored tail
  (``core/encodings.tail_lines``), the page to UTF-8. The stored forms are
  made in setup from the same records.

Method. ``--run`` (what this script does when not given ``--worker``) starts
this script again as ``--worker`` under
``valgrind --tool=callgrind --dump-before=getppid``. The worker does its
setup (imports, the inputs, warm-up rounds of every measured function, so
that the interpreter's caches and specialisations are warm), then calls
``os.getppid()`` (the libc function ``getppid``, which nothing else calls)
as a marker just before and just after each measured phase, with a full
garbage collection before each (every phase starts with the collector in
the same state). At each marker callgrind writes the instructions counted
since the one before, in every thread (the writer thread's included), to a
file of its own: each phase is counted alone, whatever Python's start-up
and imports cost. Toggling collection on a function (``--toggle-collect``)
would need a C function entered only by the measured work, in each thread
that does it; Python code has none of its own. Each figure is measured twice, at a small and a large
size (fresh SQLite files for the ingest), and is the difference divided by
the difference in size: what a phase costs once (a first page, a last
commit) cancels out. ``PYTHONHASHSEED=0``, ``TZ=UTC``, a C locale,
``PYTHONDONTWRITEBYTECODE`` and a temp directory name of fixed length make
the runs alike: runs agree within 0.5%.

Usage:

    python3 scripts/cpu_guard.py            # measure, print the figures
    python3 scripts/cpu_guard.py --check    # ...and fail if one is > 15% over the baseline
    python3 scripts/cpu_guard.py --update   # ...and write them as the new baseline

The baseline is ``scripts/cpu_guard.json``. Instruction counts change with
the Python, SQLite and protobuf builds: the check prints the versions the
baseline was measured with when they differ from the running ones.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import itertools
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BASELINE = Path(__file__).with_suffix(".json")
THRESHOLD = 0.15  # a figure more than 15% over its baseline fails the check

# Sizes: (small, large) per figure. The figure is (large - small) / (large - small size).
EVENT_SIZES = (400, 2000)
ROW_SIZES = (1000, 5000)
WARMUP_EVENTS = 300
BATCH = 100  # events per writer job, as a StreamEvents batch of 100
SEED = 1
END_TIME = 1_780_000_000.0  # the simulated campaign's last event (2026-05-28), fixed
BUSINESS = "cpu-guard"
CAMPAIGN = "guard"
FIGURES = ("ingest_event", "report_row", "csv_row", "report_row_stored", "csv_row_stored")
MARKER = "getppid"


def flowtrack() -> SimpleNamespace:
    """Every flowtrack name the guard uses, imported here only (modules move
    between layers: fix the imports in this one place)."""
    from flowtrack.api import ingest as api_ingest
    from flowtrack.client import simulate
    from flowtrack.core import encodings as cencodings
    from flowtrack.domain import stats as dstats
    from flowtrack.domain.ingest import Options
    from flowtrack.domain.records import MessageRecord
    from flowtrack.domain.validation import Checker
    from flowtrack.export import columns, csvlines
    from flowtrack.export.csv import CsvEncoder
    from flowtrack.store import reports as sreports
    from flowtrack.store import sql as ssql
    from flowtrack.store.ingest import record_events
    from flowtrack.store.store import Store
    from flowtrack.v1 import report_pb2
    from flowtrack.wire import encoded
    from flowtrack.wire.reports import message_row

    return SimpleNamespace(
        status_from_proto=api_ingest.status_from_proto,
        click_from_proto=api_ingest.click_from_proto,
        engagement_from_proto=api_ingest.engagement_from_proto,
        message_row=message_row,
        encoded=encoded,
        csvlines=csvlines,
        cencodings=cencodings,
        simulate=simulate,
        dstats=dstats,
        Options=Options,
        MessageRecord=MessageRecord,
        Checker=Checker,
        columns=columns,
        CsvEncoder=CsvEncoder,
        sreports=sreports,
        ssql=ssql,
        record_events=record_events,
        Store=Store,
        report_pb2=report_pb2,
    )


# -- the fixed inputs and the measured work ---------------------------------------


def simulated(n: int, ft: SimpleNamespace | None = None) -> tuple[list[Any], list[Any]]:
    """`n` events (protos, ingest_pb2.Event) of a seeded simulated campaign
    of about n / 5.4 recipients, in delivery order, and its audience: all of
    its events but the last few percent, so that every size holds the same
    mix (about 56% status, 39% engagement, 5% click events, 2% of them
    resent duplicates)."""
    ft = ft or flowtrack()
    recipients = max(1, n // 5)
    while True:
        config = ft.simulate.SimConfig(campaign_id=CAMPAIGN, recipients=recipients, seed=SEED, end_time=END_TIME)
        sim = ft.simulate.generate(config)
        if len(sim.events) >= n:
            return list(sim.events[:n]), list(sim.audience)
        recipients *= 2


def make_events(n: int, ft: SimpleNamespace | None = None) -> list[Any]:
    """`simulated(n)` as domain events, validated as the servicer does."""
    ft = ft or flowtrack()
    now = int(END_TIME * 1_000_000) + 60_000_000
    convert = {"status": ft.status_from_proto, "click": ft.click_from_proto, "engagement": ft.engagement_from_proto}
    out = []
    for item in simulated(n, ft)[0]:
        kind = item.WhichOneof("kind")
        check = ft.Checker()
        event = convert[kind](getattr(item, kind), check, now, 300_000_000)
        if check.violations:  # pragma: no cover - the simulation makes valid events only
            raise ValueError(f"invalid simulated event: {check.violations}")
        out.append(event)
    return out


def ingest(store: Any, events: Sequence[Any], ft: SimpleNamespace | None = None) -> list[Any]:
    """Store `events` in BATCH-event writer jobs, as StreamEvents does; the results."""
    ft = ft or flowtrack()
    options, record = ft.Options(), ft.record_events
    results: list[Any] = []
    for start in range(0, len(events), BATCH):
        batch = list(events[start : start + BATCH])
        stored, _ = store.writer.run_sync(
            lambda tx, batch=batch: record(tx, BUSINESS, batch, options),  # type: ignore[misc]
            len(batch),
        )
        results.extend(stored)
    return results


def message_records(store: Any, ft: SimpleNamespace | None = None) -> list[Any]:
    """The message report's rows of the guard's campaign, as the stream reads them."""
    ft = ft or flowtrack()
    conn = store.reader_connection()
    cid = conn.execute(
        "SELECT cid FROM campaigns WHERE business_id = ? AND campaign_id = ?", (BUSINESS, CAMPAIGN)
    ).fetchone()[0]
    statement, values = ft.sreports.message_report_sql(BUSINESS, cid, ft.dstats.message_filter(), None)
    return list(ft.ssql.records(conn, statement, values, ft.MessageRecord))


def cycled(records: Sequence[Any], n: int) -> list[Any]:
    return list(itertools.islice(itertools.cycle(records), n))


def encode_report(records: Sequence[Any], ft: SimpleNamespace | None = None) -> int:
    """StreamMessageReport's encoding of `records`, a page at a time; the bytes made."""
    ft = ft or flowtrack()
    size = ft.dstats.page_size(0)
    pages = ft.encoded.MESSAGE_PAGES
    item, item_size = pages.item, pages.size
    total = 0
    for start in range(0, len(records), size):
        items = []
        for record in records[start : start + size]:
            row = item(record)
            item_size(row)
            items.append(row)
        total += len(pages.page(items, 1, "t"))
    return total


def encode_csv(records: Sequence[Any], ft: SimpleNamespace | None = None) -> int:
    """The CSV export's encoding of `records` (flowtrack layout, no clicks or
    taps looked up), a page of 1,000 rows at a time; the bytes made."""
    ft = ft or flowtrack()
    shared = ft.csvlines.context(ft.columns.Context(BUSINESS, CAMPAIGN, "CPU guard"))
    line, encoder = ft.csvlines.message_line, ft.csvlines.LineEncoder(ft.columns.MESSAGE_HEADER)
    total = len(encoder.header())
    for start in range(0, len(records), 1000):
        total += len(encoder.write([line(r, shared, None, None) for r in records[start : start + 1000]]))
    return total


def stored_forms(records: Sequence[Any], ft: SimpleNamespace | None = None) -> tuple[list[Any], list[Any]]:
    """The rows as a stream reads them once their encodings are stored:
    (recipient, row_pb) for the report, (recipient, csv_tail) for the CSV."""
    ft = ft or flowtrack()
    encode = ft.cencodings.encoder(ft.encoded.message_row)
    made = encode(records, {}, {})
    return [(r.recipient, pb) for r, (pb, _) in zip(records, made, strict=True)], [
        (r.recipient, tail) for r, (_, tail) in zip(records, made, strict=True)
    ]


def serve_report(rows: Sequence[Any], ft: SimpleNamespace | None = None) -> int:
    """StreamMessageReport's pages of stored rows (core/paging.py's loop with
    core/reports.py's item for a stored row); the bytes made."""
    ft = ft or flowtrack()
    size = ft.dstats.page_size(0)
    pages = ft.encoded.MESSAGE_PAGES
    item_size = pages.size
    total = 0
    for start in range(0, len(rows), size):
        items = []
        for row in rows[start : start + size]:
            built = row[1]
            item_size(built)
            items.append(built)
        total += len(pages.page(items, 1, "t"))
    return total


def serve_csv(rows: Sequence[Any], ft: SimpleNamespace | None = None) -> int:
    """The CSV export's pages of stored tails, 1,000 rows at a time; the bytes made."""
    ft = ft or flowtrack()
    shared = ft.csvlines.context(ft.columns.Context(BUSINESS, CAMPAIGN, "CPU guard"))
    lines, encoder = ft.cencodings.tail_lines, ft.csvlines.LineEncoder(ft.columns.MESSAGE_HEADER)
    total = len(encoder.header())
    for start in range(0, len(rows), 1000):
        total += len(encoder.write(lines(rows[start : start + 1000], shared)))
    return total


# -- the worker: runs under callgrind ---------------------------------------------


def _mark() -> None:
    """A phase boundary: callgrind dumps what it counted since the last one."""
    os.getppid()


PHASES = (
    "ingest_small",
    "ingest_large",
    "report_small",
    "report_large",
    "csv_small",
    "csv_large",
    "report_stored_small",
    "report_stored_large",
    "csv_stored_small",
    "csv_stored_large",
)


def worker(workdir: Path) -> None:
    """Setup, then each phase of PHASES between two markers, after a full
    garbage collection (so that each phase starts with the collector in the
    same state, whatever the phases before it allocated). Callgrind's parts
    are: setup, then per phase the phase and the gap after it (the
    collection), then what runs after the last marker."""
    ft = flowtrack()
    small_n, large_n = EVENT_SIZES
    events = make_events(large_n, ft)
    warm = ft.Store(workdir / "warm.db")
    ingest(warm, make_events(WARMUP_EVENTS, ft), ft)
    # The large phase's own events into a file of their own: every statement
    # the phases run (a multi-row insert per row count, a key look-up per list
    # length) is compiled and cached before counting, once per process as in
    # a server; otherwise the compilations (a few million instructions each)
    # that fall in the large phase and not the small one count as per-event work.
    shapes = ft.Store(workdir / "shapes.db")
    ingest(shapes, events, ft)
    shapes.close()
    records = message_records(warm, ft)
    rows = {n: cycled(records, n) for n in ROW_SIZES}
    encode_report(rows[ROW_SIZES[0]], ft)
    encode_csv(rows[ROW_SIZES[0]], ft)
    stored = {n: stored_forms(rows[n], ft) for n in ROW_SIZES}
    serve_report(stored[ROW_SIZES[0]][0], ft)
    serve_csv(stored[ROW_SIZES[0]][1], ft)
    warm.close()
    stores = [ft.Store(workdir / f"{name}.db") for name in ("small", "large")]
    work: dict[str, Callable[[], object]] = {
        "ingest_small": lambda: ingest(stores[0], events[:small_n], ft),
        "ingest_large": lambda: ingest(stores[1], events[:large_n], ft),
        "report_small": lambda: encode_report(rows[ROW_SIZES[0]], ft),
        "report_large": lambda: encode_report(rows[ROW_SIZES[1]], ft),
        "csv_small": lambda: encode_csv(rows[ROW_SIZES[0]], ft),
        "csv_large": lambda: encode_csv(rows[ROW_SIZES[1]], ft),
        "report_stored_small": lambda: serve_report(stored[ROW_SIZES[0]][0], ft),
        "report_stored_large": lambda: serve_report(stored[ROW_SIZES[1]][0], ft),
        "csv_stored_small": lambda: serve_csv(stored[ROW_SIZES[0]][1], ft),
        "csv_stored_large": lambda: serve_csv(stored[ROW_SIZES[1]][1], ft),
    }
    for name in PHASES:
        gc.collect()
        _mark()
        work[name]()
        _mark()
    for store in stores:
        store.close()


# -- the driver -------------------------------------------------------------------

_TOTALS = re.compile(rb"^(?:totals|summary):\s*(\d+)", re.MULTILINE)


def valgrind_command(out: Path) -> list[str]:
    return [
        "valgrind",
        "--tool=callgrind",
        f"--dump-before={MARKER}",
        f"--callgrind-out-file={out}",
        "--dump-instr=no",
        "--dump-line=no",
        "--compress-pos=no",
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
    ]


def _env(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "LC_", "FLOWTRACK_"))}
    env.update(
        PYTHONHASHSEED="0",
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONPATH=str(ROOT / "src"),
        TZ="UTC",
        LC_ALL="C.UTF-8",
        LANG="C.UTF-8",
        TMPDIR=str(workdir),
        CPU_GUARD_WORKDIR=str(workdir),
    )
    return env


def parts(out: Path) -> list[int]:
    """The instructions of each dump callgrind wrote for `out`, in order."""
    found: list[tuple[int, int]] = []
    for path in out.parent.glob(out.name + "*"):
        suffix = path.name[len(out.name) :]
        number = int(suffix[1:]) if suffix.startswith(".") and suffix[1:].isdigit() else 10**9  # the last: at exit
        match = _TOTALS.search(path.read_bytes())
        found.append((number, int(match.group(1)) if match else 0))
    return [ir for _, ir in sorted(found)]


def figures_from_parts(counts: Sequence[int]) -> dict[str, float]:
    """The per-item figures from the instructions of callgrind's parts
    (see `worker`: setup, then each phase of PHASES with a gap between two;
    the part after the last marker, if there, is not used)."""
    if len(counts) < 2 * len(PHASES):
        raise RuntimeError(f"callgrind wrote {len(counts)} parts, at least {2 * len(PHASES)} expected")
    phase = dict(zip(PHASES, counts[1::2], strict=False))
    out = {}
    for figure, name, (small, large) in (
        ("ingest_event", "ingest", EVENT_SIZES),
        ("report_row", "report", ROW_SIZES),
        ("csv_row", "csv", ROW_SIZES),
        ("report_row_stored", "report_stored", ROW_SIZES),
        ("csv_row_stored", "csv_stored", ROW_SIZES),
    ):
        out[figure] = (phase[name + "_large"] - phase[name + "_small"]) / (large - small)
    return out


def measure() -> tuple[dict[str, float], float]:
    """One run under callgrind: the figures and the seconds it took."""
    if shutil.which("valgrind") is None:
        raise SystemExit("cpu_guard: valgrind is not installed (apt-get install valgrind)")
    # A name of fixed length (paths are part of what SQLite and Python
    # handle), of its own (two guards may run at once).
    base = Path(tempfile.mkdtemp(prefix="flowtrack-cpu-guard-"))
    workdir = base / "work"
    workdir.mkdir()
    out = base / "callgrind.out"
    started = datetime.datetime.now(datetime.UTC)
    done = subprocess.run(valgrind_command(out), env=_env(workdir), capture_output=True, text=True, check=False)
    seconds = (datetime.datetime.now(datetime.UTC) - started).total_seconds()
    try:
        if done.returncode != 0:
            sys.stderr.write(done.stdout + done.stderr)
            raise SystemExit(f"cpu_guard: the worker failed under valgrind (exit {done.returncode})")
        return figures_from_parts(parts(out)), seconds
    finally:
        shutil.rmtree(base, ignore_errors=True)


def versions() -> dict[str, str]:
    import sqlite3

    import google.protobuf
    from google.protobuf.internal import api_implementation

    valgrind = subprocess.run(["valgrind", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return {
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "protobuf": f"{google.protobuf.__version__} ({api_implementation.Type()})",
        "valgrind": valgrind,
        "machine": f"{platform.machine()} {platform.system()}",
    }


@dataclass(frozen=True)
class Verdict:
    ok: bool
    lines: list[str]


def compare(figures: dict[str, float], baseline: dict[str, float], threshold: float = THRESHOLD) -> Verdict:
    """Each figure against its baseline: fails when one is more than
    `threshold` over it (or has no baseline); a figure more than `threshold`
    under it passes, with a note to update the baseline."""
    ok, lines, dropped = True, [], False
    for name in FIGURES:
        value, base = figures.get(name), baseline.get(name)
        if value is None:
            ok = False
            lines.append(f"{name:14} not measured  FAIL")
            continue
        if not base:
            ok = False
            lines.append(f"{name:14} {value:12,.0f} instructions  no baseline  FAIL")
            continue
        ratio = value / base
        if ratio > 1 + threshold:
            ok, verdict = False, f"FAIL: more than {threshold:.0%} over the baseline"
        elif ratio < 1 - threshold:
            dropped, verdict = True, f"dropped more than {threshold:.0%}"
        else:
            verdict = "ok"
        lines.append(f"{name:14} {value:12,.0f} instructions  baseline {base:12,.0f}  {ratio:.3f}x  {verdict}")
    if dropped:
        lines.append("A figure dropped: if that is meant, record it with `python3 scripts/cpu_guard.py --update`.")
    return Verdict(ok, lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="fail if a figure is more than 15%% over the baseline")
    mode.add_argument("--update", action="store_true", help="write the figures as the new baseline")
    mode.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=1, help="runs under callgrind (the median is kept; default 1)")
    parser.add_argument("--baseline", type=Path, default=BASELINE)
    args = parser.parse_args(argv)
    if args.worker:
        worker(Path(os.environ["CPU_GUARD_WORKDIR"]))
        return 0
    runs = [measure() for _ in range(max(1, args.runs))]
    figures = {name: sorted(f[name] for f, _ in runs)[len(runs) // 2] for name in FIGURES}
    for i, (f, seconds) in enumerate(runs, 1):
        shown = "  ".join(f"{name} {f[name]:,.0f}" for name in FIGURES)
        print(f"run {i}: {shown}  ({seconds:.0f} s under callgrind)")
    if len(runs) > 1:
        for name in FIGURES:
            values = [f[name] for f, _ in runs]
            print(f"spread {name}: {(max(values) - min(values)) / min(values):.3%}")
    now = versions()
    if args.update:
        record = {
            "figures": {name: round(figures[name]) for name in FIGURES},
            "unit": "instructions (callgrind Ir) per item",
            "date": datetime.date.today().isoformat(),
            "versions": now,
            "command": " ".join(["python3", "scripts/cpu_guard.py", *(argv if argv is not None else sys.argv[1:])]),
            "sizes": {"events": list(EVENT_SIZES), "rows": list(ROW_SIZES), "batch": BATCH, "seed": SEED},
        }
        args.baseline.write_text(json.dumps(record, indent=2) + "\n")
        print(f"baseline written: {args.baseline}")
        return 0
    if not args.baseline.exists():
        for name in FIGURES:
            print(f"{name:14} {figures[name]:12,.0f} instructions")
        return 1 if args.check else 0
    saved = json.loads(args.baseline.read_text())
    verdict = compare(figures, saved["figures"])
    print("\n".join(verdict.lines))
    if saved.get("versions", {}) != now:
        print(f"note: baseline measured {saved.get('date')} with {saved.get('versions')}; now {now}")
    return 0 if verdict.ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
