"""No statement of the store is SQL text (issue 20, item 2): the store's
queries are SQLAlchemy Core constructs run through store/sql.py, and no SQL
text is edited by `str.replace` or a regex.

What may remain as text is what is not a query of flowtrack's tables and
differs by backend by nature: transaction control (BEGIN, COMMIT, SAVEPOINT),
PRAGMAs, LISTEN/NOTIFY, advisory locks, COPY. The check reads the source:
every `execute`/`executemany`/`executescript` call whose first argument is
literal text (a string or f-string, or a name bound to one in the module)
holding a data statement on a table (SELECT ... FROM, INSERT INTO, UPDATE,
DELETE FROM) is a finding. `LEFT` lists what is still to convert: it only
shrinks."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.sqlite_only("reads the source; no database")

STORE = Path(__file__).resolve().parent.parent / "src" / "flowtrack" / "store"
SKIP = ("alembic", "legacy")  # frozen migration history and the previous release's SQL

_DATA = re.compile(r"(?is)\b(SELECT\b.*\bFROM|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM)\b")

# module (relative to store/) -> data statements still written as text. Only shrinks.
LEFT: dict[str, int] = {}


def literal_text(node: ast.AST, constants: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else " x " for v in node.values)  # type: ignore[misc]
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = literal_text(node.left, constants), literal_text(node.right, constants)
        return None if left is None and right is None else (left or "") + (right or "")
    return None


def findings(path: Path) -> int:
    tree = ast.parse(path.read_text())
    constants: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            text = literal_text(node.value, {})
            if text is not None:
                constants[node.targets[0].id] = text
    found = 0
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("execute", "executemany", "executescript", "run", "execute_rows")
            and node.args
        ):
            text = literal_text(node.args[0], constants)
            if text is not None and _DATA.search(text):
                found += 1
    return found


def test_no_store_statement_is_sql_text() -> None:
    now: dict[str, int] = {}
    for path in sorted(STORE.rglob("*.py")):
        relative = path.relative_to(STORE).as_posix()
        if relative.startswith(SKIP):
            continue
        count = findings(path)
        if count:
            now[relative] = count
    grown = {name: count for name, count in now.items() if count > LEFT.get(name, 0)}
    assert not grown, f"data statements written as SQL text (write them with store/sql.py): {grown}"
    shrunk = {name: (LEFT[name], now.get(name, 0)) for name in LEFT if now.get(name, 0) < LEFT[name]}
    assert not shrunk, f"fewer statements as text than LEFT says: lower LEFT to {shrunk}"


def test_the_check_finds_text_statements(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text(
        'Q = "SELECT a FROM t WHERE b = ?"\n'
        "def f(conn, x):\n"
        "    conn.execute(Q, (x,))\n"
        '    conn.execute(f"UPDATE t SET a = {x}")\n'
        '    conn.executemany("INSERT OR IGNORE INTO t (a) VALUES (?)", [])\n'
        '    conn.execute("BEGIN IMMEDIATE")\n'
        '    conn.execute("PRAGMA user_version")\n'
    )
    assert findings(planted) == 3


def test_no_sql_is_rewritten_for_postgresql() -> None:
    """PostgreSQL runs what SQLAlchemy compiled: the translation of SQLite's
    text (store/pg/conn.py's `translate`, `_REWRITES`, placeholder regexes) is
    gone, and no store module imports `re` to edit a statement."""
    conn = (STORE / "pg" / "conn.py").read_text()
    assert "_REWRITES" not in conn and "def translate(" not in conn
    assert "import re\n" not in conn


_SQL_PIECE = re.compile(
    r"(?i)POSTCOMPILE|\?|%s|%\(|\$\d|\bSELECT\b|\bINSERT\b|\bUPDATE\b|\bDELETE\b|\bWHERE\b|\bFROM\b"
)


def edits(path: Path) -> list[int]:
    """The lines of `path` where a piece of SQL text is replaced in a string
    (`text.replace("?", ...)`, `.replace("__[POSTCOMPILE_k0]", ...)`) or a
    regex substitutes in one (`re.sub`, `pattern.sub`)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr == "replace" and node.args:
            text = literal_text(node.args[0], {})
            if text is not None and _SQL_PIECE.search(text):
                lines.append(node.lineno)
        elif node.func.attr in ("sub", "subn"):
            lines.append(node.lineno)
    return lines


def test_no_store_module_edits_sql_text() -> None:
    """A statement's text is what SQLAlchemy compiled, lists expanded by
    SQLAlchemy itself (`construct_expanded_state`), never edited by
    `str.replace` or a regex (issue 20, item 2)."""
    found = {}
    for path in sorted(STORE.rglob("*.py")):
        relative = path.relative_to(STORE).as_posix()
        if not relative.startswith(SKIP) and (lines := edits(path)):
            found[relative] = lines
    assert not found, f"SQL text edited by str.replace or a regex: {found}"


def test_the_edit_check_finds_edits(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text(
        "import re\n"
        "def f(text, n, i):\n"
        '    text = text.replace(f"__[POSTCOMPILE_k{i}]", ", ".join("?" * n))\n'
        '    text = text.replace("?", "%s")\n'
        '    text = re.sub(r"sum\\((\\w+)=", "x", text)\n'
        '    name = text.replace(" ", "_")\n'
        "    return name\n"
    )
    assert edits(planted) == [3, 4, 5]
