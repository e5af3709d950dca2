"""The layering of docs/architecture.md, checked on the source.

- `lint-imports` (import-linter) keeps the contracts in `.importlinter`:
  faces over wire over core over store over domain, no face importing
  another face, a domain without grpc/protobuf/SQL/HTTP, a core without a
  wire format, no import circle anywhere in src/, and faces that reach the
  store only through the core (store.base's Store handle aside), with no
  import ignored.
- No module uses another module's private (`_name`) names: neither
  `from flowtrack.x import _name` nor `x._name` on an imported flowtrack
  module.
"""

from __future__ import annotations

import ast
from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "flowtrack"


def test_import_contracts_hold() -> None:
    assert lint_imports(config_filename=str(ROOT / ".importlinter"), no_cache=True, no_logo=True) == 0


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


# Uses left for later work, each named exactly (the list only shrinks).
KNOWN: set[str] = set()


def private_uses(path: Path, here: str | None = None) -> list[str]:
    """`module:line name` for each private name of another flowtrack module
    used in `path` (module `here`, by default the one its place names)."""
    here = here or _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    found: list[str] = []
    modules: set[str] = set()  # local names bound to flowtrack modules
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, source] if source else base)
            if not source.startswith("flowtrack"):
                continue
            for alias in node.names:
                if _private(alias.name) and source != here:
                    found.append(f"{here}:{node.lineno} {source}.{alias.name}")
                if (SRC.parent / (source.replace(".", "/") + "/" + alias.name)).is_dir() or (
                    SRC.parent / (source.replace(".", "/") + "/" + alias.name + ".py")
                ).is_file():
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("flowtrack") and alias.asname:
                    modules.add(alias.asname)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and _private(node.attr)
        ):
            found.append(f"{here}:{node.lineno} {node.value.id}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names() -> None:
    files = [p for p in SRC.rglob("*.py") if "v1" not in p.relative_to(SRC).parts]
    found = {use for path in sorted(files) for use in private_uses(path)}
    assert found - KNOWN == set(), "a module uses another module's private name"
    assert KNOWN - found == set(), "a known use is gone: take it off KNOWN"


def test_the_private_name_check_sees_both_spellings(tmp_path: Path) -> None:
    """The check itself: both spellings are found."""
    planted = tmp_path / "planted.py"
    planted.write_text(
        "from flowtrack.api.gate import _refuse\nfrom flowtrack.store import reports as sreports\nsreports._x\n"
    )
    found = private_uses(planted, "flowtrack.web.planted")
    assert [use.split(" ")[1] for use in found] == ["flowtrack.api.gate._refuse", "sreports._x"]
