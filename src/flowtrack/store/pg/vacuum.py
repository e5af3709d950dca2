"""After an erasure on PostgreSQL: VACUUM the tables it rewrote.

An UPDATE writes a new version of a row and leaves the old one in its page,
dead, until VACUUM. Measured on PostgreSQL 15 with pageinspect's
get_raw_page (tests/test_privacy.py): after the erasure's UPDATEs every old
version of the recipient's rows is still in the heap, and its index entries
in the indexes; a plain VACUUM removes the dead versions and index entries
(no query, index scan or backup taken afterwards reaches them), but leaves
their bytes in the free space of the pages it compacted, until later writes
reuse that space. Only a rewrite of the table (VACUUM FULL, CLUSTER,
pg_repack) drops those bytes at once; it locks the table, so flowtrack does
not do it (docs/security.md). The WAL written before and backups keep the
old values until they expire.

VACUUM cannot run inside a transaction: a connection of its own, in autocommit.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

# The tables an erasure rewrites (store/privacy.py).
TABLES = ("messages", "events", "engagement", "replies", "button_clicks", "link_clickers", "report_runs")


def vacuum(url: str, tables: tuple[str, ...] = TABLES) -> None:
    """Plain VACUUM of `tables` (it takes no lock that stops reads or writes)."""
    with psycopg.connect(url, autocommit=True, application_name="flowtrack-erasure") as conn:
        conn.execute(sql.SQL("VACUUM {}").format(sql.SQL(", ").join(sql.Identifier(t) for t in tables)))
