"""A re-classification of stored clicks cut short is finished (store/bots.py
`reclassify_step`, core/settings.py, delivery/reclassify.py), on both
backends: the UpdateSettings call failing after its first page, its client
cancelling mid-way, the server SIGKILLed after the first page and started
again; a newer change while one is pending starts it again under the new
rules. Each ends with every click's class what a full run gives and every
counter equal to a recount (store/check.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner
from google.protobuf import duration_pb2

from flowtrack.cli import cli
from flowtrack.store import bots as sbots
from flowtrack.store import check
from flowtrack.v1 import settings_pb2
from tests.conftest import Client, ServerThread, connect_db, database_of, make_client, start_server
from tests.serving import DEADLINE, Serve
from tests.test_bots import ANDROID, IPHONE, clicked, delivered, send, settings_api, stats_of, update

PAGE = 3  # messages per page here (RECLASSIFY_BATCH in the server)
CAMPAIGNS = ("promo", "later")
RECIPIENTS = [f"+5{i:04d}" for i in range(10)]


def fill(client: Client) -> None:
    """Two campaigns of 10 messages, each with a click 1 s after delivery
    (too soon by the default rules) and one 60 s after (human)."""
    for campaign in CAMPAIGNS:
        send(client, *[delivered(r, campaign=campaign) for r in RECIPIENTS])
        send(
            client,
            *[clicked(f"{campaign}-soon-{r}", r, 1.0, ANDROID, campaign=campaign) for r in RECIPIENTS],
            *[clicked(f"{campaign}-late-{r}", r, 60.0, IPHONE, campaign=campaign) for r in RECIPIENTS],
        )


def pending(database: str) -> list[tuple[Any, ...]]:
    conn = connect_db(database)
    try:
        return [tuple(row) for row in conn.execute("SELECT business_id, cid, after, changed FROM reclassifications")]
    finally:
        conn.close()


def wait_finished(database: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while pending(database):
        assert time.monotonic() < deadline, f"still pending: {pending(database)}"
        time.sleep(0.1)


def all_consistent(database: str) -> None:
    """Every click's reason what a full run under the rules gives, every
    counter (human ones included) a recount (store/check.py)."""
    conn = connect_db(database)
    try:
        campaigns = conn.execute("SELECT business_id, cid FROM campaigns").fetchall()
        assert len(campaigns) == len(CAMPAIGNS)
        for business_id, cid in campaigns:
            assert check.problems(conn, business_id, cid) == []
    finally:
        conn.close()


def human_clicks(client: Client) -> list[int]:
    return [stats_of(client, campaign).overall.human_clicks for campaign in CAMPAIGNS]


class Pages:
    """reclassify_page with PAGE messages a page, counting its calls; `fault`
    (call number -> None) runs before a call does."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real = sbots.reclassify_page
        self.calls = 0
        self.fault: Any = lambda n: None
        monkeypatch.setattr(sbots, "reclassify_page", self.page)

    def page(self, tx: Any, business_id: str, cid: int, after: str, limit: int | None = None) -> tuple[str, int]:
        self.calls += 1
        self.fault(self.calls)
        return self.real(tx, business_id, cid, after, PAGE)


