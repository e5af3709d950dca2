"""Several flowtrack replicas on one PostgreSQL database (SPEC §6, issue 12).

Three `flowtrack serve --database postgresql://...` processes share one
throwaway database. One campaign's events (status events of several
attempts in random order, duplicates, clicks, engagement; then conflicts)
are spread over them on concurrent streams, the same event often at two
replicas at once; the end state — stats (with their sequence: no gap),
message report, failure reasons, click breakdown and history — must equal
what a single SQLite node gives for the same events. A replica killed
(SIGKILL) mid-stream keeps what it acknowledged; the client resends the rest
to another replica and the end is exact again. Watchers and resume tokens
work across replicas.

PostgreSQL only: skipped where none is reachable (never in CI, see conftest).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowtrack.v1 import campaign_pb2, ingest_pb2, report_pb2
from tests import test_consistency
from tests.conftest import Backend, Client, connect_db, make_client, start_server, url_of
from tests.report_helpers import add_recipients, all_report_rows, send_events, status_event
from tests.serving import DEADLINE, Serve

CAMPAIGN = test_consistency.CAMPAIGN
# slow: three `flowtrack serve` processes on one database (the quick loop, `pytest -m "not slow"`, leaves it out)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.own_backend("PostgreSQL only: replicas on one database"),
    pytest.mark.parametrize("backend", ["postgres"], indirect=True),
]


def _id(event: ingest_pb2.Event) -> str:
    return test_consistency._id(event)


def the_events(monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], list[ingest_pb2.Event], list[ingest_pb2.Event]]:
    """Audience, events (with duplicates, shuffled) and conflicts: events
    already sent, resent with another payload under the same id."""
    monkeypatch.setattr(test_consistency, "N", 500)
    rng = random.Random(12)
    audience, _expected, events = test_consistency.random_campaign(rng)
    conflicts = []
    for event in rng.sample([e for e in events if e.WhichOneof("kind") == "status"], 25):
        other = ingest_pb2.Event()
        other.CopyFrom(event)
        other.status.occurred_at.FromMicroseconds(other.status.occurred_at.ToMicroseconds() + 1)
        conflicts.append(other)
    return audience, events, conflicts


def create(client: Client, audience: list[Any]) -> None:
    client.campaigns.CreateCampaign(
        campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id=CAMPAIGN, name="c")), timeout=DEADLINE
    )
    add_recipients(client, CAMPAIGN, audience)


def outcome_counts(results: list[ingest_pb2.EventResult]) -> Counter[int]:
    return Counter(r.outcome for r in results)


def end_state(client: Client) -> dict[str, Any]:
    """Everything the reports say about the campaign, minus server clocks."""
    stats = client.reports.GetCampaignStats(report_pb2.GetCampaignStatsRequest(campaign_id=CAMPAIGN)).stats
    rows, _ = all_report_rows(client, CAMPAIGN, page_size=300)
    for row in rows:
        row.ClearField("update_time")
    reasons = [
        row
        for page in client.reports.StreamFailureReasons(report_pb2.StreamFailureReasonsRequest(campaign_id=CAMPAIGN))
        for row in page.reasons
    ]
    breakdown = client.reports.GetClickBreakdown(report_pb2.GetClickBreakdownRequest(campaign_id=CAMPAIGN))
    history = [
        e
        for page in client.reports.StreamMessageHistory(
            report_pb2.StreamMessageHistoryRequest(campaign_id=CAMPAIGN, page_size=1000)
        )
        for e in page.events
    ]
    sequences = [e.sequence for e in history]
    assert sequences == sorted(sequences), "history is in sequence order"
    return {
        "stats": stats.SerializeToString(deterministic=True),
        "rows": [r.SerializeToString(deterministic=True) for r in rows],
        "reasons": [r.SerializeToString(deterministic=True) for r in reasons],
        "breakdown": breakdown.SerializeToString(deterministic=True),
        # The arrival order differs between the runs: the events as a set,
        # and sequences 1..N with no gap.
        "history": sorted(e.event.SerializeToString(deterministic=True) for e in history),
        "sequences": sequences == list(range(1, len(history) + 1)),
    }


def single_node(tmp_path: Path, audience: list[Any], events: list[Any], conflicts: list[Any]) -> dict[str, Any]:
    """The end state of one SQLite node fed the same events on one stream."""
    folder = tmp_path / "sqlite"
    folder.mkdir()
    server = start_server(folder, database=str(folder / "flowtrack.db"))
    client = make_client(server.address)
    try:
        create(client, audience)
        send_events(client, events, batch=200)
        assert set(outcome_counts(send_events(client, conflicts))) == {ingest_pb2.EVENT_OUTCOME_CONFLICT}
        return end_state(client)
    finally:
        client.channel.close()
        server.stop()


@pytest.fixture
def replicas(tmp_path: Path, backend: Backend) -> Iterator[list[Serve]]:
    url = backend.database(tmp_path / "pg")
    started: list[Serve] = []
    try:
        for i in range(3):
            started.append(Serve(url, log=tmp_path / f"replica-{i}.log"))
        yield started
    finally:
        for replica in started:
            replica.stop()


def spread(replicas: list[Serve], events: list[Any], batch: int) -> list[ingest_pb2.EventResult]:
    """Send `events` in batches dealt round-robin to the replicas, one
    concurrent stream each; every result."""
    shares: list[list[Any]] = [[] for _ in replicas]
    for n, start in enumerate(range(0, len(events), batch)):
        shares[n % len(replicas)].extend(events[start : start + batch])
    results: list[list[ingest_pb2.EventResult]] = [[] for _ in replicas]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        client = make_client(replicas[i].address)
        try:
            results[i] = send_events(client, shares[i], batch=batch)
        except BaseException as error:  # reported by the test
            errors.append(error)
        finally:
            client.channel.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(replicas))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE * 2)
    assert not errors, errors
    return [r for share in results for r in share]


def test_three_replicas_end_where_one_sqlite_node_ends(
    tmp_path: Path, replicas: list[Serve], monkeypatch: pytest.MonkeyPatch
) -> None:
    audience, events, conflicts = the_events(monkeypatch)
    expected = single_node(tmp_path, audience, events, conflicts)
    client = make_client(replicas[0].address)
    try:
        create(client, audience)
        # Each batch's events are spread so the duplicates of one event meet at different replicas.
        results = spread(replicas, events, batch=50)
        counts = outcome_counts(results)
        assert counts[ingest_pb2.EVENT_OUTCOME_ACCEPTED] == len({_id(e) for e in events})
        assert counts[ingest_pb2.EVENT_OUTCOME_DUPLICATE] == len(events) - len({_id(e) for e in events})
        assert set(outcome_counts(spread(replicas, conflicts, batch=5))) == {ingest_pb2.EVENT_OUTCOME_CONFLICT}
        for replica in replicas:  # every replica reads the same end
            reader = make_client(replica.address)
            try:
                got = end_state(reader)
            finally:
                reader.channel.close()
            assert got["sequences"] and expected["sequences"]
            for key in expected:
                assert got[key] == expected[key], f"{key} differs from the single SQLite node"
    finally:
        client.channel.close()


def test_a_killed_replica_keeps_what_it_acknowledged(
    tmp_path: Path, replicas: list[Serve], monkeypatch: pytest.MonkeyPatch
) -> None:
    audience, events, conflicts = the_events(monkeypatch)
    expected = single_node(tmp_path, audience, events, conflicts)
    setup = make_client(replicas[1].address)
    create(setup, audience)
    setup.channel.close()
    batch = 40
    acknowledged: list[str] = []
    done = threading.Event()
    victim = replicas[0]

    def requests() -> Iterator[ingest_pb2.StreamEventsRequest]:
        for start in range(0, len(events), batch):
            yield ingest_pb2.StreamEventsRequest(batch_id=str(start), events=events[start : start + batch])
            # The next batch goes once this one is answered (or the stream ended).
            deadline = time.monotonic() + DEADLINE
            while len(sent_and_answered) <= start // batch and not done.is_set():
                assert time.monotonic() < deadline
                time.sleep(0.005)

    sent_and_answered: list[int] = []
    victim_client = make_client(victim.address)

    def feed() -> None:
        try:
            for response in victim_client.ingest.StreamEvents(requests(), timeout=DEADLINE * 2):
                start = int(response.batch_id)
                acknowledged.extend(_id(e) for e in events[start : start + batch])
                sent_and_answered.append(start)
        except Exception:  # the replica was killed mid-stream
            pass
        finally:
            done.set()

    feeder = threading.Thread(target=feed)
    feeder.start()
    deadline = time.monotonic() + DEADLINE
    while len(sent_and_answered) < 5:
        assert time.monotonic() < deadline, "the stream made no progress"
        time.sleep(0.01)
    victim.kill()
    feeder.join(DEADLINE)
    victim_client.channel.close()
    assert acknowledged and len(acknowledged) < len(events), "killed mid-stream"
    # What it acknowledged is stored: another replica answers DUPLICATE for every one of them.
    survivor = make_client(replicas[1].address)
    try:
        seen = {_id(e) for e in events[: len(acknowledged)]}
        first: dict[str, ingest_pb2.Event] = {}
        for e in events[: len(acknowledged)]:
            first.setdefault(_id(e), e)
        again = send_events(survivor, list(first.values()))
        assert {r.outcome for r in again} == {ingest_pb2.EVENT_OUTCOME_DUPLICATE}, len(seen)
        # The client resends everything from its last acknowledged batch on, elsewhere.
        send_events(survivor, events[len(acknowledged) :], batch=100)
        assert set(outcome_counts(send_events(survivor, conflicts))) == {ingest_pb2.EVENT_OUTCOME_CONFLICT}
        got = end_state(survivor)
        for key in expected:
            assert got[key] == expected[key], f"{key} differs from the single SQLite node"
    finally:
        survivor.channel.close()


def test_watchers_and_resume_tokens_work_across_replicas(replicas: list[Serve]) -> None:
    # --durability is SQLite's: a replica's start line says what decides here.
    assert "durability: the database server's synchronous_commit" in replicas[0].log.read_text()
    first, second = make_client(replicas[0].address), make_client(replicas[1].address)
    try:
        events = [status_event(f"w-{i}", CAMPAIGN, f"+4915100{i:06d}", 3, 1_700_000_000_000_000 + i) for i in range(30)]
        send_events(second, events[:10])
        watch = first.reports.WatchCampaignStats(
            report_pb2.WatchCampaignStatsRequest(campaign_id=CAMPAIGN), timeout=DEADLINE
        )
        assert next(watch).stats.overall.counts.total == 10
        send_events(second, events[10:])  # written through another replica
        deadline = time.monotonic() + DEADLINE
        for message in watch:
            if message.stats.overall.counts.total == 30:
                break
            assert time.monotonic() < deadline
        watch.cancel()
        # A subscriber on one replica sees events written through another, live.
        subscribe = first.reports.SubscribeEvents(
            report_pb2.SubscribeEventsRequest(campaign_id=CAMPAIGN), timeout=DEADLINE
        )
        seen: list[int] = []
        for page in subscribe:
            seen.extend(e.sequence for e in page.events)
            if page.caught_up:
                break
        assert seen == list(range(1, 31))
        send_events(second, [status_event("w-live", CAMPAIGN, "+4915100999999", 3, 1_700_000_000_000_999)])
        for page in subscribe:
            if [e.event.status.event_id for e in page.events] == ["w-live"]:
                break
            assert time.monotonic() < deadline
        subscribe.cancel()
        # A report paged on one replica goes on on another with its token.
        pages = first.reports.StreamMessageReport(
            report_pb2.StreamMessageReportRequest(campaign_id=CAMPAIGN, page_size=7), timeout=DEADLINE
        )
        page = next(pages)
        pages.cancel()
        rest, _ = all_report_rows(second, CAMPAIGN, page_size=7, resume_token=page.resume_token)
        every, _ = all_report_rows(first, CAMPAIGN, page_size=100)
        assert [r.recipient for r in [*page.rows, *rest]] == [r.recipient for r in every]
    finally:
        first.channel.close()
        second.channel.close()


def test_replicas_starting_together_apply_each_migration_once(tmp_path: Path, backend: Backend) -> None:
    from flowtrack.store import upgrade
    from flowtrack.store.pg.store import migrate

    url = backend.database(tmp_path / "fresh")
    with connect_db(url) as conn:  # a database made from the migrated template: start from nothing
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    applied: list[list[str]] = []
    threads = [threading.Thread(target=lambda: applied.append(migrate(url))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
    assert sorted(v for done in applied for v in done) == upgrade.revisions()  # applied by exactly one
    conn = connect_db(url)
    try:
        assert [v for (v,) in conn.execute("SELECT version_num FROM alembic_version")] == [upgrade.head()]
    finally:
        conn.close()


def test_a_lost_database_connection_is_retryable_and_heals(tmp_path: Path, backend: Backend) -> None:
    """The database drops the writer's connection (a failover, a restart):
    the write in flight, if any, is answered UNAVAILABLE (never UNKNOWN, never
    a false ACCEPTED), and the writer reconnects by itself; a resend is stored
    once."""
    import grpc

    server = start_server(tmp_path)
    client = make_client(server.address)
    try:
        event = status_event("lost-1", CAMPAIGN, "+4915100000001", 3, 1_700_000_000_000_000)
        send_events(client, [event])
        with connect_db(server.settings.database) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'flowtrack-writer' AND datname = current_database()"
            ).fetchall()
        assert killed == [(True,)]
        second = status_event("lost-2", CAMPAIGN, "+4915100000002", 3, 1_700_000_000_000_001)
        outcomes = []
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                outcomes.append(send_events(client, [second])[0].outcome)
                break
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                assert time.monotonic() < deadline, "the writer did not reconnect"
                time.sleep(0.1)
        assert outcomes[-1] == ingest_pb2.EVENT_OUTCOME_ACCEPTED
        assert send_events(client, [second])[0].outcome == ingest_pb2.EVENT_OUTCOME_DUPLICATE
        stats = client.reports.GetCampaignStats(report_pb2.GetCampaignStatsRequest(campaign_id=CAMPAIGN)).stats
        assert (stats.overall.counts.total, stats.sequence) == (2, 2)
    finally:
        client.channel.close()
        server.stop()


def test_a_deadlock_between_replicas_is_retried_not_returned(tmp_path: Path, backend: Backend) -> None:
    """Two replicas' transactions lock two businesses in opposite orders:
    PostgreSQL aborts one (deadlock detected); its writer runs the batch again
    and both callers get their result, no error."""
    from flowtrack.store.pg.store import PgWriter
    from flowtrack.store.writer import Tx

    url = backend.database(tmp_path)
    writers = [PgWriter(url), PgWriter(url)]
    locked = [threading.Event(), threading.Event()]

    def job(me: int, first: str, second: str) -> Any:
        def run(tx: Tx) -> int:
            tx.lock_business(first)
            locked[me].set()
            locked[1 - me].wait(DEADLINE)  # both hold their first lock: now cross
            tx.lock_business(second)
            return tx.next_sequence(first)

        return run

    results: list[Any] = [None, None]

    def call(i: int, first: str, second: str) -> None:
        try:
            results[i] = writers[i].run_sync(job(i, first, second))
        except BaseException as error:  # reported below
            results[i] = error

    threads = [threading.Thread(target=call, args=(0, "b1", "b2")), threading.Thread(target=call, args=(1, "b2", "b1"))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(DEADLINE)
        assert results == [1, 1], results  # each business's first sequence, once
        assert sum(w.retries for w in writers) >= 1
    finally:
        for w in writers:
            w.close()


def test_a_missing_database_stops_the_start_in_one_line(backend: Backend) -> None:
    """`serve --database postgresql://.../nope` exits at once, saying why, without the password."""
    from flowtrack.server import StartupError

    missing = url_of("ft_missing_database").replace("postgres@", "postgres:secret@")
    with pytest.raises(StartupError) as raised:
        start_server(Path("/unused"), database=missing)
    message = str(raised.value)
    assert "ft_missing_database" in message and "does not exist" in message
    assert "secret" not in message and len(message.splitlines()) == 1


def test_two_replicas_send_each_webhook_attempt_once(tmp_path: Path, backend: Backend) -> None:
    """Two servers on one database, both delivery workers kept awake: a
    message whose receiver answers 500 four times is sent five times in all
    (attempts 1..5, one webhook-id), never by both replicas at once: each
    worker claims a message in a write before sending it."""
    from flowtrack.v1 import delivery_pb2
    from tests.receivers import Receiver, wait_until
    from tests.test_delivered import FAST, Api, add_endpoint, finish_all, make_campaign

    receiver = Receiver(answers=[500, 500, 500, 500])
    first = start_server(tmp_path, **FAST)
    second = start_server(tmp_path, **FAST)
    stop = threading.Event()

    def keep_waking() -> None:  # the second replica looks for due messages all the time
        assert second.running.delivery is not None
        while not stop.wait(0.01):
            second.running.delivery.worker.wake()

    waker = threading.Thread(target=keep_waking)
    waker.start()
    try:
        api = Api(first.address)
        add_endpoint(api, receiver.url, "campaign.completed")
        make_campaign(api, "both", 2)
        finish_all(api, "both", 2)

        def delivered() -> Any:
            found = api.webhooks.ListWebhookDeliveries(delivery_pb2.ListWebhookDeliveriesRequest()).deliveries
            return found if found and found[0].state == delivery_pb2.WEBHOOK_DELIVERY_STATE_DELIVERED else None

        (delivery,) = wait_until(delivered, what="the delivery recorded as delivered")
        assert [a.attempt for a in delivery.attempts] == [1, 2, 3, 4, 5]
        # Both workers go on looking a while longer: nothing is sent again.
        for server in (first, second):
            assert server.running.delivery is not None
        runner = second.running.delivery.runner  # type: ignore[union-attr]
        ticks = runner.ticks
        wait_until(lambda: runner.ticks >= ticks + 5, what="five more scheduler rounds")
        assert [r.status for r in receiver.requests] == [500, 500, 500, 500, 200]
        assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
    finally:
        stop.set()
        waker.join()
        second.stop()
        first.stop()
        receiver.close()


def _terminate(database: str, application_name: str) -> list[Any]:
    admin = connect_db(database)
    try:
        return list(
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = ? AND datname = current_database()",
                (application_name,),
            ).fetchall()
        )
    finally:
        admin.close()


def test_the_listen_thread_survives_stray_payloads_and_a_killed_connection(tmp_path: Path, backend: Backend) -> None:
    """A NOTIFY on flowtrack's channel that is not flowtrack's is skipped (it
    ended the LISTEN thread for good: commits reached watchers only by their
    1 s poll, and the delivery tasks were no longer woken); a LISTEN
    connection the database drops is opened again, and a commit made while
    it was gone is still passed on to the commit listeners once it is back."""
    from tests.receivers import wait_until

    server = start_server(tmp_path)
    client = make_client(server.address)
    listener = server.store.listener
    heard: list[int] = []  # the highest sequence of each commit notification
    server.store.writer.on_commit(lambda changed, _touched: heard.append(max(changed.values(), default=0)))
    try:

        def event(i: int) -> Any:
            return status_event(f"l-{i}", CAMPAIGN, f"+49151000{i:05d}", 3, 1_700_000_000_000_000 + i)

        def hears(sequence: int) -> None:
            wait_until(lambda: sequence in heard, what=f"the commit of sequence {sequence} notified")

        send_events(client, [event(0)])
        hears(1)
        stray = connect_db(server.settings.database)
        try:
            stray.execute("NOTIFY flowtrack_commits, 'x'")
            stray.execute("SELECT pg_notify('flowtrack_commits', '{\"s\": 5}')")
        finally:
            stray.close()
        send_events(client, [event(1)])
        hears(2)
        assert listener.bad_payloads == 2
        # The LISTEN connection is killed and kept from coming back while a commit is made.
        good = listener.url
        listener.url = url_of("ft_no_such_database")
        assert _terminate(server.settings.database, "flowtrack-listen") == [(True,)]
        wait_until(lambda: not listener.connected, what="the LISTEN connection lost")
        send_events(client, [event(2)])
        time.sleep(0.5)
        assert 3 not in heard
        listener.url = good
        hears(3)  # found when it listens again
        assert listener.connected and listener.reconnects == 1
        send_events(client, [event(3)])
        hears(4)
    finally:
        client.channel.close()
        server.stop()


def test_health_and_metrics_say_when_the_listen_connection_is_down(tmp_path: Path, backend: Backend) -> None:
    """While the LISTEN connection cannot be opened again, the report service
    is NOT_SERVING (its watchers would miss other replicas' commits) and
    flowtrack_commit_listener_up is 0; both recover by themselves."""
    import httpx
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from flowtrack.server import REPORT_SERVICE, SERVICE_NAMES
    from tests.receivers import wait_until

    server = start_server(tmp_path, http="127.0.0.1:0")
    client = make_client(server.address)
    health = health_pb2_grpc.HealthStub(client.channel)
    listener = server.store.listener
    assert server.running.http is not None
    metrics_url = server.running.http.url + "/metrics"

    def status(service: str) -> int:
        return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status  # type: ignore[no-any-return]

    def listener_up() -> str:
        text = httpx.get(metrics_url, timeout=10).text
        return next(line.split()[-1] for line in text.splitlines() if line.startswith("flowtrack_commit_listener_up "))

    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    try:
        assert status(REPORT_SERVICE) == serving and listener_up() == "1.0"
        good = listener.url
        listener.url = url_of("ft_no_such_database")  # every reconnection is refused
        assert _terminate(server.settings.database, "flowtrack-listen") == [(True,)]
        wait_until(lambda: status(REPORT_SERVICE) == not_serving, what="the report service NOT_SERVING")
        assert listener_up() == "0.0"
        others = [name for name in SERVICE_NAMES if name != REPORT_SERVICE]
        assert [status(name) for name in others] == [serving] * len(others)
        listener.url = good
        wait_until(lambda: status(REPORT_SERVICE) == serving, what="the report service SERVING again")
        assert listener_up() == "1.0"
    finally:
        client.channel.close()
        server.stop()


def test_a_run_slower_than_the_lease_is_made_once_by_two_replicas(
    tmp_path: Path, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two servers on one database, a lease of 1 s and a run that takes 3 s:
    the lease lapses while the run is written and the other server takes it
    over, but the run is claimed (and the claim renewed) by its maker, so it
    is made once, and report.completed is enqueued once."""
    from flowtrack.core.export import export_report as export
    from flowtrack.delivery import runner as runner_module
    from flowtrack.v1 import delivery_pb2
    from tests.receivers import wait_until
    from tests.test_delivered import FAST, Api, completed_run, finish_all, make_campaign

    made: list[str] = []

    async def slow_export(*args: Any, **kwargs: Any) -> Any:
        import asyncio

        made.append(args[1].campaign_id)
        for _ in range(30):  # 3 s before the first chunk
            await asyncio.sleep(0.1)
        async for response in export(*args, **kwargs):
            yield response

    monkeypatch.setattr(runner_module, "export_report", slow_export)
    first = start_server(tmp_path, **FAST)
    second = start_server(tmp_path, **FAST)
    try:
        for server in (first, second):
            assert server.running.delivery is not None
            server.running.delivery.runner.lease_us = 1_000_000
            server.running.delivery.runner.claim_us = 1_000_000
        runners = [s.running.delivery.runner for s in (first, second)]  # type: ignore[union-attr]
        ticks = [r.ticks for r in runners]
        # A few rounds: the holder renews the lease at its new length.
        wait_until(lambda: all(r.ticks >= t + 4 for r, t in zip(runners, ticks, strict=True)), what="four rounds")
        api = Api(first.address)
        api.schedules.CreateReportSchedule(
            delivery_pb2.CreateReportScheduleRequest(schedule=delivery_pb2.ReportSchedule(on_complete=True))
        )
        api.webhooks.CreateWebhookEndpoint(
            delivery_pb2.CreateWebhookEndpointRequest(
                endpoint=delivery_pb2.WebhookEndpoint(url="http://127.0.0.1:9/hook", events=["report.completed"])
            )
        )
        make_campaign(api, "slow", 2)
        finish_all(api, "slow", 2)
        run = completed_run(api)
        assert run.rows == 2
        # Both schedulers go on a while longer (each takes the lease in turn): nothing is made again.
        ticks = [r.ticks for r in runners]
        wait_until(lambda: all(r.ticks >= t + 10 for r, t in zip(runners, ticks, strict=True)), what="ten more rounds")
        assert made == ["slow"]
        assert sum(r.runs_made for r in runners) == 1
        deliveries = api.webhooks.ListWebhookDeliveries(delivery_pb2.ListWebhookDeliveriesRequest()).deliveries
        assert [d.type for d in deliveries] == ["report.completed"]
        files = [p for p in (tmp_path / "flowtrack.reports").rglob("*") if p.is_file()]
        assert len(files) == 1 and files[0].name.startswith(f"{run.id}-")
    finally:
        second.stop()
        first.stop()


def test_a_commit_whose_connection_is_lost_is_an_unknown_outcome_not_nothing_stored(
    tmp_path: Path, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection drops while COMMIT is on its way (planted: the COMMIT
    reaches the server, its answer never comes back). The transaction did
    commit, so "nothing was stored; retry" would make a client repeat a
    CreateCampaign without an id into a second campaign: the answer is
    UNAVAILABLE, COMMIT_OUTCOME_UNKNOWN, saying it may have been stored."""
    import grpc
    import psycopg

    from flowtrack.store.pg.conn import PgConnection
    from tests.conftest import error_details

    armed = threading.Event()
    execute, execute_text, control = PgConnection.execute, PgConnection.execute_text, PgConnection.control

    inserted = threading.Event()  # the transaction being committed creates a campaign

    def see_the_insert(self: PgConnection, sql: str, params: Any = None) -> Any:
        if armed.is_set() and sql.lstrip().startswith("INSERT INTO campaigns "):
            inserted.set()
        return execute(self, sql, params)

    def see_the_insert_text(self: PgConnection, text: str, values: Any) -> Any:
        if armed.is_set() and text.lstrip().startswith("INSERT INTO campaigns "):
            inserted.set()
        return execute_text(self, text, values)

    def lose_the_answer(self: PgConnection, statement: str) -> None:
        if statement == "COMMIT" and inserted.is_set():
            armed.clear()
            inserted.clear()
            control(self, statement)  # committed on the server...
            self.raw.close()  # ...and the answer lost on the way back
            raise psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly")
        control(self, statement)

    monkeypatch.setattr(PgConnection, "execute", see_the_insert)
    monkeypatch.setattr(PgConnection, "execute_text", see_the_insert_text)
    monkeypatch.setattr(PgConnection, "control", lose_the_answer)
    server = start_server(tmp_path, scheduler_tick=3600.0)
    client = make_client(server.address)
    try:
        armed.set()
        with pytest.raises(grpc.RpcError) as raised:
            client.campaigns.CreateCampaign(
                campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(name="lost answer")), timeout=DEADLINE
            )
        details = error_details(raised.value)
        assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "COMMIT_OUTCOME_UNKNOWN")
        assert "may or may not have been stored" in details.message and "ListCampaigns" in details.message
        assert not armed.is_set()
        listed = client.campaigns.ListCampaigns(campaign_pb2.ListCampaignsRequest(), timeout=DEADLINE).campaigns
        assert [c.name for c in listed] == ["lost answer"]  # it was stored
        # The writer opens a new connection by itself.
        client.campaigns.CreateCampaign(
            campaign_pb2.CreateCampaignRequest(campaign=campaign_pb2.Campaign(id="next", name="n")), timeout=DEADLINE
        )
    finally:
        client.channel.close()
        server.stop()
