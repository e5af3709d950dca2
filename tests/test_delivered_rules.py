"""The pieces of reports delivered on their own: the writer's pre-commit
hook, the completion rule, webhook rules (private targets, backoff), signed
links and cron cadences."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from flowtrack.domain import completion, schedules, webhooks
from flowtrack.store import db
from flowtrack.store.writer import Tx, Writer
from tests.conftest import checks

pytestmark = pytest.mark.sqlite_only("no server: pure rules, and the SQLite writer's pre-commit hook")


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[Writer]:
    conn = db.open_database(tmp_path / "w.db")
    conn.execute("CREATE TABLE t (k INTEGER)")
    w = Writer(conn)
    yield w
    w.close()


def _count(tmp_path: Path, value: int) -> int:
    conn = sqlite3.connect(tmp_path / "w.db")
    try:
        return int(conn.execute("SELECT count(*) FROM t WHERE k = ?", (value,)).fetchone()[0])
    finally:
        conn.close()


def test_a_pre_commit_hook_commits_with_the_jobs_and_a_failing_one_is_undone_alone(
    writer: Writer, tmp_path: Path
) -> None:
    seen: list[dict[int, tuple[str, bool]]] = []

    def hook(tx: Tx) -> None:
        seen.append(tx.touched())
        checks(tx.conn).execute("INSERT INTO t VALUES (2)")

    def failing(tx: Tx) -> None:
        checks(tx.conn).execute("INSERT INTO t VALUES (3)")
        raise RuntimeError("planted")

    writer.before_commit(hook)
    writer.before_commit(failing)

    def job(tx: Tx) -> None:
        checks(tx.conn).execute("INSERT INTO t VALUES (1)")
        tx.touch_campaign("b", 7, 123, 1)  # an event
        tx.touch_campaign("b", 8, None, 1)  # a campaign change

    writer.run_sync(job)
    assert seen == [{7: ("b", True), 8: ("b", False)}]  # each with its business
    assert (_count(tmp_path, 1), _count(tmp_path, 2), _count(tmp_path, 3)) == (1, 1, 0)


def test_all_final_needs_an_audience_and_nothing_left_open() -> None:
    assert not completion.all_final({})
    assert completion.all_final({"success": 3, "failed": 1, "not_submitted": 2})
    for open_bucket in completion.NOT_FINAL_BUCKETS:
        assert not completion.all_final({"success": 3, open_bucket: 1})
    assert completion.quiet(10, 5, 15) and not completion.quiet(10, 5, 14) and not completion.quiet(None, 5, 99)
    stats = completion.summary({"success": 3, "failed": 1, "pending": 1})
    assert (stats["total"], stats["submitted"], stats["failure_rate"]) == (5, 4, 0.25)
    assert (stats["read"], stats["in_flow"], stats["read_rate"]) == (0, 0, 0.0)
    assert "goal_rate" not in stats  # nobody entered the flow
    assert not any(name.endswith("_rate") for name in completion.summary({"pending": 2}))


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "10.0.0.1", "192.168.1.1", "172.16.0.1", "169.254.169.254", "::1", "fc00::1", "0.0.0.0",
                "::ffff:127.0.0.1", "224.0.0.1", "100.64.0.1"],
)  # fmt: skip
def test_private_and_reserved_addresses_are_refused(address: str) -> None:
    assert webhooks.refused_address([address]) == address


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::7f00:1",  # NAT64 (RFC 6052) of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b:1::808:808",  # the local-use NAT64 prefix (RFC 8215), whatever it carries
        "::127.0.0.1",  # IPv4-compatible
        "::a00:1",  # IPv4-compatible 10.0.0.1
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:c0a8:101::1",  # 6to4 of 192.168.1.1
        "::ffff:0:7f00:1",  # SIIT (RFC 2765) of 127.0.0.1
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    ],
)
def test_ipv6_forms_that_carry_a_private_ipv4_address_are_refused(address: str) -> None:
    assert webhooks.refused_address([address]) == address


def test_public_addresses_are_allowed() -> None:
    assert webhooks.refused_address(["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]) is None
    # An IPv6 form of a public IPv4 address is that address.
    assert webhooks.refused_address(["::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]) is None


def test_a_pinned_https_request_sends_sni_and_checks_the_certificate_for_the_host_name() -> None:
    """The attempt connects to the checked address, while TLS (SNI, the
    certificate check) and the Host header use the URL's host name: a
    certificate for hooks.example only, served on 127.0.0.1, verifies."""
    import asyncio
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    import httpx
    import trustme

    from flowtrack.delivery.worker import pinned_request

    ca = trustme.CA()
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("hooks.example").configure_cert(served)
    seen: dict[str, str] = {}
    served.sni_callback = lambda sock, name, ctx: seen.__setitem__("sni", str(name))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen["host"] = self.headers["host"]
            seen["body"] = self.rfile.read(int(self.headers["content-length"])).decode()
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    httpd.socket = served.wrap_socket(httpd.socket, server_side=True)
    port = httpd.server_address[1]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)

    async def post(url: str, address: str | None) -> int:
        async with httpx.AsyncClient(verify=trusted, trust_env=False) as client:
            response = await client.send(pinned_request(client, url, address, b"{}", {}))
            return response.status_code

    try:
        url = f"https://hooks.example:{port}/hook"
        assert asyncio.run(post(url, "127.0.0.1")) == 204
        assert seen == {"sni": "hooks.example", "host": f"hooks.example:{port}", "body": "{}"}
        # Without the host name for TLS, the same certificate does not verify.
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            asyncio.run(post(f"https://127.0.0.1:{port}/hook", None))
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    rng = random.Random(1)
    for attempts in range(1, 30):
        raw = min(webhooks.MAX_RETRY_DELAY, 5.0 * 2 ** (attempts - 1))
        delay = webhooks.retry_delay(attempts, 5.0, rng)
        assert raw / 2 <= delay <= raw
    # Over a day, at most about 30 attempts (the cap is an hour).
    total, attempts = 0.0, 0
    while total < 24 * 3600:
        attempts += 1
        total += webhooks.retry_delay(attempts, 5.0, rng)
    assert 20 <= attempts <= 60


def test_signed_links_refuse_any_change_and_expire() -> None:
    key = b"k" * 32
    sig = schedules.sign(key, "run_a", 2000)
    assert schedules.verify(key, "run_a", "2000", sig, now_s=1999) is None
    assert schedules.verify(key, "run_a", "2000", sig, now_s=2001) == "expired"
    assert schedules.verify(key, "run_b", "2000", sig, now_s=1999) == "altered"
    assert schedules.verify(key, "run_a", "2001", sig, now_s=1999) == "altered"
    assert schedules.verify(key, "run_a", "2000", sig[:-1] + "0", now_s=1999) in ("altered", None)
    assert schedules.verify(key, "run_a", "x", sig, now_s=1999) == "altered"
    assert schedules.verify(b"other" * 8, "run_a", "2000", sig, now_s=1999) == "altered"
    link = schedules.link(key, "https://r.example.com/", "run_a", 2000)
    assert link == f"https://r.example.com/reports/runs/run_a?expires=2000&sig={sig}"


def test_cron_reads_the_expression_in_its_time_zone() -> None:
    after = int(datetime(2026, 7, 1, 12, 0, tzinfo=UTC).timestamp() * 1_000_000)
    fire = schedules.next_run("0 8 * * *", "Europe/Paris", after)
    # 08:00 in Paris in July is 06:00 UTC, the next day.
    assert datetime.fromtimestamp(fire / 1_000_000, tz=UTC) == datetime(2026, 7, 2, 6, 0, tzinfo=UTC)
    assert schedules.next_run("0 8 * * *", "", after) == after + 20 * 3600 * 1_000_000
