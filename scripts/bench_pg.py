"""PostgreSQL ingest benchmark: flowtrack replicas beside SQLite and beside PostgreSQL's bare limit.

In one run, with the same events as scripts/bench_ingest.py (uuid4 ids, 4
campaigns, 100k recipients, status mix with clicks), each configuration on a
fresh database:

- flowtrack on SQLite, one `flowtrack serve` (the embedded default);
- flowtrack on PostgreSQL with 1, 2 and 3 `flowtrack serve` replicas on one
  database; the load is the same number of StreamEvents streams in every
  configuration (--streams, default 4), dealt round-robin to the replicas,
  each stream in its own client process;
- PostgreSQL's bare limit for the same rows in flowtrack's own tables
  (the same design as flowtrack's): per transaction of --batch rows, the events
  inserted, the messages upserted and the counters upserted, from 1 and
  from 2 client processes, two ways: with `executemany` (which psycopg
  pipelines; the messages' status only: the first measurement), and the
  same rows flowtrack stores (the messages' whole state) by COPY (the events
  straight into their table, the messages into a temporary table and
  upserted from it: the way flowtrack writes); and `COPY` of the events
  alone from 1 client. The ratios are taken over the faster of the two
  2-client rates.

With --businesses N (default 1) the streams belong to N businesses (an API
key each, stream i to business i mod N): one business's writes are serial
across replicas (its sequence row is locked until each commit), different
businesses' are not, so this shows what replicas add.

Rates are accepted events per second from the common start to the last
stream's end; the table adds each flowtrack-on-PostgreSQL rate over the bare
2-client rate (target: 2 replicas >= 0.5x) and over flowtrack on
SQLite. On a shared 2-core machine the database, the replicas and the load
generators share the cores: read the ratios, not the absolute rates.

Usage:
    python scripts/bench_pg.py                 # 200k events per configuration
    python scripts/bench_pg.py --events 1000000
    python scripts/bench_pg.py --tiny          # correctness only (seconds; the figures mean nothing)
    --url postgresql://postgres@127.0.0.1:5432/postgres   the server (it creates and drops ft_bench_* databases)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_ingest as bi

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
EVENT_COLUMNS = (
    "business_id, seq, event_id, fingerprint, cid, recipient, kind, occurred_at, received_at, status, attempt,"
    " reason_code, reason_message, channel, variant, link_id, link_variable, url, country_code, region, city"
)


def _url(admin: str, name: str) -> str:
    return urlsplit(admin)._replace(path=f"/{name}").geturl()


def create_database(admin: str) -> str:
    """A fresh, migrated database; its URL."""
    import psycopg

    from flowtrack.store.pg.store import migrate

    name = f"ft_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _url(admin, name)
    migrate(url)
    return url


def drop_database(admin: str, url: str) -> None:
    import psycopg

    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- the bare limit (in a worker process) ------------------------------------------------------------------------------


def bare_prepare(seed: int, n: int, first_seq: int) -> int:
    """Build the rows outside the timed part."""
    _bare.clear()
    _bare.extend(bi.to_row(spec, first_seq + i) for i, spec in enumerate(bi.specs(seed, n)))
    return n


_bare: list[tuple[object, ...]] = []


# The message columns the bare 'copy' way writes: those flowtrack's fold
# writes for these events (status, its event, reason, channel, variant, the
# status time, clicks, the per-attribute keys as JSON).
MESSAGE_COLUMNS = (
    "cid, recipient, status, attempt, cur_occurred_at, cur_event_id, reason_code, reason_message, channel, variant,"
    " submitted_at, last_event_at, clicks, updated_at, added_at, attr_keys, business_id"
)


def _message_row(row: tuple[Any, ...], now: int) -> tuple[Any, ...]:
    """A message's state from one event row of bi.to_row: the same columns flowtrack keeps."""
    cid, recipient, event_id, at = row[4], row[5], row[2], row[7]
    status, attempt = row[9] or 1, row[10] or 1
    keys = json.dumps({"channel": [attempt, status, at, event_id], "variant": [attempt, status, at, event_id]})
    return (cid, recipient, status, attempt, at, event_id, row[11] or "", row[12] or "", row[13] or "", row[14] or "",
            at, at, 1 if row[6] == 2 else 0, now, now, keys, row[0])  # fmt: skip


