"""How long an erasure takes and how long each of its steps holds the writer.

Starts `flowtrack serve` on a fresh database (SQLite, or PostgreSQL with
--database postgresql://...), fills one business with `--campaigns`
campaigns of `--others` recipients each, the erased recipient in every one
of them (6 events and an engagement row each) and, in the first, with
`--clicks` more clicks; then erases it while another thread streams events
of other recipients, and prints the rows changed, the rows per second, the
steps' writer hold times (from the server's debug log) and the ingest
stream's slowest batch during the erasure. Wall-clock figures: rough on a
busy machine.

Usage: python3 scripts/bench_erase.py [--campaigns 200] [--others 200] [--clicks 5000] [--database URL]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
from google.protobuf import timestamp_pb2

from flowtrack.v1 import campaign_pb2, campaign_pb2_grpc, ingest_pb2, ingest_pb2_grpc, privacy_pb2, privacy_pb2_grpc

WHO = "+4930555123456"


def _ts(seconds: float) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=int(seconds))


def _status(event_id: str, recipient: str, campaign: str, status: int, at: float) -> ingest_pb2.Event:
    return ingest_pb2.Event(
        status=ingest_pb2.StatusEvent(
            event_id=event_id, campaign_id=campaign, recipient=recipient, status=status,  # type: ignore[arg-type]
            occurred_at=_ts(at), provider_message_id=f"wamid.{recipient}", input_variables={"name": "x"},
        )
    )  # fmt: skip


def _click(event_id: str, recipient: str, campaign: str, at: float) -> ingest_pb2.Event:
    return ingest_pb2.Event(
        click=ingest_pb2.ClickEvent(
            event_id=event_id, campaign_id=campaign, recipient=recipient, link_id="L1", occurred_at=_ts(at),
            ip_address="203.0.113.7", user_agent="Phone/1",
        )
    )  # fmt: skip


def _send(stub: ingest_pb2_grpc.IngestServiceStub, events: list[ingest_pb2.Event]) -> list[float]:
    """Send in batches of 500; each batch's round trip (s)."""
    times: list[float] = []
    for at in range(0, len(events), 500):
        began = time.perf_counter()
        list(stub.StreamEvents(iter([ingest_pb2.StreamEventsRequest(events=events[at : at + 500])]), timeout=120))
        times.append(time.perf_counter() - began)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--campaigns", type=int, default=200)
    parser.add_argument("--others", type=int, default=200)
    parser.add_argument("--clicks", type=int, default=5000)
    parser.add_argument("--database", default="")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench_erase_"))
    database = args.database or str(folder / "flowtrack.db")
    log = folder / "serve.log"
    port = 50990
    env = {**os.environ, "FLOWTRACK_HTTP": "off"}
    command = [sys.executable, "-m", "flowtrack", "serve", "--database", database, "--listen", f"127.0.0.1:{port}",
               "--log-level", "debug", "--reports-dir", str(folder / "reports")]  # fmt: skip
    with log.open("w") as sink:
        server = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=60)
        campaigns = campaign_pb2_grpc.CampaignServiceStub(channel)
        ingest = ingest_pb2_grpc.IngestServiceStub(channel)
        now = time.time() - 3600
        events: list[ingest_pb2.Event] = []
        for c in range(args.campaigns):
            name = f"c{c}"
            campaigns.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id=name)))
            for i in range(args.others):
                events.append(_status(f"{name}-{i}", f"+1555{i:07d}", name, 4, now))
            for k, status in enumerate((4, 5, 6)):
                events.append(_status(f"{name}-who-{k}", WHO, name, status, now + k))
            events += [_click(f"{name}-who-c{k}", WHO, name, now + 10 + k) for k in range(3)]
        events += [_click(f"many-{k}", WHO, "c0", now + 20 + k / 1000) for k in range(args.clicks)]
        began = time.perf_counter()
        _send(ingest, events)
        print(f"filled: {len(events):,} events in {time.perf_counter() - began:.1f} s")
        # Ingest of others during the erasure.
        during: list[float] = []
        stop = threading.Event()

        def stream() -> None:
            n = 0
            while not stop.is_set():
                batch = [_status(f"live-{n}-{i}", f"+1666{n % 50:03d}{i:04d}", "live", 4, now) for i in range(500)]
                during.extend(_send(ingest, batch))
                n += 1

        feeder = threading.Thread(target=stream)
        feeder.start()
        time.sleep(1.0)
        baseline = len(during)
        began = time.perf_counter()
        request = privacy_pb2.EraseRecipientRequest(recipient=WHO)
        erasure = privacy_pb2_grpc.PrivacyServiceStub(channel).EraseRecipient(request, timeout=3600).erasure
        took = time.perf_counter() - began
        stop.set()
        feeder.join()
        rows = sum(erasure.rows.values())
        print(f"erased: {dict(erasure.rows)} in {erasure.campaigns} campaigns: {rows:,} rows in {took:.2f} s"
              f" ({rows / took:,.0f} rows/s, the scrub and checkpoint or VACUUM included)")  # fmt: skip
        text = log.read_text()
        holds = [float(ms) for ms in re.findall(r"a step held the writer ([\d.]+) ms", text)]
        if holds:
            print(f"steps: {len(holds)}, writer held per step: median {statistics.median(holds):.1f} ms,"
                  f" max {max(holds):.1f} ms")  # fmt: skip
        summary = re.findall(r"erasure er_\S+ of business \S+: .*", text)
        print(summary[-1] if summary else "(no summary in the log)")
        mine = during[baseline:]
        if mine:
            print(f"ingest batches of 500 during the erasure: {len(mine)}, median {statistics.median(mine) * 1000:.0f}"
                  f" ms, max {max(mine) * 1000:.0f} ms (before it: median"
                  f" {statistics.median(during[:baseline] or [0]) * 1000:.0f} ms)")  # fmt: skip
        channel.close()
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
