"""Prometheus metrics of one server, served at `/metrics` by the HTTP listener.

Every server has its own `CollectorRegistry` (tests run many servers in one
process). What is counted and where:

- gRPC server metrics under the names of the gRPC ecosystem
  (go-grpc-prometheus, py-grpc-prometheus): `grpc_server_started_total`,
  `grpc_server_handled_total` (with `grpc_code`), `grpc_server_handling_seconds`
  and, for streaming RPCs, `grpc_server_msg_received_total` /
  `grpc_server_msg_sent_total`; labels `grpc_type`, `grpc_service`,
  `grpc_method`. Counted by the one interceptor (api/gate.py), with the label
  children resolved once per method.
- `flowtrack_events_total{kind, result}`: every event an ingest RPC answered,
  by its kind (status, click, engagement) and result (accepted, duplicate, conflict,
  invalid, rejected); counted once per batch (api/ingest.py).
- `flowtrack_commit_seconds` and `flowtrack_commit_rows`: the writer's
  transactions (store/writer.py calls `observe_commit` after each COMMIT).
- Read at scrape time: the rows in the writer's queue, the database and WAL file
  sizes. `flowtrack_streams_open{grpc_service, grpc_method}` moves as
  streams start and end.

No label names a business or a campaign: the number of series stays fixed
whatever the number of tenants.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# The results of flowtrack_events_total, by EventOutcome number (ingest.proto).
RESULTS: dict[int, str] = {1: "accepted", 2: "duplicate", 3: "conflict", 4: "invalid", 5: "rejected"}

# Buckets of grpc_server_handling_seconds: from a fast unary call to a long export.
HANDLING_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
ROWS_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

_GRPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")


class _Sizes(Collector):
    """Gauges read when Prometheus scrapes: the writer's queue, file sizes."""

    def __init__(self, database: str, queued_rows: Callable[[], int], listening: Callable[[], bool]) -> None:
        self.database = database
        self.queued_rows = queued_rows
        self.listening = listening

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "flowtrack_writer_queued_rows",
            "Rows (events, recipients) admitted to the writer's queue and not answered yet.",
            value=self.queued_rows(),
        )
        yield GaugeMetricFamily(
            "flowtrack_commit_listener_up",
            "1 while other replicas' commits reach this server's watchers (PostgreSQL: its LISTEN"
            " connection is up; always 1 on SQLite), 0 while it reconnects.",
            value=1 if self.listening() else 0,
        )
        sizes = GaugeMetricFamily("flowtrack_database_bytes", "Size of the database files, bytes.", labels=["file"])
        for name, suffix in (("main", ""), ("wal", "-wal")):
            try:
                size = os.stat(self.database + suffix).st_size
            except OSError:
                size = 0
            sizes.add_metric([name], size)
        yield sizes


class Metrics:
    """The metrics of one server and the hooks that move them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.started = Counter("grpc_server_started_total", "RPCs started on the server.", _GRPC_LABELS, registry=r)
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, whatever their status code.",
            (*_GRPC_LABELS, "grpc_code"),
            registry=r,
        )
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its end on the server, seconds (streams: their whole life).",
            _GRPC_LABELS,
            buckets=HANDLING_BUCKETS,
            registry=r,
        )
        self.received = Counter(
            "grpc_server_msg_received_total", "Stream messages received from clients.", _GRPC_LABELS, registry=r
        )
        self.sent = Counter("grpc_server_msg_sent_total", "Stream messages sent to clients.", _GRPC_LABELS, registry=r)
        self.streams = Gauge(
            "flowtrack_streams_open", "Streaming RPCs open now.", ("grpc_service", "grpc_method"), registry=r
        )
        self.events = Counter(
            "flowtrack_events_total",
            "Events answered by the ingest RPCs, by kind and result.",
            ("kind", "result"),
            registry=r,
        )
        self.commit_seconds = Histogram(
            "flowtrack_commit_seconds",
            "Duration of the writer's transactions, BEGIN to COMMIT (fsync included), seconds.",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.commit_rows = Histogram(
            "flowtrack_commit_rows",
            "Rows (events, recipients) per committed transaction: how much group commit shares an fsync.",
            buckets=ROWS_BUCKETS,
            registry=r,
        )
        self.pruned = Counter(
            "flowtrack_retention_pruned_rows_total",
            "Rows deleted by retention (docs/retention.md), by table; a deleted campaign counts 1 in `campaigns`.",
            ("table",),
            registry=r,
        )
        self._event_children: dict[tuple[str, int], Counter] = {}

    def watch_store(
        self, database: str, queued_rows: Callable[[], int], listening: Callable[[], bool] = lambda: True
    ) -> None:
        """Publish the store's gauges (read at scrape time)."""
        self.registry.register(_Sizes(database, queued_rows, listening))

    def observe_commit(self, seconds: float, rows: int) -> None:
        """Called by the writer thread after each commit."""
        self.commit_seconds.observe(seconds)
        self.commit_rows.observe(rows)

    def count_pruned(self, table: str, rows: int) -> None:
        """Rows the retention sweep deleted from `table`."""
        self.pruned.labels(table).inc(rows)

    def count_events(self, tally: Mapping[tuple[str, int], int]) -> None:
        """Add a batch's results: (kind, EventOutcome number) -> events."""
        children = self._event_children
        for key, n in tally.items():
            child = children.get(key)
            if child is None:
                child = children[key] = self.events.labels(key[0], RESULTS.get(key[1], "unknown"))
            child.inc(n)
