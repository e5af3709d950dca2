"""What the durable re-classification costs (docs/performance.md): CPU time
of a re-classification as durable steps (store/bots.py `reclassify_step`,
which read and move the progress row) against the bare pages they wrap
(`reclassify_page` in a loop, as before revision 0012), on one in-process
SQLite server, alternating, each run changing the class of half the clicks.

Usage: PYTHONPATH=src python3 scripts/bench_reclassify.py [--messages 4000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowtrack.config import Settings
from flowtrack.domain.bots import SettingsChange
from flowtrack.store import bots, sql
from flowtrack.store.schema import business_settings
from tests.conftest import ServerThread, make_client
from tests.test_bots import ANDROID, clicked, delivered, send

BUSINESS = "default"  # open mode's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    server = ServerThread(Settings(listen="127.0.0.1:0", database=str(folder / "bench.db"), grace=0.5))
    client = make_client(server.address)
    try:
        recipients = [f"+6{i:06d}" for i in range(args.messages)]
        for at in range(0, len(recipients), 500):
            some = recipients[at : at + 500]
            send(client, *[delivered(r) for r in some])
            send(client, *[clicked(f"s-{r}", r, 1.0, ANDROID) for r in some])
            send(client, *[clicked(f"l-{r}", r, 60.0, ANDROID) for r in some])
        run = server.store.writer.run_sync
        run(bots.update_settings(BUSINESS, SettingsChange(threshold_us=2_000_000), "bench", 0))  # the settings row
        cid = server.store.read_sync(lambda conn: sql.scalar(conn, sa.text("SELECT min(cid) FROM campaigns")))

        def rules(ms: int) -> None:
            change = sa.update(business_settings).values(bot_click_threshold_ms=ms)
            run(lambda tx: sql.run(tx.conn, change.where(business_settings.c.business_id == BUSINESS)))

        def bare(ms: int) -> tuple[float, int]:
            rules(ms)
            started, changed, after = time.process_time(), 0, ""
            while True:
                after, n = run(lambda tx, after=after: bots.reclassify_page(tx, BUSINESS, cid, after))
                changed += n
                if not after:
                    return time.process_time() - started, changed

        def durable(ms: int) -> tuple[float, int]:
            rules(ms)
            start: dict[str, Any] = {"business_id": BUSINESS, "now": 1, "holder": "bench", "until": 0}
            run(lambda tx: sql.run(tx.conn, bots._START, start))
            started, changed = time.process_time(), 0
            while True:
                step = run(bots.reclassify_step(BUSINESS, "bench", 10_000_000))
                changed += step.changed
                if step.done:
                    return time.process_time() - started, changed

        times: dict[str, list[float]] = {"bare": [], "durable": []}
        for round_ in range(args.rounds):
            for name, fn, ms in (("bare", bare, 0), ("durable", durable, 2000)):
                seconds, changed = fn(ms)
                assert changed == args.messages, (name, changed)
                times[name].append(seconds)
                print(f"round {round_}: {name} {seconds:.3f} s CPU, {changed} clicks changed", flush=True)
        medians = {name: statistics.median(found) for name, found in times.items()}
        print(
            f"median bare {medians['bare']:.3f} s, durable {medians['durable']:.3f} s,"
            f" ratio {medians['durable'] / medians['bare']:.3f}"
        )
    finally:
        client.channel.close()
        server.stop()


if __name__ == "__main__":
    main()