def bare_run(url: str, per_tx: int, how: str, start_at: float) -> tuple[int, float]:
    """Write the prepared rows, `per_tx` per transaction; (rows, end).

    `how`: 'executemany' (the events, the messages' status and the
    counters, each with executemany, which psycopg pipelines: the first
    measurement of this design), 'copy' (the same rows flowtrack stores,
    written the way flowtrack writes them: COPY of the events, the messages'
    whole state COPYed into a temporary table and upserted from it in one
    statement, the counters with executemany) or 'copy-events' (COPY of the
    events alone)."""
    import psycopg

    with psycopg.connect(url) as conn:
        conn.execute(
            f"CREATE TEMPORARY TABLE stage ON COMMIT DELETE ROWS AS SELECT {MESSAGE_COLUMNS} FROM messages WITH NO DATA"
        )
        conn.commit()
        bi._wait_until(start_at)
        for start in range(0, len(_bare), per_tx):
            rows = _bare[start : start + per_tx]
            with conn.transaction(), conn.cursor() as cur:
                if how in ("copy", "copy-events"):
                    with cur.copy(f"COPY events ({EVENT_COLUMNS}) FROM STDIN") as out:
                        for row in rows:
                            out.write_row(row)
                    if how == "copy-events":
                        continue
                else:
                    cur.executemany(
                        f"INSERT INTO events ({EVENT_COLUMNS}) VALUES ({', '.join(['%s'] * 21)})"
                        " ON CONFLICT DO NOTHING",
                        rows,
                    )
                now = time.time_ns() // 1000
                messages: dict[tuple[int, str], tuple[Any, ...]] = {}
                counts: Counter[tuple[str, int, str]] = Counter()
                for row in rows:
                    key = (int(row[4]), str(row[5]))  # type: ignore[call-overload]
                    counts[(str(row[0]), key[0], f"s{int(row[9] or 0)}")] += 1  # type: ignore[call-overload]
                    messages[key] = _message_row(row, now)
                if how == "copy":
                    with cur.copy("COPY stage FROM STDIN") as out:
                        for message in messages.values():
                            out.write_row(message)
                    names = [name.strip() for name in MESSAGE_COLUMNS.split(",")]
                    update = ", ".join(
                        f"{n} = excluded.{n}" for n in names if n not in ("business_id", "cid", "recipient")
                    )
                    cur.execute(
                        f"INSERT INTO messages AS m ({MESSAGE_COLUMNS}) SELECT * FROM stage"
                        f" ORDER BY business_id, cid, recipient ON CONFLICT (business_id, cid, recipient)"
                        f" DO UPDATE SET {update}"
                    )  # one lock order: no deadlocks
                else:
                    cur.executemany(
                        "INSERT INTO messages AS m (business_id, cid, recipient, status, added_at, updated_at)"
                        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (business_id, cid, recipient)"
                        " DO UPDATE SET status = greatest(m.status, excluded.status), updated_at = excluded.updated_at",
                        sorted((m[-1], m[0], m[1], m[2], now, now) for m in messages.values()),
                    )
                cur.executemany(
                    "INSERT INTO counters AS k (business_id, cid, scope, name, value) VALUES (%s, %s, '', %s, %s)"
                    " ON CONFLICT (business_id, cid, scope, name) DO UPDATE SET value = k.value + excluded.value",
                    [(business, cid, name, n) for (business, cid, name), n in sorted(counts.items())],
                )
    return len(_bare), time.monotonic()


# -- keyed streams (in a worker process) ------------------------------------------------------------------------------

_stream: dict[str, Any] = {}


