"""store/sql.py: statements written once as SQLAlchemy Core constructs, run
on the store's own connections of both backends (a real SQLite file, a real
PostgreSQL database)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, Text, bindparam, func, select, tuple_, update
from sqlalchemy.schema import CreateTable

from flowtrack.domain.errors import InvalidArgument
from flowtrack.store import sql
from tests.conftest import CURRENT, connect_db, database_of

metadata = MetaData()
things = Table(
    "ft_sql_things",
    metadata,
    Column("business_id", Text, primary_key=True),
    Column("thing", Text, primary_key=True),
    Column("status", Integer, nullable=False),
    Column("note", Text),
)

SUCCESS, FAILED = 5, 2  # stand-ins for domain constants: bound by the statement itself

_INSERT = sql.insert_on_both(
    lambda insert: (
        insert(things)
        .values(
            business_id=bindparam("business_id"),
            thing=bindparam("thing"),
            status=bindparam("status"),
            note=bindparam("note"),
        )
        .on_conflict_do_nothing()
    )
)
_UPSERT = sql.insert_on_both(
    lambda insert: (
        lambda stmt: stmt.on_conflict_do_update(
            index_elements=[things.c.business_id, things.c.thing], set_={"note": stmt.excluded.note}
        )
    )(
        insert(things).values(
            business_id=bindparam("business_id"),
            thing=bindparam("thing"),
            status=bindparam("status"),
            note=bindparam("note"),
        )
    )
)
_SUCCEEDED = (
    select(things.c.thing, things.c.note)
    .where(things.c.business_id == bindparam("business_id"), things.c.status == SUCCESS)
    .order_by(things.c.thing)
)
_AMONG = (
    select(things.c.thing)
    .where(things.c.business_id == bindparam("business_id"), things.c.thing.in_(bindparam("names", expanding=True)))
    .order_by(things.c.thing)
)
_COUNT_FAILED = select(func.count()).where(things.c.business_id == bindparam("business_id"), things.c.status == FAILED)
_FAIL = (
    update(things)
    .where(things.c.business_id == bindparam("business_id"), things.c.thing == bindparam("thing"))
    .values(status=FAILED)
)


class Succeeded(NamedTuple):
    thing: str
    note: str | None


class Wrong(NamedTuple):
    note: str | None
    thing: str


@pytest.fixture
def conn(tmp_path: Path) -> Any:
    database = database_of(tmp_path) if CURRENT.postgres else tmp_path / "sql.db"
    connection = connect_db(database)
    connection.execute(str(CreateTable(things).compile(dialect=sql.dialect_of(connection))))
    yield connection
    connection.close()


def fill(conn: Any) -> None:
    rows = [
        {"business_id": "b1", "thing": "a", "status": SUCCESS, "note": "first"},
        {"business_id": "b1", "thing": "b", "status": FAILED, "note": None},
        {"business_id": "b1", "thing": "c", "status": SUCCESS, "note": "it's 100% 'quoted' ?"},
        {"business_id": "b2", "thing": "a", "status": SUCCESS, "note": "other business"},
    ]
    sql.run_many(conn, _INSERT, rows)


def test_the_same_statement_answers_the_same_on_each_backend(conn: Any) -> None:
    fill(conn)
    got = list(sql.records(conn, _SUCCEEDED, {"business_id": "b1"}, Succeeded))
    assert got == [Succeeded("a", "first"), Succeeded("c", "it's 100% 'quoted' ?")]
    assert sql.scalar(conn, _COUNT_FAILED, {"business_id": "b1"}) == 1
    assert sql.run(conn, _FAIL, {"business_id": "b1", "thing": "a"}).rowcount == 1
    assert sql.scalar(conn, _COUNT_FAILED, {"business_id": "b1"}) == 2
    assert sql.scalar(conn, _COUNT_FAILED, {"business_id": "b2"}) == 0


def test_a_list_is_expanded_for_each_call_whatever_its_length(conn: Any) -> None:
    fill(conn)
    for names, expected in ((["a"], ["a"]), (["c", "a", "zz"], ["a", "c"]), (["b"] * 3, ["b"])):
        assert [row[0] for row in sql.run(conn, _AMONG, {"business_id": "b1", "names": names})] == expected
    assert sql.run(conn, _AMONG, {"business_id": "b1", "names": []}).fetchall() == []


def test_conflicts_do_nothing_or_update_on_both_backends(conn: Any) -> None:
    fill(conn)
    again = {"business_id": "b1", "thing": "a", "status": FAILED, "note": "second"}
    assert sql.run(conn, _INSERT, again).rowcount == 0
    assert sql.one(
        conn, select(things.c.status, things.c.note).where(things.c.thing == "a", things.c.business_id == "b1")
    ) == (
        SUCCESS,
        "first",
    )
    sql.run(conn, _UPSERT, again)
    assert sql.one(
        conn, select(things.c.status, things.c.note).where(things.c.thing == "a", things.c.business_id == "b1")
    ) == (
        SUCCESS,
        "second",
    )


def test_a_record_must_name_the_columns_in_order(conn: Any) -> None:
    fill(conn)
    with pytest.raises(TypeError, match="fields"):
        list(sql.records(conn, _SUCCEEDED, {"business_id": "b1"}, Wrong))


def test_constants_are_bound_not_written_into_the_text(conn: Any) -> None:
    """The statement's text carries a parameter where the constant is; the
    constant is among the values the compiled statement binds itself."""
    compiled = sql.compile_for(_COUNT_FAILED, sql.dialect_of(conn))
    assert f"= {FAILED}" not in compiled.text
    assert FAILED in compiled.own.values()


def test_a_statement_is_compiled_once_per_dialect(conn: Any) -> None:
    dialect = sql.dialect_of(conn)
    assert sql.compile_for(_SUCCEEDED, dialect) is sql.compile_for(_SUCCEEDED, dialect)
    built = select(things.c.thing).where(things.c.business_id == bindparam("business_id"))
    assert sql.compile_for(built, dialect, cache=False) is not sql.compile_for(built, dialect, cache=False)


def test_nul_in_a_value_is_one_answer_on_postgresql(conn: Any) -> None:
    """PostgreSQL text cannot hold U+0000: a value with one is INVALID_ARGUMENT
    before it reaches the database (the domain refuses it earlier; this is the
    store's last guard). SQLite stores it as given."""
    row = {"business_id": "b1", "thing": "nul\x00", "status": SUCCESS, "note": None}
    if CURRENT.postgres:
        with pytest.raises(InvalidArgument):
            sql.run(conn, _INSERT, row)
    else:
        assert sql.run(conn, _INSERT, row).rowcount == 1


def test_a_constant_none_is_bound_by_the_statement(conn: Any) -> None:
    fill(conn)
    clear = update(things).where(things.c.business_id == bindparam("business_id")).values(note=None)
    assert sql.run(conn, clear, {"business_id": "b1"}).rowcount == 3
    assert sql.scalar(conn, select(func.count()).where(things.c.note.is_(None))) == 3


def test_a_list_expansion_is_kept_per_length_and_values_still_bound(conn: Any) -> None:
    """The expanded text is reused for lists of the same length: the values
    of each call are the ones bound, pairs (a tuple IN) too."""
    fill(conn)
    for names in (["a", "b"], ["c", "zz"], ["b", "c"]):
        got = [row[0] for row in sql.run(conn, _AMONG, {"business_id": "b1", "names": names})]
        assert got == sorted(set(names) & {"a", "b", "c"})
    pairs = select(things.c.note).where(
        tuple_(things.c.business_id, things.c.thing).in_(bindparam("keys", expanding=True))
    )
    for keys, notes in (
        ([("b1", "a"), ("b2", "a")], {"first", "other business"}),
        ([("b2", "a"), ("b1", "b")], {"other business", None}),
    ):
        assert {row[0] for row in sql.run(conn, pairs, {"keys": keys})} == notes
