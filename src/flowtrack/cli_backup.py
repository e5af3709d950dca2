"""`flowtrack backup`: a consistent copy of a database, while its server serves."""

from __future__ import annotations

from pathlib import Path

import click

from flowtrack.config import Settings


@click.command()
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--database",
    envvar="FLOWTRACK_DATABASE",
    default=Settings.database,
    show_default=True,
    help="SQLite file of the server (FLOWTRACK_DATABASE).",
)
@click.option(
    "--check/--no-check",
    default=True,
    show_default=True,
    help="Run PRAGMA integrity_check on the copy before putting it in place.",
)
def backup(output: Path, database: str, check: bool) -> None:
    """Copy the database to OUTPUT, consistently, while the server runs.

    The copy is one snapshot (every event acknowledged before it started is
    in it), one self-contained file, checked, and appears only when complete
    (OUTPUT is replaced if it exists). To restore, see docs/operations.md
    ("Backup and restore").

    Example: flowtrack backup --database ./flowtrack.db ./flowtrack-backup.db
    """
    from flowtrack.client.connection import CliError
    from flowtrack.store.backup import backup as copy
    from flowtrack.store.base import is_postgres
    from flowtrack.store.db import StorageError

    if is_postgres(database):
        raise CliError(
            "flowtrack backup copies SQLite files; back a PostgreSQL database up with pg_dump (docs/operations.md)"
        )
    try:
        copied = copy(Path(database), output, check=check)
    except StorageError as error:
        raise CliError(str(error)) from error
    checked = ", integrity_check ok" if copied.checked else ""
    click.echo(f"backed up {database} to {output}: {copied.bytes:,} bytes, {copied.events:,} events{checked}", err=True)