def keyed_prepare(address: str, api_key: str, seed: int, n: int, batch: int) -> int:
    """Build the batches and connect (with the business's key, if any)."""
    import grpc

    import flowtrack
    from flowtrack.v1 import ingest_pb2

    requests: list[Any] = []
    events: list[Any] = []
    for spec in bi.specs(seed, n):
        events.append(bi.to_proto(spec))
        if len(events) == batch:
            requests.append(ingest_pb2.StreamEventsRequest(batch_id=str(len(requests)), events=events))
            events = []
    if events:
        requests.append(ingest_pb2.StreamEventsRequest(batch_id=str(len(requests)), events=events))
    channel = flowtrack.client_channel(address, api_key=api_key or None)
    grpc.channel_ready_future(channel).result(timeout=30)
    _stream.update(channel=channel, requests=requests)
    return n


def keyed_run(start_at: float) -> tuple[int, int, float]:
    """Send the prepared batches on one StreamEvents call; (accepted, other, end)."""
    from flowtrack.v1 import ingest_pb2_grpc

    stub = ingest_pb2_grpc.IngestServiceStub(_stream["channel"])
    bi._wait_until(start_at)
    accepted = other = 0
    for reply in stub.StreamEvents(iter(_stream["requests"]), timeout=900):
        accepted += reply.accepted
        other += reply.duplicates + reply.refused
    end = time.monotonic()
    _stream["channel"].close()
    _stream.clear()
    return accepted, other, end


