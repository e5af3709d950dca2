"""The few SQL constructs whose text differs between SQLite and PostgreSQL.

Each is a SQLAlchemy construct with a compilation per dialect (`@compiles`),
used in statements like any other expression; nothing here edits SQL text.
What is the same on both needs nothing here: a count of the rows where a
condition holds is `func.sum(cast(condition, Integer))` on both.

- `json_array(value, where)`: the JSON array (as text) of `value` over the
  group's rows where `where` holds; `'[]'` for none. SQLite's
  `json_group_array(x) FILTER (WHERE ...)`, PostgreSQL's `json_agg` (NULL for
  no rows: coalesced).
- `position(text, part)`: where `part` starts in `text`, 0 if absent (the
  characters compared as they are: no collation, no case folding). SQLite's
  `instr`, PostgreSQL's `strpos`.
- `json_pairs(column)`: the key/value pairs of a JSON object stored as
  text, as a table (`.c.key`, `.c.value`, values as text). SQLite's
  `json_each`, PostgreSQL's `json_each_text` of the text cast to json.
- `indexed_by(table, index)`: the table, with SQLite's `INDEXED BY index`
  hint (PostgreSQL has none: the table alone). Measured (SQLite 3.40, no
  ANALYZE statistics: the store never runs ANALYZE): one campaign's events
  in sequence order, `cid = ? AND seq > ? AND business_id = ? ORDER BY
  seq`, are read through events_by_seq (the whole business's log from the
  position) unless the hint names events_by_campaign; the other queries
  that used to carry a hint (clicks through the partial index events_clicks,
  a page's clicks through events_by_message) get the same plan without it,
  the click kind bound as a parameter included, and no longer have one.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Text, cast, func, literal
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement, GenericFunction
from sqlalchemy.sql.selectable import Alias, TableClause, TableValuedAlias
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import Integer


class json_array(FunctionElement[str]):
    """The JSON array (text) of `value` over a group's rows where `where` holds; '[]' for none."""

    type = Text()
    inherit_cache = True
    name = "json_array"

    def __init__(self, value: Any, where: Any) -> None:
        super().__init__(value, where)


@compiles(json_array, "sqlite")
def _json_array_sqlite(element: json_array, compiler: SQLCompiler, **kw: Any) -> str:
    value, where = element.clauses
    return compiler.process(func.json_group_array(value).filter(where), **kw)


@compiles(json_array, "postgresql")
def _json_array_postgresql(element: json_array, compiler: SQLCompiler, **kw: Any) -> str:
    value, where = element.clauses
    collected = cast(func.json_agg(value).filter(where), Text)
    return compiler.process(func.coalesce(collected, literal("[]", Text)), **kw)


class position(FunctionElement[int]):
    """Where `part` starts in `text` (1-based), 0 if it does not occur."""

    type = Integer()
    inherit_cache = True
    name = "position"

    def __init__(self, text: Any, part: Any) -> None:
        super().__init__(text, part)


@compiles(position, "sqlite")
def _position_sqlite(element: position, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(func.instr(*element.clauses), **kw)


@compiles(position, "postgresql")
def _position_postgresql(element: position, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(func.strpos(*element.clauses), **kw)


class _json_pairs(GenericFunction[Any]):
    inherit_cache = True
    name = "json_each"


@compiles(_json_pairs, "postgresql")
def _json_pairs_postgresql(element: _json_pairs, compiler: SQLCompiler, **kw: Any) -> str:
    (column,) = element.clauses
    return compiler.process(func.json_each_text(cast(column, JSON)), **kw)


def json_pairs(column: ColumnElement[Any], name: str = "j") -> TableValuedAlias:
    """The pairs (`key`, `value`) of the JSON object text in `column`, as a table named `name`."""
    return _json_pairs(column).table_valued("key", "value").alias(name)


class _IndexedBy(Alias):
    """A table in a FROM clause, with SQLite's INDEXED BY hint (see the module)."""

    __visit_name__ = "indexed_by"
    inherit_cache = True
    _traverse_internals = [*Alias._traverse_internals, ("index", InternalTraversal.dp_string)]
    index: str


def indexed_by(table: TableClause, index: str) -> _IndexedBy:
    """`table` (its columns keep the table's name) read through `index` on
    SQLite; on PostgreSQL, the table alone."""
    hinted = _IndexedBy._construct(table, name=table.name)
    hinted.index = index
    return hinted


@compiles(_IndexedBy)
def _indexed_by(element: _IndexedBy, compiler: SQLCompiler, **kw: Any) -> str:
    kw["asfrom"] = True
    return str(compiler.process(element.element, **kw))


@compiles(_IndexedBy, "sqlite")
def _indexed_by_sqlite(element: _IndexedBy, compiler: SQLCompiler, **kw: Any) -> str:
    kw["asfrom"] = True
    table = compiler.process(element.element, **kw)
    return f"{table} INDEXED BY {compiler.preparer.quote(element.index)}"
