"""Builds the gRPC server: services, reflection, health, graceful stop.

`create_server(settings)` is shared by `flowtrack serve` and the tests: it
opens the store, registers every service, binds the address (port 0 picks a
free port) and returns the server with the port it got.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from flowtrack.api.auth import Limiter, is_loopback
from flowtrack.api.gate import Drain, Gate
from flowtrack.api.reflection import add_reflection
from flowtrack.config import Settings, check_address, check_listen, database_scheme
from flowtrack.core.auth import Authenticator, StreamQuota
from flowtrack.delivery import setup as delivery_setup
from flowtrack.metrics import Metrics
from flowtrack.store import owner as ownership
from flowtrack.store.base import Store, compile_ahead, is_postgres, open_store
from flowtrack.store.db import StorageError, check_storage
from flowtrack.v1 import (
    campaign_pb2,
    campaign_pb2_grpc,
    delivery_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    privacy_pb2,
    privacy_pb2_grpc,
    report_pb2,
    retention_pb2,
    retention_pb2_grpc,
    settings_pb2,
    settings_pb2_grpc,
)

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from flowtrack.core.campaigns import Campaigns
    from flowtrack.core.reports import Reports
    from flowtrack.web.listener import HttpListener

log = logging.getLogger("flowtrack")

SERVICE_NAMES = (
    campaign_pb2.DESCRIPTOR.services_by_name["CampaignService"].full_name,
    ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name,
    report_pb2.DESCRIPTOR.services_by_name["ReportService"].full_name,
    settings_pb2.DESCRIPTOR.services_by_name["SettingsService"].full_name,
    retention_pb2.DESCRIPTOR.services_by_name["RetentionService"].full_name,
    privacy_pb2.DESCRIPTOR.services_by_name["PrivacyService"].full_name,
)


class StartupError(Exception):
    """A problem that stops the server from starting, said in one line."""


@dataclass
class Running:
    server: grpc.aio.Server
    port: int
    store: Store
    health: health_aio.HealthServicer
    settings: Settings
    authenticator: Authenticator
    drain: Drain
    # The lock that makes this process the database's only server (store/owner.py).
    owner: ownership.Owner | None = None
    # The HTTP listener (--http) and the metrics it serves; None when off.
    http: HttpListener | None = None
    metrics: Metrics | None = None
    http_authenticator: Authenticator | None = None
    # Webhooks, report runs and quiet campaigns (delivery/setup.py).
    delivery: delivery_setup.Delivery | None = None

    async def stop(self, grace: float | None = None) -> None:
        """Drain: health NOT_SERVING, end endless streams (gRPC and the page's
        live streams) and stop reading ingest streams (see Drain), refuse new
        RPCs and HTTP connections, let in-flight ones finish within `grace`
        seconds, then commit what is queued and close the store."""
        await self.health.enter_graceful_shutdown()
        await asyncio.sleep(0.05)  # let health watchers send NOT_SERVING before their stream ends
        self.drain.start()
        grace = self.settings.grace if grace is None else grace
        stopping = [self.server.stop(grace)]
        if self.http is not None:
            stopping.append(self.http.stop(grace))
        await asyncio.gather(*stopping)
        if self.delivery is not None:
            await self.delivery.stop()
        await self.authenticator.close()
        if self.http_authenticator is not None:
            await self.http_authenticator.close()
        await asyncio.to_thread(self.store.close)
        if self.owner is not None:
            self.owner.release()


async def create_server(settings: Settings, *, http_routes: Sequence[BaseRoute] = ()) -> Running:
    """Open the store, build and start the gRPC server (and, with
    `settings.http`, the HTTP listener, where `http_routes` are mounted
    before flowtrack's own: see web/app.py).

    What can be refused without touching the disk is refused first (the
    addresses, the database's scheme, the TLS files). A start that fails
    later stops what it started and removes what it created (Startup.undo):
    a new database with its -wal/-shm files, its new `.owner` sidecar, a new
    empty reports folder; nothing that existed before."""
    check_settings(settings)
    try:
        credentials = server_credentials(settings)
    except (OSError, ValueError) as error:
        raise StartupError(str(error)) from error
    startup = Startup()
    try:
        return await _start(settings, credentials, http_routes, startup)
    except BaseException:
        await startup.undo()
        raise


def check_settings(settings: Settings) -> None:
    """Refuse, in one line, what is wrong before anything is created: a
    listen address that is not HOST:PORT or whose port is out of range, the
    same for --http, and a database URL of a scheme flowtrack does not speak."""
    try:
        check_listen(settings.listen)
        if settings.http:
            check_address(settings.http, "--http")
    except ValueError as error:
        raise StartupError(str(error)) from None
    scheme = database_scheme(settings.database)
    if scheme is not None and not is_postgres(settings.database):
        raise StartupError(
            f"cannot open database {scheme}://...: unsupported scheme {scheme!r} "
            "(--database takes a SQLite file path or a postgresql://USER@HOST:PORT/DB URL)"
        )


@dataclass
class Startup:
    """What a start-up has opened, started and created so far, for `undo`."""

    owner: ownership.Owner | None = None
    new_files: list[Path] = field(default_factory=list)  # a new database and its -wal, -shm, -journal
    new_folder: Path | None = None  # the reports folder, when this start creates it
    store: Store | None = None
    delivery: delivery_setup.Delivery | None = None
    server: grpc.aio.Server | None = None
    http: HttpListener | None = None
    authenticators: list[Authenticator] = field(default_factory=list)

    async def undo(self) -> None:
        """Stop and close what was started, in reverse order, then remove
        what this start created (the database files while the lock is still
        held, the `.owner` sidecar last). Never raises."""
        with contextlib.suppress(Exception):
            if self.http is not None:
                await self.http.stop(0)
        with contextlib.suppress(Exception):
            if self.server is not None:
                await self.server.stop(0)
        with contextlib.suppress(Exception):
            if self.delivery is not None:
                await self.delivery.stop()
        for authenticator in self.authenticators:
            with contextlib.suppress(Exception):
                await authenticator.close()
        with contextlib.suppress(Exception):
            if self.store is not None:
                await asyncio.to_thread(self.store.close)
        for path in self.new_files:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        if self.new_folder is not None:
            with contextlib.suppress(OSError):  # only if still empty: nothing but ours is removed
                self.new_folder.rmdir()
        if self.owner is not None:
            if self.owner.created:
                self.owner.remove()
            else:
                self.owner.release()


async def _start(
    settings: Settings,
    credentials: grpc.ServerCredentials | None,
    http_routes: Sequence[BaseRoute],
    startup: Startup,
) -> Running:
    store = _open_store(settings, startup)
    authenticator = Authenticator(
        store, loopback=is_loopback(settings.listen), cache_seconds=settings.key_cache_seconds
    )
    startup.authenticators.append(authenticator)
    limiter = Limiter(settings.max_concurrent_rpcs, settings.max_concurrent_health_rpcs)
    # Metrics are collected only when the HTTP listener can serve them.
    metrics = Metrics() if settings.http else None
    streams = StreamQuota(settings.max_streams_per_key)
    gate = Gate(authenticator, limiter, metrics, streams)
    server = startup.server = grpc.aio.server(
        interceptors=[gate],
        options=server_options(settings),
        maximum_concurrent_rpcs=grpc_concurrency_cap(settings),
    )
    services = await _add_services(server, store, settings, metrics, startup)
    port = _bind(server, settings, credentials, startup)
    http, http_authenticator = None, None
    if settings.http and metrics is not None:
        http, http_authenticator = _http_listener(
            settings, store, services, metrics, gate, streams, credentials, http_routes, startup
        )
    mode = await authenticator.start()
    await server.start()
    delivery = services.delivery
    if http is not None and http_authenticator is not None:
        await http_authenticator.start()
        try:
            await http.start()
        except OSError as error:
            raise StartupError(str(error)) from error
        log.info("HTTP listener on %s (campaign page at /, metrics at /metrics)", http.url)
        delivery.listening(http.url)
    delivery.begin()
    for name in (*SERVICE_NAMES, *delivery_setup.SERVICE_NAMES, ""):
        await services.health.set(name, health_pb2.HealthCheckResponse.SERVING)
    follow_storage_health(store, services.health)
    (log.warning if authenticator.open_mode else log.info)("%s", mode)
    if credentials is None and not authenticator.loopback:
        log.warning("listening on %s without TLS: API keys and data cross the network in clear", settings.listen)
    return Running(
        server,
        port,
        store,
        services.health,
        settings,
        authenticator,
        gate.drain,
        startup.owner,
        http=http,
        metrics=metrics,
        http_authenticator=http_authenticator,
        delivery=delivery,
    )


def _open_store(settings: Settings, startup: Startup) -> Store:
    """The store, opened. What can be known before opening comes first: the
    folder, the file, free disk; then the ownership lock, before the write
    connection exists. A PostgreSQL database has neither: any number of
    replicas share it (store/pg/)."""
    if not is_postgres(settings.database):
        database = Path(settings.database)
        try:
            check_storage(database, min_free_bytes=settings.min_free_bytes)
            startup.owner = ownership.acquire(settings.database, settings.listen)
        except ownership.DatabaseOwned as error:
            raise StartupError(str(error)) from error
        except StorageError as error:
            raise StartupError(str(error)) from error
        except OSError as error:
            raise StartupError(f"cannot open database {settings.database}: {error}") from error
        if not database.exists():  # looked at under the lock: no other server creates it now
            files = (Path(f"{database}{suffix}") for suffix in ("", "-wal", "-shm", "-journal"))
            startup.new_files = [path for path in files if not path.exists()]
    try:
        store = startup.store = open_store(
            settings.database,
            durability=settings.durability,
            max_commit_rows=settings.max_commit_rows,
            read_time_limit=settings.read_time_limit,
            max_queued_rows=settings.max_queued_rows,
            readers=settings.readers,
            max_snapshots=settings.max_report_streams,
        )
    except StorageError as error:
        raise StartupError(str(error)) from error
    except (OSError, Exception) as error:  # sqlite3.Error and psycopg.Error included
        raise StartupError(f"cannot open database {_shown(settings.database)}: {error}") from error
    compile_ahead(settings.database)
    return store


@dataclass
class _Services:
    """What the HTTP face and the start-up's last steps need of the services."""

    campaigns: Campaigns
    reports: Reports
    delivery: delivery_setup.Delivery
    health: health_aio.HealthServicer


async def _add_services(
    server: grpc.aio.Server, store: Store, settings: Settings, metrics: Metrics | None, startup: Startup
) -> _Services:
    """Every gRPC service on `server`, with delivery (webhooks, report runs,
    quiet campaigns) started: health and reflection included."""
    # Imported here so that a servicer module may import server-level names.
    from flowtrack.api.campaigns import CampaignServicer
    from flowtrack.api.ingest import IngestServicer
    from flowtrack.api.privacy import PrivacyServicer
    from flowtrack.api.reports import ReportServicer
    from flowtrack.api.reports import add_to_server as add_reports_to_server
    from flowtrack.api.retention import RetentionServicer
    from flowtrack.api.schedules import ScheduleServicer
    from flowtrack.api.settings import SettingsServicer
    from flowtrack.api.webhooks import WebhookServicer
    from flowtrack.core.retention import RetentionCore
    from flowtrack.core.settings import Settings as SettingsCore

    completion_hook = delivery_setup.install_hook(store, settings)
    folder = delivery_setup.reports_dir(settings)
    campaigns = CampaignServicer(store, settings, reports_dir=folder)
    ingest = IngestServicer(store, settings)
    reports = ReportServicer(store, settings)
    if metrics is not None:
        ingest.count_events = metrics.count_events
        store.writer.observe_commit = metrics.observe_commit
        metrics.watch_store(store.path, lambda: store.writer.queued_rows, lambda: store.listening)
    campaign_pb2_grpc.add_CampaignServiceServicer_to_server(campaigns, server)
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(ingest, server)
    add_reports_to_server(reports, server)
    business_settings = SettingsCore(store)
    settings_pb2_grpc.add_SettingsServiceServicer_to_server(
        SettingsServicer(store, settings, business_settings), server
    )
    retention = RetentionCore(store, reports_dir=folder, on_pruned=None if metrics is None else metrics.count_pruned)
    retention_pb2_grpc.add_RetentionServiceServicer_to_server(RetentionServicer(store, settings, retention), server)
    privacy_pb2_grpc.add_PrivacyServiceServicer_to_server(PrivacyServicer(store, settings, reports_dir=folder), server)
    if not folder.exists():
        startup.new_folder = folder
    try:
        delivery = startup.delivery = await delivery_setup.start(
            store, settings, reports.core, completion_hook, retention, business_settings
        )
    except OSError as error:
        raise StartupError(str(error)) from error
    delivery_pb2_grpc.add_WebhookServiceServicer_to_server(
        WebhookServicer(store, settings, delivery.worker.wake), server
    )
    delivery_pb2_grpc.add_ReportScheduleServiceServicer_to_server(
        ScheduleServicer(store, settings, delivery.runner.signed_url, delivery.folder), server
    )
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    add_reflection((*SERVICE_NAMES, *delivery_setup.SERVICE_NAMES, health.SERVICE_NAME), server)
    return _Services(campaigns.core, reports.core, delivery, health_servicer)


def _bind(
    server: grpc.aio.Server, settings: Settings, credentials: grpc.ServerCredentials | None, startup: Startup
) -> int:
    """Bind the gRPC address; the port it got (port 0 picks one), recorded
    in the ownership sidecar."""
    port: int
    try:
        if credentials is None:
            port = server.add_insecure_port(settings.listen)
        else:
            port = server.add_secure_port(settings.listen, credentials)
    except RuntimeError:  # grpc >= 1.5x: "Failed to bind to address"
        port = 0
    if port == 0:
        raise StartupError(f"cannot listen on {settings.listen} (gRPC): {bind_problem(settings.listen)}")
    host, _, bound = settings.listen.rpartition(":")
    if startup.owner is not None:
        startup.owner.record(f"{host}:{port}" if bound.isdigit() else settings.listen)  # port 0 -> the one it got
    return port


def _http_listener(
    settings: Settings,
    store: Store,
    services: _Services,
    metrics: Metrics,
    gate: Gate,
    streams: StreamQuota,
    credentials: grpc.ServerCredentials | None,
    http_routes: Sequence[BaseRoute],
    startup: Startup,
) -> tuple[HttpListener | None, Authenticator | None]:
    """The HTTP listener (--http) and its authenticator, bound, not started;
    (None, None) when the default address is taken (said once)."""
    from flowtrack.core.schedules import Schedules
    from flowtrack.web.access import Access, Sessions
    from flowtrack.web.app import build_app
    from flowtrack.web.downloads import routes as download_routes
    from flowtrack.web.listener import BindError, HttpListener
    from flowtrack.web.state import WebState

    assert settings.http is not None  # called only with --http
    # Open mode over HTTP only where it holds over gRPC: no keys, and both listeners on loopback.
    authenticator = Authenticator(
        store,
        loopback=is_loopback(settings.listen) and is_loopback(settings.http),
        cache_seconds=settings.key_cache_seconds,
    )
    state = WebState(
        store=store,
        settings=settings,
        access=Access(store, authenticator, Sessions.for_store(store, settings.http_session_seconds)),
        campaigns=services.campaigns,
        reports=services.reports,
        metrics=metrics,
        stopping=gate.drain.stopping,
        tls=credentials is not None,
        streams=streams,
    )
    delivery = services.delivery
    try:
        http = startup.http = HttpListener(
            build_app(state, (*http_routes, *download_routes(Schedules(store, delivery.folder), delivery.link_key))),
            settings,
        )
    except BindError as error:
        if not settings.http_fallback:
            raise StartupError(str(error)) from error
        # The default address is taken (another server on this machine): no page, said once.
        log.warning("no campaign page: %s; give it another with --http HOST:PORT (--http off: none)", error)
        return None, None
    except (OSError, ValueError) as error:
        raise StartupError(str(error)) from error
    startup.authenticators.append(authenticator)
    return http, authenticator


def bind_problem(address: str) -> str:
    """Why gRPC could not bind `address` (it only says "Failed to bind"), as
    the operating system says it to a plain socket bound the same way:
    "Address already in use", "Cannot assign requested address"..."""
    try:
        host, port = check_address(address.removeprefix("ipv4:").removeprefix("ipv6:"), "--listen")
        found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (ValueError, OSError) as error:
        return f"address not available ({error})"
    for family, kind, proto, _, address_tuple in found:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address_tuple)
            except OSError as error:
                return error.strerror or str(error)
    return "address not available"


def _shown(database: str) -> str:
    """The database as a log line may show it: a URL without its password."""
    if not is_postgres(database):
        return database
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(database)
    except Exception:
        return "postgresql://..."
    user, host, port, name = (parts.get(k, "") for k in ("user", "host", "port", "dbname"))
    return f"postgresql://{user}@{host}:{port}/{name}"


REPORT_SERVICE = SERVICE_NAMES[2]


def follow_storage_health(store: Store, health_servicer: health_aio.HealthServicer) -> None:
    """Health NOT_SERVING while a storage fault stops every write (full disk,
    read-only, I/O error, another process's lock), SERVING once writes work
    again (the writer probes; see store/writer.py). On PostgreSQL the report
    service is also NOT_SERVING while the replica's LISTEN connection is down
    (its watchers and subscribers would not see other replicas' commits;
    store/pg/store.py Listener reconnects with backoff)."""
    loop = asyncio.get_running_loop()

    async def set_all() -> None:
        # The state now, not the one that scheduled this: changes in a quick
        # succession still end on the latest.
        serving = store.writer.healthy
        listening = store.listening
        for name in (*SERVICE_NAMES, *delivery_setup.SERVICE_NAMES, ""):
            up = serving and (listening or name != REPORT_SERVICE)
            status = health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING
            await health_servicer.set(name, status)

    def changed(*_args: object) -> None:  # in the writer's or the LISTEN thread
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is gone
            asyncio.run_coroutine_threadsafe(set_all(), loop)

    store.writer.on_health(changed)
    store.on_listening(changed)
    if not store.writer.healthy or not store.listening:
        changed()


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """Channel arguments of the server: message size and keepalive enforcement."""

    def ms(seconds: float) -> int:
        return int(seconds * 1000)

    options = [
        ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.so_reuseport", 0),
        # The server's own pings: find dead peers of idle connections.
        ("grpc.keepalive_time_ms", ms(settings.keepalive_time)),
        ("grpc.keepalive_timeout_ms", ms(settings.keepalive_timeout)),
        # Client pings: allowed without calls in flight, but no more often than
        # min_ping_interval; after max_ping_strikes bad pings, GOAWAY.
        ("grpc.keepalive_permit_without_calls", 1),
        # (GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS)
        ("grpc.http2.min_ping_interval_without_data_ms", ms(settings.min_ping_interval)),
        ("grpc.http2.max_ping_strikes", 2),
    ]
    if settings.max_connection_idle > 0:
        options.append(("grpc.max_connection_idle_ms", ms(settings.max_connection_idle)))
    if settings.max_connection_age > 0:
        options.append(("grpc.max_connection_age_ms", ms(settings.max_connection_age)))
        options.append(("grpc.max_connection_age_grace_ms", ms(settings.grace)))
    return options


def grpc_concurrency_cap(settings: Settings) -> int | None:
    """grpc's own cap on running RPCs, a backstop above flowtrack's two pools.

    grpc.aio counts every RPC, health checks included, and refuses the ones
    over its cap after the interceptors ran. The interceptor's pools keep
    flowtrack RPCs under max_concurrent_rpcs and health/reflection under
    max_concurrent_health_rpcs, so this cap (their sum plus room for calls
    being refused) is only reached by calls that are being turned away."""
    if not settings.max_concurrent_rpcs:
        return None
    return settings.max_concurrent_rpcs + settings.max_concurrent_health_rpcs + 100


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from the PEM files of the settings (None: plaintext).
    With tls_client_ca, clients must present a certificate signed by it."""
    if not settings.tls_cert and not settings.tls_key:
        if settings.tls_client_ca:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (settings.tls_cert and settings.tls_key):
        raise ValueError("TLS needs both --tls-cert and --tls-key")

    def read(path: str, what: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as error:
            raise OSError(f"cannot read {what} {path}: {error.strerror or error}") from error

    cert = read(settings.tls_cert, "TLS certificate")
    key = read(settings.tls_key, "TLS key")
    client_ca = read(settings.tls_client_ca, "TLS client CA") if settings.tls_client_ca else None
    for name, data in (("certificate", cert), ("key", key), ("client CA", client_ca)):
        if data is not None and b"-----BEGIN" not in data:
            raise ValueError(f"TLS {name} file is not PEM")
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


async def serve(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM, then stop gracefully."""
    running = await create_server(settings)
    # What start-up made (modules, the schema, compiled statements: about
    # 100,000 objects) lives as long as the process: moved out of the
    # collector's reach, it is not walked again by every full collection
    # the traffic triggers.
    gc.collect()
    gc.freeze()
    # Before the line that says it is serving: a supervisor (or a test) that
    # reads that line and stops the server at once gets a graceful stop, not
    # SIGTERM's default death.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    host = settings.listen.rsplit(":", 1)[0]
    log.info(
        "flowtrack serving on %s:%d, database %s (%s)%s",
        host,
        running.port,
        _shown(settings.database),
        # --durability is SQLite's: PostgreSQL's own settings decide there
        "durability: the database server's synchronous_commit"
        if is_postgres(settings.database)
        else f"durability {settings.durability}",
        f"; campaign page at {running.http.url}/" if running.http is not None else "",
    )
    if settings.smtp is not None:
        log.info(
            "email endpoints go through %s (STARTTLS %s), from %s",
            settings.smtp.shown(),
            "n/a: TLS from the start" if settings.smtp.scheme == "smtps" else settings.smtp.starttls,
            settings.smtp.sender,
        )
    await stop.wait()
    log.info("stopping: draining for up to %.1f s", settings.grace)
    await running.stop()
    log.info("stopped")
