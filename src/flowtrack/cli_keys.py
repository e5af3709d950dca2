"""`flowtrack keys`: create, list and revoke API keys, on the database file.

These commands work on the SQLite file directly, on their own connection
(the server may be running: SQLite serialises the writes, each waits up to
10 s for the lock, and migrations are applied once even when both start
together). A running server sees a new key at once and a revocation within
its key cache time (`--key-cache-seconds`, default 5 s). A database file that
does not exist is an error (a typo in --database would otherwise make a new,
empty database); `keys create --create-database` makes it.

With `--database postgresql://...` they work on that PostgreSQL database
(migrated first if needed), beside any number of running replicas.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from flowtrack.cli_options import database_option
from flowtrack.domain import errors
from flowtrack.domain.keys import KeyRecord, check_business, check_name, format_scopes, key_id_of, parse_scopes
from flowtrack.domain.times import iso, now_us

# flowtrack.store is imported inside the commands: it pulls in the store's
# drivers, which would slow down every other `flowtrack` command.


@contextmanager
def _open_postgres(url: str) -> Iterator[Any]:
    """The PostgreSQL database at `url`, migrated, through the store's adapter."""
    import psycopg

    from flowtrack.store.pg.conn import PgConnection
    from flowtrack.store.pg.store import migrate

    try:
        migrate(url)
        conn = PgConnection.connect(url, application_name="flowtrack-keys")
    except psycopg.Error as error:
        raise click.ClickException(f"cannot open database {url.split('@')[-1]}: {error}") from error
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def _open(path: str, *, create: bool | None = False) -> Iterator[Any]:
    from flowtrack.store import db
    from flowtrack.store.base import is_postgres

    if is_postgres(path):
        with _open_postgres(path) as conn:
            yield conn
        return
    if not create and not Path(path).is_file():
        raise click.ClickException(
            f"no database at {path}: pass --database (or set FLOWTRACK_DATABASE) to the server's file"
            + (", or --create-database to make a new one" if create is None else "")
        )
    try:
        conn = db.open_database(path)
    except db.StorageError as error:
        raise click.ClickException(str(error)) from error
    except (OSError, sqlite3.Error) as error:
        raise click.ClickException(f"cannot open database {path}: {error}") from error
    try:
        yield conn
    finally:
        conn.close()


def _write(conn: Any, job: Callable[[], Any]) -> Any:
    """Run `job` in one write transaction; a SQLite failure (the lock still
    held after the 10 s busy timeout, a full disk...) is one line, and nothing
    of the job is kept."""
    from flowtrack.store import db

    if not isinstance(conn, sqlite3.Connection):  # PostgreSQL
        import psycopg

        try:
            conn.execute("BEGIN")
            try:
                result = job()
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except psycopg.Error as error:
            raise click.ClickException(f"cannot write the database: {error}") from error
        return result
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = job()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as error:
        raise click.ClickException(f"cannot write the database: {db.explain(error)}") from error
    return result


def _status(record: KeyRecord) -> str:
    return f"revoked {iso(record.revoked_at)}" if record.revoked_at is not None else "active"


@click.group()
def keys() -> None:
    """Manage API keys: each key belongs to one business and has scopes.

    Scopes: ingest (IngestService), read (ReportService, GetCampaign,
    ListCampaigns), admin (everything, including campaign changes).

    Example: flowtrack keys create --business acme --scope ingest --name engine-1
    """


@keys.command()
@click.option("--business", required=True, help="The business (tenant) the key acts for.")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    help="ingest, read or admin; repeat for several (admin implies all).",
)
@click.option("--name", default="", help="A label to recognise the key by, e.g. where it is used.")
@click.option(
    "--create-database",
    is_flag=True,
    help="Make the database file (with its schema) if it does not exist; else a missing file is an error.",
)
@database_option
def create(business: str, scopes: tuple[str, ...], name: str, create_database: bool, database: str) -> None:
    """Create a key and print it, once: it is stored hashed and cannot be shown again.

    The key goes to standard output alone, so it can be captured; the details
    go to standard error.

    Example: KEY=$(flowtrack keys create --business acme --scope ingest --scope read --name engine-1)
    """
    try:
        business = check_business(business)
        allowed = parse_scopes(scopes)
        name = check_name(name)
    except errors.InvalidArgument as error:
        raise click.UsageError(error.message) from error
    from flowtrack.store import keys as stored

    # None: refused when missing, with a hint about --create-database.
    with _open(database, create=True if create_database else None) as conn:
        new, record = _write(conn, lambda: stored.create(conn, business, allowed, name, now_us()))
    click.echo(new.token)
    click.echo(
        f"created key {record.key_id} for business {business!r} with scopes {format_scopes(allowed)}; "
        "this is the only time it is shown",
        err=True,
    )


@keys.command("list")
@click.option("--business", default=None, help="Only the keys of this business.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
@database_option
def list_(business: str | None, as_json: bool, database: str) -> None:
    """List keys (never their secrets): id, business, scopes, name, times, status.

    Example: flowtrack keys list --business acme
    """
    from flowtrack.store import keys as stored

    with _open(database) as conn:
        records = stored.list_keys(conn, business)
    if as_json:
        for r in records:
            # lowerCamelCase, as every --json of the CLI (proto3 JSON's names)
            entry = {
                "keyId": r.key_id,
                "business": r.business_id,
                "scopes": sorted(s.value for s in r.scopes),
                "name": r.name,
                "createdAt": iso(r.created_at),
                "lastUsedAt": iso(r.last_used_at),
                "revokedAt": iso(r.revoked_at),
            }
            click.echo(json.dumps(entry))
        return
    header = ("KEY_ID", "BUSINESS", "SCOPES", "NAME", "CREATED", "LAST_USED", "STATUS")
    rows = [
        (
            r.key_id,
            r.business_id,
            format_scopes(r.scopes),
            r.name,
            iso(r.created_at),
            iso(r.last_used_at) or "-",
            _status(r),
        )
        for r in records
    ]
    table = [header, *rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    if not rows:
        click.echo("(no keys: a server on a loopback address runs in open mode)", err=True)


@keys.command()
@click.argument("key_id")
@database_option
def revoke(key_id: str, database: str) -> None:
    """Revoke a key: new calls with it are refused (UNAUTHENTICATED) within the
    server's key cache time (--key-cache-seconds, default 5 s).

    KEY_ID is the id shown by `keys list` (the full key is accepted too).

    Example: flowtrack keys revoke 3f9a0c12be47
    """
    from flowtrack.store import keys as stored

    key_id = key_id_of(key_id) or key_id
    with _open(database) as conn:
        record = _write(conn, lambda: stored.revoke(conn, key_id, now_us()))
    if record is None:
        raise click.ClickException(f"no key {key_id!r}")
    click.echo(f"key {record.key_id} of business {record.business_id!r}: {_status(record)}")
