"""A real flowtrack server on a free loopback port, per test, on a real SQLite
file or a real PostgreSQL database, reached through real channels and the
generated stubs.

Backends: every test runs twice, as `test_x[sqlite]` and `test_x[postgres]`,
unless it (or its module, by `pytestmark`) is marked `sqlite_only(reason)`:
it plants something only a SQLite file has, or uses no database; or
`own_backend(reason)`: it picks its databases itself. The reason is required. On PostgreSQL each test
folder gets its own throwaway database `ft_test_<random>` (created from a
template migrated once per session, dropped at the end of the test), so
`start_server(tmp_path)` twice on one folder is one database, as with a file.
The server is FLOWTRACK_TEST_POSTGRES_URL (default the local one); where it
is unreachable the PostgreSQL half skips with the reason, unless
FLOWTRACK_REQUIRE_POSTGRES=1 (CI), where it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import queue
import secrets
import shutil
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def _bytecode_cache() -> None:
    """Compiled modules for the suite's processes, outside the checkout.

    With PYTHONDONTWRITEBYTECODE=1 (`.ci/run` sets it, so does this machine's
    shell) no `.pyc` of flowtrack's own modules is ever written, and every
    `python -m flowtrack` a test starts (hundreds of servers and CLI
    commands) compiled its ~110 source files again: 27% of the
    instructions of `import flowtrack.server` (3.18 G to 2.33 G,
    docs/performance.md). Here the suite's processes (this one, the xdist
    workers and every process they start, which inherit the environment)
    write and read their bytecode under PYTHONPYCACHEPREFIX, a folder in the
    temp dir, so the checkout stays as clean as the variable meant to keep
    it. A PYTHONPYCACHEPREFIX the caller set is kept."""
    if not (sys.dont_write_bytecode or os.environ.get("PYTHONDONTWRITEBYTECODE")):
        return
    import tempfile

    prefix = os.environ.get("PYTHONPYCACHEPREFIX") or str(
        Path(tempfile.gettempdir()) / f"flowtrack-test-pycache-{os.getuid()}"
    )
    os.environ["PYTHONPYCACHEPREFIX"] = prefix
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.pycache_prefix = prefix
    sys.dont_write_bytecode = False


_bytecode_cache()


def _interruptible() -> None:
    """A suite started in the background of a shell without job control
    (`cmd &`, nohup, some CI runners) inherits SIGINT ignored, and so would
    every process it starts: the docs' live streams (`tail`, `stats
    --watch`), stopped with Ctrl-C's SIGINT by tests/test_readme.py, would
    not stop (each waited 60 s, then was killed, and its test timed out).
    An ignored signal stays ignored across exec; a handled one is reset to
    the default, so the suite's processes get Ctrl-C's default again."""
    import signal

    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        with contextlib.suppress(ValueError):  # not the main thread: left as it is
            signal.signal(signal.SIGINT, signal.default_int_handler)


_interruptible()

from flowtrack.config import Settings  # noqa: E402

# `flowtrack serve` serves the page on 127.0.0.1:8080 unless told otherwise;
# the servers the tests start as processes (many, often at once) do not,
# unless a test gives --http or FLOWTRACK_HTTP itself.
os.environ.setdefault("FLOWTRACK_HTTP", "off")
from flowtrack.server import Running, create_server  # noqa: E402
from flowtrack.v1 import campaign_pb2_grpc, ingest_pb2_grpc, report_pb2_grpc  # noqa: E402


class ServerThread:
    """Runs create_server() in its own event loop thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.running: Running = self._call(create_server(settings))
        self.port = self.running.port
        self.address = f"127.0.0.1:{self.port}"

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    @property
    def store(self) -> Any:
        return self.running.store

    def stop(self, grace: float = 0.5) -> None:
        if self.loop.is_running():
            self._call(self.running.stop(grace))
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)


@dataclasses.dataclass
class Client:
    channel: grpc.Channel
    campaigns: campaign_pb2_grpc.CampaignServiceStub
    ingest: ingest_pb2_grpc.IngestServiceStub
    reports: report_pb2_grpc.ReportServiceStub


def make_client(address: str) -> Client:
    channel = grpc.insecure_channel(address)
    return Client(
        channel,
        campaign_pb2_grpc.CampaignServiceStub(channel),
        ingest_pb2_grpc.IngestServiceStub(channel),
        report_pb2_grpc.ReportServiceStub(channel),
    )


# -- backends -----------------------------------------------------------------

POSTGRES_URL = os.environ.get("FLOWTRACK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
# Every module's tests run on both backends unless the module (pytestmark)
# or the test is marked, with its reason, `sqlite_only` (it plants what only
# a SQLite file has, or its subject is no database at all) or `own_backend`
# (it picks its databases itself: one run). A mark without a reason fails the
# collection (see pytest_collection_modifyitems).
ONE_RUN_MARKS = ("sqlite_only", "own_backend")


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    """pyproject's addopts run the suite on pytest-xdist workers (`-n 4
    --dist loadgroup`); with xdist off (`-p no:xdist`) those two options are
    accepted here and mean nothing, so one module runs in this process."""
    import importlib.util

    if not pluginmanager.is_blocked("xdist") and importlib.util.find_spec("xdist") is not None:
        return  # xdist gives them (it may register after this file, as under `-p tests.conftest`)
    group = parser.getgroup("xdist off", "pytest-xdist is not loaded: these options are ignored")
    group._addoption("-n", "--numprocesses", dest="numprocesses", default=None, help="ignored (xdist is off)")
    group.addoption("--dist", dest="dist", default="no", help="ignored (xdist is off)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only(reason): runs on SQLite alone (plants what only a file has, or uses no database)"
    )
    config.addinivalue_line(
        "markers", "own_backend(reason): runs once; the test picks its databases itself (PostgreSQL-only modules)"
    )
    config.addinivalue_line(
        "markers",
        'slow: a test that takes many seconds (property tests, worlds of processes); `pytest -m "not slow"`'
        " is the quick loop, the full run includes them",
    )


def reasonless_marks(item: pytest.Item) -> list[str]:
    """The one-run marks of `item` that give no reason (a non-empty text)."""
    out = []
    for name in ONE_RUN_MARKS:
        for mark in item.iter_markers(name):
            reason = mark.args[0] if mark.args else mark.kwargs.get("reason")
            if not isinstance(reason, str) or not reason.strip():
                out.append(name)
    return out


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups (its hook comes first otherwise)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    bad = [f"{item.nodeid}: @{name}" for item in items for name in reasonless_marks(item)]
    if bad:
        raise pytest.UsageError("a sqlite_only/own_backend mark needs its reason: " + "; ".join(sorted(set(bad))[:10]))
    for item in items:
        group = shared_world(item)
        if group is not None and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(group))


def shared_world(item: pytest.Item) -> str | None:
    """The xdist group of a test that uses a module-scoped fixture (a world
    of servers, a browser) other than `backend`: its module and backend, so
    the tests sharing one world run on one worker (`--dist loadgroup`) and
    build it once, as in a serial run; a test's `shard` parameter (a long
    test cut into parts: tests/test_ordering.py) makes a group of each part,
    so the parts spread over the workers, each building its own world. None
    for a test built per test."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return None
    shared = [
        name
        for name, defs in info.name2fixturedefs.items()
        if name != "backend" and defs and defs[-1].scope in ("module", "package", "class")
    ]
    if not shared:
        return None
    params = item.callspec.params if hasattr(item, "callspec") else {}
    parts = [item.module.__name__, params.get("backend", "")]  # type: ignore[attr-defined]
    if "shard" in params:
        parts.append(f"shard{params['shard']}")
    # No "[" or "]" in a group's name: xdist reads the group after the last "@"
    # only where no "]" follows it.
    return ":".join(parts)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    if any(metafunc.definition.get_closest_marker(name) is not None for name in ONE_RUN_MARKS):
        return
    # Module scope: module-scoped fixtures (a shared server, a world of
    # tenants) are made once per backend, and the tests run grouped by it.
    metafunc.parametrize("backend", ["sqlite", "postgres"], indirect=True, scope="module")


class _Postgres:
    """The session's PostgreSQL: reachable or not (why), its template database."""

    def __init__(self) -> None:
        self.checked = False
        self.error = ""
        self.template = ""
        self.tenants: set[str] = set()  # the schema's tables with a business_id column
        # Work for the background thread: ("drop", name) or ("spare",); None ends it.
        self.queued: queue.Queue[tuple[str, ...] | None] = queue.Queue()
        self.worker: threading.Thread | None = None
        self.spares: list[str] = []  # databases made ahead from the template
        self.lock = threading.Lock()

    def admin(self) -> Any:
        import psycopg

        return psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)

    def ensure(self) -> None:
        if self.checked:
            if self.error:
                self._skip()
            return
        self.checked = True
        try:
            import psycopg  # noqa: F401

            from flowtrack.store.pg.store import migrate

            self.template = f"ft_template_{os.getpid()}_{secrets.token_hex(3)}"
            with self.admin() as conn:
                conn.execute(f'CREATE DATABASE "{self.template}"')
            migrate(url_of(self.template))
            self.tenants = tenant_tables(url_of(self.template))
        except Exception as error:  # unreachable, no rights, no psycopg
            self.error = f"PostgreSQL at {POSTGRES_URL} not usable: {str(error).strip().splitlines()[0]}"
            self._skip()

    def _skip(self) -> None:
        if os.environ.get("FLOWTRACK_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{self.error} (FLOWTRACK_REQUIRE_POSTGRES=1)")
        pytest.skip(self.error)

    def create(self) -> str:
        """A new database from the template: the spare made while the
        previous test ran, if there is one (CREATE DATABASE copies the
        template: most of a second on a busy machine), then a spare for the
        next one is made on the background thread."""
        with self.lock:
            name = self.spares.pop() if self.spares else None
        if name is None:
            name = self._make()
        self._background("spare")
        return name

    def _make(self) -> str:
        name = f"ft_test_{secrets.token_hex(6)}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
            # Commits need not wait for the disk here: a flowtrack process
            # killed by a test loses nothing the server committed either way
            # (only a crash of the PostgreSQL server would).
            conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
        return name

    def drop(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def drop_later(self, name: str) -> None:
        """Drop `name` on the background thread, while the next test runs: a
        DROP DATABASE waits for a checkpoint of the whole server (seconds on
        a busy machine), which no test needs to wait for. `finish` waits for
        the work still queued."""
        self._background("drop", name)

    def _background(self, *work: str) -> None:
        if self.worker is None:
            self.worker = threading.Thread(target=self._work, name="ft-test-databases", daemon=True)
            self.worker.start()
        self.queued.put(work)

    def _work(self) -> None:
        while (work := self.queued.get()) is not None:
            try:
                if work[0] == "drop":
                    self.drop(work[1])
                elif not self.spares:
                    name = self._make()
                    with self.lock:
                        self.spares.append(name)
            except Exception as error:  # named in the output, not a failed test: the next create() makes its own
                print(f"test database {work}: {error}", file=sys.stderr)
            finally:
                self.queued.task_done()
        self.queued.task_done()

    def finish(self) -> None:
        if self.worker is not None:
            self.queued.put(None)
            self.queued.join()
            self.worker = None
        for name in self.spares:
            self.drop(name)
        self.spares.clear()


_POSTGRES = _Postgres()


class _SqliteTemplate:
    """A SQLite database migrated once per test process, copied into each
    test folder whose database a test asks for (`database_of`): what the
    server's start would make there (the schema at its newest revision, WAL
    mode), without running the migration history again for every test, as
    the PostgreSQL half does with its template. Tests of the migrations and
    of a fresh file's start (test_schema, test_startup, ...) use files of
    their own."""

    def __init__(self) -> None:
        self.path: Path | None = None

    def copy_to(self, target: Path) -> None:
        if self.path is None:
            import tempfile

            from flowtrack.store.base import open_store

            folder = Path(tempfile.mkdtemp(prefix="ft_sqlite_template_"))
            path = folder / "template.db"
            open_store(str(path)).close()
            conn = sqlite3.connect(path)
            try:
                with conn:  # each server makes its own keys (the token key, ...)
                    conn.execute("DELETE FROM server_settings")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file
            finally:
                conn.close()
            self.path = path
        shutil.copyfile(self.path, target)


_SQLITE_TEMPLATE = _SqliteTemplate()


def url_of(name: str) -> str:
    """POSTGRES_URL with its database replaced by `name`."""
    from urllib.parse import urlsplit

    return urlsplit(POSTGRES_URL)._replace(path=f"/{name}").geturl()


@pytest.fixture(scope="session", autouse=True)
def _drop_template() -> Iterator[None]:
    yield
    _POSTGRES.finish()
    if _POSTGRES.template and not _POSTGRES.error:
        _POSTGRES.drop(_POSTGRES.template)


STATEMENTS: set[str] = set()  # what the store ran on PostgreSQL this session (in this process)
_PLANTING = threading.Event()


@contextlib.contextmanager
def planting() -> Iterator[None]:
    """A test's own statements through the store's connections (planting
    data with the server's writer): not the store's, so not for the Citus check."""
    _PLANTING.set()
    try:
        yield
    finally:
        _PLANTING.clear()


@pytest.fixture(scope="session", autouse=True)
def _citus_check() -> Iterator[None]:
    """The Citus check (tests/citus.py) on every statement the store ran in
    the PostgreSQL half of the session: one on a tenant table that does not
    name the business (and is not ALLOWED with its reason) fails the session."""
    from flowtrack.store.pg import conn

    def seen(text: str) -> None:
        if CURRENT.postgres and not _PLANTING.is_set():
            STATEMENTS.add(text)

    conn.statement_observer = seen
    try:
        yield
    finally:
        conn.statement_observer = None
    if not STATEMENTS or not _POSTGRES.template or _POSTGRES.error:
        return
    problems = citus_problems(STATEMENTS)
    if problems:
        pytest.fail(
            "statements on tenant tables that do not name business_id (tests/citus.py):\n" + "\n".join(problems)
        )


def tenant_tables(url: str) -> set[str]:
    """The tables of the database at `url` with a business_id column."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.columns"
            " WHERE table_schema = 'public' AND column_name = 'business_id'"
        ).fetchall()
    return {str(name) for (name,) in rows}


def citus_problems(statements: set[str]) -> list[str]:
    from tests import citus

    tenants = _POSTGRES.tenants
    problems = []
    for sql in sorted(statements):
        if citus.allowed(sql) is not None:
            continue
        try:
            found = citus.unfiltered(sql, tenants)
        except Exception as error:  # sqlglot cannot read it: say so, it cannot pass unread
            found = [f"unparsed ({str(error).splitlines()[0][:100]})"]
        if found:
            problems.append(f"- {'; '.join(sorted(set(found)))}: {' '.join(sql.split())[:400]}")
    return problems


@dataclasses.dataclass
class Backend:
    """The backend of the running module's tests, and the databases it made:
    those of a test are dropped at its end, those made for module-scoped
    fixtures (set up before the test's own) at the module's end."""

    name: str = "sqlite"
    databases: dict[str, str] = dataclasses.field(default_factory=dict)  # folder -> database name
    test_databases: list[str] | None = None  # the running test's, while one runs

    @property
    def postgres(self) -> bool:
        return self.name == "postgres"

    def database(self, folder: Path) -> str:
        """The database of a test folder: its flowtrack.db file, or (on
        PostgreSQL) a database of its own, made on first use."""
        if not self.postgres:
            path = folder / "flowtrack.db"
            if not path.exists() and folder.is_dir():
                _SQLITE_TEMPLATE.copy_to(path)
            return str(path)
        key = str(folder)
        if key not in self.databases:
            self.databases[key] = _POSTGRES.create()
            if self.test_databases is not None:
                self.test_databases.append(key)
        return url_of(self.databases[key])

    def drop(self, keys: list[str]) -> None:
        for key in keys:
            name = self.databases.pop(key, None)
            if name is not None:
                _POSTGRES.drop_later(name)


CURRENT = Backend()


@pytest.fixture(scope="module", autouse=True)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """sqlite, or postgres for the second run of every test not marked to run once."""
    global CURRENT
    name = getattr(request, "param", "sqlite")
    if name == "postgres":
        _POSTGRES.ensure()
    CURRENT = Backend(name)
    try:
        yield CURRENT
    finally:
        made, CURRENT = CURRENT, Backend()
        made.drop(list(made.databases))


@pytest.fixture(autouse=True)
def _test_databases(backend: Backend) -> Iterator[None]:
    """Drop the databases the test made, at its end."""
    global CURRENT
    CURRENT = backend
    backend.test_databases = []
    try:
        yield
    finally:
        made, backend.test_databases = backend.test_databases, None
        backend.drop(made)


def database_of(folder: Path) -> str:
    """The database `start_server(folder)` uses in the running test."""
    return CURRENT.database(folder)


def connect_db(database: str | Path) -> Any:
    """A connection to a test's database for checks: sqlite3, or on
    PostgreSQL the store's DB-API adapter (autocommit: every statement sees
    what committed before it)."""
    database = str(database)
    if database.startswith("postgresql://"):
        from flowtrack.store.pg.conn import PgConnection

        checks = PgConnection.connect(database)
        checks.observed = False  # a test's own statements: not the Citus check's business
        return PgChecks(checks)
    return sqlite3.connect(database)


def checks(conn: Any) -> Any:
    """A store connection (a writer job's `tx.conn`, a reader's) for a
    test's own check queries written with `?` (PgChecks on PostgreSQL)."""
    if isinstance(conn, sqlite3.Connection | PgChecks):
        return conn
    return PgChecks(conn)


class PgChecks:
    """A test's own check queries on PostgreSQL, written once for both
    backends with SQLite's `?` placeholders: each becomes psycopg's `%s`
    (and a literal `%` is doubled). The tests' text only: the store runs
    SQLAlchemy's compiled statements (store/sql.py) and rewrites nothing."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @staticmethod
    def _text(sql: str, params: Any) -> str:
        return sql if params is None else sql.replace("%", "%%").replace("?", "%s")

    @contextlib.contextmanager
    def _unobserved(self) -> Iterator[None]:
        """The test's own statement, on a store connection (a writer job's
        `tx.conn`) too: not the store's, so not for the Citus check."""
        observed = getattr(self.conn, "observed", False)
        if observed:
            self.conn.observed = False
        try:
            yield
        finally:
            if observed:
                self.conn.observed = True

    def execute(self, sql: str, params: Any = None) -> Any:
        with self._unobserved():
            return self.conn.execute(self._text(sql, params), params)

    def executemany(self, sql: str, rows: Any) -> Any:
        with self._unobserved():
            return self.conn.executemany(self._text(sql, ()), rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)

    def __enter__(self) -> PgChecks:
        self.conn.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.__exit__(*exc)


def start_server(tmp_path: Path, **overrides: Any) -> ServerThread:
    # No background fill of the rows' stored encodings unless a test asks
    # (tests/test_encodings.py): tests count the writer's jobs and read the
    # rows as computed; the stored path has tests of its own.
    options: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "database": database_of(tmp_path),
        "grace": 0.5,
        "encode_rows": False,
    }
    if CURRENT.postgres:  # no file to put the reports folder beside
        options["reports_dir"] = str(tmp_path / "flowtrack.reports")
    settings = Settings(**{**options, **overrides})
    return ServerThread(settings)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ServerThread, Client]]:
    """A server whose delivery scheduler keeps out of the writer's queue: its
    rounds are writer jobs too, so it makes one at the start (waited for) and
    none for the test's length, and tests that count the writer's queue count
    only their own jobs."""
    server = start_server(tmp_path, scheduler_tick=3600.0)
    delivery = server.running.delivery
    assert delivery is not None
    deadline = time.monotonic() + 60
    while delivery.runner.ticks < 1:
        assert time.monotonic() < deadline, "the scheduler's first round did not come"
        time.sleep(0.02)
    client = make_client(server.address)
    yield server, client
    client.channel.close()
    server.stop()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    running = start_server(tmp_path)
    yield running
    running.stop()


@pytest.fixture
def client(server: ServerThread) -> Iterator[Client]:
    c = make_client(server.address)
    yield c
    c.channel.close()


@dataclasses.dataclass
class ErrorDetails:
    code: grpc.StatusCode
    message: str
    reason: str
    violations: dict[str, str]  # field -> description
    violation_reasons: dict[str, str]  # field -> reason


def error_details(error: grpc.RpcError) -> ErrorDetails:
    """The rich status of a failed call: code, ErrorInfo reason, BadRequest violations."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, f"no rich status on {error}"
    reason, violations, reasons = "", {}, {}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            for v in bad.field_violations:
                violations[v.field] = v.description
                reasons[v.field] = v.reason
    return ErrorDetails(error.code(), status.message, reason, violations, reasons)  # type: ignore[attr-defined]
