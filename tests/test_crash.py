"""The crash harness (scripts/crash_test.py), small: a real server process
SIGKILLed mid-stream and restarted, every event resent until acknowledged,
then the file checked. And the checker itself, on files with a planted
fault, so that a passing run means something."""

from __future__ import annotations

import shutil
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from crash_test import Outcome, run, verify

# slow: SIGKILLs servers while events stream in (the quick loop, `pytest -m "not slow"`, leaves it out)
pytestmark = [pytest.mark.sqlite_only("SIGKILLs a server on a SQLite file and checks the file"), pytest.mark.slow]

EVENTS, KILLS = 3000, 3


@pytest.fixture(scope="module")
def crashed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Outcome, dict[str, int], set[str]]:
    """One small crash run; its file is the base of the planted-fault tests."""
    workdir = tmp_path_factory.mktemp("crash")
    outcome = run(events=EVENTS, kills=KILLS, seed=7, streams=3, batch=100, workdir=workdir)
    conn = sqlite3.connect(outcome.database)
    acked = dict(conn.execute("SELECT event_id, seq FROM events").fetchall())
    conn.close()
    return outcome, acked, set(acked)


def test_killed_server_loses_nothing_acknowledged_and_stores_nothing_twice(
    crashed: tuple[Outcome, dict[str, int], set[str]],
) -> None:
    outcome, acked, _ = crashed
    assert outcome.failures == [], outcome.summary()
    assert outcome.kills == KILLS and outcome.restarts >= KILLS + 1
    assert outcome.acked == EVENTS == len(acked)
    assert outcome.duplicates_checked > 0  # acknowledged events were resent and came back DUPLICATE


def _planted(
    crashed: tuple[Outcome, dict[str, int], set[str]], tmp_path: Path, fault: Callable[[sqlite3.Connection], None]
) -> list[str]:
    outcome, acked, sent = crashed
    copy = tmp_path / "planted.db"
    shutil.copyfile(outcome.database, copy)
    conn = sqlite3.connect(copy)
    fault(conn)
    conn.commit()
    conn.close()
    return verify(copy, acked, sent)


def test_checker_passes_the_untouched_file(crashed: tuple[Outcome, dict[str, int], set[str]], tmp_path: Path) -> None:
    assert _planted(crashed, tmp_path, lambda conn: None) == []


def test_checker_finds_a_lost_acknowledged_event(
    crashed: tuple[Outcome, dict[str, int], set[str]], tmp_path: Path
) -> None:
    found = _planted(crashed, tmp_path, lambda c: c.execute("DELETE FROM events WHERE seq = 17"))
    assert any("acknowledged events missing" in f for f in found), found
    assert any("gaps [17]" in f for f in found), found
    assert any("campaign" in f for f in found) or any("last_sequence" in f for f in found), found


def test_checker_finds_a_repeated_sequence(crashed: tuple[Outcome, dict[str, int], set[str]], tmp_path: Path) -> None:
    found = _planted(crashed, tmp_path, lambda c: c.execute("UPDATE events SET seq = 5 WHERE seq = 6"))
    assert any("repeats [5]" in f for f in found), found
    assert any("another sequence" in f for f in found), found


def test_checker_finds_an_event_stored_twice(crashed: tuple[Outcome, dict[str, int], set[str]], tmp_path: Path) -> None:
    def store_twice(conn: sqlite3.Connection) -> None:
        conn.execute("DROP INDEX events_by_event_id")
        columns = [row[1] for row in conn.execute("PRAGMA table_info(events)") if row[1] != "id"]
        names = ", ".join(columns)
        conn.execute(f"INSERT INTO events ({names}) SELECT {names} FROM events WHERE seq = 3")

    found = _planted(crashed, tmp_path, store_twice)
    assert any("stored more than once" in f for f in found), found


def test_checker_finds_a_counter_off_by_one(crashed: tuple[Outcome, dict[str, int], set[str]], tmp_path: Path) -> None:
    bump = "UPDATE counters SET value = value + 1 WHERE (cid, scope, name) = (SELECT cid, scope, name FROM counters)"
    found = _planted(crashed, tmp_path, lambda c: c.execute(bump))
    assert any("counter" in f for f in found), found


def test_checker_finds_an_event_stored_but_never_sent(
    crashed: tuple[Outcome, dict[str, int], set[str]], tmp_path: Path
) -> None:
    _, acked, sent = crashed
    outcome = crashed[0]
    copy = tmp_path / "copy.db"
    shutil.copyfile(outcome.database, copy)
    forgotten = next(iter(sent))
    found = verify(copy, acked, sent - {forgotten})
    assert any("never sent" in f for f in found), found