def make_keys(database: str, businesses: int) -> list[str]:
    """An ingest key per business in `database` (none for one business: open mode)."""
    if businesses <= 1:
        return [""]
    from flowtrack.domain.keys import Scope
    from flowtrack.store import db
    from flowtrack.store import keys as stored

    if database.startswith("postgresql://"):
        from flowtrack.store.pg.conn import PgConnection

        conn: Any = PgConnection.connect(database)
    else:
        conn = db.open_database(database)
    tokens = []
    try:
        for b in range(businesses):
            conn.execute("BEGIN")
            new, _ = stored.create(conn, f"bench-{b}", frozenset({Scope.INGEST}), "bench", time.time_ns() // 1000)
            conn.execute("COMMIT")
            tokens.append(new.token)
    finally:
        conn.close()
    return tokens


# -- runs --------------------------------------------------------------------------------------------------------------


def _workers(n: int) -> list[ProcessPoolExecutor]:
    """`n` client processes, one worker each (a prepare and its run must meet in one process)."""
    context = multiprocessing.get_context("spawn")
    return [ProcessPoolExecutor(max_workers=1, mp_context=context) for _ in range(n)]


def _all(workers: list[ProcessPoolExecutor], fn: Callable[..., Any], args: list[tuple[Any, ...]]) -> list[Any]:
    futures = [w.submit(bi.guarded, fn, *a) for w, a in zip(workers, args, strict=True)]
    return [f.result() for f in futures]


def _shutdown(workers: list[ProcessPoolExecutor]) -> None:
    for w in workers:
        w.shutdown()


def run_streams(
    addresses: list[str], keys: list[str], streams: int, events: int, batch: int, seed: int
) -> tuple[float, int]:
    """`streams` StreamEvents calls dealt round-robin to `addresses`, stream i
    for business i mod len(keys); (events/s, accepted)."""
    per = events // streams
    workers = _workers(streams)
    try:
        prepare = [(addresses[i % len(addresses)], keys[i % len(keys)], seed + i, per, batch) for i in range(streams)]
        _all(workers, keyed_prepare, prepare)
        start_at = time.monotonic() + 1.0
        results = _all(workers, keyed_run, [(start_at,)] * streams)
    finally:
        _shutdown(workers)
    accepted = sum(r[0] for r in results)
    end = max(r[2] for r in results)
    return accepted / (end - start_at), accepted


def run_bare(url: str, clients: int, events: int, batch: int, seed: int, how: str) -> tuple[float, int]:
    per = events // clients
    workers = _workers(clients)
    try:
        _all(workers, bare_prepare, [(seed + i, per, 1 + i * per) for i in range(clients)])
        start_at = time.monotonic() + 1.0
        results = _all(workers, bare_run, [(url, batch, how, start_at)] * clients)
    finally:
        _shutdown(workers)
    rows = sum(r[0] for r in results)
    return rows / (max(r[1] for r in results) - start_at), rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("FLOWTRACK_TEST_POSTGRES_URL", DEFAULT_URL))
    parser.add_argument("--events", type=int, default=200_000, help="events per configuration")
    parser.add_argument(
        "--batch", type=int, default=1000, help="events per StreamEvents batch and per bare transaction"
    )
    parser.add_argument("--streams", type=int, default=4, help="StreamEvents streams in every configuration")
    parser.add_argument("--businesses", type=int, default=1, help="businesses the streams belong to (an API key each)")
    parser.add_argument("--tiny", action="store_true", help="correctness run: 2,000 events, figures meaningless")
    args = parser.parse_args(argv)
    if args.tiny:
        args.events, args.batch = 2000, 100
    figures: dict[str, tuple[float, int]] = {}
    work = Path(tempfile.mkdtemp(prefix="ft-bench-pg-"))  # the SQLite file and the server logs, removed at the end
    seed = 7

    def measured(name: str, fn: Callable[..., tuple[float, int]], *fn_args: Any) -> None:
        rate, n = fn(*fn_args)
        figures[name] = (rate, n)
        print(f"{name:<58} {rate:>10,.0f} events/s  ({n:,} rows)", flush=True)

    # flowtrack on SQLite, one node.
    keys = make_keys(str(work / "flowtrack.db"), args.businesses)
    server = bi.start_flowtrack(work / "flowtrack.db", "full", work / "sqlite.log")
    try:
        address = [server.address]
        measured("flowtrack, SQLite, 1 node", run_streams, address, keys, args.streams, args.events, args.batch, seed)
    finally:
        server.stop()
    # flowtrack on PostgreSQL, 1, 2 and 3 replicas.
    for replicas in (1, 2, 3):
        url = create_database(args.url)
        servers: list[Any] = []
        try:
            keys = make_keys(url, args.businesses)
            for i in range(replicas):
                servers.append(bi.start_flowtrack(url, "full", work / f"pg-{replicas}-{i}.log"))  # type: ignore[arg-type]
            addresses = [s.address for s in servers]
            measured(
                f"flowtrack, PostgreSQL, {replicas} replica{'s' if replicas > 1 else ''}",
                run_streams,
                addresses,
                keys,
                args.streams,
                args.events,
                args.batch,
                seed,
            )
        finally:
            for s in servers:
                s.stop()
            drop_database(args.url, url)
    # PostgreSQL's bare limit, same rows, flowtrack's tables.
    bare_runs = (
        ("executemany", 1, "events + messages + counters, executemany"),
        ("executemany", 2, "events + messages + counters, executemany"),
        ("copy", 1, "the same rows as flowtrack, COPY"),
        ("copy", 2, "the same rows as flowtrack, COPY"),
        ("copy-events", 1, "COPY events only"),
    )
    for how, clients, what in bare_runs:
        url = create_database(args.url)
        try:
            measured(
                f"bare PostgreSQL, {what}, {clients} client{'s' if clients > 1 else ''}",
                run_bare,
                *(url, clients, args.events, args.batch, seed, how),
            )
        finally:
            drop_database(args.url, url)
    shutil.rmtree(work, ignore_errors=True)
    # The limit to compare with: the faster way of writing the design from 2
    # clients (the same rows by COPY, the way flowtrack writes, or the first
    # measurement's narrower rows by executemany).
    bare2 = max(rate for name, (rate, _) in figures.items() if name.startswith("bare") and name.endswith("2 clients"))
    sqlite = figures["flowtrack, SQLite, 1 node"][0]
    print()
    print(f"bare limit of the same design, 2 clients (the faster way): {bare2:,.0f} events/s")
    print(f"{'configuration':<58} {'vs bare (2 clients)':>20} {'vs SQLite node':>16}")
    for name, (rate, _) in figures.items():
        if name.startswith("flowtrack, PostgreSQL"):
            print(f"{name:<58} {rate / bare2:>19.2f}x {rate / sqlite:>15.2f}x")
    print("target: 2 replicas >= 0.5x of the bare 2-client rate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
