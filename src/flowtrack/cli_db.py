"""`flowtrack db`: the database's schema revision, and bringing it to this
release's (what a server does by itself at start-up; store/upgrade.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from flowtrack.cli_options import database_option


@click.group()
def db() -> None:
    """The database's schema: which revision it is at, and upgrading it.

    A server upgrades its database by itself when it starts; these commands
    do it beforehand (e.g. in a deployment step) or say where it stands.

    Example: flowtrack db upgrade --database postgresql://flowtrack@db-1/flowtrack
    """


@contextmanager
def _engine(database: str) -> Iterator[Any]:
    """An engine over the database, its errors as one line each."""
    import sqlalchemy.exc

    from flowtrack.client.connection import CliError
    from flowtrack.store import db as sdb
    from flowtrack.store import upgrade
    from flowtrack.store.base import is_postgres

    where = database.split("@")[-1] if is_postgres(database) else database
    try:
        if is_postgres(database):
            engine = upgrade.postgres_engine(database)
        else:
            if not Path(database).is_file():
                raise CliError(
                    f"no database at {database}: pass --database (or set FLOWTRACK_DATABASE) to the server's file"
                )
            sdb.check_storage(Path(database))
            engine = upgrade.sqlite_engine(sdb.connect(database))
        yield engine
    except sdb.StorageError as error:
        raise CliError(str(error)) from error
    except sqlalchemy.exc.DBAPIError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig is not None else str(error)
        raise CliError(f"cannot open database {where}: {reason}") from error
    except Exception as error:
        if type(error).__module__.startswith(("sqlite3", "psycopg")):
            raise CliError(f"cannot open database {where}: {error}") from error
        raise


@db.command()
@database_option
def upgrade(database: str) -> None:
    """Bring the database to this release's schema revision.

    A database of the previous release (its `schema_migrations` table) is
    adopted: the legacy steps it lacks, then the baseline revision. All of
    it is one transaction, under the lock servers take (SQLite: a write
    transaction; PostgreSQL: an advisory lock), so it is safe beside
    running servers.

    Example: flowtrack db upgrade --database ./flowtrack.db
    """
    from flowtrack.store import upgrade as schema_upgrade

    with _engine(database) as engine:
        applied = schema_upgrade.upgrade(engine)
        now = schema_upgrade.current(engine)
    if applied:
        click.echo(f"applied {', '.join(applied)}; the database is at revision {now}")
    else:
        click.echo(f"the database is already at revision {now}, the newest")


@db.command()
@database_option
def current(database: str) -> None:
    """Print the database's schema revision ('none': a new database, or one
    of the previous release that `flowtrack db upgrade` adopts).

    Example: flowtrack db current --database ./flowtrack.db
    """
    from flowtrack.store import upgrade as schema_upgrade

    with _engine(database) as engine:
        now = schema_upgrade.current(engine)
    newest = schema_upgrade.head()
    if now is None:
        click.echo("none")
    elif now != newest:
        click.echo(f"{now} (the newest is {newest}: `flowtrack db upgrade`)")
    else:
        click.echo(now)


@db.command()
@database_option
@click.option("--rebuild", is_flag=True, help="Forget every stored encoding first, then encode every row.")
def encode(database: str, rebuild: bool) -> None:
    """Fill the message rows' stored encodings (what the message report and
    its CSV export serve; docs/performance.md). A server fills them by itself
    in the background when its writer is idle; this does it at once (e.g.
    after `flowtrack db upgrade` to revision 0011, before traffic).
    `--rebuild` forgets them all first.

    Example: flowtrack db encode --database /var/lib/flowtrack/flowtrack.db
    """
    import asyncio

    from flowtrack.core.encodings import Filler
    from flowtrack.store import encodings
    from flowtrack.store.base import open_store
    from flowtrack.wire.encoded import message_row

    with _engine(database) as engine:
        engine.dispose()  # the database opens and is at this release's revision (checked below by the store)

    async def run() -> tuple[int, int]:
        store = open_store(database)
        try:
            forgotten = await store.write(encodings.forget_all(), admitted=True) if rebuild else 0
            return forgotten, await Filler(store, message_row).fill_all()
        finally:
            store.close()

    forgotten, filled = asyncio.run(run())
    if rebuild:
        click.echo(f"forgot {forgotten} stored encodings")
    click.echo(f"encoded {filled} message rows")