def test_a_call_that_fails_after_its_first_page_is_finished_in_the_background(
    server: ServerThread, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(client)
    assert human_clicks(client) == [10, 10]
    pages = Pages(monkeypatch)

    def fail_once(n: int) -> None:
        if n == 2:
            raise RuntimeError("planted: the second page fails")

    pages.fault = fail_once
    with pytest.raises(grpc.RpcError):
        update(client, bot_click_threshold=duration_pb2.Duration())  # timing off: every click human
    wait_finished(server.settings.database)  # the call failed at its second page: only the background goes on
    assert pages.calls > 2
    assert human_clicks(client) == [20, 20]
    all_consistent(server.settings.database)


def test_a_call_cancelled_mid_way_is_finished_in_the_background(
    server: ServerThread, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client goes away while the second page runs: the server's
    handler is cancelled (before this change, that ended the
    re-classification there), the page commits, the rest is the background's."""
    fill(client)
    pages = Pages(monkeypatch)
    second_page, cancelled = threading.Event(), threading.Event()

    def hold_second(n: int) -> None:
        if n == 2:
            second_page.set()
            cancelled.wait(timeout=DEADLINE)
            time.sleep(0.2)  # the cancellation reaches the handler while this page runs

    pages.fault = hold_second
    call = settings_api(client).UpdateSettings.future(
        settings_pb2.UpdateSettingsRequest(bot_click_threshold=duration_pb2.Duration()), timeout=DEADLINE
    )
    assert second_page.wait(timeout=DEADLINE)
    call.cancel()
    cancelled.set()
    with pytest.raises(grpc.FutureCancelledError):
        call.result()
    wait_finished(server.settings.database)
    # Finished, by the background or, when the cancellation reaches the
    # handler after its last page, by the call itself (seen in CI).
    assert human_clicks(client) == [20, 20]
    all_consistent(server.settings.database)


def test_a_newer_change_while_one_is_pending_starts_it_again(
    server: ServerThread, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change cut short after its first page (its first messages
    classified under it), then another: every click ends classified under
    the second, the first pages included."""
    fill(client)
    pages = Pages(monkeypatch)
    broken = threading.Event()
    broken.set()

    def fail_after_first(n: int) -> None:
        if n > 1 and broken.is_set():
            raise RuntimeError("planted: every page after the first fails")

    pages.fault = fail_after_first
    background = server.running.delivery.reclassifier  # type: ignore[union-attr]
    assert background is not None
    rounds = background.rounds
    with pytest.raises(grpc.RpcError):
        update(client, bot_click_threshold=duration_pb2.Duration())  # timing off
    deadline = time.monotonic() + DEADLINE
    while background.rounds == rounds:  # the call woke the background task: its round fails too
        assert time.monotonic() < deadline
        time.sleep(0.05)
    ((_, cid, after, changed),) = pending(server.settings.database)
    assert (cid, after, changed) != (0, "", 0) and changed == PAGE  # the first page's soon clicks became human
    assert human_clicks(client) == [10 + PAGE, 10]
    going_on = settings_api(client).GetSettings(settings_pb2.GetSettingsRequest(), timeout=10)
    assert going_on.reclassification.reclassified_clicks == PAGE and going_on.reclassification.HasField("request_time")
    shown = CliRunner().invoke(cli, ["settings", "show", "--address", server.address])
    assert f"re-classifying clicks:     under way ({PAGE} re-classified so far)" in shown.output, shown.output
    broken.clear()
    reply = update(client, bot_click_threshold=duration_pb2.Duration(seconds=90))  # both clicks too soon now
    assert pending(server.settings.database) == []
    done = settings_api(client).GetSettings(settings_pb2.GetSettingsRequest(), timeout=10)
    assert not done.HasField("reclassification")
    assert "re-classifying" not in CliRunner().invoke(cli, ["settings", "show", "--address", server.address]).output
    assert human_clicks(client) == [0, 0]
    assert reply.reclassified_clicks == (10 + PAGE) + 10  # every human click of the moment became a bot's
    all_consistent(server.settings.database)


# -- a server killed mid-way ---------------------------------------------------------

_DIES_AFTER_THE_FIRST_PAGE = """
import os, sys
from flowtrack.store import bots

real, calls = bots.reclassify_page, [0]


def page(tx, business_id, cid, after, limit=None):
    calls[0] += 1
    if calls[0] == 2:
        os._exit(9)  # as SIGKILL: in the middle of the second page's transaction
    return real(tx, business_id, cid, after, PAGE)


bots.reclassify_page = page
from flowtrack.cli import cli

cli(sys.argv[1:], prog_name="flowtrack")
"""


class DyingServe(Serve):
    """A server whose second page of a re-classification kills it."""

    def __init__(self, database: str, log: Path, script: Path) -> None:
        script.write_text(_DIES_AFTER_THE_FIRST_PAGE.replace("PAGE", str(PAGE)))
        self.database, self.log = database, log
        with log.open("w") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(script), "serve", "--listen", "127.0.0.1:0", "--grace", "1",
                 "--database", database],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "FLOWTRACK_LOG_LEVEL": "INFO"},
                cwd=log.parent,
            )  # fmt: skip
        deadline = time.monotonic() + DEADLINE
        while not (found := re.search(r"serving on [\d.]+:(\d+)", log.read_text())):
            assert self.process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        self.port = int(found.group(1))
        self.address = f"127.0.0.1:{self.port}"


@pytest.mark.slow
def test_a_server_killed_after_the_first_page_finishes_after_a_restart(tmp_path: Path) -> None:
    database = database_of(tmp_path)
    dying = DyingServe(database, tmp_path / "dying.log", tmp_path / "dying.py")
    client = make_client(dying.address)
    try:
        fill(client)
        with pytest.raises(grpc.RpcError) as raised:
            update(client, bot_click_threshold=duration_pb2.Duration())
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        assert dying.process.wait(timeout=DEADLINE) == 9
    finally:
        client.channel.close()
    ((_, _, after, changed),) = pending(database)
    assert after and changed == PAGE  # the first page committed, no more

    restarted = Serve(database, log=tmp_path / "restarted.log", cwd=tmp_path)
    client = make_client(restarted.address)
    try:
        wait_finished(database)  # once the dead server's hold lapsed (core/settings.HOLD_US)
        assert human_clicks(client) == [20, 20]
        assert "finished 1 re-classification(s) of stored clicks" in restarted.log.read_text()
    finally:
        client.channel.close()
        assert restarted.stop() == 0
    all_consistent(database)


@pytest.mark.own_backend("PostgreSQL only: two replicas on one database")
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_two_replicas_finish_a_pending_one_one_page_at_a_time(
    tmp_path: Path, backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change of the rules recorded and not worked at all (as a call
    killed before its first page leaves it); both replicas' background
    tasks wake at once: one holds the business and does every page, once."""
    first = start_server(tmp_path)
    second = start_server(tmp_path)
    client = make_client(first.address)
    try:
        fill(client)
        pages = Pages(monkeypatch)
        pages.fault = lambda n: time.sleep(0.05)  # pages slow enough for the other to try meanwhile
        steps: list[tuple[str, sbots.Step]] = []
        real_step = sbots.reclassify_step

        def step(business_id: str, holder: str, hold_us: int) -> Any:
            job = real_step(business_id, holder, hold_us)

            def recorded(tx: Any) -> sbots.Step:
                done = job(tx)
                steps.append((holder, done))
                return done

            return recorded

        monkeypatch.setattr(sbots, "reclassify_step", step)
        conn = connect_db(first.settings.database)
        try:
            with conn:
                conn.execute("UPDATE business_settings SET bot_click_threshold_ms = 0")
                conn.execute(
                    "INSERT INTO business_settings (business_id, bot_click_threshold_ms, update_time)"
                    " SELECT 'default', 0, 1 WHERE NOT EXISTS (SELECT 1 FROM business_settings)"
                )
                conn.execute("INSERT INTO reclassifications (business_id, requested_at) VALUES ('default', 1)")
        finally:
            conn.close()
        for server in (first, second):
            reclassifier = server.running.delivery.reclassifier  # type: ignore[union-attr]
            assert reclassifier is not None
            server.loop.call_soon_threadsafe(reclassifier.wake)
        wait_finished(first.settings.database)
        worked = [(holder, done) for holder, done in steps if not done.held_elsewhere]
        assert len({holder for holder, _ in worked}) == 1  # one replica did every step
        assert pages.calls == 2 * 4  # two campaigns of 10 messages, 3 a page: each page once
        assert human_clicks(client) == [20, 20]
    finally:
        client.channel.close()
        second.stop()
        first.stop()
    all_consistent(first.settings.database)
