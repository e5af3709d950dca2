#!/usr/bin/env python3
"""A/B of the benchmark scripts: two commits, the same benchmarks, alternately.

    python3 scripts/bench_ab.py BEFORE [AFTER] [--rounds 2] [--only export,reports,ingest,pg]
    python3 scripts/bench_ab.py BEFORE [AFTER] --only export_pg,reports_pg   # on PostgreSQL

Each commit is checked out into a temporary git worktree; each benchmark
runs from that tree (its own script, its server with PYTHONPATH on that
tree's src/), before and after alternating and the order flipping every
round, so a drift of the machine falls on both. The figures printed are
each script's own lines (rates, and each ratio against the limit the script
measures in the same run); nothing is parsed or averaged here: read them
side by side. Run it on a quiet machine: a busy one gives figures 2-3x off.

AFTER defaults to the working tree's HEAD. The worktrees are removed at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PG_URL = os.environ.get("FLOWTRACK_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

# name -> (script and arguments, the lines of its output that carry figures)
BENCHES: dict[str, tuple[list[str], str]] = {
    "export": (["bench_export.py", "--quick"], r"r/s|ratio"),
    "reports": (["bench_reports.py", "--recipients", "100000", "--rounds", "1"], r"r/s|ratio|p50"),
    "ingest": (["bench_ingest.py", "--quick", "--rounds", "1"], r"/s|ratio|x "),
    # The full sizes (1M seeded events, 60,000 a StreamEvents figure, 10,000 unary calls): steadier, ~5 min a run.
    "ingest_full": (["bench_ingest.py", "--rounds", "1"], r"/s|ratio|x "),
    "pg": (["bench_pg.py", "--businesses", "4", "--events", "40000"], r"events/s|x "),
    # The report and export benchmarks on PostgreSQL (both trees need their --postgres: 9c2b688 on).
    "export_pg": (["bench_export.py", "--quick", "--postgres", PG_URL], r"r/s|ratio"),
    "reports_pg": (
        ["bench_reports.py", "--recipients", "100000", "--rounds", "1", "--postgres", PG_URL],
        r"r/s|ratio|p50",
    ),
}


def checkout(ref: str, into: Path) -> Path:
    tree = into / ref.replace("/", "_")
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), ref], check=True)
    return tree


def run(tree: Path, name: str) -> tuple[float, list[str]]:
    command, pattern = BENCHES[name]
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(tree / "scripts" / command[0]), *command[1:]],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.monotonic() - started
    if done.returncode != 0:
        return seconds, [f"FAILED ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}"]
    return seconds, [line for line in done.stdout.splitlines() if re.search(pattern, line)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before")
    parser.add_argument("after", nargs="?", default="HEAD")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", default="export,reports,ingest,pg", help="comma-separated: " + ", ".join(BENCHES))
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    with tempfile.TemporaryDirectory(prefix="ft-ab-") as tmp:
        trees = {label: checkout(ref, Path(tmp)) for label, ref in (("before", args.before), ("after", args.after))}
        try:
            for name in names:
                for round_ in range(args.rounds):
                    order = ["before", "after"] if round_ % 2 == 0 else ["after", "before"]
                    for label in order:
                        seconds, lines = run(trees[label], name)
                        ref = args.before if label == "before" else args.after
                        print(f"== {name} round {round_ + 1} {label} ({ref}, {seconds:.0f} s)", flush=True)
                        for line in lines:
                            print("   " + line, flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
