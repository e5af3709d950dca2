"""Global back-pressure on ingest (issue 10, item 5): the writer's queue is
bounded in rows for all callers together. With the writer stalled (a job
holds it, as a slow disk would), several StreamEvents stop being read once
the bound is reached, unary calls wait at most max_write_wait and then get
RESOURCE_EXHAUSTED, and the rows queued never exceed the bound (nor the
rows waiting for room the streams' in-flight batches); once the writer moves
again every batch is answered."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from flowtrack.v1 import ingest_pb2
from tests.conftest import error_details, make_client, start_server
from tests.test_faults import DEADLINE, _hold, wait_for
from tests.test_ingest import batch, status

BOUND = 500
STREAMS = 3
BATCHES = 20
PER_BATCH = 100
INFLIGHT = 2


def test_the_writer_queue_is_bounded_for_all_callers_together(tmp_path: Path) -> None:
    server = start_server(
        tmp_path, max_queued_rows=BOUND, max_write_wait=0.2, max_inflight_batches=INFLIGHT, durability="normal"
    )
    client = make_client(server.address)
    writer = server.store.writer
    gate, holder = _hold(writer)
    answers: list[list[int]] = [[] for _ in range(STREAMS)]
    failures: list[BaseException] = []

    def requests(s: int) -> Iterator[ingest_pb2.StreamEventsRequest]:
        for b in range(BATCHES):
            yield batch(*(status(f"s{s}-{b}-{i}", recipient=f"r{s}-{i}") for i in range(PER_BATCH)))

    def stream(s: int) -> None:
        try:
            for reply in client.ingest.StreamEvents(requests(s), timeout=120):
                answers[s].append(reply.accepted)
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=stream, args=(s,)) for s in range(STREAMS)]
    try:
        for thread in threads:
            thread.start()
        # Every stream has a batch waiting for room: the queue is full.
        wait_for(lambda: len(writer._waiters) >= STREAMS, "every stream waiting for room in the queue")
        assert writer.queued_rows <= BOUND
        # The streams are no longer read: what they hold beyond the bound is
        # at most the batches each may have read and not answered (INFLIGHT in
        # its queue, one being answered, one read and waiting for a place),
        # waiting in line.
        # (What HTTP/2 buffers below the server is grpc's flow-control window,
        # several MB per stream on loopback, so the client's side is not counted.)
        assert writer.peak_waiting_rows <= STREAMS * (INFLIGHT + 2) * PER_BATCH

        # A unary call waits max_write_wait, then is told to back off.
        with pytest.raises(grpc.RpcError) as caught:
            client.ingest.RecordStatusEvent(ingest_pb2.RecordStatusEventRequest(event=status("u1")), timeout=30)
        details = error_details(caught.value)
        assert (details.code, details.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "WRITE_QUEUE_FULL")
        assert "retry" in details.message
    finally:
        gate.set()
        holder.join(DEADLINE)
        for thread in threads:
            thread.join(120)
    try:
        assert failures == []
        assert answers == [[PER_BATCH] * BATCHES] * STREAMS
        assert writer.peak_queued_rows <= BOUND, writer.peak_queued_rows
        assert writer.peak_waiting_rows <= STREAMS * (INFLIGHT + 2) * PER_BATCH, writer.peak_waiting_rows
        # A batch's room is given back just after its answer is sent: wait for it.
        wait_for(lambda: writer.queued_rows == 0 and not writer._waiters, "every row given back")
        # And the unary call goes through once there is room.
        reply = client.ingest.RecordStatusEvent(ingest_pb2.RecordStatusEventRequest(event=status("u1")), timeout=30)
        assert reply.result.outcome == ingest_pb2.EVENT_OUTCOME_ACCEPTED
        assert writer.queued_rows == 0
    finally:
        client.channel.close()
        server.stop()


def test_unary_calls_hold_one_row_each_and_give_it_back(tmp_path: Path) -> None:
    """Concurrent unary calls of one business share a writer job; each holds
    one row of the bound until the job is answered, committed or failed."""
    server = start_server(tmp_path, max_queued_rows=BOUND, durability="normal")
    writer = server.store.writer
    gate, holder = _hold(writer)
    results: list[Any] = []
    clients = [make_client(server.address) for _ in range(8)]

    def send(n: int) -> None:
        reply = clients[n].ingest.RecordStatusEvent(
            ingest_pb2.RecordStatusEventRequest(event=status(f"j{n}", recipient=f"+1555{n:07d}")), timeout=60
        )
        results.append(reply.result.outcome)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(8)]
    try:
        for thread in threads:
            thread.start()
        wait_for(lambda: writer.queued_rows == 8, "eight unary events holding a row each")
    finally:
        gate.set()
        holder.join(DEADLINE)
        for thread in threads:
            thread.join(60)
    try:
        assert results == [ingest_pb2.EVENT_OUTCOME_ACCEPTED] * 8
        wait_for(lambda: writer.queued_rows == 0, "every row given back")
    finally:
        for c in clients:
            c.channel.close()
        server.stop()
