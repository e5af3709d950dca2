"""The manual builds: `mkdocs build --strict` on docs/ with mkdocs.yml fails on
any warning (a broken link or anchor, a page left out of the navigation, a
bad setting), so a page that moves or a heading that is renamed breaks here.

And the front door stays one: the README is short, and neither it nor the
manual cites a document the repository does not hold."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# slow: builds the manual with mkdocs (the quick loop, `pytest -m "not slow"`, leaves it out)
pytestmark = [pytest.mark.sqlite_only("no database: builds the manual"), pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").rglob("*.md"))


def test_the_site_builds_without_a_warning(tmp_path: Path) -> None:
    pytest.importorskip("material", reason="mkdocs-material is not installed: pip install -e '.[test]'")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "WARNING" not in output, output
    assert (tmp_path / "index.html").exists()
    assert (tmp_path / "architecture" / "index.html").exists()


def test_every_page_is_in_the_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text().split("\nnav:", 1)[1]
    listed = set(re.findall(r":\s*(\S+\.md)\s*$", nav, re.M))
    assert {str(p.relative_to(ROOT / "docs")) for p in PAGES} == listed


def test_the_readme_is_a_front_door() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines: the manual belongs in docs/"
    # The two commands of a fresh machine, exactly, and CI runs the second.
    text = "\n".join(lines)
    assert "python3 -m pip install . && python3 -m flowtrack serve" in text
    assert "python3 -m pip install -e '.[test]' && python3 -m pytest" in text
    assert "\npython3 -m pip install -e '.[test]' && python3 -m pytest\n" in (ROOT / ".ci" / "run").read_text()


# Documents a reader of the repository does not have.
ABSENT = re.compile(r"SPEC\b|STYLE\.md|LIMITS\.md|\brule \d|\bissue \d|\bthe seed's", re.I)


@pytest.mark.parametrize("doc", [ROOT / "README.md", *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_no_document_cites_what_the_repository_does_not_hold(doc: Path) -> None:
    found = [
        f"{doc.name}:{n}: {line.strip()}"
        for n, line in enumerate(doc.read_text().splitlines(), 1)
        if ABSENT.search(line)
    ]
    assert found == []
